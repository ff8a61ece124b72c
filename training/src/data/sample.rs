//! One training step's inputs built from the images in memory (docs/method.md, Algorithm 1):
//! the training image I, a penalty image P (grayscale with probability 0.3) and I′ = aug(I).

use super::{ColorJitter, Rng, grayscale, normalize_exposure, to_chw};
use crate::model::IMAGE_SIZE;

/// Probability that a penalty image is turned to grayscale (docs/method.md).
pub const PENALTY_GRAY_P: f64 = 0.3;

/// The three network inputs of one step, CHW in [0, 1] at `IMAGE_SIZE`².
pub struct Sample {
    /// I: the training image (exposure-normalized when the run asks for it).
    pub image: Vec<f32>,
    /// P: the penalty image.
    pub penalty: Vec<f32>,
    /// I′ = aug(I): colour-jittered.
    pub augmented: Vec<f32>,
}

impl Sample {
    /// Builds the inputs for training image `train` (RGB8 `IMAGE_SIZE`²), drawing from `rng`
    /// in this order: the penalty image, its grayscale coin, the jitter. The order is part of
    /// the run: a resumed run replays the same stream, so it must never change.
    pub fn draw(train: &[u8], penalty_images: &[Vec<u8>], normalize: bool, rng: &mut Rng) -> Self {
        let image = to_chw(train, IMAGE_SIZE);
        let mut penalty = to_chw(&penalty_images[rng.below(penalty_images.len())], IMAGE_SIZE);
        if rng.uniform() < PENALTY_GRAY_P {
            grayscale(&mut penalty);
        }
        // The jitter acts on the image as captured (it clamps to [0, 1]); the exposure
        // normalization, like the exported graph's, on whatever reaches the networks.
        let mut augmented = image.clone();
        ColorJitter::sample(rng).apply(&mut augmented);
        let mut sample = Self {
            image,
            penalty,
            augmented,
        };
        if normalize {
            for chw in [
                &mut sample.image,
                &mut sample.penalty,
                &mut sample.augmented,
            ] {
                normalize_exposure(chw);
            }
        }
        sample
    }
}

/// An RGB8 `IMAGE_SIZE`² image as the networks see it: CHW in [0, 1], exposure-normalized
/// when asked.
pub fn network_input(px: &[u8], normalize: bool) -> Vec<f32> {
    let mut chw = to_chw(px, IMAGE_SIZE);
    if normalize {
        normalize_exposure(&mut chw);
    }
    chw
}
