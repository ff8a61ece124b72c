//! The training losses of docs/method.md, as functions of network outputs, so they can be checked
//! against an independent reference on fixed weights and inputs.

use burn::tensor::Tensor;

/// Quantile of the hard feature loss.
pub const HARD_QUANTILE: f64 = 0.999;

/// The exact q-quantile (pos = q·(n−1), linear interpolation) of `values`, reordering them.
pub fn quantile(values: &mut [f32], q: f64) -> f32 {
    let n = values.len();
    if n == 0 {
        return f32::NAN;
    }
    let pos = q * (n - 1) as f64;
    let lo = pos.floor() as usize;
    let frac = pos - lo as f64;
    let (_, &mut a, rest) = values.select_nth_unstable_by(lo, |x, y| x.total_cmp(y));
    // The next order statistic is the smallest of what lies above position `lo`.
    let b = rest.iter().copied().fold(f32::INFINITY, f32::min);
    let b = if b.is_finite() { b } else { a };
    (f64::from(a) + (f64::from(b) - f64::from(a)) * frac) as f32
}

/// What the hard loss selected.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HardSelection {
    /// d_hard: the 0.999-quantile of all squared differences.
    pub threshold: f32,
    /// Number of elements at or above it.
    pub selected: usize,
}

/// L_hard: mean of D = (T̂ − S)² over the elements with D ≥ its 0.999-quantile (the quantile
/// itself carries no gradient).
///
/// # Shapes
/// - `teacher`, `student`: `[N, C, H, W]` (student already sliced to the first C channels).
pub fn hard_loss(teacher: Tensor<4>, student: Tensor<4>) -> (Tensor<1>, HardSelection) {
    let d = (teacher - student).powi_scalar(2);
    let mut values = d
        .clone()
        .into_data()
        .try_to_vec::<f32>()
        .unwrap_or_default();
    let threshold = quantile(&mut values, HARD_QUANTILE);
    let selected = values.iter().filter(|&&v| v >= threshold).count().max(1);
    let mask = d.clone().greater_equal_elem(threshold).float();
    let loss = (d * mask).sum() / selected as f32;
    (
        loss,
        HardSelection {
            threshold,
            selected,
        },
    )
}

/// L_pen = mean(S(P)[:C]²) on a natural image.
pub fn penalty_loss(student_on_penalty: Tensor<4>) -> Tensor<1> {
    student_on_penalty.powi_scalar(2).mean()
}

/// Mean squared error.
pub fn mse(a: Tensor<4>, b: Tensor<4>) -> Tensor<1> {
    (a - b).powi_scalar(2).mean()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_matches_the_sorted_definition() {
        let mut v: Vec<f32> = (0..1001).rev().map(|i| i as f32).collect();
        assert_eq!(quantile(&mut v, 0.999), 999.0);
        let mut v = vec![3.0, 1.0, 2.0, 4.0];
        // pos = 0.5·3 = 1.5 → 2.5
        assert_eq!(quantile(&mut v, 0.5), 2.5);
        let mut v = vec![5.0];
        assert_eq!(quantile(&mut v, 0.999), 5.0);
    }
}
