//! Running graphs on the calibration images: the probe that collects activation histograms,
//! and the fp32 reference maps a quantized graph is compared with.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::TensorRef;

use super::ranges::Histogram;
use super::{Progress, QuantizeError};
use crate::model::bundle::Bundle;
use crate::model::engine::{self, Engine, EngineError, EngineOptions, Provider, RawMaps};
use crate::model::onnx_proto::read::Model;
use crate::model::onnx_proto::{DataType, Message};
use crate::model::preprocess::{Preprocessor, decode_file};
use crate::model::session::{CpuOptions, Graph, cpu_session};

/// The probe graph: the fp32 graph with `tensors` as extra float outputs (no fixed shape).
pub(super) fn probe_bytes(model: &Model, tensors: &[String]) -> Vec<u8> {
    let mut probe = model.clone();
    for t in tensors {
        let mut tensor_type = Message::default();
        tensor_type.int(1, DataType::Float as i64);
        let mut type_proto = Message::default();
        type_proto.message(1, &tensor_type);
        let mut info = Message::default();
        info.string(1, t).message(2, &type_proto);
        probe.graph.outputs.push((t.clone(), info.into_bytes()));
    }
    probe.encode()
}

pub(super) fn session(
    bytes: &[u8],
    threads: Option<usize>,
    path: &Path,
) -> Result<Session, EngineError> {
    let options = CpuOptions {
        threads,
        ..CpuOptions::default()
    };
    cpu_session(Graph::Bytes(bytes), options).map_err(|e| EngineError::Session {
        path: path.to_owned(),
        source: e.into(),
    })
}

/// Runs the probe on each image and collects the histograms.
pub(super) fn measure(
    session: &mut Session,
    files: &[PathBuf],
    size: usize,
    tensors: &[String],
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<(Vec<Histogram>, usize), QuantizeError> {
    let mut histograms = vec![Histogram::default(); tensors.len()];
    let mut pre = Preprocessor::new(size);
    let mut skipped = 0;
    let mut first = String::new();
    for path in files {
        let input = decode_file(path).and_then(|image| pre.prepare_vec(image));
        let input = match input {
            Ok(input) => input,
            Err(e) => {
                let reason = e.to_string();
                progress(Progress::Skipped(path, &reason));
                if first.is_empty() {
                    first = format!("{}: {reason}", path.display());
                }
                skipped += 1;
                continue;
            }
        };
        let activations = |reason: String| QuantizeError::Activations {
            path: path.clone(),
            reason,
        };
        let tensor = TensorRef::from_array_view(([1usize, size, size, 3], input.as_slice()))
            .map_err(|e| activations(e.to_string()))?;
        let outputs = session
            .run(ort::inputs![engine::INPUT => tensor])
            .map_err(|e| activations(e.to_string()))?;
        for (t, h) in tensors.iter().zip(histograms.iter_mut()) {
            let (_, data) = outputs[t.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(|e| activations(format!("{t}: {e}")))?;
            h.add(data).map_err(|e| activations(format!("{t}: {e}")))?;
        }
        progress(Progress::Image);
    }
    if skipped == files.len() {
        return Err(QuantizeError::NoImages {
            tried: files.len(),
            first,
        });
    }
    Ok((histograms, skipped))
}

/// Relative map error of `b` against `a`: Σ|a − b| / Σ|a|.
pub(super) fn relative_error(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| f64::from((x - y).abs())).sum();
    let norm: f64 = a.iter().map(|x| f64::from(x.abs())).sum();
    diff / norm.max(f64::MIN_POSITIVE)
}

/// The fp32 maps of a few images, to compare quantized graphs with.
pub(super) struct Reference {
    pub(super) inputs: Vec<Vec<u8>>,
    maps: Vec<RawMaps>,
    options: EngineOptions,
}

impl Reference {
    pub(super) fn new(
        fp32: &Bundle,
        files: &[PathBuf],
        threads: Option<usize>,
    ) -> Result<Self, QuantizeError> {
        let options = EngineOptions {
            provider: Provider::Cpu,
            intra_threads: threads,
            ..EngineOptions::default()
        };
        let mut engine = Engine::new(fp32, &options)?;
        let mut pre = Preprocessor::new(engine.input_size());
        let inputs: Vec<Vec<u8>> = files
            .iter()
            .filter_map(|path| decode_file(path).and_then(|i| pre.prepare_vec(i)).ok())
            .collect();
        let maps = inputs
            .iter()
            .map(|input| engine.run(input, 1))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            inputs,
            maps,
            options,
        })
    }

    /// Mean relative error of `quantized`'s st and ae maps over the images.
    pub(super) fn error(&self, quantized: &Bundle) -> Result<(f64, f64), QuantizeError> {
        let mut engine = Engine::new(quantized, &self.options)?;
        let (mut st, mut ae) = (0.0, 0.0);
        let mut maps = RawMaps::default();
        for (input, reference) in self.inputs.iter().zip(&self.maps) {
            engine.run_into(input, 1, &mut maps)?;
            st += relative_error(&reference.st, &maps.st);
            ae += relative_error(&reference.ae, &maps.ae);
        }
        let n = self.inputs.len().max(1) as f64;
        Ok((st / n, ae / n))
    }
}
