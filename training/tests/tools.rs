//! `demo-samples` and `plot`.

use std::process::Command;

use crate::util::*;

/// `demo-samples` draws the asked numbers of good and defective parts from the test split,
/// the same ones for the same seed, copied under their folder names.
#[test]
fn demo_samples_are_a_seeded_random_draw_from_the_test_split() {
    let dir = temp_dir("demo-samples");
    let draw = |seed: &str, out: &str| -> Vec<String> {
        let output = Command::new(env!("CARGO_BIN_EXE_efficientad-train"))
            .args([
                "demo-samples",
                "--good",
                "2",
                "--defective",
                "3",
                "--seed",
                seed,
            ])
            .arg("--dataset")
            .arg(mtd())
            .arg("--out")
            .arg(dir.join(out))
            .output_within()
            .expect("run demo-samples");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut files: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| {
                let p = std::path::Path::new(l);
                assert!(p.is_file(), "{l}");
                let folder = p.parent().and_then(|f| f.file_name()).expect("folder");
                format!(
                    "{}/{}",
                    folder.to_string_lossy(),
                    p.file_name().expect("name").to_string_lossy()
                )
            })
            .collect();
        files.sort();
        files
    };
    let a = draw("4", "a");
    assert_eq!(a, draw("4", "b"), "same seed, same parts");
    assert_ne!(a, draw("5", "c"), "another seed, other parts");
    assert_eq!(a.iter().filter(|f| f.starts_with("good/")).count(), 2);
    assert_eq!(a.len(), 5);
    for f in &a {
        assert!(mtd().join("test").join(f).is_file(), "{f} is a test image");
    }
}

/// `plot` draws hand-made quality logs: a 1500x480 PNG with each run's line colour on it, and
/// the Markdown table with every checkpoint (the later line wins for a step logged twice).
#[test]
fn plot_draws_the_quality_curves_of_runs() {
    let dir = temp_dir("plot");
    let quality = |auroc: f64| {
        serde_json::json!({"image_auroc": auroc, "pixel_auroc": 0.7, "au_pro": 0.5, "accuracy": 0.6,
            "missed_defects": 1, "false_rejects": 0, "test_images": 9, "failed_images": 0, "seconds": 1.0})
    };
    for (run, points) in [
        ("a", vec![(100, 0.61), (200, 0.72), (200, 0.74)]),
        ("b", vec![(200, 0.66)]),
    ] {
        std::fs::create_dir_all(dir.join(run)).expect("dir");
        let mut log = String::from("{\"step\":1,\"total\":3.0}\n");
        for (step, auroc) in points {
            log.push_str(&format!(
                "{}\n",
                serde_json::json!({"step": step, "eval": quality(auroc)})
            ));
        }
        std::fs::write(dir.join(run).join("log.jsonl"), log).expect("log");
    }
    let png = dir.join("curves.png");
    let output = Command::new(env!("CARGO_BIN_EXE_efficientad-train"))
        .arg("plot")
        .arg(dir.join("a"))
        .arg(format!("{}=second run", dir.join("b").display()))
        .arg("--out")
        .arg(&png)
        .output_within()
        .expect("run plot");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(table.contains("| a | 100 | 0.610 |"), "{table}");
    assert!(
        table.contains("| a | 200 | 0.740 |") && !table.contains("0.720"),
        "{table}"
    );
    assert!(table.contains("| second run | 200 | 0.660 |"), "{table}");
    let decoder = efficientad::model::preprocess::decode_file(&png).expect("png decodes");
    let rgb = decoder.to_rgb8();
    assert_eq!(rgb.dimensions(), (1500, 480));
    for colour in [[31u8, 119, 180], [214, 39, 40]] {
        assert!(
            rgb.pixels().filter(|p| p.0 == colour).count() > 50,
            "{colour:?} drawn"
        );
    }
    // A folder without quality lines is a clear error.
    std::fs::create_dir_all(dir.join("empty")).expect("dir");
    std::fs::write(dir.join("empty/log.jsonl"), "{\"step\":1}\n").expect("log");
    let output = Command::new(env!("CARGO_BIN_EXE_efficientad-train"))
        .arg("plot")
        .arg(dir.join("empty"))
        .arg("--out")
        .arg(&png)
        .output_within()
        .expect("run plot");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--eval-every"));
}
