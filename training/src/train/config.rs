//! A run's settings, saved beside its checkpoints.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::model::Variant;

/// Everything that defines a run; saved beside its checkpoints and in model.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    pub dataset: PathBuf,
    /// A teacher checkpoint, or `target:BACKBONE.onnx` (the distillation target as teacher).
    pub teacher: PathBuf,
    /// PDN size of the student (a PDN teacher's own size; checked by the command).
    #[serde(default)]
    pub variant: Variant,
    pub penalty_images: PathBuf,
    pub steps: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub work: PathBuf,
    pub checkpoint_every: usize,
    /// Use at most this many penalty images (all when None).
    pub penalty_limit: Option<usize>,
    /// Use at most this many training images (all when None).
    pub train_limit: Option<usize>,
    /// Where to compute.
    #[serde(default)]
    pub backend: crate::backend::Backend,
    /// Report the model for a quality check every this many steps (0: never).
    #[serde(default)]
    pub eval_every: usize,
    /// With `backend` wgpu: accept a software Vulkan adapter.
    #[serde(default)]
    pub allow_cpu_adapter: bool,
    /// Normalize every image's brightness and contrast before the networks (also inside the
    /// exported graph).
    #[serde(default)]
    pub normalize_exposure: bool,
}
