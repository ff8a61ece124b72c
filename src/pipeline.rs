//! The streaming pipeline of `efficientad run` and `demo`: capture, inference and output on
//! their own threads, joined by bounded crossbeam channels.
//!
//! ```text
//! triggers ─▶ capture (owns the source) ─▶ inference (owns the engine) ─▶ output (stdout)
//! ```
//! Triggered mode: every trigger becomes exactly one job and one answer, in order; a full
//! queue blocks the capture thread (triggers wait, none is dropped). Free-run mode: frames
//! are offered with `try_send`; when inference is behind, the stale frame is dropped and
//! counted. Shutdown (EOF, SIGINT/SIGTERM): triggers already received are still answered.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, bounded, select};
use serde::Serialize;

use crate::batch::{ImageMaps, Timings, ms};
use crate::calibration::Calibration;
use crate::engine::{Engine, RawMaps};
use crate::inspect::{HeatmapSink, Verdict, judge};
use crate::preprocess::Preprocessor;
use crate::source::{Frame, FrameSource, SourceError};
use crate::trigger::Trigger;

/// How frames are asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TriggerMode {
    /// One frame per stdin line (the PLC bridge protocol).
    Stdin,
    /// Judge frames continuously; one line per frame.
    Free,
}

/// Pipeline settings.
pub struct PipelineOptions {
    /// Longest wait for a frame after a trigger.
    pub frame_timeout: Duration,
    /// First reconnection delay; doubles up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        Self {
            frame_timeout: Duration::from_secs(2),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Latency of one answer per stage, milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub trigger_to_frame: f64,
    pub preprocess: f64,
    pub inference: f64,
    pub maps: f64,
    pub total: f64,
}

/// Which frame was judged.
#[derive(Clone, Debug, Serialize)]
pub struct FrameInfo {
    pub index: u64,
    pub source: String,
    pub width: u32,
    pub height: u32,
}

/// One stdout line.
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    pub id: serde_json::Value,
    pub seq: u64,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    pub threshold: f64,
    pub trigger_time: Option<String>,
    pub frame_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame: Option<FrameInfo>,
    pub latency_ms: Latency,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

struct Job {
    trigger: Trigger,
    frame: Result<Frame, String>,
}

/// Counts and latency percentiles of a run (latencies kept in 1%-wide buckets, so memory
/// stays flat however long the line runs).
#[derive(Default, Debug)]
pub struct Summary {
    pub answers: u64,
    pub ok: u64,
    pub ng: u64,
    pub errors: u64,
    pub dropped_frames: u64,
    buckets: BTreeMap<i32, u64>,
    pub max_ms: f64,
}

impl Summary {
    fn record(&mut self, a: &Answer) {
        self.answers += 1;
        match a.verdict {
            Verdict::Ok => self.ok += 1,
            Verdict::Ng => self.ng += 1,
            Verdict::Error => self.errors += 1,
        }
        if a.verdict != Verdict::Error {
            let t = a.latency_ms.total.max(1e-3);
            *self
                .buckets
                .entry((t.ln() / 1.01f64.ln()).floor() as i32)
                .or_default() += 1;
            self.max_ms = self.max_ms.max(t);
        }
    }

