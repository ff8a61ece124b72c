//! Runs over image files: listing them, batches through the engine (calibration, test
//! splits), MVTec-layout datasets, metrics, evaluation reports and heatmap files.

pub mod batch;
pub mod dataset;
pub mod evaluation;
pub mod images;
pub mod metrics;
pub mod report;
