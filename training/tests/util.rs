//! Helpers shared by the training crate's integration tests.

#![allow(dead_code)]

pub use test_support::process::OutputWithin;
pub use test_support::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use burn::tensor::{Device, Tensor, TensorData};
use efficientad::model::bundle::Bundle;
use efficientad::model::engine::{Engine, EngineOptions, Provider};
use efficientad::model::preprocess::{Preprocessor, decode_file};
use efficientad_training::model::teacher::import_pdn;
use efficientad_training::model::*;
use efficientad_training::train::checkpoint::{self, CheckpointInfo, Kind, TeacherProvenance};
use efficientad_training::train::{FitConfig, StepInputs, losses, teacher_raw};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Reads raw little-endian float32 values.
pub fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// max |a − b| / max |b|: the relative error measure the issues state tolerances in.
pub fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "compared arrays differ in length");
    let max_abs = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max_diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        max_abs > 0.0,
        "reference is all zeros: the comparison would prove nothing"
    );
    max_diff / max_abs
}

/// The first `n` test images of MTD, taken round-robin over its defect folders and `good`, so
/// a batch mixes normal and defective parts of different sizes.
pub fn mtd_images(n: usize) -> Vec<PathBuf> {
    let test = mtd().join("test");
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&test)
        .unwrap_or_else(|e| panic!("reading {}: {e}", test.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    let lists: Vec<Vec<PathBuf>> = folders
        .iter()
        .map(|f| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(f)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            files.sort();
            files
        })
        .collect();
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < n {
        let list = &lists[i % lists.len()];
        out.push(list[(i / lists.len()) % list.len()].clone());
        i += 1;
    }
    out
}

/// Preprocesses images into one NHWC uint8 batch (the runtime's input).
pub fn batch_u8(paths: &[PathBuf], size: usize) -> Vec<u8> {
    let mut pre = Preprocessor::new(size);
    let mut out = vec![0u8; paths.len() * size * size * 3];
    for (p, chunk) in paths.iter().zip(out.chunks_mut(size * size * 3)) {
        let image = decode_file(p).unwrap_or_else(|e| panic!("{e}"));
        pre.prepare(image, chunk).unwrap_or_else(|e| panic!("{e}"));
    }
    out
}

/// The same batch as Burn sees it: `[N, 3, H, W]` in [0, 1].
pub fn batch_tensor(batch: &[u8], n: usize, size: usize, device: &Device) -> Tensor<4> {
    let plane = size * size;
    let mut nchw = vec![0f32; batch.len()];
    for i in 0..n {
        for p in 0..plane {
            for c in 0..3 {
                nchw[i * 3 * plane + c * plane + p] =
                    f32::from(batch[(i * plane + p) * 3 + c]) / 255.0;
            }
        }
    }
    Tensor::from_data(TensorData::new(nchw, [n, 3, size, size]), device)
}

pub fn to_vec<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().expect("float tensor")
}

pub const FIXTURE_DIVISOR: usize = 16;

pub fn tiny_teacher_config(variant: Variant) -> PdnConfig {
    PdnConfig::new(variant, TEACHER_CHANNELS / FIXTURE_DIVISOR).with_width_divisor(FIXTURE_DIVISOR)
}

pub fn fixture_input(device: &Device) -> Tensor<4> {
    let x = read_f32(&fixture("input.f32"));
    Tensor::from_data(TensorData::new(x, [1, 3, 48, 48]), device)
}

pub fn cpu_engine(bundle: &Bundle) -> Engine {
    let options = EngineOptions {
        provider: Provider::Cpu,
        intra_threads: Some(2),
        ..EngineOptions::default()
    };
    Engine::new(bundle, &options).unwrap_or_else(|e| panic!("{e}"))
}

