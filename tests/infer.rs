//! `efficientad infer`: scores, maps and heatmaps against independent references; hostile
//! images; image formats; setup errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use efficientad::model::preprocess::{Preprocessor, decode_file};
use serde_json::Value;

use crate::util::*;

/// Zero-pad by 4, then bilinear (half-pixel) resize, one output pixel at a time.
fn reference_full_map(map: &[f64], size: usize, width: usize, height: usize) -> Vec<f64> {
    let p = size + 8;
    let at = |x: usize, y: usize| -> f64 {
        if (4..size + 4).contains(&x) && (4..size + 4).contains(&y) {
            map[(y - 4) * size + x - 4]
        } else {
            0.0
        }
    };
    let src = |i: usize, dst: usize| -> (usize, usize, f64) {
        let x = ((i as f64 + 0.5) * p as f64 / dst as f64 - 0.5).max(0.0);
        let x0 = (x.floor() as usize).min(p - 1);
        (x0, (x0 + 1).min(p - 1), x - x0 as f64)
    };
    let mut out = Vec::with_capacity(width * height);
    for y in 0..height {
        let (y0, y1, ty) = src(y, height);
        for x in 0..width {
            let (x0, x1, tx) = src(x, width);
            let top = at(x0, y0) * (1.0 - tx) + at(x1, y0) * tx;
            let bottom = at(x0, y1) * (1.0 - tx) + at(x1, y1) * tx;
            out.push(top * (1.0 - ty) + bottom * ty);
        }
    }
    out
}

#[test]
fn infer_scores_and_heatmaps_match_a_reference() {
    let bundle = small_bundle();
    let (cal_dir, _) = image_folder("infer-cal", &mtd().join("validation/good"), 10);
    let cal_path = cal_dir.join("../infer-cal.json");
    let cal = calibrate(bundle, &cal_dir, &cal_path, &[]);
    let mut files = first_files(&mtd().join("test/good"), 3);
    files.extend(first_files(&mtd().join("test/crack"), 2));
    files.extend(first_files(&mtd().join("test/blowhole"), 2));
    let heat = temp_dir("infer-heat");
    let output = run(efficientad()
        .args([
            "infer",
            "--provider",
            "cpu",
            "--batch",
            "2",
            "--all-heatmaps",
            "--model",
        ])
        .arg(bundle)
        .arg("--calibration")
        .arg(&cal_path)
        .arg("--heatmaps")
        .arg(&heat)
        .args(&files));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines = json_lines(&output.stdout);
    assert_eq!(lines.len(), files.len());
    let raw = reference_raw_maps(bundle, &files);
    let threshold = cal["threshold"].as_f64().expect("threshold");
    for ((line, file), (st, ae)) in lines.iter().zip(&files).zip(&raw) {
        assert_eq!(line["path"], file.display().to_string());
        let combined = reference_combined(st, ae, &cal);
        let want = combined.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let got = line["score"].as_f64().expect("score");
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{}: score {got} vs {want}",
            file.display()
        );
        let verdict = if want > threshold { "NG" } else { "OK" };
        assert_eq!(line["verdict"], verdict, "{}", file.display());
        assert_eq!(line["threshold"].as_f64(), Some(threshold));

        // Heatmap: original size, and the library's full-size map equals the plain reference.
        let (w, h) = image::image_dimensions(file).expect("dims");
        let png = PathBuf::from(line["heatmap"].as_str().expect("heatmap path"));
        assert_eq!(image::image_dimensions(&png).expect("heatmap png"), (w, h));
        let combined_f32: Vec<f32> = combined.iter().map(|&v| v as f32).collect();
        let full =
            efficientad::judge::anomaly::to_image_size(&combined_f32, 56, w as usize, h as usize);
        let reference = reference_full_map(&combined, 56, w as usize, h as usize);
        let max_err = full
            .iter()
            .zip(&reference)
            .map(|(a, b)| (f64::from(*a) - b).abs())
            .fold(0.0, f64::max);
        assert!(max_err < 1e-5, "full-size map differs by {max_err}");
        // Every pixel of the overlay: the image blended half and half with the jet colour of
        // map / (2·threshold), written out here from the colormap's definition.
        let original = image::open(file).expect("image").to_rgb8();
        let overlay = image::open(&png).expect("heatmap png").to_rgb8();
        let jet = |t: f64| -> [f64; 3] {
            let t = t.clamp(0.0, 1.0);
            [3.0, 2.0, 1.0]
                .map(|c: f64| ((1.5 - (4.0 * t - c).abs()).clamp(0.0, 1.0) * 255.0).round())
        };
        let mut worst = 0.0f64;
        for ((got, image), &v) in overlay.pixels().zip(original.pixels()).zip(&reference) {
            let colour = jet(v * 0.5 / threshold);
            for ((&g, &i), c) in got.0.iter().zip(&image.0).zip(colour) {
                let want = (f64::from(i) * 0.5 + c * 0.5).round();
                worst = worst.max((f64::from(g) - want).abs());
            }
        }
        // ±1: rounding of f32 against f64 at the half-way points.
        assert!(
            worst <= 1.0,
            "{}: overlay pixel off by {worst}",
            png.display()
        );
        let t = &line["timings_ms"];
        for key in [
            "decode_ms",
            "resize_ms",
            "inference_ms",
            "maps_ms",
            "total_ms",
        ] {
            assert!(
                t[key].as_f64().is_some_and(|v| v >= 0.0),
                "{key} missing in {line}"
            );
        }
    }
}

