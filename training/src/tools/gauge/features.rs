//! Where the gauge's features come from: a teacher checkpoint (its PDN without padding, as the
//! student trains against it) or a backbone's distillation target (built by the same code as
//! `distill-teacher`, normalized with the same statistics).

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use efficientad::model::session::{CpuOptions, Graph, cpu_session};

use crate::model::{IMAGE_SIZE, Pdn, imagenet_normalize};
use crate::train::checkpoint;
use crate::train::distill::{Backbone, DistillError, TargetOptions};

#[derive(Debug, thiserror::Error)]
pub enum GaugeError {
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error(transparent)]
    Distill(#[from] DistillError),
    #[error("{path}: {source}")]
    Image {
        path: PathBuf,
        source: efficientad::model::preprocess::PreprocessError,
    },
    #[error("{0}")]
    Other(String),
}

/// One image's features, position-major.
pub struct FeatureMap {
    /// Cells per side (square grid).
    pub grid: usize,
    pub dim: usize,
    /// `[grid·grid, dim]`.
    pub data: Vec<f32>,
    /// Zero cells per side that place the grid on the image: 4 for a PDN without padding (its
    /// 56² map sits inside a 64² grid, docs/method.md), 0 for a grid that covers the image.
    pub pad: usize,
}

impl FeatureMap {
    pub fn cells(&self) -> usize {
        self.grid * self.grid
    }

    /// From a channel-major `[dim, grid·grid]` map.
    pub fn from_channel_major(chw: &[f32], dim: usize, grid: usize, pad: usize) -> Self {
        let cells = grid * grid;
        let mut data = vec![0f32; cells * dim];
        for (c, plane) in chw.chunks_exact(cells).enumerate() {
            for (p, &v) in plane.iter().enumerate() {
                data[p * dim + c] = v;
            }
        }
        Self {
            grid,
            dim,
            data,
            pad,
        }
    }
}

/// An image file decoded and resized as the runtime does: RGB8 HWC, `size`².
fn rgb_at(path: &Path, size: usize) -> Result<Vec<u8>, GaugeError> {
    let image_error = |source| GaugeError::Image {
        path: path.to_owned(),
        source,
    };
    let img = efficientad::model::preprocess::decode_file(path).map_err(image_error)?;
    efficientad::model::preprocess::Preprocessor::new(size)
        .prepare_vec(img)
        .map_err(image_error)
}

/// Something that turns an image file into a feature map.
pub trait FeatureSource {
    /// One line saying what the features are, for the report.
    fn describe(&self) -> String;
    fn features(&mut self, path: &Path) -> Result<FeatureMap, GaugeError>;
}

/// A teacher checkpoint's output (padding off, 256² input).
pub struct TeacherSource {
    teacher: Pdn,
    path: PathBuf,
    device: Device,
}

impl TeacherSource {
    pub fn open(path: &Path) -> Result<Self, GaugeError> {
        let device = Device::flex();
        let (teacher, _) = checkpoint::load_teacher(path, None, &device)?;
        Ok(Self {
            teacher,
            path: path.to_owned(),
            device,
        })
    }
}

impl FeatureSource for TeacherSource {
    fn describe(&self) -> String {
        format!("teacher {}", self.path.display())
    }

    fn features(&mut self, path: &Path) -> Result<FeatureMap, GaugeError> {
        let px = rgb_at(path, IMAGE_SIZE)?;
        let chw = crate::data::to_chw(&px, IMAGE_SIZE);
        let x = Tensor::<4>::from_data(
            TensorData::new(chw, [1, 3, IMAGE_SIZE, IMAGE_SIZE]),
            &self.device,
        );
        let out = self.teacher.forward(imagenet_normalize(x));
        let [_, dim, grid, _] = out.dims();
        let values = out
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| GaugeError::Other(format!("teacher output: {e:?}")))?;
        Ok(FeatureMap::from_channel_major(
            &values,
            dim,
            grid,
            efficientad::judge::anomaly::MAP_PAD,
        ))
    }
}

/// The teacher inside a deployed bundle (`onnx/<name>/model.onnx`): the graph is cut at the
/// teacher's last node (its outputs normalized by the μ and σ folded into that convolution)
/// and run by ONNX Runtime on the runtime's own preprocessing (uint8 NHWC, 256²).
pub struct BundleSource {
    session: ort::session::Session,
    path: PathBuf,
    size: usize,
}

