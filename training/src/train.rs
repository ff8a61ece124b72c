//! Student and autoencoder training (SPEC.md, the paper's Algorithm 1), `efficientad-train fit`.
//!
//! Per step, with I a training image, P a penalty image and I′ = aug(I):
//! L = L_hard(T̂(I), S(I)[:C]) + L_pen(S(P)[:C]) + mse(T̂(I′), A(I′)) + mse(A(I′), S(I′)[C:]).
//! The teacher is frozen; its outputs on the unaugmented training images are computed once and
//! cached. Everything random — initialization, image order, penalty choice, augmentation and
//! dropout — comes from one seeded stream (`data::Rng`), restored on `--resume`, so a resumed
//! run is bit-identical to an uninterrupted one.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointInfo, Kind};
use crate::data::{self, ColorJitter, Rng};
use crate::loss::{HardSelection, hard_loss, mse, penalty_loss};
use crate::model::{EfficientAd, IMAGE_SIZE, Pdn, set_teacher_stats};

/// Learning rate and its drop (SPEC).
pub const LEARNING_RATE: f64 = 1e-4;
pub const WEIGHT_DECAY: f32 = 1e-5;
pub const LR_DROP_AT: f64 = 0.95;
/// Probability that a penalty image is turned grayscale.
pub const PENALTY_GRAY_P: f64 = 0.3;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] data::DataError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("{0}")]
    Io(String),
    #[error("resume: {0}")]
    Resume(String),
}

/// Everything that defines a run; saved beside its checkpoints and in model.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FitConfig {
    pub dataset: PathBuf,
    pub teacher: PathBuf,
    pub penalty_images: PathBuf,
    pub steps: usize,
    pub seed: u64,
    pub out: PathBuf,
    pub work: PathBuf,
    pub checkpoint_every: usize,
    /// Use at most this many penalty images (all when None).
    pub penalty_limit: Option<usize>,
    /// Use at most this many training images (all when None).
    pub train_limit: Option<usize>,
    /// Where to compute.
    #[serde(default)]
    pub backend: crate::backend::Backend,
    /// Report the model for a quality check every this many steps (0: never).
    #[serde(default)]
    pub eval_every: usize,
}

/// Losses of one step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepLosses {
    pub hard: f64,
    pub penalty: f64,
    pub ae: f64,
    pub stae: f64,
    pub total: f64,
}

/// The inputs of one step, already augmented (CHW floats in [0, 1], `IMAGE_SIZE`²).
pub struct StepInputs<'a> {
    pub image: &'a [f32],
    /// T̂(I), `[C, 56, 56]`, normalized.
    pub teacher_image: &'a [f32],
    pub penalty: &'a [f32],
    pub augmented: &'a [f32],
    /// T̂(I′), normalized.
    pub teacher_augmented: &'a [f32],
}

fn tensor4(values: &[f32], dims: [usize; 4], device: &Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(values.to_vec(), dims), device)
}

/// The value of a one-element tensor (NaN if it cannot be read).
pub(crate) fn scalar(t: &Tensor<1>) -> f64 {
    t.clone()
        .into_data()
        .try_to_vec::<f32>()
        .ok()
        .and_then(|v| v.first().copied())
        .map_or(f64::NAN, f64::from)
}

