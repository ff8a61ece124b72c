//! Helpers of the runtime's integration tests: paths, the built binaries, random-weight
//! bundles made by the training crate's `efficientad-train export --random`.

#![allow(dead_code)]

pub use test_support::process::OutputWithin;
pub use test_support::*;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::OnceLock;

use efficientad::model::bundle::Bundle;
use efficientad::model::engine::{Engine, EngineOptions, Provider};
use efficientad::model::preprocess::{Preprocessor, decode_file};
use serde_json::Value;

/// The program that runs binaries of the target, if it is not the host: `qemu-aarch64` when
/// `.ci/aarch64 test` runs these tests for aarch64 (cargo's runner starts this test binary; the
/// runtime binaries it starts need the same).
pub fn runner() -> Option<String> {
    std::env::var("EFFICIENTAD_TEST_RUNNER")
        .ok()
        .filter(|r| !r.is_empty())
}

/// The runtime binary under test as a command line: the binary, behind the runner if any.
pub fn efficientad_argv() -> Vec<String> {
    runner()
        .into_iter()
        .chain([env!("CARGO_BIN_EXE_efficientad").to_string()])
        .collect()
}

/// The runtime binary under test.
pub fn efficientad() -> Command {
    let argv = efficientad_argv();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    cmd
}

/// The runtime binary as a shell command line.
pub fn efficientad_shell() -> String {
    efficientad_argv().join(" ")
}

/// The training binary: `EFFICIENTAD_TRAIN_BIN` if set (the aarch64 tests use the host's x86
/// build: it writes the same model bytes), else the one built beside this test
/// (`cargo test --workspace` builds it).
pub fn efficientad_train() -> Command {
    if let Some(bin) = std::env::var_os("EFFICIENTAD_TRAIN_BIN") {
        return Command::new(bin);
    }
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("efficientad-train");
    assert!(
        bin.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds the training binary)",
        bin.display()
    );
    Command::new(bin)
}

/// Runs a command, returning its output; panics only if it cannot start.
/// Runs a command to its end, within the suite's per-program time limit
/// ([`process::process_limit`]): a program that hangs fails the test that started it.
pub fn run(cmd: &mut Command) -> Output {
    process::output(cmd)
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exports a random-weight bundle narrowed `divisor` times (same graph structure, a fraction of
/// the work) into `dir`; the autoencoder is narrowed 8x.
pub fn export_random(dir: &Path, seed: u64, divisor: usize) {
    let out = run(efficientad_train()
        .args([
            "export",
            "--random",
            "--seed",
            &seed.to_string(),
            "--width-divisor",
            &divisor.to_string(),
            "--ae-width-divisor",
            "8",
            "--out",
        ])
        .arg(dir));
    assert!(out.status.success(), "export failed: {}", text(&out.stderr));
}

/// One shared small bundle for the whole test binary: narrowed 32x (~0.1 GFLOP per image), so
/// the tests stay quick under qemu too, where ONNX Runtime runs ~120x slower than natively.
pub fn small_bundle() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("efficientad-test-{}-bundle", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        export_random(&dir, 11, 32);
        dir
    })
}

/// Parses JSON lines.
pub fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    text(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line: {l}: {e}")))
        .collect()
}

/// Raw maps of each image, one session run per image (batch 1), through the library.
pub fn reference_raw_maps(bundle_dir: &Path, files: &[PathBuf]) -> Vec<(Vec<f32>, Vec<f32>)> {
    let bundle = Bundle::open(bundle_dir).expect("bundle");
    let options = EngineOptions {
        provider: Provider::Cpu,
        intra_threads: Some(2),
        ..EngineOptions::default()
    };
    let mut engine = Engine::new(&bundle, &options).expect("engine");
    let mut pre = Preprocessor::new(engine.input_size());
    files
        .iter()
        .map(|f| {
            let input = pre
                .prepare_vec(decode_file(f).expect("decode"))
                .expect("resize");
            let maps = engine.run(&input, 1).expect("run");
            (maps.st, maps.ae)
        })
        .collect()
}

/// numpy.quantile's default ('linear') definition, written out independently in f64.
pub fn reference_quantile(values: &[f32], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().map(|&x| f64::from(x)).collect();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let h = (v.len() - 1) as f64 * q;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    v[lo] + (h - lo as f64) * (v[hi] - v[lo])
}

pub fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12)
}

/// Copies the first `n` images of `src` into a fresh folder.
pub fn image_folder(name: &str, src: &Path, n: usize) -> (PathBuf, Vec<PathBuf>) {
    let dir = temp_dir(name);
    let files = first_files(src, n)
        .into_iter()
        .map(|f| {
            let dst = dir.join(f.file_name().expect("name"));
            std::fs::copy(&f, &dst).expect("copy image");
            dst
        })
        .collect();
    (dir, files)
}

