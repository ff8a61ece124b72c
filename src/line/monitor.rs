//! The line's live state, shared by the pipeline (which reports into it), the HTTP endpoint
//! (`run --http`: Prometheus metrics, health, the status page) and the systemd watchdog.
//!
//! Reporting is a few counter updates under one short lock per answer, so the inspection path
//! never waits on a reader; everything a reader wants (text exposition, JSON, overlay PNGs) is
//! made on the reader's thread from a snapshot.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::judge::inspect::Verdict;
use crate::line::live::LiveFrame;
use crate::line::protocol::Answer;

/// Upper bounds of the latency histogram buckets, milliseconds (Prometheus `le`).
pub const BUCKETS_MS: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];
/// NG parts kept for the status page.
pub const KEPT_NG: usize = 8;

/// The stages an answer's latency is split into (as in `latency_ms`).
pub const STAGES: [&str; 5] = [
    "trigger_to_frame",
    "preprocess",
    "inference",
    "maps",
    "total",
];

/// A Prometheus histogram: cumulative-ready bucket counts, sum and count.
#[derive(Clone, Debug, Default)]
pub struct Histogram {
    pub buckets: [u64; BUCKETS_MS.len()],
    pub count: u64,
    pub sum_ms: f64,
}

impl Histogram {
    fn observe(&mut self, ms: f64) {
        if let Some(i) = BUCKETS_MS.iter().position(|&b| ms <= b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum_ms += ms;
    }
}

/// An NG part as the status page shows it: the network input (the frame resized) and its
/// combined anomaly map, rendered to an overlay only when someone asks.
#[derive(Clone, Debug)]
pub struct NgPart {
    pub seq: u64,
    /// The id as it appeared in the answer (JSON).
    pub id: String,
    pub score: f32,
    pub time: Option<String>,
    pub input: Vec<u8>,
    pub input_size: usize,
    pub map: Vec<f32>,
    pub map_size: usize,
    /// The threshold of the model that judged it (the overlay's colour scale).
    pub threshold: f64,
}

/// Which pipeline thread is doing a unit of work (for the watchdog).
#[derive(Clone, Copy, Debug)]
pub enum Stage {
    Capture = 0,
    Inference = 1,
}

/// Counters and recent parts of a run.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub ok: u64,
    pub ng: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<&'static str, u64>,
    pub latency: [Histogram; STAGES.len()],
    pub dropped_frames: u64,
    pub reconnects: u64,
    /// Heatmaps written, removed to stay within `--heatmaps-max-*`, and bytes held.
    pub heatmaps_written: u64,
    pub heatmaps_removed: u64,
    pub heatmap_bytes: u64,
    pub camera_up: bool,
    /// Why the last part could not be judged (camera, frame, engine, region); `None` when it
    /// was judged. Trigger-side refusals (a malformed line, an overload) leave it as it was.
    pub last_failed: Option<String>,
    pub last_ng: VecDeque<NgPart>,
    /// Recent answer latencies (total, ms) for the page's percentiles.
    pub recent_ms: VecDeque<f64>,
    /// Answers per model and verdict (OK, NG, ERROR), in a run with several models.
    pub per_model: BTreeMap<String, [u64; 3]>,
}

/// The shared state; see the module docs.
pub struct Monitor {
    pub model_name: String,
    pub model_sha256: String,
    /// sha256 of the calibration file in use.
    pub calibration_sha256: String,
    pub calibration_threshold: f64,
    pub source: String,
    pub started: Instant,
    /// The latest frame for `/frame.png` (copied only while someone looks).
    pub live: LiveFrame,
    state: Mutex<Snapshot>,
    busy: Mutex<[Option<Instant>; 2]>,
}

/// Marks a stage busy until dropped.
pub struct Busy<'a> {
    monitor: &'a Monitor,
    stage: Stage,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Ok(mut busy) = self.monitor.busy.lock() {
            busy[self.stage as usize] = None;
        }
    }
}

/// The nearest-rank `p`-percentile of `values` (None when empty).
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    (n > 0).then(|| v[((p * n as f64).ceil() as usize).clamp(1, n) - 1])
}

impl Monitor {
    pub fn new(
        model_name: &str,
        model_sha256: &str,
        calibration_sha256: &str,
        threshold: f64,
        source: &str,
    ) -> Self {
        Self {
            model_name: model_name.to_owned(),
            model_sha256: model_sha256.to_owned(),
            calibration_sha256: calibration_sha256.to_owned(),
            calibration_threshold: threshold,
            source: source.to_owned(),
            started: Instant::now(),
            live: LiveFrame::default(),
            state: Mutex::new(Snapshot {
                camera_up: true,
                ..Snapshot::default()
            }),
            busy: Mutex::new([None, None]),
        }
    }