/// The four losses for fixed inputs (student and autoencoder on `device`, which may track
/// gradients). Returns the total as a tensor for `backward`.
///
/// The student sees its three inputs (training image, penalty image, augmented image) as one
/// batch through its trunk; its output convolution then runs per half: the first C channels
/// for the image and the penalty image (the hard and penalty losses read only those), the last
/// C for the augmented image (the student–autoencoder loss reads only those). Same losses as
/// three full passes, two thirds of the work in the output convolution.
///
/// `dropout` draws the autoencoder's dropout masks; `None` runs it without dropout.
pub fn losses(
    model: &EfficientAd,
    inputs: &StepInputs<'_>,
    dropout: Option<&mut Rng>,
    device: &Device,
) -> (Tensor<1>, StepLosses, HardSelection) {
    let c = model.teacher.out_channels();
    let s = IMAGE_SIZE;
    let map_dims = |len: usize| [1, c, (len / c).isqrt(), (len / c).isqrt()];

    let mut batch = Vec::with_capacity(3 * 3 * s * s);
    for part in [inputs.image, inputs.penalty, inputs.augmented] {
        batch.extend_from_slice(part);
    }
    let x = crate::model::imagenet_normalize(tensor4(&batch, [3, 3, s, s], device));
    let trunk = model.student.trunk(x.clone());
    let [_, hidden, h, w] = trunk.dims();
    let first = model
        .student
        .head(trunk.clone().slice([0..2, 0..hidden, 0..h, 0..w]), 0..c);
    let second = model
        .student
        .head(trunk.slice([2..3, 0..hidden, 0..h, 0..w]), c..2 * c);
    let [_, _, oh, ow] = first.dims();
    let s_image = first.clone().slice([0..1, 0..c, 0..oh, 0..ow]);
    let s_penalty = first.slice([1..2, 0..c, 0..oh, 0..ow]);

    let t_image = tensor4(
        inputs.teacher_image,
        map_dims(inputs.teacher_image.len()),
        device,
    );
    let (l_hard, selection) = hard_loss(t_image, s_image);
    let l_pen = penalty_loss(s_penalty);

    let augmented = x.slice([2..3, 0..3, 0..s, 0..s]);
    let t_aug = tensor4(
        inputs.teacher_augmented,
        map_dims(inputs.teacher_augmented.len()),
        device,
    );
    let a = match dropout {
        Some(rng) => model.autoencoder.forward_train(augmented, rng),
        None => model.autoencoder.forward(augmented),
    };
    let l_ae = mse(t_aug, a.clone());
    let l_stae = mse(a, second);

    let values = StepLosses {
        hard: scalar(&l_hard),
        penalty: scalar(&l_pen),
        ae: scalar(&l_ae),
        stae: scalar(&l_stae),
        total: 0.0,
    };
    let total = l_hard + l_pen + l_ae + l_stae;
    let values = StepLosses {
        total: scalar(&total),
        ..values
    };
    (total, values, selection)
}

