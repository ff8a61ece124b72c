//! The EfficientAD networks as Burn modules: the patch description network (PDN) used for
//! teacher and student, the autoencoder, and [`EfficientAd`], the three together with the
//! teacher's channel normalization — the unit that is checkpointed and exported.

pub mod autoencoder;
pub mod conv;
pub mod pdn;
pub mod pool;
pub mod target_teacher;
pub mod teacher;

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::tensor::{Device, Tensor, TensorData};

use crate::data::Rng;

pub use autoencoder::{Autoencoder, AutoencoderConfig};
pub use pdn::{Pdn, PdnConfig, Variant};

/// Side length of the square network input, in pixels.
pub const IMAGE_SIZE: usize = 256;
/// Number of teacher feature channels; the student has twice as many.
pub const TEACHER_CHANNELS: usize = 384;
/// ImageNet channel means and standard deviations, applied inside every network's input.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Normalizes an RGB batch in [0, 1] with the ImageNet statistics.
///
/// # Shapes
/// - input: `[N, 3, H, W]`, output: the same.
pub fn imagenet_normalize(x: Tensor<4>) -> Tensor<4> {
    let device = x.device();
    let mean = Tensor::<1>::from_floats(IMAGENET_MEAN, &device).reshape([1, 3, 1, 1]);
    let std = Tensor::<1>::from_floats(IMAGENET_STD, &device).reshape([1, 3, 1, 1]);
    (x - mean) / std
}

/// Teacher, student and autoencoder with the teacher's per-channel output statistics.
#[derive(Module, Debug)]
pub struct EfficientAd {
    pub teacher: Pdn,
    pub student: Pdn,
    pub autoencoder: Autoencoder,
    /// Per-channel mean μ of the teacher outputs over the training images.
    pub teacher_mean: Param<Tensor<1>>,
    /// Per-channel standard deviation σ of the same (never zero: see [`guard_std`]).
    pub teacher_std: Param<Tensor<1>>,
}

/// The smallest σ used for a teacher channel: a channel that is constant over the training
/// images would otherwise divide by zero (docs/method.md: "guard σ = 0").
pub const MIN_TEACHER_STD: f32 = 1e-6;

/// Clamps standard deviations away from zero.
pub fn guard_std(std: Tensor<1>) -> Tensor<1> {
    std.clamp_min(MIN_TEACHER_STD)
}

/// The two raw anomaly maps, before quantile normalization.
pub struct RawMaps {
    /// `[N, H, W]`: mean over channels of (T̂ − S[:384])².
    pub st: Tensor<3>,
    /// `[N, H, W]`: mean over channels of (A − S[384:])².
    pub ae: Tensor<3>,
}

impl EfficientAd {
    /// A fresh model whose teacher has `teacher_config`'s shape; the teacher statistics are
    /// identity (μ = 0, σ = 1) until they are computed.
    pub fn new(teacher_config: &PdnConfig, device: &Device) -> Self {
        Self::with_teacher(teacher_config.init(device), teacher_config, device)
    }

    /// Assembles a model around an existing teacher; student and autoencoder are freshly
    /// initialized with matching widths.
    pub fn with_teacher(mut teacher: Pdn, teacher_config: &PdnConfig, device: &Device) -> Self {
        teacher.set_padding(false);
        let channels = teacher_config.out_channels;
        let student = PdnConfig::new(teacher_config.variant, 2 * channels)
            .with_width_divisor(teacher_config.width_divisor)
            .init(device);
        let autoencoder = AutoencoderConfig::new(channels).init(device);
        Self {
            teacher,
            student,
            autoencoder,
            teacher_mean: Param::from_tensor(Tensor::zeros([channels], device)),
            teacher_std: Param::from_tensor(Tensor::ones([channels], device)),
        }
    }

