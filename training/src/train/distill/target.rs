//! Distillation targets (docs/design.md backbone contract: `image` [N,3,H,W] in [0,1] → a finer
//! and a coarser feature map): each map is unfolded into 3x3 patches (padding 1); every
//! position's C·9 vector is adaptive-average-pooled to 1024; the coarse result is bilinearly
//! upsampled (half-pixel) to the fine grid; the two 1024-vectors are concatenated and pooled
//! to 384. Pooling over features and upsampling over space are both linear and act on
//! different axes, so pooling the coarse map before upsampling gives the same target at a
//! quarter of the work.

use efficientad::model::preprocess::PreprocessError;
use std::path::{Path, PathBuf};

use efficientad::model::session::{CpuOptions, Graph, cpu_session};
use ort::session::Session;
use ort::value::TensorRef;

use super::{BACKBONE_SIZE, DistillError, POOL_DIM};
use crate::data;
use crate::model::{IMAGE_SIZE, TEACHER_CHANNELS};

/// Adaptive average pooling of a vector to `out` bins (PyTorch's bin edges).
pub fn adaptive_pool(input: &[f32], out: usize, dst: &mut [f32]) {
    let n = input.len();
    for (i, d) in dst.iter_mut().enumerate().take(out) {
        let start = i * n / out;
        let end = ((i + 1) * n).div_ceil(out);
        let sum: f32 = input[start..end].iter().sum();
        *d = sum / (end - start) as f32;
    }
}

/// Unfolds 3x3 patches (padding 1) of a `[c, h, w]` map and pools each position's `c·9`
/// vector (index c·9 + ky·3 + kx, as F.unfold) to `dim`: returns `[h·w, dim]`.
pub fn unfold_pool(feat: &[f32], c: usize, h: usize, w: usize, dim: usize) -> Vec<f32> {
    let mut out = vec![0f32; h * w * dim];
    let mut v = vec![0f32; c * 9];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (sy, sx) = (y as isize + ky as isize - 1, x as isize + kx as isize - 1);
                        v[ch * 9 + ky * 3 + kx] =
                            if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                                feat[ch * h * w + sy as usize * w + sx as usize]
                            } else {
                                0.0
                            };
                    }
                }
            }
            let p = y * w + x;
            adaptive_pool(&v, dim, &mut out[p * dim..(p + 1) * dim]);
        }
    }
    out
}

/// Half-pixel bilinear resize of `[h·w, dim]` position-major vectors to `[th·tw, dim]`.
pub(crate) fn upsample_positions(
    src: &[f32],
    h: usize,
    w: usize,
    dim: usize,
    th: usize,
    tw: usize,
) -> Vec<f32> {
    let axis = |dst: usize, n: usize| -> Vec<(usize, usize, f32)> {
        (0..dst)
            .map(|i| {
                let s = ((i as f64 + 0.5) * n as f64 / dst as f64 - 0.5).max(0.0);
                let lo = (s.floor() as usize).min(n - 1);
                (lo, (lo + 1).min(n - 1), (s - lo as f64) as f32)
            })
            .collect()
    };
    let (ys, xs) = (axis(th, h), axis(tw, w));
    let mut out = vec![0f32; th * tw * dim];
    for (ty, &(y0, y1, fy)) in ys.iter().enumerate() {
        for (tx, &(x0, x1, fx)) in xs.iter().enumerate() {
            let o = &mut out[(ty * tw + tx) * dim..(ty * tw + tx + 1) * dim];
            let at = |y: usize, x: usize| &src[(y * w + x) * dim..(y * w + x + 1) * dim];
            let (a, b, c, d) = (at(y0, x0), at(y0, x1), at(y1, x0), at(y1, x1));
            for k in 0..dim {
                let top = a[k] + (b[k] - a[k]) * fx;
                let bottom = c[k] + (d[k] - c[k]) * fx;
                o[k] = top + (bottom - top) * fy;
            }
        }
    }
    out
}

/// The distillation target `[out, h1·w1]` (channel-major) from fine `[c1, h1, w1]` and coarse
/// `[c2, h2, w2]` backbone features.
#[allow(clippy::too_many_arguments)]
pub fn patch_target(
    fine: &[f32],
    (c1, h1, w1): (usize, usize, usize),
    coarse: &[f32],
    (c2, h2, w2): (usize, usize, usize),
    dim: usize,
    out: usize,
) -> Vec<f32> {
    let f = unfold_pool(fine, c1, h1, w1, dim);
    let c = upsample_positions(&unfold_pool(coarse, c2, h2, w2, dim), h2, w2, dim, h1, w1);
    let positions = h1 * w1;
    let mut target = vec![0f32; out * positions];
    let mut both = vec![0f32; 2 * dim];
    let mut pooled = vec![0f32; out];
    for p in 0..positions {
        both[..dim].copy_from_slice(&f[p * dim..(p + 1) * dim]);
        both[dim..].copy_from_slice(&c[p * dim..(p + 1) * dim]);
        adaptive_pool(&both, out, &mut pooled);
        for (k, v) in pooled.iter().enumerate() {
            target[k * positions + p] = *v;
        }
    }
    target
}

/// How the distillation target is made from the backbone's features; recorded with the
/// teacher, since the gauge and `distill-teacher` must build the same target.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TargetOptions {
    /// Backbone input side (the paper: 512, giving the 64² grid a padded PDN outputs at 256²).
    pub size: usize,
    /// Each image's global brightness and contrast are normalized before both networks see
    /// it ([`data::normalize_exposure`]).
    #[serde(default)]
    pub normalize_exposure: bool,
}

