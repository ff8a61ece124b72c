//! Integration tests of the training crate: networks, teacher import, checkpoints and the ONNX
//! deployment graph (compared with PyTorch fixtures and with ONNX Runtime).

mod util;

use std::process::Command;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use efficientad::bundle::Bundle;
use efficientad::engine::{Engine, EngineOptions, Provider};
use efficientad_training::checkpoint::{self, CheckpointInfo, Kind, TeacherProvenance};
use efficientad_training::export::{export_bundle, graph::folded_teacher_head};
use efficientad_training::model::{
    AutoencoderConfig, EfficientAd, PdnConfig, TEACHER_CHANNELS, Variant, set_teacher_stats,
};
use efficientad_training::teacher::{ImportError, import_pdn};
use util::*;

const FIXTURE_DIVISOR: usize = 16;

fn tiny_teacher_config(variant: Variant) -> PdnConfig {
    PdnConfig::new(variant, TEACHER_CHANNELS / FIXTURE_DIVISOR).with_width_divisor(FIXTURE_DIVISOR)
}

fn fixture_input(device: &Device) -> Tensor<4> {
    let x = read_f32(&fixture("input.f32"));
    Tensor::from_data(TensorData::new(x, [1, 3, 48, 48]), device)
}

#[test]
fn parameter_counts_match_the_paper_issue2() {
    let device = Device::flex();
    let count = |m: &dyn Fn() -> usize| m();
    let s_teacher = PdnConfig::new(Variant::Small, 384)
        .init(&device)
        .num_params();
    let s_student = PdnConfig::new(Variant::Small, 768)
        .init(&device)
        .num_params();
    let m_teacher = PdnConfig::new(Variant::Medium, 384)
        .init(&device)
        .num_params();
    let m_student = PdnConfig::new(Variant::Medium, 768)
        .init(&device)
        .num_params();
    let ae = count(&|| AutoencoderConfig::new(384).init(&device).num_params());
    // SPEC: S = 2.69M + 4.27M + 1.10M; M = 8.03M + 11.62M (+ the same AE).
    assert_eq!(s_teacher, 2_694_144);
    assert_eq!(s_student, 4_267_392);
    assert_eq!(m_teacher, 8_026_624);
    assert_eq!(m_student, 11_615_488);
    assert_eq!(ae, 1_096_320);
}

#[test]
fn teacher_import_matches_torch_in_both_key_styles_issue2() {
    let device = Device::flex();
    for variant in [Variant::Small, Variant::Medium] {
        let v = variant.letter();
        let expected = read_f32(&fixture(&format!("pdn_{v}_out.f32")));
        let expected_padded = read_f32(&fixture(&format!("pdn_{v}_out_padded.f32")));
        for style in ["sequential", "named"] {
            let path = fixture(&format!("pdn_{v}_{style}.pth"));
            let mut pdn = import_pdn(&path, tiny_teacher_config(variant), &device)
                .unwrap_or_else(|e| panic!("{e}"));
            let out = to_vec(pdn.forward(fixture_input(&device)));
            let err = rel_diff(&out, &expected);
            // Same float32 convolutions, different summation order: 1e-5 relative.
            assert!(err < 1e-5, "PDN-{v} {style}: relative error {err}");
            pdn.set_padding(true);
            let out = to_vec(pdn.forward(fixture_input(&device)));
            let err = rel_diff(&out, &expected_padded);
            assert!(err < 1e-5, "PDN-{v} {style} padded: relative error {err}");
        }
    }
}

#[test]
fn teacher_import_errors_name_key_and_shape_issue2() {
    let device = Device::flex();
    // Not a torch file at all.
    let err = import_pdn(
        &fixture("not_torch.pth"),
        tiny_teacher_config(Variant::Small),
        &device,
    )
    .expect_err("text file accepted");
    assert!(matches!(err, ImportError::NotTorchFile { .. }), "{err}");
    assert!(err.to_string().contains("not_torch.pth"), "{err}");

    // The other variant: the shape error names the key, both shapes and the right --variant.
    let err = import_pdn(
        &fixture("pdn_s_sequential.pth"),
        tiny_teacher_config(Variant::Medium),
        &device,
    )
    .expect_err("PDN-S file accepted as PDN-M");
    let text = err.to_string();
    assert!(matches!(err, ImportError::WrongShape { .. }), "{text}");
    assert!(
        text.contains("`0.weight`")
            && text.contains("[16, 3, 4, 4]")
            && text.contains("[8, 3, 4, 4]"),
        "{text}"
    );
    assert!(text.contains("--variant s"), "{text}");
    let err = import_pdn(
        &fixture("pdn_m_named.pth"),
        tiny_teacher_config(Variant::Small),
        &device,
    )
    .expect_err("PDN-M file accepted as PDN-S");
    assert!(err.to_string().contains("--variant m"), "{err}");

    // A file with a layer missing.
    let err = import_pdn(
        &fixture("pdn_s_no_conv4.pth"),
        tiny_teacher_config(Variant::Small),
        &device,
    )
    .expect_err("incomplete file accepted");
    assert!(matches!(err, ImportError::MissingKey { .. }), "{err}");
    assert!(err.to_string().contains("`conv4.weight`"), "{err}");
}

