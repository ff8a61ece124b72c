//! The verdict step: raw maps of one image + calibration → combined map, score, OK/NG, and
//! the heatmap overlay when one is wanted.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::anomaly::{score, to_image_size};
use crate::batch::{ImageMaps, ms};
use crate::calibration::Calibration;
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

impl HeatmapSink {
    pub fn new(dir: &Path, all: bool) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            all,
            names: HeatmapNames::default(),
        })
    }
}

/// Score, verdict and heatmap of one image.
pub struct Judged {
    pub score: f32,
    pub verdict: Verdict,
    pub heatmap: Option<PathBuf>,
    pub heatmap_error: Option<String>,
    pub maps_ms: f64,
}

/// Judges one image; `combined` is a reused buffer.
pub fn judge(
    maps: &ImageMaps,
    calibration: &Calibration,
    combined: &mut Vec<f32>,
    heatmaps: Option<&mut HeatmapSink>,
) -> Judged {
    let t0 = Instant::now();
    calibration
        .normalization
        .combine_into(&maps.st, &maps.ae, combined);
    // `combined` stays the whole map (eval's pixel metrics are over the whole image); the
    // score and the heatmap see the inspection region only.
    let cells = (!calibration.inspected.is_whole_image()).then(|| {
        calibration
            .inspected
            .cells(maps.map_size, maps.width as usize, maps.height as usize)
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
    if let (Some(sink), Some(image)) = (heatmaps, maps.image.as_ref())
        && (sink.all || verdict == Verdict::Ng)
    {
        let (w, h) = (maps.width as usize, maps.height as usize);
        let full = if cells.is_some() {
            calibration
                .inspected
                .display_map(combined, maps.map_size, w, h)
        } else {
            to_image_size(combined, maps.map_size, w, h)
        };
        let path = sink.names.name_for(&sink.dir, &maps.path);
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
