//! A run's working folder: the resumable state, checkpoints written so that a half-written one
//! is never taken for complete, resuming from them, the loss log, and the stop flag.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{FitConfig, Optimizers, StepLosses, TrainError, adam, io};
use crate::data::Rng;
use crate::model::EfficientAd;
use crate::train::checkpoint::{self, CheckpointInfo};

/// The resumable part of a run's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub step: usize,
    pub rng: Rng,
    /// Current epoch's image order and the position in it.
    pub order: Vec<usize>,
    pub position: usize,
    pub config: FitConfig,
    pub wall_seconds: f64,
    pub last_losses: StepLosses,
}

/// Paths of a run's working folder.
pub struct Work {
    pub dir: PathBuf,
}

impl Work {
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.dir.join("checkpoint")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("log.jsonl")
    }
}

/// Model, optimizers and state of the run's last checkpoint, checked to belong to `config`.
pub fn load_checkpoint(
    work: &Work,
    config: &FitConfig,
    info: &CheckpointInfo,
    device: &Device,
) -> Result<(EfficientAd, Optimizers, RunState), TrainError> {
    let ckpt = work.checkpoint_dir();
    let resume = |e: &dyn std::fmt::Display| TrainError::Resume(e.to_string());
    let state_text = std::fs::read_to_string(ckpt.join("state.json"))
        .map_err(|e| TrainError::Resume(format!("no checkpoint in {} ({e})", ckpt.display())))?;
    let state: RunState = serde_json::from_str(&state_text).map_err(|e| resume(&e))?;
    if state.config.dataset != config.dataset
        || state.config.seed != config.seed
        || state.config.teacher != config.teacher
        || state.config.normalize_exposure != config.normalize_exposure
    {
        return Err(TrainError::Resume(format!(
            "the checkpoint in {} belongs to another run (dataset, teacher, seed or --normalize-exposure differ)",
            ckpt.display()
        )));
    }
    let mut model = checkpoint::model_skeleton(info, device);
    let mut store =
        burn::store::BurnpackStore::from_file(ckpt.join("model.bpk")).auto_extension(false);
    burn::store::ModuleSnapshot::load_from(&mut model, &mut store).map_err(|e| resume(&e))?;
    let optimizers = Optimizers {
        student: adam()
            .load(ckpt.join("optim_student.bpk"))
            .map_err(|e| resume(&e))?,
        autoencoder: adam()
            .load(ckpt.join("optim_ae.bpk"))
            .map_err(|e| resume(&e))?,
    };
    Ok((model, optimizers, state))
}

/// Writes model, optimizer states and run state (the state file last, so a checkpoint without
/// it is never taken for complete).
pub fn save_checkpoint(
    work: &Work,
    model: &EfficientAd,
    info: &CheckpointInfo,
    optimizers: &Optimizers,
    state: &RunState,
) -> Result<(), TrainError> {
    let dir = work.checkpoint_dir();
    let _ = std::fs::remove_file(dir.join("state.json"));
    checkpoint::save_model(model, info, &dir.join("model.bpk"))?;
    let _ = std::fs::remove_file(dir.join("optim_student.bpk"));
    let _ = std::fs::remove_file(dir.join("optim_ae.bpk"));
    optimizers
        .student
        .save(dir.join("optim_student.bpk"))
        .map_err(io)?;
    optimizers
        .autoencoder
        .save(dir.join("optim_ae.bpk"))
        .map_err(io)?;
    std::fs::write(
        dir.join("state.json"),
        serde_json::to_string(state).map_err(io)?,
    )
    .map_err(io)
}

/// Installs the Ctrl-C / SIGTERM handler that asks the loop to checkpoint and stop.
pub fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = ctrlc::set_handler(move || f.store(true, Ordering::SeqCst));
    flag
}

/// Reads a run's log (one JSON object per step).
pub fn read_log(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}
