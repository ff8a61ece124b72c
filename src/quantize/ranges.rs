//! Activation ranges: a histogram per tensor over every value the fp32 graph produced on the
//! calibration images, and the uint8 quantization parameters chosen from it.
//!
//! The histogram has a fixed number of equal-width bins on each side of zero; when a value
//! beyond the covered range arrives, the bin width doubles and neighbouring bins merge, so one
//! pass over the images suffices and memory stays constant however many values are seen.

/// Bins on each side of zero.
const BINS: usize = 4096;

/// Value counts of one tensor over all calibration images.
#[derive(Clone, Debug)]
pub struct Histogram {
    /// Counts of values in [i·width, (i+1)·width) (zero included in bin 0).
    positive: Vec<u64>,
    /// Counts of magnitudes of negative values, same bins.
    negative: Vec<u64>,
    width: f32,
    count: u64,
    min: f32,
    max: f32,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            positive: vec![0; BINS],
            negative: vec![0; BINS],
            width: 0.0,
            count: 0,
            min: f32::INFINITY,
            max: f32::NEG_INFINITY,
        }
    }
}

/// How the range of an activation is chosen from its histogram.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RangeRule {
    /// The smallest range holding this percentage of the values on each side (100: min–max).
    Percentile(f64),
}

impl std::fmt::Display for RangeRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RangeRule::Percentile(p) if *p >= 100.0 => f.write_str("min-max"),
            RangeRule::Percentile(p) => write!(f, "percentile {p}"),
        }
    }
}

impl Histogram {
    /// Adds values; non-finite ones are an error (the fp32 graph itself is broken then).
    pub fn add(&mut self, values: &[f32]) -> Result<(), String> {
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for &v in values {
            if !v.is_finite() {
                return Err("the fp32 graph produced a NaN or infinite activation".into());
            }
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if values.is_empty() {
            return Ok(());
        }
        self.min = self.min.min(lo);
        self.max = self.max.max(hi);
        let reach = hi.max(-lo);
        if self.width == 0.0 {
            // First values: the range they span, with room to grow without merging at once.
            self.width = (reach / BINS as f32).max(f32::MIN_POSITIVE);
        }
        while reach >= self.width * BINS as f32 {
            self.double();
        }
        let inv = 1.0 / self.width;
        for &v in values {
            let (bins, m) = if v >= 0.0 {
                (&mut self.positive, v)
            } else {
                (&mut self.negative, -v)
            };
            let i = ((m * inv) as usize).min(BINS - 1);
            bins[i] += 1;
        }
        self.count += values.len() as u64;
        Ok(())
    }

    fn double(&mut self) {
        for bins in [&mut self.positive, &mut self.negative] {
            for i in 0..BINS / 2 {
                bins[i] = bins[2 * i] + bins[2 * i + 1];
            }
            bins[BINS / 2..].iter_mut().for_each(|c| *c = 0);
        }
        self.width *= 2.0;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The range `[lo, hi]` (lo ≤ 0 ≤ hi, as uint8 quantization must represent zero exactly).
    pub fn range(&self, rule: RangeRule) -> (f32, f32) {
        if self.count == 0 {
            return (0.0, 0.0);
        }
        let RangeRule::Percentile(p) = rule;
        if p >= 100.0 {
            return (self.min.min(0.0), self.max.max(0.0));
        }
        // Values allowed beyond each end.
        let tail = ((1.0 - p / 100.0) * self.count as f64) as u64;
        let edge = |bins: &[u64], extreme: f32| -> f32 {
            let mut above = 0u64;
            for i in (0..BINS).rev() {
                above += bins[i];
                if above > tail {
                    return ((i + 1) as f32 * self.width).min(extreme);
                }
            }
            0.0
        };
        let hi = edge(&self.positive, self.max.max(0.0));
        let lo = -edge(&self.negative, (-self.min).max(0.0));
        (lo, hi)
    }
}

/// uint8 quantization of one tensor: `x ≈ (q − zero_point)·scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QParams {
    pub scale: f32,
    pub zero_point: u8,
}

impl QParams {
    /// Parameters covering `[lo, hi]` (widened to hold zero) with zero represented exactly.
    pub fn covering(lo: f32, hi: f32) -> Self {
        let (lo, hi) = (lo.min(0.0), hi.max(0.0));
        // A tensor that was always zero still needs a positive scale.
        let scale = ((hi - lo) / 255.0).max(1e-8);
        let zero_point = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        Self { scale, zero_point }
    }

