//! The patch description network (PDN), small and medium, as docs/method.md tables it.
//!
//! Teacher and student share this module and differ only in output channels (384 / 768).
//! Padding is a switch, not a weight: the teacher is distilled with padding on (64x64 output for
//! a 256 input) and deployed with the same weights and padding off (56x56).

use burn::config::Config;
use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};

use crate::model::conv::{conv2d, conv2d_with};
use crate::model::pool::avg_pool;
use burn::nn::pool::{AvgPool2d, AvgPool2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// PDN size: EfficientAD-S or EfficientAD-M.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Variant {
    #[serde(rename = "s")]
    #[default]
    Small,
    #[serde(rename = "m")]
    Medium,
}

impl Variant {
    /// The one-letter name used on the command line and in model.json.
    pub fn letter(self) -> &'static str {
        match self {
            Variant::Small => "s",
            Variant::Medium => "m",
        }
    }

    /// Parses `s`/`m` (either case).
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "s" | "small" => Some(Variant::Small),
            "m" | "medium" => Some(Variant::Medium),
            _ => None,
        }
    }
}

impl std::fmt::Display for Variant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.letter())
    }
}

/// Configuration of a PDN.
#[derive(Config, Debug)]
pub struct PdnConfig {
    pub variant: Variant,
    /// Output channels: 384 for a teacher, 768 for a student.
    pub out_channels: usize,
    /// Zero padding on (distillation) or off (deployment, student training).
    #[config(default = false)]
    pub padding: bool,
    /// Divides every hidden width; 1 is the paper's network. Larger values give tiny networks of
    /// the same structure for fast tests and small fixtures.
    #[config(default = 1)]
    pub width_divisor: usize,
}

/// The PDN. `conv5` and `conv6` exist only in the medium variant.
#[derive(Module, Debug)]
pub struct Pdn {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub conv3: Conv2d,
    pub conv4: Conv2d,
    pub conv5: Option<Conv2d>,
    pub conv6: Option<Conv2d>,
    pub pool: AvgPool2d,
    #[module(skip)]
    pub variant: Variant,
    pub padding: bool,
}

fn conv(ci: usize, co: usize, k: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([ci, co], [k, k]).init(device)
}

impl PdnConfig {
    /// Hidden widths (conv1, conv2, conv3, conv4) before the output convolution(s).
    pub fn widths(&self) -> [usize; 4] {
        let d = self.width_divisor.max(1);
        match self.variant {
            Variant::Small => [128 / d, 256 / d, 256 / d, 0],
            Variant::Medium => [256 / d, 512 / d, 512 / d, 512 / d],
        }
    }

    /// Builds the network with PyTorch's default (Kaiming-uniform) initialization.
    pub fn init(&self, device: &Device) -> Pdn {
        let [w1, w2, w3, w4] = self.widths();
        let out = self.out_channels;
        let (conv3, conv4, conv5, conv6) = match self.variant {
            Variant::Small => (
                conv(w2, w3, 3, device),
                conv(w3, out, 4, device),
                None,
                None,
            ),
            Variant::Medium => (
                conv(w2, w3, 1, device),
                conv(w3, w4, 3, device),
                Some(conv(w4, out, 4, device)),
                Some(conv(out, out, 1, device)),
            ),
        };
        let mut pdn = Pdn {
            conv1: conv(3, w1, 4, device),
            conv2: conv(w1, w2, 4, device),
            conv3,
            conv4,
            conv5,
            conv6,
            pool: AvgPool2dConfig::new([2, 2]).init(),
            variant: self.variant,
            padding: false,
        };
        pdn.set_padding(self.padding);
        pdn
    }
}

fn pad(p: usize) -> PaddingConfig2d {
    if p == 0 {
        PaddingConfig2d::Valid
    } else {
        PaddingConfig2d::Explicit(p, p, p, p)
    }
}

impl Pdn {
    /// Turns zero padding on or off; the weights are untouched.
    pub fn set_padding(&mut self, on: bool) {
        let p = usize::from(on);
        self.padding = on;
        self.conv1.padding = pad(3 * p);
        self.conv2.padding = pad(3 * p);
        self.pool.padding = pad(p);
        match self.variant {
            Variant::Small => {
                self.conv3.padding = pad(p);
                self.conv4.padding = pad(0);
            }
            Variant::Medium => {
                self.conv3.padding = pad(0);
                self.conv4.padding = pad(p);
            }
        }
    }

    /// Number of output channels.
    pub fn out_channels(&self) -> usize {
        let last = self.conv6.as_ref().unwrap_or(&self.conv4);
        last.weight.dims()[0]
    }

    /// The convolutions in order, with their canonical names (`conv1`…).
    pub fn convs(&self) -> Vec<(&'static str, &Conv2d)> {
        let mut out = vec![
            ("conv1", &self.conv1),
            ("conv2", &self.conv2),
            ("conv3", &self.conv3),
            ("conv4", &self.conv4),
        ];
        if let Some(c) = &self.conv5 {
            out.push(("conv5", c));
        }
        if let Some(c) = &self.conv6 {
            out.push(("conv6", c));
        }
        out
    }

    /// The convolutions in order, mutable.
    pub fn convs_mut(&mut self) -> Vec<&mut Conv2d> {
        let mut out = vec![
            &mut self.conv1,
            &mut self.conv2,
            &mut self.conv3,
            &mut self.conv4,
        ];
        out.extend(self.conv5.as_mut());
        out.extend(self.conv6.as_mut());
        out
    }

    /// # Shapes
    /// - input: `[N, 3, H, W]`, ImageNet-normalized.
    /// - output: `[N, C, H/4 - 8, W/4 - 8]` with padding off, `[N, C, H/4, W/4]` with padding on.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let out = self.out_channels();
        self.head(self.trunk(x), 0..out)
    }

    /// Everything before the output convolution.
    ///
    /// # Shapes
    /// - input: `[N, 3, H, W]`, ImageNet-normalized; output `[N, C_hidden, h', w']`.
    pub fn trunk(&self, x: Tensor<4>) -> Tensor<4> {
        let x = avg_pool(&self.pool, relu(conv2d(&self.conv1, x)));
        let x = avg_pool(&self.pool, relu(conv2d(&self.conv2, x)));
        let x = relu(conv2d(&self.conv3, x));
        match &self.conv5 {
            Some(conv5) => relu(conv2d(conv5, relu(conv2d(&self.conv4, x)))),
            None => x,
        }
    }

    /// The output convolution, for the output channels `channels` only: the student's two
    /// halves serve different losses, so a training step computes each half only for the
    /// images whose loss reads it. The result equals `forward(x)` sliced to `channels`.
    ///
    /// # Shapes
    /// - input: `trunk`'s output `[N, C_hidden, h', w']`; output `[N, channels.len(), h, w]`.
    pub fn head(&self, features: Tensor<4>, channels: std::ops::Range<usize>) -> Tensor<4> {
        let last = self.conv6.as_ref().unwrap_or(&self.conv4);
        if channels.start == 0 && channels.end == self.out_channels() {
            return conv2d(last, features);
        }
        let [_, ci, kh, kw] = last.weight.dims();
        let weight = last
            .weight
            .val()
            .slice([channels.clone(), 0..ci, 0..kh, 0..kw]);
        let bias = last.bias.as_ref().map(|b| b.val().slice([channels]));
        conv2d_with(last, weight, bias, features)
    }
}
