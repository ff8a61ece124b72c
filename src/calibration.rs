//! The calibration file (DESIGN.md): map normalization quantiles and the decision threshold,
//! computed by the runtime itself over normal validation images, on the provider and precision
//! that will run on the line.
//!
//! Threshold rules (a part is NG when its score is above the threshold):
//! - `false_reject_rate` (default): the (1 − R)-quantile of the normal validation scores, so
//!   about a share R of good parts like those would be rejected;
//! - `best_f1` (when anomalous images are given): the cut between two consecutive distinct
//!   scores that maximizes F1 with anomalous = positive. Never chosen without anomalous images:
//!   F1 over normal images alone collapses to the minimum score.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::anomaly::{MapNormalization, map_quantiles, quantile_sorted};
use crate::batch::{Outcome as ImageOutcome, RunOptions, list_images, run_files};
use crate::bundle::Bundle;
use crate::engine::{Engine, Provider};
use crate::region::{Region, RegionError, RegionRecord, region_score};

/// Version of the calibration format this runtime writes and reads.
pub const CALIBRATION_FORMAT_VERSION: u32 = 1;
/// Default target share of good parts rejected.
pub const DEFAULT_FALSE_REJECT_RATE: f64 = 0.01;

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("cannot read calibration {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not a valid calibration file: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error(
        "{path} has format_version {found}; this runtime reads version {CALIBRATION_FORMAT_VERSION}: run `efficientad calibrate` again"
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "{path} was made for another model (sha256 {found}), not {model} (sha256 {expected}); run `efficientad calibrate --model {model}` to make one for it"
    )]
    OtherModel {
        path: PathBuf,
        model: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "no validation image could be run ({failed} failed); calibration needs normal images that decode"
    )]
    NoImages { failed: usize },
    #[error(
        "the validation maps are constant ({which}: q_a = q_b = {value}); the model or the images are degenerate and cannot be normalized"
    )]
    Degenerate { which: &'static str, value: f64 },
    #[error("{0} does not exist or is not a folder")]
    NoFolder(PathBuf),
    #[error("{path} holds no images ({})", crate::batch::IMAGE_EXTENSIONS.join(", "))]
    EmptyFolder { path: PathBuf },
    #[error("cannot list {path}: {reason}")]
    List { path: PathBuf, reason: String },
    #[error("{0}")]
    Engine(String),
    #[error(transparent)]
    Region(#[from] RegionError),
    #[error(
        "the inspection region leaves no cell of the anomaly map of a {width}x{height} image; use a smaller --ignore-border or a larger ROI"
    )]
    EmptyRegion { width: usize, height: usize },
    #[error("cannot write calibration {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Summary of a score distribution.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    pub count: usize,
    pub min: f64,
    pub median: f64,
    pub p99: f64,
    pub max: f64,
}

impl ScoreSummary {
    pub fn of(scores: &[f32]) -> Option<Self> {
        let mut s = scores.to_vec();
        s.sort_unstable_by(|a, b| a.total_cmp(b));
        Some(Self {
            count: s.len(),
            min: f64::from(*s.first()?),
            median: quantile_sorted(&s, 0.5),
            p99: quantile_sorted(&s, 0.99),
            max: f64::from(*s.last()?),
        })
    }
}

/// How the threshold was chosen.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum ThresholdRule {
    FalseRejectRate {
        target: f64,
        /// Share of the validation images above the threshold.
        achieved: f64,
    },
    BestF1 {
        f1: f64,
        precision: f64,
        recall: f64,
    },
}

/// The images a calibration was computed on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidationSet {
    pub folder: String,
    pub images: usize,
    /// Files that could not be decoded or run (left out).
    pub failed: usize,
    pub anomalous_folder: Option<String>,
    pub anomalous_images: usize,
}

