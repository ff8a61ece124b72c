//! `eval`'s numbers: image AUROC, pixel AUROC and AU-PRO per defect type and overall, the
//! verdict counts at the calibrated threshold, and latency percentiles.
//!
//! What is kept per test image is small: the 56x56 combined map, the score and the mask as a
//! bitset. Full-size maps are recomputed from the small map whenever the pixel sweep asks
//! (see `metrics`), so memory stays bounded on 1024x1024 datasets.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::judge::anomaly::{quantile_sorted, to_image_size_padded};
use crate::offline::metrics::{PixelImage, PixelMetrics, PixelSource, pixel_metrics, roc_auc};

/// One judged test image.
pub struct EvalImage {
    pub path: PathBuf,
    pub defect: String,
    pub anomalous: bool,
    pub score: f32,
    /// Combined map, `map_size`².
    pub map: Vec<f32>,
    pub map_size: usize,
    /// Zero cells added per side before the map is resized to the image:
    /// [`crate::judge::anomaly::MAP_PAD`] for an EfficientAD map (docs/method.md: pad 56 → 64), 0 for a map
    /// whose grid covers the whole image.
    pub map_pad: usize,
    pub width: usize,
    pub height: usize,
    /// Ground truth as bits (row-major, `width`x`height`); `None` for a defect image without
    /// a mask (kept out of the pixel metrics). Good images have an all-zero mask.
    pub mask: Option<Vec<u64>>,
    pub latency_ms: f64,
}

/// Packs a mask (non-zero = defect) into bits.
pub fn pack_mask(mask: &[u8]) -> Vec<u64> {
    let mut bits = vec![0u64; mask.len().div_ceil(64)];
    for (i, &m) in mask.iter().enumerate() {
        if m != 0 {
            bits[i / 64] |= 1 << (i % 64);
        }
    }
    bits
}

struct Subset<'a> {
    images: Vec<&'a EvalImage>,
}

impl PixelSource for Subset<'_> {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn with_image(&self, index: usize, f: &mut dyn FnMut(PixelImage<'_>)) {
        let img = self.images[index];
        let scores =
            to_image_size_padded(&img.map, img.map_size, img.map_pad, img.width, img.height);
        let bits = img.mask.as_deref().unwrap_or(&[]);
        let mask: Vec<u8> = (0..scores.len())
            .map(|i| bits.get(i / 64).map_or(0, |w| ((w >> (i % 64)) & 1) as u8))
            .collect();
        f(PixelImage {
            scores: &scores,
            mask: &mask,
            width: img.width,
            height: img.height,
        });
    }
}

/// Image AUROC of the test images whose names share a prefix.
#[derive(Clone, Debug, Serialize)]
pub struct PrefixGroup {
    pub prefix: String,
    pub good: usize,
    pub defective: usize,
    pub image_auroc: f64,
}

/// Metrics of one group of images.
#[derive(Clone, Debug, Serialize)]
pub struct GroupMetrics {
    pub images: usize,
    pub anomalous: usize,
    pub image_auroc: Option<f64>,
    pub pixel_auroc: Option<f64>,
    pub au_pro: Option<f64>,
    pub regions: usize,
}

/// Counts at the calibrated threshold.
#[derive(Clone, Debug, Serialize)]
pub struct AtThreshold {
    pub threshold: f64,
    pub accuracy: f64,
    /// Good images judged NG.
    pub false_rejects: usize,
    pub good_images: usize,
    /// Defective images judged OK.
    pub missed_defects: usize,
    pub defective_images: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Everything `eval` reports.
#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub fpr_limit: f64,
    pub overall: GroupMetrics,
    /// Per defect type, each together with all good images.
    pub per_defect: BTreeMap<String, GroupMetrics>,
    pub at_threshold: AtThreshold,
    pub latency: Latency,
    /// Defect images without a mask file (counted for image AUROC only).
    pub without_mask: usize,
    /// Image AUROC within each group of images whose file names share the prefix before the
    /// first `_` (MTD: the exposure, `exp1`…`exp6`); groups with both labels only.
    pub by_prefix: Vec<PrefixGroup>,
}

fn group(images: Vec<&EvalImage>, fpr_limit: f64, budget: usize) -> GroupMetrics {
    let scores: Vec<f32> = images.iter().map(|i| i.score).collect();
    let labels: Vec<bool> = images.iter().map(|i| i.anomalous).collect();
    let image_auroc = roc_auc(&scores, &labels);
    let with_mask: Vec<&EvalImage> = images
        .iter()
        .copied()
        .filter(|i| i.mask.is_some())
        .collect();
    let PixelMetrics {
        pixel_auroc,
        au_pro,
        regions,
        ..
    } = pixel_metrics(&Subset { images: with_mask }, fpr_limit, budget);
    GroupMetrics {
        images: images.len(),
        anomalous: labels.iter().filter(|&&l| l).count(),
        image_auroc,
        pixel_auroc,
        au_pro,
        regions,
    }
}

