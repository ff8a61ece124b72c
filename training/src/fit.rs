//! `efficientad-train fit`: train, export the bundle, calibrate it — with progress on stderr.

use std::path::Path;

use anyhow::Context;
use efficientad::bundle::Bundle;
use efficientad::calibration::{DEFAULT_FALSE_REJECT_RATE, ImageSet, Progress, calibrate_files};
use efficientad::engine::{Engine, EngineOptions, Provider};
use efficientad_training::export::export_bundle;
use efficientad_training::quality::{QualityCheck, log_quality};
use efficientad_training::train::{Event, FitConfig, stop_flag, train};
use indicatif::{ProgressBar, ProgressStyle};

fn bar(len: u64, template: &str) -> ProgressBar {
    ProgressBar::new(len).with_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    )
}

pub fn run(config: &FitConfig, resume: bool, calibration_out: &Path) -> anyhow::Result<()> {
    let stop = stop_flag();
    let loading = bar(0, "{msg} [{bar:30}] {pos}/{len} eta {eta}");
    let steps = bar(
        config.steps as u64,
        "train [{bar:30}] {pos}/{len} {msg} eta {eta}",
    );
    steps.set_position(0);
    let mut started_steps = false;
    // Without a terminal the bars are hidden: print a progress line every 30 s instead.
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_line = std::time::Instant::now();
    // Found before training, so that a dataset without a test split fails now.
    let quality = if config.eval_every > 0 {
        Some(
            QualityCheck::new(&config.dataset, &config.work).with_context(|| {
                format!(
                    "--eval-every needs the test split of {}",
                    config.dataset.display()
                )
            })?,
        )
    } else {
        None
    };
    let log = config.work.join("log.jsonl");
    let trained = train(config, resume, stop, &mut |event| match event {
        Event::Message(m) => loading.suspend(|| eprintln!("efficientad-train: {m}")),
        Event::Loading { done, total, what } => {
            loading.set_length(total as u64);
            loading.set_message(what.to_string());
            loading.set_position(done as u64);
        }
        Event::Step {
            step,
            losses,
            images_per_second,
            ..
        } => {
            if !started_steps {
                loading.finish_and_clear();
                started_steps = true;
            }
            steps.set_position(step as u64);
            let message = format!(
                "loss {:.4} (hard {:.4} pen {:.4} ae {:.4} stae {:.4}) {:.2} img/s",
                losses.total,
                losses.hard,
                losses.penalty,
                losses.ae,
                losses.stae,
                images_per_second
            );
            if plain && (last_line.elapsed().as_secs() >= 30 || step == 1) {
                last_line = std::time::Instant::now();
                eprintln!("efficientad-train: step {step}/{} {message}", config.steps);
            }
            steps.set_message(message);
        }
        Event::Quality { step, model, info } => {
            let Some(check) = &quality else { return };
            let total = check.images();
            let mut done = 0;
            let measured = check.check(model, info, step, &mut || {
                done += 1;
                steps.set_message(format!("quality check {done}/{total}"));
            });
            let line = match measured {
                Ok(q) => {
                    let logged = log_quality(&log, step, &q)
                        .err()
                        .map(|e| format!(" (not logged: {e})"))
                        .unwrap_or_default();
                    let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.4}"));
                    format!(
                        "step {step}: image AUROC {} pixel AUROC {} AU-PRO {} accuracy {:.4} on {} test images ({:.0} s){logged}",
                        f(q.image_auroc),
                        f(q.pixel_auroc),
                        f(q.au_pro),
                        q.accuracy,
                        q.test_images,
                        q.seconds
                    )
                }
                // A failed check must not cost the training run.
                Err(e) => format!("warning: quality check at step {step} failed: {e:#}"),
            };
            steps.suspend(|| eprintln!("efficientad-train: {line}"));
        }
    })?;
    steps.finish_and_clear();
    if trained.interrupted {
        eprintln!(
            "efficientad-train: interrupted at step {}; checkpoint saved in {}; continue with the same command and --resume",
            trained.state.step,
            config.work.join("checkpoint").display()
        );
        std::process::exit(130);
    }
    let mut info = trained.info;
    info.training["command"] = std::env::args().collect::<Vec<_>>().join(" ").into();
    let written = export_bundle(&trained.model, &info, &config.out)?;
    eprintln!(
        "efficientad-train: exported {} after {} steps ({:.0} s, last loss {:.4})",
        config.out.display(),
        trained.state.step,
        trained.state.wall_seconds,
        trained.state.last_losses.total
    );
    let bundle = Bundle::open(&config.out)?;
    let options = EngineOptions {
        provider: Provider::Cpu,
        ..EngineOptions::default()
    };
    let mut engine = Engine::new(&bundle, &options)?;
    let normal = ImageSet {
        label: format!(
            "{} ({})",
            config.dataset.display(),
            trained.validation_label
        ),
        files: trained.validation,
    };
    let progress = bar(
        normal.files.len() as u64,
        "calibrate [{bar:30}] {pos}/{len} eta {eta}",
    );
    let calibration = calibrate_files(
        &mut engine,
        &bundle,
        &normal,
        None,
        DEFAULT_FALSE_REJECT_RATE,
        &efficientad::region::Region::whole_image(),
        1,
        &mut |p| {
            progress.inc(1);
            if let Progress::Skipped(path, error) = p {
                progress.suspend(|| {
                    eprintln!("efficientad-train: skipping {}: {error}", path.display())
                });
            }
        },
    )?;
    progress.finish_and_clear();
    calibration
        .save(calibration_out)
        .with_context(|| format!("writing {}", calibration_out.display()))?;
    eprintln!(
        "efficientad-train: calibrated on {} validation images into {} (threshold {:.5}); model sha256 {}",
        calibration.validation.images,
        calibration_out.display(),
        calibration.threshold,
        written.model_sha256
    );
    Ok(())
}
