//! Integration tests of the training crate: networks, teacher import, checkpoints and the ONNX
//! deployment graph (compared with PyTorch fixtures and with ONNX Runtime).

mod backbone;
mod distill;
mod gauge;
mod util;

use std::process::Command;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use efficientad::model::bundle::Bundle;
use efficientad::model::engine::{Engine, EngineOptions, Provider};
use efficientad_training::export::{export_bundle, graph::folded_teacher_head};
use efficientad_training::model::teacher::{ImportError, import_pdn};
use efficientad_training::model::{
    AutoencoderConfig, EfficientAd, PdnConfig, TEACHER_CHANNELS, Variant, set_teacher_stats,
};
use efficientad_training::train::checkpoint::{self, CheckpointInfo, Kind, TeacherProvenance};
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
    // docs/method.md: S = 2.69M + 4.27M + 1.10M; M = 8.03M + 11.62M (+ the same AE).
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
        normalize_exposure: false,
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

// ---- training (issue 4) ----

use efficientad_training::data;
use efficientad_training::train::distill::patch_target;
use efficientad_training::train::{self, FitConfig, StepInputs, losses, teacher_raw};

fn formula_weights(
    convs: Vec<&mut burn::nn::conv::Conv2d>,
    first: usize,
    device: &Device,
) -> usize {
    let mut k = first;
    for conv in convs {
        let dims = conv.weight.dims();
        let fan_in = (dims[1] * dims[2] * dims[3]) as f64;
        let n: usize = dims.iter().product();
        let w: Vec<f32> = (0..n)
            .map(|j| ((0.7 * j as f64 + 1.3 * k as f64).sin() * 0.5 / fan_in.sqrt()) as f32)
            .collect();
        let b: Vec<f32> = (0..dims[0])
            .map(|j| (0.1 * (0.3 * j as f64 + k as f64).cos()) as f32)
            .collect();
        conv.weight =
            burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(w, dims), device));
        conv.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
            TensorData::new(b, [dims[0]]),
            device,
        )));
        k += 1;
    }
    k
}

fn pdn_convs(p: &mut efficientad_training::model::Pdn) -> Vec<&mut burn::nn::conv::Conv2d> {
    vec![&mut p.conv1, &mut p.conv2, &mut p.conv3, &mut p.conv4]
}

/// The fixture's networks: PDN-S narrowed 16x and the full autoencoder, weights by formula.
fn formula_model(device: &Device) -> EfficientAd {
    let config = tiny_teacher_config(Variant::Small);
    let mut model = EfficientAd::new(&config, device);
    let k = formula_weights(pdn_convs(&mut model.teacher), 0, device);
    let k = formula_weights(pdn_convs(&mut model.student), k, device);
    let ae = &mut model.autoencoder;
    let k = formula_weights(ae.encoder.iter_mut().collect(), k, device);
    formula_weights(ae.decoder.iter_mut().collect(), k, device);
    let c = config.out_channels;
    let mean: Vec<f32> = (0..c).map(|i| (0.1 * (i as f64).sin()) as f32).collect();
    let std: Vec<f32> = (0..c)
        .map(|i| (1.0 + 0.5 * (i as f64).cos().powi(2)) as f32)
        .collect();
    set_teacher_stats(&mut model, &mean, &std, device).expect("stats");
    model
}

fn formula_image(kind: &str, size: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(3 * size * size);
    for c in 0..3 {
        for y in 0..size {
            for x in 0..size {
                let (c, y, x) = (c as f64, y as f64, x as f64);
                let v = if kind == "image" {
                    0.5 + 0.4 * (0.05 * x * (c + 1.0) + 0.07 * y).sin()
                } else {
                    0.5 + 0.4 * (0.03 * x + 0.11 * y * (c + 1.0)).cos()
                };
                out.push(v as f32);
            }
        }
    }
    out
}

fn normalized_teacher(model: &EfficientAd, chw: &[f32], device: &Device) -> Vec<f32> {
    let raw = teacher_raw(&model.teacher, chw, device);
    let mean = to_vec(model.teacher_mean.val());
    let std = to_vec(model.teacher_std.val());
    let plane = raw.len() / mean.len();
    raw.iter()
        .enumerate()
        .map(|(i, v)| (v - mean[i / plane]) / std[i / plane])
        .collect()
}

