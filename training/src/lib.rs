//! EfficientAD training in Burn: the networks, teacher import, checkpoints and the ONNX
//! deployment graph. The runtime (`efficientad`) executes what this crate exports.

pub mod checkpoint;
pub mod export;
pub mod model;
pub mod teacher;
