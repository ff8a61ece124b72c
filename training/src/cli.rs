//! Command-line surface of `efficientad-train`: one file per subcommand (as the runtime's
//! `src/cli/`), each with its arguments and its `run`.

mod bench;
mod demo_samples;
mod distill_teacher;
mod doctor;
mod export;
mod fit;
mod gauge;
mod import_teacher;
mod plot;

use clap::{Parser, Subcommand};
use efficientad_training::model::Variant;

#[derive(Parser)]
#[command(
    name = "efficientad-train",
    version,
    about = "Train and export EfficientAD models (Burn, CPU by default)"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `s` or `m`, for every command that takes `--variant`.
fn parse_variant(text: &str) -> Result<Variant, String> {
    Variant::parse(text).ok_or_else(|| format!("`{text}` is not a variant; use s or m"))
}

#[derive(Subcommand)]
enum Command {
    /// What training can compute on: the CPU backend, and (built with --features wgpu) the
    /// Vulkan adapters, the one `--device wgpu` takes, and what to install when there is none.
    Doctor,
    /// Distill a PDN teacher from an ONNX backbone (input `image` [N,3,H,W] in [0,1]; a finer
    /// and a coarser feature output) on natural images.
    DistillTeacher(distill_teacher::DistillArgs),
    /// Train student and autoencoder on the good images of an MVTec-layout dataset, export the
    /// bundle to --out and calibrate it on validation/good (or 10% of train held out).
    Fit(fit::FitArgs),
    /// Gauge a teacher or a distillation target before training a student: nearest-neighbour
    /// scores of a dataset's test images against a random memory of good training features
    /// (image AUROC, pixel AUROC, AU-PRO), in minutes.
    Gauge(gauge::GaugeArgs),
    /// Time the real `fit` step (all four losses, Adam, batch 1, 256²) and the real distillation
    /// step (backbone targets included) on real images, and — when python3 can import torch —
    /// PyTorch's same steps in the same invocation (ratio above 1: Burn is faster).
    Bench(bench::BenchArgs),
    /// Draw the quality checkpoints of `fit --eval-every` runs (image AUROC, pixel AUROC,
    /// AU-PRO against student steps, one line per run) to a PNG, and print them as a table.
    Plot(plot::PlotArgs),
    /// Pick demo parts at random from a dataset's test split (seeded): GOOD good parts and
    /// DEFECTIVE parts from all defect folders together, copied into OUT/<folder>/.
    DemoSamples(demo_samples::DemoSamplesArgs),
    /// Import a pretrained PDN teacher from a PyTorch state_dict (.pth), in either key style
    /// (`0.weight`… or `conv1.weight`…), into the project's checkpoint format.
    ImportTeacher(import_teacher::ImportTeacherArgs),
    /// Export a model bundle (model.onnx + model.json) from a model checkpoint, or with fresh
    /// random weights for plumbing tests.
    Export(export::ExportArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Doctor => doctor::run(),
        Command::DistillTeacher(args) => distill_teacher::run(args),
        Command::Fit(args) => fit::run(args),
        Command::Gauge(args) => gauge::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Plot(args) => plot::run(args),
        Command::DemoSamples(args) => demo_samples::run(args),
        Command::ImportTeacher(args) => import_teacher::run(args),
        Command::Export(args) => export::run(args),
    }
}
