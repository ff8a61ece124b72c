//! `efficientad soak`: many triggers, injected faults, no answer lost, flat memory.

use serde_json::Value;

use crate::util::*;

/// `soak` on the small model over the two 256x256 fixture parts (the soak is about the
/// pipeline, not JPEG decoding, and stays quick under qemu): succeeds, and its outside check
/// found every answer, in order, with its own id, nothing extra, and `run` ended with 0.
fn soak(name: &str, args: &[&str]) -> Value {
    let source = temp_dir(name);
    for part in ["good.png", "break.png"] {
        std::fs::copy(
            root().join("tests/fixtures/arch").join(part),
            source.join(part),
        )
        .expect("copy part");
    }
    let output = run(efficientad()
        .args(["soak", "--provider", "cpu"])
        // Under emulation the run it starts needs the emulator too.
        .args(runner().map(|r| format!("--runner={r}")))
        .args(args)
        .arg("--model")
        .arg(small_bundle())
        .arg("--calibration")
        .arg(small_calibration())
        .arg("--source")
        .arg(format!("dir:{}", source.display())));
    assert!(
        output.status.success(),
        "{}\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("json");
    for field in ["lost", "extra", "out_of_order", "wrong_id", "unparsable"] {
        assert_eq!(report[field], 0, "{field}: {report}");
    }
    assert_eq!(report["run_exit"], 0, "{report}");
    report
}

#[test]
fn soak_small_many_triggers_no_loss_flat_memory() {
    let report = soak("soak", &["--triggers", "300"]);
    assert_eq!(report["answers"], 300);
    assert!(
        report["rss_growth_mib"].as_f64().is_some_and(|g| g < 16.0),
        "{report}"
    );
    let judged = report["ok"].as_u64().unwrap_or(0) + report["ng"].as_u64().unwrap_or(0);
    assert_eq!(
        judged, 300,
        "no fault injected, every part judged: {report}"
    );
}

/// The soak against a source that stalls, drops, delivers garbage and disconnects: every
/// trigger still gets exactly one answer in order (checked by `soak` from outside the run,
/// on its stdout), each fault shows up as its own ERROR, and the line recovers after each.
#[test]
fn soak_with_injected_faults_loses_nothing() {
    let report = soak(
        "soak-faults",
        &[
            "--triggers",
            "200",
            "--frame-timeout-ms",
            "50",
            "--faults",
            "disconnect=61,stall=23,drop=7,garbage=11",
            // A one-second run's memory is still warming up (frames of new sizes,
            // reconnects); flat memory is the 10,000-trigger soak's claim (README), not this
            // test's.
            "--max-growth-mib",
            "64",
        ],
    );
    assert_eq!(report["answers"], 200, "{report}");
    let errors = &report["errors"];
    // Each kind of fault is answered with its own `error_kind`.
    for kind in ["bad_frame", "frame_timeout", "camera_unavailable"] {
        assert!(
            errors
                .as_object()
                .is_some_and(|e| e.keys().any(|k| k.starts_with(kind))),
            "no `{kind}` answer: {report}"
        );
    }
    // Garbage frames: the empty ones are refused before the model (ERROR of kind
    // `preprocess`: "frame of 0x0 pixels …"), never judged; noise ones are judged.
    assert!(
        errors
            .as_object()
            .is_some_and(|e| e.contains_key("preprocess")),
        "no garbage answer: {report}"
    );
    // All 200 triggers arrive at once, so the triggers that come while the camera reconnects
    // (100 ms) are many; the line still judges parts before and after every fault.
    let judged = report["ok"].as_u64().unwrap_or(0) + report["ng"].as_u64().unwrap_or(0);
    assert!(
        judged >= 40,
        "the line did not recover between faults: {report}"
    );
}
