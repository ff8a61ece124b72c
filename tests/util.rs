//! Helpers of the runtime's integration tests: paths, the built binaries, random-weight
//! bundles made by the training crate's `efficientad-train export --random`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/data` beside the project (or `EFFICIENTAD_SHARED_DATA`); fails loudly if missing.
pub fn shared_data() -> PathBuf {
    let dir = std::env::var_os("EFFICIENTAD_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/data"));
    assert!(
        dir.join("mtd").is_dir(),
        "the shared datasets are missing: expected {} (with mtd/ inside); tests on real images need them",
        dir.display()
    );
    dir
}

pub fn mtd() -> PathBuf {
    shared_data().join("mtd")
}

/// The first `n` files of a folder, sorted.
pub fn first_files(dir: &Path, n: usize) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.truncate(n);
    files
}

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

/// A fresh temporary folder for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("efficientad-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Runs a command, returning its output; panics only if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
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
