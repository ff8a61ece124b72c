//! Builds the one deployment graph of docs/design.md from an [`EfficientAd`] module: uint8 NHWC input,
//! normalization, teacher (μ/σ folded into its last convolution), student, autoencoder and the
//! two map heads, with node names prefixed `input/`, `teacher/`, `student/`, `autoencoder/`,
//! `head/`.
//!
//! Only ops that ONNX Runtime and TensorRT 10 both handle in opset 17 are used. Resize targets
//! carry the dynamic batch through `Shape`→`Concat` instead of Resize-18's `axes`.

mod target;

use burn::module::Param;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

use crate::data;
use crate::model::autoencoder::{DECODER_SIZES, OUTPUT_SIZE};
use crate::model::{EfficientAd, IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, Pdn};
use efficientad::model::onnx_proto::{self as proto, Attr, DataType, Dim, Message};

/// ONNX opset of the exported graph.
pub const OPSET: i64 = 17;
/// ONNX IR version matching opset 17 (ONNX 1.12+).
pub const IR_VERSION: i64 = 8;
pub const INPUT_NAME: &str = "image";
pub const OUTPUT_ST: &str = "map_st";
pub const OUTPUT_AE: &str = "map_ae";

fn values(p: &Param<Tensor<1>>) -> Vec<f32> {
    p.val().into_data().try_to_vec::<f32>().unwrap_or_default()
}

fn values4(p: &Param<Tensor<4>>) -> Vec<f32> {
    p.val().into_data().try_to_vec::<f32>().unwrap_or_default()
}

