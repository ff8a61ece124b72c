//! Preprocessing: any image the `image` crate reads → RGB8 at the network's input size.
//!
//! One function serves the runtime and the training crate, so the pixels a model is trained on
//! and the pixels it is judged on go through exactly the same decode, colour conversion and
//! resize (a resize that differs between training and deployment is a known accuracy loss).
//! The resize is fast_image_resize's bilinear convolution; the aspect ratio is not kept
//! (docs/method.md: training images are resized to 256x256).

use std::path::{Path, PathBuf};

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, RgbImage};

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not an image this runtime can decode (JPEG, PNG, BMP, TIFF): {source}")]
    Decode {
        path: PathBuf,
        source: image::ImageError,
    },
    #[error(
        "{path} is not an image this runtime can decode (JPEG, PNG, BMP, TIFF): unknown file format"
    )]
    UnknownFormat { path: PathBuf },
    #[error("{path} is an empty file (0 bytes)")]
    EmptyFile { path: PathBuf },
    #[error(
        "{path} is a truncated JPEG (no end-of-image marker): the file was cut short while being written or copied"
    )]
    TruncatedJpeg { path: PathBuf },
    #[error("{path} has zero size ({width}x{height})")]
    Empty {
        path: PathBuf,
        width: u32,
        height: u32,
    },
    #[error("frame of {width}x{height} pixels with {bytes} bytes of RGB: nothing to judge")]
    BadPixels {
        width: u32,
        height: u32,
        bytes: usize,
    },
    #[error("resizing failed: {0}")]
    Resize(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Reads and decodes an image file, whatever its extension says.
pub fn decode_file(path: &Path) -> Result<DynamicImage, PreprocessError> {
    let bytes = std::fs::read(path).map_err(|e| PreprocessError::Read {
        path: path.to_owned(),
        source: e,
    })?;
    decode_bytes(&bytes, path)
}

/// Decodes an encoded image held in memory; `path` only names it in errors.
///
/// The JPEG decoder conceals a missing tail by filling in grey; a part judged on half an image
/// is not judged at all, so a JPEG without its end-of-image marker is refused here.
pub fn decode_bytes(bytes: &[u8], path: &Path) -> Result<DynamicImage, PreprocessError> {
    if bytes.is_empty() {
        return Err(PreprocessError::EmptyFile {
            path: path.to_owned(),
        });
    }
    if bytes.starts_with(&[0xFF, 0xD8]) && !has_jpeg_end(bytes) {
        return Err(PreprocessError::TruncatedJpeg {
            path: path.to_owned(),
        });
    }
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|source| PreprocessError::Read {
            path: path.to_owned(),
            source,
        })?;
    if reader.format().is_none() {
        return Err(PreprocessError::UnknownFormat {
            path: path.to_owned(),
        });
    }
    let image = reader.decode().map_err(|source| PreprocessError::Decode {
        path: path.to_owned(),
        source,
    })?;
    if image.width() == 0 || image.height() == 0 {
        return Err(PreprocessError::Empty {
            path: path.to_owned(),
            width: image.width(),
            height: image.height(),
        });
    }
    Ok(image)
}

/// Whether the JPEG end-of-image marker (FF D9) is among the last bytes; some writers append
/// a little padding after it.
fn has_jpeg_end(bytes: &[u8]) -> bool {
    let tail = &bytes[bytes.len().saturating_sub(64)..];
    tail.windows(2).any(|w| w == [0xFF, 0xD9])
}

/// Converts any decoded image to RGB8: gray is expanded, alpha dropped, 16-bit scaled to 8-bit.
pub fn to_rgb8(image: DynamicImage) -> RgbImage {
    match image {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.to_rgb8(),
    }
}

/// Resizes RGB8 images to a square size, reusing its resizer state between calls.
pub struct Preprocessor {
    size: u32,
    resizer: Resizer,
    options: ResizeOptions,
}

impl Preprocessor {
    pub fn new(size: usize) -> Self {
        Self {
            size: size as u32,
            resizer: Resizer::new(),
            options: ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
        }
    }

    /// Output side length.
    pub fn size(&self) -> usize {
        self.size as usize
    }

    /// Resizes packed RGB8 pixels (`width`x`height`) into `out` (`size`²·3 bytes, HWC).
    pub fn resize_rgb(
        &mut self,
        rgb: &[u8],
        width: u32,
        height: u32,
        out: &mut [u8],
    ) -> Result<(), PreprocessError> {
        // A camera can hand over an empty or short buffer; fast_image_resize would turn an
        // empty one into an all-black input, which would then get a verdict.
        if width == 0 || height == 0 || rgb.len() != width as usize * height as usize * 3 {
            return Err(PreprocessError::BadPixels {
                width,
                height,
                bytes: rgb.len(),
            });
        }
        fn err(e: impl std::error::Error + Send + Sync + 'static) -> PreprocessError {
            PreprocessError::Resize(Box::new(e))
        }
        let src = ImageRef::new(width, height, rgb, PixelType::U8x3).map_err(err)?;
        let mut dst =
            Image::from_slice_u8(self.size, self.size, out, PixelType::U8x3).map_err(err)?;
        if width == self.size && height == self.size {
            out_copy(rgb, &mut dst);
            return Ok(());
        }
        self.resizer
            .resize(&src, &mut dst, &self.options)
            .map_err(err)
    }

