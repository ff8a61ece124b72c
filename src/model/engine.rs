//! The inference engine: one ONNX Runtime session over a bundle's graph, on an explicit
//! execution provider, turning uint8 NHWC batches into the two raw maps.
//!
//! The engine owns its session; a pipeline gives it exactly one thread. Providers are strict
//! unless `auto` was asked for, and [`Engine::provider`] says which one the session really got.

use std::path::PathBuf;

use ort::ep::{self, ExecutionProviderDispatch};
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef};

use crate::model::bundle::Bundle;
use crate::model::ortlib::{self, OrtLibError};

/// Graph input and output names (docs/design.md, model bundle).
pub const INPUT: &str = "image";
pub const OUTPUT_ST: &str = "map_st";
pub const OUTPUT_AE: &str = "map_ae";

/// Which execution provider runs the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// TensorRT, then CUDA, then CPU; the one obtained is logged.
    Auto,
    /// TensorRT with fp16 and an on-disk engine cache.
    Tensorrt,
    Cuda,
    Cpu,
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Auto => "auto",
            Provider::Tensorrt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        })
    }
}

/// How to build the session.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub provider: Provider,
    /// Intra-op threads; `None` lets ONNX Runtime use one per physical core.
    pub intra_threads: Option<usize>,
    /// Folder for TensorRT's engine and timing caches.
    pub trt_cache: PathBuf,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            provider: Provider::Auto,
            intra_threads: None,
            trt_cache: ortlib::cache_dir().join("tensorrt"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Library(#[from] OrtLibError),
    #[error(
        "execution provider {provider} is not usable: {reason}; run `efficientad doctor` to see what this machine offers, or pick another --provider"
    )]
    Provider { provider: Provider, reason: String },
    #[error("ONNX Runtime cannot load {path}: {source}")]
    Session { path: PathBuf, source: crate::Cause },
    #[error(
        "{path} is not an EfficientAD deployment graph: {reason}; export it with `efficientad-train export`"
    )]
    Contract { path: PathBuf, reason: String },
    #[error("inference failed: {0}")]
    Run(#[from] ort::Error),
    #[error("inference failed: output `{name}` has shape {found:?}, expected {expected:?}")]
    OutputShape {
        name: &'static str,
        found: Vec<i64>,
        expected: [i64; 3],
    },
    #[error("batch holds {found} bytes, expected {expected} ({n} images of {size}x{size}x3)")]
    BatchSize {
        found: usize,
        expected: usize,
        n: usize,
        size: usize,
    },
}

/// Raw maps of a batch, row-major `[n, size, size]` each.
#[derive(Clone, Debug, Default)]
pub struct RawMaps {
    pub n: usize,
    pub size: usize,
    pub st: Vec<f32>,
    pub ae: Vec<f32>,
}

impl RawMaps {
    /// The `i`-th image's maps.
    pub fn image(&self, i: usize) -> (&[f32], &[f32]) {
        let len = self.size * self.size;
        let r = i * len..(i + 1) * len;
        (&self.st[r.clone()], &self.ae[r])
    }
}

/// A session bound to one bundle.
pub struct Engine {
    session: Session,
    provider: Provider,
    input_size: usize,
    map_size: usize,
}

fn dispatch(provider: Provider, options: &EngineOptions) -> Vec<ExecutionProviderDispatch> {
    match provider {
        Provider::Tensorrt => vec![
            ep::TensorRT::default()
                .with_fp16(true)
                .with_engine_cache(true)
                .with_engine_cache_path(options.trt_cache.display())
                .with_timing_cache(true)
                .with_timing_cache_path(options.trt_cache.display())
                .build()
                .error_on_failure(),
        ],
        Provider::Cuda => vec![
            ep::CUDA::default()
                .with_device_id(0)
                .build()
                .error_on_failure(),
        ],
        Provider::Cpu | Provider::Auto => vec![ep::CPU::default().build()],
    }
}

