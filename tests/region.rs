//! The inspection region: on hand-made maps and through calibrate and infer.

use std::path::Path;

use crate::util::*;

/// Hand-made maps: the maximum of the map lies on the border, a smaller peak inside. Without
/// a region the border peak is the score; with `--ignore-border` the inside one is, and the
/// heatmap shows the border dimmed.
#[test]
fn region_decides_score_verdict_and_heatmap_on_hand_made_maps() {
    use efficientad::judge::calibration::Calibration;
    use efficientad::judge::inspect::{MapsView, Part, Verdict, judge};
    use efficientad::judge::region::Region;
    let mut calibration: Calibration = serde_json::from_value(serde_json::json!({
        "format_version": 1, "model_name": "m", "model_sha256": "x", "provider": "cpu",
        "precision": "fp32",
        "validation": {"folder": "v", "images": 1, "failed": 0, "anomalous_folder": null,
                       "anomalous_images": 0},
        "normalization": {"st": {"q_a": 0.0, "q_b": 1.0}, "ae": {"q_a": 0.0, "q_b": 1.0}},
        "threshold": 0.1,
        "threshold_rule": {"rule": "false_reject_rate", "target": 0.01, "achieved": 0.0},
        "scores": {"count": 1, "min": 0.0, "median": 0.0, "p99": 0.0, "max": 0.0},
        "anomalous_scores": null, "created_by": "test"
    }))
    .expect("calibration JSON");
    // 640x640 image: 10 px per grid cell; map cell 0's centre at 45 px, cell 1's at 55 px.
    let mut st = vec![0.0f32; 56 * 56];
    st[0] = 10.0; // corner cell: combined 0.5·0.1·10 = 0.5, NG on its own
    st[20 * 56 + 30] = 1.0; // inside: 0.05, OK
    let ae = vec![0.0; 56 * 56];
    let maps = MapsView {
        st: &st,
        ae: &ae,
        side: 56,
    };
    let image = image::RgbImage::from_pixel(640, 640, image::Rgb([90, 120, 150]));
    let part = Part {
        name: std::path::Path::new("hand-made.png"),
        width: 640,
        height: 640,
        image: Some(&image),
    };
    let dir = temp_dir("region-hand");
    let mut combined = Vec::new();
    let whole = judge(maps, part, &calibration, &mut combined, None);
    assert!((whole.score - 0.5).abs() < 1e-6, "{}", whole.score);
    assert_eq!(whole.verdict, Verdict::Ng);

    calibration.inspected = Region::new(50, None).expect("region");
    let mut sink = efficientad::judge::inspect::HeatmapSink::new(&dir, true).expect("sink");
    let judged = judge(maps, part, &calibration, &mut combined, Some(&mut sink));
    assert!((judged.score - 0.05).abs() < 1e-6, "{}", judged.score);
    assert_eq!(judged.verdict, Verdict::Ok);
    // The kept map is the whole one (eval's pixel metrics use it).
    assert!((combined[0] - 0.5).abs() < 1e-6);
    let heat = image::open(judged.heatmap.expect("heatmap"))
        .expect("png")
        .to_rgb8();
    // Far inside the ignored border: the image dimmed to a third; in the middle: coloured.
    assert_eq!(heat.get_pixel(5, 320).0, [30, 40, 50]);
    assert_eq!(heat.get_pixel(320, 2).0, [30, 40, 50]);
    let middle = heat.get_pixel(320, 320).0;
    assert_ne!(middle, [30, 40, 50]);
    assert_ne!(middle, [90, 120, 150]);

    // A 150x150 frame with an 80-pixel border ignored: the region keeps no cell, so there is
    // no score and no verdict but ERROR with a reason (it used to answer NG with score null).
    calibration.inspected = Region::new(80, None).expect("region");
    let small = image::RgbImage::from_pixel(150, 150, image::Rgb([90, 120, 150]));
    let tiny = Part {
        name: std::path::Path::new("small.png"),
        width: 150,
        height: 150,
        image: Some(&small),
    };
    let judged = judge(maps, tiny, &calibration, &mut combined, None);
    assert_eq!(judged.verdict, Verdict::Error);
    let e = judged.error.expect("a reason");
    assert_eq!(e.kind().as_str(), "no_region");
    let e = e.to_string();
    assert!(
        e.contains("covers no map cell") && e.contains("150x150"),
        "{e}"
    );
    // Maps holding NaN: ERROR too, with its own reason.
    calibration.inspected = Region::whole_image();
    let mut nan = st.clone();
    nan[100] = f32::NAN;
    let judged = judge(
        MapsView {
            st: &nan,
            ae: &ae,
            side: 56,
        },
        part,
        &calibration,
        &mut combined,
        None,
    );
    assert_eq!(judged.verdict, Verdict::Error);
    let e = judged.error.expect("a reason");
    assert_eq!(e.kind().as_str(), "nan_map");
    assert!(e.to_string().contains("NaN"));
}

