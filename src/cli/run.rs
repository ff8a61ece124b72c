//! `efficientad run`: watch a source and answer the PLC bridge — triggers on stdin, one JSON
//! line per trigger on stdout, logs on stderr.

use std::io::BufReader;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use crossbeam_channel::bounded;
use efficientad::bundle::Bundle;
use efficientad::calibration::Calibration;
use efficientad::engine::Engine;
use efficientad::inspect::HeatmapSink;
use efficientad::pipeline::{Pipeline, PipelineOptions, TriggerMode};
use efficientad::source::{CameraOptions, SourceSpec};
use efficientad::trigger::read_triggers;

use super::{EngineArgs, Outcome};

#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Calibration file of this model.
    #[arg(long, value_name = "FILE")]
    pub calibration: PathBuf,
    /// Frame source: dir:<folder>, usb:<index|name>, gige:<id|first>.
    #[arg(long, value_name = "SPEC")]
    pub source: String,
    /// stdin: one frame per trigger line; free: judge frames continuously.
    #[arg(long, value_enum, default_value_t = TriggerMode::Stdin)]
    pub trigger: TriggerMode,
    /// Write heatmap overlays of NG parts into this folder.
    #[arg(long, value_name = "DIR")]
    pub heatmaps: Option<PathBuf>,
    /// With --heatmaps: overlays for every part.
    #[arg(long, requires = "heatmaps")]
    pub all_heatmaps: bool,
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
    pub gige_trigger: String,
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

impl RunArgs {
    fn camera_options(&self) -> CameraOptions {
        #[allow(clippy::needless_update)]
        CameraOptions {
            #[cfg(feature = "gige")]
            gige: efficientad::source::gige::GigeSettings {
                pixel_format: self.gige_pixel_format.clone(),
                udp_socket_only: self.gige_stream == "socket",
                exposure_us: self.exposure_us,
                gain: self.gain,
                frame_rate: self.camera_fps,
                trigger: if self.trigger == TriggerMode::Free {
                    "free".into()
                } else {
                    self.gige_trigger.clone()
                },
            },
            #[cfg(feature = "usb")]
            usb: efficientad::source::usb::UsbSettings {
                format: self.usb_format.clone(),
                resolution: self.usb_resolution,
                fps: self.camera_fps.map(|f| f.round() as u32),
            },
            ..CameraOptions::default()
        }
    }
}

/// Routes SIGINT/SIGTERM to the pipeline's shutdown channel.
pub fn shutdown_channel() -> crossbeam_channel::Receiver<()> {
    let (tx, rx) = bounded::<()>(4);
    let _ = ctrlc::set_handler(move || {
        eprintln!("efficientad: stopping: answering pending triggers");
        let _ = tx.try_send(());
    });
    rx
}

pub fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let bundle = Bundle::open(&args.engine.model)?;
    let calibration = Calibration::load_for(&args.calibration, &bundle)?;
    let spec = SourceSpec::parse(&args.source, args.fps, !args.once)?;
    let source = spec.open_with(&args.camera_options())?;
    eprintln!("efficientad: source {}", source.describe());
    let heatmaps = match &args.heatmaps {
        Some(dir) => Some(
            HeatmapSink::new(dir, args.all_heatmaps)
                .with_context(|| format!("cannot create {}", dir.display()))?,
        ),
        None => None,
    };
    let mut engine = Engine::new(&bundle, &args.engine.engine_options())?;
    // Warm-up: the first session run allocates and (TensorRT) builds; not on a real trigger.
    let size = engine.input_size();
    engine.run(&vec![0u8; size * size * 3], 1)?;
    eprintln!(
        "efficientad: ready ({} on {}); waiting for triggers",
        bundle.info.name,
        engine.provider()
    );

    let (trigger_tx, trigger_rx) = bounded(64);
    if args.trigger == TriggerMode::Stdin {
        std::thread::spawn(move || {
            read_triggers(BufReader::new(std::io::stdin()), |t| {
                trigger_tx.send(t).is_ok()
            });
        });
    } else {
        // Free-run ignores stdin; keep the sender alive so the channel never closes.
        std::mem::forget(trigger_tx);
    }
    let shutdown = shutdown_channel();
    let pipeline = Pipeline {
        source,
        engine,
        calibration,
        heatmaps,
        options: PipelineOptions {
            frame_timeout: Duration::from_millis(args.frame_timeout_ms),
            ..PipelineOptions::default()
        },
    };
    let stdout = std::io::stdout();
    let summary = pipeline
        .run(
            args.trigger,
            trigger_rx,
            shutdown,
            &mut stdout.lock(),
            &mut |_| {},
        )
        .context("writing answers to stdout")?;
    eprintln!("efficientad: {}", summary.line());
    // A line session that ends on EOF or a signal ends normally (exit 0) even when some
    // triggers were answered ERROR: those answers and the summary carry the errors, and a
    // service manager must not take a clean stop for a failure (README: exit status).
    Ok(Outcome::Success)
}
