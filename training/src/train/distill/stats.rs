//! The target's per-channel normalization (docs/method.md: target normalization): mean and standard
//! deviation over a seeded random sample of the distillation images.

use std::path::PathBuf;

use super::{Backbone, DistillError, Event, TargetOptions, views};
use crate::data::Rng;

/// Seed offset of the statistics sample: independent of the draws of the steps.
const STATS_SEED: u64 = 0x5747_5354;

/// The images whose targets give the normalization statistics: `count` files drawn without
/// replacement with `seed`. A random sample, not the first files: a folder sorted by class
/// would otherwise give statistics of a few classes only.
pub fn stats_sample(files: &[PathBuf], count: usize, seed: u64) -> Vec<PathBuf> {
    let mut order: Vec<&PathBuf> = files.iter().collect();
    Rng::new(seed ^ STATS_SEED).shuffle(&mut order);
    order.into_iter().take(count.max(1)).cloned().collect()
}

/// Per-channel mean and std of the distillation targets (docs/method.md: target normalization).
pub struct TargetStats {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

impl TargetStats {
    /// Normalizes a channel-major `[channels, positions]` target in place.
    pub fn apply(&self, target: &mut [f32]) {
        let plane = target.len() / self.mean.len().max(1);
        for (c, values) in target.chunks_exact_mut(plane.max(1)).enumerate() {
            for v in values {
                *v = (*v - self.mean[c]) / self.std[c];
            }
        }
    }
}

/// The target statistics over `files` (unreadable ones reported and left out).
pub fn target_stats(
    backbone: &mut Backbone,
    files: &[PathBuf],
    options: &TargetOptions,
    events: &mut dyn FnMut(Event<'_>),
) -> Result<TargetStats, DistillError> {
    let channels = backbone.channels();
    let mut sum = vec![0f64; channels];
    let mut sq = vec![0f64; channels];
    let mut count = 0f64;
    for (i, f) in files.iter().enumerate() {
        match views(f, false, options) {
            Ok((big, _)) => {
                let t = backbone.targets(&big, 1, options.size)?.remove(0);
                let plane = t.len() / channels;
                for c in 0..channels {
                    for &v in &t[c * plane..(c + 1) * plane] {
                        sum[c] += f64::from(v);
                        sq[c] += f64::from(v) * f64::from(v);
                    }
                }
                count += plane as f64;
            }
            Err(e) => events(Event::Message(&format!("skipping {}: {e}", f.display()))),
        }
        events(Event::Stats {
            done: i + 1,
            total: files.len(),
        });
    }
    if count == 0.0 {
        return Err(DistillError::Other(
            "no readable image for the target statistics".into(),
        ));
    }
    let mean = sum.iter().map(|s| (s / count) as f32).collect();
    let std = sq
        .iter()
        .zip(&sum)
        .map(|(q, s)| ((q / count - (s / count).powi(2)).max(0.0).sqrt() as f32).max(1e-6))
        .collect();
    Ok(TargetStats { mean, std })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder sorted by class: the statistics sample must reach across it, not take the head,
    /// and be the same for the same seed.
    #[test]
    fn stats_sample_is_seeded_and_spread_over_the_folder() {
        let files: Vec<PathBuf> = (0..1000)
            .map(|i| PathBuf::from(format!("{i:04}.jpg")))
            .collect();
        let a = stats_sample(&files, 100, 0);
        assert_eq!(a, stats_sample(&files, 100, 0));
        assert_ne!(a, stats_sample(&files, 100, 1));
        assert_eq!(a.len(), 100);
        let mut unique = a.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 100, "drawn without replacement");
        let index = |p: &PathBuf| -> usize { p.to_string_lossy()[..4].parse().expect("index") };
        // Every tenth of the folder is represented (a uniform draw misses one with p < 0.003).
        for decile in 0..10 {
            assert!(
                a.iter().any(|p| index(p) / 100 == decile),
                "no image from {}..{}",
                decile * 100,
                decile * 100 + 99
            );
        }
        assert_eq!(stats_sample(&files[..5], 100, 0).len(), 5);
    }
}