/// `calibrate --ignore-border --roi` on real maps: quantiles and scores over the kept cells
/// only (checked against the definition written out above), the region recorded in the file,
/// applied by `infer`; a changed mask is refused at start.
#[test]
fn calibrate_region_is_recorded_and_applied_by_infer() {
    let bundle = small_bundle();
    let (dir, files) = image_folder("region-cal", &mtd().join("validation/good"), 8);
    // Hand-made ROI: white except the right quarter.
    let roi = dir.join("../region-roi.png");
    let mask =
        image::GrayImage::from_fn(100, 40, |x, _| image::Luma([if x < 75 { 255 } else { 0 }]));
    mask.save(&roi).expect("save mask");
    let cal_path = dir.join("../region-cal.json");
    let border = 20.0;
    let cal = calibrate(
        bundle,
        &dir,
        &cal_path,
        &[
            "--ignore-border",
            "20",
            "--roi",
            roi.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(cal["region"]["ignore_border_px"], 20);
    assert_eq!(cal["region"]["roi"]["width"], 100);
    let cells_of = |f: &Path| {
        let (w, h) = image::image_dimensions(f).expect("dims");
        reference_cells(w as usize, h as usize, border, Some(&mask))
    };
    let raw = reference_raw_maps(bundle, &files);
    let kept = |values: &[f32], cells: &[bool]| -> Vec<f32> {
        values
            .iter()
            .zip(cells)
            .filter(|(_, k)| **k)
            .map(|(v, _)| *v)
            .collect()
    };
    let mut st = Vec::new();
    let mut ae = Vec::new();
    for (f, (s, a)) in files.iter().zip(&raw) {
        let cells = cells_of(f);
        assert!(cells.iter().any(|&c| !c) && cells.iter().any(|&c| c));
        st.extend(kept(s, &cells));
        ae.extend(kept(a, &cells));
    }
    for (map, values) in [("st", &st), ("ae", &ae)] {
        for (key, q) in [("q_a", 0.9), ("q_b", 0.995)] {
            let got = cal["normalization"][map][key].as_f64().expect("quantile");
            let want = reference_quantile(values, q);
            assert!(close(got, want, 1e-5), "{map}.{key}: {got} vs {want}");
        }
    }

    let mut tests = first_files(&mtd().join("test/good"), 2);
    tests.extend(first_files(&mtd().join("test/blowhole"), 2));
    let output = run(efficientad()
        .args(["infer", "--provider", "cpu", "--model"])
        .arg(bundle)
        .arg("--calibration")
        .arg(&cal_path)
        .args(&tests));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let lines = json_lines(&output.stdout);
    let threshold = cal["threshold"].as_f64().expect("threshold");
    for ((line, f), (s, a)) in lines
        .iter()
        .zip(&tests)
        .zip(reference_raw_maps(bundle, &tests))
    {
        let combined = reference_combined(&s, &a, &cal);
        let want = combined
            .iter()
            .zip(cells_of(f))
            .filter(|(_, k)| *k)
            .map(|(v, _)| *v)
            .fold(f64::NEG_INFINITY, f64::max);
        let got = line["score"].as_f64().expect("score");
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{got} vs {want}"
        );
        assert_eq!(line["verdict"], if want > threshold { "NG" } else { "OK" });
    }

    // The mask changes after calibration: refused at start, naming the file.
    image::GrayImage::from_pixel(100, 40, image::Luma([255]))
        .save(&roi)
        .expect("overwrite mask");
    let output = run(efficientad()
        .args(["infer", "--provider", "cpu", "--model"])
        .arg(bundle)
        .arg("--calibration")
        .arg(&cal_path)
        .args(&tests));
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("region-roi.png") && stderr.contains("changed"),
        "{stderr}"
    );
}
