//! EfficientAD training in Burn: the networks, teacher import, checkpoints and the ONNX
//! deployment graph. The runtime (`efficientad`) executes what this crate exports.

pub mod backend;
pub mod bench;
pub mod checkpoint;
pub mod conv;
pub mod curves;
pub mod data;
pub mod distill;
pub mod export;
pub mod gauge;
pub mod loss;
pub mod model;
pub mod pool;
pub mod quality;
pub mod target_teacher;
pub mod teacher;
pub mod train;