/// A PNG whose header says 0x0 pixels (CRC-correct, so only the size is wrong).
fn zero_sized_png() -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 8, 2, 0, 0, 0]);
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    png.extend_from_slice(&0u32.to_be_bytes());
    png.extend_from_slice(b"IEND");
    png.extend_from_slice(&crc32(b"IEND").to_be_bytes());
    png
}

#[test]
fn bad_images_get_error_lines_and_the_run_goes_on() {
    let bundle = small_bundle();
    let (cal_dir, _) = image_folder("bad-cal", &mtd().join("validation/good"), 6);
    let cal_path = cal_dir.join("../bad-cal.json");
    calibrate(bundle, &cal_dir, &cal_path, &[]);
    let dir = temp_dir("bad-inputs");
    let good = first_files(&mtd().join("test/good"), 2);
    let jpeg = std::fs::read(&good[0]).expect("jpeg");
    let cases = [
        ("text.jpg", b"this is not an image".to_vec(), "not an image"),
        (
            "truncated.jpg",
            jpeg[..jpeg.len() / 2].to_vec(),
            "truncated JPEG",
        ),
        ("empty.png", Vec::new(), "empty file"),
        ("zero.png", zero_sized_png(), "zero.png"),
    ];
    let mut args: Vec<PathBuf> = vec![good[0].clone()];
    for (name, bytes, _) in &cases {
        let p = dir.join(name);
        std::fs::write(&p, bytes).expect("write case");
        args.push(p);
    }
    args.push(good[1].clone());
    let output = run(efficientad()
        .args(["infer", "--provider", "cpu", "--batch", "2", "--model"])
        .arg(bundle)
        .arg("--calibration")
        .arg(&cal_path)
        .args(&args));
    assert_eq!(
        output.status.code(),
        Some(1),
        "exit status must say some images failed"
    );
    let lines = json_lines(&output.stdout);
    assert_eq!(
        lines.len(),
        args.len(),
        "one line per input, even for failures"
    );
    assert_ne!(lines[0]["verdict"], "ERROR");
    assert_ne!(
        lines[5]["verdict"], "ERROR",
        "the run must go on after bad files"
    );
    for (line, (name, _, needle)) in lines[1..5].iter().zip(&cases) {
        assert_eq!(line["verdict"], "ERROR", "{name}");
        let error = line["error"].as_str().expect("error text");
        assert!(
            error.contains(name) && error.contains(needle),
            "{name}: {error}"
        );
        assert!(
            line.get("score").is_none(),
            "an ERROR line carries no score"
        );
    }
    assert!(!text(&output.stderr).contains("panicked"));
}

