//! ONNX Runtime sessions outside a bundle's [`crate::model::engine::Engine`]: quantize's probe
//! graphs, the training crate's backbone and the gauge's teacher graphs. With the engine's own,
//! these are the only places sessions are built, so library loading and thread settings are
//! decided in one module.

use std::path::Path;

use ort::session::Session;

use crate::model::ortlib::{self, OrtLibError};

/// Where a session's graph comes from.
pub enum Graph<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

/// Thread settings of a CPU session.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuOptions {
    /// Intra-op threads (None: ONNX Runtime's default, one per physical core).
    pub threads: Option<usize>,
    /// Let idle worker threads sleep instead of spinning: for sessions whose runs alternate
    /// with other work on the same cores (training's backbone beside Burn).
    pub no_spinning: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Library(#[from] OrtLibError),
    #[error(transparent)]
    Ort(#[from] ort::Error),
}

/// A session on ONNX Runtime's CPU provider.
pub fn cpu_session(graph: Graph<'_>, options: CpuOptions) -> Result<Session, SessionError> {
    let lib = ortlib::load()?;
    let mut builder = Session::builder(&lib.environment)?;
    // A builder's error carries the builder back; only the error is kept.
    if let Some(threads) = options.threads {
        builder = builder
            .with_intra_threads(threads)
            .map_err(ort::Error::from)?;
    }
    if options.no_spinning {
        builder = builder
            .with_intra_op_spinning(false)
            .map_err(ort::Error::from)?;
    }
    Ok(match graph {
        Graph::File(path) => builder.commit_from_file(path)?,
        Graph::Bytes(bytes) => builder.commit_from_memory(bytes)?,
    })
}
