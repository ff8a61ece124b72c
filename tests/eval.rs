//! `efficientad eval` and the metrics it reports.

use std::path::PathBuf;

use serde_json::Value;

use crate::util::*;

#[test]
fn metrics_equal_sklearn_and_the_mvtec_au_pro_routine() {
    use efficientad::offline::metrics::{InMemory, pixel_metrics, roc_auc};
    let path = root().join("tests/fixtures/metrics/metrics.json");
    let fixture: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("json");
    let mut images = Vec::new();
    let (mut scores, mut labels) = (Vec::new(), Vec::new());
    for im in fixture["images"].as_array().expect("images") {
        let s: Vec<f32> = im["scores"]
            .as_array()
            .expect("s")
            .iter()
            .map(|v| v.as_f64().expect("f") as f32)
            .collect();
        let m: Vec<u8> = im["mask"]
            .as_array()
            .expect("m")
            .iter()
            .map(|v| v.as_u64().expect("u") as u8)
            .collect();
        scores.push(s.iter().copied().fold(f32::NEG_INFINITY, f32::max));
        labels.push(im["label"].as_bool().expect("label"));
        let (w, h) = (
            im["width"].as_u64().expect("w") as usize,
            im["height"].as_u64().expect("h") as usize,
        );
        images.push((s, m, w, h));
    }
    let source = InMemory { images };
    let image_auroc = roc_auc(&scores, &labels).expect("both classes");
    assert!(
        (image_auroc - fixture["image_auroc"].as_f64().expect("x")).abs() < 1e-6,
        "{image_auroc}"
    );
    for (limit, key) in [(0.3, "au_pro_0.3"), (0.05, "au_pro_0.05")] {
        // A tiny budget forces the sliced sweep: it must give the same numbers.
        for budget in [usize::MAX, 500] {
            let m = pixel_metrics(&source, limit, budget);
            let pixel = m.pixel_auroc.expect("pixel auroc");
            let pro = m.au_pro.expect("au-pro");
            assert!(
                (pixel - fixture["pixel_auroc"].as_f64().expect("x")).abs() < 1e-6,
                "pixel {pixel}"
            );
            assert!(
                (pro - fixture[key].as_f64().expect("x")).abs() < 1e-6,
                "{key} {pro} (budget {budget})"
            );
        }
    }
}

/// Writes a tiny MVTec-layout dataset: test/good (2), test/scratch (2, with masks), and
/// ground_truth; `wrong_mask` gives the second mask another size.
fn tiny_dataset(name: &str, wrong_mask: Option<(u32, u32)>) -> PathBuf {
    let root = temp_dir(name);
    let src = first_files(&mtd().join("test/good"), 2);
    for dir in ["test/good", "test/scratch", "ground_truth/scratch"] {
        std::fs::create_dir_all(root.join(dir)).expect("dir");
    }
    for (i, f) in src.iter().enumerate() {
        std::fs::copy(f, root.join(format!("test/good/g{i}.jpg"))).expect("copy");
        std::fs::copy(f, root.join(format!("test/scratch/s{i}.jpg"))).expect("copy");
        let (w, h) = image::image_dimensions(f).expect("dims");
        let (mw, mh) = if i == 1 {
            wrong_mask.unwrap_or((w, h))
        } else {
            (w, h)
        };
        let mask = image::GrayImage::from_fn(mw, mh, |x, y| {
            image::Luma([if x < mw / 4 && y < mh / 3 { 255 } else { 0 }])
        });
        mask.save(root.join(format!("ground_truth/scratch/s{i}_mask.png")))
            .expect("mask");
    }
    root
}

#[test]
fn eval_reports_every_field_on_mtd() {
    let bundle = small_bundle();
    let (cal_dir, _) = image_folder("eval-cal", &mtd().join("validation/good"), 8);
    let cal_path = cal_dir.join("../eval-cal.json");
    calibrate(bundle, &cal_dir, &cal_path, &[]);
    let scores = temp_dir("eval-out").join("scores.csv");
    let output = run(efficientad()
        .args([
            "eval",
            "--provider",
            "cpu",
            "--batch",
            "4",
            "--json",
            "--model",
        ])
        .arg(bundle)
        .arg("--calibration")
        .arg(&cal_path)
        .arg("--dataset")
        .arg(mtd())
        .arg("--scores-out")
        .arg(&scores));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let defects = ["blowhole", "break", "crack", "fray", "uneven"];
    for group in
        std::iter::once(&report["overall"]).chain(defects.iter().map(|d| &report["per_defect"][d]))
    {
        for key in ["image_auroc", "pixel_auroc", "au_pro"] {
            let v = group[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} missing in {group}"));
            assert!((0.0..=1.0).contains(&v), "{key} = {v}");
        }
    }
    // The committed MTD subset (scripts/make-fixtures): 6 good and 3 + 6 + 2 + 2 + 2 defective
    // test images.
    assert_eq!(report["overall"]["images"], 21);
    assert_eq!(report["at_threshold"]["good_images"], 6);
    assert_eq!(report["at_threshold"]["defective_images"], 15);
    for key in ["accuracy", "threshold"] {
        assert!(report["at_threshold"][key].as_f64().is_some(), "{key}");
    }
    for key in ["p50_ms", "p99_ms", "max_ms"] {
        assert!(
            report["latency"][key].as_f64().is_some_and(|v| v > 0.0),
            "{key}"
        );
    }
    assert_eq!(report["fpr_limit"], 0.3);
    let csv = std::fs::read_to_string(&scores).expect("scores csv");
    assert_eq!(csv.lines().count(), 22, "header + one row per image");
    assert!(
        csv.lines()
            .nth(1)
            .is_some_and(|l| l.ends_with(|c: char| c.is_ascii_digit()))
    );
}

