//! `efficientad-train gauge` against an independent NumPy/scikit-learn computation
//! (`gauge_reference.py`) on a small MTD subset with the seeded test backbone (`util::tiny_backbone`).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::*;

/// Images resized to `size`² (masks with nearest neighbour) so both sides see the same pixels.
fn resized_copy(from: &Path, to: &Path, size: u32, mask: bool) {
    std::fs::create_dir_all(to.parent().expect("parent")).expect("mkdir");
    let img = image::open(from).unwrap_or_else(|e| panic!("{}: {e}", from.display()));
    let filter = if mask {
        image::imageops::FilterType::Nearest
    } else {
        image::imageops::FilterType::Triangle
    };
    let out = img.resize_exact(size, size, filter);
    let out = if mask {
        image::DynamicImage::ImageLuma8(out.to_luma8())
    } else {
        image::DynamicImage::ImageRgb8(out.to_rgb8())
    };
    out.save(to)
        .unwrap_or_else(|e| panic!("{}: {e}", to.display()));
}

/// 4 train images, 3 good and 3 crack test images (masks included).
fn small_dataset(dir: &Path, size: u32) -> PathBuf {
    let mtd = mtd();
    let dataset = dir.join("mtd");
    let png = |p: &Path, folder: &str| {
        let stem = p.file_stem().expect("stem").to_string_lossy().into_owned();
        dataset.join(folder).join(format!("{stem}.png"))
    };
    for f in sorted_files(&mtd.join("train/good")).iter().take(4) {
        resized_copy(f, &png(f, "train/good"), size, false);
    }
    for f in sorted_files(&mtd.join("test/good")).iter().take(3) {
        resized_copy(f, &png(f, "test/good"), size, false);
    }
    for f in sorted_files(&mtd.join("test/crack")).iter().take(3) {
        resized_copy(f, &png(f, "test/crack"), size, false);
        let stem = f.file_stem().expect("stem").to_string_lossy().into_owned();
        let mask = mtd.join(format!("ground_truth/crack/{stem}_mask.png"));
        let to = dataset.join(format!("ground_truth/crack/{stem}_mask.png"));
        resized_copy(&mask, &to, size, true);
    }
    dataset
}

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    (a - b).abs() <= tolerance
}

/// Both sides build the target (unfold, pool, upsample, pool), standardize it with the
/// training cells' statistics, search the whole
/// memory and rank: per-image scores agree to 1e-3 relative (float32 against float64 sums
/// over thousands of terms), and the AUROCs exactly (6 images: one swapped pair moves them by
/// 1/9).
#[test]
fn gauge_of_a_target_agrees_with_numpy_and_scikit_learn() {
    let dir = temp_dir("gauge-reference");
    let size = 128;
    let dataset = small_dataset(&dir, size);
    let backbone = tiny_backbone();
    for normalize in [false, true] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_efficientad-train"));
        command
            .arg("gauge")
            .arg("--features")
            .arg(format!("target:{}", backbone.display()))
            .arg("--dataset")
            .arg(&dataset)
            .args(["--backbone-size", "128"])
            .args(["--memory", "100000", "--ring", "2", "--json"]);
        if normalize {
            command.arg("--normalize-exposure");
        }
        let output = command.output_within().expect("run gauge");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
        assert_eq!(
            got["memory"],
            4 * 16 * 16,
            "the whole memory: every train cell"
        );
        assert_eq!(got["grid"], 16);
        let reference = Command::new("python3")
            .arg(root().join("training/tests/gauge_reference.py"))
            .arg(&backbone)
            .arg(&dataset)
            .args(["128", "2", if normalize { "1" } else { "0" }])
            .output_within()
            .expect("python3 with numpy, onnxruntime, pillow and scikit-learn (see .ci/run)");
        assert!(
            reference.status.success(),
            "{}",
            String::from_utf8_lossy(&reference.stderr)
        );
        let want: serde_json::Value = serde_json::from_slice(&reference.stdout).expect("json");
        let scores = got["scores"].as_array().expect("scores");
        assert_eq!(scores.len(), 6);
        for s in scores {
            let path = s["path"].as_str().expect("path");
            let w = &want["scores"][path];
            for (key, i) in [("score", 0), ("inner", 1)] {
                let (a, b) = (s[key].as_f64().expect("score"), w[i].as_f64().expect("ref"));
                assert!(
                    close(a, b, 1e-3 * b.abs()),
                    "{path} {key}: {a} vs numpy {b}"
                );
            }
        }
        for (key, ours) in [
            ("image_auroc", &got["image_auroc"]),
            ("image_auroc_inner", &got["image_auroc_inner"]),
        ] {
            let (a, b) = (ours.as_f64().expect(key), want[key].as_f64().expect(key));
            assert!(close(a, b, 1e-9), "{key}: {a} vs scikit-learn {b}");
        }
        // Pixel AUROC: the same maps resized by both; ties among 98,304 pixels may break
        // differently, so 1e-4.
        let (a, b) = (
            got["report"]["overall"]["pixel_auroc"]
                .as_f64()
                .expect("pixel"),
            want["pixel_auroc"].as_f64().expect("pixel"),
        );
        assert!(close(a, b, 1e-4), "pixel AUROC {a} vs scikit-learn {b}");
    }
}

/// `scripts/backbone-outputs` re-wires the two feature outputs: selecting the original tensors
/// gives a graph whose outputs equal the source's; selecting the stage outputs gives the
/// shapes of those blocks, and the distillation target code accepts the result.
#[test]
fn backbone_outputs_script_rewires_the_feature_outputs() {
    let dir = temp_dir("backbone-outputs");
    let backbone = tiny_backbone();
    let script = root().join("scripts/backbone-outputs");
    let make = |fine: &str, coarse: &str, out: &Path| {
        let output = Command::new("python3")
            .arg(&script)
            .arg(&backbone)
            .args([fine, coarse])
            .arg(out)
            .output_within()
            .expect("python3 with onnx (see .ci/run)");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let (same, stages) = (dir.join("same.onnx"), dir.join("stages.onnx"));
    make("feat_s8", "feat_s16", &same);
    make("blocks.2.conv", "blocks.3.conv", &stages);
    let image: Vec<f32> = (0..3 * 64 * 64).map(|i| (i % 251) as f32 / 251.0).collect();
    let targets = |path: &Path| {
        efficientad_training::train::distill::Backbone::open(path)
            .expect("backbone")
            .targets(&image, 1, 64)
            .expect("targets")
            .remove(0)
    };
    assert_eq!(
        targets(&same),
        targets(&backbone),
        "same tensors, same target"
    );
    let t = targets(&stages);
    assert_eq!(t.len(), 384 * 8 * 8, "a 384-channel target on the /8 grid");
    assert_ne!(t, targets(&backbone));
    let bad = Command::new("python3")
        .arg(&script)
        .arg(&backbone)
        .args(["no.such.tensor", "feat_s16"])
        .arg(dir.join("bad.onnx"))
        .output_within()
        .expect("python3");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no.such.tensor"));
}
