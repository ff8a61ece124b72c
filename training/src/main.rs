//! `efficientad-train`: teacher import and distillation, training, export of deployment
//! bundles, and the training benchmark. Thin: parse, validate, call the library, map errors to exit codes.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use burn::tensor::Device;
use clap::{Parser, Subcommand};
use efficientad_training::backend::Backend;
use efficientad_training::bench::BenchConfig;
use efficientad_training::checkpoint::{self, CheckpointInfo, Kind, TeacherProvenance};
use efficientad_training::data::Rng;
use efficientad_training::distill::{DistillConfig, Event as DistillEvent, distill};
use efficientad_training::export::export_bundle;
use efficientad_training::model::{
    AutoencoderConfig, EfficientAd, PdnConfig, TEACHER_CHANNELS, Variant,
};
use efficientad_training::teacher::import_teacher;
use efficientad_training::train::FitConfig;

mod bench_cli;

/// Training frees and reallocates tensors of tens of MiB at every operation. glibc's allocator
/// returns such blocks to the kernel at once (munmap), so each step paid for page faults,
/// zeroing and cross-core TLB shootdowns; mimalloc keeps the pages for the next tensor.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (mimalloc.h; the Rust bindings name no
/// constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Keeps freed pages mapped for the next tensor instead of returning them to the kernel after
/// mimalloc's default 10 ms: a training step frees and reallocates the same sizes every second,
/// and each returned page came back as a page fault plus zeroing (5% of a `fit` step). The
/// peak memory stays that of one step (measured 741 MiB against 670 MiB for the `bench` steps).
fn keep_freed_pages() {
    // SAFETY: sets one integer option of the allocator; called first thing in `main`, before
    // any other thread exists.
    #[allow(unsafe_code)]
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}
mod fit;

#[derive(Parser)]
#[command(
    name = "efficientad-train",
    version,
    about = "Train and export EfficientAD models (Burn, CPU by default)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

fn parse_variant(text: &str) -> Result<Variant, String> {
    Variant::parse(text).ok_or_else(|| format!("`{text}` is not a variant; use s or m"))
}

