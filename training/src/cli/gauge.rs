//! `efficientad-train gauge`: how well a teacher's features, or a backbone's distillation
//! target, rank a dataset's test images by nearest-neighbour distance to the good training
//! images — minutes per candidate instead of hours of student training.

use std::path::PathBuf;

use anyhow::bail;
use clap::Args;
use efficientad_training::tools::gauge::features::{BundleSource, TargetSource, TeacherSource};
use efficientad_training::tools::gauge::{
    FeatureSource, GaugeConfig, GaugeResult, Progress, gauge,
};
use efficientad_training::train::distill::{BACKBONE_SIZE, TargetOptions};

#[derive(Args)]
pub struct GaugeArgs {
    /// What to gauge: `teacher:FILE.bpk` (a teacher checkpoint, its output without padding as
    /// the student sees it), `bundle:DIR` (the teacher inside a model bundle, as deployed) or
    /// `target:BACKBONE.onnx` (the distillation target that `distill-teacher` would build from
    /// that backbone with the same target options).
    #[arg(long, value_name = "teacher:FILE|bundle:DIR|target:FILE")]
    pub features: String,
    /// MVTec-layout dataset: the memory comes from train/good, the scores from test/.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Memory vectors drawn at random from the training images' feature cells.
    #[arg(long, default_value_t = 10_000)]
    pub memory: usize,
    /// Seed of the memory draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Cells left out at each edge of the feature grid for the second image score.
    #[arg(long, default_value_t = 2)]
    pub ring: usize,
    /// With target: normalize each image's brightness and contrast before the backbone
    /// (distill-teacher's --normalize-exposure).
    #[arg(long)]
    pub normalize_exposure: bool,
    /// With target: backbone input side, a multiple of 32 (distill-teacher uses 512; other
    /// sizes are for comparing sources only).
    #[arg(long, default_value_t = BACKBONE_SIZE)]
    pub backbone_size: usize,
    /// Print the whole result as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
}

fn bar(len: u64) -> indicatif::ProgressBar {
    indicatif::ProgressBar::new(len).with_style(
        indicatif::ProgressStyle::with_template("gauge [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    )
}

pub fn run(args: GaugeArgs) -> anyhow::Result<()> {
    if args.memory == 0 {
        bail!("--memory must be at least 1");
    }
    if args.backbone_size == 0 || !args.backbone_size.is_multiple_of(32) {
        bail!(
            "--backbone-size {} is not a positive multiple of 32",
            args.backbone_size
        );
    }
    let progress = bar(0);
    let mut source: Box<dyn FeatureSource> = match args.features.split_once(':') {
        Some(("teacher", file)) => Box::new(TeacherSource::open(file.as_ref())?),
        Some(("bundle", dir)) => Box::new(BundleSource::open(dir.as_ref())?),
        Some(("target", file)) => Box::new(TargetSource::open(
            file.as_ref(),
            TargetOptions {
                size: args.backbone_size,
                normalize_exposure: args.normalize_exposure,
            },
        )?),
        _ => bail!(
            "--features {}: expected teacher:FILE.bpk, bundle:DIR or target:BACKBONE.onnx",
            args.features
        ),
    };
    let config = GaugeConfig {
        memory: args.memory,
        seed: args.seed,
        ring: args.ring,
    };
    let result = gauge(
        source.as_mut(),
        &args.dataset,
        &config,
        &mut |event| match event {
            Progress::Memory { done, total } => {
                progress.set_length(total as u64);
                progress.set_position(done as u64);
                progress.set_message("memory from train/good");
            }
            Progress::Test { done, total } => {
                progress.set_length(total as u64);
                progress.set_position(done as u64);
                progress.set_message("scoring test/");
            }
            Progress::Skipped(m) => progress.suspend(|| eprintln!("efficientad-train: {m}")),
        },
    )?;
    progress.finish_and_clear();
    if args.json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        print!("{}", summary(&result));
    }
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.4}"))
}

/// The result as a few lines of text.
fn summary(r: &GaugeResult) -> String {
    let mut out = format!(
        "features: {}\n  grid {}x{}, {} dimensions; memory {} vectors from {} training images; {} test images\n",
        r.features, r.grid, r.grid, r.dim, r.memory, r.train_images, r.test_images
    );
    out += &format!(
        "  image AUROC {} (ring of {} cells left out: {}), pixel AUROC {}, AU-PRO {}\n",
        fmt(r.image_auroc),
        r.ring,
        fmt(r.image_auroc_inner),
        fmt(r.report.overall.pixel_auroc),
        fmt(r.report.overall.au_pro)
    );
    for (defect, m) in &r.report.per_defect {
        out += &format!(
            "  {defect:<12} image AUROC {}  pixel AUROC {}  AU-PRO {}\n",
            fmt(m.image_auroc),
            fmt(m.pixel_auroc),
            fmt(m.au_pro)
        );
    }
    if !r.image_auroc_by_prefix.is_empty() {
        let groups: Vec<String> = r
            .image_auroc_by_prefix
            .iter()
            .map(|g| {
                format!(
                    "{} {:.3} ({} good, {} defective)",
                    g.prefix, g.image_auroc, g.good, g.defective
                )
            })
            .collect();
        out += &format!(
            "  image AUROC by file-name prefix:\n    {}\n",
            groups.join("\n    ")
        );
    }
    out += &format!("  took {:.0} s\n", r.seconds);
    out
}
