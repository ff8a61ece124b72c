//! The teacher gauge: how well a feature map describes a dataset's defects, in minutes and
//! without training a student. A memory of patch features is drawn at random (seeded) from
//! the good training images; every cell of a test image is scored by its distance to the
//! nearest memory vector (PatchCore's nearest-neighbour rule), the image by its largest cell.
//! A teacher whose features rank MTD's parts badly here cannot make the student-teacher
//! discrepancy rank them well either, so the gauge compares teachers and distillation targets
//! long before a 2-hour `fit` could.
//!
//! The features come from a [`FeatureSource`] ([`features`]): a teacher checkpoint, or the
//! distillation target of a backbone exactly as `distill-teacher` builds it.

use std::path::Path;
use std::time::Instant;

use efficientad::offline::batch::test_split::load_mask;
use efficientad::offline::dataset::test_set;
use efficientad::offline::evaluation::{EvalImage, EvalReport, report};
use efficientad::offline::metrics::{DEFAULT_BUDGET, DEFAULT_FPR_LIMIT, roc_auc};
use serde::Serialize;

pub mod features;

pub use features::{FeatureMap, FeatureSource, GaugeError};

use crate::data::Rng;
use crate::model::conv::cpu::{View, matmul};

/// Settings of one gauge run.
#[derive(Clone, Debug, Serialize)]
pub struct GaugeConfig {
    /// Memory vectors drawn from the training images' cells.
    pub memory: usize,
    pub seed: u64,
    /// Cells of the feature grid left out at each edge for the second image score.
    pub ring: usize,
}

/// What the gauge measured.
#[derive(Clone, Debug, Serialize)]
pub struct GaugeResult {
    pub features: String,
    /// Feature grid (cells per side) and dimension.
    pub grid: usize,
    pub dim: usize,
    pub memory: usize,
    pub train_images: usize,
    pub test_images: usize,
    /// Image score = the largest cell distance.
    pub image_auroc: Option<f64>,
    /// The same with `ring` cells left out at each edge.
    pub image_auroc_inner: Option<f64>,
    pub ring: usize,
    /// The nearest-neighbour map resized to each mask (per defect type too).
    pub report: EvalReport,
    /// Image AUROC within each group of test images that share a file-name prefix before the
    /// first `_` (MTD: the exposure, `exp1`…`exp6`), each with at least one good and one
    /// defective image.
    pub image_auroc_by_prefix: Vec<efficientad::offline::evaluation::PrefixGroup>,
    /// Every scored test image.
    pub scores: Vec<ImageScore>,
    pub seconds: f64,
}

/// One test image's scores.
#[derive(Clone, Debug, Serialize)]
pub struct ImageScore {
    pub path: std::path::PathBuf,
    pub anomalous: bool,
    pub score: f32,
    /// With the ring left out.
    pub inner: f32,
}

/// What the gauge is doing, for a progress bar.
pub enum Progress<'a> {
    Memory { done: usize, total: usize },
    Test { done: usize, total: usize },
    Skipped(&'a str),
}

/// Position-major memory `[count, dim]` and the squared norm of each row.
pub struct Memory {
    dim: usize,
    vectors: Vec<f32>,
    norms: Vec<f32>,
}

/// Memory columns per product: a 4096-cell map against 4096 memory vectors is 64 MiB.
const MEMORY_CHUNK: usize = 4096;

impl Memory {
    pub fn new(vectors: Vec<f32>, dim: usize) -> Self {
        let norms = vectors
            .chunks_exact(dim.max(1))
            .map(|v| v.iter().map(|x| x * x).sum())
            .collect();
        Self {
            dim,
            vectors,
            norms,
        }
    }

    pub fn len(&self) -> usize {
        self.norms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.norms.is_empty()
    }

