//! One training step of `fit` (docs/method.md, the paper's Algorithm 1): the four losses, the data
//! every step reads (images, the frozen teacher, its cached outputs and statistics), and the
//! optimizer update. `distill` and `bench` reuse its pieces.

use burn::optim::decay::WeightDecayConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{TrainError, WEIGHT_DECAY};
use crate::data::{Rng, Sample, TeacherCache};
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
/// resolution, the frozen teacher, and its cached outputs and statistics.
pub struct StepData {
    /// Training images, RGB `IMAGE_SIZE`².
    pub train: Vec<Vec<u8>>,
    /// Penalty images, RGB `IMAGE_SIZE`² (already resized to 512 and centre-cropped).
    pub penalty: Vec<Vec<u8>>,
    /// The frozen teacher (a PDN on the plain device, or the backbone target).
    pub teacher: Teacher,
    /// μ, σ and T̂ of the training images.
    pub cache: TeacherCache,
    /// Every network input is exposure-normalized (`fit --normalize-exposure`).
    pub normalize_exposure: bool,
}

impl StepData {
    /// Runs the teacher over the training images once ([`TeacherCache::build`]).
    pub fn new(
        train: Vec<Vec<u8>>,
        penalty: Vec<Vec<u8>>,
        teacher: Teacher,
        normalize_exposure: bool,
        device: &Device,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, TrainError> {
        let cache = TeacherCache::build(
            &train,
            teacher.channels(),
            normalize_exposure,
            &mut |chw| teacher.raw(chw, device),
            progress,
        )?;
        Ok(Self {
            train,
            penalty,
            teacher,
            cache,
            normalize_exposure,
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
    let sample = Sample::draw(
        &data.train[index],
        &data.penalty,
        data.normalize_exposure,
        rng,
    );
    let teacher_image = data
        .cache
        .get(index, &sample.image, |chw| data.teacher.raw(chw, plain))?;
    let mut teacher_augmented = data.teacher.raw(&sample.augmented, plain)?;
    data.cache.normalize(&mut teacher_augmented);
    let inputs = StepInputs {
        image: &sample.image,
        teacher_image: &teacher_image,
        penalty: &sample.penalty,
        augmented: &sample.augmented,
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

/// Adam as docs/method.md trains with it (student, autoencoder and teacher distillation alike): L2
/// weight decay 1e-5 (not AdamW), ε 1e-8; the learning rate is given per step.
pub fn adam() -> ModuleOptimizer {
    AdamConfig::new()
        .with_epsilon(1e-8)
        .with_weight_decay(Some(WeightDecayConfig::new(WEIGHT_DECAY)))
        .init()
}