#[derive(Subcommand)]
enum Command {
    /// Distill a PDN teacher from an ONNX backbone (input `image` [N,3,H,W] in [0,1]; a finer
    /// and a coarser feature output) on natural images.
    DistillTeacher {
        /// The backbone ONNX file, e.g. efficientnet_lite0_features.onnx.
        #[arg(long)]
        backbone: PathBuf,
        /// Folder of natural images (e.g. ImageNet samples).
        #[arg(long)]
        images: PathBuf,
        #[arg(long, value_parser = parse_variant, default_value = "s")]
        variant: Variant,
        /// Optimizer steps (the paper: 60000).
        #[arg(long, default_value_t = 60_000)]
        steps: usize,
        /// Images per step (the paper: 16).
        #[arg(long, default_value_t = 16)]
        batch: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Images used for the target mean and std (a random sample, drawn with --seed).
        #[arg(long, default_value_t = 200)]
        stats_images: usize,
        /// Also save the teacher every N steps, next to --out as NAME.stepN.bpk (teachers of
        /// several distillation budgets from one run).
        #[arg(long, default_value_t = 0)]
        save_every: usize,
        /// Compute device: cpu, or wgpu (a GPU; needs a build with --features wgpu).
        #[arg(long, value_enum, default_value_t = Backend::Cpu)]
        device: Backend,
        /// Teacher checkpoint to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Train student and autoencoder on the good images of an MVTec-layout dataset, export the
    /// bundle to --out and calibrate it on validation/good (or 10% of train held out).
    Fit {
        /// Dataset folder: train/good (and validation/good) inside.
        #[arg(long)]
        dataset: PathBuf,
        /// Teacher checkpoint (from import-teacher or distill-teacher).
        #[arg(long)]
        teacher: PathBuf,
        /// Natural images for the penalty loss (e.g. ImageNet samples).
        #[arg(long)]
        penalty_images: PathBuf,
        /// PDN size; must match the teacher.
        #[arg(long, value_parser = parse_variant, default_value = "s")]
        variant: Variant,
        /// Training steps (the paper: 70000).
        #[arg(long, default_value_t = 70_000)]
        steps: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Bundle folder to write, e.g. onnx/my-part.
        #[arg(long)]
        out: PathBuf,
        /// Working folder for checkpoints and the loss log (default runs/<name>).
        #[arg(long)]
        work: Option<PathBuf>,
        /// Calibration file to write (default calibration/<name>.json).
        #[arg(long)]
        calibration_out: Option<PathBuf>,
        /// Save a checkpoint every N steps (and always on Ctrl-C and at the end).
        #[arg(long, default_value_t = 1000)]
        checkpoint_every: usize,
        /// Continue the run from its last checkpoint in --work.
        #[arg(long)]
        resume: bool,
        /// Every N steps, export the model, calibrate it on the validation images and evaluate
        /// it on the dataset's test split (image AUROC, pixel AUROC, AU-PRO into the run's
        /// log.jsonl; draw them with `efficientad-train plot`). 0: never.
        #[arg(long, default_value_t = 0, value_name = "N")]
        eval_every: usize,
        /// Use at most N penalty images (quick runs).
        #[arg(long, hide = true)]
        penalty_limit: Option<usize>,
        /// Use at most N training images (quick runs).
        #[arg(long, hide = true)]
        train_limit: Option<usize>,
        /// Compute device: cpu, or wgpu (a GPU; needs a build with --features wgpu).
        #[arg(long, value_enum, default_value_t = Backend::Cpu)]
        device: Backend,
    },
    /// Time the real `fit` step (all four losses, Adam, batch 1, 256²) and the real distillation
    /// step (backbone targets included) on real images, and — when python3 can import torch —
    /// PyTorch's same steps in the same invocation (ratio above 1: Burn is faster).
    Bench {
        #[arg(long, value_parser = parse_variant, default_value = "s")]
        variant: Variant,
        /// Timed steps of each kind (after one warm-up step); the median is reported.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Print one JSON line instead of the table.
        #[arg(long)]
        json: bool,
        /// MVTec-layout dataset whose train/good images feed the fit step.
        #[arg(long, default_value = "../shared/data/mtd")]
        dataset: PathBuf,
        /// Natural images: the penalty images of fit and the distillation images.
        #[arg(long, default_value = "../shared/data/imagenet-sample")]
        images: PathBuf,
        /// Distillation backbone (ONNX).
        #[arg(
            long,
            default_value = "../shared/weights/efficientnet_lite0_features.onnx"
        )]
        backbone: PathBuf,
        /// Images per distillation step.
        #[arg(long, default_value_t = 8)]
        distill_batch: usize,
        /// Skip the PyTorch comparison.
        #[arg(long)]
        no_torch: bool,
        /// Folder of the PyTorch scripts torch_step.py and torch_distill.py.
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/bench"))]
        scripts: PathBuf,
        /// Compute device: cpu, or wgpu (a GPU; needs a build with --features wgpu).
        #[arg(long, value_enum, default_value_t = Backend::Cpu)]
        device: Backend,
    },
    /// Draw the quality checkpoints of `fit --eval-every` runs (image AUROC, pixel AUROC,
    /// AU-PRO against student steps, one line per run) to a PNG, and print them as a table.
    Plot {
        /// Run folders (fit's --work), each optionally with its legend label: DIR or DIR=LABEL.
        #[arg(required = true, value_name = "RUN")]
        runs: Vec<String>,
        /// PNG to write.
        #[arg(long)]
        out: PathBuf,
        /// TrueType font for the labels (default: DejaVu Sans or Liberation Sans from the system).
        #[arg(long)]
        font: Option<PathBuf>,
    },
    /// Pick demo parts at random from a dataset's test split (seeded): GOOD good parts and
    /// DEFECTIVE parts from all defect folders together, copied into OUT/<folder>/.
    DemoSamples {
        /// Dataset folder in the MVTec layout.
        #[arg(long)]
        dataset: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 3)]
        good: usize,
        #[arg(long, default_value_t = 3)]
        defective: usize,
        /// Folder to fill (emptied first), e.g. onnx/mtd-s/samples.
        #[arg(long)]
        out: PathBuf,
    },
    /// Import a pretrained PDN teacher from a PyTorch state_dict (.pth), in either key style
    /// (`0.weight`… or `conv1.weight`…), into the project's checkpoint format.
    ImportTeacher {
        /// The PyTorch file (e.g. teacher_small.pth / pretrained_teacher_small.pth).
        #[arg(long)]
        pth: PathBuf,
        /// PDN size of the teacher: s (EfficientAD-S) or m (EfficientAD-M).
        #[arg(long, value_parser = parse_variant)]
        variant: Variant,
        /// Checkpoint file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Export a model bundle (model.onnx + model.json) from a model checkpoint, or with fresh
    /// random weights for plumbing tests.
    Export {
        /// A whole-model checkpoint (written by `fit`).
        #[arg(long, required_unless_present = "random", conflicts_with = "random")]
        checkpoint: Option<PathBuf>,
        /// Export freshly initialized weights instead (tests and demos of the plumbing only).
        #[arg(long)]
        random: bool,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 0, requires = "random")]
        seed: u64,
        /// PDN size for --random.
        #[arg(long, value_parser = parse_variant, default_value = "s")]
        variant: Variant,
        /// Divide every hidden width by this (--random only): tiny networks for fast tests.
        #[arg(long, default_value_t = 1, requires = "random", hide = true)]
        width_divisor: usize,
        /// Divide the autoencoder's hidden widths (32, 64) by this (--random only): the tiny
        /// models the emulated aarch64 tests run.
        #[arg(long, default_value_t = 1, requires = "random", hide = true)]
        ae_width_divisor: usize,
        /// Also fold these teacher statistics (a JSON file `{"mean": [...], "std": [...]}`) into a
        /// random export, to test the fold.
        #[arg(long, requires = "random", hide = true)]
        teacher_stats: Option<PathBuf>,
        /// Bundle folder to write, e.g. onnx/my-part.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    keep_freed_pages();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("efficientad-train: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `runs/t/teacher.bpk` → `runs/t/teacher.step150.bpk`.