    /// Euclidean distance of each of the position-major `cells` (`[n, dim]`) to its nearest
    /// memory vector, as |a|² + |m|² − 2·a·m with the products on GEMM.
    pub fn nearest(&self, cells: &[f32]) -> Vec<f32> {
        let dim = self.dim;
        let n = cells.len() / dim;
        let cell_norms: Vec<f32> = cells
            .chunks_exact(dim)
            .map(|v| v.iter().map(|x| x * x).sum())
            .collect();
        let mut best = vec![f32::INFINITY; n];
        let mut products = vec![0f32; n * MEMORY_CHUNK.min(self.len().max(1))];
        for first in (0..self.len()).step_by(MEMORY_CHUNK) {
            let cols = MEMORY_CHUNK.min(self.len() - first);
            let block = &self.vectors[first * dim..(first + cols) * dim];
            matmul(
                (n, cols, dim),
                &mut products,
                cols,
                false,
                View {
                    data: cells,
                    row_stride: dim,
                    col_stride: 1,
                },
                // The block is `[cols, dim]` row-major: read as `[dim, cols]`.
                View {
                    data: block,
                    row_stride: 1,
                    col_stride: dim,
                },
            );
            for (i, b) in best.iter_mut().enumerate() {
                let row = &products[i * cols..(i + 1) * cols];
                for (j, &p) in row.iter().enumerate() {
                    let d = cell_norms[i] + self.norms[first + j] - 2.0 * p;
                    if d < *b {
                        *b = d;
                    }
                }
            }
        }
        // Rounding can leave a tiny negative square for a cell equal to a memory vector.
        best.into_iter().map(|d| d.max(0.0).sqrt()).collect()
    }
}

/// Per-channel standardization with the statistics of every training cell: the student sees
/// the teacher's output normalized so (docs/method.md: teacher output normalization, T̂ = (T − μ)/σ over
/// the training images), and distances are measured in that space. Any per-channel affine
/// scaling of the features before it (a distillation target's own normalization, a bundle's
/// folded μ and σ) cancels, so every source is gauged as a student would see it.
pub struct Standardize {
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
}

impl Standardize {
    /// Standardizes position-major `[n, dim]` vectors in place.
    pub fn apply(&self, cells: &mut [f32]) {
        for v in cells.chunks_exact_mut(self.mean.len().max(1)) {
            for ((x, m), s) in v.iter_mut().zip(&self.mean).zip(&self.inv_std) {
                *x = (*x - m) * s;
            }
        }
    }
}

