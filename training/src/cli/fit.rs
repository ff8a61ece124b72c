//! `efficientad-train fit`: train student and autoencoder on the good images of an
//! MVTec-layout dataset, export the bundle to --out and calibrate it on validation/good (or
//! 10% of train held out) — with progress on stderr.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;
use efficientad::judge::calibration::DEFAULT_FALSE_REJECT_RATE;
use efficientad::model::bundle::Bundle;
use efficientad::model::engine::{Engine, EngineOptions, Provider};
use efficientad::offline::batch::calibrate::{ImageSet, Progress, calibrate_files};
use efficientad_training::backend::Backend;
use efficientad_training::export::export_bundle;
use efficientad_training::model::Variant;
use efficientad_training::model::target_teacher::target_path;
use efficientad_training::tools::quality::{QualityCheck, log_quality};
use efficientad_training::train::checkpoint;
use efficientad_training::train::{Event, FitConfig, stop_flag, train};
use indicatif::{ProgressBar, ProgressStyle};

use super::parse_variant;

#[derive(Args)]
pub struct FitArgs {
    /// Dataset folder: train/good (and validation/good) inside.
    #[arg(long)]
    pub dataset: PathBuf,
    /// Teacher checkpoint (from import-teacher or distill-teacher), or target:BACKBONE.onnx:
    /// no teacher network, the backbone's distillation target itself (at 256x256) is the
    /// teacher, and the exported graph contains the backbone.
    #[arg(long, value_name = "FILE.bpk|target:FILE.onnx")]
    pub teacher: PathBuf,
    /// Natural images for the penalty loss (e.g. ImageNet samples).
    #[arg(long)]
    pub penalty_images: PathBuf,
    /// PDN size; must match the teacher.
    #[arg(long, value_parser = parse_variant, default_value = "s")]
    pub variant: Variant,
    /// Training steps (the paper: 70000).
    #[arg(long, default_value_t = 70_000)]
    pub steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bundle folder to write, e.g. onnx/my-part.
    #[arg(long)]
    pub out: PathBuf,
    /// Working folder for checkpoints and the loss log (default runs/<name>).
    #[arg(long)]
    pub work: Option<PathBuf>,
    /// Calibration file to write (default calibration/<name>.json).
    #[arg(long)]
    pub calibration_out: Option<PathBuf>,
    /// Export the bundle without calibrating it (a box without ONNX Runtime >= 1.31, e.g. a
    /// GPU box that trains only); calibrate later with `efficientad calibrate`.
    #[arg(long, conflicts_with_all = ["calibration_out", "eval_every"])]
    pub skip_calibration: bool,
    /// Save a checkpoint every N steps (and always on Ctrl-C and at the end).
    #[arg(long, default_value_t = 1000)]
    pub checkpoint_every: usize,
    /// Continue the run from its last checkpoint in --work.
    #[arg(long)]
    pub resume: bool,
    /// Every N steps, export the model, calibrate it on the validation images and evaluate
    /// it on the dataset's test split (image AUROC, pixel AUROC, AU-PRO into the run's
    /// log.jsonl; draw them with `efficientad-train plot`). 0: never.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub eval_every: usize,
    /// Use at most N penalty images (quick runs).
    #[arg(long, hide = true)]
    pub penalty_limit: Option<usize>,
    /// Use at most N training images (quick runs).
    #[arg(long, hide = true)]
    pub train_limit: Option<usize>,
    /// Compute device: cpu, or wgpu (a GPU; needs a build with --features wgpu).
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    pub device: Backend,
    /// With --device wgpu: accept a software Vulkan adapter (Mesa's lavapipe), slower than
    /// --device cpu; for tests of the GPU code path on machines without a GPU.
    #[arg(long)]
    pub allow_cpu_adapter: bool,
    /// Normalize each image's brightness and contrast (one gain and offset per image) before
    /// the networks, in training and inside the exported graph (recorded in model.json; the
    /// runtime needs nothing else). For parts photographed at several exposures; use a
    /// teacher distilled with `distill-teacher --normalize-exposure`.
    #[arg(long)]
    pub normalize_exposure: bool,
}

pub fn run(args: FitArgs) -> anyhow::Result<()> {
    let FitArgs {
        dataset,
        teacher,
        penalty_images,
        variant,
        steps,
        seed,
        out,
        work,
        calibration_out,
        skip_calibration,
        checkpoint_every,
        resume,
        eval_every,
        penalty_limit,
        train_limit,
        device: backend,
        allow_cpu_adapter,
        normalize_exposure,
    } = args;
    if steps == 0 {
        bail!(
            "--steps 0 would export and calibrate an untrained student; give at least 1 (the paper trains 70000)"
        );
    }
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("--out must name a bundle folder, e.g. onnx/my-part")?;
    // A target teacher (`target:BACKBONE.onnx`) has no size: the student takes --variant's.
    let teacher_info = match target_path(&teacher) {
        Some(_) => None,
        None => Some(checkpoint::read_info(&teacher)?),
    };
    if let Some(teacher_info) = teacher_info.filter(|t| t.variant != variant) {
        bail!(
            "{} is a PDN-{} teacher, but --variant {variant} was given; train with --variant {} or use a PDN-{variant} teacher",
            teacher.display(),
            teacher_info.variant,
            teacher_info.variant
        );
    }
    let config = FitConfig {
        dataset,
        teacher,
        variant,
        penalty_images,
        steps,
        seed,
        work: work.unwrap_or_else(|| PathBuf::from("runs").join(&name)),
        out,
        checkpoint_every,
        penalty_limit,
        train_limit,
        backend,
        allow_cpu_adapter,
        eval_every,
        normalize_exposure,
    };
    let calibration_out = (!skip_calibration).then(|| {
        calibration_out.unwrap_or_else(|| PathBuf::from("calibration").join(format!("{name}.json")))
    });
    train_export_calibrate(&config, resume, calibration_out.as_deref())?;
    Ok(())
}

