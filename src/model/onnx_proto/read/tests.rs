use super::*;
use crate::model::onnx_proto::{self as proto, Attr, Dim};

#[test]
fn a_written_model_reads_back_and_reencodes_to_the_same_bytes() {
    let w = proto::tensor(
        "w",
        &[2, 1, 1, 1],
        DataType::Float,
        &[0, 0, 128, 63, 0, 0, 0, 64],
    );
    let conv = proto::node(
        "Conv",
        "net/conv",
        &["x", "w"],
        &["y"],
        &[Attr::Ints("kernel_shape", vec![1, 1])],
    );
    let x = proto::value_info("x", DataType::Float, &[Dim::Named("N"), Dim::Fixed(1)]);
    let y = proto::value_info("y", DataType::Float, &[Dim::Named("N"), Dim::Fixed(2)]);
    let graph = proto::graph("g", &[conv], &[w], &[x], &[y]);
    let bytes = proto::model(8, 17, "test", "1", &graph, &[("k", "v".into())]);

    let model = Model::decode(&bytes).expect("decodes");
    assert_eq!(model.opset(), Some(17));
    let g = &model.graph;
    assert_eq!(g.nodes.len(), 1);
    assert_eq!(g.nodes[0].op_type, "Conv");
    assert_eq!(g.nodes[0].name, "net/conv");
    assert_eq!(g.nodes[0].inputs, ["x", "w"]);
    assert_eq!(g.outputs[0].0, "y");
    assert_eq!(
        g.initializer("w").and_then(Tensor::floats),
        Some(vec![1.0, 2.0])
    );
    assert_eq!(
        g.initializer("w").map(|t| t.dims.clone()),
        Some(vec![2, 1, 1, 1])
    );
    // Field order inside each message is the writer's, so the bytes round-trip exactly.
    assert_eq!(model.encode(), bytes);
}

#[test]
fn packed_dims_and_float_data_are_read() {
    // dims [2, 3] packed (field 1, wire 2), float_data [1.5] packed (field 4), name "t".
    let bytes = [
        0x0a, 0x02, 0x02, 0x03, 0x10, 0x01, 0x22, 0x04, 0, 0, 0xc0, 0x3f, 0x42, 0x01, b't',
    ];
    let t = Tensor::decode(&bytes).expect("decodes");
    assert_eq!(t.dims, [2, 3]);
    assert_eq!(t.floats(), Some(vec![1.5]));
    assert_eq!(t.name, "t");
}

#[test]
fn damaged_bytes_are_an_error_not_a_panic() {
    assert!(Model::decode(&[0x3a, 0x05, 0x01]).is_err());
    assert!(Model::decode(&[0xff; 12]).is_err());
    assert!(Model::decode(b"").is_err());
}