/// The fixtures' step inputs: formula images, the augmented view (×1.1, clamped) and the
/// normalized teacher outputs of both.
struct FormulaInputs {
    image: Vec<f32>,
    penalty: Vec<f32>,
    augmented: Vec<f32>,
    teacher_image: Vec<f32>,
    teacher_augmented: Vec<f32>,
}

impl FormulaInputs {
    fn new(model: &EfficientAd, device: &Device) -> Self {
        let image = formula_image("image", 256);
        let augmented: Vec<f32> = image.iter().map(|v| (v * 1.1).clamp(0.0, 1.0)).collect();
        Self {
            teacher_image: normalized_teacher(model, &image, device),
            teacher_augmented: normalized_teacher(model, &augmented, device),
            penalty: formula_image("penalty", 256),
            image,
            augmented,
        }
    }

    fn inputs(&self) -> StepInputs<'_> {
        StepInputs {
            image: &self.image,
            teacher_image: &self.teacher_image,
            penalty: &self.penalty,
            augmented: &self.augmented,
            teacher_augmented: &self.teacher_augmented,
        }
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-12)
}

#[test]
fn training_losses_equal_the_pytorch_reference_issue4() {
    let device = Device::flex();
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("losses.json")).expect("fixture"))
            .expect("json");
    let f = |k: &str| fixture[k].as_f64().unwrap_or_else(|| panic!("{k}"));
    let model = formula_model(&device);
    let formula = FormulaInputs::new(&model, &device);
    let image = &formula.image;
    let t_image = &formula.teacher_image;
    let (_, l, selection) = losses(&model, &formula.inputs(), None, &device);
    // float32 networks in two frameworks: 1e-4 relative (the tolerance for losses).
    for (name, got, want) in [
        ("hard", l.hard, f("hard")),
        ("penalty", l.penalty, f("penalty")),
        ("ae", l.ae, f("ae")),
        ("stae", l.stae, f("stae")),
        ("total", l.total, f("total")),
    ] {
        assert!(close(got, want, 1e-4), "{name}: {got} vs torch {want}");
    }
    assert!(
        close(f64::from(selection.threshold), f("hard_quantile"), 1e-5),
        "{selection:?}"
    );
    assert_eq!(
        selection.selected as f64,
        f("hard_selected"),
        "hard loss selection"
    );

    // Independently: exactly the elements at or above the quantile are averaged.
    let c = model.teacher.out_channels();
    let s = to_vec(
        model
            .student
            .forward(efficientad_training::model::imagenet_normalize(
                Tensor::from_data(TensorData::new(image.clone(), [1, 3, 256, 256]), &device),
            )),
    );
    let d: Vec<f32> = t_image
        .iter()
        .zip(&s[..c * 56 * 56])
        .map(|(t, s)| (t - s) * (t - s))
        .collect();
    let chosen: Vec<f32> = d
        .iter()
        .copied()
        .filter(|&v| v >= selection.threshold)
        .collect();
    assert_eq!(chosen.len(), selection.selected);
    let mean = chosen.iter().map(|&v| f64::from(v)).sum::<f64>() / chosen.len() as f64;
    assert!(close(l.hard, mean, 1e-5), "{} vs {mean}", l.hard);
}

