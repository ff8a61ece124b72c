//! `usb:<index|name>`: UVC cameras through nokhwa's V4L2 backend. MJPEG and YUYV frames are
//! decoded to RGB by nokhwa; format and resolution can be requested.
//!
//! The capture loop is owned here (not nokhwa's threaded camera, which swallows frame errors):
//! nokhwa's camera cannot move between threads, so one worker thread opens and owns it and
//! the source talks to it over channels. V4L2 keeps a few frames queued; a grab discards
//! frames that were already waiting (they arrive without delay) so the frame judged was
//! exposed after the grab started.

use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, bounded};

use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{
    ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
    Resolution,
};
use nokhwa::{Camera, NokhwaError};

use super::{Frame, FrameSource, OpenError, SourceError, UsbSettings};

/// Cameras V4L2 reports now.
pub fn list() -> Vec<String> {
    nokhwa::query(ApiBackend::Video4Linux)
        .map(|cams| {
            cams.iter()
                .map(|c| format!("usb:{} ({})", c.index(), c.human_name()))
                .collect()
        })
        .unwrap_or_default()
}

/// Requests to the camera thread.
enum Request {
    Grab,
    Reconnect,
}

/// The source: a handle on the thread that owns the camera.
pub struct UsbSource {
    requests: Sender<Request>,
    frames: Receiver<Result<Frame, SourceError>>,
    reconnected: Receiver<Result<String, SourceError>>,
    name: String,
}

/// What the camera thread owns.
struct Worker {
    index: CameraIndex,
    settings: UsbSettings,
    camera: Camera,
    frames: u64,
    name: String,
}

fn requested(settings: &UsbSettings) -> Result<RequestedFormat<'static>, String> {
    let fourcc = match settings.format.as_deref() {
        None => None,
        Some("mjpeg" | "MJPEG") => Some(FrameFormat::MJPEG),
        Some("yuyv" | "YUYV") => Some(FrameFormat::YUYV),
        Some(other) => {
            return Err(format!(
                "USB format `{other}` is not supported; use mjpeg or yuyv"
            ));
        }
    };
    let kind = match (fourcc, settings.resolution) {
        (None, None) => RequestedFormatType::AbsoluteHighestFrameRate,
        (f, r) => {
            let (w, h) = r.unwrap_or((640, 480));
            RequestedFormatType::Closest(CameraFormat::new(
                Resolution::new(w, h),
                f.unwrap_or(FrameFormat::MJPEG),
                settings.fps.unwrap_or(30),
            ))
        }
    };
    Ok(RequestedFormat::new::<RgbFormat>(kind))
}

fn open_camera(index: &CameraIndex, settings: &UsbSettings) -> Result<(Camera, String), String> {
    let mut camera =
        Camera::with_backend(index.clone(), requested(settings)?, ApiBackend::Video4Linux)
            .map_err(|e| format!("cannot open USB camera {index}: {e}"))?;
    camera
        .open_stream()
        .map_err(|e| format!("cannot start USB camera {index}: {e}"))?;
    let name = format!(
        "usb:{index} ({}, {})",
        camera.info().human_name(),
        camera.camera_format()
    );
    Ok((camera, name))
}

impl UsbSource {
    /// `spec` is a device index (`0`) or a part of the camera's name.
    pub fn open(spec: &str, settings: UsbSettings) -> Result<Self, OpenError> {
        Self::start(spec, settings).map_err(OpenError::Camera)
    }

