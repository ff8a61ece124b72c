//! The distillation target itself as the teacher (`fit --teacher target:BACKBONE.onnx`,
//! docs in README "Teacher"): the frozen backbone and the fixed construction of
//! [`crate::train::distill::patch_target`] (3x3 unfold, pooled to 384 channels), run on the PDN's own
//! 256² input and laid onto the student's 56² grid. Nothing is distilled: the teacher is
//! exactly what a distilled PDN could at best reproduce.
//!
//! The feature grid at 256² is 32² (stride 8). It is resized (half-pixel bilinear) to 64² —
//! stride 4, the PDN's — and the centre 56² kept: cell i then sits at pixel 4i + 17.5, the
//! PDN's at 4i + 16, a pixel and a half apart.
//!
//! In training the map runs in ONNX Runtime and Rust ([`TargetTeacher::raw`]); in the
//! exported graph the same linear map is two 3x3 convolutions ([`linear_map`]), resizes and a
//! crop (`export::graph`), checked against each other by a test.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::model::{IMAGE_SIZE, TEACHER_CHANNELS};
use crate::train::distill::{Backbone, DistillError, POOL_DIM, patch_target};

/// `--teacher target:FILE.onnx` names a backbone instead of a teacher checkpoint.
pub const TARGET_PREFIX: &str = "target:";
/// Side of the maps every teacher gives the student (the PDN's output at 256², padding off).
pub const MAP_SIZE: usize = 56;

/// The backbone path when `teacher` is written `target:FILE.onnx`.
pub fn target_path(teacher: &Path) -> Option<PathBuf> {
    teacher
        .to_str()
        .and_then(|s| s.strip_prefix(TARGET_PREFIX))
        .map(PathBuf::from)
}

/// What the exported graph needs to rebuild the teacher: recorded in the checkpoint's and
/// the bundle's teacher provenance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetShape {
    /// Channels of the backbone's finer and coarser feature outputs.
    pub fine_channels: usize,
    pub coarse_channels: usize,
    /// Side of the finer feature grid at 256² (the coarser one is resized to it).
    pub grid: usize,
}

impl TargetShape {
    /// Offset of the 56² crop in the twice-resized grid.
    pub fn crop_offset(&self) -> usize {
        (2 * self.grid - MAP_SIZE) / 2
    }
}

/// The frozen backbone with the fixed target construction, as a teacher.
pub struct TargetTeacher {
    /// ONNX Runtime sessions need `&mut` to run; steps borrow the teacher shared.
    backbone: Mutex<Backbone>,
    pub path: PathBuf,
    pub sha256: String,
    pub shape: TargetShape,
}

impl TargetTeacher {
    /// Opens the backbone and finds its feature shapes at 256²; the finer grid must be at
    /// least 28² so that the resized grid covers the 56² the student outputs.
    pub fn open(path: &Path) -> Result<Self, DistillError> {
        let mut backbone = Backbone::open(path)?;
        let probe = vec![0.5f32; 3 * IMAGE_SIZE * IMAGE_SIZE];
        let ((_, fd), (_, cd)) = backbone.features(&probe, 1, IMAGE_SIZE)?;
        if fd.1 != fd.2 || 2 * fd.1 < MAP_SIZE || cd.1 > fd.1 {
            return Err(DistillError::Backbone {
                path: path.to_owned(),
                source: format!(
                    "at {IMAGE_SIZE}x{IMAGE_SIZE} its feature maps are {}x{} and {}x{}; a target teacher needs a square finer map of at least {}x{} (stride 8 gives 32x32) and a coarser one no larger",
                    fd.1,
                    fd.2,
                    cd.1,
                    cd.2,
                    MAP_SIZE / 2,
                    MAP_SIZE / 2
                )
                .into(),
            });
        }
        let sha256 =
            efficientad::model::bundle::file_sha256(path).map_err(|e| DistillError::Backbone {
                path: path.to_owned(),
                source: e.into(),
            })?;
        Ok(Self {
            backbone: Mutex::new(backbone),
            path: path.to_owned(),
            sha256,
            shape: TargetShape {
                fine_channels: fd.0,
                coarse_channels: cd.0,
                grid: fd.1,
            },
        })
    }

    pub fn channels(&self) -> usize {
        TEACHER_CHANNELS
    }

    /// Teacher outputs (raw, before μ/σ) of a CHW image at 256² in [0, 1]: `[384·56·56]`.
    pub fn raw(&self, chw: &[f32]) -> Result<Vec<f32>, DistillError> {
        let mut backbone = self
            .backbone
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let ((fine, fd), (coarse, cd)) = backbone.features(chw, 1, IMAGE_SIZE)?;
        let target = patch_target(&fine, fd, &coarse, cd, POOL_DIM, self.channels());
        Ok(onto_student_grid(&target, self.channels(), &self.shape))
    }
}

