//! The EfficientAD edge runtime: model bundles executed by ONNX Runtime, turned into anomaly
//! maps, scores and OK/NG verdicts.
//!
//! Data flows one way: source → preprocess → engine → anomaly maps → verdict → report. The
//! modules follow the stages:
//!
//! - [`model`]: the bundle, ONNX Runtime and its sessions, input preparation;
//! - [`judge`]: maps → score → verdict, the calibration file, the inspection region;
//! - [`line`](mod@line): cameras, the streaming pipeline, the PLC protocol, supervision;
//! - [`offline`]: image files, datasets, metrics, evaluation, heatmap reports;
//! - [`quantize`]: int8 bundles;
//! - [`log`]: stderr that never stops a run.
//!
//! The commands (`src/cli/`) only wire these together.

pub mod judge;
pub mod line;
pub mod log;
pub mod model;
pub mod offline;
pub mod quantize;

/// Milliseconds of a duration (how every timing in answers, logs and reports is given).
pub fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The underlying error an error of this crate wraps when it can come from more than one
/// library (an I/O error or an image decoder's, …): kept as the `source`, so `{:#}` and error
/// reporters show the whole chain. Where only one library can fail the field has its type.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;
