//! Reports: heatmap overlays (a jet-coloured anomaly map blended over the image, at the
//! image's own resolution) and the names they are saved under.
//!
//! Colour scale: the map value is divided by twice the threshold, so the decision threshold
//! sits in the middle of the colormap (green-yellow); blue is clearly normal, red clearly
//! above the threshold. The same scale for every image keeps overlays comparable.

use std::collections::HashSet;
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

/// Chooses a file name per input image inside one folder, never the same twice in a run:
/// `<parent folder>_<stem>.png`, with a counter appended on a clash.
#[derive(Default)]
pub struct HeatmapNames {
    used: HashSet<String>,
}

impl HeatmapNames {
    pub fn name_for(&mut self, dir: &Path, input: &Path) -> PathBuf {
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
        let mut name = format!("{base}.png");
        let mut k = 2;
        while !self.used.insert(name.clone()) {
            name = format!("{base}_{k}.png");
            k += 1;
        }
        dir.join(name)
    }
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
        let a = names.name_for(Path::new("out"), Path::new("x/good/1.jpg"));
        let b = names.name_for(Path::new("out"), Path::new("y/good/1.jpg"));
        assert_eq!(a, Path::new("out/good_1.png"));
        assert_eq!(b, Path::new("out/good_1_2.png"));
    }
}
