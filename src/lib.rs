//! The EfficientAD edge runtime: model bundles executed by ONNX Runtime, turned into anomaly
//! maps, scores and OK/NG verdicts.
//!
//! Data flows one way: source → [`preprocess`] → [`engine`] → anomaly maps → verdict → report.

pub mod bundle;
pub mod engine;
pub mod ortlib;
pub mod preprocess;
