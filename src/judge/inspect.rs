//! The verdict step: raw maps of one image + calibration → combined map, score, OK/NG, and
//! the heatmap overlay when one is wanted.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Instant;

use image::RgbImage;
use serde::Serialize;

use crate::judge::anomaly::{score, to_image_size};
use crate::judge::calibration::Calibration;
use crate::judge::region::region_score;
use crate::ms;
use crate::offline::report::{HeatmapNames, PngError, overlay};

/// The answer for one part.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Verdict {
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "NG")]
    Ng,
    #[serde(rename = "ERROR")]
    Error,
}

/// Where and when heatmaps are written, and how much of the disk they may take.
pub struct HeatmapSink {
    pub dir: PathBuf,
    /// Write for every image, not only NG ones.
    pub all: bool,
    pub names: HeatmapNames,
    pub limits: HeatmapLimits,
    /// The folder's heatmaps, oldest first (those found at start, then those written).
    kept: VecDeque<(PathBuf, u64)>,
    bytes: u64,
    /// Heatmaps written and removed (oldest first, to stay within the limits) by this sink.
    pub written: u64,
    pub removed: u64,
}

/// How many heatmaps a folder may hold, and how many bytes; 0 = no limit. When a new one
/// would pass either, the oldest go first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeatmapLimits {
    pub max_files: usize,
    pub max_bytes: u64,
}

/// The file in a heatmap folder that lists the heatmaps written there, oldest first (hidden:
/// folder listings skip it).
pub const HEATMAP_INDEX: &str = ".efficientad-heatmaps";

/// Defaults of `--heatmaps-max-files` and `--heatmaps-max-mb`: at about 200 KB per overlay of
/// a 640x480 part, 1 GiB holds some 5,000 heatmaps — the NG parts of several shifts.
pub const DEFAULT_HEATMAP_MAX_FILES: usize = 10_000;
pub const DEFAULT_HEATMAP_MAX_MB: u64 = 1024;

