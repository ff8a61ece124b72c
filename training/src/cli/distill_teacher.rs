//! `efficientad-train distill-teacher`: a PDN teacher distilled from an ONNX backbone (input
//! `image` [N,3,H,W] in [0,1]; a finer and a coarser feature output) on natural images, with
//! a progress bar (or a line every 30 s without a terminal) and optional snapshots.

use std::path::{Path, PathBuf};

use anyhow::bail;
use clap::Args;
use efficientad_training::backend::Backend;
use efficientad_training::model::Variant;
use efficientad_training::train::checkpoint;
use efficientad_training::train::distill::{
    DISTILL_LEARNING_RATE, DistillConfig, Event as DistillEvent, ImageFolder, LrSchedule,
    TargetOptions, distill,
};

use super::parse_variant;

#[derive(Args)]
pub struct DistillArgs {
    /// The backbone ONNX file, e.g. efficientnet_lite0_features.onnx.
    #[arg(long)]
    pub backbone: PathBuf,
    /// Folder of natural images (e.g. ImageNet samples); repeat it to mix folders, each as
    /// DIR or DIR=WEIGHT (its share of the draws; default 1), e.g. the product's own
    /// train/good beside ImageNet.
    #[arg(long, required = true, value_name = "DIR[=WEIGHT]", value_parser = parse_folder)]
    pub images: Vec<ImageFolder>,
    #[arg(long, value_parser = parse_variant, default_value = "s")]
    pub variant: Variant,
    /// Optimizer steps (the paper: 60000).
    #[arg(long, default_value_t = 60_000)]
    pub steps: usize,
    /// Images per step (the paper: 16).
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images used for the target mean and std (a random sample of all folders, drawn with
    /// --seed).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub stats_images: u32,
    /// Adam's learning rate (the paper: 1e-4 for 60,000 steps).
    #[arg(long, default_value_t = DISTILL_LEARNING_RATE)]
    pub lr: f64,
    /// How the rate changes over --steps: constant (the paper) or cosine (down to zero at the
    /// last step; for short budgets with a larger --lr).
    #[arg(long, value_enum, default_value_t = LrSchedule::Constant)]
    pub lr_schedule: LrSchedule,
    /// Folder of the run's resumable state (default: next to --out, NAME.run/).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Save the resumable state every N steps (also at the end and on Ctrl-C).
    #[arg(long, default_value_t = 50)]
    pub checkpoint_every: usize,
    /// Continue the run saved in --work up to --steps, bit-identical to an uninterrupted run
    /// (the other options must be those of the first command).
    #[arg(long)]
    pub resume: bool,
    /// Also save the teacher every N steps, next to --out as NAME.stepN.bpk (teachers of
    /// several distillation budgets from one run).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Compute device: cpu, or wgpu (a GPU; needs a build with --features wgpu).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub device: Backend,
    /// With --device wgpu: accept a software Vulkan adapter (Mesa's lavapipe), slower than
    /// --device cpu; for tests of the GPU code path on machines without a GPU.
    #[arg(long)]
    pub allow_cpu_adapter: bool,
    /// Divide the teacher's hidden widths by N (its 384 outputs stay): a tiny network of the
    /// same structure, for tests on slow devices (a software Vulkan driver).
    #[arg(long, hide = true, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub width_divisor: u16,
    /// Normalize each image's brightness and contrast (one gain and offset per image) before
    /// the backbone and the teacher see it; a teacher distilled so must be used with models
    /// trained the same way.
    #[arg(long)]
    pub normalize_exposure: bool,
    /// Teacher checkpoint to write.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: DistillArgs) -> anyhow::Result<()> {
    let DistillArgs {
        backbone,
        images,
        variant,
        steps,
        batch,
        seed,
        stats_images,
        save_every,
        device: backend,
        allow_cpu_adapter,
        width_divisor,
        normalize_exposure,
        lr,
        lr_schedule,
        work,
        checkpoint_every,
        resume,
        out,
    } = args;
    if batch == 0 {
        bail!("--batch must be at least 1");
    }
    if !(lr.is_finite() && lr > 0.0) {
        bail!("--lr {lr} is not a positive number");
    }
    let work = work.unwrap_or_else(|| work_dir(&out));
    let config = DistillConfig {
        backbone,
        images,
        variant,
        steps,
        batch,
        seed,
        stats_images: stats_images as usize,
        backend,
        allow_cpu_adapter,
        save_every,
        width_divisor: usize::from(width_divisor),
        target: TargetOptions {
            normalize_exposure,
            ..TargetOptions::default()
        },
        lr,
        lr_schedule,
        work,
        checkpoint_every,
    };
    let stop = efficientad_training::train::stop_flag();
    let bar = indicatif::ProgressBar::new(steps as u64).with_style(
        indicatif::ProgressStyle::with_template("distill [{bar:30}] {pos}/{len} {msg} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_line = std::time::Instant::now();
    let (teacher, info) = distill(&config, resume, stop, &mut |event| match event {
        DistillEvent::Stats { done, total } => {
            bar.set_message(format!("target statistics {done}/{total}"))
        }
        DistillEvent::Step {
            step,
            loss,
            images_per_second,
        } => {
            bar.set_position(step as u64);
            bar.set_message(format!("loss {loss:.4} {images_per_second:.2} img/s"));
            if plain && (last_line.elapsed().as_secs() >= 30 || step == 1) {
                last_line = std::time::Instant::now();
                eprintln!(
                    "efficientad-train: distill step {step}/{steps} loss {loss:.4} {images_per_second:.2} img/s"
                );
            }
        }
        DistillEvent::Message(m) => bar.suspend(|| eprintln!("efficientad-train: {m}")),
        DistillEvent::Snapshot {
            step,
            teacher,
            info,
        } => {
            let path = snapshot_path(&out, step);
            let saved = checkpoint::save_teacher(teacher, info, &path);
            bar.suspend(|| match saved {
                Ok(()) => eprintln!(
                    "efficientad-train: saved the teacher after {step} steps to {}",
                    path.display()
                ),
                // A snapshot is extra; the run goes on to its final teacher.
                Err(e) => eprintln!(
                    "efficientad-train: warning: could not save {}: {e}",
                    path.display()
                ),
            });
        }
    })?;
    bar.finish_and_clear();
    checkpoint::save_teacher(&teacher, &info, &out)?;
    eprintln!(
        "efficientad-train: wrote distilled PDN-{variant} teacher to {}",
        out.display()
    );
    Ok(())
}

/// `DIR` or `DIR=WEIGHT`.
fn parse_folder(text: &str) -> Result<ImageFolder, String> {
    let (dir, weight) = match text.rsplit_once('=') {
        Some((dir, w)) => (
            dir,
            w.parse::<f64>()
                .ok()
                .filter(|w| w.is_finite() && *w > 0.0)
                .ok_or_else(|| format!("`{w}` is not a positive weight (DIR=WEIGHT)"))?,
        ),
        None => (text, 1.0),
    };
    Ok(ImageFolder {
        dir: PathBuf::from(dir),
        weight,
    })
}

/// `runs/t/teacher.bpk` → `runs/t/teacher.run/`.
fn work_dir(out: &Path) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "teacher".into());
    out.with_file_name(format!("{stem}.run"))
}

/// `runs/t/teacher.bpk` → `runs/t/teacher.step150.bpk`.
fn snapshot_path(out: &Path, step: usize) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "teacher".into());
    out.with_file_name(format!("{stem}.step{step}.bpk"))
}