/// `[c, grid²]` channel-major target → `[c, 56, 56]`: each plane resized to (2·grid)²
/// (half-pixel bilinear) and centre-cropped.
pub fn onto_student_grid(target: &[f32], channels: usize, shape: &TargetShape) -> Vec<f32> {
    let (g, big, off) = (shape.grid, 2 * shape.grid, shape.crop_offset());
    let mut out = Vec::with_capacity(channels * MAP_SIZE * MAP_SIZE);
    for plane in target.chunks(g * g).take(channels) {
        let resized = crate::train::distill::upsample_positions(plane, g, g, 1, big, big);
        for y in off..off + MAP_SIZE {
            out.extend_from_slice(&resized[y * big + off..y * big + off + MAP_SIZE]);
        }
    }
    out
}

/// Bins of adaptive average pooling from `n` values to `m` (PyTorch's edges, as
/// [`crate::train::distill::adaptive_pool`]).
fn bins(n: usize, m: usize) -> Vec<(usize, usize)> {
    (0..m)
        .map(|i| (i * n / m, ((i + 1) * n).div_ceil(m)))
        .collect()
}

/// The target construction as two 3x3 convolutions (padding 1), weights `[out, c, 3, 3]`:
/// output channel k is the mean over its bin of the 2·`dim` pooled values, each the mean over
/// its bin of the unfolded vector (index c·9 + ky·3 + kx, which is exactly a convolution
/// weight's layout). The first `dim` pooled values come from the finer map, the rest from the
/// coarser one, so target = conv_fine(fine) + resize(conv_coarse(coarse)).
pub fn linear_map(c1: usize, c2: usize, dim: usize, out: usize) -> (Vec<f32>, Vec<f32>) {
    let (n1, n2) = (c1 * 9, c2 * 9);
    let (a1, a2, b) = (bins(n1, dim), bins(n2, dim), bins(2 * dim, out));
    let mut fine = vec![0f64; out * n1];
    let mut coarse = vec![0f64; out * n2];
    for (k, &(start, end)) in b.iter().enumerate() {
        let outer = 1.0 / (end - start) as f64;
        for j in start..end {
            let (weights, n, (s, e)) = if j < dim {
                (&mut fine, n1, a1[j])
            } else {
                (&mut coarse, n2, a2[j - dim])
            };
            let w = outer / (e - s) as f64;
            for i in s..e {
                weights[k * n + i] += w;
            }
        }
    }
    let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect();
    (f32s(fine), f32s(coarse))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The convolution weights reproduce the pooling path on random features, position by
    /// position (no resize involved: both maps on one grid, the coarse one 1x1 upsampled).
    #[test]
    fn linear_map_equals_the_pooling_construction() {
        let (c1, c2, h, w, dim, out) = (7, 5, 4, 3, 16, 10);
        let mut rng = crate::data::Rng::new(3);
        let mut draw =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect() };
        let fine = draw(c1 * h * w);
        let coarse = draw(c2 * h * w);
        let reference = patch_target(&fine, (c1, h, w), &coarse, (c2, h, w), dim, out);
        let (wf, wc) = linear_map(c1, c2, dim, out);
        let conv = |x: &[f32], c: usize, weight: &[f32], k: usize, y: usize, xx: usize| {
            let mut sum = 0f64;
            for ch in 0..c {
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (sy, sx) =
                            (y as isize + ky as isize - 1, xx as isize + kx as isize - 1);
                        if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                            sum += f64::from(weight[k * c * 9 + ch * 9 + ky * 3 + kx])
                                * f64::from(x[ch * h * w + sy as usize * w + sx as usize]);
                        }
                    }
                }
            }
            sum
        };
        for k in 0..out {
            for y in 0..h {
                for x in 0..w {
                    let got = conv(&fine, c1, &wf, k, y, x) + conv(&coarse, c2, &wc, k, y, x);
                    let want = f64::from(reference[k * h * w + y * w + x]);
                    assert!(
                        (got - want).abs() < 1e-5,
                        "k {k} ({y},{x}): {got} vs {want}"
                    );
                }
            }
        }
        // Every output is a mean: its weights sum to one.
        for k in 0..out {
            let total: f32 = wf[k * c1 * 9..(k + 1) * c1 * 9].iter().sum::<f32>()
                + wc[k * c2 * 9..(k + 1) * c2 * 9].iter().sum::<f32>();
            assert!((total - 1.0).abs() < 1e-5, "channel {k} sums to {total}");
        }
    }

    #[test]
    fn a_constant_target_stays_constant_on_the_student_grid() {
        let shape = TargetShape {
            fine_channels: 1,
            coarse_channels: 1,
            grid: 32,
        };
        let target: Vec<f32> = (0..2).flat_map(|c| vec![c as f32 + 0.5; 32 * 32]).collect();
        let out = onto_student_grid(&target, 2, &shape);
        assert_eq!(out.len(), 2 * 56 * 56);
        assert!(out[..56 * 56].iter().all(|&v| v == 0.5));
        assert!(out[56 * 56..].iter().all(|&v| v == 1.5));
    }
}
