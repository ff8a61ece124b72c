//! The EfficientAD autoencoder: a convolutional bottleneck to 1x1x64 and a decoder of bilinear
//! resizes and convolutions, with no skip connections, so it can only reproduce the global
//! appearance of a normal image (logical anomalies show up as its disagreement with the student).

use burn::config::Config;
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};

use crate::model::conv::conv2d;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};

use crate::data::Rng;

/// Decoder resize targets for a 256x256 input (docs/method.md: 3, 8, 15, 32, 63, 127).
pub const DECODER_SIZES: [usize; 6] = [3, 8, 15, 32, 63, 127];
/// Final resize target with padding off (the map size).
pub const OUTPUT_SIZE: usize = 56;
/// Dropout probability after each decoder stage.
pub const DROPOUT: f64 = 0.2;

#[derive(Config, Debug)]
pub struct AutoencoderConfig {
    /// Output channels: the teacher's (384).
    pub out_channels: usize,
    /// Divides the hidden widths (32 and 64); 1 is the paper's network. Larger values give a
    /// tiny autoencoder of the same structure for fast tests (emulated aarch64 runs ~60x slower).
    #[config(default = 1)]
    pub width_divisor: usize,
}

#[derive(Module, Debug)]
pub struct Autoencoder {
    /// Five 4x4 stride-2 convolutions and the 8x8 bottleneck convolution.
    pub encoder: Vec<Conv2d>,
    /// Six 4x4 stage convolutions, then the two 3x3 output convolutions.
    pub decoder: Vec<Conv2d>,
}

impl AutoencoderConfig {
    pub fn init(&self, device: &Device) -> Autoencoder {
        let enc = |ci: usize, co: usize, k: usize, s: usize, p: usize| {
            let padding = if p == 0 {
                PaddingConfig2d::Valid
            } else {
                PaddingConfig2d::Explicit(p, p, p, p)
            };
            Conv2dConfig::new([ci, co], [k, k])
                .with_stride([s, s])
                .with_padding(padding)
                .init(device)
        };
        let d = self.width_divisor.max(1);
        let (w32, w64) = ((32 / d).max(1), (64 / d).max(1));
        let encoder = vec![
            enc(3, w32, 4, 2, 1),
            enc(w32, w32, 4, 2, 1),
            enc(w32, w64, 4, 2, 1),
            enc(w64, w64, 4, 2, 1),
            enc(w64, w64, 4, 2, 1),
            enc(w64, w64, 8, 1, 0),
        ];
        let mut decoder: Vec<Conv2d> = (0..6).map(|_| enc(w64, w64, 4, 1, 2)).collect();
        decoder.push(enc(w64, w64, 3, 1, 1));
        decoder.push(enc(w64, self.out_channels, 3, 1, 1));
        Autoencoder { encoder, decoder }
    }
}

/// The `[out, in]` matrix of a 1-D linear resize with half-pixel centres and no antialiasing
/// (PyTorch's `align_corners=False`, ONNX's `half_pixel`): output `i` mixes the two input
/// samples around `(i + 0.5)·in/out − 0.5`, clamped at 0 and at the last sample.
pub fn linear_resize_matrix(input: usize, out: usize) -> Vec<f32> {
    let mut m = vec![0f32; out * input];
    let scale = input as f64 / out as f64;
    for i in 0..out {
        let src = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let frac = (src - i0 as f64) as f32;
        m[i * input + i0] += 1.0 - frac;
        m[i * input + i1] += frac;
    }
    m
}

