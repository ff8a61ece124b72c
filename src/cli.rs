//! Command-line surface of `efficientad`. Each subcommand lives in its own file; this one holds
//! the argument definitions shared between them and the exit-code mapping.

mod bench;
mod calibrate;
mod capture;
mod demo;
mod doctor;
mod eval;
mod infer;
mod quantize;
mod run;
mod soak;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use efficientad::line::source::{
    CameraOptions, GigeSettings, GigeTrigger, SourceSpec, SpecError, UsbSettings,
};
use efficientad::model::engine::{EngineOptions, Provider};

const AFTER_HELP: &str = "Exit status: 0 success; 1 the run finished but some images got ERROR (infer, eval; `run` ends 0 on EOF or a signal, its ERROR answers carry the errors); \
2 setup error (bad arguments, model, calibration, ONNX Runtime); 3 `run` could not write an answer to stdout (the PLC bridge went away).\n\
ONNX Runtime is found via ORT_DYLIB_PATH, the python3 onnxruntime package, or the user cache \
(installed there with pip on first use unless EFFICIENTAD_NO_ORT_INSTALL=1).";

#[derive(Parser)]
#[command(name = "efficientad", version, about = "EfficientAD anomaly inspection runtime (ONNX Runtime: TensorRT, CUDA or CPU)", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the shipped model on the shipped sample parts: JSON lines, heatmaps, a summary.
    Demo {
        /// Execution provider (auto: TensorRT, CUDA, then CPU).
        #[arg(long, value_enum, default_value_t = Provider::Auto)]
        provider: Provider,
    },
    /// Watch a camera (or a dir: source) and answer triggers from stdin, one JSON line each.
    Run(run::RunArgs),
    /// Take training images from a camera (or a dir: source) into train/good and
    /// validation/good, through the same source code as `run`.
    Capture(capture::CaptureArgs),
    /// Judge image files or folders: one JSON line per image on stdout, heatmaps on request.
    Infer(infer::InferArgs),
    /// Compute map normalization and the decision threshold from normal validation images.
    Calibrate(calibrate::CalibrateArgs),
    /// Image AUROC, pixel AUROC and AU-PRO on an MVTec-layout test split.
    Eval(eval::EvalArgs),
    /// Write an int8 (QDQ) bundle from an fp32 one, calibrated on normal images.
    Quantize(quantize::QuantizeArgs),
    /// Time each stage and compare end-to-end time with the bare session run.
    Bench(bench::BenchArgs),
    /// Soak test: many triggers on a dir: source; checks one answer each and flat memory.
    Soak(soak::SoakArgs),
    /// Show the ONNX Runtime library, usable execution providers and what blocks the others.
    Doctor,
}

/// How much of the disk `--heatmaps` may take (`infer`, `run`).
#[derive(Args, Clone, Copy, Debug)]
pub struct HeatmapLimitArgs {
    /// With --heatmaps: keep at most N heatmap files in the folder (the oldest are removed
    /// first, also those of earlier runs); 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = efficientad::judge::inspect::DEFAULT_HEATMAP_MAX_FILES)]
    pub heatmaps_max_files: usize,
    /// With --heatmaps: keep at most this many MiB of heatmaps in the folder (oldest removed
    /// first); 0 = no limit.
    #[arg(long, value_name = "MB", default_value_t = efficientad::judge::inspect::DEFAULT_HEATMAP_MAX_MB)]
    pub heatmaps_max_mb: u64,
}

impl HeatmapLimitArgs {
    pub fn limits(self) -> efficientad::judge::inspect::HeatmapLimits {
        efficientad::judge::inspect::HeatmapLimits {
            max_files: self.heatmaps_max_files,
            max_bytes: self.heatmaps_max_mb << 20,
        }
    }
}

/// Model and engine options shared by the commands that run a model.
#[derive(Args, Clone, Debug)]
pub struct EngineArgs {
    /// Model bundle folder (holds model.onnx and model.json), e.g. onnx/mtd-s.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Execution provider; `auto` tries TensorRT, CUDA, then CPU. An explicit one that cannot
    /// load is an error.
    #[arg(long, value_enum, default_value_t = Provider::Auto)]
    pub provider: Provider,
    /// Intra-op threads of ONNX Runtime (default: one per physical core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Images per session run.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub batch: u16,
}

