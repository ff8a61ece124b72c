//! `efficientad soak`: the pipeline under a long stream of triggers, sent faster than the
//! model answers, checking that every trigger gets exactly one answer in order and that
//! resident memory stays flat after warm-up.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use crossbeam_channel::bounded;
use efficientad::bundle::Bundle;
use efficientad::calibration::Calibration;
use efficientad::engine::Engine;
use efficientad::pipeline::{Mode, Pipeline, PipelineOptions};
use efficientad::protocol::{Trigger, TriggerId};
use efficientad::source::SourceSpec;

use super::{EngineArgs, Outcome};

#[derive(Args)]
pub struct SoakArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    #[arg(long, value_name = "FILE")]
    pub calibration: PathBuf,
    /// Frame source, e.g. dir:<folder> (looped).
    #[arg(long, value_name = "SPEC")]
    pub source: String,
    /// Number of triggers.
    #[arg(long, default_value_t = 10_000)]
    pub triggers: u64,
    /// Allowed growth of resident memory from warm-up (10% of the triggers) to the end, MiB.
    #[arg(long, default_value_t = 16.0)]
    pub max_growth_mib: f64,
}

/// Resident set size of this process in MiB (Linux), NaN elsewhere.
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(f64::NAN, |pages| pages * 4096.0 / (1024.0 * 1024.0))
}

pub fn run(args: SoakArgs) -> anyhow::Result<Outcome> {
    let bundle = Bundle::open(&args.engine.model)?;
    let calibration = Calibration::load_for(&args.calibration, &bundle)?;
    let source = SourceSpec::parse(&args.source, 0.0, true)?.open()?;
    let engine = Engine::new(&bundle, &args.engine.engine_options())?;
    let n = args.triggers;
    let (tx, rx) = bounded(64);
    // The feeder never waits for answers: triggers queue up faster than inference.
    let feeder = std::thread::spawn(move || {
        for seq in 1..=n {
            if tx.send(Trigger::new(seq, format!("soak-{seq}"))).is_err() {
                break;
            }
        }
    });
    let (_stop_tx, stop_rx) = bounded(1);
    let pipeline = Pipeline {
        source,
        engine,
        calibration,
        heatmaps: None,
        options: PipelineOptions {
            frame_timeout: Duration::from_secs(5),
            // The soak measures the queue itself: a trigger stamped when the feeder made it
            // waits behind the whole backlog, which here is the point, not an overload.
            max_trigger_age: None,
            ..PipelineOptions::default()
        },
    };
    let warm_at = (n / 10).max(1);
    let (mut expected, mut out_of_order, mut errors) = (1u64, 0u64, 0u64);
    let mut rss_warm = f64::NAN;
    let mut sink = std::io::sink();
    let started = Instant::now();
    let summary = pipeline.run(Mode::Triggered(rx), stop_rx, &mut sink, &mut |a| {
        if a.seq != expected || a.id != TriggerId::from(format!("soak-{}", a.seq)) {
            out_of_order += 1;
        }
        expected = a.seq + 1;
        if a.error.is_some() {
            errors += 1;
        }
        if a.seq == warm_at {
            rss_warm = rss_mib();
        }
    })?;
    let _ = feeder.join();
    let rss_end = rss_mib();
    let growth = rss_end - rss_warm;
    let report = serde_json::json!({
        "triggers": n, "answers": summary.answers, "out_of_order_or_duplicated": out_of_order,
        "errors": errors, "rss_after_warmup_mib": rss_warm, "rss_end_mib": rss_end, "rss_growth_mib": growth,
        "seconds": started.elapsed().as_secs_f64(), "p50_ms": summary.percentile(0.5), "p99_ms": summary.percentile(0.99),
    });
    println!("{report}");
    if summary.answers != n || out_of_order > 0 {
        bail!(
            "{n} triggers gave {} answers ({out_of_order} out of order or duplicated)",
            summary.answers
        );
    }
    if growth > args.max_growth_mib {
        bail!(
            "resident memory grew by {growth:.1} MiB after warm-up (limit {} MiB)",
            args.max_growth_mib
        );
    }
    Ok(if errors > 0 {
        Outcome::SomeErrors
    } else {
        Outcome::Success
    })
}