    pub fn quantize(&self, x: f32) -> u8 {
        (x / self.scale + f32::from(self.zero_point))
            .round()
            .clamp(0.0, 255.0) as u8
    }

    pub fn dequantize(&self, q: u8) -> f32 {
        (f32::from(q) - f32::from(self.zero_point)) * self.scale
    }
}

/// Per-output-channel symmetric int8 weights of a convolution `[out, …]`: `w ≈ q·scale[o]`
/// with q in −127..=127 (−128 unused, so the range is symmetric).
pub fn quantize_weights(weights: &[f32], out_channels: usize) -> (Vec<i8>, Vec<f32>) {
    let per = weights.len() / out_channels.max(1);
    let mut q = Vec::with_capacity(weights.len());
    let mut scales = Vec::with_capacity(out_channels);
    for chunk in weights.chunks(per.max(1)) {
        let reach = chunk.iter().fold(0.0f32, |m, w| m.max(w.abs()));
        let scale = if reach > 0.0 { reach / 127.0 } else { 1.0 };
        scales.push(scale);
        q.extend(
            chunk
                .iter()
                .map(|w| (w / scale).round().clamp(-127.0, 127.0) as i8),
        );
    }
    (q, scales)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_max_and_percentile_ranges_match_sorted_values() {
        // 0..10,000 / 100 and −(0..1,000)/100: known quantiles.
        let pos: Vec<f32> = (0..10_000).map(|i| i as f32 / 100.0).collect();
        let neg: Vec<f32> = (1..=1_000).map(|i| -(i as f32) / 100.0).collect();
        let mut h = Histogram::default();
        // Small values first, so the bins must grow and merge on the way.
        h.add(&pos[..100]).expect("finite");
        h.add(&neg).expect("finite");
        h.add(&pos[100..]).expect("finite");
        assert_eq!(h.count(), 11_000);
        assert_eq!(h.range(RangeRule::Percentile(100.0)), (-10.0, 99.99));
        // 99.9 %: 11 values may lie beyond each end → hi just above 99.88, lo near −9.89.
        let (lo, hi) = h.range(RangeRule::Percentile(99.9));
        let bin = 2.0 * 99.99 / BINS as f32 * 2.0;
        assert!((hi - 99.89).abs() < bin, "hi {hi}");
        assert!((lo + 9.90).abs() < bin, "lo {lo}");
    }

    #[test]
    fn nonnegative_activations_get_zero_point_zero() {
        let p = QParams::covering(0.0, 6.0);
        assert_eq!(p.zero_point, 0);
        assert_eq!(p.quantize(-1.0), 0, "negatives clamp to 0 like a ReLU");
        assert!((p.dequantize(p.quantize(3.1)) - 3.1).abs() <= p.scale / 2.0 + 1e-6);
        let p = QParams::covering(-1.0, 3.0);
        assert_eq!(p.dequantize(p.zero_point), 0.0);
        assert_eq!(p.zero_point, 64);
    }

    #[test]
    fn weights_are_per_channel_symmetric() {
        let w = [0.5, -1.0, 0.25, 0.03, 0.01, -0.04];
        let (q, s) = quantize_weights(&w, 2);
        assert_eq!(s, [1.0 / 127.0, 0.04 / 127.0]);
        // 0.5·127 = 63.5 → 64; 0.03/0.04·127 = 95.25 → 95; 0.01/0.04·127 = 31.75 → 32.
        assert_eq!(q, [64, -127, 32, 95, 32, -127]);
    }

    #[test]
    fn non_finite_values_are_refused() {
        assert!(Histogram::default().add(&[1.0, f32::NAN]).is_err());
    }
}
