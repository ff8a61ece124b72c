//! `gige:<device id|first>`: GigE Vision (and USB3 Vision) cameras through aravis.
//!
//! Triggering: with stdin triggers the camera runs in software-trigger mode and each grab
//! fires one software trigger; with `--gige-trigger LineN` the camera's own input line fires
//! exposures and a grab waits for the next frame; in free-run mode the camera streams
//! continuously. Frames queued before a grab are returned to the camera unused, so the frame
//! judged is always exposed after the grab started.

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use aravis::prelude::*;
use aravis::{AcquisitionMode, Aravis, Buffer, BufferStatus, Camera, PixelFormat, Stream};

use super::convert::{Bayer, bayer8, mono8, rgb8};
use super::{Frame, FrameSource, GigeSettings, GigeTrigger, OpenError, SourceError};

/// Buffers handed to the stream.
const BUFFERS: usize = 4;
/// Software-triggered exposures tried per grab when frames arrive incomplete.
const MAX_EXPOSURES: u32 = 3;

fn aravis() -> Option<&'static Aravis> {
    static TOKEN: OnceLock<Option<Aravis>> = OnceLock::new();
    TOKEN.get_or_init(|| Aravis::initialize().ok()).as_ref()
}

/// GenICam devices visible now: (id, vendor, model, protocol, address).
pub fn list() -> Vec<String> {
    aravis()
        .map(|a| {
            a.get_device_list()
                .into_iter()
                .map(|d| {
                    format!(
                        "gige:{} ({} {}, {} at {})",
                        d.id.to_string_lossy(),
                        d.vendor.to_string_lossy(),
                        d.model.to_string_lossy(),
                        d.protocol.to_string_lossy(),
                        d.address.to_string_lossy()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

pub struct GigeSource {
    id: Option<String>,
    settings: GigeSettings,
    camera: Camera,
    stream: Stream,
    frames: u64,
    name: String,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

fn open_camera(
    id: Option<&str>,
    settings: &GigeSettings,
) -> Result<(Camera, Stream, String), String> {
    let token = aravis().ok_or("aravis could not be initialized")?;
    let devices = token.get_device_list();
    if devices.is_empty() {
        return Err(
            "no GigE Vision camera found (aravis discovery saw none on any interface)".into(),
        );
    }
    if let Some(id) = id
        && !devices.iter().any(|d| d.id.to_string_lossy() == id)
    {
        let ids: Vec<String> = devices
            .iter()
            .map(|d| d.id.to_string_lossy().into_owned())
            .collect();
        return Err(format!("no GigE camera with id `{id}`; found {ids:?}"));
    }
    let camera = Camera::new(id).map_err(err)?;
    if settings.udp_socket_only
        && let Some(gv) = camera
            .device()
            .and_then(|d| aravis::glib::object::Cast::downcast::<aravis::GvDevice>(d).ok())
    {
        gv.set_stream_options(aravis::GvStreamOption::PACKET_SOCKET_DISABLED);
    }
    if let Some(format) = &settings.pixel_format {
        camera
            .set_pixel_format_from_string(format)
            .map_err(|e| format!("pixel format {format}: {e}"))?;
    }
    if let Some(us) = settings.exposure_us {
        camera
            .set_exposure_time(us)
            .map_err(|e| format!("exposure {us} µs: {e}"))?;
    }
    if let Some(gain) = settings.gain {
        camera
            .set_gain(gain)
            .map_err(|e| format!("gain {gain}: {e}"))?;
    }
    if let Some(fps) = settings.frame_rate {
        camera
            .set_frame_rate(fps)
            .map_err(|e| format!("frame rate {fps}: {e}"))?;
    }
    camera
        .set_acquisition_mode(AcquisitionMode::Continuous)
        .map_err(err)?;
    match &settings.trigger {
        GigeTrigger::Free => camera.clear_triggers().map_err(err)?,
        GigeTrigger::Software => camera
            .set_trigger("Software")
            .map_err(|e| format!("software trigger: {e}"))?,
        GigeTrigger::Line(line) => camera
            .set_trigger(line)
            .map_err(|e| format!("trigger source {line}: {e}"))?,
    }
    let stream = camera.create_stream().map_err(err)?;
    let payload = camera.payload().map_err(err)? as usize;
    // A frame arrives as a burst of UDP packets; with aravis's default receive buffer (one
    // payload, less the kernel's per-packet overhead) the tail of a burst is dropped and the
    // frame times out incomplete. Ask for room for a few frames; the kernel caps it at
    // net.core.rmem_max (README: GigE tuning).
    if let Ok(gv) = aravis::glib::object::Cast::downcast::<aravis::GvStream>(stream.clone()) {
        let size = (payload.saturating_mul(4)).clamp(1 << 20, 64 << 20);
        gv.set_socket_buffer(aravis::GvStreamSocketBuffer::Fixed);
        gv.set_socket_buffer_size(i32::try_from(size).unwrap_or(i32::MAX));
    }
    for _ in 0..BUFFERS {
        stream.push_buffer(Buffer::new_allocate(payload));
    }
    camera.start_acquisition().map_err(err)?;
    let name = format!(
        "gige:{} ({} {})",
        camera
            .device_id()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        camera
            .vendor_name()
            .map(|s| s.to_string())
            .unwrap_or_default(),
        camera
            .model_name()
            .map(|s| s.to_string())
            .unwrap_or_default()
    );
    Ok((camera, stream, name))
}

impl GigeSource {
    /// `id` is a device id, or `first`.
    pub fn open(id: &str, settings: GigeSettings) -> Result<Self, OpenError> {
        let id = (id != "first").then(|| id.to_string());
        let (camera, stream, name) =
            open_camera(id.as_deref(), &settings).map_err(OpenError::Camera)?;
        Ok(Self {
            id,
            settings,
            camera,
            stream,
            frames: 0,
            name,
        })
    }

    fn convert(buffer: &Buffer) -> Result<image::RgbImage, SourceError> {
        let (w, h) = (
            buffer.image_width() as usize,
            buffer.image_height() as usize,
        );
        let data = buffer.image_data();
        let format = buffer.image_pixel_format();
        let image = match format {
            PixelFormat::MONO_8 => mono8(&data, w, h),
            PixelFormat::RGB_8_PACKED => rgb8(&data, w, h),
            PixelFormat::BAYER_RG_8 => bayer8(&data, w, h, Bayer::Rggb),
            PixelFormat::BAYER_BG_8 => bayer8(&data, w, h, Bayer::Bggr),
            PixelFormat::BAYER_GR_8 => bayer8(&data, w, h, Bayer::Grbg),
            PixelFormat::BAYER_GB_8 => bayer8(&data, w, h, Bayer::Gbrg),
            other => {
                return Err(SourceError::BadFrame(format!(
                    "pixel format 0x{:08x} is not supported; set the camera to Mono8, RGB8 or Bayer*8 (--gige-pixel-format)",
                    other.raw()
                )));
            }
        };
        image.ok_or_else(|| {
            SourceError::BadFrame(format!(
                "frame of {} bytes is short for {w}x{h}",
                data.len()
            ))
        })
    }
}

impl FrameSource for GigeSource {
    fn grab(&mut self, timeout: Duration) -> Result<Frame, SourceError> {
        // Give back frames exposed before this grab.
        while let Some(stale) = self.stream.try_pop_buffer() {
            self.stream.push_buffer(stale);
        }
        let started = Instant::now();
        let deadline = started + timeout;
        let software = self.settings.trigger == GigeTrigger::Software;
        let mut exposures = 0;
        let (buffer, result) = loop {
            if software {
                self.camera.software_trigger().map_err(|e| {
                    SourceError::Disconnected(format!("software trigger failed: {e}"))
                })?;
                exposures += 1;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            let Some(buffer) = self.stream.timeout_pop_buffer(wait.as_micros() as u64) else {
                // Silence: tell a dead camera from a slow one by asking it something.
                return match self.camera.payload() {
                    Ok(_) => Err(SourceError::Timeout(timeout)),
                    Err(e) => Err(SourceError::Disconnected(e.to_string())),
                };
            };
            let status = buffer.status();
            if status == BufferStatus::Success {
                let result = Self::convert(&buffer);
                break (buffer, result);
            }
            // Lost packets: with a software trigger the part is still in place, so expose it
            // again while time is left; a line-triggered or free-running camera cannot be asked.
            if software && exposures < MAX_EXPOSURES && Instant::now() < deadline {
                self.stream.push_buffer(buffer);
                continue;
            }
            let result = Err(SourceError::BadFrame(format!(
                "camera delivered an incomplete frame ({status:?}){}",
                if exposures > 1 {
                    format!(" {exposures} times")
                } else {
                    String::new()
                }
            )));
            break (buffer, result);
        };
        self.stream.push_buffer(buffer);
        self.frames += 1;
        let captured = Instant::now().max(started);
        Ok(Frame {
            image: result?,
            captured,
            captured_at: SystemTime::now(),
            index: self.frames,
            origin: self.name.clone(),
        })
    }

    fn reconnect(&mut self) -> Result<(), SourceError> {
        let _ = self.camera.stop_acquisition();
        let (camera, stream, name) =
            open_camera(self.id.as_deref(), &self.settings).map_err(SourceError::Disconnected)?;
        self.camera = camera;
        self.stream = stream;
        self.name = name;
        Ok(())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

impl Drop for GigeSource {
    fn drop(&mut self) {
        let _ = self.camera.stop_acquisition();
    }
}
