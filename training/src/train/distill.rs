//! Teacher distillation (docs/method.md, Teacher): a PDN with padding on learns to reproduce the
//! normalized patch features of a frozen ImageNet backbone run through ONNX Runtime. The
//! targets are made in [`target`], normalized with [`stats`]; the run's resumable state lives
//! in [`resume`]; this file runs the steps.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::{GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};

mod resume;
mod stats;
mod target;

pub use resume::DistillState;
pub use stats::{TargetStats, stats_sample, target_stats};
pub(crate) use target::upsample_positions;
pub use target::{Backbone, TargetOptions, adaptive_pool, patch_target, unfold_pool, views};

use crate::data::{self, Rng};
use crate::model::{IMAGE_SIZE, Pdn, PdnConfig, TEACHER_CHANNELS, Variant, imagenet_normalize};
use crate::train::checkpoint::{self, CheckpointInfo, Kind, TeacherProvenance};

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
    /// The backbone cannot be opened or run, or breaks the contract (docs/design.md):
    /// ONNX Runtime's error, or what is wrong with the graph, as the source.
    #[error("backbone {path}: {source}")]
    Backbone {
        path: PathBuf,
        source: efficientad::Cause,
    },
    #[error("resume: {0}")]
    Resume(String),
    #[error("{0}")]
    Other(String),
}

/// Settings of a distillation run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DistillConfig {
    pub backbone: PathBuf,
    /// Image folders and their weights (the share of draws each gets).
    pub images: Vec<ImageFolder>,
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
    /// How the target is built from the backbone.
    pub target: TargetOptions,
    /// Adam's learning rate (the paper: 1e-4, constant, for 60,000 steps).
    pub lr: f64,
    pub lr_schedule: LrSchedule,
    /// Where the resumable state goes (teacher with padding, optimizer, random stream).
    pub work: PathBuf,
    /// Save the resumable state every this many steps (and always at the end or on Ctrl-C).
    pub checkpoint_every: usize,
}

/// One folder of distillation images and the weight of its draws.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageFolder {
    pub dir: PathBuf,
    pub weight: f64,
}

/// The learning rate over a run's steps.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    /// The paper's: the same rate throughout.
    Constant,
    /// Half a cosine from the rate down to zero at the last step: a larger starting rate for
    /// short budgets, annealed so the last steps refine.
    Cosine,
}

