//! `efficientad quantize`: an fp32 bundle → an int8 (QDQ) bundle calibrated on normal images.
//!
//! 1. The fp32 graph is opened with every tensor the rewrite needs a range for exposed as an
//!    extra output, and run on the calibration images; each tensor's values go into a
//!    [`ranges::Histogram`].
//! 2. Ranges are chosen from the histograms (a two-sided percentile, 100 = min–max) and the
//!    graph is rewritten by [`rewrite`].
//! 3. The new bundle is written (model.json records the precision, the source model's sha256,
//!    the images and the rule) and checked: ONNX Runtime opens it through the same
//!    [`Engine`](crate::model::engine::Engine) as every command, and its maps are compared
//!    with the fp32 maps on calibration images.

mod measure;
pub mod ranges;
pub mod rewrite;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::model::bundle::{
    Bundle, BundleError, FP32, INFO_FILE, INT8, MODEL_FILE, ModelInfo, sha256_hex,
};
use crate::model::engine::EngineError;
use crate::model::onnx_proto::read::{DecodeError, Model};
use crate::offline::images::{FolderError, image_folder};

use measure::{Reference, measure, probe_bytes, session};
use ranges::QParams;
pub use ranges::RangeRule;
use rewrite::{Plan, RewriteError};

/// Default percentile of the activation ranges (see README, "int8").
pub const DEFAULT_PERCENTILE: f64 = 99.999;
/// Calibration images the maps of the written graph are compared on (the first ones).
const CHECK_IMAGES: usize = 8;

#[derive(Clone, Debug)]
pub struct QuantizeOptions {
    pub model: PathBuf,
    pub images: PathBuf,
    pub out: PathBuf,
    /// At most this many images (the first in name order).
    pub max_images: usize,
    pub rule: RangeRule,
    /// Convolutions (node-name prefixes) left in fp32.
    pub keep_fp32: Vec<String>,
    pub threads: Option<usize>,
    /// Also measure each convolution's share of the map error (one graph per convolution).
    pub sensitivity: bool,
    /// The command line, recorded in model.json.
    pub command: String,
}

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Folder(#[from] FolderError),
    #[error("{path}: {source}")]
    Decode { path: PathBuf, source: DecodeError },
    #[error(transparent)]
    Rewrite(#[from] RewriteError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(
        "{0} is already {1}; quantize the fp32 bundle it came from (model.json names it under quantization.source_model)"
    )]
    NotFp32(PathBuf, String),
    #[error("none of the {tried} calibration images could be run (first problem: {first})")]
    NoImages { tried: usize, first: String },
    #[error("calibration image {path}: {reason}")]
    Activations { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: crate::Cause },
    #[error(
        "--out {out} is the bundle being quantized ({model}); writing there would replace the fp32 model with its int8 copy; give another folder, e.g. {model}-int8"
    )]
    SameBundle { out: PathBuf, model: PathBuf },
}

/// The canonical form of `path`, also when it does not exist yet (its parent's canonical
/// form plus its name), so a new folder can be compared with an existing one.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            canonical(parent).join(name)
        }
        _ => path.to_owned(),
    }
}

/// Progress of a quantization, for the caller's progress bar.
pub enum Progress<'a> {
    /// Calibration is starting on this many images.
    Start(usize),
    Image,
    Skipped(&'a Path, &'a str),
    /// Comparing the written graph's maps with the fp32 maps.
    Checking,
    /// Measuring the graph with convolution `.0` of `.1` kept fp32.
    Sensitivity(usize, usize),
}

/// What was written and how close its maps are to fp32.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub bundle: PathBuf,
    pub images: usize,
    pub skipped: usize,
    pub quantized_convs: usize,
    pub kept_fp32: Vec<String>,
    /// Mean |int8 − fp32| / mean |fp32| of each map over the checked images.
    pub st_error: f64,
    pub ae_error: f64,
    pub checked_images: usize,
    /// With `sensitivity`: the map errors with each convolution alone kept fp32.
    pub sensitivity: Vec<Sensitivity>,
    pub seconds: f64,
}

/// Map errors of the graph with one convolution kept fp32.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Sensitivity {
    pub kept_fp32: String,
    pub st_error: f64,
    pub ae_error: f64,
}

fn write_err(path: &Path, e: impl Into<crate::Cause>) -> QuantizeError {
    QuantizeError::Write {
        path: path.to_owned(),
        source: e.into(),
    }
}

/// Writes `dir`'s model.json.
fn write_info(dir: &Path, info: &ModelInfo) -> Result<(), QuantizeError> {
    let info_path = dir.join(INFO_FILE);
    let text = serde_json::to_string_pretty(info).map_err(|e| write_err(&info_path, e))?;
    std::fs::write(&info_path, text + "\n").map_err(|e| write_err(&info_path, e))
}

/// Writes `bytes` as a bundle in `dir` with `info` (its hash and precision updated) and opens
/// it as every command does.
fn write_bundle(dir: &Path, bytes: &[u8], info: &mut ModelInfo) -> Result<Bundle, QuantizeError> {
    std::fs::create_dir_all(dir).map_err(|e| write_err(dir, e))?;
    let onnx_path = dir.join(MODEL_FILE);
    std::fs::write(&onnx_path, bytes).map_err(|e| write_err(&onnx_path, e))?;
    info.model_sha256 = sha256_hex(bytes);
    info.precision = INT8.into();
    write_info(dir, info)?;
    Ok(Bundle::open(dir)?)
}