    /// Latency percentile (upper edge of its 1% bucket), NaN without answers.
    pub fn percentile(&self, p: f64) -> f64 {
        let total: u64 = self.buckets.values().sum();
        if total == 0 {
            return f64::NAN;
        }
        let rank = ((p * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (&b, &n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return 1.01f64.powi(b + 1).min(self.max_ms);
            }
        }
        self.max_ms
    }

    pub fn line(&self) -> String {
        format!(
            "{} answers: {} OK, {} NG, {} ERROR; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; {} frames dropped",
            self.answers,
            self.ok,
            self.ng,
            self.errors,
            self.percentile(0.5),
            self.percentile(0.99),
            self.max_ms,
            self.dropped_frames
        )
    }
}

/// RFC 3339 UTC time with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// The capture side: owns the source, reconnects with backoff.
struct Capture {
    source: Box<dyn FrameSource>,
    options: PipelineOptions,
    down: Option<(Instant, Duration)>,
}

impl Capture {
    /// A frame for a trigger, or the reason there is none.
    fn frame(&mut self) -> Result<Frame, String> {
        if let Some((next_try, _)) = self.down {
            if Instant::now() < next_try {
                return Err("camera unavailable; reconnecting".into());
            }
            self.try_reconnect();
            if self.down.is_some() {
                return Err("camera unavailable; reconnecting".into());
            }
        }
        match self.source.grab(self.options.frame_timeout) {
            Ok(f) => Ok(f),
            Err(SourceError::Disconnected(reason)) => {
                eprintln!(
                    "efficientad: {} lost: {reason}; reconnecting",
                    self.source.describe()
                );
                self.down = Some((Instant::now() + self.options.backoff, self.options.backoff));
                Err(format!("camera unavailable: {reason}"))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    fn try_reconnect(&mut self) {
        let Some((_, delay)) = self.down else { return };
        match self.source.reconnect() {
            Ok(()) => {
                eprintln!("efficientad: {} reconnected", self.source.describe());
                self.down = None;
            }
            Err(e) => {
                let delay = (delay * 2).min(self.options.max_backoff);
                eprintln!("efficientad: reconnect failed ({e}); next try in {delay:?}");
                self.down = Some((Instant::now() + delay, delay));
            }
        }
    }

    /// Time until the next reconnection attempt, if the camera is down.
    fn reconnect_due(&self) -> Option<Duration> {
        self.down
            .map(|(at, _)| at.saturating_duration_since(Instant::now()))
    }
}

fn capture_triggered(
    mut cap: Capture,
    triggers: Receiver<Trigger>,
    shutdown: Receiver<()>,
    jobs: Sender<Job>,
) {
    let mut stopping = false;
    loop {
        let trigger = if stopping {
            // Shutting down: answer what has already arrived, then stop.
            match triggers.try_recv() {
                Ok(t) => t,
                Err(_) => return,
            }
        } else {
            let idle = cap.reconnect_due().unwrap_or(Duration::from_secs(3600));
            select! {
                recv(triggers) -> t => match t {
                    Ok(t) => t,
                    Err(_) => return,
                },
                recv(shutdown) -> _ => {
                    stopping = true;
                    continue;
                },
                default(idle) => {
                    cap.try_reconnect();
                    continue;
                }
            }
        };
        let frame = match &trigger.invalid {
            Some(reason) => Err(reason.clone()),
            None => cap.frame(),
        };
        if jobs.send(Job { trigger, frame }).is_err() {
            return;
        }
    }
}

fn capture_free(mut cap: Capture, shutdown: Receiver<()>, jobs: Sender<Job>, dropped: Sender<()>) {
    let mut seq = 0;
    loop {
        if shutdown.try_recv().is_ok() {
            return;
        }
        if let Some(wait) = cap.reconnect_due() {
            match shutdown.recv_timeout(wait) {
                Ok(()) => return,
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => cap.try_reconnect(),
            }
            continue;
        }
        let frame = cap.frame();
        if matches!(&frame, Err(e) if e == &SourceError::Exhausted.to_string()) {
            return;
        }
        seq += 1;
        let now = Instant::now();
        let trigger = Trigger {
            seq,
            id: serde_json::Value::Null,
            received: frame.as_ref().map(|f| f.captured).unwrap_or(now),
            received_at: SystemTime::now(),
            invalid: None,
        };
        match jobs.try_send(Job { trigger, frame }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let _ = dropped.send(());
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}

struct Inference {
    engine: Engine,
    calibration: Calibration,
    heatmaps: Option<HeatmapSink>,
    pre: Preprocessor,
    input: Vec<u8>,
    maps: RawMaps,
    combined: Vec<f32>,
}

impl Inference {
    fn answer(&mut self, job: Job) -> Answer {
        let Job { trigger, frame } = job;
        let mut answer = Answer {
            id: trigger.id,
            seq: trigger.seq,
            verdict: Verdict::Error,
            score: None,
            threshold: self.calibration.threshold,
            trigger_time: Some(rfc3339(trigger.received_at)),
            frame_time: None,
            frame: None,
            latency_ms: Latency::default(),
            heatmap: None,
            error: None,
        };
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                answer.error = Some(e);
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
        self.input.resize(self.pre.size() * self.pre.size() * 3, 0);
        if let Err(e) = self
            .pre
            .resize_rgb(frame.image.as_raw(), w, h, &mut self.input)
        {
            answer.error = Some(e.to_string());
            return answer;
        }
        answer.latency_ms.preprocess = ms(t0.elapsed());
        let t1 = Instant::now();
        if let Err(e) = self.engine.run_into(&self.input, 1, &mut self.maps) {
            answer.error = Some(format!("inference failed: {e}"));
            answer.latency_ms.total = ms(trigger.received.elapsed());
            return answer;
        }
        answer.latency_ms.inference = ms(t1.elapsed());
        let keep = self.heatmaps.is_some();
        let (st, ae) = self.maps.image(0);
        let maps = ImageMaps {
            path: frame.origin.clone().into(),
            width: w,
            height: h,
            image: keep.then_some(frame.image),
            st: st.to_vec(),
            ae: ae.to_vec(),
            map_size: self.maps.size,
            batch_size: 1,
            timings: Timings::default(),
            started: trigger.received,
        };
        let judged = judge(
            &maps,
            &self.calibration,
            &mut self.combined,
            self.heatmaps.as_mut(),
        );
        if let Some(e) = judged.heatmap_error {
            eprintln!("efficientad: {e}");
        }
        answer.latency_ms.maps = judged.maps_ms;
        answer.verdict = judged.verdict;
        answer.score = Some(judged.score);
        answer.heatmap = judged.heatmap.map(|p| p.display().to_string());
        answer.latency_ms.total = ms(trigger.received.elapsed());
        answer
    }
}

/// Everything a pipeline run needs.
pub struct Pipeline {
    pub source: Box<dyn FrameSource>,
    pub engine: Engine,
    pub calibration: Calibration,
    pub heatmaps: Option<HeatmapSink>,
    pub options: PipelineOptions,
}

impl Pipeline {
    /// Runs until the triggers end (or the source ends in free-run mode) or `shutdown` fires;
    /// writes one JSON line per answer to `out`, flushed, and calls `each` with it.
    pub fn run(
        self,
        mode: TriggerMode,
        triggers: Receiver<Trigger>,
        shutdown: Receiver<()>,
        out: &mut dyn Write,
        each: &mut dyn FnMut(&Answer),
    ) -> std::io::Result<Summary> {
        let size = self.engine.input_size();
        let capture = Capture {
            source: self.source,
            options: self.options,
            down: None,
        };
        let (job_tx, job_rx) = bounded::<Job>(if mode == TriggerMode::Free { 1 } else { 4 });
        let (answer_tx, answer_rx) = bounded::<Answer>(16);
        let (drop_tx, drop_rx) = crossbeam_channel::unbounded::<()>();
        let mut inference = Inference {
            engine: self.engine,
            calibration: self.calibration,
            heatmaps: self.heatmaps,
            pre: Preprocessor::new(size),
            input: Vec::new(),
            maps: RawMaps::default(),
            combined: Vec::new(),
        };
        let mut summary = Summary::default();
        let mut write_error = None;
        std::thread::scope(|scope| {
            scope.spawn(move || match mode {
                TriggerMode::Stdin => capture_triggered(capture, triggers, shutdown, job_tx),
                TriggerMode::Free => capture_free(capture, shutdown, job_tx, drop_tx),
            });
            scope.spawn(move || {
                for job in job_rx.iter() {
                    if answer_tx.send(inference.answer(job)).is_err() {
                        return;
                    }
                }
            });
            for answer in answer_rx.iter() {
                summary.record(&answer);
                each(&answer);
                if write_error.is_none() {
                    let written = serde_json::to_writer(&mut *out, &answer)
                        .map_err(std::io::Error::from)
                        .and_then(|()| out.write_all(b"\n"))
                        .and_then(|()| out.flush());
                    if let Err(e) = written {
                        write_error = Some(e);
                    }
                }
            }
        });
        summary.dropped_frames = drop_rx.try_iter().count() as u64;
        match write_error {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_960_800_123);
        assert_eq!(rfc3339(t), "2026-11-29T14:00:00.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn percentiles_from_buckets() {
        let mut s = Summary::default();
        for t in 1..=100 {
            s.record(&Answer {
                id: serde_json::Value::Null,
                seq: t,
                verdict: Verdict::Ok,
                score: Some(0.0),
                threshold: 0.0,
                trigger_time: None,
                frame_time: None,
                frame: None,
                latency_ms: Latency {
                    total: t as f64,
                    ..Latency::default()
                },
                heatmap: None,
                error: None,
            });
        }
        assert!(
            (s.percentile(0.5) - 50.0).abs() / 50.0 < 0.02,
            "{}",
            s.percentile(0.5)
        );
        assert!((s.percentile(0.99) - 99.0).abs() / 99.0 < 0.02);
        assert_eq!(s.max_ms, 100.0);
    }
}