pub fn formula_weights(
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

pub fn pdn_convs(p: &mut efficientad_training::model::Pdn) -> Vec<&mut burn::nn::conv::Conv2d> {
    vec![&mut p.conv1, &mut p.conv2, &mut p.conv3, &mut p.conv4]
}

/// The fixture's networks: PDN-S narrowed 16x and the full autoencoder, weights by formula.
pub fn formula_model(device: &Device) -> EfficientAd {
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

/// The fixtures' step inputs: formula images, the augmented view (×1.1, clamped) and the
/// normalized teacher outputs of both.
pub struct FormulaInputs {
    pub image: Vec<f32>,
    pub penalty: Vec<f32>,
    pub augmented: Vec<f32>,
    pub teacher_image: Vec<f32>,
    pub teacher_augmented: Vec<f32>,
}

impl FormulaInputs {
    pub fn new(model: &EfficientAd, device: &Device) -> Self {
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

    pub fn inputs(&self) -> StepInputs<'_> {
        StepInputs {
            image: &self.image,
            teacher_image: &self.teacher_image,
            penalty: &self.penalty,
            augmented: &self.augmented,
            teacher_augmented: &self.teacher_augmented,
        }
    }
}

pub fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * b.abs().max(1e-12)
}

/// One `fit` step's loss and the gradients of every student and autoencoder weight on `plain`
/// (its autodiff twin computes), against PyTorch autograd's (fixture): relative L2 per tensor
/// and whole-tensor norms within `tolerance`.
pub fn check_step_gradients(plain: &Device, tolerance: f64) {
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
pub fn tiny_setup(
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
    let mtd = mtd();
    let copy = |from: &str, to: &str, n: usize| {
        copy_first(&mtd.join(from), &dataset.join(to), n);
    };
    copy("train/good", "train/good", 5);
    if validation {
        copy("validation/good", "validation/good", 3);
    }
    let penalty = dir.join("penalty");
    copy_first(&penalty_images(), &penalty, 3);
    (teacher_path, dataset, penalty)
}

/// `efficientad-train fit` on a tiny setup, writing under `base` as `name`; `args` come first.
pub fn fit_command(
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

pub fn fit_config(
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

/// `distill-teacher --save-every 1` on real images with the real backbone: a teacher after
/// each step and the final one, each saying what it saw (steps, batch, images seen, the
/// random statistics sample, wall time).
/// `efficientad-train distill-teacher` from the shared backbone on `images` into `out`; the
/// caller adds the rest.
pub fn distill_command(images: &std::path::Path, out: &std::path::Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_efficientad-train"));
    command
        .arg("distill-teacher")
        .arg("--backbone")
        .arg(tiny_backbone())
        .arg("--images")
        .arg(images)
        .arg("--out")
        .arg(out);
    command
}

pub fn formula_image(kind: &str, size: usize) -> Vec<f32> {
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

pub fn normalized_teacher(model: &EfficientAd, chw: &[f32], device: &Device) -> Vec<f32> {
    let raw = teacher_raw(&model.teacher, chw, device);
    let mean = to_vec(model.teacher_mean.val());
    let std = to_vec(model.teacher_std.val());
    let plane = raw.len() / mean.len();
    raw.iter()
        .enumerate()
        .map(|(i, v)| (v - mean[i / plane]) / std[i / plane])
        .collect()
}

/// A small backbone with the real one's contract, generated from a fixed seed: input `image`
/// `[N, 3, H, W]`, outputs `feat_s8` `[N, 48, H/8, W/8]` and `feat_s16` `[N, 96, H/16, W/16]`
/// (four stride-2 3x3 convolutions with ReLU, He-uniform weights from `data::Rng`). The
/// workspace tests distil from it instead of the 18 MB EfficientNet-Lite0, which only the
/// dataset stage reads. Intermediate tensors `blocks.K.conv` (before the ReLU) can be selected
/// as other feature outputs. Written once per test process.
pub fn tiny_backbone() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let path = temp_dir("tiny-backbone").join("tiny-backbone.onnx");
        std::fs::write(&path, tiny_backbone_bytes(0x5eed))
            .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    })
    .clone()
}

fn tiny_backbone_bytes(seed: u64) -> Vec<u8> {
    use efficientad::model::onnx_proto::{self as proto, Attr, DataType, Dim};
    // The training crate's own seeded stream, mapped to [-1, 1).
    let mut rng = efficientad_training::data::Rng::new(seed);
    let mut uniform = move || (2.0 * rng.uniform() - 1.0) as f32;
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let layers = [
        (3, 16, "blocks.0.out"),
        (16, 24, "blocks.1.out"),
        (24, 48, "feat_s8"),
        (48, 96, "feat_s16"),
    ];
    let (mut nodes, mut inits) = (Vec::new(), Vec::new());
    let mut input = "image".to_string();
    for (k, (cin, cout, out)) in layers.into_iter().enumerate() {
        let bound = (6.0 / (cin * 9) as f32).sqrt();
        let w: Vec<f32> = (0..cout * cin * 9).map(|_| bound * uniform()).collect();
        let b: Vec<f32> = (0..cout).map(|_| 0.1 * uniform()).collect();
        let (wn, bn, conv) = (
            format!("blocks.{k}.w"),
            format!("blocks.{k}.b"),
            format!("blocks.{k}.conv"),
        );
        inits.push(proto::tensor(
            &wn,
            &[cout, cin, 3, 3],
            DataType::Float,
            &bytes(&w),
        ));
        inits.push(proto::tensor(&bn, &[cout], DataType::Float, &bytes(&b)));
        nodes.push(proto::node(
            "Conv",
            &format!("blocks.{k}/Conv"),
            &[&input, &wn, &bn],
            &[&conv],
            &[
                Attr::Ints("kernel_shape", vec![3, 3]),
                Attr::Ints("strides", vec![2, 2]),
                Attr::Ints("pads", vec![1, 1, 1, 1]),
            ],
        ));
        nodes.push(proto::node(
            "Relu",
            &format!("blocks.{k}/Relu"),
            &[&conv],
            &[out],
            &[],
        ));
        input = out.to_string();
    }
    let image = proto::value_info(
        "image",
        DataType::Float,
        &[
            Dim::Named("N"),
            Dim::Fixed(3),
            Dim::Named("H"),
            Dim::Named("W"),
        ],
    );
    let outputs = [("feat_s8", 48), ("feat_s16", 96)].map(|(name, c)| {
        proto::value_info(
            name,
            DataType::Float,
            &[
                Dim::Named("N"),
                Dim::Fixed(c),
                Dim::Named("h"),
                Dim::Named("w"),
            ],
        )
    });
    let graph = proto::graph("tiny-backbone", &nodes, &inits, &[image], &outputs);
    proto::model(8, 17, "efficientad tests", "1", &graph, &[])
}
