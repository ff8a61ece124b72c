//! Teacher distillation (SPEC.md, Teacher): a PDN with padding on learns to reproduce the
//! normalized patch features of a frozen ImageNet backbone run through ONNX Runtime. The
//! targets are made in [`target`]; this file runs the steps.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};

mod target;

pub use target::{Backbone, adaptive_pool, patch_target, unfold_pool};

use crate::checkpoint::{self, CheckpointInfo, Kind, TeacherProvenance};
use crate::data::{self, Rng};
use crate::model::{IMAGE_SIZE, Pdn, PdnConfig, TEACHER_CHANNELS, Variant, imagenet_normalize};

/// Backbone input side (the paper: 512, giving 64x64 and 32x32 feature grids).
pub const BACKBONE_SIZE: usize = 512;
/// Per-layer pooled dimension.
pub const POOL_DIM: usize = 1024;
/// Probability that both views of a distillation image turn grayscale.
pub const GRAY_P: f64 = 0.1;

#[derive(Debug, thiserror::Error)]
pub enum DistillError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("backbone {path}: {reason}")]
    Backbone { path: PathBuf, reason: String },
    #[error("{0}")]
    Other(String),
}

/// Settings of a distillation run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DistillConfig {
    pub backbone: PathBuf,
    pub images: PathBuf,
    pub variant: Variant,
    pub steps: usize,
    pub batch: usize,
    pub seed: u64,
    /// Images used for the target mean/std: a seeded random sample of the folder.
    pub stats_images: usize,
    pub backend: crate::backend::Backend,
    /// Also save the teacher every this many steps (`<out>.step<N>.bpk`), so that one run
    /// yields teachers of several distillation budgets; 0 saves only at the end.
    pub save_every: usize,
    /// With `backend` wgpu: accept a software Vulkan adapter.
    pub allow_cpu_adapter: bool,
    /// Divides the teacher's hidden widths (1: the paper's network; larger: tests).
    pub width_divisor: usize,
}

/// Seed offset of the statistics sample: independent of the draws of the steps.
const STATS_SEED: u64 = 0x5747_5354;

/// The images whose targets give the normalization statistics: `count` files drawn without
/// replacement with `seed`. A random sample, not the first files: a folder sorted by class
/// would otherwise give statistics of a few classes only.
pub fn stats_sample(files: &[PathBuf], count: usize, seed: u64) -> Vec<PathBuf> {
    let mut order: Vec<&PathBuf> = files.iter().collect();
    Rng::new(seed ^ STATS_SEED).shuffle(&mut order);
    order.into_iter().take(count.max(1)).cloned().collect()
}

pub enum Event<'a> {
    Stats {
        done: usize,
        total: usize,
    },
    Step {
        step: usize,
        loss: f64,
        images_per_second: f64,
    },
    Message(&'a str),
    /// The teacher as it is after `step` steps, for a snapshot.
    Snapshot {
        step: usize,
        teacher: &'a Pdn,
        info: &'a CheckpointInfo,
    },
}

/// One image in both views: backbone input (512²) and PDN input (256²), CHW in [0, 1].
fn views(path: &Path, gray: bool) -> Result<(Vec<f32>, Vec<f32>), String> {
    let img = efficientad::preprocess::decode_file(path).map_err(|e| e.to_string())?;
    let mut big = efficientad::preprocess::Preprocessor::new(BACKBONE_SIZE);
    let mut small = efficientad::preprocess::Preprocessor::new(IMAGE_SIZE);
    let mut b = data::to_chw(
        &big.prepare_vec(img.clone()).map_err(|e| e.to_string())?,
        BACKBONE_SIZE,
    );
    let mut s = data::to_chw(
        &small.prepare_vec(img).map_err(|e| e.to_string())?,
        IMAGE_SIZE,
    );
    if gray {
        data::grayscale(&mut b);
        data::grayscale(&mut s);
    }
    Ok((b, s))
}

