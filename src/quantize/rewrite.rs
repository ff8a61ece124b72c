//! The QDQ rewrite of a deployment graph: int8 convolutions written the way ONNX Runtime (and
//! TensorRT) recognise them — `DequantizeLinear → Conv → QuantizeLinear` — so the runtime fuses
//! each group into one integer convolution.
//!
//! - Every convolution not kept in fp32 gets per-output-channel symmetric int8 weights, an int32
//!   bias at scale `input scale × weight scale`, and uint8 activations on its input and output.
//! - A ReLU that is a convolution's only consumer is dropped: its output's range starts at zero,
//!   so the uint8 zero point is 0 and quantization itself clamps negatives — the same function.
//! - Average pooling and Resize on a quantized tensor keep its parameters, so they run on
//!   uint8 too (ONNX Runtime fuses or drops their Q/DQ pairs).
//! - Everything else (input normalization, the map heads) stays fp32 and reads dequantized values.
//!
//! Each node keeps its network's prefix (`teacher/`, `student/`, `autoencoder/`, `input/`), so the
//! bundle contract of docs/design.md holds for the quantized graph too.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::model::onnx_proto::DataType;
use crate::model::onnx_proto::read::{Graph, Node, Tensor};

use super::ranges::{QParams, quantize_weights};

/// Where a quantized tensor's parameters come from.
#[derive(Clone, Debug, PartialEq)]
enum Source {
    /// Measured on the calibration images.
    Measured,
    /// The same as another tensor's (pooling and resizing do not widen a range).
    SameAs(String),
}

/// Which convolutions are quantized and which tensors need measured ranges.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Convolutions to quantize, by node name.
    pub convs: Vec<String>,
    /// Convolutions left in fp32, by node name.
    pub kept: Vec<String>,
    /// ReLU nodes folded into their convolution's output quantization.
    relus: HashSet<String>,
    /// Quantized tensors, in graph order.
    tensors: Vec<(String, Source)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    #[error(
        "convolution {node} has no {what} initializer; only graphs with constant weights can be quantized"
    )]
    Weights { node: String, what: &'static str },
    #[error("--keep-fp32 {0} matches no convolution of the graph")]
    UnknownKeep(String),
    #[error("no range was measured for {0}")]
    NoRange(String),
}

/// The nodes reading each tensor.
fn consumers(graph: &Graph) -> HashMap<&str, Vec<&Node>> {
    let mut map: HashMap<&str, Vec<&Node>> = HashMap::new();
    for n in &graph.nodes {
        for i in n.inputs.iter().filter(|i| !i.is_empty()) {
            map.entry(i.as_str()).or_default().push(n);
        }
    }
    map
}

impl Plan {
    /// Plans the rewrite; a convolution whose name starts with one of `keep` stays fp32.
    pub fn new(graph: &Graph, keep: &[String]) -> Result<Self, RewriteError> {
        let consumers = consumers(graph);
        let outputs: HashSet<&str> = graph.outputs.iter().map(|(n, _)| n.as_str()).collect();
        let is_kept = |name: &str| keep.iter().any(|k| name.starts_with(k.as_str()));
        for k in keep {
            if !graph
                .nodes
                .iter()
                .any(|n| n.op_type == "Conv" && n.name.starts_with(k.as_str()))
            {
                return Err(RewriteError::UnknownKeep(k.clone()));
            }
        }
        let mut plan = Plan {
            convs: vec![],
            kept: vec![],
            relus: HashSet::new(),
            tensors: vec![],
        };
        let mut quantized: HashSet<String> = HashSet::new();
        let mut add = |plan: &mut Plan, name: &str, source: Source| {
            if quantized.insert(name.to_string()) {
                plan.tensors.push((name.to_string(), source));
            }
        };
        for n in &graph.nodes {
            match n.op_type.as_str() {
                "Conv" if is_kept(&n.name) => plan.kept.push(n.name.clone()),
                "Conv" => {
                    for (i, what) in [(1, "weight"), (2, "bias")] {
                        let present = n.inputs.get(i).filter(|s| !s.is_empty());
                        if (i == 1 || present.is_some())
                            && present.and_then(|w| graph.initializer(w)).is_none()
                        {
                            return Err(RewriteError::Weights {
                                node: n.name.clone(),
                                what,
                            });
                        }
                    }
                    plan.convs.push(n.name.clone());
                    add(&mut plan, &n.inputs[0], Source::Measured);
                    let out = n.outputs[0].as_str();
                    let only = consumers.get(out).filter(|c| c.len() == 1);
                    let relu = only
                        .map(|c| c[0])
                        .filter(|c| c.op_type == "Relu" && !outputs.contains(out));
                    match relu {
                        Some(r) => {
                            plan.relus.insert(r.name.clone());
                            add(&mut plan, &r.outputs[0], Source::Measured);
                        }
                        None => add(&mut plan, out, Source::Measured),
                    }
                }
                "AveragePool" | "MaxPool" | "Resize"
                    if plan.tensors.iter().any(|(t, _)| *t == n.inputs[0]) =>
                {
                    add(
                        &mut plan,
                        &n.outputs[0],
                        Source::SameAs(n.inputs[0].clone()),
                    );
                }
                _ => {}
            }
        }
        Ok(plan)
    }

