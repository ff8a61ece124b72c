//! `efficientad calibrate`: quantiles and thresholds against independent computations; broken
//! calibration files.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use efficientad::model::bundle::Bundle;
use serde_json::Value;

use crate::util::*;

#[test]
fn calibration_quantiles_equal_an_independent_computation() {
    let bundle = small_bundle();
    let (dir, files) = image_folder("cal-images", &mtd().join("validation/good"), 12);
    let cal = calibrate(bundle, &dir, &dir.join("../cal-q.json"), &[]);
    let raw = reference_raw_maps(bundle, &files);
    let st: Vec<f32> = raw.iter().flat_map(|m| m.0.clone()).collect();
    let ae: Vec<f32> = raw.iter().flat_map(|m| m.1.clone()).collect();
    let norm = &cal["normalization"];
    // Batch 3 (calibrate) against batch 1 (reference) may differ in the last float bits only.
    for (map, values) in [("st", &st), ("ae", &ae)] {
        for (key, q) in [("q_a", 0.9), ("q_b", 0.995)] {
            let got = norm[map][key].as_f64().expect("quantile");
            let want = reference_quantile(values, q);
            assert!(close(got, want, 1e-5), "{map}.{key}: {got} vs {want}");
        }
    }
    assert_eq!(cal["validation"]["images"], 12);
    assert_eq!(cal["threshold_rule"]["rule"], "false_reject_rate");
    assert_eq!(
        cal["model_sha256"],
        Bundle::open(bundle).expect("bundle").info.model_sha256
    );
    assert_eq!(cal["provider"], "cpu");
    assert_eq!(cal["precision"], "fp32");
}

