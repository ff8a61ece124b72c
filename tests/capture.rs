//! `efficientad capture`: frames from a `dir:` source and from the fake GigE camera into the
//! dataset layout; the pixels `infer` would judge, a seeded split, names that never replace a
//! file, trigger lines answered in JSON, and a clean stop on SIGTERM.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use efficientad::model::preprocess::{decode_file, to_rgb8};

use crate::util::*;

/// The PNGs under `out/<split>`, by file name.
fn pngs(out: &Path, split: &str) -> Vec<PathBuf> {
    let dir = out.join(split);
    if !dir.is_dir() {
        return Vec::new();
    }
    sorted_files(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .collect()
}

/// The split draw written out independently: SplitMix64 from the seed, validation when the
/// 53-bit uniform is below the share.
fn expected_splits(seed: u64, share: f64, n: usize) -> Vec<&'static str> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            let u = (z >> 11) as f64 / 9007199254740992.0;
            if u < share {
                "validation/good"
            } else {
                "train/good"
            }
        })
        .collect()
}

fn capture(source: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    run(efficientad()
        .arg("capture")
        .arg("--source")
        .arg(format!("dir:{}", source.display()))
        .arg("--out")
        .arg(out)
        .args(["--fps", "0"])
        .args(extra)
        .stdin(Stdio::null()))
}

