//! From raw maps to the anomaly map, the image score and the verdict (docs/method.md, Inference).
//!
//! - quantiles are exact: sort ascending, pos = q·(n−1), linear interpolation (no sampling);
//! - each map is normalized with its own (q_a, q_b): M̂ = 0.1·(M − q_a)/(q_b − q_a);
//! - combined M = 0.5·M̂_ST + 0.5·M̂_AE; the image score is its maximum (the maximum survives
//!   the resize unchanged, so the score never needs the full-size map);
//! - for display and segmentation the 56x56 map is padded with 4 zeros per side (undoing the
//!   PDN's shrinkage without padding) and bilinearly resized (half-pixel) to the image size.

use serde::{Deserialize, Serialize};

/// The two quantiles of docs/method.md.
pub const Q_A: f64 = 0.9;
pub const Q_B: f64 = 0.995;
/// Zeros added on each side of the map before resizing.
pub const MAP_PAD: usize = 4;

/// Normalization constants of one map.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantiles {
    pub q_a: f64,
    pub q_b: f64,
}

/// Normalization constants of both maps.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapNormalization {
    pub st: Quantiles,
    pub ae: Quantiles,
}

/// The q-quantile of ascending `sorted` values (pos = q·(n−1), linear interpolation).
/// Returns NaN for an empty slice.
pub fn quantile_sorted(sorted: &[f32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    let frac = pos - lo as f64;
    let (a, b) = (f64::from(sorted[lo]), f64::from(sorted[hi]));
    a + (b - a) * frac
}

/// Sorts `values` (NaN last) and returns its Q_A and Q_B quantiles.
pub fn map_quantiles(values: &mut [f32]) -> Quantiles {
    values.sort_unstable_by(|a, b| a.total_cmp(b));
    Quantiles {
        q_a: quantile_sorted(values, Q_A),
        q_b: quantile_sorted(values, Q_B),
    }
}

impl MapNormalization {
    /// Combined map from the two raw maps (same length), written into `out`.
    pub fn combine_into(&self, st: &[f32], ae: &[f32], out: &mut Vec<f32>) {
        let (sa, ss) = scale(self.st);
        let (aa, asc) = scale(self.ae);
        out.clear();
        out.extend(st.iter().zip(ae).map(|(&s, &a)| {
            let s = (f64::from(s) - sa) * ss;
            let a = (f64::from(a) - aa) * asc;
            (0.5 * s + 0.5 * a) as f32
        }));
    }

    pub fn combine(&self, st: &[f32], ae: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(st.len());
        self.combine_into(st, ae, &mut out);
        out
    }
}

/// (offset, factor) with M̂ = (M − offset)·factor = 0.1·(M − q_a)/(q_b − q_a).
fn scale(q: Quantiles) -> (f64, f64) {
    (q.q_a, 0.1 / (q.q_b - q.q_a))
}

/// Image score: the maximum of the combined map (NaN if the map holds NaN).
pub fn score(combined: &[f32]) -> f32 {
    combined.iter().copied().fold(f32::NEG_INFINITY, |m, v| {
        if v.is_nan() || m.is_nan() {
            f32::NAN
        } else {
            m.max(v)
        }
    })
}

/// Pads a `size`x`size` map with [`MAP_PAD`] zeros per side and resizes it bilinearly
/// (half-pixel centres, as PyTorch's `align_corners=False`) to `width`x`height`.
pub fn to_image_size(map: &[f32], size: usize, width: usize, height: usize) -> Vec<f32> {
    to_image_size_padded(map, size, MAP_PAD, width, height)
}

/// [`to_image_size`] with `pad` zero cells per side: 0 for a map whose grid already covers the
/// whole image (the feature maps `efficientad-train gauge` scores).
pub fn to_image_size_padded(
    map: &[f32],
    size: usize,
    pad: usize,
    width: usize,
    height: usize,
) -> Vec<f32> {
    let padded_size = size + 2 * pad;
    let mut padded = vec![0f32; padded_size * padded_size];
    for y in 0..size {
        let row = &map[y * size..(y + 1) * size];
        let start = (y + pad) * padded_size + pad;
        padded[start..start + size].copy_from_slice(row);
    }
    resize_bilinear(&padded, padded_size, padded_size, width, height)
}

/// Source index pairs and weights of a half-pixel linear resize along one axis.
fn axis_weights(src: usize, dst: usize) -> Vec<(usize, usize, f32)> {
    let scale = src as f64 / dst as f64;
    (0..dst)
        .map(|i| {
            let x = ((i as f64 + 0.5) * scale - 0.5).max(0.0);
            let lo = (x.floor() as usize).min(src - 1);
            let hi = (lo + 1).min(src - 1);
            (lo, hi, (x - lo as f64) as f32)
        })
        .collect()
}

/// Bilinear resize of a row-major `sw`x`sh` plane, half-pixel centres, edges clamped.
pub fn resize_bilinear(src: &[f32], sw: usize, sh: usize, dw: usize, dh: usize) -> Vec<f32> {
    let xs = axis_weights(sw, dw);
    let ys = axis_weights(sh, dh);
    // Horizontal pass per source row, then vertical blend of two rows.
    let mut rows = vec![0f32; sh * dw];
    for y in 0..sh {
        let s = &src[y * sw..(y + 1) * sw];
        let d = &mut rows[y * dw..(y + 1) * dw];
        for (out, &(lo, hi, t)) in d.iter_mut().zip(&xs) {
            *out = s[lo] + (s[hi] - s[lo]) * t;
        }
    }
    let mut out = vec![0f32; dw * dh];
    for (y, &(lo, hi, t)) in ys.iter().enumerate() {
        let (a, b) = (&rows[lo * dw..(lo + 1) * dw], &rows[hi * dw..(hi + 1) * dw]);
        for (x, o) in out[y * dw..(y + 1) * dw].iter_mut().enumerate() {
            *o = a[x] + (b[x] - a[x]) * t;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_linearly() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile_sorted(&v, 0.0), 1.0);
        assert_eq!(quantile_sorted(&v, 1.0), 5.0);
        assert_eq!(quantile_sorted(&v, 0.5), 3.0);
        // pos = 0.9 * 4 = 3.6 → 4 + 0.6
        assert!((quantile_sorted(&v, 0.9) - 4.6).abs() < 1e-12);
        assert_eq!(quantile_sorted(&[7.0], 0.995), 7.0);
        assert!(quantile_sorted(&[], 0.5).is_nan());
    }

    #[test]
    fn combination_follows_the_formula() {
        let norm = MapNormalization {
            st: Quantiles { q_a: 1.0, q_b: 3.0 },
            ae: Quantiles { q_a: 0.0, q_b: 0.1 },
        };
        // st: 0.1·(2−1)/2 = 0.05; ae: 0.1·(0.2−0)/0.1 = 0.2; mean = 0.125
        let c = norm.combine(&[2.0], &[0.2]);
        assert!((c[0] - 0.125).abs() < 1e-6);
    }

    #[test]
    fn resize_matches_half_pixel_reference_values() {
        // 2x1 → 4x1: PyTorch bilinear (align_corners=False) gives [0, 0.25, 0.75, 1].
        let out = resize_bilinear(&[0.0, 1.0], 2, 1, 4, 1);
        assert_eq!(out, vec![0.0, 0.25, 0.75, 1.0]);
        // Identity size is the identity.
        let src: Vec<f32> = (0..12).map(|v| v as f32).collect();
        assert_eq!(resize_bilinear(&src, 4, 3, 4, 3), src);
    }

    #[test]
    fn padded_map_keeps_its_maximum_inside() {
        let mut map = vec![0f32; 56 * 56];
        map[28 * 56 + 28] = 1.0;
        let full = to_image_size(&map, 56, 64, 64);
        assert_eq!(full.len(), 64 * 64);
        assert_eq!(full[32 * 64 + 32], 1.0);
        assert_eq!(full[0], 0.0);
    }
}