impl Default for HeatmapLimits {
    fn default() -> Self {
        Self {
            max_files: DEFAULT_HEATMAP_MAX_FILES,
            max_bytes: DEFAULT_HEATMAP_MAX_MB << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot create heatmap folder {dir}: {source}")]
pub struct HeatmapDirError {
    pub dir: PathBuf,
    pub source: std::io::Error,
}

impl HeatmapSink {
    /// Creates `dir` (and its parents) and writes overlays there: of every part with `all`,
    /// else of NG parts only.
    pub fn new(dir: &Path, all: bool) -> Result<Self, HeatmapDirError> {
        Self::with_limits(dir, all, HeatmapLimits::default())
    }

    /// As [`HeatmapSink::new`] with `limits`. The heatmaps earlier runs wrote into `dir` count
    /// towards them, oldest first, so a restarted run keeps the folder bounded. Only files a
    /// sink wrote are ever removed: they are listed in the folder's [`HEATMAP_INDEX`]; other
    /// files in the folder (a user's own pictures) are never touched.
    pub fn with_limits(
        dir: &Path,
        all: bool,
        limits: HeatmapLimits,
    ) -> Result<Self, HeatmapDirError> {
        let err = |source: std::io::Error| HeatmapDirError {
            dir: dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(err)?;
        // The index lists, oldest first, the heatmaps written into this folder; those still
        // there are this sink's to manage. It is rewritten without the gone ones.
        let index = dir.join(HEATMAP_INDEX);
        let listed = match std::fs::read_to_string(&index) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(err(e)),
        };
        let mut seen = std::collections::HashSet::new();
        let kept: VecDeque<(PathBuf, u64)> = listed
            .lines()
            .filter(|name| !name.is_empty() && !name.contains('/') && seen.insert(*name))
            .filter_map(|name| {
                let path = dir.join(name);
                let m = std::fs::symlink_metadata(&path)
                    .ok()
                    .filter(|m| m.is_file())?;
                Some((path, m.len()))
            })
            .collect();
        let bytes = kept.iter().map(|(_, b)| b).sum();
        let mut sink = Self {
            dir: dir.to_owned(),
            all,
            names: HeatmapNames::default(),
            limits,
            kept,
            bytes,
            written: 0,
            removed: 0,
        };
        sink.enforce(0);
        sink.rewrite_index().map_err(err)?;
        Ok(sink)
    }

    /// The index as the kept heatmaps are now (written aside, then renamed over it).
    fn rewrite_index(&self) -> std::io::Result<()> {
        let mut text = String::new();
        for (path, _) in &self.kept {
            if let Some(name) = path.file_name() {
                text.push_str(&name.to_string_lossy());
                text.push('\n');
            }
        }
        let temp = self
            .dir
            .join(format!("{HEATMAP_INDEX}.{}", std::process::id()));
        std::fs::write(&temp, text)?;
        std::fs::rename(&temp, self.dir.join(HEATMAP_INDEX))
    }

    /// A sink when a folder is given (the commands' `--heatmaps DIR`), none otherwise.
    pub fn optional(
        dir: Option<&Path>,
        all: bool,
        limits: HeatmapLimits,
    ) -> Result<Option<Self>, HeatmapDirError> {
        dir.map(|d| Self::with_limits(d, all, limits)).transpose()
    }

    /// Bytes of the heatmaps the folder holds.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes one overlay under a fresh name, then removes the oldest heatmaps while the folder
    /// is over its limits (never the one just written).
    pub fn write(&mut self, input: &Path, image: &RgbImage) -> Result<PathBuf, PngError> {
        let path = self.names.write(&self.dir, input, image)?;
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        // Appended (one short line, atomic with O_APPEND) so a later run can bound it too.
        if let Some(name) = path.file_name() {
            use std::io::Write;
            let line = format!("{}\n", name.to_string_lossy());
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(HEATMAP_INDEX))
                .and_then(|mut f| f.write_all(line.as_bytes()));
            if let Err(e) = appended {
                crate::log_line!(
                    "efficientad: warning: cannot record heatmap {} in {}: {e}",
                    path.display(),
                    HEATMAP_INDEX
                );
            }
        }
        self.kept.push_back((path.clone(), size));
        self.bytes += size;
        self.written += 1;
        self.enforce(1);
        Ok(path)
    }

    /// Removes the oldest heatmaps, keeping at least the newest `keep`.
    fn enforce(&mut self, keep: usize) {
        let over = |s: &Self| {
            (s.limits.max_files > 0 && s.kept.len() > s.limits.max_files)
                || (s.limits.max_bytes > 0 && s.bytes > s.limits.max_bytes)
        };
        while self.kept.len() > keep && over(self) {
            let Some((path, size)) = self.kept.pop_front() else {
                break;
            };
            // Already gone (removed by a person) counts as removed too.
            let _ = std::fs::remove_file(&path);
            self.bytes = self.bytes.saturating_sub(size);
            self.removed += 1;
        }
    }
}

/// The two raw maps of one image, borrowed from wherever the engine left them.
#[derive(Clone, Copy)]
pub struct MapsView<'a> {
    pub st: &'a [f32],
    pub ae: &'a [f32],
    /// Side of the square maps.
    pub side: usize,
}

/// The part a map belongs to: its name (heatmap file names), its size in pixels (the region
/// and the heatmap are in image coordinates) and the image itself when an overlay may be drawn.
#[derive(Clone, Copy)]
pub struct Part<'a> {
    pub name: &'a Path,
    pub width: u32,
    pub height: u32,
    pub image: Option<&'a RgbImage>,
}

/// Score, verdict and heatmap of one image.
pub struct Judged {
    pub score: f32,
    /// `Error` (with [`Judged::error`]) when there is no score to judge: the inspection
    /// region covers no map cell of this image, or the maps hold NaN.
    pub verdict: Verdict,
    pub error: Option<NoVerdict>,
    pub heatmap: Option<PathBuf>,
    pub heatmap_error: Option<PngError>,
    pub maps_ms: f64,
}

/// Why an image has a score but no verdict.
#[derive(Clone, Debug, thiserror::Error)]
pub enum NoVerdict {
    #[error(
        "the inspection region covers no map cell of this {width}x{height} image; nothing to judge (check the calibration's --ignore-border / --roi against the frame size)"
    )]
    NoRegion { width: u32, height: u32 },
    #[error("the anomaly maps hold NaN; the model produced no number for this image")]
    NanMap,
}

impl NoVerdict {
    /// The answer's `error_kind`.
    pub fn kind(&self) -> crate::line::protocol::ErrorKind {
        use crate::line::protocol::ErrorKind;
        match self {
            NoVerdict::NoRegion { .. } => ErrorKind::NoRegion,
            NoVerdict::NanMap => ErrorKind::NanMap,
        }
    }
}