    /// Decoded image → network input (`size`²·3 bytes, RGB, HWC) in `out`.
    pub fn prepare(&mut self, image: DynamicImage, out: &mut [u8]) -> Result<(), PreprocessError> {
        let rgb = to_rgb8(image);
        let (w, h) = rgb.dimensions();
        self.resize_rgb(rgb.as_raw(), w, h, out)
    }

    /// Convenience: a new buffer holding the network input for `image`.
    pub fn prepare_vec(&mut self, image: DynamicImage) -> Result<Vec<u8>, PreprocessError> {
        let mut out = vec![0; self.size() * self.size() * 3];
        self.prepare(image, &mut out)?;
        Ok(out)
    }
}

fn out_copy(rgb: &[u8], dst: &mut Image<'_>) {
    let buf = dst.buffer_mut();
    let n = buf.len().min(rgb.len());
    buf[..n].copy_from_slice(&rgb[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_errors_keep_the_decoders_error_as_their_source() {
        use std::error::Error;
        // A PNG signature followed by garbage: the PNG decoder's own error is the source.
        let bytes = b"\x89PNG\r\n\x1a\nnot a real png at all";
        let e = decode_bytes(bytes, Path::new("x.png")).expect_err("garbage");
        assert!(matches!(e, PreprocessError::Decode { .. }), "{e}");
        let source = e.source().expect("the decoder's error");
        assert!(source.downcast_ref::<image::ImageError>().is_some());
        assert!(e.to_string().contains(&source.to_string()), "{e}");
        let e = decode_file(Path::new("/no/such/file.png")).expect_err("missing");
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(io.map(|e| e.kind()), Some(std::io::ErrorKind::NotFound));
    }

    #[test]
    fn gray16_and_rgba_become_rgb8() {
        // 16-bit levels scale linearly to 8-bit (v·255/65535, rounded), not by a shift and
        // not by clipping: 1000 is 4 (a shift gives 3), 50000 is 195 (a shift gives 195 too,
        // clipping 255), 257 is 1.
        let levels = [0u16, 257, 1000, 32896, 50000, 65535];
        let gray = image::ImageBuffer::<image::Luma<u16>, _>::from_fn(6, 2, |x, _| {
            image::Luma([levels[x as usize]])
        });
        let rgb = to_rgb8(DynamicImage::ImageLuma16(gray));
        assert_eq!(rgb.dimensions(), (6, 2));
        for (x, &v) in levels.iter().enumerate() {
            let want = (f64::from(v) * 255.0 / 65535.0).round() as u8;
            assert_eq!(rgb.get_pixel(x as u32, 1).0, [want; 3], "level {v}");
        }
        assert_eq!(rgb.get_pixel(2, 0).0, [4; 3]);
        let rgba = image::RgbaImage::from_pixel(2, 2, image::Rgba([10, 20, 30, 0]));
        let rgb = to_rgb8(DynamicImage::ImageRgba8(rgba));
        assert_eq!(rgb.get_pixel(1, 1).0, [10, 20, 30]);
    }

    #[test]
    fn empty_and_short_frames_are_refused_not_judged() {
        let mut p = Preprocessor::new(8);
        let mut out = vec![0u8; 8 * 8 * 3];
        for (w, h, len) in [(0, 0, 0), (0, 5, 0), (4, 4, 47), (4, 4, 0)] {
            let e = p
                .resize_rgb(&vec![9; len], w, h, &mut out)
                .expect_err("refused");
            assert!(e.to_string().contains("nothing to judge"), "{e}");
        }
        assert!(p.resize_rgb(&[9; 48], 4, 4, &mut out).is_ok());
    }

    #[test]
    fn constant_image_stays_constant_after_resize() {
        let mut p = Preprocessor::new(8);
        let img = DynamicImage::ImageRgb8(RgbImage::from_pixel(37, 19, image::Rgb([7, 99, 200])));
        let out = p.prepare_vec(img).expect("resize");
        assert_eq!(out.len(), 8 * 8 * 3);
        assert!(out.chunks(3).all(|px| px == [7, 99, 200]));
    }

    #[test]
    fn truncated_jpeg_and_empty_file_are_refused() {
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::from_pixel(64, 64, image::Rgb([1, 2, 3])))
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .expect("encode");
        assert!(decode_bytes(&jpeg, Path::new("ok.jpg")).is_ok());
        let cut = &jpeg[..jpeg.len() / 2];
        let err = decode_bytes(cut, Path::new("cut.jpg")).expect_err("cut JPEG accepted");
        assert!(
            matches!(err, PreprocessError::TruncatedJpeg { .. }),
            "{err}"
        );
        let err = decode_bytes(&[], Path::new("empty.png")).expect_err("empty file accepted");
        assert!(err.to_string().contains("empty file"), "{err}");
    }

    #[test]
    fn garbage_is_a_decode_error_naming_the_file() {
        let err =
            decode_bytes(b"not an image at all", Path::new("x.jpg")).expect_err("text accepted");
        assert!(err.to_string().contains("x.jpg"), "{err}");
    }
}
