//! `efficientad-train fit`: resume, the bundle and calibration it writes, errors, quality
//! checkpoints.

use std::process::Command;

use efficientad::model::bundle::Bundle;
use efficientad_training::data;
use efficientad_training::model::EfficientAd;
use efficientad_training::train;

use crate::util::*;

#[test]
fn resume_after_interrupt_equals_an_uninterrupted_run() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (teacher, dataset, penalty) = tiny_setup("resume", true);
    let base = teacher.parent().expect("dir").to_owned();
    // Uninterrupted: 5 steps.
    let whole = fit_config(&teacher, &dataset, &penalty, &base.join("whole"), 5);
    let a =
        train::train(&whole, false, Arc::new(AtomicBool::new(false)), &mut |_| {}).expect("train");
    // Interrupted after step 3 (as Ctrl-C would), then resumed to 5.
    let split = fit_config(&teacher, &dataset, &penalty, &base.join("split"), 5);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let first = train::train(&split, false, stop, &mut |e| {
        if let train::Event::Step { step: 3, .. } = e {
            flag.store(true, Ordering::SeqCst);
        }
    })
    .expect("first part");
    assert!(first.interrupted && first.state.step == 3);
    let b = train::train(&split, true, Arc::new(AtomicBool::new(false)), &mut |_| {})
        .expect("resumed part");
    assert_eq!(b.state.step, 5);
    assert_eq!(
        a.state.last_losses, b.state.last_losses,
        "losses of the last step differ"
    );
    let weights = |m: &EfficientAd| {
        let mut v = Vec::new();
        for (_, c) in m.student.convs() {
            v.extend(to_vec(c.weight.val()));
        }
        for c in m.autoencoder.encoder.iter().chain(&m.autoencoder.decoder) {
            v.extend(to_vec(c.weight.val()));
        }
        v
    };
    assert!(
        weights(&a.model) == weights(&b.model),
        "resumed weights differ from the uninterrupted run"
    );
    // The log has one line per step of each part.
    assert_eq!(train::read_log(&base.join("split/log.jsonl")).len(), 5);
}

#[test]
fn short_fit_writes_a_bundle_and_calibration_the_runtime_loads() {
    let (teacher, dataset, penalty) = tiny_setup("fit-cli", true);
    let base = teacher.parent().expect("dir").to_owned();
    let output = fit_command(
        &["--steps", "3", "--seed", "1", "--variant", "s"],
        (&teacher, &dataset, &penalty),
        &base,
        "tiny",
    )
    .arg("--calibration-out")
    .arg(base.join("calibration/tiny.json"))
    .output_within()
    .expect("run fit");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bundle = Bundle::open(&base.join("onnx/tiny")).expect("bundle opens");
    assert_eq!(bundle.info.training["steps"], 3);
    assert_eq!(bundle.info.training["seed"], 1);
    assert!(
        bundle.info.training["final_losses"]["total"]
            .as_f64()
            .is_some()
    );
    let calibration = efficientad::judge::calibration::Calibration::load_for(
        &base.join("calibration/tiny.json"),
        &bundle,
    )
    .expect("calibration belongs to the bundle");
    assert_eq!(calibration.validation.images, 3);
    let mut engine = cpu_engine(&bundle);
    let batch = batch_u8(&mtd_images(1), 256);
    let maps = engine
        .run(&batch, 1)
        .expect("runtime runs the trained bundle");
    assert!(maps.st.iter().all(|v| v.is_finite()));
}

