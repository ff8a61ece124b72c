//! Waiting for the programs a test starts, with a time limit. A program that hangs would
//! otherwise hang the test, and CI has one time limit for the whole suite: a hang there ends
//! the run without saying where. Here it becomes a failure of that test that names the
//! program and shows what it printed before it was killed.

use std::fmt::Display;
use std::io::Read;
#[cfg(test)]
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The words a test's failure starts with when a program it started ran past the limit;
/// `.ci/aarch64` looks for them to tell a hang under emulation from a wrong answer.
pub const HANG_MESSAGE: &str = "did not finish within";

/// How long a test waits for one program: `EFFICIENTAD_TEST_PROCESS_LIMIT_S` seconds, else
/// 600 (the slowest program of the suite, a soak run under qemu, takes a few minutes).
pub fn process_limit() -> Duration {
    let seconds = std::env::var("EFFICIENTAD_TEST_PROCESS_LIMIT_S")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|&s| s > 0)
        .unwrap_or(600);
    Duration::from_secs(seconds)
}

/// `Command::output`, within [`process_limit`].
pub fn output(cmd: &mut Command) -> Output {
    cmd.output_within()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// [`output`] as a method, for command chains: `Command::output` with the time limit. Like
/// `Command::output` it reads no stdin and captures stdout and stderr.
pub trait OutputWithin {
    fn output_within(&mut self) -> std::io::Result<Output>;
}

impl OutputWithin for Command {
    fn output_within(&mut self) -> std::io::Result<Output> {
        let what = format!("{self:?}");
        let child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(finish(child, what))
    }
}

/// `Child::wait_with_output`, within [`process_limit`]: the child's stdout and stderr (those
/// that are piped) are read to their end while it runs; past the limit it is killed and the
/// test fails with `what`, the limit and what the child had printed.
pub fn finish(child: Child, what: impl Display) -> Output {
    finish_within(child, what, process_limit())
}

/// [`finish`] with the limit given.
pub fn finish_within(mut child: Child, what: impl Display, limit: Duration) -> Output {
    let stdout = child.stdout.take().map(Collector::start);
    let stderr = child.stderr.take().map(Collector::start);
    let status = wait_until(&mut child, Instant::now() + limit);
    match status {
        Some(status) => Output {
            status,
            stdout: stdout.map(Collector::finish).unwrap_or_default(),
            stderr: stderr.map(Collector::finish).unwrap_or_default(),
        },
        None => {
            kill(&mut child);
            // The readers are not joined: a grandchild may still hold the pipes open.
            let so_far = |c: &Option<Collector>| {
                c.as_ref()
                    .map(|c| String::from_utf8_lossy(&c.so_far()).into_owned())
                    .unwrap_or_default()
            };
            panic!(
                "{what} {HANG_MESSAGE} {} s and was killed\n--- its stdout so far:\n{}\n--- its stderr so far:\n{}",
                limit.as_secs_f64(),
                so_far(&stdout),
                so_far(&stderr)
            )
        }
    }
}

/// `Child::wait`, within [`process_limit`] (for a child whose output the test reads itself).
pub fn wait(child: &mut Child, what: impl Display) -> ExitStatus {
    match wait_until(child, Instant::now() + process_limit()) {
        Some(status) => status,
        None => {
            kill(child);
            panic!(
                "{what} {HANG_MESSAGE} {} s and was killed",
                process_limit().as_secs()
            )
        }
    }
}

fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("cannot wait for a child process: {e}"),
        }
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads one pipe to its end on a thread, keeping what has come so far readable.
struct Collector {
    bytes: Arc<Mutex<Vec<u8>>>,
    thread: JoinHandle<()>,
}

impl Collector {
    fn start(mut pipe: impl Read + Send + 'static) -> Self {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&bytes);
        let thread = std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        Self { bytes, thread }
    }

    fn so_far(&self) -> Vec<u8> {
        self.bytes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn finish(self) -> Vec<u8> {
        let Self { bytes, thread } = self;
        let _ = thread.join();
        let all = bytes.lock().unwrap_or_else(|e| e.into_inner());
        all.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Child {
        Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh")
    }

    #[test]
    fn a_finished_program_gives_its_status_and_both_streams_whole() {
        // More than a pipe's buffer on each stream: a waiter that reads nothing would hang.
        let child = shell("head -c 200000 /dev/zero; head -c 100000 /dev/zero >&2; exit 3");
        let out = finish_within(child, "sh", Duration::from_secs(60));
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout.len(), 200_000);
        assert_eq!(out.stderr.len(), 100_000);
    }

    #[test]
    fn a_hanging_program_is_killed_and_named_with_what_it_printed() {
        let started = Instant::now();
        let child = shell("echo before the hang; echo on stderr >&2; exec sleep 60");
        let pid = child.id();
        let failure = std::panic::catch_unwind(|| {
            finish_within(child, "the sleeper", Duration::from_secs(2))
        })
        .expect_err("a hang must fail");
        let message = failure
            .downcast_ref::<String>()
            .expect("a formatted message");
        assert!(
            message.starts_with("the sleeper did not finish within 2 s and was killed"),
            "{message}"
        );
        assert!(message.contains("before the hang"), "{message}");
        assert!(message.contains("on stderr"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(30));
        // Killed and reaped: no such process any more.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
