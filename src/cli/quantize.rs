//! `efficientad quantize`: write an int8 (QDQ) bundle from an fp32 one, calibrated on normal
//! images, and say how far its maps are from the fp32 maps.

use std::path::PathBuf;

use clap::Args;
use efficientad::quantize::{DEFAULT_PERCENTILE, Progress, QuantizeOptions, RangeRule, quantize};

use super::Outcome;
use super::calibrate::progress_bar;

#[derive(Args)]
pub struct QuantizeArgs {
    /// fp32 model bundle folder, e.g. onnx/mtd-s.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Folder of normal validation images the activation ranges are measured on.
    #[arg(long, value_name = "DIR")]
    pub images: PathBuf,
    /// Bundle folder to write, e.g. onnx/mtd-s-int8.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Use at most this many images (the first in name order).
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_images: u32,
    /// Activation range: the smallest holding this percentage of the values seen on each side
    /// of zero; 100 takes the full min–max range.
    #[arg(long, value_name = "P", default_value_t = DEFAULT_PERCENTILE, value_parser = parse_percentile)]
    pub percentile: f64,
    /// Leave convolutions whose node name starts with this in fp32 (repeatable), e.g.
    /// `--keep-fp32 teacher/conv4`; the autoencoder stays fp32 anyway (see --int8-autoencoder).
    #[arg(long, value_name = "NODE")]
    pub keep_fp32: Vec<String>,
    /// Quantize the autoencoder too. By default its 14 convolutions stay fp32: its map is the
    /// small difference between the autoencoder's and the student's outputs, and on a
    /// well-trained model 8-bit noise in the autoencoder swamps it (README: int8).
    #[arg(long)]
    pub int8_autoencoder: bool,
    /// Also measure how much each convolution adds to the map error: one graph per
    /// convolution with only that one kept fp32 (about 3 s each).
    #[arg(long)]
    pub sensitivity: bool,
    /// Intra-op threads of ONNX Runtime (default: one per physical core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

/// Node prefix of the autoencoder's convolutions (the bundle contract's `autoencoder/`).
const AUTOENCODER: &str = "autoencoder/";

/// A map error above this after quantization gets a warning. Measured on MTD: 4–10 % changed
/// image AUROC by 0.3 point; the autoencoder quantized too (ae map 297 %) by 1 point.
const MAP_ERROR_WARNING: f64 = 0.25;

fn parse_percentile(text: &str) -> Result<f64, String> {
    let p: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if p > 50.0 && p <= 100.0 {
        Ok(p)
    } else {
        Err(format!("{p} is not a percentile in (50, 100]"))
    }
}

pub fn run(args: QuantizeArgs) -> anyhow::Result<Outcome> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let mut keep_fp32 = args.keep_fp32;
    if !args.int8_autoencoder {
        keep_fp32.push(AUTOENCODER.to_owned());
    }
    let options = QuantizeOptions {
        model: args.model,
        images: args.images,
        out: args.out,
        max_images: args.max_images as usize,
        rule: RangeRule::Percentile(args.percentile),
        keep_fp32,
        threads: args.threads.map(usize::from),
        sensitivity: args.sensitivity,
        command,
    };
    let mut bar = None;
    let report = quantize(&options, &mut |event| match event {
        Progress::Start(n) => bar = Some(progress_bar(n as u64, "measure activations")),
        Progress::Image => {
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
        Progress::Skipped(path, error) => {
            if let Some(b) = &bar {
                b.inc(1);
                b.suspend(|| {
                    efficientad::log_line!("efficientad: skipping {}: {error}", path.display())
                });
            }
        }
        Progress::Checking => {
            if let Some(b) = bar.take() {
                b.finish_and_clear();
            }
            efficientad::log_line!("efficientad: comparing the int8 maps with the fp32 maps");
        }
        Progress::Sensitivity(i, n) => {
            let b = bar.get_or_insert_with(|| progress_bar(n as u64, "sensitivity"));
            b.set_position(i as u64);
        }
    })?;
    efficientad::log_line!(
        "efficientad: wrote {} ({} convolutions int8{}; ranges from {} images, {}; {:.0} s)",
        report.bundle.display(),
        report.quantized_convs,
        if report.kept_fp32.is_empty() {
            String::new()
        } else {
            format!(", kept fp32: {}", report.kept_fp32.join(", "))
        },
        report.images,
        options.rule,
        report.seconds
    );
    efficientad::log_line!(
        "efficientad: map difference to fp32 on {} calibration images: st {:.2}%, ae {:.2}% (mean |int8 - fp32| / mean |fp32|); calibrate the int8 bundle before use",
        report.checked_images,
        100.0 * report.st_error,
        100.0 * report.ae_error
    );
    let worst = report.st_error.max(report.ae_error);
    if worst > MAP_ERROR_WARNING {
        efficientad::log_line!(
            "efficientad: warning: a map differs from fp32 by {:.0}% — this int8 model may miss defects the fp32 one finds; compare both with `efficientad eval`, and keep more layers fp32 (--sensitivity shows which help)",
            100.0 * worst
        );
    }
    if !report.sensitivity.is_empty() {
        if let Some(b) = bar.take() {
            b.finish_and_clear();
        }
        let mut rows = report.sensitivity.clone();
        rows.sort_by(|a, b| (a.st_error + a.ae_error).total_cmp(&(b.st_error + b.ae_error)));
        println!(
            "map error vs fp32 (mean |int8 - fp32| / mean |fp32|), most helpful fp32 layer first"
        );
        println!("| kept fp32 | st | ae |");
        println!("|---|---|---|");
        println!(
            "| (as written) | {:.2}% | {:.2}% |",
            100.0 * report.st_error,
            100.0 * report.ae_error
        );
        for r in rows {
            println!(
                "| {} | {:.2}% | {:.2}% |",
                r.kept_fp32,
                100.0 * r.st_error,
                100.0 * r.ae_error
            );
        }
    }
    Ok(Outcome::Success)
}
