//! `efficientad-train bench`.

use std::process::Command;

use crate::util::*;

/// `efficientad-train bench --json` times real steps and prints one JSON line; without the
/// PyTorch comparison it says why and reports Burn's figures alone.
#[test]
fn bench_prints_one_json_line_with_burn_timings() {
    // One bench step of each kind on the fixtures; `extra` after the common arguments.
    let bench = |extra: &[&str], backbone: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_efficientad-train"))
            .args(["bench", "--steps", "1", "--no-torch", "--json"])
            .args(extra)
            .arg("--dataset")
            .arg(mtd())
            .arg("--images")
            .arg(penalty_images())
            .arg("--backbone")
            .arg(backbone)
            .output_within()
            .expect("run efficientad-train bench")
    };
    let output = bench(&["--distill-batch", "1"], &tiny_backbone());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("json");
    for step in ["fit", "distill"] {
        let burn = v[step]["burn_s"].as_f64().expect("burn_s");
        assert!(burn > 0.0 && burn < 600.0, "{step}: {burn}");
        assert_eq!(v[step]["burn_steps_s"].as_array().map(Vec::len), Some(1));
        assert!(
            v[step]["torch_s"].is_null() && v[step]["ratio"].is_null(),
            "{v}"
        );
        assert_eq!(v[step]["torch_unavailable"], "--no-torch");
    }
    assert!(v["threads"].as_u64().expect("threads") >= 1);
    assert!(v["fit"]["peak_rss_mib"].as_f64().expect("peak") > 0.0);
    assert!(stderr.contains("no PyTorch comparison"), "{stderr}");

    // --no-distill: the fit step alone, no backbone needed (a GPU box without it).
    let output = bench(
        &["--no-distill"],
        std::path::Path::new("/no/such/backbone.onnx"),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert!(v["fit"]["burn_s"].as_f64().expect("fit") > 0.0, "{v}");
    assert!(v["distill"].is_null(), "{v}");
}