impl Default for TargetOptions {
    fn default() -> Self {
        Self {
            size: BACKBONE_SIZE,
            normalize_exposure: false,
        }
    }
}

impl TargetOptions {
    pub fn describe(&self) -> String {
        format!(
            "{0}x{0} input, exposure {1}",
            self.size,
            if self.normalize_exposure {
                "normalized"
            } else {
                "as captured"
            }
        )
    }
}

/// One image in both views: backbone input (`options.size`²) and PDN input (256²), CHW in
/// [0, 1] (exposure-normalized when the options say so).
pub fn views(
    path: &Path,
    gray: bool,
    options: &TargetOptions,
) -> Result<(Vec<f32>, Vec<f32>), PreprocessError> {
    let img = efficientad::model::preprocess::decode_file(path)?;
    let mut big = efficientad::model::preprocess::Preprocessor::new(options.size);
    let mut small = efficientad::model::preprocess::Preprocessor::new(IMAGE_SIZE);
    let mut b = data::to_chw(&big.prepare_vec(img.clone())?, options.size);
    let mut s = data::to_chw(&small.prepare_vec(img)?, IMAGE_SIZE);
    if gray {
        data::grayscale(&mut b);
        data::grayscale(&mut s);
    }
    if options.normalize_exposure {
        data::normalize_exposure(&mut b);
        data::normalize_exposure(&mut s);
    }
    Ok((b, s))
}

/// The frozen backbone in ONNX Runtime.
pub struct Backbone {
    session: Session,
    path: PathBuf,
    /// Target channels: the teacher's outputs (384; fewer for narrowed test teachers).
    channels: usize,
}

impl Backbone {
    pub fn open(path: &Path) -> Result<Self, DistillError> {
        let err = |e: efficientad::Cause| DistillError::Backbone {
            path: path.to_owned(),
            source: e,
        };
        // Backbone runs alternate with Burn's work on the same cores: ONNX Runtime's threads
        // must sleep between runs rather than spin.
        let options = CpuOptions {
            no_spinning: true,
            ..CpuOptions::default()
        };
        let session = cpu_session(Graph::File(path), options).map_err(|e| err(e.into()))?;
        let names: Vec<&str> = session.outputs().iter().map(|o| o.name()).collect();
        if session.inputs().first().map(|i| i.name()) != Some("image") || names.len() < 2 {
            return Err(err(format!(
                "expected input `image` and a finer and a coarser feature output, found outputs {names:?}"
            ).into()));
        }
        Ok(Self {
            session,
            path: path.to_owned(),
            channels: TEACHER_CHANNELS,
        })
    }

    /// Targets pooled to `channels` instead of 384 (a narrowed test teacher's outputs).
    pub fn with_channels(mut self, channels: usize) -> Self {
        self.channels = channels.max(1);
        self
    }

    pub fn channels(&self) -> usize {
        self.channels
    }

    /// The two raw feature maps of a batch of CHW images at `size`²: fine and coarse values
    /// (`[n, c, h, w]` each, flattened) with their `(c, h, w)`.
    #[allow(clippy::type_complexity)]
    pub fn features(
        &mut self,
        batch: &[f32],
        n: usize,
        size: usize,
    ) -> Result<
        (
            (Vec<f32>, (usize, usize, usize)),
            (Vec<f32>, (usize, usize, usize)),
        ),
        DistillError,
    > {
        let s = size;
        let path = self.path.clone();
        let error = |e: efficientad::Cause| DistillError::Backbone {
            path: path.clone(),
            source: e,
        };
        let input =
            TensorRef::from_array_view(([n, 3, s, s], batch)).map_err(|e| error(e.into()))?;
        let outputs = self
            .session
            .run(ort::inputs!["image" => input])
            .map_err(|e| error(e.into()))?;
        let mut maps = Vec::with_capacity(2);
        for output in [&outputs[0], &outputs[1]] {
            let (shape, values) = output
                .try_extract_tensor::<f32>()
                .map_err(|e| error(e.into()))?;
            if shape.len() != 4 || shape[0] as usize != n {
                return Err(error(
                    format!("a feature output has shape {shape:?}, expected [{n}, C, H, W]").into(),
                ));
            }
            let dims = (shape[1] as usize, shape[2] as usize, shape[3] as usize);
            maps.push((values.to_vec(), dims));
        }
        let coarse = maps.pop().unwrap_or_default();
        let fine = maps.pop().unwrap_or_default();
        Ok((fine, coarse))
    }

    /// Targets for a batch of CHW images at `size`², each `[channels, (size/8)²]` (384 x 64² at
    /// the paper's 512).
    pub fn targets(
        &mut self,
        batch: &[f32],
        n: usize,
        size: usize,
    ) -> Result<Vec<Vec<f32>>, DistillError> {
        let ((fine, fd), (coarse, cd)) = self.features(batch, n, size)?;
        let (fl, cl) = (fd.0 * fd.1 * fd.2, cd.0 * cd.1 * cd.2);
        Ok((0..n)
            .map(|i| {
                patch_target(
                    &fine[i * fl..(i + 1) * fl],
                    fd,
                    &coarse[i * cl..(i + 1) * cl],
                    cd,
                    POOL_DIM,
                    self.channels,
                )
            })
            .collect())
    }
}