#[test]
fn cli_import_teacher_reports_full_size_shape_mismatch_issue2() {
    let out_dir = temp_dir("cli-import");
    let output = Command::new(env!("CARGO_BIN_EXE_efficientad-train"))
        .args(["import-teacher", "--variant", "s", "--pth"])
        .arg(fixture("pdn_s_named.pth"))
        .arg("--out")
        .arg(out_dir.join("teacher.bpk"))
        .output()
        .expect("run efficientad-train");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("`conv1.weight` has shape [8, 3, 4, 4]")
            && stderr.contains("[128, 3, 4, 4]"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn checkpoints_round_trip_issue2() {
    let device = Device::flex();
    let dir = temp_dir("checkpoint");
    let teacher = import_pdn(
        &fixture("pdn_m_named.pth"),
        tiny_teacher_config(Variant::Medium),
        &device,
    )
    .expect("import");
    let info = CheckpointInfo {
        kind: Kind::Teacher,
        variant: Variant::Medium,
        width_divisor: FIXTURE_DIVISOR,
        teacher: TeacherProvenance::Imported {
            file: "pdn_m_named.pth".into(),
            sha256: "x".into(),
        },
        training: serde_json::Value::Null,
    };
    let path = dir.join("teacher.bpk");
    checkpoint::save_teacher(&teacher, &info, &path).expect("save");
    let (loaded, loaded_info) =
        checkpoint::load_teacher(&path, Some(Variant::Medium), &device).expect("load");
    assert_eq!(loaded_info, info);
    let a = to_vec(teacher.forward(fixture_input(&device)));
    let b = to_vec(loaded.forward(fixture_input(&device)));
    assert_eq!(a, b, "a checkpoint must restore the exact weights");

    let err = checkpoint::load_teacher(&path, Some(Variant::Small), &device)
        .expect_err("variant mismatch accepted");
    assert!(err.to_string().contains("--variant s"), "{err}");
    let err = checkpoint::load_model(&path, &device).expect_err("teacher loaded as a whole model");
    assert!(err.to_string().contains("holds a teacher"), "{err}");
}

/// A random model with non-trivial teacher statistics (so the μ/σ fold matters).
fn random_model(
    variant: Variant,
    divisor: usize,
    seed: u64,
    device: &Device,
) -> (EfficientAd, CheckpointInfo) {
    device.seed(seed);
    let config = PdnConfig::new(variant, TEACHER_CHANNELS / divisor).with_width_divisor(divisor);
    let mut model = EfficientAd::new(&config, device);
    let c = config.out_channels;
    let mean: Vec<f32> = (0..c)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.01)
        .collect();
    let std: Vec<f32> = (0..c).map(|i| 0.02 + (i * 13 % 7) as f32 * 0.01).collect();
    set_teacher_stats(&mut model, &mean, &std, device).expect("stats");
    let info = CheckpointInfo {
        kind: Kind::Model,
        variant,
        width_divisor: divisor,
        teacher: TeacherProvenance::Random { seed },
        training: serde_json::Value::Null,
    };
    (model, info)
}

fn cpu_engine(bundle: &Bundle) -> Engine {
    let options = EngineOptions {
        provider: Provider::Cpu,
        intra_threads: Some(2),
        ..EngineOptions::default()
    };
    Engine::new(bundle, &options).unwrap_or_else(|e| panic!("{e}"))
}

/// Burn's maps and ONNX Runtime's maps on the exported graph, batches of 1 and 3 real images.
fn burn_matches_onnx_runtime(variant: Variant) {
    let device = Device::flex();
    let dir = temp_dir(&format!("parity-{variant}"));
    let (model, info) = random_model(variant, 1, 7, &device);
    export_bundle(&model, &info, &dir).expect("export");
    let bundle = Bundle::open(&dir).expect("open bundle");
    let mut engine = cpu_engine(&bundle);
    let images = mtd_images(4);
    for (n, paths) in [(1, &images[..1]), (3, &images[1..4])] {
        let batch = batch_u8(paths, 256);
        let ort = engine.run(&batch, n).expect("ORT run");
        let maps = model.maps(batch_tensor(&batch, n, 256, &device));
        let st = to_vec(maps.st);
        let ae = to_vec(maps.ae);
        let (e_st, e_ae) = (rel_diff(&ort.st, &st), rel_diff(&ort.ae, &ae));
        assert!(
            e_st < 1e-4 && e_ae < 1e-4,
            "PDN-{variant} batch {n}: map_st {e_st}, map_ae {e_ae}"
        );
    }
}

#[test]
fn burn_and_onnx_runtime_agree_small_issue2() {
    burn_matches_onnx_runtime(Variant::Small);
}

#[test]
fn burn_and_onnx_runtime_agree_medium_issue2() {
    burn_matches_onnx_runtime(Variant::Medium);
}

#[test]
fn teacher_normalization_fold_is_exact_issue2() {
    let device = Device::flex();
    let (model, info) = random_model(Variant::Small, 8, 3, &device);
    // In Burn: the folded last convolution with μ = 0, σ = 1 equals the unfolded (T − μ)/σ.
    let x = batch_tensor(&batch_u8(&mtd_images(2), 256), 2, 256, &device);
    let x = efficientad_training::model::imagenet_normalize(x);
    let unfolded = to_vec(model.teacher_normalized(x.clone()));
    let (w, b) = folded_teacher_head(&model);
    let mut folded = model.teacher.clone();
    let dims = folded.conv4.weight.dims();
    folded.conv4.weight =
        burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(w, dims), &device));
    folded.conv4.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
        TensorData::new(b, [dims[0]]),
        &device,
    )));
    let folded = to_vec(folded.forward(x));
    let err = rel_diff(&folded, &unfolded);
    assert!(err < 1e-5, "fold changes the normalized teacher by {err}");
    // The statistics really are non-trivial: without them the output would differ a lot.
    let raw = to_vec(
        model
            .teacher
            .forward(efficientad_training::model::imagenet_normalize(
                batch_tensor(&batch_u8(&mtd_images(2), 256), 2, 256, &device),
            )),
    );
    assert!(rel_diff(&raw, &unfolded) > 0.1);

    // Through ONNX Runtime: the exported (folded) graph's map_st equals Burn's unfolded map.
    let dir = temp_dir("fold");
    export_bundle(&model, &info, &dir).expect("export");
    let mut engine = cpu_engine(&Bundle::open(&dir).expect("bundle"));
    let batch = batch_u8(&mtd_images(2), 256);
    let ort = engine.run(&batch, 2).expect("run");
    let st = to_vec(model.maps(batch_tensor(&batch, 2, 256, &device)).st);
    let err = rel_diff(&ort.st, &st);
    assert!(err < 1e-4, "folded graph vs unfolded Burn: {err}");
}

