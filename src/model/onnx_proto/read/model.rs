//! `ModelProto` around the decoded graph.

use super::{DecodeError, Field, Graph, fields};
use crate::model::onnx_proto::Message;

/// `ModelProto`: the graph decoded, the rest (IR version, opsets, producer, metadata) kept.
#[derive(Clone, Debug)]
pub struct Model {
    pub graph: Graph,
    pub rest: Vec<Field>,
    /// How many of `rest` came before the graph (kept so the bytes round-trip).
    graph_at: usize,
}

impl Model {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut graph = None;
        let mut rest = Vec::new();
        let mut graph_at = 0;
        for f in fields(bytes)? {
            if f.number == 7 {
                graph = Some(Graph::decode(f.bytes()?)?);
                graph_at = rest.len();
            } else {
                rest.push(f);
            }
        }
        let graph = graph.ok_or_else(|| DecodeError("the model has no graph".into()))?;
        Ok(Model {
            graph,
            rest,
            graph_at,
        })
    }

    /// The same model around another graph.
    pub fn with_graph(&self, graph: Graph) -> Model {
        Model {
            graph,
            rest: self.rest.clone(),
            graph_at: self.graph_at,
        }
    }

    /// The opset of the default ONNX domain.
    pub fn opset(&self) -> Option<i64> {
        self.rest
            .iter()
            .filter(|f| f.number == 8)
            .filter_map(|f| fields(f.bytes().ok()?).ok())
            .find(|id| {
                id.iter()
                    .filter(|f| f.number == 1)
                    .all(|f| f.bytes().is_ok_and(|b| b.is_empty()))
            })
            .and_then(|id| {
                id.iter()
                    .find(|f| f.number == 2)
                    .and_then(|f| f.ints().ok()?.first().copied())
            })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut m = Message::default();
        for f in &self.rest[..self.graph_at] {
            m.field(f);
        }
        m.message(7, &self.graph.encode());
        for f in &self.rest[self.graph_at..] {
            m.field(f);
        }
        m.into_bytes()
    }
}
