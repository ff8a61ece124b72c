//! Evaluation metrics exactly as the MVTec AD evaluation computes them (docs/method.md, Metrics):
//! ROC AUC with ties merged, and AU-PRO over 8-connected ground-truth regions with an FPR
//! integration limit, normalized by the limit.
//!
//! # Bounded memory for pixel metrics
//! Pixel AUROC and AU-PRO need every pixel of every test image in one global descending sort
//! (MVTec AD: up to 1024x1024 per image). Instead of holding them all, the pixels are
//! regenerated image by image from a [`PixelSource`] (the small 56x56 maps are kept, the
//! full-size map is resized again when asked for) and swept in descending score order in
//! slices: a first pass counts pixels per bucket of the score's top 16 bits; then consecutive
//! buckets, from the top, are gathered into slices of at most `budget` pixels, and each slice
//! is collected, sorted and swept in turn. Because buckets are ranges of the order-preserving
//! integer key of the f32 score, the concatenated slices are exactly the global sort, so the
//! result equals the all-in-memory computation bit for bit in its ordering. The curves are
//! integrated while sweeping; no curve is stored.

/// Default FPR integration limit of AU-PRO.
pub const DEFAULT_FPR_LIMIT: f64 = 0.3;
/// Default number of pixels sorted at once (8 bytes each).
pub const DEFAULT_BUDGET: usize = 32 << 20;

/// Area under the ROC curve (ties merged, trapezoid over the whole curve), as
/// scikit-learn's `roc_auc_score`. `None` when only one class is present.
pub fn roc_auc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| key(scores[b]).cmp(&key(scores[a])));
    let mut sweep = Sweep::new(negatives as f64, positives as f64, 0.0, 1.0);
    let mut i = 0;
    while i < order.len() {
        let k = key(scores[order[i]]);
        while i < order.len() && key(scores[order[i]]) == k {
            if labels[order[i]] {
                sweep.tp += 1.0
            } else {
                sweep.fp += 1.0
            }
            i += 1;
        }
        sweep.point();
    }
    Some(sweep.finish().0)
}

/// Order-preserving integer key of an f32 (total order; NaN ranks above +inf).
pub fn key(v: f32) -> u32 {
    let v = if v.is_nan() { f32::INFINITY } else { v };
    let bits = v.to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

/// Streaming integration of the ROC and PRO curves over points in descending-score order.
struct Sweep {
    negatives: f64,
    positives: f64,
    regions: f64,
    fpr_limit: f64,
    /// Running counts above the current threshold.
    fp: f64,
    tp: f64,
    /// Σ 1/|region| over region pixels above the threshold.
    pro_sum: f64,
    prev: (f64, f64, f64),
    roc_area: f64,
    pro_area: f64,
    pro_done: bool,
}

impl Sweep {
    fn new(negatives: f64, positives: f64, regions: f64, fpr_limit: f64) -> Self {
        Self {
            negatives,
            positives,
            regions,
            fpr_limit,
            fp: 0.0,
            tp: 0.0,
            pro_sum: 0.0,
            prev: (0.0, 0.0, 0.0),
            roc_area: 0.0,
            pro_area: 0.0,
            pro_done: false,
        }
    }

    /// Adds the point reached after all pixels of one distinct score.
    fn point(&mut self) {
        let fpr = (self.fp / self.negatives).min(1.0);
        let tpr = if self.positives > 0.0 {
            (self.tp / self.positives).min(1.0)
        } else {
            0.0
        };
        let pro = if self.regions > 0.0 {
            (self.pro_sum / self.regions).min(1.0)
        } else {
            0.0
        };
        self.add(fpr, tpr, pro);
    }

    fn add(&mut self, fpr: f64, tpr: f64, pro: f64) {
        let (x0, t0, p0) = self.prev;
        self.roc_area += 0.5 * (tpr + t0) * (fpr - x0);
        if !self.pro_done {
            if fpr <= self.fpr_limit {
                self.pro_area += 0.5 * (pro + p0) * (fpr - x0);
                if fpr == self.fpr_limit {
                    self.pro_done = true;
                }
            } else {
                // The limit falls inside this segment: integrate to it, interpolating PRO.
                let p_at = p0 + (pro - p0) * (self.fpr_limit - x0) / (fpr - x0);
                self.pro_area += 0.5 * (p_at + p0) * (self.fpr_limit - x0);
                self.pro_done = true;
            }
        }
        self.prev = (fpr, tpr, pro);
    }

    /// Closes the curves with (1, 1); returns (ROC AUC, normalized AU-PRO).
    fn finish(mut self) -> (f64, f64) {
        self.add(1.0, 1.0, 1.0);
        (self.roc_area, self.pro_area / self.fpr_limit)
    }
}

/// One test image at ground-truth resolution.
pub struct PixelImage<'a> {
    pub scores: &'a [f32],
    /// Non-zero = defect pixel; same length as `scores`.
    pub mask: &'a [u8],
    pub width: usize,
    pub height: usize,
}

