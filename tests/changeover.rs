//! Several models in one `run` (a product changeover without a restart): triggers that name
//! a model are judged by it.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::util::*;

/// Several models in one run (`--model NAME=DIR --calibration NAME=FILE`, repeated): a trigger
/// naming a model is judged by it, one without a name by the first; each answer names its
/// model and the graph's sha256 prefix; an unknown name is ERROR listing the known ones; the
/// scores equal `infer` with each bundle alone; `/metrics` counts per model.
#[test]
fn several_models_judge_the_triggers_that_name_them() {
    let (source, files) = image_folder("two-models-src", &mtd().join("test/good"), 4);
    let (cal_images, _) = image_folder("two-models-cal", &mtd().join("validation/good"), 4);
    let dir = temp_dir("two-models");
    let beta = dir.join("beta");
    export_random(&beta, 11, 32);
    let (cal_alpha, cal_beta) = (dir.join("alpha.json"), dir.join("beta.json"));
    calibrate(small_bundle(), &cal_images, &cal_alpha, &[]);
    calibrate(&beta, &cal_images, &cal_beta, &[]);
    let args: Vec<std::ffi::OsString> = vec![
        "--model".into(),
        format!("alpha={}", small_bundle().display()).into(),
        "--calibration".into(),
        format!("alpha={}", cal_alpha.display()).into(),
        "--model".into(),
        format!("beta={}", beta.display()).into(),
        "--calibration".into(),
        format!("beta={}", cal_beta.display()).into(),
    ];
    let (mut child, mut stdin, mut stdout, addr) = run_http(&source, &args);
    let lines = [
        r#"{"id": "a1", "model": "alpha"}"#,
        r#"{"id": "b2", "model": "beta"}"#,
        r#"{"id": "d3"}"#,
        r#"{"id": "x4", "model": "gamma"}"#,
        r#"{"id": "b5", "model": "beta"}"#,
    ];
    let answers: Vec<Value> = lines
        .iter()
        .map(|l| {
            writeln!(stdin, "{l}").expect("write");
            stdin.flush().expect("flush");
            read_answer(&mut stdout)
        })
        .collect();
    let (_, metrics) = get(&addr, "/metrics");
    drop(stdin);
    assert!(process::wait(&mut child, "efficientad").success());

    let sha = |bundle: &Path| -> String {
        let info: Value = serde_json::from_str(
            &std::fs::read_to_string(bundle.join("model.json")).expect("model.json"),
        )
        .expect("json");
        info["model_sha256"].as_str().expect("sha")[..12].to_owned()
    };
    // The frames come in folder order, one per trigger: image i for trigger i (the fifth
    // trigger gets the first image again).
    let infer_alone = |bundle: &Path, cal: &Path, file: &PathBuf| -> f64 {
        let output = run(efficientad()
            .args(["infer", "--provider", "cpu", "--model"])
            .arg(bundle)
            .arg("--calibration")
            .arg(cal)
            .arg(file));
        assert!(output.status.success(), "{}", text(&output.stderr));
        json_lines(&output.stdout)[0]["score"]
            .as_f64()
            .expect("score")
    };
    let expect = [
        (0, "alpha", small_bundle().to_path_buf(), &cal_alpha, 0),
        (1, "beta", beta.clone(), &cal_beta, 1),
        (2, "alpha", small_bundle().to_path_buf(), &cal_alpha, 2),
        (4, "beta", beta.clone(), &cal_beta, 0),
    ];
    for (i, name, bundle, cal, image) in expect {
        let a = &answers[i];
        assert_eq!(a["model"]["name"], name, "{a}");
        assert_eq!(a["model"]["sha256"], sha(&bundle), "{a}");
        let score = a["score"].as_f64().unwrap_or_else(|| panic!("{a}"));
        let alone = infer_alone(&bundle, cal, &files[image]);
        assert!(
            (score - alone).abs() <= 1e-6 * alone.abs().max(1.0),
            "{a}: infer alone gives {alone}"
        );
    }
    let unknown = &answers[3];
    assert_eq!(unknown["verdict"], "ERROR");
    assert_eq!(unknown["error_kind"], "unknown_model", "{unknown}");
    let error = unknown["error"].as_str().unwrap_or("");
    assert!(
        error.contains("gamma") && error.contains("alpha, beta"),
        "{unknown}"
    );
    let metrics = String::from_utf8_lossy(&metrics);
    let count = |model: &str| -> f64 {
        ["OK", "NG", "ERROR"]
            .iter()
            .map(|v| {
                sample(
                    &metrics,
                    &format!(
                        "efficientad_model_answers_total{{model=\"{model}\",verdict=\"{v}\"}}"
                    ),
                )
            })
            .sum()
    };
    assert_eq!((count("alpha"), count("beta")), (2.0, 2.0), "{metrics}");
}