/// Judges one image; `combined` is a reused buffer and holds the whole combined map after.
pub fn judge(
    maps: MapsView<'_>,
    part: Part<'_>,
    calibration: &Calibration,
    combined: &mut Vec<f32>,
    heatmaps: Option<&mut HeatmapSink>,
) -> Judged {
    let t0 = Instant::now();
    calibration
        .normalization
        .combine_into(maps.st, maps.ae, combined);
    // `combined` stays the whole map (eval's pixel metrics are over the whole image); the
    // score and the heatmap see the inspection region only.
    let cells = (!calibration.inspected.is_whole_image()).then(|| {
        calibration
            .inspected
            .cells(maps.side, part.width as usize, part.height as usize)
    });
    let s = match &cells {
        Some(c) => region_score(combined, c),
        None => score(combined),
    };
    // No verdict without a score (docs/design.md: anything that prevents a verdict is ERROR).
    let error = s.is_nan().then(|| match &cells {
        Some(c) if !c.iter().any(|&keep| keep) => NoVerdict::NoRegion {
            width: part.width,
            height: part.height,
        },
        _ => NoVerdict::NanMap,
    });
    let verdict = if error.is_some() {
        Verdict::Error
    } else if calibration.is_anomalous(s) {
        Verdict::Ng
    } else {
        Verdict::Ok
    };
    let mut heatmap = None;
    let mut heatmap_error = None;
    if let (Some(sink), Some(image)) = (heatmaps, part.image)
        && (sink.all || verdict == Verdict::Ng)
    {
        let (w, h) = (part.width as usize, part.height as usize);
        let full = if cells.is_some() {
            calibration.inspected.display_map(combined, maps.side, w, h)
        } else {
            to_image_size(combined, maps.side, w, h)
        };
        let drawn = overlay(image, &full, calibration.threshold);
        match sink.write(part.name, &drawn) {
            Ok(path) => heatmap = Some(path),
            Err(e) => heatmap_error = Some(e),
        }
    }
    Judged {
        score: s,
        verdict,
        error,
        heatmap,
        heatmap_error,
        maps_ms: ms(t0.elapsed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two heatmaps of an earlier run and a limit of 3 files: writing 3 more removes the two
    /// old ones first, then the oldest of this run; the byte limit works the same way and never
    /// removes the heatmap just written; a user's own PNG in the folder is never touched.
    #[test]
    fn the_heatmap_folder_stays_within_its_limits_oldest_first() {
        let dir = std::env::temp_dir().join(format!("heatmap-limits-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let img = RgbImage::from_pixel(8, 8, image::Rgb([10, 200, 30]));
        img.save(dir.join("mine.png"))
            .expect("a user's own picture");
        std::fs::write(dir.join("notes.txt"), b"not a heatmap").expect("write");
        let unlimited = HeatmapLimits {
            max_files: 0,
            max_bytes: 0,
        };
        let mut earlier = HeatmapSink::with_limits(&dir, true, unlimited).expect("sink");
        let old: Vec<PathBuf> = (0..2)
            .map(|_| {
                earlier
                    .write(Path::new("cam/old.png"), &img)
                    .expect("write")
            })
            .collect();
        drop(earlier);
        let limits = HeatmapLimits {
            max_files: 3,
            max_bytes: 0,
        };
        let mut sink = HeatmapSink::with_limits(&dir, true, limits).expect("sink");
        let written: Vec<PathBuf> = (0..3)
            .map(|_| sink.write(Path::new("usb:0"), &img).expect("write"))
            .collect();
        assert_eq!((sink.written, sink.removed), (3, 2));
        assert!(
            old.iter().all(|p| !p.exists()),
            "the earlier run's go first"
        );
        assert!(written.iter().all(|p| p.exists()));
        assert!(dir.join("mine.png").exists() && dir.join("notes.txt").exists());
        let fourth = sink.write(Path::new("usb:0"), &img).expect("write");
        assert!(!written[0].exists() && fourth.exists());
        assert_eq!(sink.removed, 3);

        // Bytes: room for one file only; the newest always stays.
        let one = std::fs::metadata(&fourth).expect("size").len();
        let mut sink = HeatmapSink::with_limits(
            &dir,
            true,
            HeatmapLimits {
                max_files: 0,
                max_bytes: one,
            },
        )
        .expect("sink");
        assert_eq!(sink.removed, 2, "three listed, one fits");
        let last = sink.write(Path::new("usb:0"), &img).expect("write");
        assert!(last.exists() && !fourth.exists());
        assert_eq!(sink.bytes(), one);
        assert!(dir.join("mine.png").exists(), "never a file no sink wrote");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