/// What every training step reads besides the model: the images in memory at network
/// resolution, the frozen teacher, its cached outputs and statistics.
pub struct StepData {
    /// Training images, RGB `IMAGE_SIZE`².
    pub train: Vec<Vec<u8>>,
    /// Penalty images, RGB `IMAGE_SIZE`² (already resized to 512 and centre-cropped).
    pub penalty: Vec<Vec<u8>>,
    /// The teacher on the plain device.
    pub teacher: Pdn,
    /// T̂(I) of the training images that fit in [`TEACHER_CACHE_BYTES`], `[C·56·56]`; `None`
    /// for the others, whose outputs each step recomputes.
    pub teacher_outputs: Vec<Option<Vec<f32>>>,
    /// Teacher channel mean μ and std σ.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// Memory for cached teacher outputs (4.8 MB per image for PDN-S). 665 MTD training images
/// would need 3.2 GB, which with the rest of a run passed 4 GiB; beyond the budget, a step
/// runs the teacher on its training image again (~0.2 s on 2 cores), an exact recomputation.
pub const TEACHER_CACHE_BYTES: usize = 2 << 30;

impl StepData {
    /// Runs the teacher over the training images once: μ and σ over all of them (SPEC: over all
    /// unaugmented training images, pixels pooled), and the normalized outputs of as many as
    /// the cache holds.
    pub fn new(
        train: Vec<Vec<u8>>,
        penalty: Vec<Vec<u8>>,
        teacher: Pdn,
        device: &Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Self {
        let mut stats = ChannelStats::new(teacher.out_channels());
        let mut teacher_outputs = Vec::with_capacity(train.len());
        let mut cached = 0usize;
        for (i, px) in train.iter().enumerate() {
            let raw = teacher_raw(&teacher, &data::to_chw(px, IMAGE_SIZE), device);
            stats.add(&raw);
            let bytes = raw.len() * std::mem::size_of::<f32>();
            if cached + bytes <= TEACHER_CACHE_BYTES {
                cached += bytes;
                teacher_outputs.push(Some(raw));
            } else {
                teacher_outputs.push(None);
            }
            progress(i + 1, train.len());
        }
        let (mean, std) = stats.finish();
        for out in teacher_outputs.iter_mut().flatten() {
            normalize_in_place(out, &mean, &std);
        }
        Self {
            train,
            penalty,
            teacher,
            teacher_outputs,
            mean,
            std,
        }
    }

    /// T̂(I) of training image `index`: from the cache, or computed now.
    fn teacher_output(&self, index: usize, chw: &[f32], device: &Device) -> Cow<'_, [f32]> {
        match &self.teacher_outputs[index] {
            Some(cached) => Cow::Borrowed(cached),
            None => {
                let mut out = teacher_raw(&self.teacher, chw, device);
                normalize_in_place(&mut out, &self.mean, &self.std);
                Cow::Owned(out)
            }
        }
    }
}

/// The two Adam optimizers of a run (student, autoencoder).
pub struct Optimizers {
    pub student: ModuleOptimizer,
    pub autoencoder: ModuleOptimizer,
}

impl Optimizers {
    /// Fresh Adam (SPEC: L2 weight decay 1e-5, not AdamW).
    pub fn new() -> Self {
        Self {
            student: adam(),
            autoencoder: adam(),
        }
    }
}

impl Default for Optimizers {
    fn default() -> Self {
        Self::new()
    }
}

/// One optimizer step on training image `index`: draws the penalty image, its grayscale coin,
/// the augmentation and the dropout masks from `rng` (in that order), computes the four losses,
/// backpropagates once and steps both optimizers with learning rate `lr`.
///
/// `plain` runs the frozen teacher on the augmented image; `device` is the autodiff device of
/// `model`.
pub fn step(
    model: EfficientAd,
    optimizers: &mut Optimizers,
    data: &StepData,
    index: usize,
    rng: &mut Rng,
    lr: f64,
    (plain, device): (&Device, &Device),
) -> (EfficientAd, StepLosses) {
    let image = data::to_chw(&data.train[index], IMAGE_SIZE);
    let mut penalty = data::to_chw(&data.penalty[rng.below(data.penalty.len())], IMAGE_SIZE);
    if rng.uniform() < PENALTY_GRAY_P {
        data::grayscale(&mut penalty);
    }
    let mut augmented = image.clone();
    ColorJitter::sample(rng).apply(&mut augmented);
    let teacher_image = data.teacher_output(index, &image, plain);
    let mut teacher_augmented = teacher_raw(&data.teacher, &augmented, plain);
    normalize_in_place(&mut teacher_augmented, &data.mean, &data.std);
    let inputs = StepInputs {
        image: &image,
        teacher_image: &teacher_image,
        penalty: &penalty,
        augmented: &augmented,
        teacher_augmented: &teacher_augmented,
    };
    let (total, values, _) = losses(&model, &inputs, Some(rng), device);
    let mut grads = total.backward();
    let grads_student = GradientsParams::from_module(&mut grads, &model.student);
    let grads_ae = GradientsParams::from_module(&mut grads, &model.autoencoder);
    let mut model = model;
    model.student = optimizers.student.step(lr, model.student, grads_student);
    model.autoencoder = optimizers.autoencoder.step(lr, model.autoencoder, grads_ae);
    (model, values)
}

/// Teacher outputs (raw, before μ/σ) of an image on the plain device, `[C·56·56]`.
pub fn teacher_raw(teacher: &Pdn, chw: &[f32], device: &Device) -> Vec<f32> {
    let x = crate::model::imagenet_normalize(tensor4(chw, [1, 3, IMAGE_SIZE, IMAGE_SIZE], device));
    teacher
        .forward(x)
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_default()
}

/// Per-channel mean and population std over all pixels of teacher outputs (`[C·H·W]` each),
/// accumulated one output at a time.
struct ChannelStats {
    sum: Vec<f64>,
    sq: Vec<f64>,
    count: f64,
}

impl ChannelStats {
    fn new(channels: usize) -> Self {
        Self {
            sum: vec![0.0; channels],
            sq: vec![0.0; channels],
            count: 0.0,
        }
    }

    /// Adds one `[C·H·W]` output.
    fn add(&mut self, out: &[f32]) {
        let plane = out.len() / self.sum.len().max(1);
        for (c, channel) in out.chunks(plane.max(1)).enumerate().take(self.sum.len()) {
            for &v in channel {
                self.sum[c] += f64::from(v);
                self.sq[c] += f64::from(v) * f64::from(v);
            }
        }
        self.count += plane as f64;
    }