fn f32_bytes(data: &[f32]) -> Vec<u8> {
    data.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn pads(padding: &PaddingConfig2d) -> Vec<i64> {
    match padding {
        PaddingConfig2d::Explicit(top, left, bottom, right) => {
            vec![*top as i64, *left as i64, *bottom as i64, *right as i64]
        }
        _ => vec![0, 0, 0, 0],
    }
}

#[derive(Default)]
struct Builder {
    nodes: Vec<Message>,
    initializers: Vec<Message>,
}

impl Builder {
    fn init_f32(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        self.initializers
            .push(proto::tensor(name, dims, DataType::Float, &f32_bytes(data)));
        name.to_string()
    }

    fn init_i64(&mut self, name: &str, data: &[i64]) -> String {
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers
            .push(proto::tensor(name, &[data.len()], DataType::Int64, &raw));
        name.to_string()
    }

    /// Adds a node whose single output is named after the node.
    fn op(&mut self, op: &str, name: &str, inputs: &[&str], attrs: &[Attr]) -> String {
        self.nodes
            .push(proto::node(op, name, inputs, &[name], attrs));
        name.to_string()
    }

    /// A convolution with the given weights (already folded where needed).
    fn conv(&mut self, name: &str, x: &str, conv: &Conv2d, weight: &[f32], bias: &[f32]) -> String {
        let dims = conv.weight.dims().to_vec();
        let w = self.init_f32(&format!("{name}.weight"), &dims, weight);
        let b = self.init_f32(&format!("{name}.bias"), &[dims[0]], bias);
        let attrs = [
            Attr::Ints("kernel_shape", vec![dims[2] as i64, dims[3] as i64]),
            Attr::Ints("strides", conv.stride.iter().map(|&s| s as i64).collect()),
            Attr::Ints("pads", pads(&conv.padding)),
        ];
        self.op("Conv", name, &[x, &w, &b], &attrs)
    }

    fn plain_conv(&mut self, name: &str, x: &str, conv: &Conv2d) -> String {
        let bias = conv
            .bias
            .as_ref()
            .map(values)
            .unwrap_or_else(|| vec![0.0; conv.weight.dims()[0]]);
        self.conv(name, x, conv, &values4(&conv.weight), &bias)
    }

    fn relu(&mut self, name: &str, x: &str) -> String {
        self.op("Relu", name, &[x], &[])
    }

    fn pool(&mut self, name: &str, x: &str, pdn: &Pdn) -> String {
        let attrs = [
            Attr::Ints("kernel_shape", vec![2, 2]),
            Attr::Ints("strides", vec![2, 2]),
            Attr::Ints("pads", pads(&pdn.pool.padding)),
            Attr::Int("count_include_pad", 1),
        ];
        self.op("AveragePool", name, &[x], &attrs)
    }

    /// A PDN; `last` replaces the final convolution's weights and bias (the teacher's fold).
    fn pdn(
        &mut self,
        prefix: &str,
        x: &str,
        pdn: &Pdn,
        last: Option<(Vec<f32>, Vec<f32>)>,
    ) -> String {
        let convs = pdn.convs();
        let n = convs.len();
        let mut x = x.to_string();
        let mut last = last;
        for (i, (name, conv)) in convs.into_iter().enumerate() {
            let node = format!("{prefix}/{name}");
            x = match (i + 1 == n, last.take()) {
                (true, Some((w, b))) => self.conv(&node, &x, conv, &w, &b),
                (_, other) => {
                    last = other;
                    self.plain_conv(&node, &x, conv)
                }
            };
            if i + 1 < n {
                x = self.relu(&format!("{prefix}/{name}/relu"), &x);
            }
            if i < 2 {
                x = self.pool(&format!("{prefix}/pool{}", i + 1), &x, pdn);
            }
        }
        x
    }

    fn resize(&mut self, name: &str, x: &str, batch_channels: &str, size: usize) -> String {
        let target = self.init_i64(&format!("{name}/hw"), &[size as i64, size as i64]);
        let sizes = self.op(
            "Concat",
            &format!("{name}/sizes"),
            &[batch_channels, &target],
            &[Attr::Int("axis", 0)],
        );
        let attrs = [
            Attr::Str("mode", "linear"),
            Attr::Str("coordinate_transformation_mode", "half_pixel"),
        ];
        self.op("Resize", name, &[x, "", "", &sizes], &attrs)
    }

    fn slice_channels(&mut self, name: &str, x: &str, start: usize, end: usize) -> String {
        let s = self.init_i64(&format!("{name}/starts"), &[start as i64]);
        let e = self.init_i64(&format!("{name}/ends"), &[end as i64]);
        let a = self.init_i64(&format!("{name}/axes"), &[1]);
        self.op("Slice", name, &[x, &s, &e, &a], &[])
    }

    /// mean over channels of (a − b)², shape [N, H, W].
    fn map_head(&mut self, name: &str, a: &str, b: &str, output: &str) {
        let d = self.op("Sub", &format!("head/{name}/diff"), &[a, b], &[]);
        let sq = self.op("Mul", &format!("head/{name}/square"), &[&d, &d], &[]);
        self.nodes.push(proto::node(
            "ReduceMean",
            &format!("head/{name}/mean"),
            &[&sq],
            &[output],
            &[Attr::Ints("axes", vec![1]), Attr::Int("keepdims", 0)],
        ));
    }
}

/// The teacher's last convolution with T̂ = (T − μ)/σ folded in:
/// W'[o] = W[o]/σ[o], b'[o] = (b[o] − μ[o])/σ[o].
pub fn folded_teacher_head(model: &EfficientAd) -> (Vec<f32>, Vec<f32>) {
    let convs = model.teacher.convs();
    let (_, last) = convs[convs.len() - 1];
    let mean = values(&model.teacher_mean);
    let std = values(&model.teacher_std);
    let mut weight = values4(&last.weight);
    let bias = last
        .bias
        .as_ref()
        .map(values)
        .unwrap_or_else(|| vec![0.0; mean.len()]);
    let per_out = weight.len() / mean.len();
    for (o, chunk) in weight.chunks_mut(per_out).enumerate() {
        chunk.iter_mut().for_each(|w| *w /= std[o]);
    }
    let bias = bias
        .iter()
        .zip(mean.iter().zip(&std))
        .map(|(b, (m, s))| (b - m) / s)
        .collect();
    (weight, bias)
}

/// Per-image exposure normalization of an NCHW batch in [0, 1], as
/// [`crate::data::normalize_exposure`] does in training: one mean and one standard deviation
/// over each image's pixels and channels, then gain and offset to the fixed mean and std.
fn normalize_exposure(g: &mut Builder, x: &str) -> String {
    let reduce = || [Attr::Ints("axes", vec![1, 2, 3]), Attr::Int("keepdims", 1)];
    let mean = g.op("ReduceMean", "input/exposure/mean", &[x], &reduce());
    let centred = g.op("Sub", "input/exposure/centred", &[x, &mean], &[]);
    let square = g.op("Mul", "input/exposure/square", &[&centred, &centred], &[]);
    let var = g.op("ReduceMean", "input/exposure/var", &[&square], &reduce());
    let std = g.op("Sqrt", "input/exposure/std", &[&var], &[]);
    let floor = g.init_f32("input/exposure/min_std", &[], &[data::EXPOSURE_MIN_STD]);
    let std = g.op("Max", "input/exposure/std_floor", &[&std, &floor], &[]);
    let target_std = g.init_f32("input/exposure/target_std", &[], &[data::EXPOSURE_STD]);
    let gain = g.op("Div", "input/exposure/gain", &[&target_std, &std], &[]);
    let scaled = g.op("Mul", "input/exposure/scaled", &[&centred, &gain], &[]);
    let target_mean = g.init_f32("input/exposure/target_mean", &[], &[data::EXPOSURE_MEAN]);
    g.op("Add", "input/exposure/out", &[&scaled, &target_mean], &[])
}

/// Where the deployment graph's teacher comes from.
pub enum TeacherGraph<'a> {
    /// The model's own PDN teacher.
    Pdn,
    /// The distillation target of this backbone (`fit --teacher target:BACKBONE.onnx`).
    Target {
        backbone: &'a efficientad::model::onnx_proto::read::Model,
        shape: &'a crate::model::target_teacher::TargetShape,
    },
}

