//! `efficientad soak`: a line session checked from the outside. It starts `efficientad run` as
//! a child process (optionally on a source with injected faults), writes the triggers to its
//! stdin faster than the model answers, and parses every line of its stdout: each trigger must
//! get exactly one answer, in order, with its own id; the child's resident memory is sampled
//! from /proc while it runs; the child must end with exit 0.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use efficientad::line::monitor::percentile;
use efficientad::line::source::faults::FaultPlan;

use super::{EngineArgs, Outcome};

#[derive(Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long, value_name = "FILE")]
    pub calibration: PathBuf,
    /// Frame source, e.g. dir:<folder> (looped, as fast as asked).
    #[arg(long, value_name = "SPEC")]
    pub source: String,
    /// Number of triggers.
    #[arg(long, default_value_t = 10_000)]
    pub triggers: u64,
    /// Triggers per second, as a line sends them (latencies are then a part's); 0 sends them
    /// all at once (latencies are then mostly queueing).
    #[arg(long, value_name = "HZ", default_value_t = 0.0)]
    pub rate: f64,
    /// Faults to inject into the source, e.g. disconnect=97,stall=50,drop=7,garbage=11: every
    /// Nth grab fails that way.
    #[arg(long, value_name = "PLAN")]
    pub faults: Option<FaultPlan>,
    /// Also start the run's HTTP endpoint (`--http`, on a free local port) and poll it ten
    /// times a second (/metrics, /status.json, / in turn) throughout: the latency cost of
    /// being watched.
    #[arg(long)]
    pub poll_http: bool,
    /// Start `run` through this program (e.g. qemu-aarch64, for tests of another
    /// architecture under emulation).
    #[arg(long, value_name = "PROGRAM", hide = true)]
    pub runner: Option<PathBuf>,
    /// Frame timeout of the run, milliseconds (a stall lasts this long).
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub frame_timeout_ms: u64,
    /// Allowed leak, MiB: after the first third (warm-up) the run's resident memory is
    /// sampled at the ends of six equal segments, and the leak is six times the smallest
    /// segment's growth. A leak grows with every trigger, so in every segment alike; the
    /// allocator's steps (+8.6 MiB or +25.6 MiB at once, and back again, seen here) fall in a
    /// few segments only.
    #[arg(long, default_value_t = 16.0)]
    pub max_growth_mib: f64,
}

/// Resident set size of a process in MiB, from /proc (NaN where there is none).
pub fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// What the answers said.
#[derive(Default)]
struct Tally {
    answers: u64,
    out_of_order: u64,
    wrong_id: u64,
    unparsable: u64,
    ok: u64,
    ng: u64,
    /// ERROR answers by the first words of their reason.
    errors: BTreeMap<String, u64>,
    latencies: Vec<f64>,
}

impl Tally {
    fn record(&mut self, line: &str, expected_seq: u64) {
        self.answers += 1;
        let Ok(answer) = serde_json::from_str::<serde_json::Value>(line) else {
            self.unparsable += 1;
            return;
        };
        if answer["seq"].as_u64() != Some(expected_seq) {
            self.out_of_order += 1;
        }
        if answer["id"].as_str() != Some(format!("soak-{expected_seq}").as_str()) {
            self.wrong_id += 1;
        }
        match answer["verdict"].as_str() {
            Some("OK") => self.ok += 1,
            Some("NG") => self.ng += 1,
            _ => {
                let kind = answer["error_kind"].as_str().unwrap_or("no error_kind");
                *self.errors.entry(kind.to_owned()).or_default() += 1;
            }
        }
        if let Some(ms) = answer["latency_ms"]["total"].as_f64() {
            self.latencies.push(ms);
        }
    }

    fn percentile(&self, p: f64) -> f64 {
        percentile(&self.latencies, p).unwrap_or(f64::NAN)
    }
}

/// Segments of the last two thirds of a soak whose memory growths are compared (see
/// `--max-growth-mib`).
const SEGMENTS: u64 = 6;

