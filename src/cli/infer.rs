//! `efficientad infer`: judge image files and folders, one JSON line per image on stdout.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use efficientad::judge::calibration::Calibration;
use efficientad::judge::inspect::{HeatmapSink, Verdict, judge};
use efficientad::line::protocol::JsonLines;
use efficientad::model::bundle::Bundle;
use efficientad::model::engine::Engine;
use efficientad::ms;
use efficientad::offline::batch::{Outcome as ImageOutcome, RunOptions, Timings, run_files};
use efficientad::offline::images::list_images;
use serde::Serialize;

use super::{EngineArgs, Outcome};

#[derive(Args)]
pub struct InferArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Calibration file of this model (from `efficientad calibrate`).
    #[arg(long, value_name = "FILE")]
    pub calibration: PathBuf,
    /// Write heatmap overlays of NG images into this folder.
    #[arg(long, value_name = "DIR")]
    pub heatmaps: Option<PathBuf>,
    /// With --heatmaps: write overlays for every image, not only NG ones.
    #[arg(long, requires = "heatmaps")]
    pub all_heatmaps: bool,
    #[command(flatten)]
    pub heatmap_limits: super::HeatmapLimitArgs,
    /// Image files or folders (folders are searched recursively for image files).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

/// One stdout line.
#[derive(Serialize)]
pub struct Line {
    pub path: String,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    pub threshold: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings_ms: Option<Timings>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn run(args: InferArgs) -> anyhow::Result<Outcome> {
    let bundle = Bundle::open(&args.engine.model)?;
    let calibration = Calibration::load_for(&args.calibration, &bundle)?;
    let files = list_images(&args.paths)?;
    if files.is_empty() {
        // As `calibrate` and `run`: nothing to judge is a setup error, never a silent success.
        anyhow::bail!(
            "no images in {} (supported: {})",
            args.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            efficientad::offline::images::IMAGE_EXTENSIONS.join(", ")
        );
    }
    let mut heatmaps = HeatmapSink::optional(
        args.heatmaps.as_deref(),
        args.all_heatmaps,
        args.heatmap_limits.limits(),
    )?;
    let mut engine = Engine::new(&bundle, &args.engine.engine_options())?;
    let options = RunOptions {
        batch: usize::from(args.engine.batch),
        keep_images: heatmaps.is_some(),
    };
    let stdout = std::io::stdout();
    let mut lines = JsonLines::new(stdout.lock());
    let mut errors = 0usize;
    let mut combined = Vec::new();
    run_files(&mut engine, &files, options, |outcome| {
        let line = match outcome {
            ImageOutcome::Maps(maps) => {
                let judged = judge(
                    maps.view(),
                    maps.part(),
                    &calibration,
                    &mut combined,
                    heatmaps.as_mut(),
                );
                if let Some(e) = &judged.heatmap_error {
                    efficientad::log_line!("efficientad: {e}");
                }
                if judged.error.is_some() {
                    errors += 1;
                }
                let timings = Timings {
                    maps_ms: judged.maps_ms,
                    total_ms: ms(maps.started.elapsed()),
                    ..maps.timings
                };
                Line {
                    path: maps.path.display().to_string(),
                    verdict: judged.verdict,
                    score: judged.error.is_none().then_some(judged.score),
                    threshold: calibration.threshold,
                    width: Some(maps.width),
                    height: Some(maps.height),
                    batch_size: Some(maps.batch_size),
                    timings_ms: Some(timings),
                    heatmap: judged.heatmap.map(|p| p.display().to_string()),
                    error: judged.error.map(|e| e.to_string()),
                }
            }
            ImageOutcome::Error { path, error } => {
                errors += 1;
                Line {
                    path: path.display().to_string(),
                    verdict: Verdict::Error,
                    score: None,
                    threshold: calibration.threshold,
                    width: None,
                    height: None,
                    batch_size: None,
                    timings_ms: None,
                    heatmap: None,
                    error: Some(error),
                }
            }
        };
        lines.write(&line);
    });
    lines.finish().context("writing results to stdout")?;
    if errors > 0 {
        efficientad::log_line!(
            "efficientad: {errors} of {} images could not be judged (ERROR lines)",
            files.len()
        );
        return Ok(Outcome::SomeErrors);
    }
    Ok(Outcome::Success)
}
