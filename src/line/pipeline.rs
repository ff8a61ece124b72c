//! The streaming pipeline of `efficientad run` and `demo`: capture, inference and output on
//! their own threads, joined by bounded crossbeam channels.
//!
//! ```text
//! triggers ─▶ capture (owns the source) ─▶ inference (owns the engine) ─▶ output (stdout)
//! ```
//! Triggered mode: every trigger becomes exactly one job and one answer, in order; a full
//! queue blocks the capture thread (triggers wait, none is dropped), and a trigger that waited
//! longer than `max_trigger_age` is answered ERROR "overloaded" instead of being judged on a
//! later part (triggers sent while the model loaded age from the start of the run). Free-run mode: frames are offered with `try_send`; when inference is behind,
//! the stale frame is dropped and counted. Shutdown (EOF, SIGINT/SIGTERM): triggers already
//! received are still answered.

mod capture;
mod summary;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded};

pub use capture::FrameError;
use capture::{Capture, Job};
pub use summary::Summary;

use crate::judge::calibration::Calibration;
use crate::judge::inspect::{HeatmapSink, MapsView, Part, Verdict, judge};
use crate::line::monitor::{Monitor, NgPart, Stage};
use crate::line::protocol::{
    Answer, AnswerError, ErrorKind, FrameInfo, JsonLines, Latency, ModelTag, Trigger, rfc3339,
};
use crate::line::source::FrameSource;
use crate::model::engine::{Engine, RawMaps};
use crate::model::preprocess::Preprocessor;
use crate::ms;

/// How frames are asked for (the command line's `--trigger`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TriggerMode {
    /// One frame per stdin line (the PLC bridge protocol).
    Stdin,
    /// Judge frames continuously; one line per frame.
    Free,
}

/// What drives a run: triggers (one answer each, until their channel closes), or the source's
/// own frames (until it ends or the run is stopped).
pub enum Mode {
    Triggered(Receiver<Trigger>),
    FreeRun,
}

/// Default of `--max-trigger-age-ms`.
pub const DEFAULT_MAX_TRIGGER_AGE: Duration = Duration::from_millis(1000);

/// Pipeline settings.
pub struct PipelineOptions {
    /// Longest wait for a frame after a trigger.
    pub frame_timeout: Duration,
    /// First reconnection delay; doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Longest a trigger may wait for the camera before it is answered ERROR "overloaded"
    /// (None: no limit, as `soak` wants to measure the queue itself).
    pub max_trigger_age: Option<Duration>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            frame_timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_trigger_age: Some(DEFAULT_MAX_TRIGGER_AGE),
        }
    }
}

/// One model of a run: its engine (loaded and warmed up), its calibration, and how answers
/// name it.
pub struct LineModel {
    pub name: String,
    pub engine: Engine,
    pub calibration: Calibration,
    /// Set on every answer when the run has several models.
    pub tag: Option<ModelTag>,
}

struct Inference {
    /// The first is the default; a trigger's `"model"` picks another.
    models: Vec<(LineModel, Preprocessor)>,
    heatmaps: Option<HeatmapSink>,
    input: Vec<u8>,
    maps: RawMaps,
    combined: Vec<f32>,
    monitor: Option<Arc<Monitor>>,
}