    fn start(spec: &str, settings: UsbSettings) -> Result<Self, String> {
        let cameras = nokhwa::query(ApiBackend::Video4Linux)
            .map_err(|e| format!("V4L2 query failed: {e}"))?;
        if cameras.is_empty() {
            return Err("no V4L2 device found (no camera under /dev/video*): connect a USB camera, or use dir:<folder>".into());
        }
        let index = match spec.parse::<u32>() {
            Ok(i) => CameraIndex::Index(i),
            Err(_) => cameras
                .iter()
                .find(|c| c.human_name().to_lowercase().contains(&spec.to_lowercase()))
                .map(|c| c.index().clone())
                .ok_or_else(|| {
                    let names: Vec<String> = cameras.iter().map(|c| c.human_name()).collect();
                    format!("no USB camera named like `{spec}`; found {names:?}")
                })?,
        };
        let (opened_tx, opened_rx) = bounded(1);
        let (req_tx, req_rx) = bounded::<Request>(1);
        let (frame_tx, frame_rx) = bounded(1);
        let (reconn_tx, reconn_rx) = bounded(1);
        std::thread::spawn(move || {
            let mut worker = match open_camera(&index, &settings) {
                Ok((camera, name)) => {
                    let _ = opened_tx.send(Ok(name.clone()));
                    Worker {
                        index,
                        settings,
                        camera,
                        frames: 0,
                        name,
                    }
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                    return;
                }
            };
            for request in req_rx.iter() {
                match request {
                    Request::Grab => {
                        let _ = frame_tx.send(worker.grab());
                    }
                    Request::Reconnect => {
                        let _ = reconn_tx.send(worker.reconnect());
                    }
                }
            }
        });
        let name = opened_rx
            .recv()
            .map_err(|_| "the USB camera thread ended".to_string())??;
        Ok(Self {
            requests: req_tx,
            frames: frame_rx,
            reconnected: reconn_rx,
            name,
        })
    }
}

fn classify(e: NokhwaError) -> SourceError {
    match e {
        NokhwaError::ReadFrameError(m) | NokhwaError::OpenDeviceError(_, m) => {
            SourceError::Disconnected(m)
        }
        other => SourceError::BadFrame(other.to_string()),
    }
}

impl Worker {
    fn grab(&mut self) -> Result<Frame, SourceError> {
        let period = Duration::from_secs_f64(1.0 / f64::from(self.camera.frame_rate().max(1)));
        let mut buffer = None;
        // Frames that come back at once were queued before the grab: skip a few of them.
        for _ in 0..8 {
            let t = Instant::now();
            let b = self.camera.frame().map_err(classify)?;
            let waited = t.elapsed() > period / 2;
            buffer = Some(b);
            if waited {
                break;
            }
        }
        let buffer = buffer.ok_or_else(|| SourceError::BadFrame("no frame".into()))?;
        let decoded = buffer
            .decode_image::<RgbFormat>()
            .map_err(|e| SourceError::BadFrame(e.to_string()))?;
        let (w, h) = (decoded.width(), decoded.height());
        let image = image::RgbImage::from_raw(w, h, decoded.into_raw())
            .ok_or_else(|| SourceError::BadFrame("decoded frame has the wrong size".into()))?;
        self.frames += 1;
        Ok(Frame {
            image,
            captured: Instant::now(),
            captured_at: SystemTime::now(),
            index: self.frames,
            origin: self.name.clone(),
        })
    }

    fn reconnect(&mut self) -> Result<String, SourceError> {
        let (camera, name) =
            open_camera(&self.index, &self.settings).map_err(SourceError::Disconnected)?;
        self.camera = camera;
        self.name = name.clone();
        Ok(name)
    }
}

impl FrameSource for UsbSource {
    fn grab(&mut self, timeout: Duration) -> Result<Frame, SourceError> {
        let gone = || SourceError::Disconnected("the USB camera thread ended".into());
        self.requests.send(Request::Grab).map_err(|_| gone())?;
        self.frames.recv_timeout(timeout).map_err(|e| match e {
            crossbeam_channel::RecvTimeoutError::Timeout => SourceError::Timeout(timeout),
            crossbeam_channel::RecvTimeoutError::Disconnected => gone(),
        })?
    }

    fn reconnect(&mut self) -> Result<(), SourceError> {
        let gone = || SourceError::Disconnected("the USB camera thread ended".into());
        // A grab still running after a timeout answers first; drop its late frame.
        while self.frames.try_recv().is_ok() {}
        self.requests.send(Request::Reconnect).map_err(|_| gone())?;
        self.name = self.reconnected.recv().map_err(|_| gone())??;
        Ok(())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}
