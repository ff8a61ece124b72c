//! `efficientad-train bench`: the time of one real training step, in Burn and — when `python3`
//! can import torch — in PyTorch on the same CPU, in the same invocation.
//!
//! Burn's side runs the very functions `fit` and `distill-teacher` run ([`train::step`],
//! [`distill::distill_step`]) on real images, with freshly initialized networks: the time of a
//! step does not depend on what the weights have learnt. The first step of each is a warm-up
//! (allocations, thread start-up, caches) and is not counted; the median of the rest is.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use burn::module::Module;

use crate::backend::Backend;
use crate::data::{self, Rng};
use crate::model::{EfficientAd, IMAGE_SIZE, PdnConfig, TEACHER_CHANNELS, Variant, init_conv};
use crate::train::distill::{self, Backbone, TargetStats};
use crate::train::{self, Optimizers, StepData};

/// Images loaded for the `fit` step (the step reads one training and one penalty image).
const FIT_IMAGES: usize = 8;

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    pub variant: Variant,
    /// Timed steps of each kind (after one warm-up step).
    pub steps: usize,
    /// An MVTec-layout dataset (its train/good images feed the `fit` step).
    pub dataset: PathBuf,
    /// Natural images: penalty images of `fit` and distillation images.
    pub natural_images: PathBuf,
    /// The distillation backbone (ONNX).
    pub backbone: PathBuf,
    /// Images per distillation step.
    pub distill_batch: usize,
    pub backend: Backend,
    /// With `backend` wgpu: accept a software Vulkan adapter.
    pub allow_cpu_adapter: bool,
    /// Run the PyTorch reference scripts (when python3 can import torch).
    pub torch: bool,
    /// Folder of the PyTorch scripts (`torch_step.py`, `torch_distill.py`).
    pub scripts: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Distill(#[from] distill::DistillError),
    #[error("{0}")]
    Other(String),
}

/// Seconds per step: every timed step and their median.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Timing {
    pub median_s: f64,
    pub steps_s: Vec<f64>,
}

impl Timing {
    fn from(steps: Vec<f64>) -> Self {
        let mut sorted = steps.clone();
        sorted.sort_by(f64::total_cmp);
        let median_s = if sorted.is_empty() {
            f64::NAN
        } else if sorted.len() % 2 == 1 {
            sorted[sorted.len() / 2]
        } else {
            0.5 * (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2])
        };
        Self {
            median_s,
            steps_s: steps,
        }
    }
}

/// The PyTorch side of one comparison: its median, or why it did not run.
#[derive(Clone, Debug)]
pub enum Reference {
    Measured { median_s: f64, version: String },
    Unavailable(String),
}