#[test]
fn distillation_target_and_loss_equal_the_pytorch_reference_issue4() {
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("losses.json")).expect("fixture"))
            .expect("json");
    let feat = |c: usize, h: usize, w: usize, a: f64| -> Vec<f32> {
        (0..c * h * w)
            .map(|i| (a * i as f64).sin() as f32)
            .collect()
    };
    let target = patch_target(
        &feat(8, 16, 16, 0.37),
        (8, 16, 16),
        &feat(12, 8, 8, 0.23),
        (12, 8, 8),
        16,
        24,
    );
    let want: Vec<f32> = fixture["target"]
        .as_array()
        .expect("target")
        .iter()
        .map(|v| v.as_f64().expect("f") as f32)
        .collect();
    let err = rel_diff(&target, &want);
    assert!(
        err < 1e-5,
        "distillation target differs from PatchCore-style torch reference: {err}"
    );

    // MSE of the padded teacher against the per-channel normalized target.
    let device = Device::flex();
    let mut teacher = formula_model(&device).teacher;
    teacher.set_padding(true);
    let plane = 16 * 16;
    let mut normalized = target.clone();
    for c in 0..24 {
        let ch = &mut normalized[c * plane..(c + 1) * plane];
        let m = ch.iter().map(|&v| f64::from(v)).sum::<f64>() / plane as f64;
        let s = (ch.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / plane as f64).sqrt();
        ch.iter_mut()
            .for_each(|v| *v = ((f64::from(*v) - m) / s) as f32);
    }
    let x = efficientad_training::model::imagenet_normalize(Tensor::from_data(
        TensorData::new(formula_image("image", 64), [1, 3, 64, 64]),
        &device,
    ));
    let out = teacher.forward(x);
    let t = Tensor::<4>::from_data(TensorData::new(normalized, [1, 24, 16, 16]), &device);
    let mse = to_vec(efficientad_training::train::loss::mse(out, t))[0];
    let want = fixture["distill_mse"].as_f64().expect("mse");
    assert!(
        close(f64::from(mse), want, 1e-4),
        "distillation loss {mse} vs torch {want}"
    );
}

#[test]
fn a_few_optimizer_steps_lower_the_loss_issue4() {
    use burn::optim::{AdamConfig, GradientsParams};
    let device = Device::flex().autodiff();
    let plain = Device::flex();
    let mut model = formula_model(&device);
    let image = formula_image("image", 256);
    let penalty = formula_image("penalty", 256);
    let teacher_plain = formula_model(&plain);
    let t_image = normalized_teacher(&teacher_plain, &image, &plain);
    let inputs = StepInputs {
        image: &image,
        teacher_image: &t_image,
        penalty: &penalty,
        augmented: &image,
        teacher_augmented: &t_image,
    };
    let mut opt_s = AdamConfig::new().init();
    let mut opt_a = AdamConfig::new().init();
    let mut history = Vec::new();
    for _ in 0..6 {
        let (total, l, _) = losses(&model, &inputs, None, &device);
        history.push(l.total);
        let mut grads = total.backward();
        let gs = GradientsParams::from_module(&mut grads, &model.student);
        let ga = GradientsParams::from_module(&mut grads, &model.autoencoder);
        model.student = opt_s.step(1e-3, model.student, gs);
        model.autoencoder = opt_a.step(1e-3, model.autoencoder, ga);
    }
    assert!(
        history[5] < 0.8 * history[0],
        "loss did not fall: {history:?}"
    );
}

/// One whole `fit` step's gradients — every weight and bias of the student and the autoencoder —
/// against PyTorch's autograd on the same formula networks and inputs (fixture made by
/// make_grad_fixture.py). This covers the batched student pass, the per-half output
/// convolution and the im2col + GEMM convolution gradients together. Tolerance: per tensor,
/// ‖Burn − torch‖₂ ≤ 1e-4 · ‖torch‖₂ (float32 in two frameworks with different summation
/// orders; measured at most 4.1e-5, in the bias of the autoencoder's first decoder conv, the
/// end of the longest chain).
#[test]
fn step_gradients_equal_pytorch_autograd_issue12() {
    check_step_gradients(&Device::flex(), 1e-4);
}