impl Engine {
    /// Builds a session for `bundle` on the requested provider and checks the graph's contract.
    pub fn new(bundle: &Bundle, options: &EngineOptions) -> Result<Self, EngineError> {
        let lib = ortlib::load()?;
        let candidates = match options.provider {
            Provider::Auto => vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu],
            explicit => vec![explicit],
        };
        let mut last_error = None;
        for provider in candidates {
            match Self::session(bundle, options, provider, &lib.environment) {
                Ok(session) => {
                    if options.provider == Provider::Auto {
                        crate::log_line!("efficientad: execution provider: {provider}");
                    }
                    let engine = Self {
                        session,
                        provider,
                        input_size: bundle.info.input_size,
                        map_size: bundle.info.map_size,
                    };
                    engine.check_contract(bundle)?;
                    return Ok(engine);
                }
                Err(EngineError::Provider { reason, .. }) if options.provider == Provider::Auto => {
                    crate::log_line!(
                        "efficientad: {provider} unavailable ({}), trying the next provider",
                        reason.trim_end_matches('.')
                    );
                    last_error = Some(EngineError::Provider { provider, reason });
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or(EngineError::Provider {
            provider: options.provider,
            reason: "no provider could be loaded".into(),
        }))
    }

    fn session(
        bundle: &Bundle,
        options: &EngineOptions,
        provider: Provider,
        environment: &ort::environment::Environment,
    ) -> Result<Session, EngineError> {
        let session_err = |e: crate::Cause| EngineError::Session {
            path: bundle.onnx_path.clone(),
            source: e,
        };
        if provider == Provider::Tensorrt {
            std::fs::create_dir_all(&options.trt_cache).map_err(|e| session_err(e.into()))?;
        }
        let mut builder = Session::builder(environment).map_err(|e| session_err(e.into()))?;
        if let Some(threads) = options.intra_threads {
            // A builder's error carries the builder back; only the error is kept.
            builder = builder
                .with_intra_threads(threads)
                .map_err(|e| session_err(Box::new(ort::Error::<()>::from(e))))?;
        }
        builder = builder
            .with_execution_providers(dispatch(provider, options))
            .map_err(|e| EngineError::Provider {
                provider,
                reason: e.to_string(),
            })?;
        builder
            .commit_from_file(&bundle.onnx_path)
            .map_err(|e| session_err(e.into()))
    }

    fn check_contract(&self, bundle: &Bundle) -> Result<(), EngineError> {
        let contract = |reason: String| EngineError::Contract {
            path: bundle.onnx_path.clone(),
            reason,
        };
        let inputs = self.session.inputs();
        match inputs {
            [only] if only.name() == INPUT => {
                if only.dtype().tensor_type() != Some(TensorElementType::Uint8) {
                    return Err(contract(format!("input `{INPUT}` must be uint8")));
                }
                // model.json's sizes must be the graph's: checked here, at load, not by an
                // ERROR on every image.
                let size = bundle.info.input_size as i64;
                if let Some(shape) = only.dtype().tensor_shape()
                    && (shape.len() != 4
                        || [shape[1], shape[2]].iter().any(|&d| d >= 0 && d != size)
                        || (shape[3] >= 0 && shape[3] != 3))
                {
                    return Err(contract(format!(
                        "input `{INPUT}` has shape {:?}, but model.json says input_size {size} ([N,{size},{size},3]); the bundle's files do not belong together",
                        &shape[..]
                    )));
                }
            }
            _ => {
                let names: Vec<&str> = inputs.iter().map(|i| i.name()).collect();
                return Err(contract(format!(
                    "expected one input `{INPUT}`, found {names:?}"
                )));
            }
        }
        for name in [OUTPUT_ST, OUTPUT_AE] {
            let outlet = self
                .session
                .outputs()
                .iter()
                .find(|o| o.name() == name)
                .ok_or_else(|| contract(format!("output `{name}` is missing")))?;
            if outlet.dtype().tensor_type() != Some(TensorElementType::Float32) {
                return Err(contract(format!("output `{name}` must be float32")));
            }
            let size = bundle.info.map_size as i64;
            if let Some(shape) = outlet.dtype().tensor_shape()
                && (shape.len() != 3 || [shape[1], shape[2]].iter().any(|&d| d >= 0 && d != size))
            {
                return Err(contract(format!(
                    "output `{name}` has shape {:?}, but model.json says map_size {size} ([N,{size},{size}]); the bundle's files do not belong together",
                    &shape[..]
                )));
            }
        }
        Ok(())
    }

    /// The provider this session really runs on.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    pub fn input_size(&self) -> usize {
        self.input_size
    }

