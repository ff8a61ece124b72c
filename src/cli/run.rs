//! `efficientad run`: watch a source and answer the PLC bridge — triggers on stdin, one JSON
//! line per trigger on stdout, logs on stderr.

use std::io::BufReader;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use crossbeam_channel::{Receiver, bounded, unbounded};
use efficientad::judge::calibration::Calibration;
use efficientad::judge::inspect::{HeatmapSink, Verdict};
use efficientad::line::monitor::Monitor;
use efficientad::line::notify::{Notifier, watchdog, watchdog_interval};
use efficientad::line::pipeline::{
    DEFAULT_MAX_TRIGGER_AGE, LineModel, Mode, Pipeline, PipelineOptions, TriggerMode,
};
use efficientad::line::protocol::{
    Answer, AnswerError, ErrorKind, JsonLines, Latency, ModelTag, Trigger, read_triggers, rfc3339,
};
use efficientad::line::source::CameraOptions;
use efficientad::line::source::faults::{FaultPlan, FaultySource};
use efficientad::model::bundle::Bundle;
use efficientad::model::engine::{Engine, EngineOptions, Provider};

use super::{Outcome, SourceArgs};

#[derive(Args)]
pub struct RunArgs {
    /// Model bundle folder, e.g. onnx/my-part. Several models: `--model NAME=DIR` once per
    /// part type; the first is the default, a trigger `{"id": …, "model": "NAME"}` picks
    /// another (a product changeover without a restart).
    #[arg(long = "model", value_name = "[NAME=]DIR", required = true)]
    pub models: Vec<String>,
    /// Calibration file of the model; with several models `--calibration NAME=FILE` for each
    /// (or plain files in the order of the models).
    #[arg(long = "calibration", value_name = "[NAME=]FILE", required = true)]
    pub calibrations: Vec<String>,
    /// Execution provider; `auto` tries TensorRT, CUDA, then CPU. An explicit one that cannot
    /// load is an error.
    #[arg(long, value_enum, default_value_t = Provider::Auto)]
    pub provider: Provider,
    /// Intra-op threads of ONNX Runtime (default: one per physical core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    #[command(flatten)]
    pub camera: SourceArgs,
    /// stdin: one frame per trigger line; free: judge frames continuously.
    #[arg(long, value_enum, default_value_t = TriggerMode::Stdin)]
    pub trigger: TriggerMode,
    /// Write heatmap overlays of NG parts into this folder.
    #[arg(long, value_name = "DIR")]
    pub heatmaps: Option<PathBuf>,
    /// With --heatmaps: overlays for every part.
    #[arg(long, requires = "heatmaps")]
    pub all_heatmaps: bool,
    #[command(flatten)]
    pub heatmap_limits: super::HeatmapLimitArgs,
    /// Longest a trigger may wait (behind earlier ones) before its frame is taken,
    /// milliseconds; an older trigger is answered ERROR "overloaded" instead of being judged
    /// on a later part. Set it to how long a part stays in view; 0 = no limit.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_MAX_TRIGGER_AGE.as_millis() as u64)]
    pub max_trigger_age_ms: u64,
    /// Serve /metrics (Prometheus), /healthz and a live status page at this address, e.g.
    /// 127.0.0.1:9464 (off by default; it listens only where told).
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Test aid: make every Nth grab fail, e.g. disconnect=97,stall=50,drop=7,garbage=11
    /// (README: Tests).
    #[arg(long, value_name = "PLAN", hide = true)]
    pub inject_faults: Option<FaultPlan>,
}

impl RunArgs {
    fn camera_options(&self) -> CameraOptions {
        self.camera.options(self.trigger == TriggerMode::Free)
    }

    fn pipeline_options(&self) -> PipelineOptions {
        PipelineOptions {
            frame_timeout: Duration::from_millis(self.camera.frame_timeout_ms),
            max_trigger_age: (self.max_trigger_age_ms > 0)
                .then(|| Duration::from_millis(self.max_trigger_age_ms)),
            ..PipelineOptions::default()
        }
    }
}

/// Routes SIGINT/SIGTERM to the pipeline's shutdown channel.
pub fn shutdown_channel() -> crossbeam_channel::Receiver<()> {
    let (tx, rx) = bounded::<()>(4);
    let _ = ctrlc::set_handler(move || {
        efficientad::log_line!("efficientad: stopping: answering pending triggers");
        let _ = tx.try_send(());
    });
    rx
}