    /// Mean and population std per channel.
    fn finish(self) -> (Vec<f32>, Vec<f32>) {
        let count = self.count;
        let mean: Vec<f64> = self.sum.iter().map(|s| s / count).collect();
        let std: Vec<f32> = self
            .sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| ((q / count - m * m).max(0.0)).sqrt() as f32)
            .collect();
        (mean.into_iter().map(|m| m as f32).collect(), std)
    }
}

/// T̂ = (T − μ) / σ per channel of a `[C·H·W]` teacher output.
fn normalize_in_place(values: &mut [f32], mean: &[f32], std: &[f32]) {
    let plane = values.len() / mean.len().max(1);
    for (c, channel) in values.chunks_mut(plane.max(1)).enumerate() {
        let (m, s) = (mean[c], std[c].max(crate::model::MIN_TEACHER_STD));
        channel.iter_mut().for_each(|v| *v = (*v - m) / s);
    }
}

/// The resumable part of a run's state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub step: usize,
    pub rng: Rng,
    /// Current epoch's image order and the position in it.
    pub order: Vec<usize>,
    pub position: usize,
    pub config: FitConfig,
    pub wall_seconds: f64,
    pub last_losses: StepLosses,
}

/// Adam as SPEC trains with it (student, autoencoder and teacher distillation alike): L2
/// weight decay 1e-5 (not AdamW), ε 1e-8; the learning rate is given per step.
pub fn adam() -> ModuleOptimizer {
    AdamConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(Some(WeightDecayConfig::new(WEIGHT_DECAY)))
        .init()
}

fn io(e: impl std::fmt::Display) -> TrainError {
    TrainError::Io(e.to_string())
}

/// Paths of a run's working folder.
pub struct Work {
    pub dir: PathBuf,
}

impl Work {
    pub fn checkpoint_dir(&self) -> PathBuf {
        self.dir.join("checkpoint")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.join("log.jsonl")
    }
}

/// Events reported to the caller (progress bar, messages).
pub enum Event<'a> {
    Message(&'a str),
    Loading {
        done: usize,
        total: usize,
        what: &'a str,
    },
    Step {
        step: usize,
        steps: usize,
        losses: &'a StepLosses,
        images_per_second: f64,
    },
    /// The model after `step` steps, every `eval_every` steps, for a quality check.
    Quality {
        step: usize,
        model: &'a EfficientAd,
        info: &'a CheckpointInfo,
    },
}

/// The outcome of `fit`'s training part.
pub struct Trained {
    pub model: EfficientAd,
    pub info: CheckpointInfo,
    pub state: RunState,
    pub validation: Vec<PathBuf>,
    pub validation_label: &'static str,
    pub interrupted: bool,
}