#[test]
fn eight_and_sixteen_bit_gray_and_rgba_images_are_judged() {
    let bundle = small_bundle();
    let (cal_dir, _) = image_folder("formats-cal", &mtd().join("validation/good"), 6);
    let cal_path = cal_dir.join("../formats-cal.json");
    calibrate(bundle, &cal_dir, &cal_path, &[]);
    let dir = temp_dir("formats");
    let gray16 = image::ImageBuffer::from_fn(300, 200, |x, y| {
        image::Luma([((x * 200 + y) % 65536) as u16])
    });
    image::DynamicImage::ImageLuma16(gray16)
        .save(dir.join("gray16.png"))
        .expect("png");
    let rgba = image::RgbaImage::from_fn(123, 77, |x, y| image::Rgba([x as u8, y as u8, 100, 128]));
    rgba.save(dir.join("rgba.png")).expect("png");
    let gray8 = image::GrayImage::from_fn(64, 500, |x, y| image::Luma([(x + y) as u8]));
    gray8.save(dir.join("gray8.bmp")).expect("bmp");
    let output = run(efficientad()
        .args(["infer", "--provider", "cpu", "--model"])
        .arg(bundle)
        .arg("--calibration")
        .arg(&cal_path)
        .arg(&dir));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines = json_lines(&output.stdout);
    let sizes: Vec<(u64, u64)> = lines
        .iter()
        .map(|l| {
            (
                l["width"].as_u64().expect("w"),
                l["height"].as_u64().expect("h"),
            )
        })
        .collect();
    // Sorted by name: gray16.png, gray8.bmp, rgba.png.
    assert_eq!(sizes, vec![(300, 200), (64, 500), (123, 77)]);
}

#[test]
fn setup_errors_are_refused_at_start_with_advice() {
    let bundle = small_bundle();
    let (cal_dir, _) = image_folder("setup-cal", &mtd().join("validation/good"), 6);
    let cal_path = cal_dir.join("../setup-cal.json");
    calibrate(bundle, &cal_dir, &cal_path, &[]);
    let image = first_files(&mtd().join("test/good"), 1).remove(0);
    let infer = |model: &Path, cal: &Path| {
        run(efficientad()
            .args(["infer", "--provider", "cpu", "--model"])
            .arg(model)
            .arg("--calibration")
            .arg(cal)
            .arg(&image))
    };
    let expect_refusal = |output: std::process::Output, needle: &str| {
        let stderr = text(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
        assert!(
            output.stdout.is_empty(),
            "nothing may be judged after a setup error"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    };

    // A calibration of another model.
    let other = temp_dir("other-model");
    export_random(&other, 99, 32);
    expect_refusal(infer(&other, &cal_path), "was made for another model");

    // A bundle missing a file.
    let partial = temp_dir("partial-bundle");
    std::fs::copy(bundle.join("model.onnx"), partial.join("model.onnx")).expect("copy");
    expect_refusal(infer(&partial, &cal_path), "is missing model.json");

    // A graph modified after export.
    let modified = temp_dir("modified-bundle");
    let mut bytes = std::fs::read(bundle.join("model.onnx")).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(modified.join("model.onnx"), bytes).expect("write");
    std::fs::copy(bundle.join("model.json"), modified.join("model.json")).expect("copy");
    expect_refusal(infer(&modified, &cal_path), "does not match its model.json");

    // A graph with the wrong inputs/outputs (consistent model.json, so only the contract fails).
    use efficientad::model::onnx_proto::{self as proto, DataType, Dim};
    let wrong = temp_dir("wrong-graph");
    let node = proto::node("Relu", "relu", &["x"], &["map_st"], &[]);
    let x = proto::value_info(
        "x",
        DataType::Float,
        &[Dim::Named("N"), Dim::Fixed(56), Dim::Fixed(56)],
    );
    let y = proto::value_info(
        "map_st",
        DataType::Float,
        &[Dim::Named("N"), Dim::Fixed(56), Dim::Fixed(56)],
    );
    let graph = proto::graph("wrong", &[node], &[], &[x], &[y]);
    let onnx = proto::model(8, 17, "test", "0", &graph, &[]);
    std::fs::write(wrong.join("model.onnx"), &onnx).expect("write");
    let mut info: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("model.json")).expect("read"))
            .expect("json");
    info["model_sha256"] = Value::String(efficientad::model::bundle::sha256_hex(&onnx));
    std::fs::write(wrong.join("model.json"), info.to_string()).expect("write");
    let mut cal: Value =
        serde_json::from_str(&std::fs::read_to_string(&cal_path).expect("read")).expect("json");
    cal["model_sha256"] = info["model_sha256"].clone();
    let wrong_cal = wrong.join("cal.json");
    std::fs::write(&wrong_cal, cal.to_string()).expect("write");
    expect_refusal(
        infer(&wrong, &wrong_cal),
        "is not an EfficientAD deployment graph",
    );

    // An explicit provider this library cannot offer is an error, not a silent fallback.
    let output = run(efficientad()
        .args(["infer", "--provider", "cuda", "--model"])
        .arg(bundle)
        .arg("--calibration")
        .arg(&cal_path)
        .arg(&image));
    expect_refusal(output, "execution provider cuda is not usable");
}

