//! Frame sources behind one trait: `dir:<folder>` (images replayed as a camera), and the
//! cameras `usb:<index|name>` (nokhwa, V4L2) and `gige:<id|first>` (aravis) when built in.
//!
//! A source is owned by the capture thread. `grab` returns a frame captured after the call
//! started — never a stale buffered one — or an error that says whether the camera is gone
//! (reconnect) or only this frame is bad.

pub mod convert;
pub mod dir;
pub mod faults;
#[cfg(feature = "gige")]
pub mod gige;
mod settings;
#[cfg(feature = "usb")]
pub mod usb;

pub use settings::{CameraOptions, GigeSettings, GigeTrigger, UsbSettings};

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use image::RgbImage;

/// One captured frame.
pub struct Frame {
    pub image: RgbImage,
    pub captured: Instant,
    pub captured_at: SystemTime,
    /// Frame counter of the source.
    pub index: u64,
    /// Where it came from (file for `dir:`, camera name otherwise).
    pub origin: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The device is gone or not answering: reconnect.
    #[error("camera unavailable: {0}")]
    Disconnected(String),
    /// This frame could not be used; the next one may be fine.
    #[error("bad frame: {0}")]
    BadFrame(String),
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    /// A `dir:` source played once has no more frames.
    #[error("the source has no more frames")]
    Exhausted,
}

/// A camera-like producer of frames.
pub trait FrameSource: Send {
    /// Captures the next frame, waiting at most `timeout`.
    fn grab(&mut self, timeout: Duration) -> Result<Frame, SourceError>;
    /// Re-opens the device after a `Disconnected` error.
    fn reconnect(&mut self) -> Result<(), SourceError>;
    /// A short description for logs.
    fn describe(&self) -> String;
}

/// A parsed `--source` value.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    Dir {
        folder: PathBuf,
        fps: f64,
        looping: bool,
    },
    Usb(String),
    Gige(String),
}

/// Why a source could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// A `dir:` source's folder is missing, unreadable or holds no images.
    #[error("dir source: {0}")]
    Folder(#[from] crate::offline::images::FolderError),
    /// The camera could not be found or set up (the driver's own words).
    #[error("{0}")]
    Camera(String),
    #[error(
        "{spec}: this binary was built without {kind} camera support (cargo feature `{feature}`)"
    )]
    NotBuilt {
        spec: String,
        kind: &'static str,
        feature: &'static str,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("`{0}` is not a source; use dir:<folder>, usb:<index|name> or gige:<id|first>")]
    Unknown(String),
    #[error(transparent)]
    Open(#[from] OpenError),
}

impl SourceSpec {
    /// Parses `dir:<folder>`, `usb:<index|name>`, `gige:<id|first>`.
    pub fn parse(text: &str, fps: f64, looping: bool) -> Result<Self, SpecError> {
        let (kind, rest) = text
            .split_once(':')
            .ok_or_else(|| SpecError::Unknown(text.into()))?;
        if rest.is_empty() {
            return Err(SpecError::Unknown(text.into()));
        }
        match kind {
            "dir" => Ok(SourceSpec::Dir {
                folder: PathBuf::from(rest),
                fps,
                looping,
            }),
            "usb" => Ok(SourceSpec::Usb(rest.into())),
            "gige" => Ok(SourceSpec::Gige(rest.into())),
            _ => Err(SpecError::Unknown(text.into())),
        }
    }

    /// Opens the source with default camera settings.
    pub fn open(&self) -> Result<Box<dyn FrameSource>, SpecError> {
        self.open_with(&CameraOptions::default())
    }

    /// Opens the source; camera settings apply to `usb:` and `gige:` sources.
    pub fn open_with(&self, options: &CameraOptions) -> Result<Box<dyn FrameSource>, SpecError> {
        Ok(match self {
            SourceSpec::Dir {
                folder,
                fps,
                looping,
            } => Box::new(dir::DirSource::open(folder, *fps, *looping)?),
            SourceSpec::Gige(id) => open_gige(id, &options.gige)?,
            SourceSpec::Usb(spec) => open_usb(spec, &options.usb)?,
        })
    }
}

#[cfg(feature = "gige")]
fn open_gige(id: &str, settings: &GigeSettings) -> Result<Box<dyn FrameSource>, OpenError> {
    Ok(Box::new(gige::GigeSource::open(id, settings.clone())?))
}

#[cfg(not(feature = "gige"))]
fn open_gige(id: &str, _: &GigeSettings) -> Result<Box<dyn FrameSource>, OpenError> {
    Err(OpenError::NotBuilt {
        spec: format!("gige:{id}"),
        kind: "GigE",
        feature: "gige",
    })
}

#[cfg(feature = "usb")]
fn open_usb(spec: &str, settings: &UsbSettings) -> Result<Box<dyn FrameSource>, OpenError> {
    Ok(Box::new(usb::UsbSource::open(spec, settings.clone())?))
}

#[cfg(not(feature = "usb"))]
fn open_usb(spec: &str, _: &UsbSettings) -> Result<Box<dyn FrameSource>, OpenError> {
    Err(OpenError::NotBuilt {
        spec: format!("usb:{spec}"),
        kind: "USB",
        feature: "usb",
    })
}

/// Cameras visible now, one line each (for `doctor`).
pub fn list_cameras() -> Vec<String> {
    #[allow(unused_mut)]
    let mut out = Vec::new();
    #[cfg(feature = "usb")]
    out.extend(usb::list());
    #[cfg(feature = "gige")]
    out.extend(gige::list());
    out
}