    fn with(&self, f: impl FnOnce(&mut Snapshot)) {
        if let Ok(mut s) = self.state.lock() {
            f(&mut s);
        }
    }

    /// A copy of the counters (taken by readers, never by the pipeline).
    pub fn snapshot(&self) -> Snapshot {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// One answer written.
    pub fn record(&self, answer: &Answer) {
        self.with(|s| {
            match answer.verdict {
                Verdict::Ok => s.ok += 1,
                Verdict::Ng => s.ng += 1,
                Verdict::Error => s.errors += 1,
            }
            if let Some(tag) = &answer.model {
                s.per_model.entry(tag.name.clone()).or_default()[answer.verdict as usize] += 1;
            }
            if let Some(e) = &answer.error {
                *s.error_kinds.entry(e.kind.as_str()).or_default() += 1;
            }
            // Healthy means the last part could be judged. A malformed trigger or an overload
            // says nothing about camera, frames or engine, so it leaves the state as it was;
            // every other ERROR (no frame, an undecodable one, a failed inference, a region
            // with no cell) is a part that could not be judged.
            s.last_failed = match &answer.error {
                None => None,
                Some(e) if e.kind.is_about_the_trigger() => s.last_failed.take(),
                Some(e) => Some(e.reason.clone()),
            };
            if answer.verdict != Verdict::Error {
                let l = &answer.latency_ms;
                for (h, v) in s.latency.iter_mut().zip([
                    l.trigger_to_frame,
                    l.preprocess,
                    l.inference,
                    l.maps,
                    l.total,
                ]) {
                    h.observe(v);
                }
                if s.recent_ms.len() == 1000 {
                    s.recent_ms.pop_front();
                }
                s.recent_ms.push_back(l.total);
            }
        });
    }

    /// Takes back the counts of an answer that [`Monitor::record`] counted but that could not
    /// be delivered (its latency samples stay: the part was judged).
    pub fn retract(&self, answer: &Answer) {
        self.with(|s| {
            let count = match answer.verdict {
                Verdict::Ok => &mut s.ok,
                Verdict::Ng => &mut s.ng,
                Verdict::Error => &mut s.errors,
            };
            *count = count.saturating_sub(1);
            if let Some(n) = answer
                .model
                .as_ref()
                .and_then(|tag| s.per_model.get_mut(&tag.name))
            {
                n[answer.verdict as usize] = n[answer.verdict as usize].saturating_sub(1);
            }
            if let Some(n) = answer
                .error
                .as_ref()
                .and_then(|e| s.error_kinds.get_mut(e.kind.as_str()))
            {
                *n = n.saturating_sub(1);
            }
        });
    }

    /// Keeps an NG part for the status page (the oldest of [`KEPT_NG`] goes).
    pub fn keep_ng(&self, part: NgPart) {
        self.with(|s| {
            if s.last_ng.len() == KEPT_NG {
                s.last_ng.pop_front();
            }
            s.last_ng.push_back(part);
        });
    }

    /// The heatmap folder's counts after a part.
    pub fn heatmaps(&self, written: u64, removed: u64, bytes: u64) {
        self.with(|s| {
            s.heatmaps_written = written;
            s.heatmaps_removed = removed;
            s.heatmap_bytes = bytes;
        });
    }

    pub fn frame_dropped(&self) {
        self.with(|s| s.dropped_frames += 1);
    }

    pub fn camera_lost(&self) {
        self.with(|s| s.camera_up = false);
    }

    pub fn camera_back(&self) {
        self.with(|s| {
            s.camera_up = true;
            s.reconnects += 1;
        });
    }

    /// Marks `stage` busy (a grab, an inference) until the guard is dropped.
    pub fn busy(&self, stage: Stage) -> Busy<'_> {
        if let Ok(mut busy) = self.busy.lock() {
            busy[stage as usize] = Some(Instant::now());
        }
        Busy {
            monitor: self,
            stage,
        }
    }

    /// True when a grab or an inference has been running longer than `limit`: the pipeline is
    /// stuck (an idle pipeline, waiting for triggers, is not).
    pub fn stalled(&self, limit: Duration) -> bool {
        self.busy
            .lock()
            .map(|b| b.iter().flatten().any(|since| since.elapsed() > limit))
            .unwrap_or(true)
    }

    /// `None` when healthy, else why not (for `/healthz`).
    pub fn unhealthy(&self, stall_limit: Duration) -> Option<String> {
        if self.stalled(stall_limit) {
            return Some("the pipeline is stuck in a grab or an inference".into());
        }
        let s = self.snapshot();
        if !s.camera_up {
            return Some("camera unavailable; reconnecting".into());
        }
        s.last_failed
    }
}

#[cfg(test)]
mod tests;
