//! `efficientad demo`: the shipped model on the shipped sample parts, through the same `run`
//! pipeline a line uses (a `dir:` source and generated triggers), with heatmaps and a summary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use crossbeam_channel::bounded;
use efficientad::judge::calibration::Calibration;
use efficientad::judge::inspect::{HeatmapSink, Verdict};
use efficientad::line::pipeline::{LineModel, Mode, Pipeline, PipelineOptions};
use efficientad::line::protocol::Trigger;
use efficientad::line::source::dir::DirSource;
use efficientad::model::bundle::Bundle;
use efficientad::model::engine::{Engine, EngineOptions, Provider};

use super::Outcome;

/// The shipped default, relative to the repository.
pub const DEFAULT_MODEL: &str = "onnx/mtd-s";
pub const DEFAULT_CALIBRATION: &str = "calibration/mtd-s.json";
pub const SAMPLES: &str = "onnx/mtd-s/samples";

/// The repository the binary was built from (the demo's files live there), or the current
/// folder when it holds them.
fn repo() -> PathBuf {
    match std::env::current_dir() {
        Ok(cwd) if cwd.join(DEFAULT_MODEL).is_dir() => cwd,
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    }
}

/// NG is expected for every sample outside a `good` folder.
fn expected(path: &Path) -> Verdict {
    let good = path
        .parent()
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "good");
    if good { Verdict::Ok } else { Verdict::Ng }
}

pub fn run(provider: Provider) -> anyhow::Result<Outcome> {
    let root = repo();
    let model_dir = root.join(DEFAULT_MODEL);
    let bundle = Bundle::open(&model_dir).with_context(|| {
        format!(
            "the demo needs the shipped model in {} (run it from the repository)",
            model_dir.display()
        )
    })?;
    let calibration = Calibration::load_for(&root.join(DEFAULT_CALIBRATION), &bundle)?;
    let samples = root.join(SAMPLES);
    let source = DirSource::open(&samples, 0.0, false)?;
    let files: Vec<PathBuf> = source.files().to_vec();
    let heatmap_dir = std::env::temp_dir().join("efficientad-demo-heatmaps");
    let _ = std::fs::remove_dir_all(&heatmap_dir);
    let heatmaps = HeatmapSink::new(&heatmap_dir, true)?;
    let options = EngineOptions {
        provider,
        ..EngineOptions::default()
    };
    let mut engine = Engine::new(&bundle, &options)?;
    let size = engine.input_size();
    engine.run(&vec![0u8; size * size * 3], 1)?;
    let provider_used = engine.provider();
    efficientad::log_line!(
        "efficientad demo: model {} ({}), {} sample parts from {}, provider {provider_used}",
        bundle.info.name,
        bundle.dir.display(),
        files.len(),
        samples.display()
    );

    // One generated trigger per sample, as a PLC sends them: the next part comes when the
    // previous one has been answered, so the latency is a part's, not a queue's.
    let trigger = |i: usize| Trigger::new(i as u64 + 1, format!("demo-{}", i + 1));
    let (tx, rx) = bounded(1);
    tx.send(trigger(0)).context("starting the demo")?;
    let mut tx = Some(tx);
    let mut sent = 1;
    let (_shutdown_tx, shutdown_rx) = bounded(1);
    let pipeline = Pipeline {
        source: Box::new(source),
        models: vec![LineModel {
            name: calibration.model_name.clone(),
            engine,
            calibration,
            tag: None,
        }],
        heatmaps: Some(heatmaps),
        monitor: None,
        options: PipelineOptions {
            frame_timeout: Duration::from_secs(5),
            ..PipelineOptions::default()
        },
    };
    let mut correct = 0;
    let mut wrong = Vec::new();
    let stdout = std::io::stdout();
    let summary = pipeline.run(
        Mode::Triggered(rx),
        shutdown_rx,
        &mut stdout.lock(),
        &mut |answer| {
            if sent < files.len() {
                if let Some(tx) = &tx {
                    let _ = tx.send(trigger(sent));
                }
                sent += 1;
            } else {
                tx = None; // all sent: closing the channel ends the run
            }
            let Some(frame) = &answer.frame else {
                wrong.push(format!(
                    "{}: {}",
                    answer.seq,
                    answer.error.as_ref().map_or("", |e| e.reason.as_str())
                ));
                return;
            };
            let want = expected(Path::new(&frame.source));
            if answer.verdict == want {
                correct += 1;
            } else {
                wrong.push(format!(
                    "{} judged {:?}, expected {want:?}",
                    frame.source, answer.verdict
                ));
            }
        },
    )?;
    // The samples were drawn at random from the test split (README: Demo samples), not
    // chosen among parts the model gets right: a wrong verdict is the model's, shown as such.
    efficientad::log_line!(
        "efficientad demo: {correct}/{} verdicts agree with the sample's folder (good = OK, defect = NG); latency p50 {:.1} ms, max {:.1} ms on {provider_used}; heatmaps in {}",
        files.len(),
        summary.percentile(0.5),
        summary.max_ms,
        heatmap_dir.display()
    );
    for w in &wrong {
        efficientad::log_line!("efficientad demo: {w}");
    }
    Ok(Outcome::Success)
}
