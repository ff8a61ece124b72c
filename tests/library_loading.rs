//! Finding and loading ONNX Runtime, execution providers and `doctor`.

use std::process::Command;

use crate::util::*;

#[test]
fn library_lookup_errors_are_messages_not_panics() {
    let output = run(efficientad()
        .arg("doctor")
        .env("ORT_DYLIB_PATH", "/nowhere/libonnxruntime.so"));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ORT_DYLIB_PATH points to /nowhere/libonnxruntime.so"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // A file that exists but is no library.
    let dir = temp_dir("not-a-lib");
    let fake = dir.join("libonnxruntime.so");
    std::fs::write(&fake, b"not a shared library").expect("write");
    let output = run(efficientad().arg("doctor").env("ORT_DYLIB_PATH", &fake));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot load ONNX Runtime from"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn library_is_found_in_python_then_installed_into_the_cache() {
    // The active python3 has onnxruntime (.ci/run installs it): found there.
    let output = run(efficientad().arg("doctor").env_remove("ORT_DYLIB_PATH"));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stdout = text(&output.stdout);
    assert!(
        stdout.contains("found via python package") && stdout.contains("cpu       usable"),
        "{stdout}"
    );

    // A python without onnxruntime and an empty cache: installed with pip, said on stderr.
    let dir = temp_dir("ort-install");
    let venv = dir.join("venv");
    let status = run(std::process::Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv));
    assert!(
        status.status.success(),
        "python3 -m venv failed: {}",
        text(&status.stderr)
    );
    let python = venv.join("bin/python");
    let cache = dir.join("cache");
    let doctor = || {
        let mut cmd = efficientad();
        cmd.arg("doctor")
            .env_remove("ORT_DYLIB_PATH")
            .env("EFFICIENTAD_PYTHON", &python)
            .env("EFFICIENTAD_CACHE", &cache);
        cmd
    };
    let output = run(doctor().env("EFFICIENTAD_NO_ORT_INSTALL", "1"));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no ONNX Runtime library found")
            && stderr.contains("has no onnxruntime package"),
        "{stderr}"
    );

    let output = run(&mut doctor());
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("installing onnxruntime==1.31.1"),
        "{stderr}"
    );
    assert!(
        stdout.contains("found via user cache (installed now)")
            && stdout.contains("version 1.31.1"),
        "{stdout}"
    );
    assert!(
        cache
            .join("onnxruntime-1.31.1/onnxruntime/capi/libonnxruntime.so.1.31.1")
            .is_file()
    );

    let output = run(&mut doctor());
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(
        output.status.success() && !stderr.contains("installing"),
        "{stderr}"
    );
    assert!(
        stdout.contains("found via user cache,") || stdout.contains("found via user cache)"),
        "{stdout}"
    );
}

#[test]
fn doctor_reports_platform_library_providers_and_cameras() {
    let output = run(efficientad().arg("doctor"));
    let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "{stderr}");
    let arch = std::env::consts::ARCH;
    assert!(
        stdout.contains(&format!("platform: linux {arch}")),
        "{stdout}"
    );
    assert!(
        stdout.contains("onnx runtime: ") && stdout.contains("(version 1.31.1, found via "),
        "{stdout}"
    );
    for provider in ["tensorrt", "cuda"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(provider) && l.contains("not usable: ")),
            "a CPU-only library: {provider} must be reported unusable with the reason\n{stdout}"
        );
    }
    assert!(
        stdout.lines().any(|l| l.trim() == "cpu       usable"),
        "{stdout}"
    );
    assert!(stdout.contains("cameras:"), "{stdout}");
}

#[test]
fn a_library_of_another_architecture_is_refused_by_name() {
    let dir = temp_dir("foreign-lib");
    let fake = dir.join("libonnxruntime.so.1.31.1");
    // A 64-bit little-endian ELF header for RISC-V (machine 0xF3): neither x86-64 nor aarch64.
    let mut header = vec![0u8; 64];
    header[..4].copy_from_slice(b"\x7fELF");
    header[4] = 2;
    header[5] = 1;
    header[18..20].copy_from_slice(&0xF3u16.to_le_bytes());
    std::fs::write(&fake, header).expect("write");
    let output = run(efficientad().arg("doctor").env("ORT_DYLIB_PATH", &fake));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let arch = std::env::consts::ARCH;
    assert!(
        stderr.contains("it is built for RISC-V")
            && stderr.contains(&format!("this efficientad is built for {arch}")),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn provider_auto_tries_tensorrt_then_cuda_then_cpu() {
    let files = first_files(&mtd().join("test/good"), 1);
    let output = run(efficientad()
        .args(["infer", "--provider", "auto", "--model"])
        .arg(small_bundle())
        .arg("--calibration")
        .arg(small_calibration())
        .args(&files));
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    // This machine has no GPU and the CPU-only library: both GPU providers are tried, in this
    // order, each failure said, and the CPU runs the model.
    let at = |needle: &str| {
        stderr
            .find(needle)
            .unwrap_or_else(|| panic!("`{needle}` missing in: {stderr}"))
    };
    let tensorrt = at("tensorrt unavailable");
    let cuda = at("cuda unavailable");
    let cpu = at("execution provider: cpu");
    assert!(tensorrt < cuda && cuda < cpu, "{stderr}");
    assert_eq!(json_lines(&output.stdout).len(), 1);
}

/// ONNX Runtime older than 1.31: a library that reports version 1.20.1 (a stand-in compiled
/// here, exporting only `OrtGetApiBase`, as every onnxruntime does) is refused at start with
/// both versions named, exit 2, no panic.
#[test]
fn an_onnx_runtime_older_than_1_31_is_refused_naming_both_versions() {
    let dir = temp_dir("old-ort");
    let source = dir.join("old_ort.c");
    std::fs::write(
        &source,
        r#"#include <stddef.h>
typedef struct { const void *(*GetApi)(unsigned); const char *(*GetVersionString)(void); } OrtApiBase;
static const void *get_api(unsigned version) { (void)version; return NULL; }
static const char *version_string(void) { return "1.20.1"; }
static const OrtApiBase base = { get_api, version_string };
const OrtApiBase *OrtGetApiBase(void) { return &base; }
"#,
    )
    .expect("write C");
    let lib = dir.join("libonnxruntime.so.1.20.1");
    // The library must be of the architecture under test (aarch64 under qemu).
    let cc = if runner().is_some() {
        "aarch64-linux-gnu-gcc"
    } else {
        "cc"
    };
    let built = run(Command::new(cc)
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&source));
    assert!(built.status.success(), "{cc}: {}", text(&built.stderr));
    let output = run(efficientad().arg("doctor").env("ORT_DYLIB_PATH", &lib));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("1.20.1") && stderr.contains("1.31"),
        "both versions named: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
