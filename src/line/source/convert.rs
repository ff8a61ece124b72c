//! Camera pixel formats → RGB8: Mono8 (gray expanded), RGB8, and 8-bit Bayer mosaics
//! (bilinear demosaic: each missing colour is the mean of the same-colour sites in the 3x3
//! neighbourhood).

use image::RgbImage;

/// Colour of the top-left 2x2 cell of a Bayer mosaic, row-major (e.g. RGGB = RG over GB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bayer {
    Rggb,
    Bggr,
    Grbg,
    Gbrg,
}

impl Bayer {
    /// Channel (0 = R, 1 = G, 2 = B) of the site at (x, y).
    fn channel(self, x: usize, y: usize) -> usize {
        let cell = match self {
            Bayer::Rggb => [0, 1, 1, 2],
            Bayer::Bggr => [2, 1, 1, 0],
            Bayer::Grbg => [1, 0, 2, 1],
            Bayer::Gbrg => [1, 2, 0, 1],
        };
        cell[(y % 2) * 2 + (x % 2)]
    }
}

/// Gray bytes → RGB.
pub fn mono8(data: &[u8], width: usize, height: usize) -> Option<RgbImage> {
    let px = data.get(..width * height)?;
    let rgb: Vec<u8> = px.iter().flat_map(|&v| [v, v, v]).collect();
    RgbImage::from_raw(width as u32, height as u32, rgb)
}

/// Packed RGB bytes → RGB.
pub fn rgb8(data: &[u8], width: usize, height: usize) -> Option<RgbImage> {
    RgbImage::from_raw(
        width as u32,
        height as u32,
        data.get(..width * height * 3)?.to_vec(),
    )
}

/// An 8-bit Bayer mosaic → RGB.
pub fn bayer8(data: &[u8], width: usize, height: usize, pattern: Bayer) -> Option<RgbImage> {
    let px = data.get(..width * height)?;
    let mut out = vec![0u8; width * height * 3];
    for y in 0..height {
        for x in 0..width {
            let mut sum = [0u32; 3];
            let mut count = [0u32; 3];
            for dy in -1i64..=1 {
                for dx in -1i64..=1 {
                    let (sx, sy) = (x as i64 + dx, y as i64 + dy);
                    if sx < 0 || sy < 0 || sx >= width as i64 || sy >= height as i64 {
                        continue;
                    }
                    let (sx, sy) = (sx as usize, sy as usize);
                    let c = pattern.channel(sx, sy);
                    sum[c] += u32::from(px[sy * width + sx]);
                    count[c] += 1;
                }
            }
            let own = pattern.channel(x, y);
            for c in 0..3 {
                out[(y * width + x) * 3 + c] = if c == own {
                    px[y * width + x]
                } else {
                    (sum[c] / count[c].max(1)) as u8
                };
            }
        }
    }
    RgbImage::from_raw(width as u32, height as u32, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_bayer_gives_uniform_colour() {
        // RGGB mosaic of a flat colour (R=200, G=100, B=50).
        let (w, h) = (6, 4);
        let data: Vec<u8> = (0..w * h)
            .map(|i| match Bayer::Rggb.channel(i % w, i / w) {
                0 => 200,
                1 => 100,
                _ => 50,
            })
            .collect();
        let img = bayer8(&data, w, h, Bayer::Rggb).expect("size");
        assert!(
            img.pixels().all(|p| p.0 == [200, 100, 50]),
            "{:?}",
            img.get_pixel(0, 0)
        );
        assert!(bayer8(&data[..5], w, h, Bayer::Rggb).is_none());
    }

    #[test]
    fn mono_expands() {
        let img = mono8(&[1, 2, 3, 4], 2, 2).expect("size");
        assert_eq!(img.get_pixel(1, 1).0, [4, 4, 4]);
    }
}