#[test]
fn eval_refuses_a_mask_of_the_wrong_size() {
    let bundle = small_bundle();
    let (cal_dir, _) = image_folder("evalmask-cal", &mtd().join("validation/good"), 6);
    let cal_path = cal_dir.join("../evalmask-cal.json");
    calibrate(bundle, &cal_dir, &cal_path, &[]);
    let dataset = tiny_dataset("mask-size", Some((10, 10)));
    let output = run(efficientad()
        .args(["eval", "--provider", "cpu", "--model"])
        .arg(bundle)
        .arg("--calibration")
        .arg(&cal_path)
        .arg("--dataset")
        .arg(&dataset));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("s1_mask.png is 10x10") && stderr.contains("masks must match"),
        "{stderr}"
    );

    // The same dataset with matching masks evaluates.
    let dataset = tiny_dataset("mask-ok", None);
    let output = run(efficientad()
        .args(["eval", "--provider", "cpu", "--json", "--model"])
        .arg(bundle)
        .arg("--calibration")
        .arg(&cal_path)
        .arg("--dataset")
        .arg(&dataset));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["overall"]["regions"], 2);

    // One undecodable test image: the others are still evaluated, the file is named, exit 1.
    std::fs::write(dataset.join("test/good/zz_broken.jpg"), b"not a jpeg").expect("write");
    let output = run(efficientad()
        .args(["eval", "--provider", "cpu", "--json", "--model"])
        .arg(bundle)
        .arg("--calibration")
        .arg(&cal_path)
        .arg("--dataset")
        .arg(&dataset));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("zz_broken.jpg"), "{stderr}");
    let report: Value = serde_json::from_slice(&output.stdout).expect("json");
    assert_eq!(report["failed_images"], 1, "{report}");
    assert_eq!(report["overall"]["images"], 4, "{report}");
}

/// README's MTD results row, `| **overall** | 584 | **0.765** | **0.620** | **0.507** |`: the
/// image count and the three overall numbers.
fn readme_overall_row() -> (u64, [f64; 3]) {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let line = readme
        .lines()
        .find(|l| l.starts_with("| **overall** |"))
        .expect("README's MTD results table has an overall row");
    let cells: Vec<String> = line
        .split('|')
        .map(|c| c.trim().trim_matches('*').to_string())
        .filter(|c| !c.is_empty())
        .collect();
    let number = |i: usize| -> f64 {
        cells[i]
            .parse()
            .unwrap_or_else(|_| panic!("cell {i} of {line:?} is not a number"))
    };
    (number(1) as u64, [number(2), number(3), number(4)])
}

/// The shipped model and calibration on the full MTD test split score what README's results
/// table says (to its three decimals).
#[test]
#[ignore = "dataset stage: needs the full MTD test split (.ci/run runs it with --ignored)"]
fn shipped_model_scores_readme_numbers_on_full_mtd() {
    let (images, want) = readme_overall_row();
    let output = run(efficientad()
        .args(["eval", "--provider", "cpu", "--json", "--model"])
        .arg(root().join("onnx/mtd-s"))
        .arg("--calibration")
        .arg(root().join("calibration/mtd-s.json"))
        .arg("--dataset")
        .arg(shared_data().join("mtd")));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    assert_eq!(report["overall"]["images"], images);
    for (key, want) in ["image_auroc", "pixel_auroc", "au_pro"]
        .into_iter()
        .zip(want)
    {
        let got = report["overall"][key].as_f64().expect(key);
        assert!(
            (got - want).abs() <= 0.0005 + 1e-9,
            "{key}: eval gives {got:.4}, README says {want:.3}"
        );
    }
}
