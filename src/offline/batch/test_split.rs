//! Running a model over a dataset's test split: each image judged with its calibration and
//! paired with its ground truth, ready for [`crate::offline::evaluation::report`]. Shared by
//! `efficientad eval` and the training run's quality checkpoints (`fit --eval-every`).

use std::path::PathBuf;

use super::{Outcome as ImageOutcome, RunOptions, run_files};
use crate::judge::calibration::Calibration;
use crate::judge::inspect::{HeatmapSink, judge};
use crate::model::engine::Engine;
use crate::offline::dataset::TestImage;
use crate::offline::evaluation::{EvalImage, pack_mask};

#[derive(Debug, thiserror::Error)]
pub enum TestRunError {
    #[error("cannot read mask {path}: {source}")]
    Mask {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error(
        "mask {mask} is {mask_width}x{mask_height}, but its image {image} is {width}x{height}; masks must match their images"
    )]
    MaskSize {
        mask: PathBuf,
        image: PathBuf,
        mask_width: u32,
        mask_height: u32,
        width: usize,
        height: usize,
    },
    #[error("no test image could be run ({failed} failed)")]
    NoImages { failed: usize },
}

/// The judged test images, and `path: error` for each image that could not be run.
pub struct TestRun {
    pub images: Vec<EvalImage>,
    pub failures: Vec<String>,
}

/// The ground truth of one image as bits: its mask, all zeros for a good image, `None` for a
/// defect image without a mask.
pub fn load_mask(
    item: &TestImage,
    width: usize,
    height: usize,
) -> Result<Option<Vec<u64>>, TestRunError> {
    let Some(path) = &item.mask else {
        return Ok((!item.anomalous).then(|| pack_mask(&vec![0; width * height])));
    };
    let mask = image::open(path)
        .map_err(|e| TestRunError::Mask {
            path: path.clone(),
            source: e,
        })?
        .to_luma8();
    if (mask.width() as usize, mask.height() as usize) != (width, height) {
        return Err(TestRunError::MaskSize {
            mask: path.clone(),
            image: item.path.clone(),
            mask_width: mask.width(),
            mask_height: mask.height(),
            width,
            height,
        });
    }
    Ok(Some(pack_mask(mask.as_raw())))
}

/// Runs `engine` over `items`, judging each image with `calibration` (its inspection region
/// included; the kept map is the whole one, as pixel metrics are over the whole image) and
/// writing heatmaps when a sink is given. `progress` is called once per image.
pub fn run_test_split(
    engine: &mut Engine,
    calibration: &Calibration,
    items: &[TestImage],
    batch: usize,
    mut heatmaps: Option<&mut HeatmapSink>,
    progress: &mut dyn FnMut(),
) -> Result<TestRun, TestRunError> {
    let files: Vec<PathBuf> = items.iter().map(|i| i.path.clone()).collect();
    let options = RunOptions {
        batch,
        keep_images: heatmaps.is_some(),
    };
    let mut images = Vec::with_capacity(items.len());
    let mut failures = Vec::new();
    let mut mask_error = None;
    let mut combined = Vec::new();
    let mut index = 0;
    run_files(engine, &files, options, |outcome| {
        let item = &items[index];
        index += 1;
        progress();
        match outcome {
            ImageOutcome::Maps(maps) => {
                let judged = judge(
                    maps.view(),
                    maps.part(),
                    calibration,
                    &mut combined,
                    heatmaps.as_deref_mut(),
                );
                let (w, h) = (maps.width as usize, maps.height as usize);
                match load_mask(item, w, h) {
                    Ok(mask) => images.push(EvalImage {
                        path: maps.path.clone(),
                        defect: item.defect.clone(),
                        anomalous: item.anomalous,
                        score: judged.score,
                        map: combined.clone(),
                        map_size: maps.map_size,
                        map_pad: crate::judge::anomaly::MAP_PAD,
                        width: w,
                        height: h,
                        mask,
                        // Service time of this image (its batch's run included), without the
                        // time it waited in the decode queue.
                        latency_ms: maps.timings.decode_ms
                            + maps.timings.resize_ms
                            + maps.timings.inference_ms
                            + judged.maps_ms,
                    }),
                    Err(e) => {
                        mask_error.get_or_insert(e);
                    }
                }
            }
            ImageOutcome::Error { path, error } => {
                failures.push(format!("{}: {error}", path.display()))
            }
        }
    });
    if let Some(e) = mask_error {
        return Err(e);
    }
    if images.is_empty() {
        return Err(TestRunError::NoImages {
            failed: failures.len(),
        });
    }
    Ok(TestRun { images, failures })
}