pub fn calibrate(bundle: &Path, images: &Path, out: &Path, extra: &[&str]) -> Value {
    let output = run(efficientad()
        .args(["calibrate", "--provider", "cpu", "--batch", "3", "--model"])
        .arg(bundle)
        .arg("--images")
        .arg(images)
        .arg("--out")
        .arg(out)
        .args(extra));
    assert!(
        output.status.success(),
        "calibrate failed: {}",
        text(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(out).expect("calibration written"))
        .expect("calibration JSON")
}

/// docs/method.md's combination, written out plainly: 0.5·0.1·(st−qa)/(qb−qa) + the same for ae.
pub fn reference_combined(st: &[f32], ae: &[f32], cal: &Value) -> Vec<f64> {
    let q = |m: &str, k: &str| cal["normalization"][m][k].as_f64().expect("q");
    st.iter()
        .zip(ae)
        .map(|(&s, &a)| {
            let s = 0.1 * (f64::from(s) - q("st", "q_a")) / (q("st", "q_b") - q("st", "q_a"));
            let a = 0.1 * (f64::from(a) - q("ae", "q_a")) / (q("ae", "q_b") - q("ae", "q_a"));
            0.5 * s + 0.5 * a
        })
        .collect()
}

/// A calibration for the shared small bundle (once per test binary).
pub fn small_calibration() -> PathBuf {
    static CAL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    CAL.get_or_init(|| {
        let (dir, _) = image_folder("run-cal", &mtd().join("validation/good"), 6);
        let path = dir.join("../run-cal.json");
        calibrate(small_bundle(), &dir, &path, &[]);
        path
    })
    .clone()
}

/// A dir: source with three good parts and one undecodable file (sorted last).
pub fn replay_folder(name: &str) -> PathBuf {
    let (dir, _) = image_folder(name, &mtd().join("test/good"), 3);
    std::fs::write(dir.join("zz_broken.jpg"), b"not a jpeg").expect("write");
    dir
}

/// `run` on the small model and its calibration, replaying `source` as fast as asked. The
/// tests that use it send bursts to check order and completeness; under emulation (~120x
/// slower) a burst's tail would age past `--max-trigger-age-ms`, whose own test sets it.
pub fn run_args(source: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        "run",
        "--provider",
        "cpu",
        "--fps",
        "0",
        "--max-trigger-age-ms",
        "0",
        "--model",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.push(small_bundle().into());
    args.push("--calibration".into());
    args.push(small_calibration().into());
    args.push("--source".into());
    args.push(format!("dir:{}", source.display()).into());
    args
}

/// Starts a command with all three pipes; stdin and stdout are taken out of the child.
pub fn spawn_piped(cmd: &mut Command) -> (Child, ChildStdin, BufReader<ChildStdout>) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdin = child.stdin.take().expect("stdin");
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    (child, stdin, stdout)
}

/// Sends one trigger line and reads its answer.
pub fn ask(stdin: &mut ChildStdin, stdout: &mut BufReader<ChildStdout>, id: &str) -> Value {
    stdin
        .write_all(format!("{id}\n").as_bytes())
        .expect("write trigger");
    stdin.flush().expect("flush");
    read_answer(stdout)
}

pub fn read_answer(out: &mut BufReader<ChildStdout>) -> Value {
    let mut line = String::new();
    let n = out.read_line(&mut line).expect("read answer");
    assert!(n > 0, "run closed stdout before answering");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line: {line}: {e}"))
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Which cells of a 56x56 map the region keeps, written out from its definition: the centre
/// of map cell i lies at (i + 4.5)·extent/64 pixels; kept when at least `border` from every
/// edge and on a white pixel of the mask (nearest pixel of the scaled mask).
pub fn reference_cells(
    width: usize,
    height: usize,
    border: f64,
    mask: Option<&image::GrayImage>,
) -> Vec<bool> {
    let mut out = Vec::new();
    for y in 0..56 {
        for x in 0..56 {
            let cx = (x as f64 + 4.5) * width as f64 / 64.0;
            let cy = (y as f64 + 4.5) * height as f64 / 64.0;
            let mut keep = cx >= border
                && cy >= border
                && cx < width as f64 - border
                && cy < height as f64 - border;
            if let (true, Some(m)) = (keep, mask) {
                let mx = (cx * f64::from(m.width()) / width as f64) as u32;
                let my = (cy * f64::from(m.height()) / height as f64) as u32;
                keep = m.get_pixel(mx, my).0[0] == 255;
            }
            out.push(keep);
        }
    }
    out
}

/// Scores of `files` under a calibration, from `infer`.
pub fn infer_scores(calibration: &Path, files: &[PathBuf], extra: &[&str]) -> Vec<Value> {
    let output = run(efficientad()
        .args(["infer", "--provider", "cpu", "--model"])
        .arg(small_bundle())
        .arg("--calibration")
        .arg(calibration)
        .args(extra)
        .args(files));
    assert!(output.status.success(), "{}", text(&output.stderr));
    json_lines(&output.stdout)
}

/// Writes to `path` the small calibration with its threshold set so that exactly the `ng`
/// highest-scoring of `files` are NG (midway between two neighbouring scores).
pub fn threshold_below(files: &[PathBuf], ng: usize, path: &Path) {
    let mut scores: Vec<f64> = infer_scores(&small_calibration(), files, &[])
        .iter()
        .map(|l| l["score"].as_f64().expect("score"))
        .collect();
    scores.sort_by(f64::total_cmp);
    let cut = scores.len() - ng;
    let mut cal: Value =
        serde_json::from_str(&std::fs::read_to_string(small_calibration()).expect("read"))
            .expect("json");
    cal["threshold"] = ((scores[cut - 1] + scores[cut]) / 2.0).into();
    std::fs::write(path, cal.to_string()).expect("write calibration");
}

/// One HTTP/1.1 request; the status line and the body.
pub fn http(addr: &str, request: &str) -> (String, Vec<u8>) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.write_all(request.as_bytes()).expect("send");
    let mut response = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut response).expect("read");
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.lines().next().unwrap_or("").to_owned();
    (status, response[split + 4..].to_vec())
}