pub fn run(args: SoakArgs) -> anyhow::Result<Outcome> {
    let exe = std::env::current_exe().context("finding this program to start `run`")?;
    let mut command = match &args.runner {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.arg(exe);
            c
        }
        None => Command::new(exe),
    };
    command
        .args(["run", "--fps", "0", "--max-trigger-age-ms", "0"])
        .arg("--frame-timeout-ms")
        .arg(args.frame_timeout_ms.to_string())
        .arg("--model")
        .arg(&args.engine.model)
        .arg("--provider")
        .arg(args.engine.provider.to_string())
        .arg("--calibration")
        .arg(&args.calibration)
        .arg("--source")
        .arg(&args.source);
    if args.poll_http {
        command.args(["--http", "127.0.0.1:0"]);
    }
    if let Some(threads) = args.engine.threads {
        command.arg("--threads").arg(threads.to_string());
    }
    if let Some(plan) = args.faults {
        command.arg("--inject-faults").arg(format!(
            "disconnect={},stall={},drop={},garbage={},hang={}",
            plan.disconnect, plan.stall, plan.drop, plan.garbage, plan.hang
        ));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting `efficientad run`")?;
    let pid = child.id();
    let mut stdin = child.stdin.take().context("run's stdin")?;
    let stdout = BufReader::new(child.stdout.take().context("run's stdout")?);
    let stderr = BufReader::new(child.stderr.take().context("run's stderr")?);
    // The run's log, kept (last lines) for the report; reading it keeps the pipe flowing.
    // The HTTP address, when asked for, comes from the line that announces it.
    let (addr_tx, addr_rx) = crossbeam_channel::bounded::<String>(1);
    let log = std::thread::spawn(move || {
        let mut last: Vec<String> = Vec::new();
        for line in stderr.lines().map_while(Result::ok) {
            if let Some(addr) = line.split("http://").nth(1) {
                let _ = addr_tx.try_send(addr.trim().trim_end_matches('/').to_owned());
            }
            if last.len() == 20 {
                last.remove(0);
            }
            last.push(line);
        }
        last
    });
    let polling = Arc::new(AtomicBool::new(args.poll_http));
    let poller = {
        let polling = polling.clone();
        std::thread::spawn(move || poll(&addr_rx, &polling))
    };
    let n = args.triggers;
    let period = (args.rate > 0.0).then(|| std::time::Duration::from_secs_f64(1.0 / args.rate));
    // The run reads and queues triggers as they come, however fast.
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(&mut stdin);
        let start = Instant::now();
        for seq in 1..=n {
            if let Some(period) = period {
                let due = start + period.mul_f64((seq - 1) as f64);
                std::thread::sleep(due.saturating_duration_since(Instant::now()));
                writeln!(out, "soak-{seq}")?;
                out.flush()?;
            } else {
                writeln!(out, "soak-{seq}")?;
            }
        }
        out.flush()
    });
    let started = Instant::now();
    // Where memory is sampled: the end of the warm-up third, then the ends of the segments
    // (the last one is the end of the soak, sampled below).
    let marks: Vec<u64> = (0..SEGMENTS)
        .map(|i| (n / 3 + i * (n - n / 3) / SEGMENTS).max(1))
        .collect();
    let mut tally = Tally::default();
    let mut rss_marks = vec![f64::NAN; SEGMENTS as usize + 1];
    let mut rss_peak: f64 = 0.0;
    let mut lines = stdout.lines();
    while tally.answers < n {
        let Some(Ok(line)) = lines.next() else { break };
        tally.record(&line, tally.answers + 1);
        for (at, rss) in marks.iter().zip(rss_marks.iter_mut()) {
            if tally.answers == *at {
                *rss = rss_mib(pid);
            }
        }
        if tally.answers.is_multiple_of(100) {
            rss_peak = rss_peak.max(rss_mib(pid));
        }
    }
    let rss_end = rss_mib(pid);
    rss_marks[SEGMENTS as usize] = rss_end;
    let seconds = started.elapsed().as_secs_f64();
    polling.store(false, Ordering::SeqCst);
    let (http_ok, http_failed) = poller.join().unwrap_or_default();
    let written = writer.join();
    // EOF (stdin closed with the writer) ends the run: nothing more may come.
    let extra = lines.map_while(Result::ok).count() as u64;
    let status = child.wait().context("waiting for `run`")?;
    let log = log.join().unwrap_or_default();
    let growths: Vec<f64> = rss_marks.windows(2).map(|w| w[1] - w[0]).collect();
    let growth = leak_estimate(&growths);
    let lost = n.saturating_sub(tally.answers);
    let report = serde_json::json!({
        "triggers": n, "answers": tally.answers, "lost": lost, "extra": extra,
        "out_of_order": tally.out_of_order, "wrong_id": tally.wrong_id, "unparsable": tally.unparsable,
        "ok": tally.ok, "ng": tally.ng, "errors": tally.errors,
        "faults": args.faults.map(|p| format!("{p:?}")),
        "rss_samples_mib": rss_marks, "rss_end_mib": rss_end, "rss_peak_mib": rss_peak.max(rss_end),
        "rss_growth_by_segment_mib": growths, "rss_growth_mib": growth, "p50_ms": tally.percentile(0.5), "p99_ms": tally.percentile(0.99),
        "seconds": seconds, "rate_hz": args.rate, "run_exit": status.code(),
        "http_requests": http_ok, "http_failures": http_failed,
    });
    println!("{report}");
    if !matches!(written, Ok(Ok(()))) && lost > 0 {
        bail!("could not write all triggers to `run`: {}", log.join("\n"));
    }
    if lost > 0 || extra > 0 || tally.out_of_order > 0 || tally.wrong_id > 0 || tally.unparsable > 0
    {
        bail!(
            "{n} triggers gave {} answers ({lost} lost, {extra} extra, {} out of order, {} with another id, {} unparsable); run's log ends:\n{}",
            tally.answers,
            tally.out_of_order,
            tally.wrong_id,
            tally.unparsable,
            log.join("\n")
        );
    }
    if !status.success() {
        bail!(
            "`run` ended with {status}; its log ends:\n{}",
            log.join("\n")
        );
    }
    if growth > args.max_growth_mib {
        bail!(
            "run's resident memory grows in every part of the soak after the first third: {} MiB (leak estimate {growth:.1} MiB, limit {} MiB)",
            growths
                .iter()
                .map(|g| format!("{g:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            args.max_growth_mib
        );
    }
    // ERROR answers are the point of a soak with injected faults; without, they are failures.
    Ok(if tally.errors.is_empty() || args.faults.is_some() {
        Outcome::Success
    } else {
        Outcome::SomeErrors
    })
}

/// The leak, MiB, from the memory growths of equal segments of a soak: as many times the
/// smallest growth as there are segments, never below 0. A leak grows in every segment; an
/// allocator's step (up, or up and back down) in a few only, and then counts nothing. A
/// segment without its samples (no /proc, or the run ended early: lost answers are reported on
/// their own) has a NaN growth and is left out; with none left, NaN.
fn leak_estimate(growths: &[f64]) -> f64 {
    let smallest = growths.iter().copied().fold(f64::NAN, f64::min);
    if smallest.is_nan() {
        return f64::NAN;
    }
    (growths.len() as f64 * smallest).max(0.0)
}

/// Polls the run's HTTP endpoint ten times a second while `polling`; (answered 200, failed).
fn poll(addr: &crossbeam_channel::Receiver<String>, polling: &AtomicBool) -> (u64, u64) {
    if !polling.load(Ordering::SeqCst) {
        return (0, 0);
    }
    let Ok(addr) = addr.recv_timeout(Duration::from_secs(60)) else {
        return (0, 0);
    };
    let (mut ok, mut failed) = (0, 0);
    let paths = ["/metrics", "/status.json", "/"];
    let mut i = 0;
    while polling.load(Ordering::SeqCst) {
        let t0 = Instant::now();
        let answered = std::net::TcpStream::connect(&addr).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(
                s,
                "GET {} HTTP/1.1\r\nHost: soak\r\n\r\n",
                paths[i % paths.len()]
            )?;
            let mut response = Vec::new();
            std::io::Read::read_to_end(&mut s, &mut response)?;
            Ok(response.starts_with(b"HTTP/1.1 200"))
        });
        match answered {
            Ok(true) => ok += 1,
            _ => failed += 1,
        }
        i += 1;
        std::thread::sleep(Duration::from_millis(100).saturating_sub(t0.elapsed()));
    }
    (ok, failed)
}

#[cfg(test)]
mod tests {
    use super::leak_estimate;

    #[test]
    fn a_steady_leak_counts_and_allocator_steps_do_not() {
        // 1 MiB per segment: the whole 6 MiB.
        assert_eq!(leak_estimate(&[1.0; 6]), 6.0);
        // The step pattern that failed CI with two samples (+8.6 MiB twice), spread over six
        // segments, and the up-and-down seen here.
        assert_eq!(leak_estimate(&[0.0, 8.6, 0.0, 0.0, 8.6, 0.0]), 0.0);
        assert_eq!(leak_estimate(&[-8.5, 17.0, 0.0, -12.3, 3.8, 0.1]), 0.0);
        // A leak under a step still shows as the leak.
        assert_eq!(leak_estimate(&[2.0, 10.6, 2.0, 2.0, 2.0, 2.0]), 12.0);
        assert_eq!(leak_estimate(&[f64::NAN, 1.0, 2.0]), 3.0);
        assert!(leak_estimate(&[f64::NAN; 6]).is_nan());
        assert!(leak_estimate(&[]).is_nan());
    }
}