fn bar(len: u64, template: &str) -> ProgressBar {
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    )
}

/// Trains, exports the bundle and (given a path) calibrates it, with progress on stderr.
fn train_export_calibrate(
    config: &FitConfig,
    resume: bool,
    calibration_out: Option<&Path>,
) -> anyhow::Result<()> {
    let stop = stop_flag();
    let loading = bar(0, "{msg} [{bar:30}] {pos}/{len} eta {eta}");
    let steps = bar(
        config.steps as u64,
        "train [{bar:30}] {pos}/{len} {msg} eta {eta}",
    );
    steps.set_position(0);
    let mut started_steps = false;
    // Without a terminal the bars are hidden: print a progress line every 30 s instead.
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_line = std::time::Instant::now();
    // Found before training, so that a dataset without a test split fails now.
    let quality = if config.eval_every > 0 {
        Some(
            QualityCheck::new(&config.dataset, &config.work).with_context(|| {
                format!(
                    "--eval-every needs the test split of {}",
                    config.dataset.display()
                )
            })?,
        )
    } else {
        None
    };
    let log = config.work.join("log.jsonl");
    let trained = train(config, resume, stop, &mut |event| match event {
        Event::Message(m) => loading.suspend(|| eprintln!("efficientad-train: {m}")),
        Event::Loading { done, total, what } => {
            loading.set_length(total as u64);
            loading.set_message(what.to_string());
            loading.set_position(done as u64);
        }
        Event::Step {
            step,
            losses,
            images_per_second,
            ..
        } => {
            if !started_steps {
                loading.finish_and_clear();
                started_steps = true;
            }
            steps.set_position(step as u64);
            let message = format!(
                "loss {:.4} (hard {:.4} pen {:.4} ae {:.4} stae {:.4}) {:.2} img/s",
                losses.total,
                losses.hard,
                losses.penalty,
                losses.ae,
                losses.stae,
                images_per_second
            );
            if plain && (last_line.elapsed().as_secs() >= 30 || step == 1) {
                last_line = std::time::Instant::now();
                eprintln!("efficientad-train: step {step}/{} {message}", config.steps);
            }
            steps.set_message(message);
        }
        Event::Quality { step, model, info } => {
            let Some(check) = &quality else { return };
            let total = check.images();
            let mut done = 0;
            let measured = check.check(model, info, step, &mut || {
                done += 1;
                steps.set_message(format!("quality check {done}/{total}"));
            });
            let line = match measured {
                Ok(q) => {
                    let logged = log_quality(&log, step, &q)
                        .err()
                        .map(|e| format!(" (not logged: {e})"))
                        .unwrap_or_default();
                    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
                    format!(
                        "step {step}: image AUROC {} pixel AUROC {} AU-PRO {} accuracy {:.4} on {} test images ({:.0} s){logged}",
                        f(q.image_auroc),
                        f(q.pixel_auroc),
                        f(q.au_pro),
                        q.accuracy,
                        q.test_images,
                        q.seconds
                    )
                }
                // A failed check must not cost the training run.
                Err(e) => format!("warning: quality check at step {step} failed: {e:#}"),
            };
            steps.suspend(|| eprintln!("efficientad-train: {line}"));
        }
    })?;
    steps.finish_and_clear();
    if trained.interrupted {
        eprintln!(
            "efficientad-train: interrupted at step {}; checkpoint saved in {}; continue with the same command and --resume",
            trained.state.step,
            config.work.join("checkpoint").display()
        );
        std::process::exit(130);
    }
    let mut info = trained.info;
    info.training["command"] = std::env::args().collect::<Vec<_>>().join(" ").into();
    let written = export_bundle(&trained.model, &info, &config.out)?;
    eprintln!(
        "efficientad-train: exported {} after {} steps ({:.0} s, last loss {:.4})",
        config.out.display(),
        trained.state.step,
        trained.state.wall_seconds,
        trained.state.last_losses.total
    );
    let Some(calibration_out) = calibration_out else {
        eprintln!(
            "efficientad-train: not calibrated (--skip-calibration); run `efficientad calibrate --model {}` before use",
            config.out.display()
        );
        return Ok(());
    };
    let bundle = Bundle::open(&config.out)?;
    let options = EngineOptions {
        provider: Provider::Cpu,
        ..EngineOptions::default()
    };
    let mut engine = Engine::new(&bundle, &options)?;
    let normal = ImageSet {
        label: format!(
            "{} ({})",
            config.dataset.display(),
            trained.validation_label
        ),
        files: trained.validation,
    };
    let progress = bar(
        normal.files.len() as u64,
        "calibrate [{bar:30}] {pos}/{len} eta {eta}",
    );
    let calibration = calibrate_files(
        &mut engine,
        &bundle,
        &normal,
        None,
        DEFAULT_FALSE_REJECT_RATE,
        &efficientad::judge::region::Region::whole_image(),
        1,
        &mut |p| {
            progress.inc(1);
            if let Progress::Skipped(path, error) = p {
                progress.suspend(|| {
                    eprintln!("efficientad-train: skipping {}: {error}", path.display())
                });
            }
        },
    )?;
    progress.finish_and_clear();
    calibration
        .save(calibration_out)
        .with_context(|| format!("writing {}", calibration_out.display()))?;
    eprintln!(
        "efficientad-train: calibrated on {} validation images into {} (threshold {:.5}); model sha256 {}",
        calibration.validation.images,
        calibration_out.display(),
        calibration.threshold,
        written.model_sha256
    );
    Ok(())
}