/// A GPU box that trains only: `fit --skip-calibration` exports the bundle and needs no ONNX
/// Runtime (here made unfindable), saying what to run next; no calibration file is written.
#[test]
fn fit_skip_calibration_exports_without_onnx_runtime() {
    let (teacher, dataset, penalty) = tiny_setup("fit-skip-cal", true);
    let base = teacher.parent().expect("dir").to_owned();
    let output = fit_command(
        &["--steps", "1", "--skip-calibration"],
        (&teacher, &dataset, &penalty),
        &base,
        "nocal",
    )
    .current_dir(&base)
    .env("ORT_DYLIB_PATH", base.join("no-such-libonnxruntime.so"))
    .env("EFFICIENTAD_NO_ORT_INSTALL", "1")
    .output_within()
    .expect("run fit");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains("not calibrated (--skip-calibration)")
            && stderr.contains("efficientad calibrate --model"),
        "{stderr}"
    );
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(base.join("onnx/nocal/model.json")).expect("model.json"),
    )
    .expect("json");
    assert_eq!(info["training"]["steps"], 1);
    assert!(!base.join("calibration").exists());
    // Calibrating later is the runtime's job; both options together are refused.
    let refused = fit_command(
        &[
            "--steps",
            "1",
            "--skip-calibration",
            "--calibration-out",
            "x.json",
        ],
        (&teacher, &dataset, &penalty),
        &base,
        "nocal2",
    )
    .output_within()
    .expect("run fit");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot be used with"));
}

#[test]
fn fit_errors_are_clear() {
    let (teacher, dataset, penalty) = tiny_setup("fit-errors", false);
    let base = teacher.parent().expect("dir").to_owned();
    let fit = |args: &[&str], dataset: &std::path::Path| {
        let output = fit_command(&["--steps", "1"], (&teacher, dataset, &penalty), &base, "x")
            .args(args)
            .output_within()
            .expect("run fit");
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr
    };
    let e = fit(&["--variant", "m"], &dataset);
    assert!(
        e.contains("PDN-s teacher") && e.contains("--variant m"),
        "{e}"
    );
    let e = fit(&[], &base.join("nowhere"));
    assert!(e.contains("nowhere/train/good does not exist"), "{e}");
    // 5 training images, no validation/good: too few to hold out 10%.
    let e = fit(&[], &dataset);
    assert!(
        e.contains("holding out 10% for validation needs at least 10"),
        "{e}"
    );
    // An empty folder.
    let empty = base.join("empty");
    std::fs::create_dir_all(empty.join("train/good")).expect("dir");
    let e = fit(&[], &empty);
    // The one folder check of the runtime and the training crate (efficientad::offline::images).
    assert!(e.contains("train/good holds no images (jpg"), "{e}");
    // No steps: nothing would be trained, so nothing is exported.
    let output = fit_command(
        &["--steps", "0"],
        (&teacher, &dataset, &penalty),
        &base,
        "zero",
    )
    .output_within()
    .expect("run fit");
    let e = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && e.contains("--steps 0"), "{e}");
    for made in ["runs/zero", "onnx/zero"] {
        assert!(!base.join(made).exists(), "{made} made by a refused fit");
    }
}

#[test]
fn unreadable_training_images_are_skipped_and_counted() {
    let dir = temp_dir("unreadable");
    let files: Vec<_> = mtd_images(2);
    let bad = dir.join("broken.jpg");
    std::fs::write(&bad, b"garbage").expect("write");
    let mut all = files.clone();
    all.push(bad);
    let set = data::load_images(&all, 256, None, || {});
    assert_eq!(set.pixels.len(), 2);
    assert_eq!(set.skipped, 1);
}

/// An unreadable training image is skipped and counted by a fresh `fit`, as README promises; it
/// used to fail with "the training images changed since the checkpoint" because the image
/// order was drawn from the file count before decoding.
#[test]
fn fit_skips_an_unreadable_training_image() {
    let (teacher, dataset, penalty) = tiny_setup("fit-unreadable", true);
    std::fs::write(dataset.join("train/good/broken.png"), b"not a png").expect("write");
    let work = temp_dir("fit-unreadable-work");
    let config = fit_config(&teacher, &dataset, &penalty, &work, 2);
    let mut messages = Vec::new();
    let trained = train::train(
        &config,
        false,
        std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        &mut |e| {
            if let train::Event::Message(m) = e {
                messages.push(m.to_owned());
            }
        },
    )
    .expect("fit with one unreadable image");
    assert_eq!(trained.state.step, 2);
    assert_eq!(trained.state.order.len(), 5, "the five readable images");
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("1 unreadable images skipped")),
        "{messages:?}"
    );
}

