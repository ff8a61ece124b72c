//! A minimal writer of the ONNX protobuf messages this project emits (the training crate's
//! deployment graph, the probe graph `efficientad doctor` opens on each provider, the quantized
//! graph), and in [`read`] the reader `efficientad quantize` starts from.
//!
//! Protobuf's wire format is small (varints, fixed 32-bit floats, length-delimited bytes), and
//! the deployment graph needs only a handful of ONNX messages, so they are encoded here directly
//! from onnx.proto's field numbers rather than through a generated crate. Each `*Proto` type
//! below mirrors the message of the same name; fields left out are the ones we never set.

pub mod read;

/// ONNX `TensorProto.DataType` values used here.
#[derive(Clone, Copy, Debug)]
pub enum DataType {
    Float = 1,
    Uint8 = 2,
    Int8 = 3,
    Int32 = 6,
    Int64 = 7,
}

/// Appends protobuf fields to a message buffer.
#[derive(Default)]
pub struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }

    /// A varint field (int64, enum); negative values use ten bytes as protobuf requires.
    pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, 0);
        self.varint(v as u64);
        self
    }

    /// A 32-bit float field.
    pub fn float(&mut self, field: u32, v: f32) -> &mut Self {
        self.key(field, 5);
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A length-delimited field (bytes, string or embedded message).
    pub fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Self {
        self.key(field, 2);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }

    pub fn string(&mut self, field: u32, v: &str) -> &mut Self {
        self.bytes(field, v.as_bytes())
    }

    pub fn message(&mut self, field: u32, m: &Message) -> &mut Self {
        self.bytes(field, &m.0)
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// A node attribute (`AttributeProto`).
pub enum Attr {
    Int(&'static str, i64),
    Ints(&'static str, Vec<i64>),
    Float(&'static str, f32),
    Str(&'static str, &'static str),
}

impl Attr {
    fn encode(&self) -> Message {
        // AttributeProto: name=1, f=2, i=3, s=4, ints=8, type=20.
        // AttributeType: FLOAT=1, INT=2, STRING=3, INTS=7.
        let mut m = Message::default();
        match self {
            Attr::Int(name, v) => {
                m.string(1, name).int(3, *v).int(20, 2);
            }
            Attr::Ints(name, vs) => {
                m.string(1, name);
                for v in vs {
                    m.int(8, *v);
                }
                m.int(20, 7);
            }
            Attr::Float(name, v) => {
                m.string(1, name).float(2, *v).int(20, 1);
            }
            Attr::Str(name, v) => {
                m.string(1, name).string(4, v).int(20, 3);
            }
        }
        m
    }
}

/// `NodeProto`: input=1, output=2, name=3, op_type=4, attribute=5.
pub fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: &[Attr]) -> Message {
    let mut m = Message::default();
    for i in inputs {
        m.string(1, i);
    }
    for o in outputs {
        m.string(2, o);
    }
    m.string(3, name).string(4, op);
    for a in attrs {
        m.message(5, &a.encode());
    }
    m
}

/// `TensorProto` with raw little-endian data: dims=1, data_type=2, name=8, raw_data=9.
pub fn tensor(name: &str, dims: &[usize], data_type: DataType, raw: &[u8]) -> Message {
    let mut m = Message::default();
    for d in dims {
        m.int(1, *d as i64);
    }
    m.int(2, data_type as i64).string(8, name).bytes(9, raw);
    m
}

/// A tensor dimension: a fixed size or a symbolic name.
pub enum Dim {
    Fixed(usize),
    Named(&'static str),
}

/// `ValueInfoProto` of a tensor: name=1, type=2 → TypeProto.tensor_type=1 →
/// {elem_type=1, shape=2 → TensorShapeProto.dim=1 → {dim_value=1, dim_param=2}}.
pub fn value_info(name: &str, data_type: DataType, dims: &[Dim]) -> Message {
    let mut shape = Message::default();
    for d in dims {
        let mut dim = Message::default();
        match d {
            Dim::Fixed(v) => dim.int(1, *v as i64),
            Dim::Named(p) => dim.string(2, p),
        };
        shape.message(1, &dim);
    }
    let mut tensor_type = Message::default();
    tensor_type.int(1, data_type as i64).message(2, &shape);
    let mut type_proto = Message::default();
    type_proto.message(1, &tensor_type);
    let mut m = Message::default();
    m.string(1, name).message(2, &type_proto);
    m
}

/// `GraphProto`: node=1, name=2, initializer=5, input=11, output=12.
pub fn graph(
    name: &str,
    nodes: &[Message],
    initializers: &[Message],
    inputs: &[Message],
    outputs: &[Message],
) -> Message {
    let mut m = Message::default();
    for n in nodes {
        m.message(1, n);
    }
    m.string(2, name);
    for t in initializers {
        m.message(5, t);
    }
    for i in inputs {
        m.message(11, i);
    }
    for o in outputs {
        m.message(12, o);
    }
    m
}

/// `ModelProto`: ir_version=1, producer_name=2, producer_version=3, graph=7, opset_import=8
/// (→ OperatorSetIdProto {domain=1, version=2}), metadata_props=14 (→ {key=1, value=2}).
pub fn model(
    ir_version: i64,
    opset: i64,
    producer: &str,
    version: &str,
    graph: &Message,
    metadata: &[(&str, String)],
) -> Vec<u8> {
    let mut opset_id = Message::default();
    opset_id.string(1, "").int(2, opset);
    let mut m = Message::default();
    m.int(1, ir_version)
        .string(2, producer)
        .string(3, version)
        .message(7, graph)
        .message(8, &opset_id);
    for (k, v) in metadata {
        let mut entry = Message::default();
        entry.string(1, k).string(2, v);
        m.message(14, &entry);
    }
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_match_the_protobuf_spec() {
        let mut m = Message::default();
        m.int(1, 150);
        assert_eq!(m.into_bytes(), [0x08, 0x96, 0x01]);
        let mut m = Message::default();
        m.int(2, -1);
        let bytes = m.into_bytes();
        assert_eq!(bytes.len(), 11);
        assert_eq!(bytes[10], 0x01);
        let mut m = Message::default();
        m.string(2, "testing");
        assert_eq!(m.into_bytes(), b"\x12\x07testing");
    }
}
