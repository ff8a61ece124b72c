//! `efficientad-train import-teacher`: a pretrained PDN teacher from a PyTorch state_dict
//! (.pth), in either key style (`0.weight`… or `conv1.weight`…), into the project's
//! checkpoint format.

use std::path::PathBuf;

use anyhow::Context;
use burn::tensor::Device;
use clap::Args;
use efficientad_training::model::Variant;
use efficientad_training::model::teacher::import_teacher;
use efficientad_training::train::checkpoint::{self, CheckpointInfo, Kind, TeacherProvenance};

use super::parse_variant;

#[derive(Args)]
pub struct ImportTeacherArgs {
    /// The PyTorch file (e.g. teacher_small.pth / pretrained_teacher_small.pth).
    #[arg(long)]
    pub pth: PathBuf,
    /// PDN size of the teacher: s (EfficientAD-S) or m (EfficientAD-M).
    #[arg(long, value_parser = parse_variant)]
    pub variant: Variant,
    /// Checkpoint file to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: ImportTeacherArgs) -> anyhow::Result<()> {
    let ImportTeacherArgs { pth, variant, out } = args;
    let device = Device::flex();
    let teacher = import_teacher(&pth, variant, &device)?;
    let sha256 = efficientad::model::bundle::file_sha256(&pth)
        .with_context(|| format!("hashing {}", pth.display()))?;
    let info = CheckpointInfo {
        normalize_exposure: false,
        kind: Kind::Teacher,
        variant,
        width_divisor: 1,
        teacher: TeacherProvenance::Imported {
            file: pth.display().to_string(),
            sha256,
        },
        training: serde_json::Value::Null,
    };
    checkpoint::save_teacher(&teacher, &info, &out)?;
    eprintln!(
        "imported PDN-{variant} teacher from {} into {}",
        pth.display(),
        out.display()
    );
    Ok(())
}
