//! The verdict step: raw maps of one image + calibration → combined map, score, OK/NG, and
//! the heatmap overlay when one is wanted.

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use serde::Serialize;

use crate::anomaly::{score, to_image_size};
use crate::calibration::Calibration;
use crate::ms;
use crate::region::region_score;
use crate::report::{HeatmapNames, overlay};

/// The answer for one part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "NG")]
    Ng,
    #[serde(rename = "ERROR")]
    Error,
}

/// Where and when heatmaps are written.
pub struct HeatmapSink {
    pub dir: PathBuf,
    /// Write for every image, not only NG ones.
    pub all: bool,
    pub names: HeatmapNames,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot create heatmap folder {dir}: {reason}")]
pub struct HeatmapDirError {
    pub dir: PathBuf,
    pub reason: String,
}

impl HeatmapSink {
    /// Creates `dir` (and its parents) and writes overlays there: of every part with `all`,
    /// else of NG parts only.
    pub fn new(dir: &Path, all: bool) -> Result<Self, HeatmapDirError> {
        std::fs::create_dir_all(dir).map_err(|e| HeatmapDirError {
            dir: dir.to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Self {
            dir: dir.to_owned(),
            all,
            names: HeatmapNames::default(),
        })
    }

    /// A sink when a folder is given (the commands' `--heatmaps DIR`), none otherwise.
    pub fn optional(dir: Option<&Path>, all: bool) -> Result<Option<Self>, HeatmapDirError> {
        dir.map(|d| Self::new(d, all)).transpose()
    }
}

/// The two raw maps of one image, borrowed from wherever the engine left them.
#[derive(Clone, Copy)]
pub struct MapsView<'a> {
    pub st: &'a [f32],
    pub ae: &'a [f32],
    /// Side of the square maps.
    pub side: usize,
}

/// The part a map belongs to: its name (heatmap file names), its size in pixels (the region
/// and the heatmap are in image coordinates) and the image itself when an overlay may be drawn.
#[derive(Clone, Copy)]
pub struct Part<'a> {
    pub name: &'a Path,
    pub width: u32,
    pub height: u32,
    pub image: Option<&'a RgbImage>,
}

/// Score, verdict and heatmap of one image.
pub struct Judged {
    pub score: f32,
    pub verdict: Verdict,
    pub heatmap: Option<PathBuf>,
    pub heatmap_error: Option<String>,
    pub maps_ms: f64,
}

/// Judges one image; `combined` is a reused buffer and holds the whole combined map after.
pub fn judge(
    maps: MapsView<'_>,
    part: Part<'_>,
    calibration: &Calibration,
    combined: &mut Vec<f32>,
    heatmaps: Option<&mut HeatmapSink>,
) -> Judged {
    let t0 = Instant::now();
    calibration
        .normalization
        .combine_into(maps.st, maps.ae, combined);
    // `combined` stays the whole map (eval's pixel metrics are over the whole image); the
    // score and the heatmap see the inspection region only.
    let cells = (!calibration.inspected.is_whole_image()).then(|| {
        calibration
            .inspected
            .cells(maps.side, part.width as usize, part.height as usize)
    });
    let s = match &cells {
        Some(c) => region_score(combined, c),
        None => score(combined),
    };
    let verdict = if calibration.is_anomalous(s) {
        Verdict::Ng
    } else {
        Verdict::Ok
    };
    let mut heatmap = None;
    let mut heatmap_error = None;
    if let (Some(sink), Some(image)) = (heatmaps, part.image)
        && (sink.all || verdict == Verdict::Ng)
    {
        let (w, h) = (part.width as usize, part.height as usize);
        let full = if cells.is_some() {
            calibration.inspected.display_map(combined, maps.side, w, h)
        } else {
            to_image_size(combined, maps.side, w, h)
        };
        let path = sink.names.name_for(&sink.dir, part.name);
        match overlay(image, &full, calibration.threshold).save(&path) {
            Ok(()) => heatmap = Some(path),
            Err(e) => heatmap_error = Some(format!("cannot write heatmap {}: {e}", path.display())),
        }
    }
    Judged {
        score: s,
        verdict,
        heatmap,
        heatmap_error,
        maps_ms: ms(t0.elapsed()),
    }
}