/// Times `config.steps` real `fit` steps after one warm-up.
pub fn bench_fit(
    config: &BenchConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<Timing, BenchError> {
    let plain = config
        .backend
        .device(config.allow_cpu_adapter)
        .map_err(BenchError::Other)?;
    let device = plain.clone().autodiff();
    let (train_files, _, _) = data::split(&config.dataset)?;
    let penalty_files = data::folder_files(&config.natural_images)?;
    let take = |files: &[PathBuf]| files.iter().take(FIT_IMAGES).cloned().collect::<Vec<_>>();
    let train_set = data::load_images(&take(&train_files), IMAGE_SIZE, None, || {});
    let penalty_set = data::load_images(
        &take(&penalty_files),
        2 * IMAGE_SIZE,
        Some(IMAGE_SIZE),
        || {},
    );
    for (set, dir) in [
        (&train_set, &config.dataset),
        (&penalty_set, &config.natural_images),
    ] {
        if set.pixels.is_empty() {
            return Err(data::DataError::Empty {
                path: dir.clone(),
                skipped: set.skipped,
            }
            .into());
        }
    }
    let mut rng = Rng::new(0);
    let teacher_config = PdnConfig::new(config.variant, TEACHER_CHANNELS);
    let mut teacher = teacher_config.init(&plain);
    for conv in teacher.convs_mut() {
        init_conv(conv, &mut rng, &plain);
    }
    progress("fit: teacher outputs of the training images");
    let step_data = StepData::new(
        train_set.pixels,
        penalty_set.pixels,
        train::Teacher::Pdn(teacher.clone()),
        false,
        &plain,
        &mut |_, _| {},
    )
    .map_err(|e| BenchError::Other(e.to_string()))?;
    let mut model = EfficientAd::with_teacher(teacher.fork(&device), &teacher_config, &device);
    model.init_weights(&mut rng, false, &device);
    let mut optimizers = Optimizers::new();
    let mut times = Vec::with_capacity(config.steps);
    for i in 0..=config.steps {
        let t0 = Instant::now();
        let index = i % step_data.train.len();
        let (stepped, losses) = train::step(
            model,
            &mut optimizers,
            &step_data,
            index,
            &mut rng,
            train::LEARNING_RATE,
            (&plain, &device),
        )
        .map_err(|e| BenchError::Other(e.to_string()))?;
        model = stepped;
        let seconds = t0.elapsed().as_secs_f64();
        if !losses.total.is_finite() {
            return Err(BenchError::Other(format!(
                "fit step {i} gave a non-finite loss {losses:?}"
            )));
        }
        if i > 0 {
            times.push(seconds);
        }
        progress(&format!(
            "fit step {i}/{}{}: {seconds:.3} s",
            config.steps,
            if i == 0 { " (warm-up)" } else { "" }
        ));
    }
    Ok(Timing::from(times))
}

/// Times `config.steps` real distillation steps (batch `config.distill_batch`, image decoding and
/// backbone targets included) after one warm-up.
pub fn bench_distill(
    config: &BenchConfig,
    progress: &mut dyn FnMut(&str),
) -> Result<Timing, BenchError> {
    let device = config
        .backend
        .device(config.allow_cpu_adapter)
        .map_err(BenchError::Other)?
        .autodiff();
    let pool = distill::ImagePool::open(&[distill::ImageFolder {
        dir: config.natural_images.clone(),
        weight: 1.0,
    }])?;
    let mut backbone = Backbone::open(&config.backbone)?;
    let mut rng = Rng::new(0);
    let mut pdn = PdnConfig::new(config.variant, TEACHER_CHANNELS)
        .with_padding(true)
        .init(&device);
    for conv in pdn.convs_mut() {
        init_conv(conv, &mut rng, &device);
    }
    // Identity statistics: the values of the targets do not change the time of a step.
    let targets = TargetStats {
        mean: vec![0.0; TEACHER_CHANNELS],
        std: vec![1.0; TEACHER_CHANNELS],
    };
    let mut optim = train::adam();
    let mut times = Vec::with_capacity(config.steps);
    for i in 0..=config.steps {
        let t0 = Instant::now();
        let (stepped, loss) = distill::distill_step(
            pdn,
            &mut optim,
            &mut backbone,
            &pool,
            &targets,
            &distill::TargetOptions::default(),
            distill::DISTILL_LEARNING_RATE,
            config.distill_batch,
            &mut rng,
            &device,
            &mut |_| {},
        )?;
        pdn = stepped;
        let seconds = t0.elapsed().as_secs_f64();
        if !loss.is_finite() {
            return Err(BenchError::Other(format!(
                "distillation step {i} gave a non-finite loss {loss}"
            )));
        }
        if i > 0 {
            times.push(seconds);
        }
        progress(&format!(
            "distill step {i}/{} (batch {}){}: {seconds:.3} s",
            config.steps,
            config.distill_batch,
            if i == 0 { " (warm-up)" } else { "" }
        ));
    }
    Ok(Timing::from(times))
}

/// Whether `python3` can import torch; the reason when it cannot.
pub fn torch_available() -> Result<String, String> {
    let out = Command::new("python3")
        .args(["-c", "import torch; print(torch.__version__)"])
        .output()
        .map_err(|e| format!("python3 cannot be started ({e})"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err("python3 cannot import torch (pip install torch to compare)".into())
    }
}

/// Runs one reference script; its last stdout line is `{"median_s": …, "torch": "…"}`.
pub fn run_reference(script: &Path, args: &[String]) -> Reference {
    if !script.is_file() {
        return Reference::Unavailable(format!("{} is missing", script.display()));
    }
    let out = match Command::new("python3").arg(script).args(args).output() {
        Ok(out) => out,
        Err(e) => return Reference::Unavailable(format!("python3 cannot be started ({e})")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'));
    let parsed = last.and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok());
    match parsed {
        Some(v) if out.status.success() && v["median_s"].as_f64().is_some() => {
            Reference::Measured {
                median_s: v["median_s"].as_f64().unwrap_or(f64::NAN),
                version: v["torch"].as_str().unwrap_or("?").to_owned(),
            }
        }
        _ => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
            Reference::Unavailable(format!(
                "{} failed ({}): {}",
                script.display(),
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            ))
        }
    }
}