    /// Teacher output normalized with μ and σ: T̂ = (T − μ) / σ.
    ///
    /// # Shapes
    /// - input: `[N, 3, H, W]` ImageNet-normalized; output `[N, C, h, w]`.
    pub fn teacher_normalized(&self, x: Tensor<4>) -> Tensor<4> {
        let c = self.teacher.out_channels();
        let mean = self.teacher_mean.val().reshape([1, c, 1, 1]);
        let std = self.teacher_std.val().reshape([1, c, 1, 1]);
        (self.teacher.forward(x) - mean) / std
    }

    /// The deployment computation: both raw maps for a batch of RGB images in [0, 1].
    ///
    /// # Shapes
    /// - input: `[N, 3, 256, 256]` in [0, 1]; outputs `[N, 56, 56]` each (padding off).
    pub fn maps(&self, x: Tensor<4>) -> RawMaps {
        let x = imagenet_normalize(x);
        let t = self.teacher_normalized(x.clone());
        let s = self.student.forward(x.clone());
        let a = self.autoencoder.forward(x);
        let c = self.teacher.out_channels();
        let [n, _, h, w] = s.dims();
        let s_st = s.clone().slice([0..n, 0..c, 0..h, 0..w]);
        let s_ae = s.slice([0..n, c..2 * c, 0..h, 0..w]);
        let st = (t - s_st).powi_scalar(2).mean_dim(1).reshape([n, h, w]);
        let ae = (a - s_ae).powi_scalar(2).mean_dim(1).reshape([n, h, w]);
        RawMaps { st, ae }
    }
}

/// PyTorch's default convolution initialization, U(−1/√fan_in, 1/√fan_in) for weight and
/// bias, drawn from the project's own seeded stream: Burn's generator is process-global, so
/// two runs in one process (or a test suite) would otherwise not be reproducible.
pub fn init_conv(conv: &mut Conv2d, rng: &mut Rng, device: &Device) {
    let dims = conv.weight.dims();
    let bound = 1.0 / ((dims[1] * dims[2] * dims[3]) as f64).sqrt();
    let mut draw = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
            .collect()
    };
    let w = draw(dims.iter().product());
    let b = draw(dims[0]);
    conv.weight = Param::from_tensor(Tensor::from_data(TensorData::new(w, dims), device));
    conv.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(b, [dims[0]]),
        device,
    )));
}

impl EfficientAd {
    /// Re-initializes student and autoencoder from `rng` (and the teacher too when asked).
    pub fn init_weights(&mut self, rng: &mut Rng, teacher_too: bool, device: &Device) {
        if teacher_too {
            for c in self.teacher.convs_mut() {
                init_conv(c, rng, device);
            }
        }
        for c in self.student.convs_mut() {
            init_conv(c, rng, device);
        }
        for c in self.autoencoder.convs_mut() {
            init_conv(c, rng, device);
        }
    }
}

/// Teacher statistics as stored in a JSON file: `{"mean": [...], "std": [...]}`.
#[derive(serde::Deserialize)]
struct TeacherStats {
    mean: Vec<f32>,
    std: Vec<f32>,
}

/// Sets μ and σ from explicit values (σ is guarded against zero).
pub fn set_teacher_stats(
    model: &mut EfficientAd,
    mean: &[f32],
    std: &[f32],
    device: &Device,
) -> Result<(), String> {
    let c = model.teacher.out_channels();
    if mean.len() != c || std.len() != c {
        return Err(format!(
            "teacher statistics have {} means and {} stds, the teacher has {c} channels",
            mean.len(),
            std.len()
        ));
    }
    model.teacher_mean = Param::from_tensor(Tensor::from_floats(mean, device));
    model.teacher_std = Param::from_tensor(guard_std(Tensor::from_floats(std, device)));
    Ok(())
}

/// Reads μ and σ from a JSON file (see [`TeacherStats`]) into the model.
pub fn set_teacher_stats_from_file(
    model: &mut EfficientAd,
    path: &std::path::Path,
    device: &Device,
) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let stats: TeacherStats = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not teacher statistics JSON: {e}", path.display()))?;
    set_teacher_stats(model, &stats.mean, &stats.std, device)
        .map_err(|e| format!("{}: {e}", path.display()))
}
