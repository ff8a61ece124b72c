//! The calibration file (docs/design.md): map normalization quantiles and the decision threshold,
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

mod compute;

pub use compute::{Computed, MapPair, compute};

use crate::judge::anomaly::{MapNormalization, quantile_sorted};
use crate::judge::region::{Region, RegionError, RegionRecord};
use crate::model::bundle::Bundle;
use crate::model::engine::Provider;

/// Version of the calibration format this runtime writes and reads.
pub const CALIBRATION_FORMAT_VERSION: u32 = 1;
/// Default target share of good parts rejected.
pub const DEFAULT_FALSE_REJECT_RATE: f64 = 0.01;

#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("cannot read calibration {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid calibration file: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
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
        "{path} is the calibration of the fp32 model that {model} was quantized from; {precision} maps differ from fp32 maps, so run `efficientad calibrate --model {model}` to calibrate the {precision} model itself"
    )]
    SourceModel {
        path: PathBuf,
        model: PathBuf,
        precision: String,
    },
    #[error(
        "no validation image could be run ({failed} failed); calibration needs normal images that decode"
    )]
    NoImages { failed: usize },
    #[error(
        "the validation maps are constant ({which}: q_a = q_b = {value}); the model or the images are degenerate and cannot be normalized"
    )]
    Degenerate { which: &'static str, value: f64 },
    #[error(transparent)]
    Folder(#[from] crate::offline::images::FolderError),
    #[error(transparent)]
    Region(#[from] RegionError),
    #[error(
        "the inspection region leaves no cell of the anomaly map of a {width}x{height} image; use a smaller --ignore-border or a larger ROI"
    )]
    EmptyRegion { width: usize, height: usize },
    #[error("cannot write calibration {path}: {source}")]
    Write { path: PathBuf, source: crate::Cause },
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

impl Calibration {
    pub fn load(path: &Path) -> Result<Self, CalibrationError> {
        let text = std::fs::read_to_string(path).map_err(|e| CalibrationError::Read {
            path: path.to_owned(),
            source: e,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates a calibration text (its mask, if any, is read from disk); `path`
    /// names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, CalibrationError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| CalibrationError::Json {
                path: path.to_owned(),
                source,
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
            serde_json::from_value(value).map_err(|source| CalibrationError::Json {
                path: path.to_owned(),
                source,
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
        if bundle.info.source_sha256() == Some(calibration.model_sha256.as_str()) {
            return Err(CalibrationError::SourceModel {
                path: path.to_owned(),
                model: bundle.dir.clone(),
                precision: bundle.info.precision.clone(),
            });
        }
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
        let err = |e: crate::Cause| CalibrationError::Write {
            path: path.to_owned(),
            source: e,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| err(e.into()))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|e| err(e.into()))?;
        std::fs::write(path, text + "\n").map_err(|e| err(e.into()))
    }

    /// Verdict for a score: NG above the threshold (NaN scores are never OK).
    pub fn is_anomalous(&self, score: f32) -> bool {
        !matches!(
            f64::from(score).partial_cmp(&self.threshold),
            Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
        )
    }
}

/// Precision `bundle`'s graph computes in on `provider`: a quantized graph is int8 anywhere;
/// TensorRT runs an fp32 graph in fp16.
pub fn precision(provider: Provider, bundle: &Bundle) -> String {
    match provider {
        _ if bundle.info.precision != crate::model::bundle::FP32 => bundle.info.precision.clone(),
        Provider::Tensorrt => "fp16".into(),
        _ => crate::model::bundle::FP32.into(),
    }
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
            precision: precision(provider, bundle),
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
