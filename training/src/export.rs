//! Writes a model bundle (`onnx/<name>/model.onnx` + `model.json`, docs/design.md) from a model.
//!
//! The ONNX file is written by the runtime's small protobuf writer (`efficientad::model::onnx_proto`) over a hand-built graph
//! ([`graph`]) rather than by tracing: the deployment graph contains work that is not part of
//! any Burn forward (uint8 NHWC input, the μ/σ fold, the map heads), its node and tensor names
//! are part of the contract, and the op set must stay within what TensorRT parses.

pub mod graph;

use std::path::{Path, PathBuf};

use efficientad::model::bundle::{BUNDLE_FORMAT_VERSION, ModelInfo};

use crate::model::autoencoder::OUTPUT_SIZE;
use crate::model::{EfficientAd, IMAGE_SIZE};
use crate::train::checkpoint::{CheckpointInfo, TeacherProvenance};
use efficientad::model::onnx_proto::read;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("cannot write the model bundle into {path}: {source}")]
    Write {
        path: PathBuf,
        source: efficientad::Cause,
    },
    #[error("the model has padding on; deployment graphs are exported with padding off")]
    PaddingOn,
    #[error(
        "the model's teacher is the target of the backbone {path}: {source}; export needs that exact file (it becomes part of the graph)"
    )]
    Backbone {
        path: PathBuf,
        source: efficientad::Cause,
    },
}

/// Exports `model` into the bundle folder `out` and returns the model.json written.
pub fn export_bundle(
    model: &EfficientAd,
    info: &CheckpointInfo,
    out: &Path,
) -> Result<ModelInfo, ExportError> {
    if model.teacher.padding || model.student.padding {
        return Err(ExportError::PaddingOn);
    }
    fn write_err(path: &Path, e: impl Into<efficientad::Cause>) -> ExportError {
        ExportError::Write {
            path: path.to_owned(),
            source: e.into(),
        }
    }
    std::fs::create_dir_all(out).map_err(|e| write_err(out, e))?;
    let metadata = [
        ("efficientad.variant", info.variant.letter().to_string()),
        (
            "efficientad.producer",
            format!("efficientad-train {}", env!("CARGO_PKG_VERSION")),
        ),
    ];
    // A target teacher's backbone is read again and checked to be the file trained with.
    let backbone = match &info.teacher {
        TeacherProvenance::Target {
            backbone,
            backbone_sha256,
            shape,
        } => {
            let path = PathBuf::from(backbone);
            let err = |source: efficientad::Cause| ExportError::Backbone {
                path: path.clone(),
                source,
            };
            let bytes = std::fs::read(&path).map_err(|e| err(e.into()))?;
            let found = efficientad::model::bundle::sha256_hex(&bytes);
            if &found != backbone_sha256 {
                return Err(err(format!(
                    "its sha256 is {found}, training used {backbone_sha256}"
                )
                .into()));
            }
            let model = read::Model::decode(&bytes).map_err(|e| err(e.into()))?;
            Some((model, shape, path))
        }
        _ => None,
    };
    let teacher = match &backbone {
        Some((backbone, shape, _)) => graph::TeacherGraph::Target { backbone, shape },
        None => graph::TeacherGraph::Pdn,
    };
    let bytes =
        graph::build(model, &teacher, info.normalize_exposure, &metadata).map_err(|reason| {
            ExportError::Backbone {
                path: backbone.as_ref().map(|b| b.2.clone()).unwrap_or_default(),
                source: reason.into(),
            }
        })?;
    let onnx_path = out.join(efficientad::model::bundle::MODEL_FILE);
    std::fs::write(&onnx_path, &bytes).map_err(|e| write_err(&onnx_path, e))?;

    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let model_info = ModelInfo {
        format_version: BUNDLE_FORMAT_VERSION,
        name,
        variant: info.variant.letter().to_string(),
        input_size: IMAGE_SIZE,
        map_size: OUTPUT_SIZE,
        padding: false,
        teacher_channels: model.teacher.out_channels(),
        width_divisor: info.width_divisor,
        model_sha256: efficientad::model::bundle::sha256_hex(&bytes),
        opset: graph::OPSET as u32,
        teacher: serde_json::to_value(&info.teacher).unwrap_or_default(),
        training: info.training.clone(),
        exporter: format!("efficientad-train {}", env!("CARGO_PKG_VERSION")),
        precision: efficientad::model::bundle::FP32.into(),
        quantization: None,
        normalize_exposure: info.normalize_exposure,
    };
    let json_path = out.join(efficientad::model::bundle::INFO_FILE);
    let json = serde_json::to_string_pretty(&model_info).map_err(|e| write_err(&json_path, e))?;
    std::fs::write(&json_path, json + "\n").map_err(|e| write_err(&json_path, e))?;
    Ok(model_info)
}