/// Calibrations whose numbers cannot give a meaningful verdict are refused at load, naming
/// the field (exit 2, nothing judged); `infer` with nothing to judge is a setup error too.
#[test]
fn broken_calibrations_and_empty_inputs_are_setup_errors() {
    let bundle = small_bundle();
    let (cal_dir, _) = image_folder("broken-cal", &mtd().join("validation/good"), 6);
    let cal_path = cal_dir.join("../broken-cal.json");
    let cal = calibrate(bundle, &cal_dir, &cal_path, &[]);
    let image = first_files(&mtd().join("test/good"), 1).remove(0);
    let infer = |cal: &Path, input: &Path| {
        run(efficientad()
            .args(["infer", "--provider", "cpu", "--model"])
            .arg(bundle)
            .arg("--calibration")
            .arg(cal)
            .arg(input))
    };
    let qa = cal["normalization"]["st"]["q_a"].clone();
    let cases: [(&str, Value, &str); 5] = [
        ("/normalization/st/q_b", qa.clone(), "normalization.st.q_b"),
        (
            "/normalization/ae/q_b",
            serde_json::json!(-1.0e9),
            "normalization.ae.q_b",
        ),
        (
            "/normalization/ae/q_a",
            serde_json::json!(f64::MAX),
            "normalization.ae.q_b",
        ),
        ("/threshold", Value::Null, "threshold"),
        ("/threshold", serde_json::json!("high"), "threshold"),
    ];
    for (i, (pointer, value, field)) in cases.into_iter().enumerate() {
        let mut broken = cal.clone();
        *broken.pointer_mut(pointer).expect("field") = value;
        let path = cal_dir.join(format!("../broken-{i}.json"));
        std::fs::write(&path, broken.to_string()).expect("write");
        let output = infer(&path, &image);
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{pointer}: {stderr}");
        assert!(
            stderr.contains(field),
            "{pointer}: expected `{field}` in {stderr}"
        );
        assert!(output.stdout.is_empty(), "{pointer}: nothing judged");
    }
    // A model.json that disagrees with its graph: refused at load, not an ERROR per image.
    let mismatched = temp_dir("mismatched-bundle");
    std::fs::copy(bundle.join("model.onnx"), mismatched.join("model.onnx")).expect("copy");
    let mut info: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("model.json")).expect("read"))
            .expect("json");
    info["input_size"] = 512.into();
    std::fs::write(mismatched.join("model.json"), info.to_string()).expect("write");
    let output = run(efficientad()
        .args(["infer", "--provider", "cpu", "--model"])
        .arg(&mismatched)
        .arg("--calibration")
        .arg(&cal_path)
        .arg(&image));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("model.json says input_size 512"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
    // The same bundle on the line: triggers that arrived while it loaded are each answered
    // ERROR with the reason before the setup error ends the run (exit 2).
    let source = replay_folder("unstarted-run");
    let mut child = efficientad()
        .args(["run", "--provider", "cpu", "--model"])
        .arg(&mismatched)
        .arg("--calibration")
        .arg(&cal_path)
        .arg("--source")
        .arg(format!("dir:{}", source.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn run");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"u1\nu2\n")
        .expect("write");
    let output = process::finish(child, "efficientad");
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let answers = json_lines(&output.stdout);
    let ids: Vec<&Value> = answers.iter().map(|a| &a["id"]).collect();
    assert_eq!(ids, [&Value::from("u1"), &Value::from("u2")], "{stderr}");
    for a in &answers {
        assert_eq!(a["verdict"], "ERROR", "{a}");
        assert!(
            a["error"]
                .as_str()
                .is_some_and(|e| e.contains("could not start") && e.contains("input_size 512")),
            "{a}"
        );
    }

    let empty = temp_dir("infer-empty");
    std::fs::write(empty.join("notes.txt"), "not an image").expect("write");
    let output = infer(&cal_path, &empty);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no images in"), "{stderr}");
}

#[test]
fn calibrate_false_reject_rate_and_anomalous_rules_from_the_cli() {
    // --false-reject-rate 0.25 on 12 normal images: the threshold is their 0.75-quantile
    // (linear interpolation, as docs/method.md says) and the recorded share above it is what infer sees.
    let (normal_dir, normal) = image_folder("frr-normal", &mtd().join("validation/good"), 12);
    let path = normal_dir.join("../frr.json");
    let cal = calibrate(
        small_bundle(),
        &normal_dir,
        &path,
        &["--false-reject-rate", "0.25"],
    );
    let scores: Vec<f32> = infer_scores(&path, &normal, &[])
        .iter()
        .map(|l| l["score"].as_f64().expect("score") as f32)
        .collect();
    let threshold = cal["threshold"].as_f64().expect("threshold");
    let want = reference_quantile(&scores, 0.75);
    assert!(
        close(threshold, want, 1e-5),
        "threshold {threshold} vs {want}"
    );
    assert_eq!(cal["threshold_rule"]["rule"], "false_reject_rate");
    assert_eq!(cal["threshold_rule"]["target"], 0.25);
    let above = scores.iter().filter(|&&s| f64::from(s) > threshold).count() as f64 / 12.0;
    let achieved = cal["threshold_rule"]["achieved"]
        .as_f64()
        .expect("achieved");
    assert!(
        (achieved - above).abs() < 1e-9,
        "achieved {achieved} vs {above}"
    );

    // --anomalous: the threshold lies between two scores and its F1 is the best any cut gets.
    let (bad_dir, bad) = image_folder("f1-anomalous", &mtd().join("test/blowhole"), 6);
    let path = normal_dir.join("../f1.json");
    let cal = calibrate(
        small_bundle(),
        &normal_dir,
        &path,
        &["--anomalous", bad_dir.to_str().expect("utf-8 path")],
    );
    assert_eq!(cal["threshold_rule"]["rule"], "best_f1", "{cal}");
    assert_eq!(cal["validation"]["anomalous_images"], 6);
    let score = |l: &Value| l["score"].as_f64().expect("score");
    let normal_scores: Vec<f64> = infer_scores(&path, &normal, &[])
        .iter()
        .map(score)
        .collect();
    let bad_scores: Vec<f64> = infer_scores(&path, &bad, &[]).iter().map(score).collect();
    let f1_at = |t: f64| {
        let tp = bad_scores.iter().filter(|&&s| s > t).count() as f64;
        let fp = normal_scores.iter().filter(|&&s| s > t).count() as f64;
        if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + (bad_scores.len() as f64 - tp))
        }
    };
    let mut all: Vec<f64> = normal_scores.iter().chain(&bad_scores).copied().collect();
    all.sort_by(f64::total_cmp);
    let best = all
        .windows(2)
        .map(|w| f1_at((w[0] + w[1]) / 2.0))
        .chain(std::iter::once(f1_at(all[0] - 1.0)))
        .fold(0.0, f64::max);
    let threshold = cal["threshold"].as_f64().expect("threshold");
    assert!(
        (f1_at(threshold) - best).abs() < 1e-9,
        "F1 at the threshold {} vs best {best}",
        f1_at(threshold)
    );
    let recorded = cal["threshold_rule"]["f1"].as_f64().expect("f1");
    assert!(
        (recorded - best).abs() < 1e-6,
        "recorded F1 {recorded} vs {best}"
    );
    assert!(
        !all.iter().any(|&s| (s - threshold).abs() < 1e-9),
        "the cut sits on a score"
    );
}
