//! The model: the bundle on disk, the ONNX Runtime library and sessions that execute it, the
//! small ONNX reader/writer, and the host-side preparation of its input (decode, RGB, resize).

pub mod bundle;
pub mod engine;
pub mod onnx_proto;
pub mod ortlib;
pub mod preprocess;
pub mod session;