#[test]
fn capture_from_a_folder_writes_the_pixels_infer_judges_with_a_seeded_split() {
    let dir = temp_dir("capture-dir");
    // Tiles of several sizes, in both exposures' folders' order.
    let originals = copy_first(&mtd().join("test/good"), &dir.join("src"), 6);
    let out = dir.join("out");
    let output = capture(
        &dir.join("src"),
        &out,
        &["--once", "--split", "validation=0.5", "--seed", "3"],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));

    // Each frame is in the folder the independent draw says, as a PNG of exactly the pixels
    // the runtime decodes from the original (the dir: source plays files in name order).
    let want = expected_splits(3, 0.5, originals.len());
    assert!(want.contains(&"train/good") && want.contains(&"validation/good"));
    let mut by_split: BTreeMap<&str, usize> = BTreeMap::new();
    for (original, split) in originals.iter().zip(&want) {
        let stem = original.file_stem().expect("stem").to_string_lossy();
        let png = out.join(split).join(format!("src_{stem}.png"));
        let written = image::open(&png)
            .unwrap_or_else(|e| panic!("{}: {e}", png.display()))
            .to_rgb8();
        let decoded = to_rgb8(decode_file(original).expect("decode"));
        assert_eq!(written.dimensions(), decoded.dimensions(), "{stem}");
        assert!(
            written.as_raw() == decoded.as_raw(),
            "{stem}: pixels differ"
        );
        *by_split.entry(split).or_default() += 1;
    }
    for split in ["train/good", "validation/good"] {
        assert_eq!(pngs(&out, split).len(), by_split[split], "{split}");
    }

    // A second capture into the same folder adds files and replaces none.
    let before: Vec<(PathBuf, Vec<u8>)> = pngs(&out, "train/good")
        .into_iter()
        .map(|p| (p.clone(), std::fs::read(&p).expect("read")))
        .collect();
    let output = capture(&dir.join("src"), &out, &["--once", "--seed", "3"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    for (path, bytes) in &before {
        assert_eq!(
            &std::fs::read(path).expect("read"),
            bytes,
            "{}",
            path.display()
        );
    }
    let total = pngs(&out, "train/good").len() + pngs(&out, "validation/good").len();
    assert_eq!(total, 2 * originals.len());

    // The share over many frames (a looping source, --count), against the same draw.
    let many = dir.join("many");
    let output = capture(
        &dir.join("src"),
        &many,
        &["--count", "40", "--split", "validation=0.25", "--seed", "9"],
    );
    assert!(output.status.success(), "{}", text(&output.stderr));
    let validation = expected_splits(9, 0.25, 40)
        .iter()
        .filter(|s| **s == "validation/good")
        .count();
    assert_eq!(pngs(&many, "validation/good").len(), validation);
    assert_eq!(pngs(&many, "train/good").len(), 40 - validation);
}

#[test]
fn capture_answers_each_trigger_line_and_stops_cleanly_on_sigterm() {
    let dir = temp_dir("capture-trigger");
    copy_first(&mtd().join("test/good"), &dir.join("src"), 3);
    let out = dir.join("out");
    let mut child = efficientad()
        .arg("capture")
        .arg("--source")
        .arg(format!("dir:{}", dir.join("src").display()))
        .arg("--out")
        .arg(&out)
        .args(["--fps", "0", "--trigger", "stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start capture");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"part-1\n{\"id\": 12345678901234567891}\n{not json\n")
        .expect("write");
    let output = process::finish(child, "efficientad");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let answers = json_lines(&output.stdout);
    assert_eq!(answers.len(), 3, "{}", text(&output.stderr));
    assert_eq!(answers[0]["id"], "part-1");
    assert_eq!(answers[0]["status"], "SAVED");
    assert!(text(&output.stdout).contains("\"id\":12345678901234567891"));
    assert_eq!(answers[1]["status"], "SAVED");
    assert_eq!(answers[2]["status"], "ERROR", "{}", answers[2]);
    for a in &answers[..2] {
        let path = PathBuf::from(a["path"].as_str().expect("path"));
        assert!(path.starts_with(out.join(a["split"].as_str().expect("split"))));
        assert!(image::open(&path).is_ok(), "{}", path.display());
    }

    // Without a count the capture runs until stopped; SIGTERM ends it at once, exit 0, with
    // only complete PNGs and no temporary files left.
    let endless = dir.join("endless");
    let child = efficientad()
        .arg("capture")
        .arg("--source")
        .arg(format!("dir:{}", dir.join("src").display()))
        .arg("--out")
        .arg(&endless)
        .args(["--fps", "20", "--every", "10"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start capture");
    std::thread::sleep(Duration::from_millis(2000));
    let pid = child.id().to_string();
    let stopped_at = Instant::now();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let output = process::finish(child, "efficientad");
    assert!(stopped_at.elapsed() < Duration::from_secs(3));
    assert!(output.status.success(), "{}", text(&output.stderr));
    let mut count = 0;
    for split in ["train/good", "validation/good"] {
        for entry in sorted_files(&endless.join(split)) {
            let name = entry
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            assert!(
                name.ends_with(".png") && !name.starts_with('.'),
                "{name} left behind"
            );
            assert!(image::open(&entry).is_ok(), "{name} is not a complete PNG");
            count += 1;
        }
    }
    assert!(count >= 1, "no frame in 2 s at 20 fps");
    assert!(text(&output.stderr).contains(&format!("captured {count} frames")));
}

#[test]
fn capture_from_the_fake_gige_camera_fills_the_dataset_layout() {
    let dir = temp_dir("capture-gige");
    let commands = format!(
        "{bin} capture --source gige:first --gige-stream socket --count 3 --every 100 --split validation=0.34 --out {d}/out 2> {d}/capture.err",
        d = dir.display(),
        bin = efficientad_shell(),
    );
    let output = with_fake_gige_camera(&dir, &commands);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    assert!(
        output.status.success(),
        "{}\ncapture: {}\ncamera: {}",
        text(&output.stderr),
        read("capture.err"),
        read("camera.log")
    );
    let out = dir.join("out");
    let files: Vec<PathBuf> = ["train/good", "validation/good"]
        .iter()
        .flat_map(|s| pngs(&out, s))
        .collect();
    assert_eq!(files.len(), 3, "{}", read("capture.err"));
    for f in &files {
        let img = image::open(f).expect("png").to_rgb8();
        // The fake camera's default frame: 512x512.
        assert_eq!(img.dimensions(), (512, 512), "{}", f.display());
    }
}
