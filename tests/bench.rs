//! `efficientad bench`.

use serde_json::Value;

use crate::util::*;

#[test]
fn bench_reports_stages_and_the_ratio_of_its_own_numbers() {
    let (dir, _) = image_folder("bench", &mtd().join("test/good"), 4);
    let output = run(efficientad()
        .args([
            "bench",
            "--provider",
            "cpu",
            "--batch",
            "2",
            "--runs",
            "2",
            "--json",
            "--model",
        ])
        .arg(small_bundle())
        .arg("--images")
        .arg(&dir));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let r: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(r["images"], 4);
    assert_eq!(r["batch"], 2);
    let get = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} missing: {r}"));
    for k in [
        "decode_ms",
        "resize_ms",
        "device_run_ms",
        "maps_ms",
        "end_to_end_ms",
        "bare_session_ms",
    ] {
        assert!(get(k) > 0.0, "{k}: {r}");
    }
    assert!(
        close(
            get("ratio"),
            get("end_to_end_ms") / get("bare_session_ms"),
            1e-9
        ),
        "{r}"
    );
    // (The ratio is the two medians' quotient; the timings themselves, with tests running in
    // parallel, are too noisy to bound.) The table shows the same ratio line.
    let table = run(efficientad()
        .args(["bench", "--provider", "cpu", "--runs", "1", "--model"])
        .arg(small_bundle())
        .arg("--images")
        .arg(&dir));
    let table = text(&table.stdout);
    assert!(
        table.contains("ratio end-to-end / bare session") && table.contains("4 images x 1 runs"),
        "{table}"
    );
}
