//! The capture thread: owns the source, turns each trigger (or, free-running, each frame) into
//! one job, and reconnects a lost camera with a doubling backoff.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError, select};

use super::PipelineOptions;
use crate::line::monitor::{Monitor, Stage};
use crate::line::protocol::{ErrorKind, Trigger, TriggerId};
use crate::line::source::{Frame, FrameSource, SourceError};
use crate::ms;

/// Why a trigger has no frame to judge (its answer is ERROR with this text).
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The trigger line itself was malformed.
    #[error("{0}")]
    InvalidTrigger(String),
    /// The camera is down and the next reconnection attempt is not due yet.
    #[error("camera unavailable; reconnecting")]
    Reconnecting,
    /// The trigger waited too long for the camera (a backlog): the part it was sent for has
    /// likely moved on, so no frame is taken rather than judging a later part under its id.
    #[error(
        "overloaded: trigger waited {waited_ms:.0} ms for the camera (limit {limit_ms} ms, --max-trigger-age-ms)"
    )]
    Overloaded { waited_ms: f64, limit_ms: u128 },
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl FrameError {
    /// The answer's `error_kind`.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FrameError::InvalidTrigger(_) => ErrorKind::Trigger,
            FrameError::Reconnecting => ErrorKind::CameraUnavailable,
            FrameError::Overloaded { .. } => ErrorKind::Overloaded,
            FrameError::Source(e) => match e {
                SourceError::Disconnected(_) => ErrorKind::CameraUnavailable,
                SourceError::BadFrame(_) => ErrorKind::BadFrame,
                SourceError::Timeout(_) => ErrorKind::FrameTimeout,
                SourceError::Exhausted => ErrorKind::SourceExhausted,
            },
        }
    }
}

/// One unit of work for the inference thread.
pub(super) struct Job {
    pub trigger: Trigger,
    pub frame: Result<Frame, FrameError>,
}

/// The capture side: owns the source, reconnects with backoff.
pub(super) struct Capture {
    source: Box<dyn FrameSource>,
    options: PipelineOptions,
    down: Option<(Instant, Duration)>,
    /// When the pipeline started taking triggers: the age of a trigger that arrived while
    /// the model was still loading counts from here.
    started: Instant,
    monitor: Option<Arc<Monitor>>,
}

impl Capture {
    pub fn new(
        source: Box<dyn FrameSource>,
        options: PipelineOptions,
        monitor: Option<Arc<Monitor>>,
    ) -> Self {
        Self {
            source,
            options,
            down: None,
            started: Instant::now(),
            monitor,
        }
    }

    /// A frame for a trigger, or the reason there is none.
    fn frame(&mut self) -> Result<Frame, FrameError> {
        if let Some((next_try, _)) = self.down {
            if Instant::now() < next_try {
                return Err(FrameError::Reconnecting);
            }
            self.try_reconnect();
            if self.down.is_some() {
                return Err(FrameError::Reconnecting);
            }
        }
        let grabbed = {
            let _busy = self.monitor.as_ref().map(|m| m.busy(Stage::Capture));
            self.source.grab(self.options.frame_timeout)
        };
        match grabbed {
            Ok(f) => Ok(f),
            Err(SourceError::Disconnected(reason)) => {
                crate::log_line!(
                    "efficientad: {} lost: {reason}; reconnecting",
                    self.source.describe()
                );
                if let Some(m) = &self.monitor {
                    m.camera_lost();
                }
                self.down = Some((Instant::now() + self.options.backoff, self.options.backoff));
                Err(SourceError::Disconnected(reason).into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The frame for `trigger`: none for a malformed line or one that waited too long.
    fn frame_for(&mut self, trigger: &Trigger) -> Result<Frame, FrameError> {
        if let Some(reason) = &trigger.invalid {
            return Err(FrameError::InvalidTrigger(reason.clone()));
        }
        if let Some(limit) = self.options.max_trigger_age {
            let waited = trigger.received.max(self.started).elapsed();
            if waited > limit {
                return Err(FrameError::Overloaded {
                    waited_ms: ms(waited),
                    limit_ms: limit.as_millis(),
                });
            }
        }
        self.frame()
    }

    fn try_reconnect(&mut self) {
        let Some((_, delay)) = self.down else { return };
        match self.source.reconnect() {
            Ok(()) => {
                crate::log_line!("efficientad: {} reconnected", self.source.describe());
                self.down = None;
                if let Some(m) = &self.monitor {
                    m.camera_back();
                }
            }
            Err(e) => {
                let delay = (delay * 2).min(self.options.max_backoff);
                crate::log_line!("efficientad: reconnect failed ({e}); next try in {delay:?}");
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

/// Triggered mode: one job per trigger, in order; a full job queue blocks here (the trigger
/// reader upstream never blocks, so arrival times stay true).
pub(super) fn triggered(
    mut cap: Capture,
    triggers: Receiver<Trigger>,
    shutdown: Receiver<()>,
    gone: Receiver<()>,
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
                // Answers can no longer be delivered: nothing left to do.
                recv(gone) -> _ => return,
                default(idle) => {
                    cap.try_reconnect();
                    continue;
                }
            }
        };
        let frame = cap.frame_for(&trigger);
        if jobs.send(Job { trigger, frame }).is_err() {
            return;
        }
    }
}

/// Free-run mode: every frame is offered to inference; when it is busy the frame is dropped
/// and counted, so the line is always judged on a fresh frame.
pub(super) fn free_run(
    mut cap: Capture,
    shutdown: Receiver<()>,
    gone: Receiver<()>,
    jobs: Sender<Job>,
    dropped: Sender<()>,
) {
    let monitor = cap.monitor.clone();
    let mut seq = 0;
    loop {
        if shutdown.try_recv().is_ok() || gone.try_recv().is_ok() {
            return;
        }
        if let Some(wait) = cap.reconnect_due() {
            match shutdown.recv_timeout(wait) {
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => cap.try_reconnect(),
            }
            continue;
        }
        let frame = cap.frame();
        if matches!(frame, Err(FrameError::Source(SourceError::Exhausted))) {
            return;
        }
        seq += 1;
        // No trigger line: the frame's capture time stands for the arrival.
        let (received, received_at) = match &frame {
            Ok(f) => (f.captured, f.captured_at),
            Err(_) => (Instant::now(), SystemTime::now()),
        };
        let trigger = Trigger::at(seq, TriggerId::None, received, received_at);
        match jobs.try_send(Job { trigger, frame }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let _ = dropped.send(());
                if let Some(m) = &monitor {
                    m.frame_dropped();
                }
            }
            Err(TrySendError::Disconnected(_)) => return,
        }
    }
}