/// Trains (or resumes) until `config.steps` or until `stop` is set.
pub fn train(
    config: &FitConfig,
    resume: bool,
    stop: Arc<AtomicBool>,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<Trained, TrainError> {
    let plain = config.backend.device().map_err(TrainError::Io)?;
    let device = plain.clone().autodiff();
    let work = Work {
        dir: config.work.clone(),
    };
    std::fs::create_dir_all(work.checkpoint_dir()).map_err(io)?;

    let (mut train_files, validation, validation_label) = data::split(&config.dataset)?;
    if let Some(limit) = config.train_limit {
        train_files.truncate(limit);
    }
    let mut penalty_files = data::folder_files(&config.penalty_images)?;
    if let Some(limit) = config.penalty_limit {
        penalty_files.truncate(limit);
    }

    // Model: fresh around the teacher, or the checkpoint when resuming.
    let (teacher_pdn, teacher_info) = checkpoint::load_teacher(&config.teacher, None, &plain)?;
    let mut info = CheckpointInfo {
        kind: Kind::Model,
        variant: teacher_info.variant,
        width_divisor: teacher_info.width_divisor,
        teacher: teacher_info.teacher.clone(),
        training: serde_json::Value::Null,
    };
    let ckpt = work.checkpoint_dir();
    let (mut model, optim_student, optim_ae, mut state) = if resume {
        let state_text = std::fs::read_to_string(ckpt.join("state.json")).map_err(|e| {
            TrainError::Resume(format!("no checkpoint in {} ({e})", ckpt.display()))
        })?;
        let state: RunState =
            serde_json::from_str(&state_text).map_err(|e| TrainError::Resume(e.to_string()))?;
        if state.config.dataset != config.dataset
            || state.config.seed != config.seed
            || state.config.teacher != config.teacher
        {
            return Err(TrainError::Resume(format!(
                "the checkpoint in {} belongs to another run (dataset, teacher or seed differ)",
                ckpt.display()
            )));
        }
        let model = checkpoint::model_skeleton(&info, &device);
        let mut model = model;
        let mut store =
            burn::store::BurnpackStore::from_file(ckpt.join("model.bpk")).auto_extension(false);
        burn::store::ModuleSnapshot::load_from(&mut model, &mut store)
            .map_err(|e| TrainError::Resume(e.to_string()))?;
        let optim_student = adam()
            .load(ckpt.join("optim_student.bpk"))
            .map_err(|e| TrainError::Resume(e.to_string()))?;
        let optim_ae = adam()
            .load(ckpt.join("optim_ae.bpk"))
            .map_err(|e| TrainError::Resume(e.to_string()))?;
        events(Event::Message(&format!("resuming at step {}", state.step)));
        (model, optim_student, optim_ae, state)
    } else {
        let teacher_on_device = teacher_pdn.clone().fork(&device);
        let mut model =
            EfficientAd::with_teacher(teacher_on_device, &info.teacher_config(), &device);
        let mut rng = Rng::new(config.seed);
        model.init_weights(&mut rng, false, &device);
        // The image order is drawn once the images are decoded: unreadable ones are skipped.
        let state = RunState {
            step: 0,
            rng,
            order: Vec::new(),
            position: 0,
            config: config.clone(),
            wall_seconds: 0.0,
            last_losses: StepLosses::default(),
        };
        (model, adam(), adam(), state)
    };
    std::fs::write(
        work.dir.join("config.json"),
        serde_json::to_string_pretty(config).map_err(io)?,
    )
    .map_err(io)?;

    // Images in memory at network resolution.
    let total = train_files.len() + penalty_files.len();
    let mut done = 0;
    let train_set = data::load_images(&train_files, IMAGE_SIZE, None, || {
        done += 1;
        events(Event::Loading {
            done,
            total,
            what: "images",
        });
    });
    let penalty_set = data::load_images(&penalty_files, 2 * IMAGE_SIZE, Some(IMAGE_SIZE), || {
        done += 1;
        events(Event::Loading {
            done,
            total,
            what: "images",
        });
    });
    for (set, dir) in [
        (&train_set, &config.dataset),
        (&penalty_set, &config.penalty_images),
    ] {
        if set.skipped > 0 {
            events(Event::Message(&format!(
                "{} unreadable images skipped in {}",
                set.skipped,
                dir.display()
            )));
        }
        if set.pixels.is_empty() {
            return Err(data::DataError::Empty {
                path: dir.clone(),
                skipped: set.skipped,
            }
            .into());
        }
    }
    if !resume {
        state.order = (0..train_set.pixels.len()).collect();
        state.rng.shuffle(&mut state.order);
    } else if train_set.pixels.len() != state.order.len() {
        return Err(TrainError::Resume(
            "the training images changed since the checkpoint".into(),
        ));
    }

    // Teacher outputs of the unaugmented training images: computed once, then μ and σ.
    let train_count = train_set.pixels.len();
    let penalty_count = penalty_set.pixels.len();
    let step_data = StepData::new(
        train_set.pixels,
        penalty_set.pixels,
        teacher_pdn,
        &plain,
        &mut |done, total| {
            events(Event::Loading {
                done,
                total,
                what: "teacher outputs",
            })
        },
    );
    set_teacher_stats(&mut model, &step_data.mean, &step_data.std, &device)
        .map_err(TrainError::Io)?;
    let mut optimizers = Optimizers {
        student: optim_student,
        autoencoder: optim_ae,
    };

    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(work.log())
        .map_err(io)?;
    let started = Instant::now();
    let wall_before = state.wall_seconds;
    let mut interrupted = false;
    let mut checking = 0.0;
    while state.step < config.steps {
        if stop.load(Ordering::SeqCst) {
            interrupted = true;
            break;
        }
        let t0 = Instant::now();
        // Image order: epochs of a fresh permutation.
        if state.position >= state.order.len() {
            state.rng.shuffle(&mut state.order);
            state.position = 0;
        }
        let index = state.order[state.position];
        state.position += 1;
        let lr = if (state.step as f64) < LR_DROP_AT * config.steps as f64 {
            LEARNING_RATE
        } else {
            LEARNING_RATE * 0.1
        };
        let (stepped, values) = step(
            model,
            &mut optimizers,
            &step_data,
            index,
            &mut state.rng,
            lr,
            (&plain, &device),
        );
        model = stepped;
        state.step += 1;
        state.last_losses = values;
        let rate = 1.0 / t0.elapsed().as_secs_f64();
        let line = serde_json::json!({"step": state.step, "lr": lr, "hard": values.hard, "penalty": values.penalty,
            "ae": values.ae, "stae": values.stae, "total": values.total, "images_per_second": rate});
        use std::io::Write;
        writeln!(log, "{line}").map_err(io)?;
        events(Event::Step {
            step: state.step,
            steps: config.steps,
            losses: &values,
            images_per_second: rate,
        });
        state.wall_seconds = wall_before + started.elapsed().as_secs_f64() - checking;
        if config.checkpoint_every > 0
            && state.step % config.checkpoint_every == 0
            && state.step < config.steps
        {
            save_checkpoint(&work, &model, &info, &optimizers, &state)?;
        }
        if config.eval_every > 0 && state.step % config.eval_every == 0 {
            // The check's time is not training time: kept out of `wall_seconds`.
            let t0 = Instant::now();
            let snapshot = model.valid();
            events(Event::Quality {
                step: state.step,
                model: &snapshot,
                info: &info,
            });
            checking += t0.elapsed().as_secs_f64();
        }
    }
    state.wall_seconds = wall_before + started.elapsed().as_secs_f64() - checking;
    save_checkpoint(&work, &model, &info, &optimizers, &state)?;
    info.training = serde_json::json!({
        "dataset": config.dataset.display().to_string(),
        "validation": validation_label,
        "training_images": train_count,
        "penalty_images": penalty_count,
        "steps": state.step,
        "planned_steps": config.steps,
        "seed": config.seed,
        "final_losses": state.last_losses,
        "wall_seconds": state.wall_seconds,
        "backend": format!("burn {:?}", config.backend),
        // What the teacher saw (distillation images, steps, batch, statistics sample).
        "teacher_distillation": teacher_info.training,
    });
    Ok(Trained {
        model: model.valid(),
        info,
        state,
        validation,
        validation_label,
        interrupted,
    })
}

/// Writes model, optimizer states and run state (the state file last, so a checkpoint without
/// it is never taken for complete).
pub fn save_checkpoint(
    work: &Work,
    model: &EfficientAd,
    info: &CheckpointInfo,
    optimizers: &Optimizers,
    state: &RunState,
) -> Result<(), TrainError> {
    let dir = work.checkpoint_dir();
    let _ = std::fs::remove_file(dir.join("state.json"));
    checkpoint::save_model(model, info, &dir.join("model.bpk"))?;
    let _ = std::fs::remove_file(dir.join("optim_student.bpk"));
    let _ = std::fs::remove_file(dir.join("optim_ae.bpk"));
    optimizers
        .student
        .save(dir.join("optim_student.bpk"))
        .map_err(io)?;
    optimizers
        .autoencoder
        .save(dir.join("optim_ae.bpk"))
        .map_err(io)?;
    std::fs::write(
        dir.join("state.json"),
        serde_json::to_string(state).map_err(io)?,
    )
    .map_err(io)
}

/// Installs the Ctrl-C / SIGTERM handler that asks the loop to checkpoint and stop.
pub fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = ctrlc::set_handler(move || f.store(true, Ordering::SeqCst));
    flag
}

/// Reads a run's log (one JSON object per step).
pub fn read_log(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}