/// `exp3_num_123.jpg` → `exp3`; names without `_` have no group.
fn prefix(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_string_lossy().into_owned();
    name.split_once('_').map(|(p, _)| p.to_string())
}

/// Image AUROC per file-name prefix (groups with both labels only).
fn auroc_by_prefix(images: &[EvalImage]) -> Vec<PrefixGroup> {
    let mut groups: std::collections::BTreeMap<String, (Vec<f32>, Vec<bool>)> = Default::default();
    for img in images {
        if let Some(p) = prefix(&img.path) {
            let g = groups.entry(p).or_default();
            g.0.push(img.score);
            g.1.push(img.anomalous);
        }
    }
    groups
        .into_iter()
        .filter_map(|(prefix, (s, l))| {
            roc_auc(&s, &l).map(|image_auroc| PrefixGroup {
                prefix,
                good: l.iter().filter(|&&a| !a).count(),
                defective: l.iter().filter(|&&a| a).count(),
                image_auroc,
            })
        })
        .collect()
}

/// Computes the report. `is_ng` is the calibrated decision rule.
pub fn report(
    images: &[EvalImage],
    threshold: f64,
    is_ng: impl Fn(f32) -> bool,
    fpr_limit: f64,
    budget: usize,
) -> EvalReport {
    let overall = group(images.iter().collect(), fpr_limit, budget);
    let mut per_defect = BTreeMap::new();
    let mut types: Vec<&str> = images
        .iter()
        .filter(|i| i.anomalous)
        .map(|i| i.defect.as_str())
        .collect();
    types.sort_unstable();
    types.dedup();
    for t in types {
        let subset = images
            .iter()
            .filter(|i| !i.anomalous || i.defect == t)
            .collect();
        per_defect.insert(t.to_string(), group(subset, fpr_limit, budget));
    }
    let good = images.iter().filter(|i| !i.anomalous).count();
    let false_rejects = images
        .iter()
        .filter(|i| !i.anomalous && is_ng(i.score))
        .count();
    let missed = images
        .iter()
        .filter(|i| i.anomalous && !is_ng(i.score))
        .count();
    let mut lat: Vec<f32> = images.iter().map(|i| i.latency_ms as f32).collect();
    lat.sort_unstable_by(f32::total_cmp);
    EvalReport {
        fpr_limit,
        overall,
        per_defect,
        at_threshold: AtThreshold {
            threshold,
            accuracy: (images.len() - false_rejects - missed) as f64 / images.len().max(1) as f64,
            false_rejects,
            good_images: good,
            missed_defects: missed,
            defective_images: images.len() - good,
        },
        latency: Latency {
            p50_ms: quantile_sorted(&lat, 0.5),
            p99_ms: quantile_sorted(&lat, 0.99),
            max_ms: lat.last().map_or(f64::NAN, |&v| f64::from(v)),
        },
        without_mask: images
            .iter()
            .filter(|i| i.anomalous && i.mask.is_none())
            .count(),
        by_prefix: auroc_by_prefix(images),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(name: &str, anomalous: bool, score: f32) -> EvalImage {
        EvalImage {
            path: PathBuf::from(format!("test/x/{name}")),
            defect: if anomalous { "x" } else { "good" }.into(),
            anomalous,
            score,
            map: vec![score; 4],
            map_size: 2,
            map_pad: 0,
            width: 2,
            height: 2,
            mask: None,
            latency_ms: 0.0,
        }
    }

    /// Groups by the name before the first `_`; a group with one label only has no AUROC and
    /// is left out; names without `_` belong to no group.
    #[test]
    fn image_auroc_is_given_per_file_name_prefix() {
        let images = [
            image("exp1_a.png", false, 0.1),
            image("exp1_b.png", true, 0.9),
            image("exp1_c.png", true, 0.05),
            image("exp2_a.png", false, 0.5),
            image("plain.png", true, 0.7),
        ];
        let groups = auroc_by_prefix(&images);
        assert_eq!(groups.len(), 1, "{groups:?}");
        let g = &groups[0];
        assert_eq!((g.prefix.as_str(), g.good, g.defective), ("exp1", 1, 2));
        assert!((g.image_auroc - 0.5).abs() < 1e-12);
    }
}
