//! The model bundle contract (DESIGN.md): `onnx/<name>/model.onnx` and `model.json`.
//!
//! The runtime never trusts a graph it cannot account for: opening a bundle checks that both
//! files exist, that model.json is of a known format, and that the graph's sha256 equals the
//! one recorded at export.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// File names inside a bundle folder.
pub const MODEL_FILE: &str = "model.onnx";
pub const INFO_FILE: &str = "model.json";
/// Version of the model.json format this runtime writes and reads.
pub const BUNDLE_FORMAT_VERSION: u32 = 1;

/// model.json: what the runtime and a person need to trust the graph.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub format_version: u32,
    pub name: String,
    /// `s` or `m`.
    pub variant: String,
    /// Side of the square uint8 input, pixels.
    pub input_size: usize,
    /// Side of the square output maps.
    pub map_size: usize,
    /// Zero padding in the PDNs (always false for deployment graphs).
    pub padding: bool,
    pub teacher_channels: usize,
    /// 1 for the paper's networks; larger for narrowed test networks.
    pub width_divisor: usize,
    /// sha256 of model.onnx, lower-case hex.
    pub model_sha256: String,
    pub opset: u32,
    /// Where the teacher came from (imported file and hash, distillation run, or random).
    pub teacher: serde_json::Value,
    /// Training record: data folder, steps, seed, final losses (null for random exports).
    pub training: serde_json::Value,
    pub exporter: String,
    /// Arithmetic of the graph: `fp32`, or `int8` for a graph written by `efficientad quantize`
    /// (bundles from before quantization existed are fp32).
    #[serde(default = "fp32")]
    pub precision: String,
    /// For a quantized graph: its fp32 source (path, sha256) and how it was calibrated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<serde_json::Value>,
}

/// [`ModelInfo::precision`] of a graph computed in 32-bit floats.
pub const FP32: &str = "fp32";
/// [`ModelInfo::precision`] of a quantized graph.
pub const INT8: &str = "int8";

fn fp32() -> String {
    FP32.into()
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error(
        "model bundle {dir} is missing {file}; a bundle folder holds model.onnx and model.json as written by `efficientad-train export` or `fit`"
    )]
    Missing { dir: PathBuf, file: &'static str },
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("{path} is not a valid model.json: {reason}")]
    BadInfo { path: PathBuf, reason: String },
    #[error(
        "{path} has format_version {found}; this runtime reads version {BUNDLE_FORMAT_VERSION}: re-export the bundle or update efficientad"
    )]
    Version { path: PathBuf, found: u32 },
    #[error(
        "{onnx} does not match its model.json (sha256 {found}, model.json says {expected}); the bundle was modified or mixed up — re-export it"
    )]
    HashMismatch {
        onnx: PathBuf,
        expected: String,
        found: String,
    },
}

impl ModelInfo {
    /// The sha256 of the fp32 model a quantized graph was made from.
    pub fn source_sha256(&self) -> Option<&str> {
        self.quantization
            .as_ref()?
            .get("source_model_sha256")?
            .as_str()
    }

    /// Parses a model.json text and checks its format version; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, BundleError> {
        let info: ModelInfo = serde_json::from_str(text).map_err(|e| BundleError::BadInfo {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        if info.format_version != BUNDLE_FORMAT_VERSION {
            return Err(BundleError::Version {
                path: path.to_owned(),
                found: info.format_version,
            });
        }
        Ok(info)
    }
}

/// An opened, verified bundle.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub info: ModelInfo,
    pub onnx_path: PathBuf,
}

impl Bundle {
    /// Opens `dir`, checking the files, the format version and the graph's hash.
    pub fn open(dir: &Path) -> Result<Self, BundleError> {
        let onnx_path = dir.join(MODEL_FILE);
        let info_path = dir.join(INFO_FILE);
        for (path, file) in [(&info_path, INFO_FILE), (&onnx_path, MODEL_FILE)] {
            if !path.is_file() {
                return Err(BundleError::Missing {
                    dir: dir.to_owned(),
                    file,
                });
            }
        }
        let text = std::fs::read_to_string(&info_path).map_err(|e| BundleError::Read {
            path: info_path.clone(),
            reason: e.to_string(),
        })?;
        let info = ModelInfo::parse(&text, &info_path)?;
        let found = file_sha256(&onnx_path).map_err(|e| BundleError::Read {
            path: onnx_path.clone(),
            reason: e.to_string(),
        })?;
        if found != info.model_sha256 {
            return Err(BundleError::HashMismatch {
                onnx: onnx_path,
                expected: info.model_sha256,
                found,
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            info,
            onnx_path,
        })
    }
}

/// sha256 of bytes, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// sha256 of a file, lower-case hex.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    Ok(sha256_hex(&std::fs::read(path)?))
}
