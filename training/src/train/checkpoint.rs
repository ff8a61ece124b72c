//! The project's checkpoint format: one burnpack file holding a module's tensors, with a JSON
//! description ([`CheckpointInfo`]) in its metadata so the file alone says what it holds
//! (a teacher or a whole model, which variant, where the teacher came from).

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::burn_pack::Reader;
use burn::store::{BurnpackStore, ModuleSnapshot};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::model::{EfficientAd, Pdn, PdnConfig, TEACHER_CHANNELS, Variant};

/// Metadata key under which the checkpoint description is stored.
const INFO_KEY: &str = "efficientad";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Read {
        path: PathBuf,
        source: efficientad::Cause,
    },
    #[error(
        "{path} is not an efficientad checkpoint (no `{INFO_KEY}` metadata); make one with `efficientad-train import-teacher` or `fit`"
    )]
    NotOurs { path: PathBuf },
    #[error("{path} holds a {found}, but a {expected} is needed here")]
    WrongKind {
        path: PathBuf,
        found: Kind,
        expected: Kind,
    },
    #[error("{path} holds a PDN-{found} teacher, but --variant {expected} was asked for")]
    WrongVariant {
        path: PathBuf,
        found: Variant,
        expected: Variant,
    },
    #[error("checkpoint {path} is incomplete or damaged: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot write checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        source: efficientad::Cause,
    },
}

/// What a checkpoint holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Teacher,
    Model,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Teacher => "teacher",
            Kind::Model => "whole model (teacher, student, autoencoder)",
        })
    }
}

/// Where the teacher's weights came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum TeacherProvenance {
    /// Imported from a PyTorch state_dict.
    Imported { file: String, sha256: String },
    /// Distilled from a backbone.
    Distilled {
        backbone: String,
        backbone_sha256: String,
        images: String,
        steps: usize,
    },
    /// No teacher network: the distillation target of `backbone` is the teacher
    /// (`fit --teacher target:BACKBONE.onnx`).
    Target {
        backbone: String,
        backbone_sha256: String,
        shape: crate::model::target_teacher::TargetShape,
    },
    /// Freshly initialized (plumbing tests only).
    Random { seed: u64 },
}

/// The JSON description stored in every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub kind: Kind,
    pub variant: Variant,
    /// 1 for the paper's networks; larger for narrowed test networks.
    pub width_divisor: usize,
    pub teacher: TeacherProvenance,
    /// Free-form training record (steps, seed, losses, data) for whole models.
    #[serde(default)]
    pub training: serde_json::Value,
    /// Every network input is exposure-normalized ([`crate::data::normalize_exposure`]), in
    /// training and inside the exported graph.
    #[serde(default)]
    pub normalize_exposure: bool,
}

impl CheckpointInfo {
    pub fn teacher_channels(&self) -> usize {
        TEACHER_CHANNELS / self.width_divisor.max(1)
    }

    /// The teacher's configuration (padding off).
    pub fn teacher_config(&self) -> PdnConfig {
        PdnConfig::new(self.variant, self.teacher_channels()).with_width_divisor(self.width_divisor)
    }
}

fn write_error(path: &Path, e: impl Into<efficientad::Cause>) -> CheckpointError {
    CheckpointError::Write {
        path: path.to_owned(),
        source: e.into(),
    }
}

fn save<M: Module + ModuleSnapshot>(
    module: &M,
    info: &CheckpointInfo,
    path: &Path,
) -> Result<(), CheckpointError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| write_error(path, e))?;
    }
    let json = serde_json::to_string(info).map_err(|e| write_error(path, e))?;
    let mut store = BurnpackStore::from_file(path)
        .auto_extension(false)
        .overwrite(true)
        .metadata(INFO_KEY, json);
    module
        .save_into(&mut store)
        .map_err(|e| write_error(path, e))
}

/// Reads only the description of a checkpoint.
pub fn read_info(path: &Path) -> Result<CheckpointInfo, CheckpointError> {
    let reader = Reader::from_file(path).map_err(|e| CheckpointError::Read {
        path: path.to_owned(),
        source: e.into(),
    })?;
    let json = reader
        .metadata()
        .get(INFO_KEY)
        .ok_or_else(|| CheckpointError::NotOurs {
            path: path.to_owned(),
        })?;
    serde_json::from_str(json).map_err(|e| CheckpointError::Damaged {
        path: path.to_owned(),
        reason: format!("bad description: {e}"),
    })
}

fn load_into<M: Module + ModuleSnapshot>(
    module: &mut M,
    path: &Path,
) -> Result<(), CheckpointError> {
    let mut store = BurnpackStore::from_file(path).auto_extension(false);
    let result = module
        .load_from(&mut store)
        .map_err(|e| CheckpointError::Damaged {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if !result.missing.is_empty() || !result.errors.is_empty() {
        return Err(CheckpointError::Damaged {
            path: path.to_owned(),
            reason: format!(
                "missing tensors {:?}, errors {:?}",
                result.missing.iter().map(|(k, _)| k).collect::<Vec<_>>(),
                result
                    .errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
            ),
        });
    }
    Ok(())
}

/// Saves a teacher PDN.
pub fn save_teacher(
    teacher: &Pdn,
    info: &CheckpointInfo,
    path: &Path,
) -> Result<(), CheckpointError> {
    save(teacher, info, path)
}

/// Loads a teacher PDN (padding off). `variant`, when given, must match the file.
pub fn load_teacher(
    path: &Path,
    variant: Option<Variant>,
    device: &Device,
) -> Result<(Pdn, CheckpointInfo), CheckpointError> {
    let info = read_info(path)?;
    if info.kind != Kind::Teacher {
        return Err(CheckpointError::WrongKind {
            path: path.to_owned(),
            found: info.kind,
            expected: Kind::Teacher,
        });
    }
    if let Some(expected) = variant.filter(|v| *v != info.variant) {
        return Err(CheckpointError::WrongVariant {
            path: path.to_owned(),
            found: info.variant,
            expected,
        });
    }
    let mut teacher = info.teacher_config().init(device);
    load_into(&mut teacher, path)?;
    teacher.set_padding(false);
    Ok((teacher, info))
}

/// Builds an untrained model with the shapes a description implies.
pub fn model_skeleton(info: &CheckpointInfo, device: &Device) -> EfficientAd {
    EfficientAd::new(&info.teacher_config(), device)
}

/// Saves a whole model.
pub fn save_model(
    model: &EfficientAd,
    info: &CheckpointInfo,
    path: &Path,
) -> Result<(), CheckpointError> {
    save(model, info, path)
}

/// Loads a whole model.
pub fn load_model(
    path: &Path,
    device: &Device,
) -> Result<(EfficientAd, CheckpointInfo), CheckpointError> {
    let info = read_info(path)?;
    if info.kind != Kind::Model {
        return Err(CheckpointError::WrongKind {
            path: path.to_owned(),
            found: info.kind,
            expected: Kind::Model,
        });
    }
    let mut model = model_skeleton(&info, device);
    load_into(&mut model, path)?;
    Ok((model, info))
}