    pub fn map_size(&self) -> usize {
        self.map_size
    }

    /// Runs `n` RGB8 images of `input_size`² laid out NHWC in `batch`.
    pub fn run(&mut self, batch: &[u8], n: usize) -> Result<RawMaps, EngineError> {
        let mut maps = RawMaps::default();
        self.run_into(batch, n, &mut maps)?;
        Ok(maps)
    }

    /// As [`Engine::run`], reusing `out`'s buffers.
    pub fn run_into(
        &mut self,
        batch: &[u8],
        n: usize,
        out: &mut RawMaps,
    ) -> Result<(), EngineError> {
        let size = self.input_size;
        let expected = n * size * size * 3;
        if batch.len() != expected || n == 0 {
            return Err(EngineError::BatchSize {
                found: batch.len(),
                expected,
                n,
                size,
            });
        }
        let input =
            TensorRef::from_array_view(([n, size, size, 3], batch)).map_err(EngineError::Run)?;
        let outputs = self
            .session
            .run(ort::inputs![INPUT => input])
            .map_err(EngineError::Run)?;
        let map = self.map_size;
        let take = |name: &'static str, dst: &mut Vec<f32>| -> Result<(), EngineError> {
            let (shape, data) = outputs[name]
                .try_extract_tensor::<f32>()
                .map_err(EngineError::Run)?;
            let dims: Vec<i64> = shape.iter().copied().collect();
            if dims != [n as i64, map as i64, map as i64] {
                return Err(EngineError::OutputShape {
                    name,
                    found: dims,
                    expected: [n as i64, map as i64, map as i64],
                });
            }
            dst.clear();
            dst.extend_from_slice(data);
            Ok(())
        };
        take(OUTPUT_ST, &mut out.st)?;
        take(OUTPUT_AE, &mut out.ae)?;
        out.n = n;
        out.size = map;
        Ok(())
    }
}

/// Whether `provider` can run a graph with this library: opens a one-node probe graph on it.
/// Returns the reason when it cannot.
pub fn probe_provider(provider: Provider) -> Result<(), String> {
    use crate::model::onnx_proto::{self as proto, DataType, Dim};
    let lib = ortlib::load().map_err(|e| e.to_string())?;
    let node = proto::node("Relu", "probe/relu", &["x"], &["y"], &[]);
    let x = proto::value_info("x", DataType::Float, &[Dim::Fixed(1), Dim::Fixed(4)]);
    let y = proto::value_info("y", DataType::Float, &[Dim::Fixed(1), Dim::Fixed(4)]);
    let graph = proto::graph("probe", &[node], &[], &[x], &[y]);
    let bytes = proto::model(8, 17, "efficientad", env!("CARGO_PKG_VERSION"), &graph, &[]);
    let options = EngineOptions {
        provider,
        ..EngineOptions::default()
    };
    if provider == Provider::Tensorrt {
        std::fs::create_dir_all(&options.trt_cache).map_err(|e| e.to_string())?;
    }
    let builder = Session::builder(&lib.environment).map_err(|e| e.to_string())?;
    let mut builder = builder
        .with_execution_providers(dispatch(provider, &options))
        .map_err(|e| e.to_string())?;
    builder
        .commit_from_memory(&bytes)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
