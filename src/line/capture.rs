//! Training images from the line's own source (`efficientad capture`): frames taken by the
//! same source code as `run` (camera settings, colour conversion), written losslessly as PNG
//! into the layout `fit` and `calibrate` read (docs/design.md, Data layout): `train/good/` and
//! `validation/good/`, each frame's folder drawn from a seeded stream.
//!
//! Names never replace a file (the heatmap writer's rule: `<folder>_<stem>.png` of the frame's
//! origin, numbered, with this process's tag when an earlier one took the name), and a file
//! appears under its name only once complete, so a stop at any moment leaves whole PNGs.

use std::path::{Path, PathBuf};

use crate::line::source::Frame;
use crate::offline::report::{HeatmapNames, PngError};

pub const TRAIN: &str = "train/good";
pub const VALIDATION: &str = "validation/good";

#[derive(Debug, thiserror::Error)]
#[error("cannot create {path}: {source}")]
pub struct CreateError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Where one frame went.
pub struct Saved {
    pub path: PathBuf,
    pub split: &'static str,
}

/// Splits and writes captured frames.
pub struct Collector {
    out: PathBuf,
    validation_share: f64,
    state: u64,
    names: HeatmapNames,
    pub train: u64,
    pub validation: u64,
}

impl Collector {
    /// Creates `out/train/good` and `out/validation/good`; `validation_share` of the frames
    /// (drawn with `seed`) go to the second.
    pub fn new(out: &Path, validation_share: f64, seed: u64) -> Result<Self, CreateError> {
        for split in [TRAIN, VALIDATION] {
            let path = out.join(split);
            std::fs::create_dir_all(&path).map_err(|source| CreateError { path, source })?;
        }
        Ok(Self {
            out: out.to_owned(),
            validation_share,
            state: seed,
            names: HeatmapNames::default(),
            train: 0,
            validation: 0,
        })
    }

    /// A uniform draw in [0, 1) (SplitMix64: small, seeded, the same on every platform).
    fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Writes `frame` as a PNG into its drawn folder. The draw is made whether or not the
    /// write succeeds, so the split of later frames does not depend on failures.
    pub fn save(&mut self, frame: &Frame) -> Result<Saved, PngError> {
        let split = if self.uniform() < self.validation_share {
            VALIDATION
        } else {
            TRAIN
        };
        let dir = self.out.join(split);
        let path = self
            .names
            .write(&dir, Path::new(&frame.origin), &frame.image)?;
        match split {
            VALIDATION => self.validation += 1,
            _ => self.train += 1,
        }
        Ok(Saved { path, split })
    }
}
