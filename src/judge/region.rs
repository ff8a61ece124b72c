//! The inspection region: the part of each image whose anomaly map decides the verdict.
//! Real lines need one — fixtures, tile edges and the conveyor are in view and are not the
//! part. It is chosen at calibration (`--ignore-border PX`, `--roi MASK.png`), recorded in the
//! calibration file, and applied identically to the score, the verdict and the heatmap.
//!
//! The region works on the cells of the anomaly map: a cell is inspected when its centre, in
//! image pixels, lies at least `ignore_border_px` from every edge and on a white pixel of the
//! ROI mask (scaled to the image, nearest pixel). The map covers the image as a
//! (size + 2·MAP_PAD)² grid (anomaly.rs), so cell (x, y) of the map has its centre at
//! ((x + MAP_PAD + 0.5)·W/P, (y + MAP_PAD + 0.5)·H/P) with P = size + 2·MAP_PAD.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use image::GrayImage;
use serde::{Deserialize, Serialize};

use crate::judge::anomaly::{MAP_PAD, resize_bilinear};

#[derive(Debug, thiserror::Error)]
pub enum RegionError {
    #[error("cannot read ROI mask {path}: {source}")]
    Read { path: PathBuf, source: crate::Cause },
    #[error(
        "ROI mask {path} changed since it was calibrated (sha256 {found}, calibration says {expected}); run `efficientad calibrate` again with it"
    )]
    Changed {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("ROI mask {path} has no white pixel: nothing would be inspected")]
    Empty { path: PathBuf },
}

/// The ROI mask as the calibration file records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoiRecord {
    /// The mask file (white = inspected), as given to `calibrate --roi`.
    pub path: String,
    pub sha256: String,
    pub width: u32,
    pub height: u32,
}

/// The region as the calibration file records it. The default inspects everything.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionRecord {
    /// Pixels left out along every edge of the image.
    #[serde(default)]
    pub ignore_border_px: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roi: Option<RoiRecord>,
}

/// A region ready to apply: the record and the decoded mask.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Region {
    pub record: RegionRecord,
    mask: Option<Arc<GrayImage>>,
}

impl RegionRecord {
    /// Whether every cell is inspected.
    pub fn is_whole_image(&self) -> bool {
        self.ignore_border_px == 0 && self.roi.is_none()
    }
}