impl BundleSource {
    pub fn open(dir: &Path) -> Result<Self, GaugeError> {
        use efficientad::model::onnx_proto::read::Model;
        use efficientad::model::onnx_proto::{DataType, Message};
        let bundle = efficientad::model::bundle::Bundle::open(dir)
            .map_err(|e| GaugeError::Other(e.to_string()))?;
        let err = |e: &dyn std::fmt::Display| {
            GaugeError::Other(format!("{}: {e}", bundle.onnx_path.display()))
        };
        let bytes = std::fs::read(&bundle.onnx_path).map_err(|e| err(&e))?;
        let mut model = Model::decode(&bytes).map_err(|e| err(&e))?;
        let out = model
            .graph
            .nodes
            .iter()
            .rev()
            .find(|n| n.name.starts_with("teacher/"))
            .and_then(|n| n.outputs.first().cloned())
            .ok_or_else(|| err(&"no node named teacher/…: not an EfficientAD bundle"))?;
        // Only what the teacher's output needs (the student and autoencoder are dropped).
        let mut needed = std::collections::HashSet::from([out.clone()]);
        let mut kept = Vec::new();
        for node in model.graph.nodes.iter().rev() {
            if node.outputs.iter().any(|o| needed.contains(o)) {
                needed.extend(node.inputs.iter().cloned());
                kept.push(node.clone());
            }
        }
        kept.reverse();
        model.graph.nodes = kept;
        model
            .graph
            .initializers
            .retain(|t| needed.contains(&t.name));
        let mut tensor_type = Message::default();
        tensor_type.int(1, DataType::Float as i64);
        let mut type_proto = Message::default();
        type_proto.message(1, &tensor_type);
        let mut info = Message::default();
        info.string(1, &out).message(2, &type_proto);
        model.graph.outputs = vec![(out, info.into_bytes())];
        let session = cpu_session(Graph::Bytes(&model.encode()), CpuOptions::default())
            .map_err(|e| err(&e))?;
        Ok(Self {
            session,
            path: dir.to_owned(),
            size: bundle.info.input_size,
        })
    }
}

impl FeatureSource for BundleSource {
    fn describe(&self) -> String {
        format!("teacher of the bundle {}", self.path.display())
    }

    fn features(&mut self, path: &Path) -> Result<FeatureMap, GaugeError> {
        let px = rgb_at(path, self.size)?;
        let err = |e: &dyn std::fmt::Display| GaugeError::Other(format!("bundle teacher: {e}"));
        let input = ort::value::TensorRef::from_array_view(([1, self.size, self.size, 3], &px[..]))
            .map_err(|e| err(&e))?;
        let outputs = self
            .session
            .run(ort::inputs!["image" => input])
            .map_err(|e| err(&e))?;
        let (shape, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| err(&e))?;
        let (dim, grid) = (shape[1] as usize, shape[2] as usize);
        Ok(FeatureMap::from_channel_major(
            values,
            dim,
            grid,
            efficientad::judge::anomaly::MAP_PAD,
        ))
    }
}

/// The distillation target of a backbone, built by the same code as `distill-teacher` (its
/// per-channel normalization by the distillation images' statistics is left out: the gauge
/// standardizes every source with the training images' statistics, which absorbs it).
pub struct TargetSource {
    backbone: Backbone,
    options: TargetOptions,
    describe: String,
}

impl TargetSource {
    pub fn open(backbone: &Path, options: TargetOptions) -> Result<Self, GaugeError> {
        let net = Backbone::open(backbone)?;
        let describe = format!("target {} ({})", backbone.display(), options.describe());
        Ok(Self {
            backbone: net,
            options,
            describe,
        })
    }
}

impl FeatureSource for TargetSource {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn features(&mut self, path: &Path) -> Result<FeatureMap, GaugeError> {
        let (big, _) =
            crate::train::distill::views(path, false, &self.options).map_err(|source| {
                GaugeError::Image {
                    path: path.to_owned(),
                    source,
                }
            })?;
        let t = self.backbone.targets(&big, 1, self.options.size)?.remove(0);
        let dim = self.backbone.channels();
        let grid = ((t.len() / dim) as f64).sqrt().round() as usize;
        Ok(FeatureMap::from_channel_major(&t, dim, grid, 0))
    }
}
