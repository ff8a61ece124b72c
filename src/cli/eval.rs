//! `efficientad eval`: run a model over an MVTec-layout test split and report image AUROC,
//! pixel AUROC, AU-PRO (per defect type and overall), verdict counts and latency.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use efficientad::judge::calibration::Calibration;
use efficientad::judge::inspect::HeatmapSink;
use efficientad::model::bundle::Bundle;
use efficientad::model::engine::Engine;
use efficientad::offline::batch::test_split::{TestRun, run_test_split};
use efficientad::offline::dataset::test_set;
use efficientad::offline::evaluation::{EvalImage, EvalReport, GroupMetrics, report};
use efficientad::offline::metrics::{DEFAULT_BUDGET, DEFAULT_FPR_LIMIT};
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

pub fn run(args: EvalArgs) -> anyhow::Result<Outcome> {
    if !(args.fpr_limit > 0.0 && args.fpr_limit <= 1.0) {
        bail!("--fpr-limit {} must be in (0, 1]", args.fpr_limit);
    }
    let bundle = Bundle::open(&args.engine.model)?;
    let calibration = Calibration::load_for(&args.calibration, &bundle)?;
    let items = test_set(&args.dataset)?;
    let mut heatmaps = HeatmapSink::optional(
        args.heatmaps.as_deref(),
        true,
        efficientad::judge::inspect::HeatmapLimits::default(),
    )?;
    let mut engine = Engine::new(&bundle, &args.engine.engine_options())?;
    let bar = ProgressBar::new(items.len() as u64).with_style(
        ProgressStyle::with_template("eval [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let TestRun {
        images: results,
        failures,
    } = run_test_split(
        &mut engine,
        &calibration,
        &items,
        usize::from(args.engine.batch),
        heatmaps.as_mut(),
        &mut || bar.inc(1),
    )?;
    bar.finish_and_clear();
    for f in &failures {
        efficientad::log_line!("efficientad: skipped {f}");
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
        value["region"] = serde_json::to_value(&calibration.region)?;
        println!("{value}");
    } else {
        print_table(&rep, &args, &bundle, &engine, failures.len());
        if !calibration.region.is_whole_image() {
            println!(
                "inspection region (calibration): {}; image metrics and verdicts use it, pixel metrics cover the whole image",
                describe_region(&calibration.region)
            );
        }
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
    if !rep.by_prefix.is_empty() {
        println!(
            "image AUROC by file-name prefix (the part before the first `_`, e.g. an exposure):"
        );
        for g in &rep.by_prefix {
            println!(
                "  {:<14} {:.4} ({} good, {} defective)",
                g.prefix, g.image_auroc, g.good, g.defective
            );
        }
    }
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

fn describe_region(region: &efficientad::judge::region::RegionRecord) -> String {
    let mut parts = Vec::new();
    if region.ignore_border_px > 0 {
        parts.push(format!("{} px border ignored", region.ignore_border_px));
    }
    if let Some(roi) = &region.roi {
        parts.push(format!("ROI mask {}", roi.path));
    }
    parts.join(", ")
}
