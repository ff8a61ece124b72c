//! `efficientad calibrate`: run the model over normal validation images (and optionally
//! anomalous ones) and write the calibration file.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use efficientad::batch::{Outcome as ImageOutcome, RunOptions, list_images, run_files};
use efficientad::bundle::Bundle;
use efficientad::calibration::{
    CALIBRATION_FORMAT_VERSION, Calibration, DEFAULT_FALSE_REJECT_RATE, MapPair, ScoreSummary,
    ValidationSet, compute,
};
use efficientad::engine::{Engine, Provider};
use indicatif::{ProgressBar, ProgressStyle};

use super::{EngineArgs, Outcome};

#[derive(Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Folder of normal (good) validation images, never used for training.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Folder of anomalous images: the threshold then maximizes F1 instead.
    #[arg(long, value_name = "DIR")]
    pub anomalous: Option<PathBuf>,
    /// Target share of good parts rejected, used when no anomalous images are given.
    #[arg(long, value_name = "R", default_value_t = DEFAULT_FALSE_REJECT_RATE, value_parser = parse_rate)]
    pub false_reject_rate: f64,
    /// Calibration file to write, e.g. calibration/mtd-s.json.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let r: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if (0.0..1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("{r} is not a rate in [0, 1)"))
    }
}

/// Precision the provider computes in.
pub fn precision(provider: Provider) -> &'static str {
    match provider {
        Provider::Tensorrt => "fp16",
        _ => "fp32",
    }
}

/// Runs a folder and keeps the raw maps; failures are reported on stderr and counted.
pub fn collect_maps(
    engine: &mut Engine,
    dir: &Path,
    batch: usize,
    what: &str,
) -> anyhow::Result<(Vec<MapPair>, usize)> {
    let files = list_images(&[dir.to_owned()])?;
    if files.is_empty() {
        bail!(
            "{} holds no images ({})",
            dir.display(),
            efficientad::batch::IMAGE_EXTENSIONS.join(", ")
        );
    }
    let bar = ProgressBar::new(files.len() as u64).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    let mut maps = Vec::with_capacity(files.len());
    let mut failed = 0;
    let options = RunOptions {
        batch,
        keep_images: false,
    };
    run_files(engine, &files, options, |outcome| {
        match outcome {
            ImageOutcome::Maps(m) => maps.push(MapPair { st: m.st, ae: m.ae }),
            ImageOutcome::Error { path, error } => {
                failed += 1;
                bar.suspend(|| eprintln!("efficientad: skipping {}: {error}", path.display()));
            }
        }
        bar.inc(1);
    });
    bar.finish_and_clear();
    Ok((maps, failed))
}

pub fn run(args: CalibrateArgs) -> anyhow::Result<Outcome> {
    let bundle = Bundle::open(&args.engine.model)?;
    let mut engine = Engine::new(&bundle, &args.engine.engine_options())?;
    let batch = usize::from(args.engine.batch);
    let (normal, failed) = collect_maps(&mut engine, &args.images, batch, "normal")?;
    if normal.is_empty() {
        return Err(efficientad::calibration::CalibrationError::NoImages { failed }.into());
    }
    let (anomalous, anomalous_failed) = match &args.anomalous {
        Some(dir) => collect_maps(&mut engine, dir, batch, "anomalous")?,
        None => (Vec::new(), 0),
    };
    let computed = compute(&normal, &anomalous, args.false_reject_rate)?;
    let calibration = Calibration {
        format_version: CALIBRATION_FORMAT_VERSION,
        model_name: bundle.info.name.clone(),
        model_sha256: bundle.info.model_sha256.clone(),
        provider: engine.provider().to_string(),
        precision: precision(engine.provider()).into(),
        validation: ValidationSet {
            folder: args.images.display().to_string(),
            images: normal.len(),
            failed: failed + anomalous_failed,
            anomalous_folder: args.anomalous.as_ref().map(|d| d.display().to_string()),
            anomalous_images: anomalous.len(),
        },
        normalization: computed.normalization,
        threshold: computed.threshold,
        threshold_rule: computed.rule,
        scores: ScoreSummary::of(&computed.normal_scores).context("no normal scores")?,
        anomalous_scores: ScoreSummary::of(&computed.anomalous_scores),
        created_by: format!("efficientad {}", env!("CARGO_PKG_VERSION")),
    };
    calibration.save(&args.out)?;
    eprintln!(
        "efficientad: wrote {} ({} normal images{}, threshold {:.5}, provider {})",
        args.out.display(),
        normal.len(),
        if anomalous.is_empty() {
            String::new()
        } else {
            format!(", {} anomalous", anomalous.len())
        },
        calibration.threshold,
        calibration.provider
    );
    Ok(Outcome::Success)
}
