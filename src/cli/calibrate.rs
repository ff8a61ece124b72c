//! `efficientad calibrate`: run the model over normal validation images (and optionally
//! anomalous ones) and write the calibration file.

use std::path::PathBuf;

use clap::Args;
use efficientad::judge::calibration::DEFAULT_FALSE_REJECT_RATE;
use efficientad::judge::region::Region;
use efficientad::model::bundle::Bundle;
use efficientad::model::engine::Engine;
use efficientad::offline::batch::calibrate::{ImageSet, Progress, calibrate_files};
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
    /// Leave out this many pixels along every edge of the image: the score, verdict and
    /// heatmap then ignore them (fixtures, tile edges in view).
    #[arg(long, value_name = "PX", default_value_t = 0)]
    pub ignore_border: u32,
    /// Inspect only where this mask image is white (scaled to each image); the file is
    /// recorded with its sha256 and must stay where it is.
    #[arg(long, value_name = "MASK.png")]
    pub roi: Option<PathBuf>,
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

pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len).with_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

pub fn run(args: CalibrateArgs) -> anyhow::Result<Outcome> {
    let region = Region::new(args.ignore_border, args.roi.as_deref())?;
    let bundle = Bundle::open(&args.engine.model)?;
    let mut engine = Engine::new(&bundle, &args.engine.engine_options())?;
    let normal = ImageSet::folder(&args.images)?;
    let anomalous = args
        .anomalous
        .as_deref()
        .map(ImageSet::folder)
        .transpose()?;
    let total = normal.files.len() + anomalous.as_ref().map_or(0, |a| a.files.len());
    let bar = progress_bar(total as u64, "calibrate");
    let calibration = calibrate_files(
        &mut engine,
        &bundle,
        &normal,
        anomalous.as_ref(),
        args.false_reject_rate,
        &region,
        usize::from(args.engine.batch),
        &mut |event| match event {
            Progress::Done => bar.inc(1),
            Progress::Skipped(path, error) => {
                bar.inc(1);
                bar.suspend(|| {
                    efficientad::log_line!("efficientad: skipping {}: {error}", path.display())
                });
            }
        },
    )?;
    bar.finish_and_clear();
    calibration.save(&args.out)?;
    efficientad::log_line!(
        "efficientad: wrote {} ({} normal images{}, threshold {:.5}, provider {})",
        args.out.display(),
        calibration.validation.images,
        if calibration.validation.anomalous_images == 0 {
            String::new()
        } else {
            format!(", {} anomalous", calibration.validation.anomalous_images)
        },
        calibration.threshold,
        calibration.provider
    );
    Ok(Outcome::Success)
}
