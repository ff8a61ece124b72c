//! `efficientad bench`: per-stage timings of the offline pipeline and the ratio of its
//! end-to-end time to the bare session run on the same, already prepared inputs — both
//! measured in this process, alternating, so the ratio is what the pipeline adds.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;
use clap::Args;
use efficientad::batch::{Outcome as ImageOutcome, RunOptions, run_files};
use efficientad::bundle::Bundle;
use efficientad::calibration::{Calibration, MapPair, ValidationSet, compute};
use efficientad::engine::{Engine, RawMaps};
use efficientad::images::list_images;
use efficientad::inspect::judge;
use efficientad::ms;
use efficientad::preprocess::{Preprocessor, decode_file};
use efficientad::region::Region;
use serde::Serialize;

use super::{EngineArgs, Outcome};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Folder (or files) of images to run.
    #[arg(long, value_name = "DIR", required = true, num_args = 1..)]
    pub images: Vec<PathBuf>,
    /// Use at most this many images.
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub limit: usize,
    /// Timed passes of each kind (after one warm-up batch).
    #[arg(long, value_name = "K", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report {
    model: String,
    provider: String,
    batch: usize,
    images: usize,
    runs: u32,
    decode_ms: f64,
    resize_ms: f64,
    device_run_ms: f64,
    maps_ms: f64,
    end_to_end_ms: f64,
    bare_session_ms: f64,
    ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<Outcome> {
    let bundle = Bundle::open(&args.engine.model)?;
    let mut engine = Engine::new(&bundle, &args.engine.engine_options())?;
    let batch = usize::from(args.engine.batch);
    let mut files = list_images(&args.images)?;
    files.truncate(args.limit);
    if files.is_empty() {
        bail!("no images to run");
    }
    // Prepared inputs for the bare session runs.
    let size = engine.input_size();
    let mut pre = Preprocessor::new(size);
    let mut inputs = Vec::with_capacity(files.len() * size * size * 3);
    for f in &files {
        inputs.extend(pre.prepare_vec(decode_file(f)?)?);
    }
    let image_bytes = size * size * 3;
    let batches: Vec<(&[u8], usize)> = inputs
        .chunks(batch * image_bytes)
        .map(|c| (c, c.len() / image_bytes))
        .collect();
    // Warm-up, and maps for a normalization to time the maps stage with.
    let mut raw = RawMaps::default();
    let mut pairs = Vec::new();
    for &(b, n) in &batches {
        engine.run_into(b, n, &mut raw)?;
        pairs.extend((0..n).map(|i| {
            let (st, ae) = raw.image(i);
            MapPair {
                st: st.to_vec(),
                ae: ae.to_vec(),
                width: 256,
                height: 256,
            }
        }));
    }
    let computed = compute(&pairs, &[], 0.01, &Region::whole_image())?;
    let validation = ValidationSet {
        folder: "bench images".into(),
        images: pairs.len(),
        failed: 0,
        anomalous_folder: None,
        anomalous_images: 0,
    };
    let calibration = Calibration::assemble(&bundle, engine.provider(), validation, computed)?;

    let n = files.len() as f64;
    let (mut bare, mut e2e) = (Vec::new(), Vec::new());
    let (mut decode, mut resize, mut device, mut maps_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut combined = Vec::new();
    for _ in 0..args.runs {
        let t0 = Instant::now();
        for &(b, k) in &batches {
            engine.run_into(b, k, &mut raw)?;
        }
        bare.push(ms(t0.elapsed()) / n);

        let (mut d, mut r, mut dev, mut m) = (0.0, 0.0, 0.0, 0.0);
        let mut failures = 0;
        let t0 = Instant::now();
        run_files(
            &mut engine,
            &files,
            RunOptions {
                batch,
                keep_images: false,
            },
            |outcome| match outcome {
                ImageOutcome::Maps(im) => {
                    let judged = judge(im.view(), im.part(), &calibration, &mut combined, None);
                    d += im.timings.decode_ms;
                    r += im.timings.resize_ms;
                    // The batch's run time is shared by its images.
                    dev += im.timings.inference_ms / im.batch_size as f64;
                    m += judged.maps_ms;
                }
                ImageOutcome::Error { .. } => failures += 1,
            },
        );
        e2e.push(ms(t0.elapsed()) / n);
        if failures > 0 {
            bail!("{failures} images failed during the benchmark");
        }
        decode.push(d / n);
        resize.push(r / n);
        device.push(dev / n);
        maps_t.push(m / n);
    }
    let report = Report {
        model: bundle.dir.display().to_string(),
        provider: engine.provider().to_string(),
        batch,
        images: files.len(),
        runs: args.runs,
        decode_ms: median(decode),
        resize_ms: median(resize),
        device_run_ms: median(device),
        maps_ms: median(maps_t),
        end_to_end_ms: median(e2e),
        bare_session_ms: median(bare),
        ratio: 0.0,
    };
    let report = Report {
        ratio: report.end_to_end_ms / report.bare_session_ms,
        ..report
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "model {} on {}, batch {}, {} images x {} runs (medians, ms per image)",
            report.model, report.provider, report.batch, report.images, report.runs
        );
        println!("  decode        {:9.3}", report.decode_ms);
        println!("  resize        {:9.3}", report.resize_ms);
        println!("  device run    {:9.3}", report.device_run_ms);
        println!("  maps          {:9.3}", report.maps_ms);
        println!("  end-to-end    {:9.3}", report.end_to_end_ms);
        println!("  bare session  {:9.3}", report.bare_session_ms);
        println!("  ratio end-to-end / bare session: {:.4}", report.ratio);
    }
    Ok(Outcome::Success)
}