/// Bilinear resize with half-pixel centres (align_corners = false), as PyTorch and ONNX's
/// `half_pixel` do, written as two matrix products (rows, then columns). Burn's own bilinear
/// interpolation has no backward pass on its GPU (cubecl) backends; a matrix product has one
/// on every backend, and the operator is the same linear map.
pub fn resize(x: Tensor<4>, size: usize) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let device = x.device();
    let matrix = |input: usize| {
        Tensor::<2>::from_data(
            TensorData::new(linear_resize_matrix(input, size), [size, input]),
            &device,
        )
    };
    // x · Rwᵀ: [n, c, h, w] → [n, c, h, size]; then Rh · that → [n, c, size, size].
    let rw = matrix(w)
        .transpose()
        .unsqueeze::<4>()
        .expand([n, c, w, size]);
    let rh = matrix(h).unsqueeze::<4>().expand([n, c, size, h]);
    rh.matmul(x.matmul(rw))
}

impl Autoencoder {
    /// Inference forward (no dropout).
    ///
    /// # Shapes
    /// - input: `[N, 3, 256, 256]`, ImageNet-normalized.
    /// - output: `[N, C, 56, 56]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.run(x, None)
    }

    /// Training forward: dropout after each decoder stage, its masks drawn from `rng` (not
    /// from the backend's generator, so a seeded or resumed run repeats them exactly).
    pub fn forward_train(&self, x: Tensor<4>, rng: &mut Rng) -> Tensor<4> {
        self.run(x, Some(rng))
    }

    fn run(&self, x: Tensor<4>, mut rng: Option<&mut Rng>) -> Tensor<4> {
        let last = self.encoder.len() - 1;
        let mut x = x;
        for (i, conv) in self.encoder.iter().enumerate() {
            x = conv2d(conv, x);
            if i < last {
                x = relu(x);
            }
        }
        for (conv, size) in self.decoder.iter().zip(DECODER_SIZES) {
            x = relu(conv2d(conv, resize(x, size)));
            if let Some(rng) = rng.as_deref_mut() {
                x = dropout(x, rng);
            }
        }
        let x = resize(x, OUTPUT_SIZE);
        let x = relu(conv2d(&self.decoder[6], x));
        conv2d(&self.decoder[7], x)
    }

    /// All convolutions, encoder first.
    pub fn convs_mut(&mut self) -> impl Iterator<Item = &mut Conv2d> {
        self.encoder.iter_mut().chain(self.decoder.iter_mut())
    }
}

/// Inverted dropout with probability [`DROPOUT`]: kept values are scaled by 1/(1 − p).
fn dropout(x: Tensor<4>, rng: &mut Rng) -> Tensor<4> {
    let dims = x.dims();
    let keep = 1.0 - DROPOUT;
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = (0..dims.iter().product::<usize>())
        .map(|_| if rng.uniform() < keep { scale } else { 0.0 })
        .collect();
    let mask = Tensor::from_data(TensorData::new(mask, dims), &x.device());
    x * mask
}

#[cfg(test)]
mod resize_tests {
    use super::linear_resize_matrix;

    /// PyTorch's `F.interpolate(x, size, mode="linear", align_corners=False)` on [0, 1, 2, 3]
    /// (values computed with torch 2.x and written out here).
    #[test]
    fn linear_resize_matrix_matches_pytorch_half_pixel() {
        let x = [0.0f32, 1.0, 2.0, 3.0];
        let apply = |out: usize| -> Vec<f32> {
            let m = linear_resize_matrix(4, out);
            (0..out)
                .map(|i| (0..4).map(|j| m[i * 4 + j] * x[j]).sum())
                .collect()
        };
        // Upsampling 4 → 6: src = (i + 0.5)·4/6 − 0.5, clamped at 0.
        let up = apply(6);
        let expected = [0.0, 0.5, 1.1666666, 1.8333334, 2.5, 3.0];
        for (a, b) in up.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{up:?}");
        }
        // Downsampling 4 → 3 (no antialiasing): src = (i + 0.5)·4/3 − 0.5.
        let down = apply(3);
        let expected = [0.16666667, 1.5, 2.8333333];
        for (a, b) in down.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{down:?}");
        }
        // Every row sums to one.
        let m = linear_resize_matrix(127, 56);
        for row in m.chunks(127) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }
}