impl LrSchedule {
    /// The rate of step `step` (0-based) of `steps`.
    pub fn at(self, lr: f64, step: usize, steps: usize) -> f64 {
        match self {
            LrSchedule::Constant => lr,
            LrSchedule::Cosine => {
                let t = step as f64 / steps.max(1) as f64;
                0.5 * lr * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// The files of the image folders with their weights, and the draw of one file.
pub struct ImagePool {
    folders: Vec<(Vec<PathBuf>, f64)>,
}

impl ImagePool {
    pub fn open(folders: &[ImageFolder]) -> Result<Self, DistillError> {
        let mut out = Vec::new();
        for f in folders {
            if !(f.weight.is_finite() && f.weight > 0.0) {
                return Err(DistillError::Other(format!(
                    "the weight of {} is {}; weights must be positive numbers",
                    f.dir.display(),
                    f.weight
                )));
            }
            out.push((data::folder_files(&f.dir)?, f.weight));
        }
        if out.is_empty() {
            return Err(DistillError::Other("no image folder given".into()));
        }
        Ok(Self { folders: out })
    }

    /// Every file of every folder (for the statistics sample).
    pub fn all_files(&self) -> Vec<PathBuf> {
        self.folders.iter().flat_map(|(f, _)| f.clone()).collect()
    }

    /// One file: a folder by weight, then a file uniformly. With one folder only the file is
    /// drawn, so single-folder runs keep the random stream they always had.
    pub fn draw(&self, rng: &mut Rng) -> &PathBuf {
        let files = if self.folders.len() == 1 {
            &self.folders[0].0
        } else {
            let total: f64 = self.folders.iter().map(|(_, w)| w).sum();
            let mut u = rng.uniform() * total;
            let mut chosen = &self.folders[self.folders.len() - 1].0;
            for (files, w) in &self.folders {
                if u < *w {
                    chosen = files;
                    break;
                }
                u -= w;
            }
            chosen
        };
        &files[rng.below(files.len())]
    }
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

/// Learning rate of distillation (docs/method.md), `--lr`'s default.
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
    pool: &ImagePool,
    targets: &TargetStats,
    options: &TargetOptions,
    lr: f64,
    batch: usize,
    rng: &mut Rng,
    device: &Device,
    skipped: &mut dyn FnMut(&str),
) -> Result<(Pdn, f64), DistillError> {
    let grid = options.size / 8;
    let mut big = Vec::with_capacity(batch * 3 * options.size * options.size);
    let mut small = Vec::with_capacity(batch * 3 * IMAGE_SIZE * IMAGE_SIZE);
    let mut n = 0;
    let mut failures = 0;
    while n < batch {
        let f = pool.draw(rng);
        let gray = rng.uniform() < GRAY_P;
        match views(f, gray, options) {
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
    for mut t in backbone.targets(&big, n, options.size)? {
        targets.apply(&mut t);
        target.extend(t);
    }
    let target = Tensor::<4>::from_data(TensorData::new(target, [n, channels, grid, grid]), device);
    let x = imagenet_normalize(Tensor::from_data(
        TensorData::new(small, [n, 3, IMAGE_SIZE, IMAGE_SIZE]),
        device,
    ));
    let loss = crate::train::loss::mse(pdn.forward(x), target);
    let value = crate::train::scalar(&loss);
    let mut grads = loss.backward();
    let g = GradientsParams::from_module(&mut grads, &pdn);
    Ok((optim.step(lr, pdn, g), value))
}

/// Distills a teacher (or resumes the run in `config.work`); returns it (padding off) with its
/// checkpoint description.
pub fn distill(
    config: &DistillConfig,
    resume: bool,
    stop: Arc<AtomicBool>,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<(Pdn, CheckpointInfo), DistillError> {
    let pool = ImagePool::open(&config.images)?;
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

    // Wall time of the whole distillation, target statistics included (and a resumed run's
    // earlier sessions).
    let started = Instant::now();
    let (mut pdn, mut optim, mut state) = if resume {
        let (pdn, optim, state) = resume::load(config, &device)?;
        events(Event::Message(&format!(
            "resuming {} at step {}",
            config.work.display(),
            state.step
        )));
        (pdn, optim, state)
    } else {
        let mut rng = Rng::new(config.seed);
        let mut pdn = PdnConfig::new(config.variant, channels)
            .with_padding(true)
            .with_width_divisor(divisor)
            .init(&device);
        for conv in pdn.convs_mut() {
            crate::model::init_conv(conv, &mut rng, &device);
        }
        let stats_files = stats_sample(&pool.all_files(), config.stats_images, config.seed);
        let targets = target_stats(&mut backbone, &stats_files, &config.target, events)?;
        let state = DistillState::new(config, rng, targets);
        (pdn, crate::train::adam(), state)
    };
    let earlier = state.wall_seconds;
    let targets = state.targets();
    let wall = |started: &Instant| earlier + started.elapsed().as_secs_f64();

    while state.step < config.steps {
        if stop.load(Ordering::SeqCst) {
            events(Event::Message(&format!(
                "interrupted at step {}; saving the teacher as it is (--resume continues)",
                state.step
            )));
            break;
        }
        let t0 = Instant::now();
        let lr = config.lr_schedule.at(config.lr, state.step, config.steps);
        let (stepped, value) = distill_step(
            pdn,
            &mut optim,
            &mut backbone,
            &pool,
            &targets,
            &config.target,
            lr,
            config.batch,
            &mut state.rng,
            &device,
            &mut |m| events(Event::Message(m)),
        )?;
        pdn = stepped;
        state.step += 1;
        let step = state.step;
        events(Event::Step {
            step,
            loss: value,
            images_per_second: config.batch as f64 / t0.elapsed().as_secs_f64(),
        });
        if config.checkpoint_every > 0 && step % config.checkpoint_every == 0 {
            state.wall_seconds = wall(&started);
            resume::save(config, &pdn, &optim, &state)?;
        }
        if config.save_every > 0 && step % config.save_every == 0 && step < config.steps {
            let (teacher, info) = finished(&pdn, config, step, wall(&started));
            events(Event::Snapshot {
                step,
                teacher: &teacher,
                info: &info,
            });
        }
    }
    state.wall_seconds = wall(&started);
    resume::save(config, &pdn, &optim, &state)?;
    Ok(finished(&pdn, config, state.step, state.wall_seconds))
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
        normalize_exposure: config.target.normalize_exposure,
        kind: Kind::Teacher,
        variant: config.variant,
        width_divisor: config.width_divisor.max(1),
        teacher: TeacherProvenance::Distilled {
            backbone: config.backbone.display().to_string(),
            backbone_sha256: efficientad::model::bundle::file_sha256(&config.backbone)
                .unwrap_or_default(),
            images: config
                .images
                .iter()
                .map(|f| format!("{}={}", f.dir.display(), f.weight))
                .collect::<Vec<_>>()
                .join(","),
            steps: step,
        },
        training: serde_json::json!({
            "batch": config.batch,
            "seed": config.seed,
            "images_seen": step * config.batch,
            "stats_images": config.stats_images,
            "stats_sample": "seeded random sample of the image folder",
            "target": config.target,
            "lr": config.lr,
            "lr_schedule": config.lr_schedule,
            "wall_seconds": wall_seconds,
            "command": std::env::args().collect::<Vec<_>>().join(" "),
        }),
    };
    (teacher, info)
}

#[cfg(test)]
mod tests;
