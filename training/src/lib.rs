//! EfficientAD training in Burn. The modules follow a batch's way from files to a gradient
//! step and out to the runtime:
//!
//! - [`data`]: image folders, splits, decoding, augmentation;
//! - [`model`]: the networks (PDN, autoencoder), their convolution and pooling kernels, and the
//!   teachers (imported, or a backbone's target);
//! - [`train`]: the `fit` loop and step, run state and checkpoints, the losses, teacher
//!   distillation;
//! - [`export`]: the ONNX deployment graph the runtime (`efficientad`) executes;
//! - [`tools`]: measurements around training (bench, quality checkpoints, curves, the gauge);
//! - [`backend`]: where Burn computes (CPU, or wgpu).

pub mod backend;
pub mod data;
pub mod export;
pub mod model;
pub mod tools;
pub mod train;