/// Gives the pixels of test image `index` again and again (possibly recomputing them).
pub trait PixelSource {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Calls `f` with image `index`'s pixels.
    fn with_image(&self, index: usize, f: &mut dyn FnMut(PixelImage<'_>));
}

/// Pixel-level results.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct PixelMetrics {
    /// None without defect pixels or without normal pixels.
    pub pixel_auroc: Option<f64>,
    /// None without ground-truth regions.
    pub au_pro: Option<f64>,
    pub regions: usize,
    pub passes: usize,
}

/// Labels the 8-connected regions of a mask: 0 = background, 1..=n regions. Returns n.
pub fn label_regions(mask: &[u8], width: usize, height: usize, labels: &mut Vec<u32>) -> usize {
    labels.clear();
    labels.resize(mask.len(), 0);
    let mut next = 0u32;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if mask[start] == 0 || labels[start] != 0 {
            continue;
        }
        next += 1;
        labels[start] = next;
        stack.push(start);
        while let Some(p) = stack.pop() {
            let (x, y) = ((p % width) as isize, (p / width) as isize);
            for dy in -1..=1isize {
                for dx in -1..=1isize {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= width as isize || ny >= height as isize {
                        continue;
                    }
                    let q = ny as usize * width + nx as usize;
                    if mask[q] != 0 && labels[q] == 0 {
                        labels[q] = next;
                        stack.push(q);
                    }
                }
            }
        }
    }
    next as usize
}

/// Pixel AUROC and AU-PRO of all images of `source`, sorting at most about `budget` pixels at
/// once (see the module docs).
pub fn pixel_metrics(source: &dyn PixelSource, fpr_limit: f64, budget: usize) -> PixelMetrics {
    const BUCKETS: usize = 1 << 16;
    let mut histogram = vec![0usize; BUCKETS];
    let (mut positives, mut negatives, mut regions) = (0usize, 0usize, 0usize);
    let mut labels = Vec::new();
    for i in 0..source.len() {
        source.with_image(i, &mut |img| {
            for (&s, &m) in img.scores.iter().zip(img.mask) {
                histogram[(key(s) >> 16) as usize] += 1;
                if m != 0 {
                    positives += 1
                } else {
                    negatives += 1
                }
            }
            regions += label_regions(img.mask, img.width, img.height, &mut labels);
        });
    }
    if negatives == 0 {
        return PixelMetrics {
            pixel_auroc: None,
            au_pro: None,
            regions,
            passes: 1,
        };
    }
    // Slices of consecutive buckets, highest first.
    let mut slices: Vec<(usize, usize)> = Vec::new();
    let mut hi = BUCKETS;
    while hi > 0 {
        let mut lo = hi - 1;
        let mut count = histogram[lo];
        while lo > 0 && count + histogram[lo - 1] <= budget.max(1) {
            lo -= 1;
            count += histogram[lo];
        }
        if count > 0 {
            slices.push((lo, hi));
        }
        hi = lo;
    }
    let mut sweep = Sweep::new(
        negatives as f64,
        positives as f64,
        regions as f64,
        fpr_limit,
    );
    let mut entries: Vec<(u32, u32)> = Vec::new();
    for &(lo, hi) in &slices {
        entries.clear();
        for i in 0..source.len() {
            source.with_image(i, &mut |img| {
                let n = label_regions(img.mask, img.width, img.height, &mut labels);
                let mut sizes = vec![0u32; n + 1];
                for &l in labels.iter() {
                    sizes[l as usize] += 1;
                }
                for (p, &s) in img.scores.iter().enumerate() {
                    let k = key(s);
                    let b = (k >> 16) as usize;
                    if b >= lo && b < hi {
                        // 0 marks a normal pixel; a defect pixel carries its region's size.
                        let size = if img.mask[p] == 0 {
                            0
                        } else {
                            sizes[labels[p] as usize]
                        };
                        entries.push((k, size));
                    }
                }
            });
        }
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.0));
        let mut i = 0;
        while i < entries.len() {
            let k = entries[i].0;
            while i < entries.len() && entries[i].0 == k {
                let size = entries[i].1;
                if size == 0 {
                    sweep.fp += 1.0;
                } else {
                    sweep.tp += 1.0;
                    sweep.pro_sum += 1.0 / f64::from(size);
                }
                i += 1;
            }
            sweep.point();
        }
    }
    let (auroc, au_pro) = sweep.finish();
    PixelMetrics {
        pixel_auroc: (positives > 0).then_some(auroc),
        au_pro: (regions > 0).then_some(au_pro),
        regions,
        passes: slices.len() + 1,
    }
}

/// In-memory pixel source (tests, small datasets).
pub struct InMemory {
    pub images: Vec<(Vec<f32>, Vec<u8>, usize, usize)>,
}

impl PixelSource for InMemory {
    fn len(&self) -> usize {
        self.images.len()
    }

    fn with_image(&self, index: usize, f: &mut dyn FnMut(PixelImage<'_>)) {
        let (s, m, w, h) = &self.images[index];
        f(PixelImage {
            scores: s,
            mask: m,
            width: *w,
            height: *h,
        });
    }
}

#[cfg(test)]
mod tests;