/// Serializes the deployment graph of `model` (padding must be off) to ONNX bytes; with
/// `normalize_exposure` the networks see each image exposure-normalized. Fails only when a
/// target teacher's backbone lacks its two feature outputs.
pub fn build(
    model: &EfficientAd,
    teacher: &TeacherGraph<'_>,
    normalize_exposure_on: bool,
    metadata: &[(&str, String)],
) -> Result<Vec<u8>, String> {
    let mut g = Builder::default();
    let channels = model.teacher.out_channels();

    let x = g.op(
        "Cast",
        "input/cast",
        &[INPUT_NAME],
        &[Attr::Int("to", DataType::Float as i64)],
    );
    let x = g.op(
        "Transpose",
        "input/nchw",
        &[&x],
        &[Attr::Ints("perm", vec![0, 3, 1, 2])],
    );
    let c255 = g.init_f32("input/255", &[], &[255.0]);
    let mut x = g.op("Div", "input/unit", &[&x, &c255], &[]);
    if normalize_exposure_on {
        x = normalize_exposure(&mut g, &x);
    }
    // The backbone contract takes images in [0, 1]; the PDNs normalize with ImageNet's
    // statistics first.
    let unit = x.clone();
    let mean = g.init_f32("input/mean", &[1, 3, 1, 1], &IMAGENET_MEAN);
    let std = g.init_f32("input/std", &[1, 3, 1, 1], &IMAGENET_STD);
    let x = g.op("Sub", "input/centred", &[&x, &mean], &[]);
    let x = g.op("Div", "input/normalized", &[&x, &std], &[]);

    let t = match teacher {
        TeacherGraph::Pdn => g.pdn(
            "teacher",
            &x,
            &model.teacher,
            Some(folded_teacher_head(model)),
        ),
        TeacherGraph::Target { backbone, shape } => target::teacher(
            &mut g,
            &unit,
            backbone,
            shape,
            &values(&model.teacher_mean),
            &values(&model.teacher_std),
        )?,
    };
    let s = g.pdn("student", &x, &model.student, None);

    let encoder_last = model.autoencoder.encoder.len() - 1;
    let mut a = x.clone();
    for (i, conv) in model.autoencoder.encoder.iter().enumerate() {
        a = g.plain_conv(&format!("autoencoder/enc{}", i + 1), &a, conv);
        if i < encoder_last {
            a = g.relu(&format!("autoencoder/enc{}/relu", i + 1), &a);
        }
    }
    let nc = g.op(
        "Shape",
        "autoencoder/batch_channels",
        &[&a],
        &[Attr::Int("start", 0), Attr::Int("end", 2)],
    );
    let sizes = DECODER_SIZES.iter().copied().chain([OUTPUT_SIZE]);
    for (i, (conv, size)) in model.autoencoder.decoder.iter().zip(sizes).enumerate() {
        let name = format!("autoencoder/dec{}", i + 1);
        a = g.resize(&format!("{name}/resize"), &a, &nc, size);
        a = g.plain_conv(&name, &a, conv);
        a = g.relu(&format!("{name}/relu"), &a);
    }
    let last = &model.autoencoder.decoder[model.autoencoder.decoder.len() - 1];
    a = g.plain_conv(
        &format!("autoencoder/dec{}", model.autoencoder.decoder.len()),
        &a,
        last,
    );

    let s_st = g.slice_channels("head/student_st", &s, 0, channels);
    let s_ae = g.slice_channels("head/student_ae", &s, channels, 2 * channels);
    g.map_head("st", &t, &s_st, OUTPUT_ST);
    g.map_head("ae", &a, &s_ae, OUTPUT_AE);

    let input = proto::value_info(
        INPUT_NAME,
        DataType::Uint8,
        &[
            Dim::Named("N"),
            Dim::Fixed(IMAGE_SIZE),
            Dim::Fixed(IMAGE_SIZE),
            Dim::Fixed(3),
        ],
    );
    let map_dims = [
        Dim::Named("N"),
        Dim::Fixed(OUTPUT_SIZE),
        Dim::Fixed(OUTPUT_SIZE),
    ];
    let outputs = [
        proto::value_info(OUTPUT_ST, DataType::Float, &map_dims),
        proto::value_info(OUTPUT_AE, DataType::Float, &map_dims),
    ];
    let graph = proto::graph("efficientad", &g.nodes, &g.initializers, &[input], &outputs);
    Ok(proto::model(
        IR_VERSION,
        OPSET,
        "efficientad-train",
        env!("CARGO_PKG_VERSION"),
        &graph,
        metadata,
    ))
}
