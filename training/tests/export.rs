//! The exported deployment graph against Burn's forward pass, in ONNX Runtime and the onnx checker.

use std::process::Command;

use burn::tensor::{Device, Tensor, TensorData};
use efficientad::model::bundle::Bundle;
use efficientad_training::export::{export_bundle, graph::folded_teacher_head};
use efficientad_training::model::{
    EfficientAd, PdnConfig, TEACHER_CHANNELS, Variant, set_teacher_stats,
};
use efficientad_training::train::checkpoint::{CheckpointInfo, Kind, TeacherProvenance};

use crate::util::*;

/// A random model with non-trivial teacher statistics (so the μ/σ fold matters).
fn random_model(
    variant: Variant,
    divisor: usize,
    seed: u64,
    device: &Device,
) -> (EfficientAd, CheckpointInfo) {
    let config = PdnConfig::new(variant, TEACHER_CHANNELS / divisor).with_width_divisor(divisor);
    let mut model = EfficientAd::new(&config, device);
    model.init_weights(
        &mut efficientad_training::data::Rng::new(seed),
        true,
        device,
    );
    let c = config.out_channels;
    let mean: Vec<f32> = (0..c)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.01)
        .collect();
    let std: Vec<f32> = (0..c).map(|i| 0.02 + (i * 13 % 7) as f32 * 0.01).collect();
    set_teacher_stats(&mut model, &mean, &std, device).expect("stats");
    let info = CheckpointInfo {
        normalize_exposure: false,
        kind: Kind::Model,
        variant,
        width_divisor: divisor,
        teacher: TeacherProvenance::Random { seed },
        training: serde_json::Value::Null,
    };
    (model, info)
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
fn burn_and_onnx_runtime_agree_small() {
    burn_matches_onnx_runtime(Variant::Small);
}

#[test]
fn burn_and_onnx_runtime_agree_medium() {
    burn_matches_onnx_runtime(Variant::Medium);
}

#[test]
fn teacher_normalization_fold_is_exact() {
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
fn exported_graph_passes_onnx_checker_and_loads_without_warnings() {
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
        .output_within()
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

/// `fit --normalize-exposure`'s graph: ONNX Runtime's maps equal Burn's on inputs normalized by
/// the training code's own function (dark and bright MTD tiles), model.json says so, and a
/// tile at half its brightness gets nearly the same maps (uint8 rounding aside).
#[test]
fn exported_exposure_normalization_matches_training() {
    let device = Device::flex();
    let dir = temp_dir("exposure-graph");
    let (model, mut info) = random_model(Variant::Small, 1, 9, &device);
    info.normalize_exposure = true;
    let written = export_bundle(&model, &info, &dir).expect("export");
    assert!(written.normalize_exposure);
    let bundle = Bundle::open(&dir).expect("open bundle");
    assert!(bundle.info.normalize_exposure, "model.json records it");
    let mut engine = cpu_engine(&bundle);
    let images = mtd_images(2);
    let batch = batch_u8(&images, 256);
    let ort = engine.run(&batch, 2).expect("ORT run");
    let plane = 3 * 256 * 256;
    let mut chw = to_vec(batch_tensor(&batch, 2, 256, &device));
    for image in chw.chunks_mut(plane) {
        efficientad_training::data::normalize_exposure(image);
    }
    let maps = model.maps(Tensor::from_data(
        TensorData::new(chw, [2, 3, 256, 256]),
        &device,
    ));
    let (e_st, e_ae) = (
        rel_diff(&ort.st, &to_vec(maps.st)),
        rel_diff(&ort.ae, &to_vec(maps.ae)),
    );
    assert!(e_st < 1e-4 && e_ae < 1e-4, "map_st {e_st}, map_ae {e_ae}");
    // The first tile at half brightness: the networks see nearly the same image.
    let half: Vec<u8> = batch[..plane].iter().map(|&v| v / 2).collect();
    let dimmed = engine.run(&half, 1).expect("ORT run");
    let n = 56 * 56;
    let (d_st, d_ae) = (
        rel_diff(&dimmed.st, &ort.st[..n]),
        rel_diff(&dimmed.ae, &ort.ae[..n]),
    );
    assert!(
        d_st < 0.05 && d_ae < 0.05,
        "half exposure moved the maps by {d_st}, {d_ae}"
    );
    // Without the option the same dimming changes the maps a lot (the check can fail).
    let (plain_model, plain_info) = random_model(Variant::Small, 1, 9, &device);
    let plain_dir = temp_dir("exposure-graph-off");
    export_bundle(&plain_model, &plain_info, &plain_dir).expect("export");
    let mut plain = cpu_engine(&Bundle::open(&plain_dir).expect("open"));
    let (a, b) = (
        plain.run(&batch[..plane], 1).expect("run"),
        plain.run(&half, 1).expect("run"),
    );
    assert!(
        rel_diff(&b.st, &a.st) > 0.05,
        "dimming should matter without the option"
    );
}
