//! `efficientad eval`: run a model over an MVTec-layout test split and report image AUROC,
//! pixel AUROC, AU-PRO (per defect type and overall), verdict counts and latency.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use efficientad::batch::{Outcome as ImageOutcome, RunOptions, run_files};
use efficientad::bundle::Bundle;
use efficientad::calibration::Calibration;
use efficientad::dataset::{TestImage, test_set};
use efficientad::engine::Engine;
use efficientad::evaluation::{EvalImage, EvalReport, GroupMetrics, pack_mask, report};
use efficientad::inspect::{HeatmapSink, judge};
use efficientad::metrics::{DEFAULT_BUDGET, DEFAULT_FPR_LIMIT};
use indicatif::{ProgressBar, ProgressStyle};

use super::{EngineArgs, Outcome};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Calibration file of this model.
    #[arg(long, value_name = "FILE")]
    pub calibration: PathBuf,
    /// Dataset folder in the MVTec layout (test/<good|defect>/, ground_truth/<defect>/).
    #[arg(long, value_name = "DIR")]
    pub dataset: PathBuf,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write one CSV row per image: path, label, defect type, score.
    #[arg(long, value_name = "FILE")]
    pub scores_out: Option<PathBuf>,
    /// Write heatmap overlays of every test image into this folder.
    #[arg(long, value_name = "DIR")]
    pub heatmaps: Option<PathBuf>,
    /// FPR integration limit of AU-PRO.
    #[arg(long, value_name = "F", default_value_t = DEFAULT_FPR_LIMIT)]
    pub fpr_limit: f64,
}

fn load_mask(item: &TestImage, width: usize, height: usize) -> anyhow::Result<Option<Vec<u64>>> {
    let Some(path) = &item.mask else {
        return Ok(if item.anomalous {
            None
        } else {
            Some(pack_mask(&vec![0; width * height]))
        });
    };
    let mask = image::open(path)
        .with_context(|| format!("cannot read mask {}", path.display()))?
        .to_luma8();
    if (mask.width() as usize, mask.height() as usize) != (width, height) {
        bail!(
            "mask {} is {}x{}, but its image {} is {width}x{height}; masks must match their images",
            path.display(),
            mask.width(),
            mask.height(),
            item.path.display()
        );
    }
    Ok(Some(pack_mask(mask.as_raw())))
}