    /// Tensors to measure on the calibration images: every quantized one, including those
    /// that inherit their parameters here — with a layer kept fp32 (`--sensitivity`), a
    /// pooled tensor can become one that needs its own range.
    pub fn tensors(&self) -> Vec<String> {
        self.tensors.iter().map(|(t, _)| t.clone()).collect()
    }
}

/// `DequantizeLinear` named `name` (its output too) reading `tensor`'s quantized copy with its
/// scale and zero point.
fn dequantize(name: &str, tensor: &str) -> Node {
    Node::new(
        "DequantizeLinear",
        name,
        &[
            &format!("{tensor}/quantized"),
            &format!("{tensor}/scale"),
            &format!("{tensor}/zero_point"),
        ],
        &[name],
    )
}

fn scalar_f32(name: String, v: f32) -> Tensor {
    Tensor::f32(&name, &[], &[v])
}

fn typed(name: String, dims: &[i64], data_type: DataType, raw: Vec<u8>) -> Tensor {
    Tensor {
        name,
        dims: dims.to_vec(),
        data_type: data_type as i64,
        raw,
    }
}

/// Writes the QDQ graph of `plan`, with `ranges` the measured parameters by tensor name.
pub fn rewrite(
    graph: &Graph,
    plan: &Plan,
    ranges: &BTreeMap<String, QParams>,
) -> Result<Graph, RewriteError> {
    // Parameters of every quantized tensor, inherited ones resolved in graph order.
    let mut params: HashMap<String, QParams> = HashMap::new();
    for (t, source) in &plan.tensors {
        let from = match source {
            Source::Measured => t,
            Source::SameAs(other) => other,
        };
        let p = params
            .get(from)
            .copied()
            .or_else(|| ranges.get(from).copied())
            .ok_or_else(|| RewriteError::NoRange(from.clone()))?;
        params.insert(t.clone(), p);
    }
    let convs: HashSet<&str> = plan.convs.iter().map(String::as_str).collect();
    // A dropped ReLU's input is its convolution's output: the convolution writes the ReLU's
    // output name instead.
    let mut renamed: HashMap<String, String> = HashMap::new();
    for n in graph.nodes.iter().filter(|n| plan.relus.contains(&n.name)) {
        renamed.insert(n.inputs[0].clone(), n.outputs[0].clone());
    }

    let mut out = graph.clone();
    out.nodes.clear();
    let mut replaced: HashSet<String> = HashSet::new();
    let mut new_init: Vec<Tensor> = Vec::new();
    // Each quantized tensor's scale and zero point, written once.
    for (t, p) in &params {
        new_init.push(scalar_f32(format!("{t}/scale"), p.scale));
        new_init.push(typed(
            format!("{t}/zero_point"),
            &[],
            DataType::Uint8,
            vec![p.zero_point],
        ));
    }

    for n in &graph.nodes {
        if plan.relus.contains(&n.name) {
            continue;
        }
        let mut node = n.clone();
        for o in node.outputs.iter_mut() {
            if let Some(r) = renamed.get(o.as_str()) {
                o.clone_from(r);
            }
        }
        // Inputs that are quantized tensors read a dequantized copy of their own.
        for (i, input) in n.inputs.iter().enumerate() {
            if !params.contains_key(input) {
                continue;
            }
            let dq = format!("{}/dequantize{i}", n.name);
            out.nodes.push(dequantize(&dq, input));
            node.inputs[i] = dq;
        }
        if convs.contains(n.name.as_str()) {
            let x = params[&n.inputs[0]];
            quantize_conv(graph, &mut out, &mut node, x, &mut new_init, &mut replaced)?;
        }
        let produced = node.outputs.clone();
        out.nodes.push(node);
        for t in produced.iter().filter(|t| params.contains_key(t.as_str())) {
            out.nodes.push(Node::new(
                "QuantizeLinear",
                &format!("{t}/quantize"),
                &[t, &format!("{t}/scale"), &format!("{t}/zero_point")],
                &[&format!("{t}/quantized")],
            ));
        }
    }
    out.initializers.retain(|t| !replaced.contains(&t.name));
    new_init.sort_by(|a, b| a.name.cmp(&b.name));
    out.initializers.extend(new_init);
    Ok(out)
}

