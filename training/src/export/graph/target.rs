//! The teacher of a model trained with `fit --teacher target:BACKBONE.onnx` as deployment
//! graph nodes: the backbone's own nodes (pruned to its two feature outputs, every name under
//! `teacher/backbone/`), then the fixed target construction
//! ([`crate::model::target_teacher::linear_map`]) as two 3x3 convolutions with μ/σ folded in, the
//! coarse branch resized onto the fine grid, the sum resized to twice the grid and the centre
//! 56² cropped — the same computation as [`crate::model::target_teacher::TargetTeacher::raw`].

use std::collections::HashSet;

use efficientad::model::onnx_proto::read;

use super::Builder;
use crate::model::target_teacher::{MAP_SIZE, TargetShape, linear_map};
use crate::train::distill::POOL_DIM;
use efficientad::model::onnx_proto::Attr;

/// Name of the backbone's input in the backbone contract.
const BACKBONE_INPUT: &str = "image";
const PREFIX: &str = "teacher/backbone/";

/// Adds the target teacher reading `unit` (NCHW in [0, 1], after any exposure normalization)
/// and returns the name of T̂ `[N, C, 56, 56]`.
pub(super) fn teacher(
    g: &mut Builder,
    unit: &str,
    backbone: &read::Model,
    shape: &TargetShape,
    mean: &[f32],
    std: &[f32],
) -> Result<String, String> {
    let graph = &backbone.graph;
    let [fine, coarse] = match graph.outputs.as_slice() {
        [f, c, ..] => [f.0.clone(), c.0.clone()],
        _ => return Err("the backbone has fewer than two outputs".into()),
    };
    // Only what the two feature outputs need (a classifier head, if any, is left out).
    let mut needed: HashSet<&str> = [fine.as_str(), coarse.as_str()].into();
    let mut keep = vec![false; graph.nodes.len()];
    for (i, node) in graph.nodes.iter().enumerate().rev() {
        if node.outputs.iter().any(|o| needed.contains(o.as_str())) {
            keep[i] = true;
            needed.extend(node.inputs.iter().map(String::as_str));
        }
    }
    let rename = |t: &str| match t {
        "" => String::new(),
        BACKBONE_INPUT => unit.to_string(),
        other => format!("{PREFIX}{other}"),
    };
    for (i, node) in graph.nodes.iter().enumerate().filter(|(i, _)| keep[*i]) {
        let mut node = node.clone();
        node.inputs = node.inputs.iter().map(|t| rename(t)).collect();
        node.outputs = node.outputs.iter().map(|t| rename(t)).collect();
        node.name = if node.name.is_empty() {
            format!("{PREFIX}node{i}")
        } else {
            format!("{PREFIX}{}", node.name)
        };
        g.nodes.push(node.encode());
    }
    for tensor in graph
        .initializers
        .iter()
        .filter(|t| needed.contains(t.name.as_str()))
    {
        let mut tensor = tensor.clone();
        tensor.name = rename(&tensor.name);
        g.initializers.push(tensor.encode());
    }

    // T̂ = (T − μ)/σ: every output channel of both convolutions is divided by σ, and −μ/σ
    // rides on the fine one's bias (the resizes keep constants).
    let channels = mean.len();
    let (c1, c2) = (shape.fine_channels, shape.coarse_channels);
    let (mut wf, mut wc) = linear_map(c1, c2, POOL_DIM, channels);
    for (k, s) in std.iter().enumerate() {
        wf[k * c1 * 9..(k + 1) * c1 * 9]
            .iter_mut()
            .for_each(|w| *w /= s);
        wc[k * c2 * 9..(k + 1) * c2 * 9]
            .iter_mut()
            .for_each(|w| *w /= s);
    }
    let bias_f: Vec<f32> = mean.iter().zip(std).map(|(m, s)| -m / s).collect();
    let bias_c = vec![0f32; channels];
    let mut conv = |name: &str, x: &str, c: usize, w: &[f32], b: &[f32]| {
        let w = g.init_f32(&format!("{name}.weight"), &[channels, c, 3, 3], w);
        let b = g.init_f32(&format!("{name}.bias"), &[channels], b);
        let attrs = [
            Attr::Ints("kernel_shape", vec![3, 3]),
            Attr::Ints("pads", vec![1, 1, 1, 1]),
        ];
        g.op("Conv", name, &[x, &w, &b], &attrs)
    };
    let f = conv("teacher/fine", &rename(&fine), c1, &wf, &bias_f);
    let c = conv("teacher/coarse", &rename(&coarse), c2, &wc, &bias_c);
    let nc = g.op(
        "Shape",
        "teacher/batch_channels",
        &[&c],
        &[Attr::Int("start", 0), Attr::Int("end", 2)],
    );
    let c = g.resize("teacher/coarse/resize", &c, &nc, shape.grid);
    let sum = g.op("Add", "teacher/target", &[&f, &c], &[]);
    let big = g.resize("teacher/resize", &sum, &nc, 2 * shape.grid);
    let (start, end) = (
        shape.crop_offset() as i64,
        (shape.crop_offset() + MAP_SIZE) as i64,
    );
    let starts = g.init_i64("teacher/crop/starts", &[start, start]);
    let ends = g.init_i64("teacher/crop/ends", &[end, end]);
    let axes = g.init_i64("teacher/crop/axes", &[2, 3]);
    Ok(g.op("Slice", "teacher/crop", &[&big, &starts, &ends, &axes], &[]))
}
