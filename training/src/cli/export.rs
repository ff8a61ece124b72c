//! `efficientad-train export`: a model bundle (model.onnx + model.json) from a model
//! checkpoint, or with fresh random weights for plumbing tests.

use std::path::PathBuf;

use anyhow::bail;
use burn::tensor::Device;
use clap::Args;
use efficientad_training::data::Rng;
use efficientad_training::export::export_bundle;
use efficientad_training::model::{
    AutoencoderConfig, EfficientAd, PdnConfig, TEACHER_CHANNELS, Variant,
};
use efficientad_training::train::checkpoint::{self, CheckpointInfo, Kind, TeacherProvenance};

use super::parse_variant;

#[derive(Args)]
pub struct ExportArgs {
    /// A whole-model checkpoint (written by `fit`).
    #[arg(long, required_unless_present = "random", conflicts_with = "random")]
    pub checkpoint: Option<PathBuf>,
    /// Export freshly initialized weights instead (tests and demos of the plumbing only).
    #[arg(long)]
    pub random: bool,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0, requires = "random")]
    pub seed: u64,
    /// PDN size for --random.
    #[arg(long, value_parser = parse_variant, default_value = "s")]
    pub variant: Variant,
    /// Divide every hidden width by this (--random only): tiny networks for fast tests.
    #[arg(long, default_value_t = 1, requires = "random", hide = true)]
    pub width_divisor: usize,
    /// Divide the autoencoder's hidden widths (32, 64) by this (--random only): the tiny
    /// models the emulated aarch64 tests run.
    #[arg(long, default_value_t = 1, requires = "random", hide = true)]
    pub ae_width_divisor: usize,
    /// Also fold these teacher statistics (a JSON file `{"mean": [...], "std": [...]}`) into a
    /// random export, to test the fold.
    #[arg(long, requires = "random", hide = true)]
    pub teacher_stats: Option<PathBuf>,
    /// Bundle folder to write, e.g. onnx/my-part.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    let device = Device::flex();
    match &args.checkpoint {
        Some(path) => {
            let (model, info) = checkpoint::load_model(path, &device)?;
            let written = export_bundle(&model, &info, &args.out)?;
            eprintln!(
                "exported {} (sha256 {})",
                args.out.display(),
                written.model_sha256
            );
            Ok(())
        }
        None if args.random => export_random(&args, &device),
        None => bail!("give --checkpoint FILE or --random"),
    }
}

/// Freshly initialized weights (tests and demos of the plumbing only).
fn export_random(args: &ExportArgs, device: &Device) -> anyhow::Result<()> {
    let ExportArgs {
        seed,
        variant,
        width_divisor,
        ae_width_divisor,
        ..
    } = *args;
    if width_divisor == 0 || !TEACHER_CHANNELS.is_multiple_of(width_divisor) {
        bail!("--width-divisor {width_divisor} must divide 384");
    }
    let config =
        PdnConfig::new(variant, TEACHER_CHANNELS / width_divisor).with_width_divisor(width_divisor);
    if ae_width_divisor == 0 || 32 % ae_width_divisor != 0 {
        bail!("--ae-width-divisor {ae_width_divisor} must divide 32");
    }
    let mut model = EfficientAd::new(&config, device);
    model.autoencoder = AutoencoderConfig::new(config.out_channels)
        .with_width_divisor(ae_width_divisor)
        .init(device);
    model.init_weights(&mut Rng::new(seed), true, device);
    if let Some(stats) = &args.teacher_stats {
        efficientad_training::model::set_teacher_stats_from_file(&mut model, stats, device)
            .map_err(anyhow::Error::msg)?;
    }
    let info = CheckpointInfo {
        normalize_exposure: false,
        kind: Kind::Model,
        variant,
        width_divisor,
        teacher: TeacherProvenance::Random { seed },
        // Said in model.json: the autoencoder is narrower than its teacher implies.
        training: if ae_width_divisor > 1 {
            serde_json::json!({ "autoencoder_width_divisor": ae_width_divisor })
        } else {
            serde_json::Value::Null
        },
    };
    let written = export_bundle(&model, &info, &args.out)?;
    eprintln!(
        "exported random-weight bundle {} (sha256 {})",
        args.out.display(),
        written.model_sha256
    );
    Ok(())
}
