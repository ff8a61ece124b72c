//! `efficientad capture`: training images from the line's own camera, into the dataset layout
//! `fit` and `calibrate` read. Timed (`--every`) or one frame per trigger line on stdin,
//! answered in JSON lines like `run` (a PLC bridge can say "capture now").

use std::io::BufReader;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use crossbeam_channel::{RecvTimeoutError, unbounded};
use efficientad::line::capture::{Collector, Saved};
use efficientad::line::protocol::{FrameInfo, JsonLines, TriggerId, read_triggers};
use efficientad::line::source::{FrameSource, SourceError};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{Outcome, SourceArgs};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CaptureTrigger {
    /// One frame per stdin line (an empty line, a bare id or `{"id": …}`), one JSON answer each.
    Stdin,
}

#[derive(Args)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub camera: SourceArgs,
    /// Dataset folder to fill: train/good/ and validation/good/ inside (created; existing
    /// files are never replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Frames to take (default: until the source ends, stdin closes, or Ctrl-C/SIGTERM).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Milliseconds from one frame to the next (default: as fast as the source gives them).
    #[arg(long, value_name = "MS", conflicts_with = "trigger")]
    pub every: Option<u64>,
    /// stdin: one frame per trigger line instead of timed frames.
    #[arg(long, value_enum)]
    pub trigger: Option<CaptureTrigger>,
    /// Share of the frames that go to validation/good (the rest to train/good), drawn per
    /// frame with --seed.
    #[arg(long, value_name = "validation=F", default_value = "validation=0.15", value_parser = parse_split)]
    pub split: f64,
    /// Seed of the split.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

fn parse_split(text: &str) -> Result<f64, String> {
    let share = text
        .strip_prefix("validation=")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("`{text}` is not validation=F, e.g. validation=0.15"))?;
    if (0.0..=1.0).contains(&share) {
        Ok(share)
    } else {
        Err(format!("validation={share} is not a share between 0 and 1"))
    }
}

/// One line on stdout per trigger (`--trigger stdin`).
#[derive(Serialize)]
struct CaptureAnswer {
    id: TriggerId,
    seq: u64,
    /// `SAVED` or `ERROR`.
    status: &'static str,
    path: Option<String>,
    split: Option<&'static str>,
    frame: Option<FrameInfo>,
    error: Option<String>,
}

pub fn run(args: CaptureArgs) -> anyhow::Result<Outcome> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    let spec = args.camera.spec()?;
    let mut source = spec.open_with(&args.camera.options(false))?;
    let mut collector = Collector::new(&args.out, args.split, args.seed)?;
    efficientad::log_line!(
        "efficientad: capturing from {} into {}",
        source.describe(),
        args.out.display()
    );
    let timeout = Duration::from_millis(args.camera.frame_timeout_ms);
    // Frames that could not be taken or written.
    let errors = match args.trigger {
        Some(CaptureTrigger::Stdin) => {
            triggered(&args, source.as_mut(), &mut collector, &stop, timeout)
        }
        None => timed(&args, source.as_mut(), &mut collector, &stop, timeout),
    };
    efficientad::log_line!(
        "efficientad: captured {} frames into {}: {} in train/good, {} in validation/good{}",
        collector.train + collector.validation,
        args.out.display(),
        collector.train,
        collector.validation,
        if errors > 0 {
            format!(", {errors} failed")
        } else {
            String::new()
        }
    );
    Ok(match (args.trigger, errors) {
        // As with `run`: triggered answers carry their own errors.
        (Some(_), _) | (None, 0) => Outcome::Success,
        (None, _) => Outcome::SomeErrors,
    })
}

/// One grab and save; a lost camera is reconnected before the next one.
fn take(
    source: &mut dyn FrameSource,
    collector: &mut Collector,
    timeout: Duration,
) -> Result<(Saved, FrameInfo), SourceOrWrite> {
    let frame = source.grab(timeout).map_err(|e| {
        if matches!(e, SourceError::Disconnected(_)) {
            let _ = source.reconnect();
        }
        SourceOrWrite::Source(e)
    })?;
    let info = FrameInfo {
        index: frame.index,
        source: frame.origin.clone(),
        width: frame.image.width(),
        height: frame.image.height(),
    };
    let saved = collector.save(&frame).map_err(SourceOrWrite::Write)?;
    Ok((saved, info))
}

enum SourceOrWrite {
    Source(SourceError),
    Write(efficientad::offline::report::PngError),
}

impl std::fmt::Display for SourceOrWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceOrWrite::Source(e) => write!(f, "{e}"),
            SourceOrWrite::Write(e) => write!(f, "{e}"),
        }
    }
}

fn timed(
    args: &CaptureArgs,
    source: &mut dyn FrameSource,
    collector: &mut Collector,
    stop: &AtomicBool,
    timeout: Duration,
) -> u64 {
    let bar = match args.count {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template("capture [{bar:30}] {pos}/{len} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner(),
    };
    let mut errors = 0;
    let every = Duration::from_millis(args.every.unwrap_or(0));
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst)
        && args
            .count
            .is_none_or(|n| collector.train + collector.validation < n)
    {
        // Wait for the next slot in short steps, so a stop is taken at once.
        while Instant::now() < next && !stop.load(Ordering::SeqCst) {
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(50)));
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        next = Instant::now() + every;
        match take(source, collector, timeout) {
            Ok((saved, _)) => {
                bar.inc(1);
                bar.set_message(saved.path.display().to_string());
            }
            Err(SourceOrWrite::Source(SourceError::Exhausted)) => break,
            Err(e) => {
                errors += 1;
                bar.suspend(|| efficientad::log_line!("efficientad: frame not captured: {e}"));
            }
        }
    }
    bar.finish_and_clear();
    errors
}

fn triggered(
    args: &CaptureArgs,
    source: &mut dyn FrameSource,
    collector: &mut Collector,
    stop: &AtomicBool,
    timeout: Duration,
) -> u64 {
    let (tx, rx) = unbounded();
    std::thread::spawn(move || {
        read_triggers(BufReader::new(std::io::stdin()), |t| tx.send(t).is_ok());
    });
    efficientad::log_line!("efficientad: ready; one frame per line on stdin");
    let stdout = std::io::stdout();
    let mut lines = JsonLines::new(stdout.lock());
    let mut errors = 0;
    let mut taken = 0u64;
    while !stop.load(Ordering::SeqCst) && args.count.is_none_or(|n| taken < n) {
        let trigger = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(t) => t,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        taken += 1;
        let mut answer = CaptureAnswer {
            id: trigger.id,
            seq: trigger.seq,
            status: "ERROR",
            path: None,
            split: None,
            frame: None,
            error: None,
        };
        if let Some(e) = trigger.invalid {
            answer.error = Some(e);
        } else {
            match take(source, collector, timeout) {
                Ok((saved, info)) => {
                    answer.status = "SAVED";
                    answer.path = Some(saved.path.display().to_string());
                    answer.split = Some(saved.split);
                    answer.frame = Some(info);
                }
                Err(e) => answer.error = Some(e.to_string()),
            }
        }
        if answer.error.is_some() {
            errors += 1;
        }
        if !lines.write(&answer) {
            efficientad::log_line!("efficientad: stopping: stdout is gone");
            break;
        }
    }
    errors
}
