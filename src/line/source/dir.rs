//! `dir:<folder>`: replays the image files of a folder as a camera at a set frame rate,
//! once or looping. Each grab decodes the next file when its frame time has come, so the
//! frame handed out is always made after the grab started. A file that cannot be decoded is
//! a bad frame (answered with ERROR), not the end of the source.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::{Frame, FrameSource, OpenError, SourceError};
use crate::model::preprocess::{decode_file, to_rgb8};
use crate::offline::images::{image_folder, list_images};

pub struct DirSource {
    folder: PathBuf,
    files: Vec<PathBuf>,
    period: Duration,
    looping: bool,
    next: usize,
    frames: u64,
    last: Option<Instant>,
}

impl DirSource {
    /// `fps` ≤ 0 means as fast as frames are asked for.
    pub fn open(folder: &Path, fps: f64, looping: bool) -> Result<Self, OpenError> {
        let files = image_folder(folder)?;
        Ok(Self {
            folder: folder.to_owned(),
            files,
            period: if fps > 0.0 {
                Duration::from_secs_f64(1.0 / fps)
            } else {
                Duration::ZERO
            },
            looping,
            next: 0,
            frames: 0,
            last: None,
        })
    }

    /// The files in replay order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}

impl FrameSource for DirSource {
    fn grab(&mut self, timeout: Duration) -> Result<Frame, SourceError> {
        if self.next >= self.files.len() {
            if !self.looping {
                return Err(SourceError::Exhausted);
            }
            self.next = 0;
        }
        // Pace to the frame rate, as a camera's exposure clock would.
        if let Some(last) = self.last {
            let due = last + self.period;
            let now = Instant::now();
            if due > now {
                let wait = due - now;
                if wait > timeout {
                    std::thread::sleep(timeout);
                    return Err(SourceError::Timeout(timeout));
                }
                std::thread::sleep(wait);
            }
        }
        let path = self.files[self.next].clone();
        self.next += 1;
        self.frames += 1;
        let captured = Instant::now();
        self.last = Some(captured);
        if !self.folder.is_dir() {
            // The "camera" itself is gone (folder unmounted, removed): a device loss.
            return Err(SourceError::Disconnected(format!(
                "{} is gone",
                self.folder.display()
            )));
        }
        let image = decode_file(&path).map_err(|e| SourceError::BadFrame(e.to_string()))?;
        Ok(Frame {
            image: to_rgb8(image),
            captured,
            captured_at: SystemTime::now(),
            index: self.frames,
            origin: path.display().to_string(),
        })
    }

    fn reconnect(&mut self) -> Result<(), SourceError> {
        let files = if self.folder.is_dir() {
            list_images(std::slice::from_ref(&self.folder)).unwrap_or_default()
        } else {
            Vec::new()
        };
        if files.is_empty() {
            return Err(SourceError::Disconnected(format!(
                "{} is gone or empty",
                self.folder.display()
            )));
        }
        self.files = files;
        self.next %= self.files.len();
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "dir:{} ({} images)",
            self.folder.display(),
            self.files.len()
        )
    }
}