/// One `fit` step's loss and the gradients of every student and autoencoder weight on `plain`
/// (its autodiff twin computes), against PyTorch autograd's (fixture): relative L2 per tensor
/// and whole-tensor norms within `tolerance`.
fn check_step_gradients(plain: &Device, tolerance: f64) {
    let fixture_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("grads.json")).expect("fixture"))
            .expect("json");
    let values = read_f32(&fixture("grads.f32"));
    let device = plain.clone().autodiff();
    let plain = plain.clone();
    let model = formula_model(&device);
    let formula = FormulaInputs::new(&formula_model(&plain), &plain);
    let (total, l, _) = losses(&model, &formula.inputs(), None, &device);
    let want_total = fixture_json["total"].as_f64().expect("total");
    assert!(
        close(l.total, want_total, tolerance),
        "loss {} vs torch {want_total}",
        l.total
    );
    let grads = total.backward();

    let student = [
        &model.student.conv1,
        &model.student.conv2,
        &model.student.conv3,
        &model.student.conv4,
    ];
    let entries = fixture_json["entries"].as_array().expect("entries");
    assert_eq!(
        entries.len(),
        2 * (4 + 14),
        "every student and autoencoder conv, weight and bias"
    );
    let mut worst = (0f64, String::new());
    let mut failures = Vec::new();
    for e in entries {
        let module = e["module"].as_str().expect("module");
        let index = e["conv"].as_u64().expect("conv") as usize;
        let conv = match module {
            "student" => student[index],
            "autoencoder.encoder" => &model.autoencoder.encoder[index],
            "autoencoder.decoder" => &model.autoencoder.decoder[index],
            other => panic!("unknown module {other}"),
        };
        let name = format!("{module}[{index}].{}", e["param"].as_str().unwrap_or("?"));
        let grad = match e["param"].as_str() {
            Some("weight") => conv.weight.val().grad(&grads).map(to_vec),
            Some("bias") => conv
                .bias
                .as_ref()
                .and_then(|b| b.val().grad(&grads))
                .map(to_vec),
            other => panic!("unknown parameter {other:?}"),
        }
        .unwrap_or_else(|| panic!("{name}: no gradient"));
        let shape: Vec<usize> = e["shape"]
            .as_array()
            .expect("shape")
            .iter()
            .map(|v| v.as_u64().expect("dim") as usize)
            .collect();
        assert_eq!(grad.len(), shape.iter().product::<usize>(), "{name}: size");
        let (stride, count, offset) = (
            e["stride"].as_u64().expect("stride") as usize,
            e["count"].as_u64().expect("count") as usize,
            e["offset"].as_u64().expect("offset") as usize,
        );
        let picked: Vec<f64> = grad.iter().step_by(stride).map(|&v| f64::from(v)).collect();
        let want = &values[offset..offset + count];
        assert_eq!(picked.len(), count, "{name}: sampled elements");
        let diff = picked
            .iter()
            .zip(want)
            .map(|(a, &b)| (a - f64::from(b)).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm = want
            .iter()
            .map(|&b| f64::from(b).powi(2))
            .sum::<f64>()
            .sqrt();
        assert!(norm > 0.0, "{name}: the reference gradient is zero");
        if diff > tolerance * norm {
            failures.push(format!(
                "{name}: relative L2 difference {:.3e}",
                diff / norm
            ));
        }
        if diff / norm > worst.0 {
            worst = (diff / norm, name.clone());
        }
        // The whole tensor, also where only a sample is stored.
        let full = grad
            .iter()
            .map(|&v| f64::from(v).powi(2))
            .sum::<f64>()
            .sqrt();
        let want_full = e["norm"].as_f64().expect("norm");
        if !close(full, want_full, tolerance) {
            failures.push(format!("{name}: norm {full} vs torch {want_full}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!(
        "largest relative gradient difference: {:.2e} ({})",
        worst.0, worst.1
    );
}

/// A tiny teacher checkpoint (the 16x narrowed PDN-S fixture) and a small MTD-shaped dataset.
fn tiny_setup(
    name: &str,
    validation: bool,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let dir = temp_dir(name);
    let device = Device::flex();
    let teacher = import_pdn(
        &fixture("pdn_s_named.pth"),
        tiny_teacher_config(Variant::Small),
        &device,
    )
    .expect("import");
    let info = CheckpointInfo {
        normalize_exposure: false,
        kind: Kind::Teacher,
        variant: Variant::Small,
        width_divisor: FIXTURE_DIVISOR,
        teacher: TeacherProvenance::Imported {
            file: "pdn_s_named.pth".into(),
            sha256: "fixture".into(),
        },
        training: serde_json::Value::Null,
    };
    let teacher_path = dir.join("teacher.bpk");
    checkpoint::save_teacher(&teacher, &info, &teacher_path).expect("save teacher");
    let dataset = dir.join("data");
    let mtd = shared_data().join("mtd");
    let copy = |from: &str, to: &str, n: usize| {
        copy_first(&mtd.join(from), &dataset.join(to), n);
    };
    copy("train/good", "train/good", 5);
    if validation {
        copy("validation/good", "validation/good", 3);
    }
    let penalty = dir.join("penalty");
    copy_first(&shared_data().join("imagenet-sample"), &penalty, 3);
    (teacher_path, dataset, penalty)
}

/// `efficientad-train fit` on a tiny setup, writing under `base` as `name`; `args` come first.
fn fit_command(
    args: &[&str],
    (teacher, dataset, penalty): (&std::path::Path, &std::path::Path, &std::path::Path),
    base: &std::path::Path,
    name: &str,
) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_efficientad-train"));
    command
        .arg("fit")
        .args(args)
        .arg("--teacher")
        .arg(teacher)
        .arg("--dataset")
        .arg(dataset)
        .arg("--penalty-images")
        .arg(penalty)
        .arg("--out")
        .arg(base.join("onnx").join(name))
        .arg("--work")
        .arg(base.join("runs").join(name));
    command
}

fn fit_config(
    teacher: &std::path::Path,
    dataset: &std::path::Path,
    penalty: &std::path::Path,
    work: &std::path::Path,
    steps: usize,
) -> FitConfig {
    FitConfig {
        dataset: dataset.to_owned(),
        teacher: teacher.to_owned(),
        variant: Default::default(),
        penalty_images: penalty.to_owned(),
        steps,
        seed: 3,
        out: work.join("bundle"),
        work: work.to_owned(),
        checkpoint_every: 2,
        penalty_limit: None,
        train_limit: None,
        backend: efficientad_training::backend::Backend::Cpu,
        eval_every: 0,
        allow_cpu_adapter: false,
        normalize_exposure: false,
    }
}

#[test]
fn resume_after_interrupt_equals_an_uninterrupted_run_issue4() {
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
fn short_fit_writes_a_bundle_and_calibration_the_runtime_loads_issue4() {
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
    .output()
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
fn fit_skip_calibration_exports_without_onnx_runtime_issue14() {
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
    .output()
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
    .output()
    .expect("run fit");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("cannot be used with"));
}

#[test]
fn fit_errors_are_clear_issue4() {
    let (teacher, dataset, penalty) = tiny_setup("fit-errors", false);
    let base = teacher.parent().expect("dir").to_owned();
    let fit = |args: &[&str], dataset: &std::path::Path| {
        let output = fit_command(&["--steps", "1"], (&teacher, dataset, &penalty), &base, "x")
            .args(args)
            .output()
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
    .output()
    .expect("run fit");
    let e = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && e.contains("--steps 0"), "{e}");
    for made in ["runs/zero", "onnx/zero"] {
        assert!(!base.join(made).exists(), "{made} made by a refused fit");
    }
}

#[test]
fn unreadable_training_images_are_skipped_and_counted_issue4() {
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
fn fit_skips_an_unreadable_training_image_issue13() {
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

/// `efficientad-train bench --json` times real steps and prints one JSON line; without the
/// PyTorch comparison it says why and reports Burn's figures alone.
#[test]
fn bench_prints_one_json_line_with_burn_timings_issue12() {
    let shared = shared_data();
    // One bench step of each kind on the shared data; `extra` after the common arguments.
    let bench = |extra: &[&str], backbone: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_efficientad-train"))
            .args(["bench", "--steps", "1", "--no-torch", "--json"])
            .args(extra)
            .arg("--dataset")
            .arg(shared.join("mtd"))
            .arg("--images")
            .arg(shared.join("imagenet-sample"))
            .arg("--backbone")
            .arg(backbone)
            .output()
            .expect("run efficientad-train bench")
    };
    let output = bench(
        &["--distill-batch", "1"],
        &shared.join("../weights/efficientnet_lite0_features.onnx"),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line: {stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("json");
    for step in ["fit", "distill"] {
        let burn = v[step]["burn_s"].as_f64().expect("burn_s");
        assert!(burn > 0.0 && burn < 600.0, "{step}: {burn}");
        assert_eq!(v[step]["burn_steps_s"].as_array().map(Vec::len), Some(1));
        assert!(
            v[step]["torch_s"].is_null() && v[step]["ratio"].is_null(),
            "{v}"
        );
        assert_eq!(v[step]["torch_unavailable"], "--no-torch");
    }
    assert!(v["threads"].as_u64().expect("threads") >= 1);
    assert!(v["fit"]["peak_rss_mib"].as_f64().expect("peak") > 0.0);
    assert!(stderr.contains("no PyTorch comparison"), "{stderr}");

    // --no-distill: the fit step alone, no backbone needed (a GPU box without it).
    let output = bench(
        &["--no-distill"],
        std::path::Path::new("/no/such/backbone.onnx"),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&output.stdout).expect("json");
    assert!(v["fit"]["burn_s"].as_f64().expect("fit") > 0.0, "{v}");
    assert!(v["distill"].is_null(), "{v}");
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
fn fit_eval_every_logs_test_quality_of_the_checked_model_issue13() {
    let (teacher, dataset, penalty) = tiny_setup("fit-eval", true);
    let mtd = shared_data().join("mtd");
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
        .output()
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

/// `distill-teacher --save-every 1` on real images with the real backbone: a teacher after
/// each step and the final one, each saying what it saw (steps, batch, images seen, the
/// random statistics sample, wall time).
/// `efficientad-train distill-teacher` from the shared backbone on `images` into `out`; the
/// caller adds the rest.
fn distill_command(images: &std::path::Path, out: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_efficientad-train"));
    command
        .arg("distill-teacher")
        .arg("--backbone")
        .arg(shared_data().join("../weights/efficientnet_lite0_features.onnx"))
        .arg("--images")
        .arg(images)
        .arg("--out")
        .arg(out);
    command
}

#[test]
fn distill_snapshots_record_what_the_teacher_saw_issue13() {
    let dir = temp_dir("distill-snap");
    let images = dir.join("images");
    copy_first(&shared_data().join("imagenet-sample"), &images, 4);
    let out = dir.join("teacher.bpk");
    let output = distill_command(&images, &out)
        .args(["--steps", "2", "--batch", "1", "--save-every", "1"])
        .args(["--stats-images", "2", "--seed", "5"])
        .output()
        .expect("run distill-teacher");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for (path, steps) in [(dir.join("teacher.step1.bpk"), 1), (out.clone(), 2)] {
        let info = checkpoint::read_info(&path).expect("teacher info");
        match &info.teacher {
            TeacherProvenance::Distilled { steps: s, .. } => assert_eq!(*s, steps),
            other => panic!("{other:?}"),
        }
        let t = &info.training;
        assert_eq!(t["batch"], 1);
        assert_eq!(t["images_seen"], steps);
        assert_eq!(t["stats_images"], 2);
        assert_eq!(t["seed"], 5);
        assert!(t["wall_seconds"].as_f64().is_some_and(|w| w > 0.0), "{t}");
    }
    assert!(
        !dir.join("teacher.step2.bpk").exists(),
        "the last step is the final teacher"
    );
}

/// `demo-samples` draws the asked numbers of good and defective parts from the test split,
/// the same ones for the same seed, copied under their folder names.
#[test]
fn demo_samples_are_a_seeded_random_draw_from_the_test_split_issue13() {
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
            .arg(shared_data().join("mtd"))
            .arg("--out")
            .arg(dir.join(out))
            .output()
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
        assert!(
            shared_data().join("mtd/test").join(f).is_file(),
            "{f} is a test image"
        );
    }
}

/// `plot` draws hand-made quality logs: a 1500x480 PNG with each run's line colour on it, and
/// the Markdown table with every checkpoint (the later line wins for a step logged twice).
#[test]
fn plot_draws_the_quality_curves_of_runs_issue13() {
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
        .output()
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
        .output()
        .expect("run plot");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--eval-every"));
}

// ---- the wgpu backend on a software Vulkan adapter (issue 14) ----
//
// Built only with `--features wgpu`; `.ci/run` installs Mesa's lavapipe and runs these. The
// tolerances: the GPU path computes in f32 like the CPU path but sums in other orders (tiled
// shader reductions against SIMD loops), which moves a map or a loss by ~1e-6 relative per
// operation; after a few Adam steps — whose first updates are ±lr per weight whatever the
// gradient's size — losses may differ by ~1e-4. 1e-3 leaves room without hiding a wrong op
// (a wrong operation moves them by percents).

#[cfg(feature = "wgpu")]
fn wgpu_device() -> Device {
    efficientad_training::backend::Backend::Wgpu
        .device(true)
        .unwrap_or_else(|e| panic!("{e} (.ci/run installs mesa-vulkan-drivers for lavapipe)"))
}

/// The whole backward pass on the GPU path: every student and autoencoder gradient of one
/// `fit` step against PyTorch autograd's, as the CPU backend is checked (1e-4 there; 1e-3
/// here for the shaders' other summation orders).
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_step_gradients_equal_pytorch_autograd_issue14() {
    check_step_gradients(&wgpu_device(), 1e-3);
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_doctor_names_the_adapter_and_a_software_one_needs_consent_issue14() {
    let doctor = Command::new(env!("CARGO_BIN_EXE_efficientad-train"))
        .arg("doctor")
        .output()
        .expect("doctor");
    let out = String::from_utf8_lossy(&doctor.stdout);
    assert!(doctor.status.success(), "{out}");
    assert!(
        out.contains("wgpu adapter: llvmpipe") && out.contains("Cpu, Vulkan"),
        "{out}"
    );
    // Without --allow-cpu-adapter a fit on it is refused, saying how to allow it.
    let (teacher, dataset, penalty) = tiny_setup("wgpu-refuse", true);
    let base = teacher.parent().expect("dir").to_owned();
    let refused = fit_command(
        &["--steps", "1", "--device", "wgpu"],
        (&teacher, &dataset, &penalty),
        &base,
        "w",
    )
    .output()
    .expect("fit");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("--allow-cpu-adapter") && stderr.contains("llvmpipe"),
        "{stderr}"
    );
}

/// A build with the GPU backend resuming a CPU run must not open the GPU: Burn loads optimizer
/// state onto its default device, which such a build makes the GPU unless `main` pins it to the
/// CPU. The Vulkan loader's own log (`VK_LOADER_DEBUG=info`) shows whether an instance was made;
/// `doctor`, which lists the adapters, is the control that the log does show one.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_build_resumes_a_cpu_run_without_opening_vulkan_issue14() {
    const LOADER: &str = "Vulkan Loader Version";
    let doctor = Command::new(env!("CARGO_BIN_EXE_efficientad-train"))
        .arg("doctor")
        .env("VK_LOADER_DEBUG", "info")
        .output()
        .expect("doctor");
    let log = String::from_utf8_lossy(&doctor.stderr);
    assert!(
        log.contains(LOADER),
        "the loader logged nothing for doctor: {log}"
    );

    let (teacher, dataset, penalty) = tiny_setup("wgpu-resume-cpu", true);
    let base = teacher.parent().expect("dir").to_owned();
    for steps in [&["--steps", "1"][..], &["--steps", "2", "--resume"]] {
        let output = fit_command(
            &[steps, &["--skip-calibration"]].concat(),
            (&teacher, &dataset, &penalty),
            &base,
            "r",
        )
        .env("VK_LOADER_DEBUG", "info")
        .env_remove("BURN_DEVICE")
        .output()
        .expect("fit");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{steps:?}: {stderr}");
        assert!(
            !stderr.contains(LOADER),
            "fit {steps:?} on the CPU opened Vulkan: {stderr}"
        );
    }
    let log = train::read_log(&base.join("runs/r/log.jsonl"));
    assert_eq!(log.len(), 2, "one step, then one resumed step");
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_fit_steps_equal_the_cpu_backend_and_export_to_onnx_runtime_issue14() {
    use efficientad_training::backend::Backend;
    use efficientad_training::train::{read_log, stop_flag, train};
    let (teacher, dataset, penalty) = tiny_setup("wgpu-fit", true);
    let base = teacher.parent().expect("dir").to_owned();
    let mut runs = Vec::new();
    for (backend, name) in [(Backend::Cpu, "cpu"), (Backend::Wgpu, "wgpu")] {
        let mut config = fit_config(&teacher, &dataset, &penalty, &base.join(name), 3);
        config.backend = backend;
        config.allow_cpu_adapter = true;
        config.checkpoint_every = 0;
        let trained = train(&config, false, stop_flag(), &mut |_| {}).expect("train");
        runs.push((trained, read_log(&base.join(name).join("log.jsonl"))));
    }
    let (cpu_log, wgpu_log) = (&runs[0].1, &runs[1].1);
    assert_eq!(cpu_log.len(), 3);
    assert_eq!(wgpu_log.len(), 3);
    for (c, g) in cpu_log.iter().zip(wgpu_log) {
        for key in ["hard", "penalty", "ae", "stae", "total"] {
            let (a, b) = (
                c[key].as_f64().expect("cpu loss"),
                g[key].as_f64().expect("wgpu loss"),
            );
            assert!(
                close(a, b, 1e-3),
                "step {}: {key} {a} on the CPU, {b} on wgpu",
                c["step"]
            );
        }
    }
    // The wgpu-trained model exported: ONNX Runtime reproduces its maps, and they equal the
    // CPU-trained model's within the same tolerance.
    let wgpu = wgpu_device();
    let (trained, _) = &runs[1];
    let dir = base.join("wgpu-bundle");
    export_bundle(&trained.model, &trained.info, &dir).expect("export");
    let bundle = Bundle::open(&dir).expect("bundle");
    let batch = batch_u8(&mtd_images(1), 256);
    let ort = cpu_engine(&bundle).run(&batch, 1).expect("ORT");
    let maps = trained.model.maps(batch_tensor(&batch, 1, 256, &wgpu));
    let (st, ae) = (to_vec(maps.st), to_vec(maps.ae));
    let (e_st, e_ae) = (rel_diff(&ort.st, &st), rel_diff(&ort.ae, &ae));
    assert!(e_st < 1e-3 && e_ae < 1e-3, "map_st {e_st}, map_ae {e_ae}");
    let cpu_maps = runs[0]
        .0
        .model
        .maps(batch_tensor(&batch, 1, 256, &Device::flex()));
    let e = rel_diff(&to_vec(cpu_maps.st), &st);
    assert!(e < 1e-3, "CPU- and wgpu-trained map_st differ by {e}");
}

#[cfg(feature = "wgpu")]
#[test]
fn wgpu_distillation_step_equals_the_cpu_backend_issue14() {
    let dir = temp_dir("wgpu-distill");
    let images = dir.join("images");
    copy_first(&shared_data().join("imagenet-sample"), &images, 3);
    let mut teachers = Vec::new();
    // The start (0 steps, on the CPU), then one step on each device.
    for (device, steps) in [("cpu", "0"), ("cpu", "1"), ("wgpu", "1")] {
        let out = dir.join(format!("{device}-{steps}.bpk"));
        let output = distill_command(&images, &out)
            .args([
                "--steps",
                steps,
                "--batch",
                "2",
                "--seed",
                "4",
                "--stats-images",
                "2",
            ])
            .args(["--allow-cpu-adapter", "--device", device])
            // A narrowed teacher: the full PDN-S takes many minutes per step on lavapipe.
            .args(["--width-divisor", "16"])
            .output()
            .expect("distill-teacher");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{device}: {stderr}");
        if device == "wgpu" {
            assert!(stderr.contains("wgpu adapter: llvmpipe"), "{stderr}");
        }
        teachers.push(out);
    }
    // The two distilled teachers, both run on the CPU: one step apart from the same start, so
    // any difference is the step's.
    let cpu = Device::flex();
    let batch = batch_u8(&mtd_images(1), 256);
    let outputs: Vec<Vec<f32>> = teachers
        .iter()
        .map(|t| {
            let (pdn, _) = checkpoint::load_teacher(t, None, &cpu).expect("teacher");
            to_vec(pdn.forward(batch_tensor(&batch, 1, 256, &cpu)))
        })
        .collect();
    let e = rel_diff(&outputs[1], &outputs[2]);
    let moved = rel_diff(&outputs[0], &outputs[1]);
    eprintln!("one step moved the teacher's outputs by {moved}; the devices differ by {e}");
    assert!(
        e < 1e-3,
        "teachers after one step differ by {e} (the step moved them by {moved})"
    );
    // The step itself moved the teacher far more than the two devices differ.
    assert!(
        moved > 20.0 * e,
        "the step moved the outputs by {moved}, the devices differ by {e}"
    );
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