pub fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    // Signals and triggers are taken from the first moment, so a stop or a trigger that comes
    // while the model loads is still answered (README: exit status). The reader never blocks
    // on the pipeline (unbounded channel), so each trigger is stamped when it arrives.
    let shutdown = shutdown_channel();
    let mode = match args.trigger {
        TriggerMode::Stdin => {
            let (tx, rx) = unbounded();
            std::thread::spawn(move || {
                read_triggers(BufReader::new(std::io::stdin()), |t| tx.send(t).is_ok());
            });
            Mode::Triggered(rx)
        }
        TriggerMode::Free => Mode::FreeRun,
    };
    efficientad::log_line!("efficientad: loading {}", args.models.join(", "));
    // Supervision: the HTTP endpoint and the systemd watchdog read the pipeline's monitor.
    let interval = watchdog_interval();
    // Everything that can fail, the HTTP listener included, before "ready": a supervisor never
    // sees a ready run that then exits, and every trigger already sent gets its answer.
    let pipeline = match setup(&args).and_then(|p| {
        let stall_limit =
            interval.unwrap_or_else(|| (2 * p.options.frame_timeout).max(Duration::from_secs(5)));
        if let (Some(addr), Some(m)) = (&args.http, &p.monitor) {
            let local = efficientad::line::http::serve(addr, m.clone(), stall_limit)?;
            efficientad::log_line!("efficientad: status page and metrics at http://{local}/");
        }
        Ok(p)
    }) {
        Ok(p) => p,
        Err(e) => {
            if let Mode::Triggered(triggers) = &mode {
                answer_unstarted(triggers, &e);
            }
            return Err(e);
        }
    };
    efficientad::log_line!(
        "efficientad: ready ({} on {}); waiting for triggers",
        pipeline
            .models
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        pipeline.models[0].engine.provider()
    );
    let monitor = pipeline.monitor.clone();
    let notifier = Notifier::from_env().map(Arc::new);
    let done = Arc::new(AtomicBool::new(false));
    let mut watchdog_thread = None;
    if let Some(n) = &notifier {
        n.send("READY=1");
        if let (Some(interval), Some(m)) = (interval, &monitor) {
            watchdog_thread = Some(watchdog(n.clone(), m.clone(), interval, done.clone()));
        }
    }
    let stdout = std::io::stdout();
    let summary = match pipeline.run(mode, shutdown, &mut stdout.lock(), &mut |_| {}) {
        Ok(summary) => summary,
        Err(e) => {
            // The bridge reads answers from stdout; without it no answer reaches the line.
            efficientad::log_line!(
                "efficientad: stopping: an answer could not be written to stdout ({e}); the PLC bridge reading it is gone (exit status 3)"
            );
            done.store(true, Ordering::SeqCst);
            if let Some(n) = &notifier {
                n.send("STOPPING=1");
            }
            return Ok(Outcome::BridgeGone);
        }
    };
    done.store(true, Ordering::SeqCst);
    if let Some(n) = &notifier {
        n.send("STOPPING=1");
    }
    if let Some(t) = watchdog_thread {
        let _ = t.join();
    }
    efficientad::log_line!("efficientad: {}", summary.line());
    // A line session that ends on EOF or a signal ends normally (exit 0) even when some
    // triggers were answered ERROR: those answers and the summary carry the errors, and a
    // service manager must not take a clean stop for a failure (README: exit status).
    Ok(Outcome::Success)
}

/// Models (bundle, calibration), source and warmed-up engines.
fn setup(args: &RunArgs) -> anyhow::Result<Pipeline> {
    let pairs = pair_models(&args.models, &args.calibrations)?;
    let mut loaded = Vec::with_capacity(pairs.len());
    for (name, dir, calibration_path) in pairs {
        let bundle = Bundle::open(&dir)?;
        let calibration = Calibration::load_for(&calibration_path, &bundle)?;
        let name = name.unwrap_or_else(|| bundle.info.name.clone());
        if loaded.iter().any(|(n, ..): &(String, _, _, _)| *n == name) {
            anyhow::bail!(
                "two models are named `{name}`; give each its own name with --model NAME=DIR"
            );
        }
        loaded.push((name, bundle, calibration, calibration_path));
    }
    let spec = args.camera.spec()?;
    let mut source = spec.open_with(&args.camera_options())?;
    if let Some(plan) = args.inject_faults {
        source = Box::new(FaultySource::new(source, plan));
    }
    efficientad::log_line!("efficientad: source {}", source.describe());
    let heatmaps = HeatmapSink::optional(
        args.heatmaps.as_deref(),
        args.all_heatmaps,
        args.heatmap_limits.limits(),
    )?;
    let options = EngineOptions {
        provider: args.provider,
        intra_threads: args.threads.map(usize::from),
        ..EngineOptions::default()
    };
    let several = loaded.len() > 1;
    let mut models = Vec::with_capacity(loaded.len());
    let mut default_info = None;
    for (name, bundle, calibration, calibration_path) in loaded {
        let mut engine = Engine::new(&bundle, &options)?;
        // Warm-up: the first session run allocates and (TensorRT) builds; not on a real
        // trigger. Every model is warm before "ready".
        let size = engine.input_size();
        engine.run(&vec![0u8; size * size * 3], 1)?;
        if default_info.is_none() {
            let calibration_sha256 = efficientad::model::bundle::file_sha256(&calibration_path)
                .with_context(|| format!("hashing {}", calibration_path.display()))?;
            default_info = Some((bundle.info.clone(), calibration_sha256));
        }
        let sha = &bundle.info.model_sha256;
        models.push(LineModel {
            tag: several.then(|| ModelTag {
                name: name.clone(),
                sha256: sha[..sha.len().min(12)].to_owned(),
            }),
            name,
            engine,
            calibration,
        });
    }
    let Some((info, calibration_sha256)) = default_info else {
        anyhow::bail!("no model given (--model)");
    };
    let monitor = Monitor::new(
        &info.name,
        &info.model_sha256,
        &calibration_sha256,
        models[0].calibration.threshold,
        &source.describe(),
    );
    Ok(Pipeline {
        source,
        models,
        heatmaps,
        options: args.pipeline_options(),
        monitor: Some(Arc::new(monitor)),
    })
}

