//! Integration tests of the training crate: networks, teacher import, checkpoints, training
//! steps and the ONNX deployment graph, compared with PyTorch fixtures and with ONNX Runtime.
//! One module per feature; shared helpers in `util`.

mod backbone;
mod bench;
mod distill;
mod export;
mod fit;
mod gauge;
mod gradients;
mod import;
mod networks;
mod tools;
mod util;
#[cfg(feature = "wgpu")]
mod wgpu;