fn snapshot_path(out: &std::path::Path, step: usize) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "teacher".into());
    out.with_file_name(format!("{stem}.step{step}.bpk"))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let device = Device::flex();
    match cli.command {
        Command::DistillTeacher {
            backbone,
            images,
            variant,
            steps,
            batch,
            seed,
            stats_images,
            save_every,
            device: backend,
            out,
        } => {
            if batch == 0 {
                bail!("--batch must be at least 1");
            }
            let config = DistillConfig {
                backbone,
                images,
                variant,
                steps,
                batch,
                seed,
                stats_images,
                backend,
                save_every,
            };
            let stop = efficientad_training::train::stop_flag();
            let bar = indicatif::ProgressBar::new(steps as u64).with_style(
                indicatif::ProgressStyle::with_template(
                    "distill [{bar:30}] {pos}/{len} {msg} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr());
            let mut last_line = std::time::Instant::now();
            let (teacher, info) = distill(&config, stop, &mut |event| match event {
                DistillEvent::Stats { done, total } => {
                    bar.set_message(format!("target statistics {done}/{total}"))
                }
                DistillEvent::Step {
                    step,
                    loss,
                    images_per_second,
                } => {
                    bar.set_position(step as u64);
                    bar.set_message(format!("loss {loss:.4} {images_per_second:.2} img/s"));
                    if plain && (last_line.elapsed().as_secs() >= 30 || step == 1) {
                        last_line = std::time::Instant::now();
                        eprintln!(
                            "efficientad-train: distill step {step}/{steps} loss {loss:.4} {images_per_second:.2} img/s"
                        );
                    }
                }
                DistillEvent::Message(m) => bar.suspend(|| eprintln!("efficientad-train: {m}")),
                DistillEvent::Snapshot {
                    step,
                    teacher,
                    info,
                } => {
                    let path = snapshot_path(&out, step);
                    let saved = checkpoint::save_teacher(teacher, info, &path);
                    bar.suspend(|| match saved {
                        Ok(()) => eprintln!(
                            "efficientad-train: saved the teacher after {step} steps to {}",
                            path.display()
                        ),
                        // A snapshot is extra; the run goes on to its final teacher.
                        Err(e) => eprintln!(
                            "efficientad-train: warning: could not save {}: {e}",
                            path.display()
                        ),
                    });
                }
            })?;
            bar.finish_and_clear();
            checkpoint::save_teacher(&teacher, &info, &out)?;
            eprintln!(
                "efficientad-train: wrote distilled PDN-{variant} teacher to {}",
                out.display()
            );
        }
        Command::Fit {
            dataset,
            teacher,
            penalty_images,
            variant,
            steps,
            seed,
            out,
            work,
            calibration_out,
            checkpoint_every,
            resume,
            eval_every,
            penalty_limit,
            train_limit,
            device: backend,
        } => {
            let name = out
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .context("--out must name a bundle folder, e.g. onnx/my-part")?;
            let teacher_info = checkpoint::read_info(&teacher)?;
            if teacher_info.variant != variant {
                bail!(
                    "{} is a PDN-{} teacher, but --variant {variant} was given; train with --variant {} or use a PDN-{variant} teacher",
                    teacher.display(),
                    teacher_info.variant,
                    teacher_info.variant
                );
            }
            let config = FitConfig {
                dataset,
                teacher,
                penalty_images,
                steps,
                seed,
                work: work.unwrap_or_else(|| PathBuf::from("runs").join(&name)),
                out,
                checkpoint_every,
                penalty_limit,
                train_limit,
                backend,
                eval_every,
            };
            let calibration_out = calibration_out
                .unwrap_or_else(|| PathBuf::from("calibration").join(format!("{name}.json")));
            fit::run(&config, resume, &calibration_out)?;
        }
        Command::Bench {
            variant,
            steps,
            json,
            dataset,
            images,
            backbone,
            distill_batch,
            no_torch,
            scripts,
            device: backend,
        } => {
            if steps == 0 || distill_batch == 0 {
                bail!("--steps and --distill-batch must be at least 1");
            }
            for (path, what) in [(&dataset, "--dataset"), (&images, "--images")] {
                if !path.is_dir() {
                    bail!("{what} {} is not a folder", path.display());
                }
            }
            if !backbone.is_file() {
                bail!("--backbone {} is not a file", backbone.display());
            }
            let config = BenchConfig {
                variant,
                steps,
                dataset,
                natural_images: images,
                backbone,
                distill_batch,
                backend,
                torch: !no_torch,
                scripts,
            };
            bench_cli::run(&config, json)?;
        }
        Command::Plot { runs, out, font } => {
            use efficientad_training::curves;
            let runs = runs
                .iter()
                .map(|arg| {
                    let (dir, label) = match arg.split_once('=') {
                        Some((dir, label)) => (PathBuf::from(dir), label.to_string()),
                        None => {
                            let dir = PathBuf::from(arg);
                            let label = dir
                                .file_name()
                                .map_or_else(|| arg.clone(), |n| n.to_string_lossy().into_owned());
                            (dir, label)
                        }
                    };
                    curves::Run::read(&dir, label)
                })
                .collect::<Result<Vec<_>, _>>()?;
            curves::load_font(font.as_deref())?;
            curves::plot(&runs, &out)?;
            print!("{}", curves::table(&runs));
            eprintln!("efficientad-train: wrote {}", out.display());
        }
        Command::DemoSamples {
            dataset,
            seed,
            good,
            defective,
            out,
        } => {
            let items = efficientad::dataset::test_set(&dataset)?;
            let mut rng = Rng::new(seed);
            let mut chosen = Vec::new();
            for (anomalous, count) in [(false, good), (true, defective)] {
                let mut pool: Vec<_> = items.iter().filter(|i| i.anomalous == anomalous).collect();
                if pool.len() < count {
                    bail!(
                        "{} has {} {} test images, fewer than the {count} asked for",
                        dataset.display(),
                        pool.len(),
                        if anomalous { "defective" } else { "good" }
                    );
                }
                rng.shuffle(&mut pool);
                chosen.extend(pool.into_iter().take(count));
            }
            if out.exists() {
                std::fs::remove_dir_all(&out)
                    .with_context(|| format!("emptying {}", out.display()))?;
            }
            for item in chosen {
                let dir = out.join(&item.defect);
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                let name = item.path.file_name().context("image without a file name")?;
                std::fs::copy(&item.path, dir.join(name))
                    .with_context(|| format!("copying {}", item.path.display()))?;
                println!("{}", dir.join(name).display());
            }
        }
        Command::ImportTeacher { pth, variant, out } => {
            let teacher = import_teacher(&pth, variant, &device)?;
            let sha256 = efficientad::bundle::file_sha256(&pth)
                .with_context(|| format!("hashing {}", pth.display()))?;
            let info = CheckpointInfo {
                kind: Kind::Teacher,
                variant,
                width_divisor: 1,
                teacher: TeacherProvenance::Imported {
                    file: pth.display().to_string(),
                    sha256,
                },
                training: serde_json::Value::Null,
            };
            checkpoint::save_teacher(&teacher, &info, &out)?;
            eprintln!(
                "imported PDN-{variant} teacher from {} into {}",
                pth.display(),
                out.display()
            );
        }
        Command::Export {
            checkpoint: Some(path),
            out,
            ..
        } => {
            let (model, info) = checkpoint::load_model(&path, &device)?;
            let written = export_bundle(&model, &info, &out)?;
            eprintln!(
                "exported {} (sha256 {})",
                out.display(),
                written.model_sha256
            );
        }
        Command::Export {
            checkpoint: None,
            random,
            seed,
            variant,
            width_divisor,
            ae_width_divisor,
            teacher_stats,
            out,
        } => {
            if !random {
                bail!("give --checkpoint FILE or --random");
            }
            if width_divisor == 0 || !TEACHER_CHANNELS.is_multiple_of(width_divisor) {
                bail!("--width-divisor {width_divisor} must divide 384");
            }
            let config = PdnConfig::new(variant, TEACHER_CHANNELS / width_divisor)
                .with_width_divisor(width_divisor);
            if ae_width_divisor == 0 || 32 % ae_width_divisor != 0 {
                bail!("--ae-width-divisor {ae_width_divisor} must divide 32");
            }
            let mut model = EfficientAd::new(&config, &device);
            model.autoencoder = AutoencoderConfig::new(config.out_channels)
                .with_width_divisor(ae_width_divisor)
                .init(&device);
            model.init_weights(&mut Rng::new(seed), true, &device);
            if let Some(stats) = teacher_stats {
                efficientad_training::model::set_teacher_stats_from_file(
                    &mut model, &stats, &device,
                )
                .map_err(anyhow::Error::msg)?;
            }
            let info = CheckpointInfo {
                kind: Kind::Model,
                variant,
                width_divisor,
                teacher: TeacherProvenance::Random { seed },
                // Said in model.json: the autoencoder is narrower than its teacher implies.
                training: if ae_width_divisor > 1 {
                    serde_json::json!({ "autoencoder_width_divisor": ae_width_divisor })
                } else {
                    serde_json::Value::Null
                },
            };
            let written = export_bundle(&model, &info, &out)?;
            eprintln!(
                "exported random-weight bundle {} (sha256 {})",
                out.display(),
                written.model_sha256
            );
        }
    }
    Ok(())
}