/// `NAME=PATH` or `PATH`.
fn split_name(text: &str) -> (Option<String>, PathBuf) {
    match text.split_once('=') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') && !path.is_empty() => {
            (Some(name.to_owned()), PathBuf::from(path))
        }
        _ => (None, PathBuf::from(text)),
    }
}

/// Each `--model` with its `--calibration`: by name when the calibrations are named, else in
/// order.
fn pair_models(
    models: &[String],
    calibrations: &[String],
) -> anyhow::Result<Vec<(Option<String>, PathBuf, PathBuf)>> {
    let models: Vec<_> = models.iter().map(|m| split_name(m)).collect();
    let calibrations: Vec<_> = calibrations.iter().map(|c| split_name(c)).collect();
    let named = calibrations.iter().filter(|(n, _)| n.is_some()).count();
    if named == 0 {
        if calibrations.len() != models.len() {
            anyhow::bail!(
                "{} models but {} calibration files: give one --calibration per --model (or NAME=FILE)",
                models.len(),
                calibrations.len()
            );
        }
        return Ok(models
            .into_iter()
            .zip(calibrations)
            .map(|((name, dir), (_, cal))| (name, dir, cal))
            .collect());
    }
    if named != calibrations.len() {
        anyhow::bail!("name every --calibration (NAME=FILE) or none of them");
    }
    for (name, _) in &calibrations {
        if !models.iter().any(|(n, _)| n == name) {
            anyhow::bail!(
                "--calibration {}=… names no model; the models are: {}",
                name.as_deref().unwrap_or(""),
                models
                    .iter()
                    .map(|(n, d)| n.clone().unwrap_or_else(|| d.display().to_string()))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    models
        .into_iter()
        .map(|(name, dir)| {
            let cal = calibrations
                .iter()
                .find(|(n, _)| n.is_some() && *n == name)
                .map(|(_, c)| c.clone())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "the model {} has no calibration: add --calibration {}=FILE",
                        dir.display(),
                        name.as_deref().unwrap_or("NAME")
                    )
                })?;
            Ok((name, dir, cal))
        })
        .collect()
}

/// How long the reader may stay quiet before a run that could not start stops listening:
/// what a bridge wrote before the failure is in the pipe already and is read within
/// microseconds; this only bounds the wait for the last of it.
const UNSTARTED_GRACE: Duration = Duration::from_millis(300);

/// The run could not start: every trigger that has already arrived — and those still in the
/// stdin pipe, read within a short grace — gets its one answer, ERROR with the reason, before
/// the setup error ends the process (exit 2).
fn answer_unstarted(triggers: &Receiver<Trigger>, error: &anyhow::Error) {
    let stdout = std::io::stdout();
    let mut lines = JsonLines::new(stdout.lock());
    // Bounded in total too: a bridge that keeps sending must not hold a failed start open.
    let deadline = std::time::Instant::now() + 10 * UNSTARTED_GRACE;
    let pending = std::iter::from_fn(|| {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        triggers.recv_timeout(UNSTARTED_GRACE.min(left)).ok()
    });
    for trigger in pending {
        lines.write(&Answer {
            id: trigger.id,
            seq: trigger.seq,
            verdict: Verdict::Error,
            score: None,
            threshold: f64::NAN,
            trigger_time: Some(rfc3339(trigger.received_at)),
            frame_time: None,
            frame: None,
            latency_ms: Latency::default(),
            heatmap: None,
            error: Some(AnswerError::new(
                ErrorKind::Startup,
                format!("the runtime could not start: {error:#}"),
            )),
            model: None,
        });
    }
    let _ = lines.finish();
}