/// Draws `count` cells at random from the maps of `files` (each image gives the same share,
/// rounded up, of distinct cells; then the pool is shuffled and cut to `count`), and the
/// per-channel statistics over all their cells; the memory comes back standardized with them.
pub fn build_memory(
    source: &mut dyn FeatureSource,
    files: &[std::path::PathBuf],
    count: usize,
    seed: u64,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(Memory, Standardize), GaugeError> {
    let mut rng = Rng::new(seed);
    let per_image = count.div_ceil(files.len().max(1)).max(1);
    let mut pool: Vec<Vec<f32>> = Vec::new();
    let mut dim = 0;
    let (mut sum, mut sq, mut n) = (Vec::<f64>::new(), Vec::<f64>::new(), 0f64);
    for (i, f) in files.iter().enumerate() {
        match source.features(f) {
            Ok(map) => {
                if sum.is_empty() {
                    (sum, sq) = (vec![0.0; map.dim], vec![0.0; map.dim]);
                } else if map.dim != sum.len() {
                    return Err(GaugeError::Other(format!(
                        "{} gave {}-dimensional features, earlier images {}",
                        f.display(),
                        map.dim,
                        sum.len()
                    )));
                }
                for v in map.data.chunks_exact(map.dim) {
                    for ((s, q), &x) in sum.iter_mut().zip(sq.iter_mut()).zip(v) {
                        *s += f64::from(x);
                        *q += f64::from(x) * f64::from(x);
                    }
                }
                n += map.cells() as f64;
                dim = map.dim;
                let cells = map.cells();
                let mut order: Vec<usize> = (0..cells).collect();
                // A partial Fisher–Yates shuffle: the first `take` entries are a uniform draw.
                let take = per_image.min(cells);
                for k in 0..take {
                    let j = k + rng.below(cells - k);
                    order.swap(k, j);
                }
                for &c in &order[..take] {
                    pool.push(map.data[c * map.dim..(c + 1) * map.dim].to_vec());
                }
            }
            Err(e) => progress(Progress::Skipped(&format!("skipping {}: {e}", f.display()))),
        }
        progress(Progress::Memory {
            done: i + 1,
            total: files.len(),
        });
    }
    if pool.is_empty() {
        return Err(GaugeError::Other(
            "no training image could be read for the memory".into(),
        ));
    }
    rng.shuffle(&mut pool);
    pool.truncate(count.max(1));
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let standardize = Standardize {
        mean: mean.iter().map(|&m| m as f32).collect(),
        inv_std: sq
            .iter()
            .zip(&mean)
            .map(|(q, m)| {
                let std = (q / n - m * m).max(0.0).sqrt() as f32;
                1.0 / std.max(crate::model::MIN_TEACHER_STD)
            })
            .collect(),
    };
    let mut vectors = pool.concat();
    standardize.apply(&mut vectors);
    Ok((Memory::new(vectors, dim), standardize))
}

/// The largest value of a `grid`² map with `ring` cells left out at each edge (the whole map
/// when the ring would leave nothing).
pub fn inner_max(map: &[f32], grid: usize, ring: usize) -> f32 {
    if 2 * ring >= grid {
        return map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    }
    let mut best = f32::NEG_INFINITY;
    for y in ring..grid - ring {
        for &v in &map[y * grid + ring..(y + 1) * grid - ring] {
            best = best.max(v);
        }
    }
    best
}

/// Runs the gauge on an MVTec-layout dataset: memory from `train/good`, scores on `test/`.
pub fn gauge(
    source: &mut dyn FeatureSource,
    dataset: &Path,
    config: &GaugeConfig,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<GaugeResult, GaugeError> {
    let started = Instant::now();
    let train = crate::data::folder_files(&dataset.join("train/good"))
        .map_err(|e| GaugeError::Other(e.to_string()))?;
    let test = test_set(dataset).map_err(|e| GaugeError::Other(e.to_string()))?;
    let (memory, standardize) = build_memory(source, &train, config.memory, config.seed, progress)?;
    let mut images = Vec::with_capacity(test.len());
    let mut inner = Vec::with_capacity(test.len());
    let (mut grid, mut dim) = (0, 0);
    for (i, item) in test.iter().enumerate() {
        let scored = source.features(&item.path).and_then(|map| {
            if map.dim != memory.dim {
                return Err(GaugeError::Other(format!(
                    "{} gave {}-dimensional features, the memory holds {}",
                    item.path.display(),
                    map.dim,
                    memory.dim
                )));
            }
            let (w, h) = image::image_dimensions(&item.path)
                .map_err(|e| GaugeError::Other(format!("{}: {e}", item.path.display())))?;
            let mask = load_mask(item, w as usize, h as usize)
                .map_err(|e| GaugeError::Other(e.to_string()))?;
            Ok((map, w as usize, h as usize, mask))
        });
        match scored {
            Ok((mut map, width, height, mask)) => {
                standardize.apply(&mut map.data);
                let distances = memory.nearest(&map.data);
                (grid, dim) = (map.grid, map.dim);
                inner.push(inner_max(&distances, map.grid, config.ring));
                images.push(EvalImage {
                    path: item.path.clone(),
                    defect: item.defect.clone(),
                    anomalous: item.anomalous,
                    score: distances.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                    map: distances,
                    map_size: map.grid,
                    map_pad: map.pad,
                    width,
                    height,
                    mask,
                    latency_ms: 0.0,
                });
            }
            Err(e) => progress(Progress::Skipped(&format!(
                "skipping {}: {e}",
                item.path.display()
            ))),
        }
        progress(Progress::Test {
            done: i + 1,
            total: test.len(),
        });
    }
    if images.is_empty() {
        return Err(GaugeError::Other("no test image could be scored".into()));
    }
    let labels: Vec<bool> = images.iter().map(|i| i.anomalous).collect();
    let scores = images
        .iter()
        .zip(&inner)
        .map(|(i, &inner)| ImageScore {
            path: i.path.clone(),
            anomalous: i.anomalous,
            score: i.score,
            inner,
        })
        .collect();
    // No threshold: every image counts as judged NG for the (unused) verdict counts.
    let rep = report(&images, 0.0, |_| true, DEFAULT_FPR_LIMIT, DEFAULT_BUDGET);
    Ok(GaugeResult {
        features: source.describe(),
        grid,
        dim,
        memory: memory.len(),
        train_images: train.len(),
        test_images: images.len(),
        image_auroc: rep.overall.image_auroc,
        image_auroc_inner: roc_auc(&inner, &labels),
        ring: config.ring,
        image_auroc_by_prefix: rep.by_prefix.clone(),
        report: rep,
        scores,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests;
