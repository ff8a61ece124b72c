//! Reports: heatmap overlays (a jet-coloured anomaly map blended over the image, at the
//! image's own resolution) and the names they are saved under.
//!
//! Colour scale: the map value is divided by twice the threshold, so the decision threshold
//! sits in the middle of the colormap (green-yellow); blue is clearly normal, red clearly
//! above the threshold. The same scale for every image keeps overlays comparable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::RgbImage;

/// Opacity of the heatmap over the image.
const ALPHA: f32 = 0.5;

/// The jet colormap at t ∈ [0, 1].
pub fn jet(t: f32) -> [u8; 3] {
    let t = if t.is_nan() { 1.0 } else { t.clamp(0.0, 1.0) };
    let channel =
        |centre: f32| ((1.5 - (4.0 * t - centre).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// Blends the full-size map (row-major, `image`'s size) over the image.
pub fn overlay(image: &RgbImage, map: &[f32], threshold: f64) -> RgbImage {
    let scale = if threshold > 0.0 {
        (0.5 / threshold) as f32
    } else {
        1.0
    };
    let mut out = image.clone();
    for (pixel, &v) in out.pixels_mut().zip(map) {
        // Outside the inspection region (NaN): the image, dimmed.
        if v.is_nan() {
            pixel.0.iter_mut().for_each(|c| *c /= 3);
            continue;
        }
        let c = jet(v * scale);
        for (channel, colour) in pixel.0.iter_mut().zip(c) {
            *channel =
                (f32::from(*channel) * (1.0 - ALPHA) + f32::from(colour) * ALPHA).round() as u8;
        }
    }
    out
}

/// Chooses the file name of each heatmap: `<parent folder>_<stem>.png`, `_2`, `_3`… for the
/// same input again in this process (a camera's frames all share one input name), and a name
/// with this process's own tag when an earlier process already wrote that one (every
/// connection of a socket-activated `run` is a new process into the same folder). One counter
/// per input name: choosing a name is O(1), whatever the folder holds.
pub struct HeatmapNames {
    next: HashMap<String, u64>,
    /// `<start time>-<pid>`: unique to this process.
    tag: String,
}

impl Default for HeatmapNames {
    fn default() -> Self {
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Self {
            next: HashMap::new(),
            tag: format!("{started}-{}", std::process::id()),
        }
    }
}

impl HeatmapNames {
    /// The names to try for the next heatmap of `input`, in order: the plain one, then this
    /// process's own (which no other process can take).
    pub fn candidates(&mut self, dir: &Path, input: &Path) -> [PathBuf; 2] {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let stem = input
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let parent = input
            .parent()
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().into_owned());
        let base = match parent {
            Some(p) if !p.is_empty() => format!("{}_{}", clean(&p), clean(&stem)),
            _ => clean(&stem),
        };
        let n = self.next.entry(base.clone()).or_insert(0);
        *n += 1;
        let plain = if *n == 1 {
            format!("{base}.png")
        } else {
            format!("{base}_{n}.png")
        };
        [
            dir.join(plain),
            dir.join(format!("{base}_{}_{n}.png", self.tag)),
        ]
    }

    /// Writes `image` as a PNG under the first free candidate name and returns it. The PNG is
    /// encoded in memory and written to a temporary file that is then linked to its name, which
    /// fails if the name exists: a heatmap never replaces another one, and a failed write (a
    /// full disk) leaves no empty or truncated PNG behind.
    pub fn write(
        &mut self,
        dir: &Path,
        input: &Path,
        image: &RgbImage,
    ) -> Result<PathBuf, PngError> {
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .map_err(PngError::Encode)?;
        let candidates = self.candidates(dir, input);
        let temp = dir.join(format!(".heatmap-{}.tmp", self.tag));
        std::fs::write(&temp, &png).map_err(|source| {
            let _ = std::fs::remove_file(&temp);
            PngError::Write {
                path: candidates[0].clone(),
                source,
            }
        })?;
        let mut result = Err(PngError::Taken {
            path: candidates[candidates.len() - 1].clone(),
        });
        for name in &candidates {
            match std::fs::hard_link(&temp, name) {
                Ok(()) => {
                    result = Ok(name.clone());
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    result = Err(PngError::Taken { path: name.clone() });
                }
                // A file system without hard links (FAT, some shares): create the name
                // exclusively and write it there, removing it again if the write fails.
                Err(_) => match write_new(name, &png) {
                    Ok(()) => {
                        result = Ok(name.clone());
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        result = Err(PngError::Taken { path: name.clone() });
                    }
                    Err(source) => {
                        result = Err(PngError::Write {
                            path: name.clone(),
                            source,
                        });
                        break;
                    }
                },
            }
        }
        let _ = std::fs::remove_file(&temp);
        result
    }
}

/// Why a PNG (a heatmap, a captured frame) could not be written under a fresh name.
#[derive(Debug, thiserror::Error)]
pub enum PngError {
    #[error("cannot encode a PNG: {0}")]
    Encode(#[source] image::ImageError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} exists")]
    Taken { path: PathBuf },
}

/// Writes `bytes` to a file that must not exist yet; a failed write removes it again.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(bytes).inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_runs_blue_to_red() {
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
        assert_eq!(jet(0.5), [128, 255, 128]);
    }

    #[test]
    fn names_never_clash() {
        let mut names = HeatmapNames::default();
        let [a, _] = names.candidates(Path::new("out"), Path::new("x/good/1.jpg"));
        let [b, own] = names.candidates(Path::new("out"), Path::new("y/good/1.jpg"));
        assert_eq!(a, Path::new("out/good_1.png"));
        assert_eq!(b, Path::new("out/good_1_2.png"));
        let own = own.to_string_lossy().into_owned();
        assert!(
            own.starts_with("out/good_1_")
                && own.ends_with(&format!("-{}_2.png", std::process::id())),
            "{own}"
        );
    }

    /// A second "process" (another set of names) writing into the same folder keeps every
    /// earlier heatmap: it takes its own names; no temporary file stays behind.
    #[test]
    fn heatmaps_of_a_second_run_never_replace_the_first_runs() {
        let dir = std::env::temp_dir().join(format!("heatmap-names-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let red = RgbImage::from_pixel(4, 4, image::Rgb([255, 0, 0]));
        let blue = RgbImage::from_pixel(4, 4, image::Rgb([0, 0, 255]));
        let camera = Path::new("usb:0");
        let mut first = HeatmapNames::default();
        let a = first.write(&dir, camera, &red).expect("write");
        let b = first.write(&dir, camera, &red).expect("write");
        let mut second = HeatmapNames {
            tag: "second".into(),
            ..HeatmapNames::default()
        };
        let c = second.write(&dir, camera, &blue).expect("write");
        let d = second.write(&dir, camera, &blue).expect("write");
        let all = [&a, &b, &c, &d];
        for (i, x) in all.iter().enumerate() {
            for y in &all[i + 1..] {
                assert_ne!(x, y);
            }
        }
        for (path, colour) in [
            (&a, [255, 0, 0]),
            (&b, [255, 0, 0]),
            (&c, [0, 0, 255]),
            (&d, [0, 0, 255]),
        ] {
            let img = image::open(path).expect("png").to_rgb8();
            assert_eq!(img.get_pixel(0, 0).0, colour, "{}", path.display());
        }
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.iter().all(|n| n.ends_with(".png")), "{names:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