pub fn get(addr: &str, path: &str) -> (String, Vec<u8>) {
    http(addr, &format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n"))
}

/// `run --http` on an ephemeral port, with a calibration whose threshold is the median score
/// of the replay folder's parts (so some are NG); returns the child, its pipes and the address.
pub fn run_with_http(
    name: &str,
    extra: &[&str],
) -> (Child, ChildStdin, BufReader<ChildStdout>, String) {
    let source = replay_folder(name);
    let cal_path = http_calibration(name);
    threshold_below(&first_files(&source, 3), 2, &cal_path);
    run_with_http_on(&source, &cal_path, extra)
}

/// `run --http` on the small model with a given `dir:` source and calibration; returns the
/// child, its pipes and the address it listens on.
pub fn run_with_http_on(
    source: &Path,
    cal_path: &Path,
    extra: &[&str],
) -> (Child, ChildStdin, BufReader<ChildStdout>, String) {
    let mut args: Vec<std::ffi::OsString> = vec!["--model".into(), small_bundle().into()];
    args.extend(["--calibration".into(), cal_path.into()]);
    args.extend(extra.iter().map(|a| a.into()));
    run_http(source, &args)
}

/// `run --http` on an ephemeral port replaying `source`, with `args` (the models and
/// calibrations among them); returns the child, its pipes and the address it listens on.
pub fn run_http(
    source: &Path,
    args: &[std::ffi::OsString],
) -> (Child, ChildStdin, BufReader<ChildStdout>, String) {
    let (mut child, stdin, stdout) = spawn_piped(
        efficientad()
            .args([
                "run",
                "--provider",
                "cpu",
                "--fps",
                "0",
                "--http",
                "127.0.0.1:0",
            ])
            .arg("--source")
            .arg(format!("dir:{}", source.display()))
            .args(args),
    );
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let mut log = String::new();
    let addr = loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).expect("stderr") > 0,
            "no address: {log}"
        );
        log.push_str(&line);
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.trim().trim_end_matches('/').to_owned();
        }
    };
    // Keep draining stderr so the run never blocks on it.
    std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
    (child, stdin, stdout, addr)
}

/// Where `run_with_http(name, …)` writes its calibration (one per test: they run in parallel).
pub fn http_calibration(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "efficientad-test-{}-{name}-cal.json",
        std::process::id()
    ))
}

/// The value of one sample line of a Prometheus text exposition.
pub fn sample(metrics: &str, name_and_labels: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name_and_labels} missing in:\n{metrics}"))
        .trim()
        .parse()
        .expect("number")
}

/// Runs the shell `commands` beside the fake GigE camera (aravis's `arv-fake-gv-camera`), both
/// in a private network namespace with only loopback, so discovery broadcasts reach nothing
/// else; the camera's log goes to `dir/camera.log` and it is stopped by its PID at the end.
pub fn with_fake_gige_camera(dir: &Path, commands: &str) -> Output {
    for tool in ["unshare", "ip", "arv-fake-gv-camera-0.8"] {
        assert!(
            have(tool),
            "{tool} is missing: install iproute2, util-linux and aravis-tools (.ci/run does)"
        );
    }
    let script = format!(
        r#"set -e
ip link set lo up
arv-fake-gv-camera-0.8 -i 127.0.0.1 > {d}/camera.log 2>&1 &
CAM=$!
trap 'kill $CAM 2>/dev/null; wait $CAM 2>/dev/null || true' EXIT
sleep 1.5
{commands}
"#,
        d = dir.display(),
    );
    run(Command::new("unshare").args(["-n", "sh", "-c", &script]))
}