/// calibration/<name>.json.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub format_version: u32,
    pub model_name: String,
    pub model_sha256: String,
    pub provider: String,
    pub precision: String,
    pub validation: ValidationSet,
    pub normalization: MapNormalization,
    pub threshold: f64,
    pub threshold_rule: ThresholdRule,
    /// Scores of the normal validation images.
    pub scores: ScoreSummary,
    pub anomalous_scores: Option<ScoreSummary>,
    pub created_by: String,
    /// The inspection region; absent in the file when the whole image is inspected.
    #[serde(default, skip_serializing_if = "RegionRecord::is_whole_image")]
    pub region: RegionRecord,
    /// The region ready to apply (the ROI mask decoded), set by `load`.
    #[serde(skip)]
    pub inspected: Region,
}

/// Raw maps of one image (`[size²]` each) and the image's size (for the region).
pub struct MapPair {
    pub st: Vec<f32>,
    pub ae: Vec<f32>,
    pub width: usize,
    pub height: usize,
}

impl MapPair {
    /// The inspected cells of this image's maps; `None` when all are.
    fn cells(&self, region: &Region) -> Result<Option<Vec<bool>>, CalibrationError> {
        if region.is_whole_image() {
            return Ok(None);
        }
        let side = self.st.len().isqrt();
        let cells = region.cells(side, self.width, self.height);
        if !cells.iter().any(|&c| c) {
            return Err(CalibrationError::EmptyRegion {
                width: self.width,
                height: self.height,
            });
        }
        Ok(Some(cells))
    }
}

/// The numeric part of a calibration.
#[derive(Clone, Debug, PartialEq)]
pub struct Computed {
    pub normalization: MapNormalization,
    pub threshold: f64,
    pub rule: ThresholdRule,
    pub normal_scores: Vec<f32>,
    pub anomalous_scores: Vec<f32>,
}

/// Computes quantiles over the inspected cells of the normal maps (all cells without a
/// region), the scores over the same cells, and the threshold.
pub fn compute(
    normal: &[MapPair],
    anomalous: &[MapPair],
    false_reject_rate: f64,
    region: &Region,
) -> Result<Computed, CalibrationError> {
    let normal_cells = normal
        .iter()
        .map(|m| m.cells(region))
        .collect::<Result<Vec<_>, _>>()?;
    let anomalous_cells = anomalous
        .iter()
        .map(|m| m.cells(region))
        .collect::<Result<Vec<_>, _>>()?;
    let inspected = |values: &[f32], cells: &Option<Vec<bool>>| -> Vec<f32> {
        match cells {
            Some(c) => values
                .iter()
                .zip(c)
                .filter(|(_, keep)| **keep)
                .map(|(v, _)| *v)
                .collect(),
            None => values.to_vec(),
        }
    };
    let mut st: Vec<f32> = normal
        .iter()
        .zip(&normal_cells)
        .flat_map(|(m, c)| inspected(&m.st, c))
        .collect();
    let mut ae: Vec<f32> = normal
        .iter()
        .zip(&normal_cells)
        .flat_map(|(m, c)| inspected(&m.ae, c))
        .collect();
    let normalization = MapNormalization {
        st: map_quantiles(&mut st),
        ae: map_quantiles(&mut ae),
    };
    for (which, q) in [("map_st", normalization.st), ("map_ae", normalization.ae)] {
        if q.q_b.partial_cmp(&q.q_a) != Some(std::cmp::Ordering::Greater) {
            return Err(CalibrationError::Degenerate {
                which,
                value: q.q_a,
            });
        }
    }
    let scores_of = |maps: &[MapPair], cells: &[Option<Vec<bool>>]| -> Vec<f32> {
        let mut buf = Vec::new();
        maps.iter()
            .zip(cells)
            .map(|(m, c)| {
                normalization.combine_into(&m.st, &m.ae, &mut buf);
                match c {
                    Some(c) => region_score(&buf, c),
                    None => crate::anomaly::score(&buf),
                }
            })
            .collect()
    };
    let normal_scores = scores_of(normal, &normal_cells);
    let anomalous_scores = scores_of(anomalous, &anomalous_cells);
    let (threshold, rule) = if anomalous_scores.is_empty() {
        frr_threshold(&normal_scores, false_reject_rate)
    } else {
        best_f1_threshold(&normal_scores, &anomalous_scores)
    };
    Ok(Computed {
        normalization,
        threshold,
        rule,
        normal_scores,
        anomalous_scores,
    })
}

