//! `efficientad bench`: per-stage timings of the offline pipeline and the ratio of its
//! end-to-end time to the bare session run on the same, already prepared inputs — both
//! measured in this process, alternating, so the ratio is what the pipeline adds. With
//! `--compare` a second bundle is timed the same way in the same run (fp32 against int8).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::bail;
use clap::Args;
use efficientad::judge::calibration::{Calibration, MapPair, ValidationSet, compute, precision};
use efficientad::judge::inspect::judge;
use efficientad::judge::region::Region;
use efficientad::model::bundle::Bundle;
use efficientad::model::engine::{Engine, RawMaps};
use efficientad::model::preprocess::{Preprocessor, decode_file};
use efficientad::ms;
use efficientad::offline::batch::{Outcome as ImageOutcome, RunOptions, run_files};
use efficientad::offline::images::list_images;
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
    /// A second bundle (e.g. the int8 one) timed in the same run, passes alternating; prints
    /// both and the speed-up of this one over --model.
    #[arg(long, value_name = "DIR")]
    pub compare: Option<PathBuf>,
}

/// How many times faster the compared bundle is (baseline ms / compared ms).
#[derive(Serialize)]
struct Speedup {
    end_to_end: f64,
    device_run: f64,
}

#[derive(Clone, Serialize)]
struct Report {
    model: String,
    precision: String,
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

/// One bundle under test: its engine, prepared batches and a calibration to judge with.
struct Subject {
    bundle: Bundle,
    engine: Engine,
    calibration: Calibration,
    /// Timings per pass: bare, end-to-end, decode, resize, device, maps (ms per image).
    passes: [Vec<f64>; 6],
}

impl Subject {
    fn new(model: &Path, args: &BenchArgs, batches: &[(&[u8], usize)]) -> anyhow::Result<Self> {
        let bundle = Bundle::open(model)?;
        let mut engine = Engine::new(&bundle, &args.engine.engine_options())?;
        if engine.input_size() != SIZE {
            bail!(
                "{} takes {}x{} inputs; bench compares models of input size {SIZE}",
                model.display(),
                engine.input_size(),
                engine.input_size()
            );
        }
        // Warm-up, and maps for a normalization to time the maps stage with.
        let mut raw = RawMaps::default();
        let mut pairs = Vec::new();
        for &(b, n) in batches {
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
        Ok(Self {
            bundle,
            engine,
            calibration,
            passes: Default::default(),
        })
    }

    /// One bare pass over the prepared batches, then one pass of the whole pipeline.
    fn pass(
        &mut self,
        files: &[PathBuf],
        batches: &[(&[u8], usize)],
        batch: usize,
    ) -> anyhow::Result<()> {
        let n = files.len() as f64;
        let mut raw = RawMaps::default();
        let t0 = Instant::now();
        for &(b, k) in batches {
            self.engine.run_into(b, k, &mut raw)?;
        }
        let bare = ms(t0.elapsed()) / n;

        let (mut d, mut r, mut dev, mut m) = (0.0, 0.0, 0.0, 0.0);
        let mut failures = 0;
        let mut combined = Vec::new();
        let calibration = &self.calibration;
        let t0 = Instant::now();
        run_files(
            &mut self.engine,
            files,
            RunOptions {
                batch,
                keep_images: false,
            },
            |outcome| match outcome {
                ImageOutcome::Maps(im) => {
                    let judged = judge(im.view(), im.part(), calibration, &mut combined, None);
                    d += im.timings.decode_ms;
                    r += im.timings.resize_ms;
                    // The batch's run time is shared by its images.
                    dev += im.timings.inference_ms / im.batch_size as f64;
                    m += judged.maps_ms;
                }
                ImageOutcome::Error { .. } => failures += 1,
            },
        );
        let e2e = ms(t0.elapsed()) / n;
        if failures > 0 {
            bail!("{failures} images failed during the benchmark");
        }
        for (series, v) in self
            .passes
            .iter_mut()
            .zip([bare, e2e, d / n, r / n, dev / n, m / n])
        {
            series.push(v);
        }
        Ok(())
    }

    fn report(&self, args: &BenchArgs, images: usize) -> Report {
        let [bare, e2e, decode, resize, device, maps] = self.passes.clone().map(median);
        Report {
            model: self.bundle.dir.display().to_string(),
            precision: precision(self.engine.provider(), &self.bundle),
            provider: self.engine.provider().to_string(),
            batch: usize::from(args.engine.batch),
            images,
            runs: args.runs,
            decode_ms: decode,
            resize_ms: resize,
            device_run_ms: device,
            maps_ms: maps,
            end_to_end_ms: e2e,
            bare_session_ms: bare,
            ratio: e2e / bare,
        }
    }
}

/// Side of the inputs prepared for the bare runs (every deployment graph takes 256²).
const SIZE: usize = 256;

fn print_table(reports: &[Report]) {
    let first = &reports[0];
    println!(
        "batch {}, {} images x {} runs (medians, ms per image)",
        first.batch, first.images, first.runs
    );
    let row = |label: &str, f: &dyn Fn(&Report) -> String| {
        let cells: Vec<String> = reports.iter().map(|r| format!("{:>16}", f(r))).collect();
        println!("  {label:<14}{}", cells.join(""));
    };
    row("model", &|r| {
        Path::new(&r.model)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| r.model.clone())
    });
    row("precision", &|r| format!("{} {}", r.precision, r.provider));
    row("decode", &|r| format!("{:.3}", r.decode_ms));
    row("resize", &|r| format!("{:.3}", r.resize_ms));
    row("device run", &|r| format!("{:.3}", r.device_run_ms));
    row("maps", &|r| format!("{:.3}", r.maps_ms));
    row("end-to-end", &|r| format!("{:.3}", r.end_to_end_ms));
    row("bare session", &|r| format!("{:.3}", r.bare_session_ms));
    for r in reports {
        println!(
            "  ratio end-to-end / bare session: {:.4} ({})",
            r.ratio, r.model
        );
    }
}

pub fn run(args: BenchArgs) -> anyhow::Result<Outcome> {
    let batch = usize::from(args.engine.batch);
    let mut files = list_images(&args.images)?;
    files.truncate(args.limit);
    if files.is_empty() {
        bail!("no images to run");
    }
    // Prepared inputs for the bare session runs.
    let mut pre = Preprocessor::new(SIZE);
    let mut inputs = Vec::with_capacity(files.len() * SIZE * SIZE * 3);
    for f in &files {
        inputs.extend(pre.prepare_vec(decode_file(f)?)?);
    }
    let image_bytes = SIZE * SIZE * 3;
    let batches: Vec<(&[u8], usize)> = inputs
        .chunks(batch * image_bytes)
        .map(|c| (c, c.len() / image_bytes))
        .collect();
    let mut subjects = vec![Subject::new(&args.engine.model, &args, &batches)?];
    if let Some(other) = &args.compare {
        subjects.push(Subject::new(other, &args, &batches)?);
    }
    // Alternating passes: both models see the same machine state, so their ratio holds even
    // when the machine's speed drifts during the run.
    for _ in 0..args.runs {
        for s in &mut subjects {
            s.pass(&files, &batches, batch)?;
        }
    }
    let reports: Vec<Report> = subjects
        .iter()
        .map(|s| s.report(&args, files.len()))
        .collect();
    let speedup = (reports.len() == 2).then(|| Speedup {
        end_to_end: reports[0].end_to_end_ms / reports[1].end_to_end_ms,
        device_run: reports[0].device_run_ms / reports[1].device_run_ms,
    });
    if args.json {
        match &speedup {
            None => println!("{}", serde_json::to_string(&reports[0])?),
            Some(speedup) => println!(
                "{}",
                serde_json::json!({ "baseline": reports[0], "compared": reports[1], "speedup": speedup })
            ),
        }
    } else {
        print_table(&reports);
        if let Some(s) = &speedup {
            println!(
                "  speed-up of {} over {}: end-to-end {:.2}x, device run {:.2}x",
                reports[1].model, reports[0].model, s.end_to_end, s.device_run
            );
        }
    }
    Ok(Outcome::Success)
}
