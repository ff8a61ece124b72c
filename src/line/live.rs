//! The most recent frame, for the people mounting and focusing a camera (`/frame.png` and the
//! status page of `run --http`): downscaled, with the inspection region drawn as the heatmaps
//! draw it (outside: the image dimmed).
//!
//! It costs nothing when nobody looks: the pipeline copies a frame only while someone has
//! asked for one within [`VIEW_WINDOW_MS`], and at most every [`INTERVAL_MS`]; the PNG is
//! encoded on the HTTP thread that asks.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use image::RgbImage;

use crate::judge::anomaly::MAP_PAD;
use crate::judge::region::Region;

/// A viewer keeps frames coming for this long after their last request.
pub const VIEW_WINDOW_MS: u64 = 10_000;
/// At most this often a frame is copied (4 per second).
pub const INTERVAL_MS: u64 = 250;
/// The stored frame's longer side, pixels.
pub const MAX_SIDE: u32 = 320;

/// A stored frame.
struct Still {
    image: RgbImage,
    /// The frame's own size (the region is defined on it).
    original: (u32, u32),
    /// Inspected map cells (`map_size`², row-major); None: the whole image.
    cells: Option<Vec<bool>>,
    map_size: usize,
}

pub struct LiveFrame {
    started: Instant,
    /// Milliseconds since `started` of the last request + 1 (0: never asked).
    viewed: AtomicU64,
    /// Milliseconds since `started` of the last copy + 1 (0: none yet).
    copied: AtomicU64,
    /// Frames copied so far (`efficientad_live_frames_total`).
    pub copies: AtomicU64,
    still: Mutex<Option<Still>>,
}

impl Default for LiveFrame {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            viewed: AtomicU64::new(0),
            copied: AtomicU64::new(0),
            copies: AtomicU64::new(0),
            still: Mutex::new(None),
        }
    }
}

impl LiveFrame {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64 + 1
    }

    /// Whether the pipeline should copy the frame it holds now.
    pub fn wanted(&self) -> bool {
        let now = self.now_ms();
        let viewed = self.viewed.load(Ordering::Relaxed);
        let copied = self.copied.load(Ordering::Relaxed);
        viewed > 0
            && now.saturating_sub(viewed) <= VIEW_WINDOW_MS
            && (copied == 0 || now.saturating_sub(copied) >= INTERVAL_MS)
    }

    /// Keeps a downscaled copy of `frame` if a viewer wants one (cheap otherwise: three
    /// atomic loads). `region` and `map_size` say which map cells are inspected.
    pub fn offer(&self, frame: &RgbImage, region: &Region, map_size: usize) {
        if !self.wanted() {
            return;
        }
        self.copied.store(self.now_ms(), Ordering::Relaxed);
        let (w, h) = frame.dimensions();
        if w == 0 || h == 0 {
            return;
        }
        let scale = (f64::from(MAX_SIDE) / f64::from(w.max(h))).min(1.0);
        let (sw, sh) = (
            ((f64::from(w) * scale).round() as u32).max(1),
            ((f64::from(h) * scale).round() as u32).max(1),
        );
        // Nearest pixel: a preview, and still(x, y) is exactly frame(x·w/sw, y·h/sh).
        let image = RgbImage::from_fn(sw, sh, |x, y| {
            *frame.get_pixel(
                (u64::from(x) * u64::from(w) / u64::from(sw)) as u32,
                (u64::from(y) * u64::from(h) / u64::from(sh)) as u32,
            )
        });
        let cells =
            (!region.is_whole_image()).then(|| region.cells(map_size, w as usize, h as usize));
        let still = Still {
            image,
            original: (w, h),
            cells,
            map_size,
        };
        if let Ok(mut slot) = self.still.lock() {
            *slot = Some(still);
        }
        self.copies.fetch_add(1, Ordering::Relaxed);
    }

    /// The latest frame as a PNG with the region drawn; None before the first frame. Marks a
    /// viewer, so frames keep coming while someone asks.
    pub fn png(&self) -> Option<Vec<u8>> {
        self.viewed.store(self.now_ms(), Ordering::Relaxed);
        let image = {
            let slot = self.still.lock().ok()?;
            let still = slot.as_ref()?;
            let mut image = still.image.clone();
            if let Some(cells) = &still.cells {
                dim_outside(&mut image, still.original, cells, still.map_size);
            }
            image
        };
        let mut png = Vec::new();
        image
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .ok()?;
        Some(png)
    }
}

/// Dims (÷3, as the heatmaps do) every pixel whose map cell is not inspected: the grid of
/// `map_size` + 2·MAP_PAD cells covers the original image, its outer ring never inspected.
fn dim_outside(image: &mut RgbImage, (w, h): (u32, u32), cells: &[bool], map_size: usize) {
    let grid = map_size + 2 * MAP_PAD;
    let (sw, sh) = image.dimensions();
    for (x, y, pixel) in image.enumerate_pixels_mut() {
        // The original pixel this one shows, and the grid cell that covers it.
        let ox = u64::from(x) * u64::from(w) / u64::from(sw);
        let oy = u64::from(y) * u64::from(h) / u64::from(sh);
        let gx = (ox as usize * grid / w as usize).min(grid - 1);
        let gy = (oy as usize * grid / h as usize).min(grid - 1);
        let inside = (MAP_PAD..MAP_PAD + map_size).contains(&gx)
            && (MAP_PAD..MAP_PAD + map_size).contains(&gy)
            && cells[(gy - MAP_PAD) * map_size + gx - MAP_PAD];
        if !inside {
            pixel.0.iter_mut().for_each(|c| *c /= 3);
        }
    }
}
