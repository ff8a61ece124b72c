//! One training step of `fit` (docs/method.md, the paper's Algorithm 1): the four losses, the data
//! every step reads (images, the frozen teacher, its cached outputs and statistics), and the
//! optimizer update. `distill` and `bench` reuse its pieces.

use std::borrow::Cow;

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{PENALTY_GRAY_P, TrainError, WEIGHT_DECAY};
use crate::data::{self, ColorJitter, Rng};
use crate::model::target_teacher::TargetTeacher;
use crate::model::{EfficientAd, IMAGE_SIZE, Pdn};
use crate::train::loss::{HardSelection, hard_loss, mse, penalty_loss};

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
    /// The frozen teacher (a PDN on the plain device, or the backbone target).
    pub teacher: Teacher,
    /// T̂(I) of the training images that fit in [`TEACHER_CACHE_BYTES`], `[C·56·56]`; `None`
    /// for the others, whose outputs each step recomputes.
    pub teacher_outputs: Vec<Option<Vec<f32>>>,
    /// Teacher channel mean μ and std σ.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Every network input is exposure-normalized (`fit --normalize-exposure`).
    pub normalize_exposure: bool,
}

/// Memory for cached teacher outputs (4.8 MB per image for PDN-S). 665 MTD training images
/// would need 3.2 GB, which with the rest of a run passed 4 GiB; beyond the budget, a step
/// runs the teacher on its training image again (~0.2 s on 2 cores), an exact recomputation.
pub const TEACHER_CACHE_BYTES: usize = 2 << 30;

impl StepData {
    /// Runs the teacher over the training images once: μ and σ over all of them (docs/method.md: over all
    /// unaugmented training images, pixels pooled), and the normalized outputs of as many as
    /// the cache holds.
    pub fn new(
        train: Vec<Vec<u8>>,
        penalty: Vec<Vec<u8>>,
        teacher: Teacher,
        normalize_exposure: bool,
        device: &Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, TrainError> {
        let mut stats = ChannelStats::new(teacher.channels());
        let mut teacher_outputs = Vec::with_capacity(train.len());
        let mut cached = 0usize;
        for (i, px) in train.iter().enumerate() {
            let raw = teacher.raw(&input(px, normalize_exposure), device)?;
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
        Ok(Self {
            train,
            penalty,
            teacher,
            teacher_outputs,
            mean,
            std,
            normalize_exposure,
        })
    }

    /// T̂(I) of training image `index`: from the cache, or computed now.
    fn teacher_output(
        &self,
        index: usize,
        chw: &[f32],
        device: &Device,
    ) -> Result<Cow<'_, [f32]>, TrainError> {
        Ok(match &self.teacher_outputs[index] {
            Some(cached) => Cow::Borrowed(cached),
            None => {
                let mut out = self.teacher.raw(chw, device)?;
                normalize_in_place(&mut out, &self.mean, &self.std);
                Cow::Owned(out)
            }
        })
    }
}

/// The two Adam optimizers of a run (student, autoencoder).
pub struct Optimizers {
    pub student: ModuleOptimizer,
    pub autoencoder: ModuleOptimizer,
}

impl Optimizers {
    /// Fresh Adam (docs/method.md: L2 weight decay 1e-5, not AdamW).
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
) -> Result<(EfficientAd, StepLosses), TrainError> {
    let raw = data::to_chw(&data.train[index], IMAGE_SIZE);
    let mut penalty = data::to_chw(&data.penalty[rng.below(data.penalty.len())], IMAGE_SIZE);
    if rng.uniform() < PENALTY_GRAY_P {
        data::grayscale(&mut penalty);
    }
    // The jitter acts on the image as captured (it clamps to [0, 1]); the exposure
    // normalization, like the exported graph's, on whatever reaches the networks.
    let mut augmented = raw.clone();
    ColorJitter::sample(rng).apply(&mut augmented);
    let mut image = raw;
    if data.normalize_exposure {
        for chw in [&mut image, &mut penalty, &mut augmented] {
            data::normalize_exposure(chw);
        }
    }
    let teacher_image = data.teacher_output(index, &image, plain)?;
    let mut teacher_augmented = data.teacher.raw(&augmented, plain)?;
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
    Ok((model, values))
}

/// An RGB8 `IMAGE_SIZE`² image as the networks see it: CHW in [0, 1], exposure-normalized
/// when asked.
fn input(px: &[u8], normalize_exposure: bool) -> Vec<f32> {
    let mut chw = data::to_chw(px, IMAGE_SIZE);
    if normalize_exposure {
        data::normalize_exposure(&mut chw);
    }
    chw
}

/// The frozen teacher of a run: a PDN (imported or distilled), or the distillation target
/// itself (`fit --teacher target:BACKBONE.onnx`).
// One per run: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Teacher {
    Pdn(Pdn),
    Target(Box<TargetTeacher>),
}

impl Teacher {
    pub fn channels(&self) -> usize {
        match self {
            Teacher::Pdn(pdn) => pdn.out_channels(),
            Teacher::Target(target) => target.channels(),
        }
    }

    /// Outputs (raw, before μ/σ) of a CHW image in [0, 1] at 256², `[C·56·56]`; a PDN runs
    /// on `device`.
    pub fn raw(&self, chw: &[f32], device: &Device) -> Result<Vec<f32>, TrainError> {
        match self {
            Teacher::Pdn(pdn) => Ok(teacher_raw(pdn, chw, device)),
            Teacher::Target(target) => Ok(target.raw(chw)?),
        }
    }
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

/// Adam as docs/method.md trains with it (student, autoencoder and teacher distillation alike): L2
/// weight decay 1e-5 (not AdamW), ε 1e-8; the learning rate is given per step.
pub fn adam() -> ModuleOptimizer {
    AdamConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(Some(WeightDecayConfig::new(WEIGHT_DECAY)))
        .init()
}