fn read_mask(path: &Path) -> Result<GrayImage, RegionError> {
    let mask = image::open(path)
        .map_err(|e| RegionError::Read {
            path: path.to_owned(),
            source: e.into(),
        })?
        .to_luma8();
    if !mask.pixels().any(|p| p.0[0] > 127) {
        return Err(RegionError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(mask)
}

impl Region {
    /// Everything inspected.
    pub fn whole_image() -> Self {
        Self::default()
    }

    /// A new region from `calibrate`'s options: reads the mask and records its hash.
    pub fn new(ignore_border_px: u32, roi: Option<&Path>) -> Result<Self, RegionError> {
        let (record, mask) = match roi {
            Some(path) => {
                let mask = read_mask(path)?;
                let sha256 =
                    crate::model::bundle::file_sha256(path).map_err(|e| RegionError::Read {
                        path: path.to_owned(),
                        source: e.into(),
                    })?;
                let record = RoiRecord {
                    path: path.display().to_string(),
                    sha256,
                    width: mask.width(),
                    height: mask.height(),
                };
                (Some(record), Some(Arc::new(mask)))
            }
            None => (None, None),
        };
        Ok(Self {
            record: RegionRecord {
                ignore_border_px,
                roi: record,
            },
            mask,
        })
    }

    /// The region a calibration file records: the mask is read again and must be the one
    /// that was calibrated (same sha256).
    pub fn load(record: &RegionRecord) -> Result<Self, RegionError> {
        let mask = match &record.roi {
            Some(roi) => {
                let path = PathBuf::from(&roi.path);
                let found =
                    crate::model::bundle::file_sha256(&path).map_err(|e| RegionError::Read {
                        path: path.clone(),
                        source: e.into(),
                    })?;
                if found != roi.sha256 {
                    return Err(RegionError::Changed {
                        path,
                        found,
                        expected: roi.sha256.clone(),
                    });
                }
                Some(Arc::new(read_mask(&path)?))
            }
            None => None,
        };
        Ok(Self {
            record: record.clone(),
            mask,
        })
    }

    pub fn is_whole_image(&self) -> bool {
        self.record.is_whole_image()
    }

    /// Whether cell (gx, gy) of the padded (size + 2·MAP_PAD)² grid over a `width`x`height`
    /// image is inspected.
    fn keeps(&self, gx: usize, gy: usize, grid: usize, width: usize, height: usize) -> bool {
        let border = f64::from(self.record.ignore_border_px);
        let centre = |i: usize, extent: usize| (i as f64 + 0.5) * extent as f64 / grid as f64;
        let inside = |c: f64, extent: usize| c >= border && c < extent as f64 - border;
        let (cx, cy) = (centre(gx, width), centre(gy, height));
        if !(inside(cx, width) && inside(cy, height)) {
            return false;
        }
        match &self.mask {
            Some(mask) => {
                let mx =
                    ((cx * f64::from(mask.width()) / width as f64) as u32).min(mask.width() - 1);
                let my =
                    ((cy * f64::from(mask.height()) / height as f64) as u32).min(mask.height() - 1);
                mask.get_pixel(mx, my).0[0] > 127
            }
            None => true,
        }
    }

    /// Which cells of a `size`² map of a `width`x`height` image are inspected (row-major).
    pub fn cells(&self, size: usize, width: usize, height: usize) -> Vec<bool> {
        let grid = size + 2 * MAP_PAD;
        (0..size * size)
            .map(|i| self.keeps(i % size + MAP_PAD, i / size + MAP_PAD, grid, width, height))
            .collect()
    }

    /// The full-size map as the heatmap shows it: like [`crate::judge::anomaly::to_image_size`], but
    /// every grid cell outside the region (padding cells included) is NaN, which the overlay
    /// draws as the dimmed image.
    pub fn display_map(
        &self,
        combined: &[f32],
        size: usize,
        width: usize,
        height: usize,
    ) -> Vec<f32> {
        let grid = size + 2 * MAP_PAD;
        let mut padded = vec![0f32; grid * grid];
        for gy in 0..grid {
            for gx in 0..grid {
                let inside_map = (MAP_PAD..MAP_PAD + size).contains(&gx)
                    && (MAP_PAD..MAP_PAD + size).contains(&gy);
                padded[gy * grid + gx] = if !self.keeps(gx, gy, grid, width, height) {
                    f32::NAN
                } else if inside_map {
                    combined[(gy - MAP_PAD) * size + gx - MAP_PAD]
                } else {
                    0.0
                };
            }
        }
        resize_bilinear(&padded, grid, grid, width, height)
    }
}

/// The score of a combined map over the inspected cells: their maximum (NaN if one of them
/// is NaN, or if no cell is inspected, so such an image is never OK).
pub fn region_score(combined: &[f32], cells: &[bool]) -> f32 {
    let mut any = false;
    let mut max = f32::NEG_INFINITY;
    for (&v, _) in combined.iter().zip(cells).filter(|(_, keep)| **keep) {
        any = true;
        if v.is_nan() {
            return f32::NAN;
        }
        max = max.max(v);
    }
    if any { max } else { f32::NAN }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_image_keeps_every_cell() {
        let cells = Region::whole_image().cells(56, 300, 200);
        assert_eq!(cells.len(), 56 * 56);
        assert!(cells.iter().all(|&c| c));
    }

    /// 56-cell map on a 640-pixel side: the grid has 64 cells of 10 px, map cell i has its
    /// centre at 10·(i + 4) + 5. A 48-px border drops centres below 48 and at or above 592:
    /// cells 0 (45 px) and 55 (595 px) go, cells 1 (55 px) and 54 (585 px) stay.
    #[test]
    fn border_drops_the_cells_whose_centres_lie_in_it() {
        let region = Region::new(48, None).expect("region");
        let cells = region.cells(56, 640, 640);
        let at = |x: usize, y: usize| cells[y * 56 + x];
        assert!(!at(0, 20) && !at(55, 20) && !at(20, 0) && !at(20, 55));
        assert!(at(1, 1) && at(54, 54) && at(1, 54));
        assert_eq!(cells.iter().filter(|&&c| c).count(), 54 * 54);
    }

    #[test]
    fn score_is_the_maximum_inside_the_region() {
        let combined = [5.0, 1.0, 2.0, 9.0];
        assert_eq!(region_score(&combined, &[false, true, true, false]), 2.0);
        assert!(region_score(&combined, &[false; 4]).is_nan());
        assert!(region_score(&[f32::NAN, 1.0], &[true, true]).is_nan());
        assert_eq!(region_score(&[f32::NAN, 1.0], &[false, true]), 1.0);
    }
}