/// Replaces `node`'s float weight and bias with int8/int32 initializers read through
/// DequantizeLinear (per output channel, axis 0).
fn quantize_conv(
    graph: &Graph,
    out: &mut Graph,
    node: &mut Node,
    x: QParams,
    new_init: &mut Vec<Tensor>,
    replaced: &mut HashSet<String>,
) -> Result<(), RewriteError> {
    let name = node.name.clone();
    let missing = |what| RewriteError::Weights {
        node: name.clone(),
        what,
    };
    let w = graph
        .initializer(&node.inputs[1])
        .ok_or_else(|| missing("weight"))?;
    let values = w.floats().ok_or_else(|| missing("float weight"))?;
    let channels = *w.dims.first().ok_or_else(|| missing("weight"))? as usize;
    let (q, scales) = quantize_weights(&values, channels);
    let wname = w.name.clone();
    new_init.push(typed(
        format!("{wname}/quantized"),
        &w.dims,
        DataType::Int8,
        q.iter().map(|v| *v as u8).collect(),
    ));
    new_init.push(Tensor::f32(
        &format!("{wname}/scale"),
        &[channels as i64],
        &scales,
    ));
    new_init.push(typed(
        format!("{wname}/zero_point"),
        &[channels as i64],
        DataType::Int8,
        vec![0; channels],
    ));
    replaced.insert(wname.clone());
    let dq = format!("{name}/weight/dequantize");
    out.nodes.push(dequantize(&dq, &wname).with_axis(0));
    node.inputs[1] = dq;

    if let Some(b) = node.inputs.get(2).filter(|b| !b.is_empty()).cloned() {
        let t = graph.initializer(&b).ok_or_else(|| missing("bias"))?;
        let bias = t.floats().ok_or_else(|| missing("float bias"))?;
        let bscales: Vec<f32> = scales.iter().map(|s| s * x.scale).collect();
        let q: Vec<u8> = bias
            .iter()
            .zip(&bscales)
            .flat_map(|(b, s)| {
                ((f64::from(*b) / f64::from(*s)).round() as i64)
                    .clamp(i64::from(i32::MIN), i64::from(i32::MAX))
                    .to_le_bytes()[..4]
                    .to_vec()
            })
            .collect();
        new_init.push(typed(format!("{b}/quantized"), &t.dims, DataType::Int32, q));
        new_init.push(Tensor::f32(&format!("{b}/scale"), &t.dims, &bscales));
        new_init.push(typed(
            format!("{b}/zero_point"),
            &t.dims,
            DataType::Int32,
            vec![0; 4 * bias.len()],
        ));
        replaced.insert(b.clone());
        let dq = format!("{name}/bias/dequantize");
        out.nodes.push(dequantize(&dq, &b).with_axis(0));
        node.inputs[2] = dq;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
