use super::*;
use crate::model::onnx_proto::read::Model;
use crate::model::onnx_proto::{self as proto, Attr, Dim};

/// x → net/conv1 → net/conv1/relu → net/pool → net/conv2 → y, 1x1 convolutions.
fn chain() -> Graph {
    let f = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let init = [
        proto::tensor("w1", &[2, 1, 1, 1], DataType::Float, &f(&[0.5, -2.0])),
        proto::tensor("b1", &[2], DataType::Float, &f(&[0.1, 0.2])),
        proto::tensor("w2", &[1, 2, 1, 1], DataType::Float, &f(&[1.0, 1.0])),
        proto::tensor("b2", &[1], DataType::Float, &f(&[0.0])),
    ];
    let nodes = [
        proto::node("Conv", "net/conv1", &["x", "w1", "b1"], &["net/conv1"], &[]),
        proto::node(
            "Relu",
            "net/conv1/relu",
            &["net/conv1"],
            &["net/conv1/relu"],
            &[],
        ),
        proto::node(
            "AveragePool",
            "net/pool",
            &["net/conv1/relu"],
            &["net/pool"],
            &[Attr::Ints("kernel_shape", vec![2, 2])],
        ),
        proto::node("Conv", "net/conv2", &["net/pool", "w2", "b2"], &["y"], &[]),
    ];
    let x = proto::value_info("x", DataType::Float, &[Dim::Fixed(1), Dim::Fixed(1)]);
    let y = proto::value_info("y", DataType::Float, &[Dim::Fixed(1), Dim::Fixed(1)]);
    let bytes = proto::model(
        8,
        17,
        "t",
        "1",
        &proto::graph("g", &nodes, &init, &[x], &[y]),
        &[],
    );
    Model::decode(&bytes).expect("decodes").graph
}

#[test]
fn relu_is_folded_and_pooling_inherits_its_input_parameters() {
    let g = chain();
    let plan = Plan::new(&g, &[]).expect("plan");
    assert_eq!(plan.convs, ["net/conv1", "net/conv2"]);
    assert_eq!(
        plan.tensors,
        [
            ("x".to_string(), Source::Measured),
            ("net/conv1/relu".to_string(), Source::Measured),
            (
                "net/pool".to_string(),
                Source::SameAs("net/conv1/relu".into())
            ),
            ("y".to_string(), Source::Measured),
        ]
    );
    let ranges: BTreeMap<String, QParams> = [
        ("x", QParams::covering(-1.0, 1.0)),
        ("net/conv1/relu", QParams::covering(0.0, 2.0)),
        ("y", QParams::covering(-3.0, 3.0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let out = rewrite(&g, &plan, &ranges).expect("rewrite");
    let ops: Vec<(&str, &str)> = out
        .nodes
        .iter()
        .map(|n| (n.op_type.as_str(), n.name.as_str()))
        .collect();
    assert!(!ops.iter().any(|(op, _)| *op == "Relu"), "{ops:?}");
    // The convolution now writes the ReLU's output, quantized with zero point 0.
    let conv1 = out
        .nodes
        .iter()
        .find(|n| n.name == "net/conv1")
        .expect("conv1");
    assert_eq!(conv1.outputs, ["net/conv1/relu"]);
    let zp = out
        .initializer("net/conv1/relu/zero_point")
        .expect("zero point");
    assert_eq!(
        (zp.data_type, zp.raw.clone()),
        (DataType::Uint8 as i64, vec![0])
    );
    // The pool's output shares its input's scale.
    let scale = |t: &str| {
        out.initializer(&format!("{t}/scale"))
            .and_then(Tensor::floats)
    };
    assert_eq!(scale("net/pool"), scale("net/conv1/relu"));
    // Bias at input scale × weight scale: conv2 reads the pool (scale 2/255), weights
    // max |w| = 1 → 1/127.
    let bias_scale = out
        .initializer("b2/scale")
        .and_then(Tensor::floats)
        .expect("b2");
    assert!((bias_scale[0] - (2.0 / 255.0) / 127.0).abs() < 1e-9);
    // Float weights are gone; their int8 copies are in (one weight per output channel
    // here, so each is ±127 at its own scale).
    assert!(out.initializer("w1").is_none());
    assert_eq!(
        out.initializer("w1/quantized").map(|t| t.raw.clone()),
        Some(vec![127, (-127i8) as u8])
    );
    assert_eq!(
        out.initializer("w1/scale").and_then(Tensor::floats),
        Some(vec![0.5 / 127.0, 2.0 / 127.0])
    );
    // Keeping conv1 fp32 keeps its ReLU, and the pooled tensor then needs its own range.
    let kept = Plan::new(&g, &["net/conv1".into()]).expect("plan");
    assert_eq!(kept.kept, ["net/conv1"]);
    assert!(
        kept.tensors
            .contains(&("net/pool".to_string(), Source::Measured))
    );
    assert!(matches!(
        rewrite(&g, &kept, &ranges),
        Err(RewriteError::NoRange(t)) if t == "net/pool"
    ));
}