fn frr_threshold(normal: &[f32], rate: f64) -> (f64, ThresholdRule) {
    let mut s = normal.to_vec();
    s.sort_unstable_by(|a, b| a.total_cmp(b));
    let threshold = quantile_sorted(&s, 1.0 - rate);
    let above = s.iter().filter(|&&v| f64::from(v) > threshold).count();
    (
        threshold,
        ThresholdRule::FalseRejectRate {
            target: rate,
            achieved: above as f64 / s.len().max(1) as f64,
        },
    )
}

fn best_f1_threshold(normal: &[f32], anomalous: &[f32]) -> (f64, ThresholdRule) {
    // All scores, descending; label true = anomalous.
    let mut all: Vec<(f32, bool)> = normal
        .iter()
        .map(|&s| (s, false))
        .chain(anomalous.iter().map(|&s| (s, true)))
        .collect();
    all.sort_unstable_by(|a, b| b.0.total_cmp(&a.0));
    let positives = anomalous.len() as f64;
    let (mut tp, mut fp) = (0f64, 0f64);
    let mut best = (f64::NEG_INFINITY, f64::INFINITY, 0.0, 0.0);
    let mut i = 0;
    while i < all.len() {
        // Take every sample tied at this score together: a cut cannot separate them.
        let s = all[i].0;
        while i < all.len() && all[i].0 == s {
            if all[i].1 {
                tp += 1.0
            } else {
                fp += 1.0
            }
            i += 1;
        }
        let precision = tp / (tp + fp);
        let recall = tp / positives;
        let f1 = if tp > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        // Cut halfway to the next lower score (or just below the lowest).
        let next = all.get(i).map(|n| f64::from(n.0));
        let cut = match next {
            Some(n) => 0.5 * (f64::from(s) + n),
            None => f64::from(s) - f64::EPSILON.max(f64::from(s).abs() * 1e-6),
        };
        if f1 > best.0 {
            best = (f1, cut, precision, recall);
        }
    }
    (
        best.1,
        ThresholdRule::BestF1 {
            f1: best.0,
            precision: best.2,
            recall: best.3,
        },
    )
}

