//! Calibrating a model on the line's own images: run the engine over normal (and optionally
//! anomalous) image files with the offline runner, then hand the maps to the calibration
//! maths ([`crate::judge::calibration::compute`]).

use std::path::{Path, PathBuf};

use super::{Outcome as ImageOutcome, RunOptions, run_files};
use crate::judge::calibration::{Calibration, CalibrationError, MapPair, ValidationSet, compute};
use crate::judge::region::Region;
use crate::model::bundle::Bundle;
use crate::model::engine::Engine;
use crate::offline::images::{FolderError, image_folder};

/// Images to calibrate on, with the name the calibration file records for them.
pub struct ImageSet {
    pub label: String,
    pub files: Vec<PathBuf>,
}

impl ImageSet {
    /// The image files of a folder.
    pub fn folder(dir: &Path) -> Result<Self, FolderError> {
        let files = image_folder(dir)?;
        Ok(Self {
            label: dir.display().to_string(),
            files,
        })
    }
}

/// Per-image progress of a calibration run.
pub enum Progress<'a> {
    Done,
    Skipped(&'a Path, &'a str),
}

fn run_maps(
    engine: &mut Engine,
    files: &[PathBuf],
    batch: usize,
    progress: &mut dyn FnMut(Progress<'_>),
) -> (Vec<MapPair>, usize) {
    let mut maps = Vec::with_capacity(files.len());
    let mut failed = 0;
    let options = RunOptions {
        batch,
        keep_images: false,
    };
    run_files(engine, files, options, |outcome| match outcome {
        ImageOutcome::Maps(m) => {
            maps.push(MapPair {
                st: m.st,
                ae: m.ae,
                width: m.width as usize,
                height: m.height as usize,
            });
            progress(Progress::Done);
        }
        ImageOutcome::Error { path, error } => {
            failed += 1;
            progress(Progress::Skipped(&path, &error));
        }
    });
    (maps, failed)
}

/// Runs the model over normal (and optionally anomalous) images and builds the calibration.
/// Unreadable images are reported through `progress`, counted, and left out.
#[allow(clippy::too_many_arguments)]
pub fn calibrate_files(
    engine: &mut Engine,
    bundle: &Bundle,
    normal: &ImageSet,
    anomalous: Option<&ImageSet>,
    false_reject_rate: f64,
    region: &Region,
    batch: usize,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Calibration, CalibrationError> {
    let (normal_maps, failed) = run_maps(engine, &normal.files, batch, progress);
    if normal_maps.is_empty() {
        return Err(CalibrationError::NoImages { failed });
    }
    let (anomalous_maps, anomalous_failed) = match anomalous {
        Some(set) => run_maps(engine, &set.files, batch, progress),
        None => (Vec::new(), 0),
    };
    let computed = compute(&normal_maps, &anomalous_maps, false_reject_rate, region)?;
    let validation = ValidationSet {
        folder: normal.label.clone(),
        images: normal_maps.len(),
        failed: failed + anomalous_failed,
        anomalous_folder: anomalous.map(|a| a.label.clone()),
        anomalous_images: anomalous_maps.len(),
    };
    let mut calibration = Calibration::assemble(bundle, engine.provider(), validation, computed)?;
    calibration.region = region.record.clone();
    calibration.inspected = region.clone();
    Ok(calibration)
}