/// Mann–Whitney AUROC written out pair by pair (ties count half): an independent reference
/// for the evaluation's sweep.
fn pairwise_auroc(scores: &[(f32, bool)]) -> f64 {
    let (mut wins, mut pairs) = (0.0, 0.0);
    for &(a, la) in scores {
        for &(b, lb) in scores {
            if la && !lb {
                pairs += 1.0;
                wins += if a > b {
                    1.0
                } else if a == b {
                    0.5
                } else {
                    0.0
                };
            }
        }
    }
    wins / pairs
}

/// `fit --eval-every 2` logs the test-split quality at steps 2 and 4, and the numbers of the
/// last check are those of the checked model: its image AUROC recomputed here from the
/// exported bundle and calibration with a pairwise AUROC.
#[test]
fn fit_eval_every_logs_test_quality_of_the_checked_model() {
    let (teacher, dataset, penalty) = tiny_setup("fit-eval", true);
    let mtd = mtd();
    for (folder, n) in [("good", 3), ("crack", 3)] {
        let copied = copy_first(
            &mtd.join("test").join(folder),
            &dataset.join("test").join(folder),
            n,
        );
        if folder != "good" {
            let gt = dataset.join("ground_truth").join(folder);
            std::fs::create_dir_all(&gt).expect("dir");
            for f in copied {
                let stem = f.file_stem().expect("stem").to_string_lossy().into_owned();
                let mask = format!("{stem}_mask.png");
                std::fs::copy(
                    mtd.join("ground_truth").join(folder).join(&mask),
                    gt.join(&mask),
                )
                .expect("copy mask");
            }
        }
    }
    let base = teacher.parent().expect("dir").to_owned();
    let work = base.join("runs/tiny");
    let output = Command::new(env!("CARGO_BIN_EXE_efficientad-train"))
        .args(["fit", "--steps", "4", "--eval-every", "2", "--teacher"])
        .arg(&teacher)
        .arg("--dataset")
        .arg(&dataset)
        .arg("--penalty-images")
        .arg(&penalty)
        .arg("--out")
        .arg(base.join("onnx/tiny"))
        .arg("--work")
        .arg(&work)
        .arg("--calibration-out")
        .arg(base.join("calibration/tiny.json"))
        .output_within()
        .expect("run fit");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let checks =
        efficientad_training::tools::quality::read_quality(&work.join("log.jsonl")).expect("log");
    assert_eq!(
        checks.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [2, 4],
        "{stderr}"
    );
    assert!(stderr.contains("step 4: image AUROC"), "{stderr}");
    let last = &checks[1].1;
    assert_eq!((last.test_images, last.failed_images), (6, 0));
    for v in [last.image_auroc, last.pixel_auroc, last.au_pro] {
        let v = v.expect("metric");
        assert!((0.0..=1.0).contains(&v), "{v}");
    }

    // Independent recomputation of the last check's image AUROC.
    let checked = work.join("eval-bundle");
    let bundle = Bundle::open(&checked).expect("checked bundle");
    assert_eq!(bundle.info.training["steps"], 4);
    let calibration = efficientad::judge::calibration::Calibration::load_for(
        &checked.join("calibration.json"),
        &bundle,
    )
    .expect("calibration of the checked bundle");
    let mut engine = cpu_engine(&bundle);
    let mut scored = Vec::new();
    for (folder, anomalous) in [("good", false), ("crack", true)] {
        for f in sorted_files(&dataset.join("test").join(folder)) {
            let maps = engine.run(&batch_u8(&[f], 256), 1).expect("run");
            let combined = calibration.normalization.combine(&maps.st, &maps.ae);
            let max = combined.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            scored.push((max, anomalous));
        }
    }
    let expected = pairwise_auroc(&scored);
    let logged = last.image_auroc.expect("image AUROC");
    assert!(
        (logged - expected).abs() < 1e-9,
        "logged {logged}, recomputed {expected}: {scored:?}"
    );
}