impl Calibration {
    pub fn load(path: &Path) -> Result<Self, CalibrationError> {
        let text = std::fs::read_to_string(path).map_err(|e| CalibrationError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| CalibrationError::Bad {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        let version = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as u32;
        if version != CALIBRATION_FORMAT_VERSION {
            return Err(CalibrationError::Version {
                path: path.to_owned(),
                found: version,
            });
        }
        // serde's messages do not name the field; the numbers a verdict depends on are
        // checked by name first (a NaN threshold is written as null).
        for pointer in [
            "/threshold",
            "/normalization/st/q_a",
            "/normalization/st/q_b",
            "/normalization/ae/q_a",
            "/normalization/ae/q_b",
        ] {
            if let Some(v) = value.pointer(pointer).filter(|v| !v.is_number()) {
                return Err(CalibrationError::Bad {
                    path: path.to_owned(),
                    reason: format!(
                        "{} is {v}; expected a finite number",
                        pointer[1..].replace('/', ".")
                    ),
                });
            }
        }
        let mut calibration: Self =
            serde_json::from_value(value).map_err(|e| CalibrationError::Bad {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        calibration
            .check()
            .map_err(|reason| CalibrationError::Bad {
                path: path.to_owned(),
                reason,
            })?;
        calibration.inspected = Region::load(&calibration.region)?;
        Ok(calibration)
    }

    /// The numbers a verdict depends on must make sense: finite quantiles with q_b > q_a for
    /// each map (else the normalization divides by zero or turns the score upside down) and a
    /// finite threshold. Names the first field that does not.
    fn check(&self) -> Result<(), String> {
        for (name, q) in [
            ("normalization.st", self.normalization.st),
            ("normalization.ae", self.normalization.ae),
        ] {
            for (field, v) in [("q_a", q.q_a), ("q_b", q.q_b)] {
                if !v.is_finite() {
                    return Err(format!("{name}.{field} is {v}; expected a finite number"));
                }
            }
            if q.q_b <= q.q_a {
                return Err(format!(
                    "{name}.q_b ({}) must be greater than {name}.q_a ({}); run `efficientad calibrate` again",
                    q.q_b, q.q_a
                ));
            }
        }
        if !self.threshold.is_finite() {
            return Err(format!(
                "threshold is {}; expected a finite number",
                self.threshold
            ));
        }
        Ok(())
    }

    /// Loads a calibration and checks that it belongs to `bundle`.
    pub fn load_for(path: &Path, bundle: &Bundle) -> Result<Self, CalibrationError> {
        let calibration = Self::load(path)?;
        if calibration.model_sha256 != bundle.info.model_sha256 {
            return Err(CalibrationError::OtherModel {
                path: path.to_owned(),
                model: bundle.dir.clone(),
                found: calibration.model_sha256,
                expected: bundle.info.model_sha256.clone(),
            });
        }
        Ok(calibration)
    }

    pub fn save(&self, path: &Path) -> Result<(), CalibrationError> {
        let err = |e: &dyn std::fmt::Display| CalibrationError::Write {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| err(&e))?;
        std::fs::write(path, text + "\n").map_err(|e| err(&e))
    }

    /// Verdict for a score: NG above the threshold (NaN scores are never OK).
    pub fn is_anomalous(&self, score: f32) -> bool {
        !matches!(
            f64::from(score).partial_cmp(&self.threshold),
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        )
    }
}

/// Images to calibrate on, with the name the calibration file records for them.
pub struct ImageSet {
    pub label: String,
    pub files: Vec<PathBuf>,
}

impl ImageSet {
    /// The image files of a folder.
    pub fn folder(dir: &Path) -> Result<Self, CalibrationError> {
        if !dir.is_dir() {
            return Err(CalibrationError::NoFolder(dir.to_owned()));
        }
        let files = list_images(&[dir.to_owned()]).map_err(|e| CalibrationError::List {
            path: dir.to_owned(),
            reason: e.to_string(),
        })?;
        if files.is_empty() {
            return Err(CalibrationError::EmptyFolder {
                path: dir.to_owned(),
            });
        }
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

/// Precision a provider computes in.
pub fn precision(provider: Provider) -> &'static str {
    match provider {
        Provider::Tensorrt => "fp16",
        _ => "fp32",
    }
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

impl Calibration {
    /// A calibration file for `bundle` from computed numbers.
    pub fn assemble(
        bundle: &Bundle,
        provider: Provider,
        validation: ValidationSet,
        computed: Computed,
    ) -> Result<Self, CalibrationError> {
        let scores =
            ScoreSummary::of(&computed.normal_scores).ok_or(CalibrationError::NoImages {
                failed: validation.failed,
            })?;
        Ok(Calibration {
            format_version: CALIBRATION_FORMAT_VERSION,
            model_name: bundle.info.name.clone(),
            model_sha256: bundle.info.model_sha256.clone(),
            provider: provider.to_string(),
            precision: precision(provider).into(),
            validation,
            normalization: computed.normalization,
            threshold: computed.threshold,
            threshold_rule: computed.rule,
            scores,
            anomalous_scores: ScoreSummary::of(&computed.anomalous_scores),
            created_by: format!("efficientad {}", env!("CARGO_PKG_VERSION")),
            region: RegionRecord::default(),
            inspected: Region::whole_image(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_f1_separates_perfectly_separable_scores() {
        let (t, rule) = best_f1_threshold(&[0.1, 0.2, 0.3], &[0.5, 0.6]);
        assert!((t - 0.4).abs() < 1e-6, "{t}");
        assert_eq!(
            rule,
            ThresholdRule::BestF1 {
                f1: 1.0,
                precision: 1.0,
                recall: 1.0
            }
        );
    }

    #[test]
    fn frr_threshold_is_the_upper_quantile() {
        let normal: Vec<f32> = (0..101).map(|v| v as f32).collect();
        let (t, rule) = frr_threshold(&normal, 0.01);
        assert!((t - 99.0).abs() < 1e-9);
        assert_eq!(
            rule,
            ThresholdRule::FalseRejectRate {
                target: 0.01,
                achieved: 1.0 / 101.0
            }
        );
    }
}
