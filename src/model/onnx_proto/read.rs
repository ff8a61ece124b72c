//! Reading an ONNX model back: the protobuf wire format decoded into the few messages the
//! quantizer rewrites (the graph's nodes, initializers, inputs and outputs). Every field it does
//! not interpret is kept as it was read and written out again unchanged, so a model read and
//! re-encoded loses nothing ONNX Runtime or the onnx checker look at.

use super::{DataType, Message};

mod model;
pub use model::Model;

#[derive(Debug, thiserror::Error)]
#[error("not a valid ONNX file: {0}")]
pub struct DecodeError(String);

/// One protobuf field value as it appears on the wire.
#[derive(Clone, Debug, PartialEq)]
pub enum Wire {
    Varint(u64),
    Fixed64(u64),
    Bytes(Vec<u8>),
    Fixed32(u32),
}

/// A field number and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Field {
    pub number: u32,
    pub value: Wire,
}

fn varint(bytes: &[u8], at: &mut usize) -> Result<u64, DecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes
            .get(*at)
            .ok_or_else(|| DecodeError("truncated varint".into()))?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(DecodeError("varint longer than 10 bytes".into()))
}

fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], DecodeError> {
    let end = at
        .checked_add(n)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| DecodeError(format!("field of {n} bytes runs past the end")))?;
    let slice = &bytes[*at..end];
    *at = end;
    Ok(slice)
}

/// Splits a message into its fields, in wire order.
pub fn fields(bytes: &[u8]) -> Result<Vec<Field>, DecodeError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let key = varint(bytes, &mut at)?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| DecodeError(format!("bad field number in key {key}")))?;
        let value = match key & 7 {
            0 => Wire::Varint(varint(bytes, &mut at)?),
            1 => {
                let b = take(bytes, &mut at, 8)?;
                Wire::Fixed64(u64::from_le_bytes(b.try_into().unwrap_or_default()))
            }
            2 => {
                let n = varint(bytes, &mut at)?;
                let n = usize::try_from(n).map_err(|_| DecodeError("huge field".into()))?;
                Wire::Bytes(take(bytes, &mut at, n)?.to_vec())
            }
            5 => {
                let b = take(bytes, &mut at, 4)?;
                Wire::Fixed32(u32::from_le_bytes(b.try_into().unwrap_or_default()))
            }
            w => return Err(DecodeError(format!("unsupported wire type {w}"))),
        };
        out.push(Field { number, value });
    }
    Ok(out)
}

impl Field {
    fn bytes(&self) -> Result<&[u8], DecodeError> {
        match &self.value {
            Wire::Bytes(b) => Ok(b),
            _ => Err(DecodeError(format!(
                "field {} should be length-delimited",
                self.number
            ))),
        }
    }

    fn string(&self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| DecodeError(format!("field {} is not UTF-8", self.number)))
    }

    /// A repeated int64 field, packed or not.
    fn ints(&self) -> Result<Vec<i64>, DecodeError> {
        match &self.value {
            Wire::Varint(v) => Ok(vec![*v as i64]),
            Wire::Bytes(b) => {
                let mut at = 0;
                let mut out = Vec::new();
                while at < b.len() {
                    out.push(varint(b, &mut at)? as i64);
                }
                Ok(out)
            }
            _ => Err(DecodeError(format!(
                "field {} should be an integer",
                self.number
            ))),
        }
    }
}

impl Message {
    /// Writes a field read by [`fields`] back unchanged.
    pub fn field(&mut self, f: &Field) -> &mut Self {
        match &f.value {
            Wire::Varint(v) => {
                self.key(f.number, 0);
                self.varint(*v);
            }
            Wire::Fixed64(v) => {
                self.key(f.number, 1);
                self.0.extend_from_slice(&v.to_le_bytes());
            }
            Wire::Bytes(b) => {
                self.bytes(f.number, b);
            }
            Wire::Fixed32(v) => {
                self.key(f.number, 5);
                self.0.extend_from_slice(&v.to_le_bytes());
            }
        }
        self
    }
}

/// `NodeProto`, with its attributes kept encoded.
#[derive(Clone, Debug)]
pub struct Node {
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub name: String,
    pub op_type: String,
    /// Encoded `AttributeProto`s.
    pub attributes: Vec<Vec<u8>>,
    /// Fields not interpreted (domain, doc string).
    pub rest: Vec<Field>,
}