impl EngineArgs {
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            provider: self.provider,
            intra_threads: self.threads.map(usize::from),
            ..EngineOptions::default()
        }
    }
}

/// What a subcommand reports back for the exit status.
/// Where frames come from and the camera's settings: shared by `run` and `capture`, so a
/// captured training image is taken exactly as `run` will later take the parts it judges.
#[derive(Args, Clone, Debug)]
pub struct SourceArgs {
    /// Frame source: dir:<folder>, usb:<index|name>, gige:<id|first>.
    #[arg(long, value_name = "SPEC")]
    pub source: String,
    /// Frame rate of a dir: source (0 = as fast as asked).
    #[arg(long, value_name = "FPS", default_value_t = 10.0)]
    pub fps: f64,
    /// A dir: source plays its images once instead of looping.
    #[arg(long)]
    pub once: bool,
    /// Longest wait for a frame after a trigger, milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    pub frame_timeout_ms: u64,
    /// GigE trigger: software (each stdin trigger fires one exposure), free (camera streams),
    /// or the camera input line that fires exposures, e.g. Line1.
    #[arg(long, value_name = "MODE", default_value = "software")]
    pub gige_trigger: GigeTrigger,
    /// How GigE frames are received: auto (aravis's packet socket when the process may open
    /// one, i.e. runs as root or with CAP_NET_RAW, else a UDP socket) or socket (always the UDP
    /// socket: needed under qemu, which cannot emulate the packet socket's ring buffer).
    #[arg(long, value_name = "METHOD", default_value = "auto", value_parser = ["auto", "socket"])]
    pub gige_stream: String,
    /// GigE pixel format to set, e.g. Mono8, RGB8Packed, BayerRG8.
    #[arg(long, value_name = "FORMAT")]
    pub gige_pixel_format: Option<String>,
    /// Camera exposure time, microseconds (GigE).
    #[arg(long, value_name = "US")]
    pub exposure_us: Option<f64>,
    /// Camera gain (GigE).
    #[arg(long)]
    pub gain: Option<f64>,
    /// Camera frame rate to request (GigE and USB).
    #[arg(long, value_name = "FPS")]
    pub camera_fps: Option<f64>,
    /// USB frame format: mjpeg or yuyv.
    #[arg(long, value_name = "FORMAT")]
    pub usb_format: Option<String>,
    /// USB resolution, WIDTHxHEIGHT.
    #[arg(long, value_name = "WxH", value_parser = parse_resolution)]
    pub usb_resolution: Option<(u32, u32)>,
}

impl SourceArgs {
    /// The source named by `--source` (`dir:` plays its images at `--fps`, looping unless
    /// `--once`).
    pub fn spec(&self) -> Result<SourceSpec, SpecError> {
        SourceSpec::parse(&self.source, self.fps, !self.once)
    }

    /// Camera settings; `free` streams a GigE camera instead of triggering each frame.
    pub fn options(&self, free: bool) -> CameraOptions {
        CameraOptions {
            gige: GigeSettings {
                pixel_format: self.gige_pixel_format.clone(),
                udp_socket_only: self.gige_stream == "socket",
                exposure_us: self.exposure_us,
                gain: self.gain,
                frame_rate: self.camera_fps,
                trigger: if free {
                    GigeTrigger::Free
                } else {
                    self.gige_trigger.clone()
                },
            },
            usb: UsbSettings {
                format: self.usb_format.clone(),
                resolution: self.usb_resolution,
                fps: self.camera_fps.map(|f| f.round() as u32),
            },
        }
    }
}

fn parse_resolution(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{text}` is not WIDTHxHEIGHT"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("`{text}` is not WIDTHxHEIGHT"))
    };
    Ok((parse(w)?, parse(h)?))
}

pub enum Outcome {
    Success,
    SomeErrors,
    /// `run`: stdout closed under it (the PLC bridge went away); exit status 3.
    BridgeGone,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo { provider } => demo::run(provider),
        Command::Run(args) => run::run(args),
        Command::Capture(args) => capture::run(args),
        Command::Infer(args) => infer::run(args),
        Command::Calibrate(args) => calibrate::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Soak(args) => soak::run(args),
        Command::Doctor => doctor::run(),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::SomeErrors) => ExitCode::from(1),
        Ok(Outcome::BridgeGone) => ExitCode::from(3),
        Err(e) => {
            efficientad::log_line!("efficientad: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
