//! A distillation run's resumable state in its work folder: the teacher as it trains (padding
//! on), Adam's moments, the random stream, the target statistics and the step. Written with
//! the state file last, so a folder without it is never taken for a complete checkpoint; a
//! resumed run continues bit for bit where the saved one stopped.

use std::path::Path;

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{DistillConfig, DistillError, ImageFolder, LrSchedule, TargetOptions, TargetStats};
use crate::data::Rng;
use crate::model::{Pdn, Variant};
use crate::train::checkpoint::{self, CheckpointInfo, Kind, TeacherProvenance};

const STATE: &str = "state.json";
const TEACHER: &str = "teacher-padded.bpk";
const OPTIMIZER: &str = "optimizer.bpk";

/// What must match for a run to be resumed: everything that shapes its stream of steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunKey {
    pub backbone_sha256: String,
    pub images: Vec<ImageFolder>,
    pub variant: Variant,
    pub batch: usize,
    pub seed: u64,
    pub width_divisor: usize,
    pub target: TargetOptions,
    pub lr: f64,
    pub lr_schedule: LrSchedule,
}

impl RunKey {
    fn of(config: &DistillConfig) -> Self {
        Self {
            backbone_sha256: efficientad::model::bundle::file_sha256(&config.backbone)
                .unwrap_or_default(),
            images: config.images.clone(),
            variant: config.variant,
            batch: config.batch,
            seed: config.seed,
            width_divisor: config.width_divisor.max(1),
            target: config.target.clone(),
            lr: config.lr,
            lr_schedule: config.lr_schedule,
        }
    }
}

/// The resumable part of a distillation run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DistillState {
    pub step: usize,
    pub rng: Rng,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub wall_seconds: f64,
    pub key: RunKey,
}

impl DistillState {
    pub fn new(config: &DistillConfig, rng: Rng, targets: TargetStats) -> Self {
        Self {
            step: 0,
            rng,
            mean: targets.mean,
            std: targets.std,
            wall_seconds: 0.0,
            key: RunKey::of(config),
        }
    }

    pub fn targets(&self) -> TargetStats {
        TargetStats {
            mean: self.mean.clone(),
            std: self.std.clone(),
        }
    }
}

fn io(path: &Path, e: impl std::fmt::Display) -> DistillError {
    DistillError::Resume(format!("{}: {e}", path.display()))
}

/// Writes the state of `config.work` (the state file last).
pub fn save(
    config: &DistillConfig,
    pdn: &Pdn,
    optim: &ModuleOptimizer,
    state: &DistillState,
) -> Result<(), DistillError> {
    let dir = &config.work;
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let state_path = dir.join(STATE);
    let _ = std::fs::remove_file(&state_path);
    let info = CheckpointInfo {
        normalize_exposure: false,
        kind: Kind::Teacher,
        variant: config.variant,
        width_divisor: config.width_divisor.max(1),
        teacher: TeacherProvenance::Distilled {
            backbone: config.backbone.display().to_string(),
            backbone_sha256: state.key.backbone_sha256.clone(),
            images: String::new(),
            steps: state.step,
        },
        training: serde_json::json!({ "resumable_state": true }),
    };
    checkpoint::save_teacher(&pdn.valid(), &info, &dir.join(TEACHER))?;
    let optimizer = dir.join(OPTIMIZER);
    let _ = std::fs::remove_file(&optimizer);
    optim.save(&optimizer).map_err(|e| io(&optimizer, e))?;
    let text = serde_json::to_string(state).map_err(|e| io(&state_path, e))?;
    std::fs::write(&state_path, text).map_err(|e| io(&state_path, e))
}

/// Reads the state of `config.work`, checked to belong to the same run.
pub fn load(
    config: &DistillConfig,
    device: &Device,
) -> Result<(Pdn, ModuleOptimizer, DistillState), DistillError> {
    let dir = &config.work;
    let state_path = dir.join(STATE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| {
        DistillError::Resume(format!(
            "no distillation state in {} ({e}); run without --resume to start one",
            dir.display()
        ))
    })?;
    let state: DistillState = serde_json::from_str(&text).map_err(|e| io(&state_path, e))?;
    let key = RunKey::of(config);
    if state.key != key {
        return Err(DistillError::Resume(format!(
            "the state in {} belongs to another run: it was {:?}, this one is {:?}",
            dir.display(),
            state.key,
            key
        )));
    }
    let (mut pdn, _) = checkpoint::load_teacher(&dir.join(TEACHER), Some(config.variant), device)?;
    pdn.set_padding(true);
    let optimizer = dir.join(OPTIMIZER);
    let optim = crate::train::adam()
        .load(&optimizer)
        .map_err(|e| io(&optimizer, e))?;
    Ok((pdn, optim, state))
}
