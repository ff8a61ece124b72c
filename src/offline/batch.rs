//! Offline image runs (`infer`, `calibrate`, `eval`, `bench`): decode and resize image files on
//! a worker thread while the engine runs the previous batch, and hand back one outcome per
//! image, in input order. [`calibrate`] and [`test_split`] are the two runs built on it.
//!
//! A bounded channel joins the two threads, so decoding never runs more than two batches
//! ahead. A file that cannot be read or decoded becomes an error outcome for that file alone;
//! an engine failure becomes an error outcome for each image of that batch. Nothing aborts the
//! run except the caller.

pub mod calibrate;
pub mod test_split;

use std::path::{Path, PathBuf};
use std::time::Instant;

use crossbeam_channel::bounded;
use image::RgbImage;

use crate::judge::inspect::{MapsView, Part};
use crate::model::engine::{Engine, RawMaps};
use crate::model::preprocess::{Preprocessor, decode_file, to_rgb8};
use crate::ms;

/// Milliseconds spent per stage for one image.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Timings {
    /// Reading and decoding the file.
    pub decode_ms: f64,
    /// Colour conversion and resize to the network input.
    pub resize_ms: f64,
    /// The session run of the batch this image was in.
    pub inference_ms: f64,
    /// Map normalization, combination, score (and heatmap resize when one is written).
    pub maps_ms: f64,
    /// From the start of decoding to the verdict.
    pub total_ms: f64,
}

/// A successfully run image.
pub struct ImageMaps {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    /// The decoded image, kept only when asked for (heatmaps).
    pub image: Option<RgbImage>,
    pub st: Vec<f32>,
    pub ae: Vec<f32>,
    pub map_size: usize,
    pub batch_size: usize,
    pub timings: Timings,
    /// When decoding of this image started.
    pub started: Instant,
}

impl ImageMaps {
    /// The maps, borrowed for [`crate::judge::inspect::judge`].
    pub fn view(&self) -> MapsView<'_> {
        MapsView {
            st: &self.st,
            ae: &self.ae,
            side: self.map_size,
        }
    }

    /// The image they belong to.
    pub fn part(&self) -> Part<'_> {
        Part {
            name: &self.path,
            width: self.width,
            height: self.height,
            image: self.image.as_ref(),
        }
    }
}

/// One outcome per input file.
pub enum Outcome {
    Maps(ImageMaps),
    Error { path: PathBuf, error: String },
}

struct Decoded {
    path: PathBuf,
    width: u32,
    height: u32,
    image: Option<RgbImage>,
    input: Vec<u8>,
    timings: Timings,
    started: Instant,
}

enum Item {
    Ok(Decoded),
    Err { path: PathBuf, error: String },
}

/// Options of a run.
#[derive(Clone, Copy, Debug)]
pub struct RunOptions {
    pub batch: usize,
    /// Keep the decoded RGB image in each outcome (for overlays).
    pub keep_images: bool,
}

/// Runs every file through decode → resize → engine, calling `each` in input order.
pub fn run_files(
    engine: &mut Engine,
    files: &[PathBuf],
    options: RunOptions,
    mut each: impl FnMut(Outcome),
) {
    let batch = options.batch.max(1);
    let size = engine.input_size();
    let (tx, rx) = bounded::<Item>(2 * batch);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut pre = Preprocessor::new(size);
            for path in files {
                let item = decode_one(&mut pre, path, options.keep_images);
                if tx.send(item).is_err() {
                    break;
                }
            }
        });
        // `pending` keeps errors and images in input order until their batch has run.
        let mut pending: Vec<Item> = Vec::with_capacity(2 * batch);
        let mut ready = 0;
        let mut input = Vec::with_capacity(batch * size * size * 3);
        let mut maps = RawMaps::default();
        let mut flush = |pending: &mut Vec<Item>, ready: &mut usize| {
            run_batch(engine, pending, *ready, &mut input, &mut maps, &mut each);
            *ready = 0;
        };
        for item in rx.iter() {
            if matches!(item, Item::Ok(_)) {
                ready += 1;
            }
            pending.push(item);
            if ready == batch {
                flush(&mut pending, &mut ready);
            }
        }
        flush(&mut pending, &mut ready);
    });
}

fn decode_one(pre: &mut Preprocessor, path: &Path, keep: bool) -> Item {
    let started = Instant::now();
    let image = match decode_file(path) {
        Ok(image) => image,
        Err(e) => {
            return Item::Err {
                path: path.to_owned(),
                error: e.to_string(),
            };
        }
    };
    let decoded_at = Instant::now();
    let rgb = to_rgb8(image);
    let (width, height) = rgb.dimensions();
    let mut input = vec![0u8; pre.size() * pre.size() * 3];
    if let Err(e) = pre.resize_rgb(rgb.as_raw(), width, height, &mut input) {
        return Item::Err {
            path: path.to_owned(),
            error: e.to_string(),
        };
    }
    let timings = Timings {
        decode_ms: ms(decoded_at - started),
        resize_ms: ms(decoded_at.elapsed()),
        ..Timings::default()
    };
    Item::Ok(Decoded {
        path: path.to_owned(),
        width,
        height,
        image: keep.then_some(rgb),
        input,
        timings,
        started,
    })
}

fn run_batch(
    engine: &mut Engine,
    pending: &mut Vec<Item>,
    ready: usize,
    input: &mut Vec<u8>,
    maps: &mut RawMaps,
    each: &mut impl FnMut(Outcome),
) {
    if pending.is_empty() {
        return;
    }
    input.clear();
    for item in pending.iter() {
        if let Item::Ok(d) = item {
            input.extend_from_slice(&d.input);
        }
    }
    let t0 = Instant::now();
    let result = if ready > 0 {
        engine
            .run_into(input, ready, maps)
            .map_err(|e| e.to_string())
    } else {
        Ok(())
    };
    let inference_ms = ms(t0.elapsed());
    let mut k = 0;
    for item in pending.drain(..) {
        match item {
            Item::Err { path, error } => each(Outcome::Error { path, error }),
            Item::Ok(d) => {
                let outcome = match &result {
                    Ok(()) => {
                        let (st, ae) = maps.image(k);
                        Outcome::Maps(ImageMaps {
                            path: d.path,
                            width: d.width,
                            height: d.height,
                            image: d.image,
                            st: st.to_vec(),
                            ae: ae.to_vec(),
                            map_size: maps.size,
                            batch_size: ready,
                            timings: Timings {
                                inference_ms,
                                ..d.timings
                            },
                            started: d.started,
                        })
                    }
                    Err(e) => Outcome::Error {
                        path: d.path,
                        error: format!("inference failed: {e}"),
                    },
                };
                k += 1;
                each(outcome);
            }
        }
    }
}