impl Inference {
    fn answer(&mut self, job: Job) -> Answer {
        let Job { trigger, frame } = job;
        // The model the trigger names (else the default); an unknown name is the trigger's
        // error, answered before any frame is judged.
        let chosen = match &trigger.model {
            None => Ok(0),
            Some(name) => self
                .models
                .iter()
                .position(|(m, _)| &m.name == name)
                .ok_or_else(|| {
                    let known: Vec<&str> = self.models.iter().map(|(m, _)| m.name.as_str()).collect();
                    format!(
                        "trigger names the model `{name}`, which this run does not have; it has: {}",
                        known.join(", ")
                    )
                }),
        };
        let index = *chosen.as_ref().unwrap_or(&0);
        let (model, pre) = &mut self.models[index];
        let mut answer = Answer {
            id: trigger.id,
            seq: trigger.seq,
            verdict: Verdict::Error,
            score: None,
            threshold: model.calibration.threshold,
            trigger_time: Some(rfc3339(trigger.received_at)),
            frame_time: None,
            frame: None,
            latency_ms: Latency::default(),
            heatmap: None,
            error: None,
            model: model.tag.clone(),
        };
        if let Err(e) = chosen {
            answer.model = None;
            answer.error = Some(AnswerError::new(ErrorKind::UnknownModel, e));
            answer.latency_ms.total = ms(trigger.received.elapsed());
            return answer;
        }
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                answer.error = Some(AnswerError::new(e.kind(), e));
                answer.latency_ms.total = ms(trigger.received.elapsed());
                return answer;
            }
        };
        answer.frame_time = Some(rfc3339(frame.captured_at));
        answer.frame = Some(FrameInfo {
            index: frame.index,
            source: frame.origin.clone(),
            width: frame.image.width(),
            height: frame.image.height(),
        });
        answer.latency_ms.trigger_to_frame =
            ms(frame.captured.saturating_duration_since(trigger.received));
        let t0 = Instant::now();
        let (w, h) = frame.image.dimensions();
        self.input.resize(pre.size() * pre.size() * 3, 0);
        if let Err(e) = pre.resize_rgb(frame.image.as_raw(), w, h, &mut self.input) {
            answer.error = Some(AnswerError::new(ErrorKind::Preprocess, e));
            answer.latency_ms.total = ms(trigger.received.elapsed());
            return answer;
        }
        answer.latency_ms.preprocess = ms(t0.elapsed());
        let t1 = Instant::now();
        let ran = {
            let _busy = self.monitor.as_ref().map(|m| m.busy(Stage::Inference));
            model.engine.run_into(&self.input, 1, &mut self.maps)
        };
        if let Err(e) = ran {
            answer.error = Some(AnswerError::new(
                ErrorKind::Inference,
                format!("inference failed: {e}"),
            ));
            answer.latency_ms.total = ms(trigger.received.elapsed());
            return answer;
        }
        answer.latency_ms.inference = ms(t1.elapsed());
        let (st, ae) = self.maps.image(0);
        let maps = MapsView {
            st,
            ae,
            side: self.maps.size,
        };
        let part = Part {
            name: std::path::Path::new(&frame.origin),
            width: w,
            height: h,
            image: Some(&frame.image),
        };
        let judged = judge(
            maps,
            part,
            &model.calibration,
            &mut self.combined,
            self.heatmaps.as_mut(),
        );
        if let Some(e) = judged.heatmap_error {
            crate::log_line!("efficientad: {e}");
        }
        if let (Some(m), Some(sink)) = (&self.monitor, &self.heatmaps) {
            m.heatmaps(sink.written, sink.removed, sink.bytes());
        }
        if let Some(m) = &self.monitor {
            m.live
                .offer(&frame.image, &model.calibration.inspected, self.maps.size);
        }
        answer.latency_ms.maps = judged.maps_ms;
        answer.verdict = judged.verdict;
        answer.score = judged.error.is_none().then_some(judged.score);
        answer.error = judged.error.map(|e| AnswerError::new(e.kind(), e));
        answer.heatmap = judged.heatmap.map(|p| p.display().to_string());
        answer.latency_ms.total = ms(trigger.received.elapsed());
        if let (Some(m), Verdict::Ng) = (&self.monitor, judged.verdict) {
            // The resized input and the map (~200 KB), not an overlay: it is drawn only when
            // the status page asks for it, on the HTTP thread.
            m.keep_ng(NgPart {
                seq: answer.seq,
                id: answer.id.to_json(),
                score: judged.score,
                time: answer.trigger_time.clone(),
                input: self.input.clone(),
                input_size: pre.size(),
                threshold: model.calibration.threshold,
                map: self.combined.clone(),
                map_size: self.maps.size,
            });
        }
        answer
    }
}

/// Everything a pipeline run needs.
pub struct Pipeline {
    pub source: Box<dyn FrameSource>,
    /// The first is the default model.
    pub models: Vec<LineModel>,
    pub heatmaps: Option<HeatmapSink>,
    pub options: PipelineOptions,
    /// Live counters for `--http` and the watchdog.
    pub monitor: Option<Arc<Monitor>>,
}

impl Pipeline {
    /// Runs until the triggers end (or the source ends in free-run mode) or `shutdown` fires;
    /// writes one JSON line per answer to `out`, flushed, and calls `each` with it.
    pub fn run(
        self,
        mode: Mode,
        shutdown: Receiver<()>,
        out: &mut dyn Write,
        each: &mut dyn FnMut(&Answer),
    ) -> std::io::Result<Summary> {
        let capture = Capture::new(self.source, self.options, self.monitor.clone());
        let free = matches!(mode, Mode::FreeRun);
        let (job_tx, job_rx) = bounded::<Job>(if free { 1 } else { 4 });
        let (answer_tx, answer_rx) = bounded::<Answer>(16);
        let (drop_tx, drop_rx) = crossbeam_channel::unbounded::<()>();
        let models = self
            .models
            .into_iter()
            .map(|m| {
                let pre = Preprocessor::new(m.engine.input_size());
                (m, pre)
            })
            .collect();
        let mut inference = Inference {
            models,
            heatmaps: self.heatmaps,
            input: Vec::new(),
            maps: RawMaps::default(),
            combined: Vec::new(),
            monitor: self.monitor.clone(),
        };
        let mut summary = Summary::default();
        let mut lines = JsonLines::new(out);
        // Fired when an answer cannot be delivered (the PLC bridge closed stdout): judging on
        // would only produce answers nobody reads, so capture stops at once.
        let (gone_tx, gone_rx) = bounded::<()>(1);
        std::thread::scope(|scope| {
            scope.spawn(move || match mode {
                Mode::Triggered(triggers) => {
                    capture::triggered(capture, triggers, shutdown, gone_rx, job_tx)
                }
                Mode::FreeRun => capture::free_run(capture, shutdown, gone_rx, job_tx, drop_tx),
            });
            scope.spawn(move || {
                for job in job_rx.iter() {
                    if answer_tx.send(inference.answer(job)).is_err() {
                        return;
                    }
                }
            });
            for answer in answer_rx.iter() {
                each(&answer);
                // In the monitor before the line goes out, so a client that has read an
                // answer finds it counted; taken back if the line cannot be delivered, so
                // nothing undelivered passes for answered.
                if let Some(m) = &self.monitor {
                    m.record(&answer);
                }
                if !lines.write(&answer) {
                    if let Some(m) = &self.monitor {
                        m.retract(&answer);
                    }
                    let _ = gone_tx.try_send(());
                    break;
                }
                summary.record(&answer);
            }
            // Unblocks the inference thread if it is waiting to hand over an answer.
            drop(answer_rx);
        });
        summary.dropped_frames = drop_rx.try_iter().count() as u64;
        lines.finish().map(|()| summary)
    }
}
