//! The model bundle contract (docs/design.md): `onnx/<name>/model.onnx` and `model.json`.
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
    /// The graph normalizes each image's brightness and contrast before its networks
    /// (`efficientad-train fit --normalize-exposure`); nothing changes for the runtime, which
    /// feeds the same uint8 input either way.
    #[serde(default)]
    pub normalize_exposure: bool,
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
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid model.json: {source}")]
    BadInfo {
        path: PathBuf,
        source: serde_json::Error,
    },
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
    #[error(
        "{path} has precision `{found}`; this runtime runs `{FP32}` and `{INT8}` graphs: re-export the bundle or update efficientad"
    )]
    Precision { path: PathBuf, found: String },
    #[error(
        "the model folder {dir} cannot be opened: {reason}; --model takes a bundle folder holding model.onnx and model.json"
    )]
    NotAFolder { dir: PathBuf, reason: String },
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
            source: e,
        })?;
        if info.format_version != BUNDLE_FORMAT_VERSION {
            return Err(BundleError::Version {
                path: path.to_owned(),
                found: info.format_version,
            });
        }
        if info.precision != FP32 && info.precision != INT8 {
            return Err(BundleError::Precision {
                path: path.to_owned(),
                found: info.precision,
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
        // A symbolic-link loop, a FIFO or a file named as the folder: say what it is, not
        // "missing model.json".
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(m) => {
                let kind = if m.file_type().is_file() {
                    "it is a file"
                } else {
                    "it is not a folder (a pipe, socket or device)"
                };
                return Err(BundleError::NotAFolder {
                    dir: dir.to_owned(),
                    reason: kind.into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BundleError::NotAFolder {
                    dir: dir.to_owned(),
                    reason: e.to_string(),
                });
            }
        }
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
            source: e,
        })?;
        let info = ModelInfo::parse(&text, &info_path)?;
        let found = file_sha256(&onnx_path).map_err(|e| BundleError::Read {
            path: onnx_path.clone(),
            source: e,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> ModelInfo {
        ModelInfo {
            format_version: BUNDLE_FORMAT_VERSION,
            name: "m".into(),
            variant: "s".into(),
            input_size: 256,
            map_size: 56,
            padding: false,
            teacher_channels: 384,
            width_divisor: 1,
            model_sha256: String::new(),
            opset: 17,
            teacher: serde_json::Value::Null,
            training: serde_json::Value::Null,
            exporter: "test".into(),
            precision: FP32.into(),
            quantization: None,
            normalize_exposure: false,
        }
    }

    #[test]
    fn unknown_precisions_are_refused() {
        let path = Path::new("m/model.json");
        for ok in [FP32, INT8] {
            let text = serde_json::to_string(&ModelInfo {
                precision: ok.into(),
                ..info()
            })
            .expect("json");
            assert!(ModelInfo::parse(&text, path).is_ok(), "{ok}");
        }
        let text = serde_json::to_string(&ModelInfo {
            precision: "fp16".into(),
            ..info()
        })
        .expect("json");
        let e = ModelInfo::parse(&text, path).expect_err("fp16").to_string();
        assert!(e.contains("`fp16`") && e.contains("m/model.json"), "{e}");
    }

    /// A symbolic-link loop, a FIFO and a file given as the model folder each say what they
    /// are instead of "missing model.json".
    #[test]
    fn a_model_folder_that_is_no_folder_is_named_as_such() {
        let dir = std::env::temp_dir().join(format!("bundle-kinds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let looped = dir.join("loop");
        std::os::unix::fs::symlink(&looped, &looped).expect("link");
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo (coreutils)");
        assert!(made.success());
        let file = dir.join("file");
        std::fs::write(&file, b"x").expect("file");
        for (path, needle) in [
            (&looped, "symbolic links"),
            (&fifo, "not a folder"),
            (&file, "it is a file"),
        ] {
            let e = Bundle::open(path).expect_err("not a bundle").to_string();
            assert!(
                e.contains(needle) && e.contains("cannot be opened"),
                "{}: {e}",
                path.display()
            );
            assert!(!e.contains("missing model.json"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