#[test]
fn heatmaps_of_ng_parts_only_unless_all_are_asked_for() {
    let mut files = first_files(&mtd().join("test/good"), 3);
    files.extend(first_files(&mtd().join("test/crack"), 3));
    // A calibration whose threshold is the median score: some parts OK, some NG.
    let dir = temp_dir("ng-heatmaps");
    let cal_path = dir.join("median.json");
    threshold_below(&files, 3, &cal_path);
    let heat = dir.join("heat");
    let lines = infer_scores(
        &cal_path,
        &files,
        &["--heatmaps", heat.to_str().expect("utf-8")],
    );
    let ng: Vec<&Value> = lines.iter().filter(|l| l["verdict"] == "NG").collect();
    assert_eq!(ng.len(), 3, "{lines:?}");
    for line in &lines {
        let path = line.get("heatmap").and_then(Value::as_str);
        if line["verdict"] == "NG" {
            assert!(path.is_some_and(|p| Path::new(p).is_file()), "{line}");
        } else {
            assert!(path.is_none(), "an OK part got a heatmap: {line}");
        }
    }
    // PNGs only: the folder also holds the hidden index of the heatmaps written there.
    let pngs = |dir: &Path| {
        std::fs::read_dir(dir)
            .expect("heat dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".png"))
            })
            .count()
    };
    assert_eq!(pngs(&heat), 3, "only the NG parts' overlays are written");
    let all = dir.join("all");
    let lines = infer_scores(
        &cal_path,
        &files,
        &["--heatmaps", all.to_str().expect("utf-8"), "--all-heatmaps"],
    );
    assert!(lines.iter().all(|l| l["heatmap"].is_string()));
    assert_eq!(pngs(&all), 6);
}

/// The resize every model input goes through, against Pillow's bilinear resize (the filter
/// fast_image_resize's convolution follows, antialiasing when it shrinks): the same decoded
/// pixels (handed over as a lossless PNG) into both, up- and downscaled: every channel of
/// every pixel within ±1 (rounding).
#[test]
fn resize_matches_pillow_bilinear() {
    let dir = temp_dir("resize-pil");
    let mut files = first_files(&mtd().join("test/good"), 3);
    files.extend(first_files(&mtd().join("test/crack"), 2));
    let mut sizes = Vec::new();
    let mut pre = Preprocessor::new(256);
    let mut ours = Vec::new();
    for (i, f) in files.iter().enumerate() {
        // Tiles between 219 and 494 pixels a side: both directions of scaling.
        let decoded = decode_file(f).expect("decode").to_rgb8();
        sizes.push(decoded.dimensions());
        let png = dir.join(format!("{i}.png"));
        decoded.save(&png).expect("png");
        ours.push(
            pre.prepare_vec(image::DynamicImage::ImageRgb8(decoded))
                .expect("resize"),
        );
    }
    let script = format!(
        "import sys\nfrom PIL import Image\nfor i in range({}):\n    sys.stdout.buffer.write(Image.open('{}/%d.png' % i).convert('RGB').resize((256, 256), Image.BILINEAR).tobytes())\n",
        files.len(),
        dir.display()
    );
    let output = run(Command::new("python3").args(["-c", &script]));
    assert!(
        output.status.success(),
        "Pillow is needed for this reference (.ci/run installs it): {}",
        text(&output.stderr)
    );
    let pil = output.stdout;
    assert_eq!(pil.len(), files.len() * 256 * 256 * 3);
    for (i, (mine, theirs)) in ours.iter().zip(pil.chunks(256 * 256 * 3)).enumerate() {
        let diffs: Vec<i32> = mine
            .iter()
            .zip(theirs)
            .map(|(&a, &b)| (i32::from(a) - i32::from(b)).abs())
            .collect();
        let worst = diffs.iter().copied().max().unwrap_or(0);
        let off = diffs.iter().filter(|&&d| d > 1).count();
        assert!(
            worst <= 1,
            "{:?}: worst {worst}, {off} of {} channels differ by more than 1",
            sizes[i],
            diffs.len()
        );
    }
}
