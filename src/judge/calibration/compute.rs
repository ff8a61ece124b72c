//! The calibration maths: map-normalization quantiles over the inspected cells of normal
//! validation maps, the scores over the same cells, and the threshold by its rule (see the
//! parent module for the rules).

use super::{CalibrationError, ThresholdRule};
use crate::judge::anomaly::{MapNormalization, map_quantiles, quantile_sorted};
use crate::judge::region::{Region, region_score};

/// Raw maps of one image (`[size²]` each) and the image's size (for the region).
pub struct MapPair {
    pub st: Vec<f32>,
    pub ae: Vec<f32>,
    pub width: usize,
    pub height: usize,
}

impl MapPair {
    /// The inspected cells of this image's maps; `None` when all are.
    fn cells(&self, region: &Region) -> Result<Option<Vec<bool>>, CalibrationError> {
        if region.is_whole_image() {
            return Ok(None);
        }
        let side = self.st.len().isqrt();
        let cells = region.cells(side, self.width, self.height);
        if !cells.iter().any(|&c| c) {
            return Err(CalibrationError::EmptyRegion {
                width: self.width,
                height: self.height,
            });
        }
        Ok(Some(cells))
    }
}

/// The numeric part of a calibration.
#[derive(Clone, Debug, PartialEq)]
pub struct Computed {
    pub normalization: MapNormalization,
    pub threshold: f64,
    pub rule: ThresholdRule,
    pub normal_scores: Vec<f32>,
    pub anomalous_scores: Vec<f32>,
}

/// Computes quantiles over the inspected cells of the normal maps (all cells without a
/// region), the scores over the same cells, and the threshold.
pub fn compute(
    normal: &[MapPair],
    anomalous: &[MapPair],
    false_reject_rate: f64,
    region: &Region,
) -> Result<Computed, CalibrationError> {
    let normal_cells = normal
        .iter()
        .map(|m| m.cells(region))
        .collect::<Result<Vec<_>, _>>()?;
    let anomalous_cells = anomalous
        .iter()
        .map(|m| m.cells(region))
        .collect::<Result<Vec<_>, _>>()?;
    let inspected = |values: &[f32], cells: &Option<Vec<bool>>| -> Vec<f32> {
        match cells {
            Some(c) => values
                .iter()
                .zip(c)
                .filter(|(_, keep)| **keep)
                .map(|(v, _)| *v)
                .collect(),
            None => values.to_vec(),
        }
    };
    let mut st: Vec<f32> = normal
        .iter()
        .zip(&normal_cells)
        .flat_map(|(m, c)| inspected(&m.st, c))
        .collect();
    let mut ae: Vec<f32> = normal
        .iter()
        .zip(&normal_cells)
        .flat_map(|(m, c)| inspected(&m.ae, c))
        .collect();
    let normalization = MapNormalization {
        st: map_quantiles(&mut st),
        ae: map_quantiles(&mut ae),
    };
    for (which, q) in [("map_st", normalization.st), ("map_ae", normalization.ae)] {
        if q.q_b.partial_cmp(&q.q_a) != Some(std::cmp::Ordering::Greater) {
            return Err(CalibrationError::Degenerate {
                which,
                value: q.q_a,
            });
        }
    }
    let scores_of = |maps: &[MapPair], cells: &[Option<Vec<bool>>]| -> Vec<f32> {
        let mut buf = Vec::new();
        maps.iter()
            .zip(cells)
            .map(|(m, c)| {
                normalization.combine_into(&m.st, &m.ae, &mut buf);
                match c {
                    Some(c) => region_score(&buf, c),
                    None => crate::judge::anomaly::score(&buf),
                }
            })
            .collect()
    };
    let normal_scores = scores_of(normal, &normal_cells);
    let anomalous_scores = scores_of(anomalous, &anomalous_cells);
    let (threshold, rule) = if anomalous_scores.is_empty() {
        frr_threshold(&normal_scores, false_reject_rate)
    } else {
        best_f1_threshold(&normal_scores, &anomalous_scores)
    };
    Ok(Computed {
        normalization,
        threshold,
        rule,
        normal_scores,
        anomalous_scores,
    })
}

fn frr_threshold(normal: &[f32], rate: f64) -> (f64, ThresholdRule) {
    let mut s = normal.to_vec();
    s.sort_unstable_by(|a, b| a.total_cmp(b));
    let threshold = quantile_sorted(&s, 1.0 - rate);
    let above = s.iter().filter(|&&v| f64::from(v) > threshold).count();
    (
        threshold,
        ThresholdRule::FalseRejectRate {
            target: rate,
            achieved: above as f64 / s.len().max(1) as f64,
        },
    )
}

fn best_f1_threshold(normal: &[f32], anomalous: &[f32]) -> (f64, ThresholdRule) {
    // All scores, descending; label true = anomalous.
    let mut all: Vec<(f32, bool)> = normal
        .iter()
        .map(|&s| (s, false))
        .chain(anomalous.iter().map(|&s| (s, true)))
        .collect();
    all.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let positives = anomalous.len() as f64;
    let (mut tp, mut fp) = (0f64, 0f64);
    let mut best = (f64::NEG_INFINITY, f64::INFINITY, 0.0, 0.0);
    let mut i = 0;
    while i < all.len() {
        // Take every sample tied at this score together: a cut cannot separate them.
        let s = all[i].0;
        while i < all.len() && all[i].0 == s {
            if all[i].1 {
                tp += 1.0
            } else {
                fp += 1.0
            }
            i += 1;
        }
        let precision = tp / (tp + fp);
        let recall = tp / positives;
        let f1 = if tp > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        // Cut halfway to the next lower score (or just below the lowest).
        let next = all.get(i).map(|n| f64::from(n.0));
        let cut = match next {
            Some(n) => 0.5 * (f64::from(s) + n),
            None => f64::from(s) - f64::EPSILON.max(f64::from(s).abs() * 1e-6),
        };
        if f1 > best.0 {
            best = (f1, cut, precision, recall);
        }
    }
    (
        best.1,
        ThresholdRule::BestF1 {
            f1: best.0,
            precision: best.2,
            recall: best.3,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_f1_separates_perfectly_separable_scores() {
        let (t, rule) = best_f1_threshold(&[0.1, 0.2, 0.3], &[0.5, 0.6]);
        assert!((t - 0.4).abs() < 1e-6, "{t}");
        assert_eq!(
            rule,
            ThresholdRule::BestF1 {
                f1: 1.0,
                precision: 1.0,
                recall: 1.0
            }
        );
    }

    #[test]
    fn frr_threshold_is_the_upper_quantile() {
        let normal: Vec<f32> = (0..101).map(|v| v as f32).collect();
        let (t, rule) = frr_threshold(&normal, 0.01);
        assert!((t - 99.0).abs() < 1e-9);
        assert_eq!(
            rule,
            ThresholdRule::FalseRejectRate {
                target: 0.01,
                achieved: 1.0 / 101.0
            }
        );
    }
}
