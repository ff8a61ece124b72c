//! `efficientad demo` on the shipped model and samples.

use std::path::Path;

use serde_json::Value;

use crate::util::*;

#[test]
fn demo_gives_every_shipped_sample_its_independently_computed_verdict() {
    let output = run(efficientad()
        .args(["demo", "--provider", "cpu"])
        .current_dir(root()));
    let stderr = text(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines = json_lines(&output.stdout);
    let samples = efficientad::offline::images::list_images(&[root().join("onnx/mtd-s/samples")])
        .expect("samples");
    assert!(samples.len() >= 4, "a handful of samples is shipped");
    assert_eq!(lines.len(), samples.len(), "one answer per sample");
    // The verdict each sample must get, computed here from the model's raw maps, the
    // calibration's numbers and its region, written out independently of the runtime.
    let model = root().join("onnx/mtd-s");
    let cal: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("calibration/mtd-s.json")).expect("calibration"),
    )
    .expect("calibration JSON");
    let border = cal["region"]["ignore_border_px"].as_f64().unwrap_or(0.0);
    assert!(
        cal["region"]["roi"].is_null(),
        "the shipped calibration has no ROI mask"
    );
    let threshold = cal["threshold"].as_f64().expect("threshold");
    let raw = reference_raw_maps(&model, &samples);
    let mut kinds = std::collections::BTreeSet::new();
    let mut agree = 0;
    for ((line, sample), (st, ae)) in lines.iter().zip(&samples).zip(&raw) {
        let folder = sample
            .parent()
            .and_then(|p| p.file_name())
            .and_then(|n| n.to_str())
            .expect("folder");
        kinds.insert(folder == "good");
        let (w, h) = image::image_dimensions(sample).expect("dims");
        let cells = reference_cells(w as usize, h as usize, border, None);
        let score = reference_combined(st, ae, &cal)
            .iter()
            .zip(&cells)
            .filter(|(_, k)| **k)
            .map(|(v, _)| *v)
            .fold(f64::NEG_INFINITY, f64::max);
        let want = if score > threshold { "NG" } else { "OK" };
        assert_eq!(line["verdict"], want, "{} → {line}", sample.display());
        agree += usize::from(want == if folder == "good" { "OK" } else { "NG" });
        assert_eq!(line["frame"]["source"], sample.display().to_string());
        assert!(
            line["heatmap"]
                .as_str()
                .is_some_and(|p| Path::new(p).is_file()),
            "{line}"
        );
    }
    assert_eq!(kinds.len(), 2, "samples include good and defective parts");
    let summary = format!(
        "{agree}/{} verdicts agree with the sample's folder",
        samples.len()
    );
    assert!(
        stderr.contains(&summary) && stderr.contains("heatmaps in"),
        "expected `{summary}` in: {stderr}"
    );
    let total: u64 = std::fs::read_dir(root().join("onnx/mtd-s/samples"))
        .expect("samples")
        .filter_map(Result::ok)
        .flat_map(|d| {
            std::fs::read_dir(d.path())
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
        })
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    assert!(
        total < 1_000_000,
        "samples must stay well under 1 MB, are {total} bytes"
    );
}
