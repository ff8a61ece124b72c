//! Training data: image folders loaded once into memory at network resolution, the
//! deterministic random stream, the augmentations of docs/method.md, one step's inputs
//! ([`sample`]) and the teacher's cached outputs ([`teacher_cache`]).
//!
//! All randomness of a training run comes from one [`Rng`] whose state is saved in every
//! checkpoint, so `--resume` continues the exact same stream.

pub mod sample;
pub mod teacher_cache;

pub use sample::Sample;
pub use teacher_cache::{TEACHER_CACHE_BYTES, TeacherCache};

use std::path::{Path, PathBuf};

use efficientad::model::preprocess::{Preprocessor, decode_file};
use efficientad::offline::images::{FolderError, image_folder};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error("{path} holds no readable images ({skipped} files could not be read)")]
    Empty { path: PathBuf, skipped: usize },
    #[error(
        "{path} has only {count} training images; holding out 10% for validation needs at least 10 (or give the dataset a validation/good folder)"
    )]
    TooFewToHoldOut { path: PathBuf, count: usize },
}

/// SplitMix64: small, fast, and its whole state is one u64 (checkpointed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rng {
    pub state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed ^ 0x5DEE_CE66_D1CE_4E5B,
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize % n.max(1)
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// Images held as RGB8 `size`², HWC.
pub struct ImageSet {
    pub size: usize,
    pub paths: Vec<PathBuf>,
    pub pixels: Vec<Vec<u8>>,
    /// Files that could not be decoded (warned about, counted).
    pub skipped: usize,
}

/// Loads every image file of `files`, resized to `size`² (and centre-cropped to `crop`²
/// when given), warning about and counting unreadable ones.
pub fn load_images(
    files: &[PathBuf],
    size: usize,
    crop: Option<usize>,
    mut progress: impl FnMut(),
) -> ImageSet {
    let mut pre = Preprocessor::new(size);
    let mut paths = Vec::new();
    let mut pixels = Vec::new();
    let mut skipped = 0;
    for f in files {
        let result = decode_file(f).and_then(|img| pre.prepare_vec(img));
        match result {
            Ok(px) => {
                paths.push(f.clone());
                pixels.push(match crop {
                    Some(c) => centre_crop(&px, size, c),
                    None => px,
                });
            }
            Err(e) => {
                eprintln!("efficientad-train: warning: skipping {}: {e}", f.display());
                skipped += 1;
            }
        }
        progress();
    }
    ImageSet {
        size: crop.unwrap_or(size),
        paths,
        pixels,
        skipped,
    }
}

fn centre_crop(px: &[u8], size: usize, crop: usize) -> Vec<u8> {
    let off = (size - crop) / 2;
    let mut out = Vec::with_capacity(crop * crop * 3);
    for y in off..off + crop {
        out.extend_from_slice(&px[(y * size + off) * 3..(y * size + off + crop) * 3]);
    }
    out
}

/// Image files of a folder; an error if it is missing or empty.
pub fn folder_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    Ok(image_folder(dir)?)
}

/// Training and validation files of an MVTec-layout dataset: `train/good`, and
/// `validation/good` when present, else a fixed 10% of train (seed 42) held out.
pub fn split(dataset: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>, &'static str), DataError> {
    let train = folder_files(&dataset.join("train/good"))?;
    let validation_dir = dataset.join("validation/good");
    if validation_dir.is_dir() {
        return Ok((train, folder_files(&validation_dir)?, "validation/good"));
    }
    if train.len() < 10 {
        return Err(DataError::TooFewToHoldOut {
            path: dataset.join("train/good"),
            count: train.len(),
        });
    }
    let mut order: Vec<usize> = (0..train.len()).collect();
    Rng::new(42).shuffle(&mut order);
    let held = train.len() / 10;
    let mut validation: Vec<PathBuf> = order[..held].iter().map(|&i| train[i].clone()).collect();
    let mut rest: Vec<PathBuf> = order[held..].iter().map(|&i| train[i].clone()).collect();
    validation.sort();
    rest.sort();
    Ok((rest, validation, "10% of train/good held out (seed 42)"))
}

/// RGB8 HWC → CHW floats in [0, 1].
pub fn to_chw(px: &[u8], size: usize) -> Vec<f32> {
    let plane = size * size;
    let mut out = vec![0f32; 3 * plane];
    for p in 0..plane {
        for c in 0..3 {
            out[c * plane + p] = f32::from(px[p * 3 + c]) / 255.0;
        }
    }
    out
}

/// ITU-R 601 luma, as torchvision's grayscale.
fn luma(r: f32, g: f32, b: f32) -> f32 {
    0.299 * r + 0.587 * g + 0.114 * b
}

/// In-place grayscale of a CHW image (the three channels become the luma).
pub fn grayscale(chw: &mut [f32]) {
    let plane = chw.len() / 3;
    for p in 0..plane {
        let l = luma(chw[p], chw[plane + p], chw[2 * plane + p]);
        chw[p] = l;
        chw[plane + p] = l;
        chw[2 * plane + p] = l;
    }
}