impl Node {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut node = Node {
            inputs: vec![],
            outputs: vec![],
            name: String::new(),
            op_type: String::new(),
            attributes: vec![],
            rest: vec![],
        };
        for f in fields(bytes)? {
            match f.number {
                1 => node.inputs.push(f.string()?),
                2 => node.outputs.push(f.string()?),
                3 => node.name = f.string()?,
                4 => node.op_type = f.string()?,
                5 => node.attributes.push(f.bytes()?.to_vec()),
                _ => node.rest.push(f),
            }
        }
        Ok(node)
    }

    /// A node with no attributes.
    pub fn new(op_type: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> Self {
        Node {
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            name: name.into(),
            op_type: op_type.into(),
            attributes: vec![],
            rest: vec![],
        }
    }

    /// Adds an `axis` attribute (QuantizeLinear/DequantizeLinear per channel).
    pub fn with_axis(mut self, axis: i64) -> Self {
        let mut a = Message::default();
        a.string(1, "axis").int(3, axis).int(20, 2);
        self.attributes.push(a.into_bytes());
        self
    }

    pub fn encode(&self) -> Message {
        let mut m = Message::default();
        for i in &self.inputs {
            m.string(1, i);
        }
        for o in &self.outputs {
            m.string(2, o);
        }
        m.string(3, &self.name).string(4, &self.op_type);
        for a in &self.attributes {
            m.bytes(5, a);
        }
        for f in &self.rest {
            m.field(f);
        }
        m
    }
}

/// `TensorProto` (an initializer), its data as little-endian bytes.
#[derive(Clone, Debug)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: i64,
    pub raw: Vec<u8>,
}

impl Tensor {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut t = Tensor {
            name: String::new(),
            dims: vec![],
            data_type: 0,
            raw: vec![],
        };
        let mut typed: Vec<u8> = Vec::new();
        for f in fields(bytes)? {
            match f.number {
                1 => t.dims.extend(f.ints()?),
                2 => t.data_type = f.ints()?.first().copied().unwrap_or(0),
                // float_data (packed or one by one): turned into raw bytes.
                4 => match &f.value {
                    Wire::Fixed32(v) => typed.extend_from_slice(&v.to_le_bytes()),
                    Wire::Bytes(b) => typed.extend_from_slice(b),
                    _ => return Err(DecodeError("bad float_data".into())),
                },
                // int64_data.
                7 => {
                    for v in f.ints()? {
                        typed.extend_from_slice(&v.to_le_bytes());
                    }
                }
                8 => t.name = f.string()?,
                9 => t.raw = f.bytes()?.to_vec(),
                // data_location = EXTERNAL: the weights are in another file.
                14 => {
                    return Err(DecodeError(format!(
                        "initializer {} keeps its data in an external file; export the model as one file",
                        t.name
                    )));
                }
                _ => {}
            }
        }
        if t.raw.is_empty() {
            t.raw = typed;
        }
        Ok(t)
    }

    pub fn f32(name: &str, dims: &[i64], values: &[f32]) -> Self {
        Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i64,
            raw: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// The values of a float tensor; `None` for other types.
    pub fn floats(&self) -> Option<Vec<f32>> {
        (self.data_type == DataType::Float as i64).then(|| {
            self.raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        })
    }

    pub fn encode(&self) -> Message {
        let mut m = Message::default();
        for d in &self.dims {
            m.int(1, *d);
        }
        m.int(2, self.data_type)
            .string(8, &self.name)
            .bytes(9, &self.raw);
        m
    }
}

/// `GraphProto`: nodes and initializers decoded, inputs/outputs kept encoded with their names.
#[derive(Clone, Debug)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub initializers: Vec<Tensor>,
    pub inputs: Vec<Vec<u8>>,
    /// Encoded `ValueInfoProto`s of the graph outputs with their names.
    pub outputs: Vec<(String, Vec<u8>)>,
    pub rest: Vec<Field>,
}

impl Graph {
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut g = Graph {
            nodes: vec![],
            initializers: vec![],
            inputs: vec![],
            outputs: vec![],
            rest: vec![],
        };
        for f in fields(bytes)? {
            match f.number {
                1 => g.nodes.push(Node::decode(f.bytes()?)?),
                5 => g.initializers.push(Tensor::decode(f.bytes()?)?),
                11 => g.inputs.push(f.bytes()?.to_vec()),
                12 => {
                    let bytes = f.bytes()?.to_vec();
                    let name = fields(&bytes)?
                        .iter()
                        .find(|f| f.number == 1)
                        .map(Field::string)
                        .transpose()?
                        .unwrap_or_default();
                    g.outputs.push((name, bytes));
                }
                _ => g.rest.push(f),
            }
        }
        Ok(g)
    }

    pub fn initializer(&self, name: &str) -> Option<&Tensor> {
        self.initializers.iter().find(|t| t.name == name)
    }

    pub fn encode(&self) -> Message {
        let mut m = Message::default();
        for n in &self.nodes {
            m.message(1, &n.encode());
        }
        for f in &self.rest {
            m.field(f);
        }
        for t in &self.initializers {
            m.message(5, &t.encode());
        }
        for i in &self.inputs {
            m.bytes(11, i);
        }
        for (_, o) in &self.outputs {
            m.bytes(12, o);
        }
        m
    }
}

#[cfg(test)]
mod tests;
