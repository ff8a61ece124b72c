//! The EfficientAD edge runtime: model bundles executed by ONNX Runtime, turned into anomaly
//! maps, scores and OK/NG verdicts.
//!
//! Data flows one way: source → [`preprocess`] → [`engine`] → anomaly maps → verdict → report.

pub mod anomaly;
pub mod batch;
pub mod bundle;
pub mod calibration;
pub mod dataset;
pub mod engine;
pub mod evaluation;
pub mod http;
pub mod images;
pub mod inspect;
pub mod log;
pub mod metrics;
pub mod monitor;
pub mod notify;
pub mod onnx_proto;
pub mod ortlib;
pub mod pipeline;
pub mod preprocess;
#[cfg(test)]
mod properties;
pub mod protocol;
pub mod quantize;
pub mod region;
pub mod report;
pub mod source;

/// Milliseconds of a duration (how every timing in answers, logs and reports is given).
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