#[test]
fn exported_graph_passes_onnx_checker_and_loads_without_warnings_issue2() {
    let dir = temp_dir("checker");
    let status = Command::new(env!("CARGO_BIN_EXE_efficientad-train"))
        .args([
            "export",
            "--random",
            "--seed",
            "5",
            "--variant",
            "m",
            "--width-divisor",
            "8",
            "--out",
        ])
        .arg(&dir)
        .status()
        .expect("run efficientad-train");
    assert!(status.success());
    let script = r#"
import sys, onnx, onnxruntime as ort, numpy as np
path = sys.argv[1]
model = onnx.load(path)
onnx.checker.check_model(model, full_check=True)
assert model.opset_import[0].version in (17, 18), model.opset_import
names = [n.name for n in model.graph.node]
for prefix in ("teacher/", "student/", "autoencoder/"):
    assert any(n.startswith(prefix) for n in names), prefix
assert [i.name for i in model.graph.input] == ["image"]
assert [o.name for o in model.graph.output] == ["map_st", "map_ae"]
so = ort.SessionOptions()
so.log_severity_level = 1
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
out = s.run(None, {"image": np.zeros((2, 256, 256, 3), np.uint8)})
assert [o.shape for o in out] == [(2, 56, 56), (2, 56, 56)], [o.shape for o in out]
print("ok")
"#;
    let output = Command::new("python3")
        .args(["-c", script])
        .arg(dir.join("model.onnx"))
        .output()
        .expect("python3 with onnx and onnxruntime is needed (see .ci/run)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("ok"),
        "{stdout}\n{stderr}"
    );
    // ORT logs at warning level as " W:" / "[W:"; an unsupported op or a CPU fallback shows there.
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("[W:") || l.contains(" W:"))
        .collect();
    assert!(warnings.is_empty(), "ONNX Runtime warned: {warnings:#?}");
}