/// Per-channel mean and std of the distillation targets (SPEC: target normalization).
pub struct TargetStats {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// Learning rate of distillation (SPEC).
pub const DISTILL_LEARNING_RATE: f64 = 1e-4;

/// One distillation step: draws `batch` readable images from `files` with `rng` (each turned
/// grayscale with probability [`GRAY_P`] in both views), computes their backbone targets,
/// normalizes them, and takes one Adam step of the MSE. Unreadable images are reported through
/// `skipped` and replaced by further draws. Returns the stepped PDN and the loss.
#[allow(clippy::too_many_arguments)]
pub fn distill_step(
    pdn: Pdn,
    optim: &mut ModuleOptimizer,
    backbone: &mut Backbone,
    files: &[PathBuf],
    targets: &TargetStats,
    batch: usize,
    rng: &mut Rng,
    device: &Device,
    skipped: &mut dyn FnMut(&str),
) -> Result<(Pdn, f64), DistillError> {
    let grid = BACKBONE_SIZE / 8;
    let mut big = Vec::with_capacity(batch * 3 * BACKBONE_SIZE * BACKBONE_SIZE);
    let mut small = Vec::with_capacity(batch * 3 * IMAGE_SIZE * IMAGE_SIZE);
    let mut n = 0;
    let mut failures = 0;
    while n < batch {
        let f = &files[rng.below(files.len())];
        let gray = rng.uniform() < GRAY_P;
        match views(f, gray) {
            Ok((b, s)) => {
                big.extend(b);
                small.extend(s);
                n += 1;
            }
            Err(e) => {
                skipped(&format!("skipping {}: {e}", f.display()));
                failures += 1;
                // A folder of mostly broken files must not spin forever.
                if failures > 100 * batch {
                    return Err(DistillError::Other(format!(
                        "more than {} unreadable images drawn in one step; check the image folder",
                        100 * batch
                    )));
                }
            }
        }
    }
    let channels = backbone.channels();
    let mut target = Vec::with_capacity(n * channels * grid * grid);
    for t in backbone.targets(&big, n)? {
        let plane = t.len() / channels;
        target.extend(
            t.iter()
                .enumerate()
                .map(|(i, v)| (v - targets.mean[i / plane]) / targets.std[i / plane]),
        );
    }
    let target = Tensor::<4>::from_data(TensorData::new(target, [n, channels, grid, grid]), device);
    let x = imagenet_normalize(Tensor::from_data(
        TensorData::new(small, [n, 3, IMAGE_SIZE, IMAGE_SIZE]),
        device,
    ));
    let loss = crate::loss::mse(pdn.forward(x), target);
    let value = crate::train::scalar(&loss);
    let mut grads = loss.backward();
    let g = GradientsParams::from_module(&mut grads, &pdn);
    Ok((optim.step(DISTILL_LEARNING_RATE, pdn, g), value))
}

/// Distills a teacher; returns it (padding off) with its checkpoint description.
pub fn distill(
    config: &DistillConfig,
    stop: Arc<AtomicBool>,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<(Pdn, CheckpointInfo), DistillError> {
    let files = data::folder_files(&config.images)?;
    // A narrowed teacher keeps the checkpoint convention (outputs = 384 / divisor), so its
    // targets are pooled to that many channels.
    let divisor = config.width_divisor.max(1);
    let channels = TEACHER_CHANNELS / divisor;
    let mut backbone = Backbone::open(&config.backbone)?.with_channels(channels);
    let device = config
        .backend
        .device(config.allow_cpu_adapter)
        .map_err(DistillError::Other)?
        .autodiff();
    let mut rng = Rng::new(config.seed);
    let mut pdn = PdnConfig::new(config.variant, channels)
        .with_padding(true)
        .with_width_divisor(divisor)
        .init(&device);
    for conv in pdn.convs_mut() {
        crate::model::init_conv(conv, &mut rng, &device);
    }

    // Wall time of the whole distillation, target statistics included.
    let started = Instant::now();
    let stats_files = stats_sample(&files, config.stats_images, config.seed);
    let mut sum = vec![0f64; channels];
    let mut sq = vec![0f64; channels];
    let mut count = 0f64;
    for (i, f) in stats_files.iter().enumerate() {
        match views(f, false) {
            Ok((big, _)) => {
                let t = backbone.targets(&big, 1)?.remove(0);
                let plane = t.len() / channels;
                for c in 0..channels {
                    for &v in &t[c * plane..(c + 1) * plane] {
                        sum[c] += f64::from(v);
                        sq[c] += f64::from(v) * f64::from(v);
                    }
                }
                count += plane as f64;
            }
            Err(e) => events(Event::Message(&format!("skipping {}: {e}", f.display()))),
        }
        events(Event::Stats {
            done: i + 1,
            total: stats_files.len(),
        });
    }
    if count == 0.0 {
        return Err(DistillError::Other(format!(
            "no readable image in {}",
            config.images.display()
        )));
    }
    let mean: Vec<f32> = sum.iter().map(|s| (s / count) as f32).collect();
    let std: Vec<f32> = sq
        .iter()
        .zip(&sum)
        .map(|(q, s)| ((q / count - (s / count).powi(2)).max(0.0).sqrt() as f32).max(1e-6))
        .collect();

    let mut optim = crate::train::adam();
    let targets = TargetStats { mean, std };
    let mut step = 0;
    while step < config.steps {
        if stop.load(Ordering::SeqCst) {
            events(Event::Message(&format!(
                "interrupted at step {step}; saving the teacher as it is"
            )));
            break;
        }
        let t0 = Instant::now();
        let (stepped, value) = distill_step(
            pdn,
            &mut optim,
            &mut backbone,
            &files,
            &targets,
            config.batch,
            &mut rng,
            &device,
            &mut |m| events(Event::Message(m)),
        )?;
        pdn = stepped;
        step += 1;
        events(Event::Step {
            step,
            loss: value,
            images_per_second: config.batch as f64 / t0.elapsed().as_secs_f64(),
        });
        if config.save_every > 0 && step % config.save_every == 0 && step < config.steps {
            let (teacher, info) = finished(&pdn, config, step, started.elapsed().as_secs_f64());
            events(Event::Snapshot {
                step,
                teacher: &teacher,
                info: &info,
            });
        }
    }
    Ok(finished(
        &pdn,
        config,
        step,
        started.elapsed().as_secs_f64(),
    ))
}

/// The distilled teacher after `step` steps (padding off, as the student trains against it)
/// and what it saw.
fn finished(
    pdn: &Pdn,
    config: &DistillConfig,
    step: usize,
    wall_seconds: f64,
) -> (Pdn, CheckpointInfo) {
    let mut teacher = pdn.valid();
    teacher.set_padding(false);
    let info = CheckpointInfo {
        kind: Kind::Teacher,
        variant: config.variant,
        width_divisor: config.width_divisor.max(1),
        teacher: TeacherProvenance::Distilled {
            backbone: config.backbone.display().to_string(),
            backbone_sha256: efficientad::bundle::file_sha256(&config.backbone).unwrap_or_default(),
            images: config.images.display().to_string(),
            steps: step,
        },
        training: serde_json::json!({
            "batch": config.batch,
            "seed": config.seed,
            "images_seen": step * config.batch,
            "stats_images": config.stats_images,
            "stats_sample": "seeded random sample of the image folder",
            "wall_seconds": wall_seconds,
            "command": std::env::args().collect::<Vec<_>>().join(" "),
        }),
    };
    (teacher, info)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder sorted by class: the statistics sample must reach across it, not take the head,
    /// and be the same for the same seed.
    #[test]
    fn stats_sample_is_seeded_and_spread_over_the_folder() {
        let files: Vec<PathBuf> = (0..1000)
            .map(|i| PathBuf::from(format!("{i:04}.jpg")))
            .collect();
        let a = stats_sample(&files, 100, 0);
        assert_eq!(a, stats_sample(&files, 100, 0));
        assert_ne!(a, stats_sample(&files, 100, 1));
        assert_eq!(a.len(), 100);
        let mut unique = a.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 100, "drawn without replacement");
        let index = |p: &PathBuf| -> usize { p.to_string_lossy()[..4].parse().expect("index") };
        // Every tenth of the folder is represented (a uniform draw misses one with p < 0.003).
        for decile in 0..10 {
            assert!(
                a.iter().any(|p| index(p) / 100 == decile),
                "no image from {}..{}",
                decile * 100,
                decile * 100 + 99
            );
        }
        assert_eq!(stats_sample(&files[..5], 100, 0).len(), 5);
    }
}