/// For each quantized convolution, the map error when it also stays fp32 (beside `keep`).
fn sensitivity(
    model: &Model,
    ranges: &BTreeMap<String, QParams>,
    keep: &[String],
    convs: &[String],
    info: &ModelInfo,
    reference: &Reference,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Vec<Sensitivity>, QuantizeError> {
    let dir = std::env::temp_dir().join(format!("efficientad-sensitivity-{}", std::process::id()));
    let mut rows = Vec::new();
    for (i, conv) in convs.iter().enumerate() {
        progress(Progress::Sensitivity(i, convs.len()));
        let also: Vec<String> = keep.iter().chain([conv]).cloned().collect();
        let plan = Plan::new(&model.graph, &also)?;
        let graph = rewrite::rewrite(&model.graph, &plan, ranges)?;
        let bundle = write_bundle(&dir, &model.with_graph(graph).encode(), &mut info.clone())?;
        let (st_error, ae_error) = reference.error(&bundle)?;
        rows.push(Sensitivity {
            kept_fp32: conv.clone(),
            st_error,
            ae_error,
        });
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(rows)
}

/// Quantizes `options.model` into `options.out`.
pub fn quantize(
    options: &QuantizeOptions,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<Report, QuantizeError> {
    let started = Instant::now();
    let source = Bundle::open(&options.model)?;
    // Before anything is written: the int8 bundle must not land on its own source.
    if canonical(&options.out) == canonical(&source.dir) {
        return Err(QuantizeError::SameBundle {
            out: options.out.clone(),
            model: source.dir.clone(),
        });
    }
    if source.info.precision != FP32 {
        return Err(QuantizeError::NotFp32(
            options.model.clone(),
            source.info.precision.clone(),
        ));
    }
    let mut files = image_folder(&options.images)?;
    files.truncate(options.max_images.max(1));
    let bytes = std::fs::read(&source.onnx_path).map_err(|e| BundleError::Read {
        path: source.onnx_path.clone(),
        source: e,
    })?;
    let model = Model::decode(&bytes).map_err(|source_err| QuantizeError::Decode {
        path: source.onnx_path.clone(),
        source: source_err,
    })?;
    let plan = Plan::new(&model.graph, &options.keep_fp32)?;
    let measured = plan.tensors();

    progress(Progress::Start(files.len()));
    let (histograms, skipped) = {
        let mut probe = session(
            &probe_bytes(&model, &measured),
            options.threads,
            &source.onnx_path,
        )?;
        measure(
            &mut probe,
            &files,
            source.info.input_size,
            &measured,
            progress,
        )?
    };
    let ranges: BTreeMap<String, QParams> = measured
        .iter()
        .zip(&histograms)
        .map(|(t, h)| {
            let (lo, hi) = h.range(options.rule);
            (t.clone(), QParams::covering(lo, hi))
        })
        .collect();
    let graph = rewrite::rewrite(&model.graph, &plan, &ranges)?;
    let quantized = model.with_graph(graph).encode();

    let mut info = source.info.clone();
    info.name = options
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("{}-int8", info.name));
    info.exporter = format!("efficientad quantize {}", env!("CARGO_PKG_VERSION"));
    let used = files.len() - skipped;
    let record = |st: Option<f64>, ae: Option<f64>, n: usize, seconds: f64| {
        serde_json::json!({
            "source_model": options.model.display().to_string(),
            "source_model_sha256": source.info.model_sha256,
            "calibration_images": options.images.display().to_string(),
            "images": used,
            "skipped_images": skipped,
            "activation_ranges": options.rule.to_string(),
            "activations": "uint8, per tensor, asymmetric",
            "weights": "int8, per output channel, symmetric (-127..127)",
            "quantized_convs": plan.convs.len(),
            "kept_fp32": plan.kept,
            "map_error_vs_fp32": { "st": st, "ae": ae, "images": n },
            "command": options.command,
            "wall_seconds": seconds,
        })
    };
    info.quantization = Some(record(None, None, 0, started.elapsed().as_secs_f64()));
    // The written bundle must open like any other, and its maps must be close to fp32's.
    let written = write_bundle(&options.out, &quantized, &mut info)?;
    progress(Progress::Checking);
    let check: Vec<PathBuf> = files.iter().take(CHECK_IMAGES).cloned().collect();
    let reference = Reference::new(&source, &check, options.threads)?;
    let (st_error, ae_error) = reference.error(&written)?;
    let sensitivity = if options.sensitivity {
        sensitivity(
            &model,
            &ranges,
            &options.keep_fp32,
            &plan.convs,
            &info,
            &reference,
            progress,
        )?
    } else {
        Vec::new()
    };
    let seconds = started.elapsed().as_secs_f64();
    let checked = reference.inputs.len();
    // Only model.json changes: the graph written above stays.
    info.quantization = Some(record(Some(st_error), Some(ae_error), checked, seconds));
    write_info(&options.out, &info)?;
    Ok(Report {
        bundle: options.out.clone(),
        images: used,
        skipped,
        quantized_convs: plan.convs.len(),
        kept_fp32: plan.kept.clone(),
        st_error,
        ae_error,
        checked_images: checked,
        sensitivity,
        seconds,
    })
}
