//! `efficientad-train`: teacher import, export of deployment bundles (and, as they land,
//! distillation and training). Thin: parse, validate, call the library, map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use burn::tensor::Device;
use clap::{Parser, Subcommand};
use efficientad_training::checkpoint::{self, CheckpointInfo, Kind, TeacherProvenance};
use efficientad_training::export::export_bundle;
use efficientad_training::model::{EfficientAd, PdnConfig, TEACHER_CHANNELS, Variant};
use efficientad_training::teacher::import_teacher;

#[derive(Parser)]
#[command(
    name = "efficientad-train",
    version,
    about = "Train and export EfficientAD models (Burn, CPU by default)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn parse_variant(text: &str) -> Result<Variant, String> {
    Variant::parse(text).ok_or_else(|| format!("`{text}` is not a variant; use s or m"))
}

#[derive(Subcommand)]
enum Command {
    /// Import a pretrained PDN teacher from a PyTorch state_dict (.pth), in either key style
    /// (`0.weight`… or `conv1.weight`…), into the project's checkpoint format.
    ImportTeacher {
        /// The PyTorch file (e.g. teacher_small.pth / pretrained_teacher_small.pth).
        #[arg(long)]
        pth: PathBuf,
        /// PDN size of the teacher: s (EfficientAD-S) or m (EfficientAD-M).
        #[arg(long, value_parser = parse_variant)]
        variant: Variant,
        /// Checkpoint file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Export a model bundle (model.onnx + model.json) from a model checkpoint, or with fresh
    /// random weights for plumbing tests.
    Export {
        /// A whole-model checkpoint (written by `fit`).
        #[arg(long, required_unless_present = "random", conflicts_with = "random")]
        checkpoint: Option<PathBuf>,
        /// Export freshly initialized weights instead (tests and demos of the plumbing only).
        #[arg(long)]
        random: bool,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 0, requires = "random")]
        seed: u64,
        /// PDN size for --random.
        #[arg(long, value_parser = parse_variant, default_value = "s")]
        variant: Variant,
        /// Divide every hidden width by this (--random only): tiny networks for fast tests.
        #[arg(long, default_value_t = 1, requires = "random", hide = true)]
        width_divisor: usize,
        /// Also fold these teacher statistics (a JSON file `{"mean": [...], "std": [...]}`) into a
        /// random export, to test the fold.
        #[arg(long, requires = "random", hide = true)]
        teacher_stats: Option<PathBuf>,
        /// Bundle folder to write, e.g. onnx/my-part.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("efficientad-train: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let device = Device::flex();
    match cli.command {
        Command::ImportTeacher { pth, variant, out } => {
            let teacher = import_teacher(&pth, variant, &device)?;
            let sha256 = efficientad::bundle::file_sha256(&pth)
                .with_context(|| format!("hashing {}", pth.display()))?;
            let info = CheckpointInfo {
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
        }
        Command::Export {
            checkpoint: Some(path),
            out,
            ..
        } => {
            let (model, info) = checkpoint::load_model(&path, &device)?;
            let written = export_bundle(&model, &info, &out)?;
            eprintln!(
                "exported {} (sha256 {})",
                out.display(),
                written.model_sha256
            );
        }
        Command::Export {
            checkpoint: None,
            random,
            seed,
            variant,
            width_divisor,
            teacher_stats,
            out,
        } => {
            if !random {
                bail!("give --checkpoint FILE or --random");
            }
            if width_divisor == 0 || !TEACHER_CHANNELS.is_multiple_of(width_divisor) {
                bail!("--width-divisor {width_divisor} must divide 384");
            }
            device.seed(seed);
            let config = PdnConfig::new(variant, TEACHER_CHANNELS / width_divisor)
                .with_width_divisor(width_divisor);
            let mut model = EfficientAd::new(&config, &device);
            if let Some(stats) = teacher_stats {
                efficientad_training::model::set_teacher_stats_from_file(
                    &mut model, &stats, &device,
                )
                .map_err(anyhow::Error::msg)?;
            }
            let info = CheckpointInfo {
                kind: Kind::Model,
                variant,
                width_divisor,
                teacher: TeacherProvenance::Random { seed },
                training: serde_json::Value::Null,
            };
            let written = export_bundle(&model, &info, &out)?;
            eprintln!(
                "exported random-weight bundle {} (sha256 {})",
                out.display(),
                written.model_sha256
            );
        }
    }
    Ok(())
}