pub fn run(args: EvalArgs) -> anyhow::Result<Outcome> {
    if !(args.fpr_limit > 0.0 && args.fpr_limit <= 1.0) {
        bail!("--fpr-limit {} must be in (0, 1]", args.fpr_limit);
    }
    let bundle = Bundle::open(&args.engine.model)?;
    let calibration = Calibration::load_for(&args.calibration, &bundle)?;
    let items = test_set(&args.dataset)?;
    let mut heatmaps = match &args.heatmaps {
        Some(dir) => Some(
            HeatmapSink::new(dir, true)
                .with_context(|| format!("cannot create {}", dir.display()))?,
        ),
        None => None,
    };
    let mut engine = Engine::new(&bundle, &args.engine.engine_options())?;
    let files: Vec<PathBuf> = items.iter().map(|i| i.path.clone()).collect();
    let bar = ProgressBar::new(files.len() as u64).with_style(
        ProgressStyle::with_template("eval [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let options = RunOptions {
        batch: usize::from(args.engine.batch),
        keep_images: heatmaps.is_some(),
    };
    let mut results = Vec::with_capacity(items.len());
    let mut failures = Vec::new();
    let mut mask_error = None;
    let mut combined = Vec::new();
    let mut index = 0;
    run_files(&mut engine, &files, options, |outcome| {
        let item = &items[index];
        index += 1;
        bar.inc(1);
        match outcome {
            ImageOutcome::Maps(maps) => {
                let judged = judge(&maps, &calibration, &mut combined, heatmaps.as_mut());
                let (w, h) = (maps.width as usize, maps.height as usize);
                match load_mask(item, w, h) {
                    Ok(mask) => results.push(EvalImage {
                        path: maps.path.clone(),
                        defect: item.defect.clone(),
                        anomalous: item.anomalous,
                        score: judged.score,
                        map: combined.clone(),
                        map_size: maps.map_size,
                        width: w,
                        height: h,
                        mask,
                        // Service time of this image (its batch's run included), without the
                        // time it waited in the decode queue.
                        latency_ms: maps.timings.decode_ms
                            + maps.timings.resize_ms
                            + maps.timings.inference_ms
                            + judged.maps_ms,
                    }),
                    Err(e) => {
                        mask_error.get_or_insert(e);
                    }
                }
            }
            ImageOutcome::Error { path, error } => {
                failures.push(format!("{}: {error}", path.display()))
            }
        }
    });
    bar.finish_and_clear();
    if let Some(e) = mask_error {
        return Err(e);
    }
    for f in &failures {
        eprintln!("efficientad: skipped {f}");
    }
    if results.is_empty() {
        bail!("no test image could be run");
    }
    let rep = report(
        &results,
        calibration.threshold,
        |s| calibration.is_anomalous(s),
        args.fpr_limit,
        DEFAULT_BUDGET,
    );
    if let Some(path) = &args.scores_out {
        write_scores(path, &results).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        let mut value = serde_json::to_value(&rep)?;
        value["model"] = bundle.dir.display().to_string().into();
        value["dataset"] = args.dataset.display().to_string().into();
        value["provider"] = engine.provider().to_string().into();
        value["failed_images"] = failures.len().into();
        println!("{value}");
    } else {
        print_table(&rep, &args, &bundle, &engine, failures.len());
    }
    Ok(if failures.is_empty() {
        Outcome::Success
    } else {
        Outcome::SomeErrors
    })
}

fn write_scores(path: &std::path::Path, results: &[EvalImage]) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(out, "path,label,defect_type,score")?;
    for r in results {
        let p = r.path.display().to_string().replace('"', "\"\"");
        writeln!(
            out,
            "\"{p}\",{},{},{}",
            u8::from(r.anomalous),
            r.defect,
            r.score
        )?;
    }
    out.flush()
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

fn row(name: &str, g: &GroupMetrics) {
    println!(
        "  {name:<14} {:>6} {:>11} {:>11} {:>11}",
        g.images,
        fmt(g.image_auroc),
        fmt(g.pixel_auroc),
        fmt(g.au_pro)
    );
}

fn print_table(rep: &EvalReport, args: &EvalArgs, bundle: &Bundle, engine: &Engine, failed: usize) {
    let t = &rep.at_threshold;
    println!(
        "model {} on {}, dataset {} ({} good, {} defective test images)",
        bundle.dir.display(),
        engine.provider(),
        args.dataset.display(),
        t.good_images,
        t.defective_images
    );
    println!(
        "  {:<14} {:>6} {:>11} {:>11} {:>11}",
        "defect", "images", "image AUROC", "pixel AUROC", "AU-PRO"
    );
    for (name, g) in &rep.per_defect {
        row(name, g);
    }
    row("overall", &rep.overall);
    println!(
        "  (each defect row: that type and all good images; AU-PRO up to FPR {})",
        rep.fpr_limit
    );
    println!(
        "at threshold {:.5}: accuracy {:.4}, false rejects {}/{}, missed defects {}/{}",
        t.threshold,
        t.accuracy,
        t.false_rejects,
        t.good_images,
        t.missed_defects,
        t.defective_images
    );
    println!(
        "latency per image: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        rep.latency.p50_ms, rep.latency.p99_ms, rep.latency.max_ms
    );
    if rep.without_mask > 0 {
        println!(
            "{} defect images have no mask: counted for image AUROC only",
            rep.without_mask
        );
    }
    if failed > 0 {
        println!("{failed} images could not be run (see stderr)");
    }
}