/// Mean and standard deviation every image has after [`normalize_exposure`]: those of the
/// ImageNet images the backbones were trained on, averaged over the channels.
pub const EXPOSURE_MEAN: f32 = 0.45;
pub const EXPOSURE_STD: f32 = 0.225;
/// Below this standard deviation an image is treated as flat (no contrast is invented).
pub const EXPOSURE_MIN_STD: f32 = 1e-2;

/// Per-image exposure normalization of a CHW image in [0, 1]: one gain and one offset for all
/// pixels and channels move the image's mean to [`EXPOSURE_MEAN`] and its standard deviation
/// to [`EXPOSURE_STD`]. A camera's exposure time or a lamp's ageing scales the whole image, so
/// after this the same surface looks the same at every exposure. Linear, no clamping: the
/// same arithmetic fits inside an exported graph.
pub fn normalize_exposure(chw: &mut [f32]) {
    let n = chw.len().max(1) as f64;
    let mean = chw.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = chw
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let gain = f64::from(EXPOSURE_STD) / var.sqrt().max(f64::from(EXPOSURE_MIN_STD));
    for v in chw {
        *v = ((f64::from(*v) - mean) * gain + f64::from(EXPOSURE_MEAN)) as f32;
    }
}

/// The autoencoder's augmentation (docs/method.md: one of brightness, contrast, saturation).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ColorJitter {
    Brightness(f32),
    Contrast(f32),
    Saturation(f32),
}

impl ColorJitter {
    /// Draws the kind uniformly and the factor uniformly in [0.8, 1.2].
    pub fn sample(rng: &mut Rng) -> Self {
        let kind = rng.below(3);
        let factor = (0.8 + 0.4 * rng.uniform()) as f32;
        match kind {
            0 => ColorJitter::Brightness(factor),
            1 => ColorJitter::Contrast(factor),
            _ => ColorJitter::Saturation(factor),
        }
    }

    /// Applies the jitter to a CHW image in [0, 1] (torchvision's definitions: blend with
    /// black, with the mean luma, or with the per-pixel luma; clamped to [0, 1]).
    pub fn apply(self, chw: &mut [f32]) {
        let plane = chw.len() / 3;
        let blend = |v: f32, other: f32, f: f32| (f * v + (1.0 - f) * other).clamp(0.0, 1.0);
        match self {
            ColorJitter::Brightness(f) => chw.iter_mut().for_each(|v| *v = blend(*v, 0.0, f)),
            ColorJitter::Contrast(f) => {
                let mean = (0..plane)
                    .map(|p| f64::from(luma(chw[p], chw[plane + p], chw[2 * plane + p])))
                    .sum::<f64>()
                    / plane as f64;
                let mean = mean as f32;
                chw.iter_mut().for_each(|v| *v = blend(*v, mean, f));
            }
            ColorJitter::Saturation(f) => {
                for p in 0..plane {
                    let l = luma(chw[p], chw[plane + p], chw[2 * plane + p]);
                    for c in 0..3 {
                        chw[c * plane + p] = blend(chw[c * plane + p], l, f);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_reproducible_and_uniformish() {
        let mut a = Rng::new(5);
        let mut b = Rng::new(5);
        let xs: Vec<u64> = (0..10).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..10).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        let mean = (0..10_000).map(|_| a.uniform()).sum::<f64>() / 10_000.0;
        assert!((mean - 0.5).abs() < 0.02);
    }

    #[test]
    fn jitter_matches_torchvision_definitions() {
        // One pixel (r, g, b) = (0.5, 0.2, 0.9).
        let px = || vec![0.5f32, 0.2, 0.9];
        let mut x = px();
        ColorJitter::Brightness(1.2).apply(&mut x);
        assert!((x[0] - 0.6).abs() < 1e-6 && (x[2] - 1.0).abs() < 1e-6);
        let l = 0.299 * 0.5 + 0.587 * 0.2 + 0.114 * 0.9;
        let mut x = px();
        ColorJitter::Saturation(0.8).apply(&mut x);
        assert!((x[1] - (0.8 * 0.2 + 0.2 * l)).abs() < 1e-6);
        let mut x = px();
        ColorJitter::Contrast(0.8).apply(&mut x);
        assert!((x[0] - (0.8 * 0.5 + 0.2 * l)).abs() < 1e-6);
    }

    /// Two exposures of one surface (gain 3, offset 0.05) become the same image, with the
    /// stated mean and standard deviation; a flat image stays flat.
    #[test]
    fn exposure_normalization_undoes_gain_and_offset() {
        let dark: Vec<f32> = (0..300).map(|i| 0.1 + 0.002 * (i % 50) as f32).collect();
        let mut bright: Vec<f32> = dark.iter().map(|v| 3.0 * v + 0.05).collect();
        let mut dark = dark;
        normalize_exposure(&mut dark);
        normalize_exposure(&mut bright);
        for (a, b) in dark.iter().zip(&bright) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let n = dark.len() as f32;
        let mean = dark.iter().sum::<f32>() / n;
        let std = (dark.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / n).sqrt();
        assert!((mean - EXPOSURE_MEAN).abs() < 1e-5 && (std - EXPOSURE_STD).abs() < 1e-5);
        let mut flat = vec![0.3f32; 12];
        normalize_exposure(&mut flat);
        assert!(flat.iter().all(|&v| (v - EXPOSURE_MEAN).abs() < 1e-6));
    }
}
