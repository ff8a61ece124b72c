//! `scripts/fetch-datasets`: MTD's repository layout becomes the MVTec layout with the fixed
//! split, on a small archive built here in that layout (the real download needs GitHub; the
//! note on the full conversion is in README, "Tests").

use std::path::Path;
use std::process::Command;

use crate::util::*;

/// The archive's top folder, as GitHub names it for the pinned commit.
const TOP: &str = "Magnetic-tile-defect-datasets.-cc4eb530b57b9cb7225bf76023873043ffd50655";

fn gray(path: &Path, w: u32, h: u32, value: impl Fn(u32, u32) -> u8) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([value(x, y)]))
        .save(path)
        .expect("write image");
}

#[test]
fn mtd_archive_becomes_the_mvtec_layout_with_the_fixed_split() {
    let dir = temp_dir("fetch-datasets");
    let src = dir.join("src").join(TOP);
    // 12 good tiles whose sorted order differs from their creation order.
    let good: Vec<String> = (0..12)
        .map(|i| format!("exp{}_num_{}", i % 3, 100 + (i * 7) % 12))
        .collect();
    for (i, stem) in good.iter().enumerate() {
        gray(
            &src.join(format!("MT_Free/Imgs/{stem}.jpg")),
            20,
            10,
            |x, _| (x * 10 + i as u32) as u8,
        );
        gray(
            &src.join(format!("MT_Free/Imgs/{stem}.png")),
            20,
            10,
            |_, _| 0,
        );
    }
    // One defect per folder; the mask holds the anti-aliased values the source has.
    let mask_values = [0u8, 100, 127, 128, 200, 255];
    for folder in [
        "MT_Blowhole",
        "MT_Break",
        "MT_Crack",
        "MT_Fray",
        "MT_Uneven",
    ] {
        gray(
            &src.join(format!("{folder}/Imgs/exp1_num_7.jpg")),
            12,
            6,
            |x, y| (x + y) as u8,
        );
        gray(
            &src.join(format!("{folder}/Imgs/exp1_num_7.png")),
            12,
            6,
            |x, _| mask_values[x as usize % mask_values.len()],
        );
    }
    std::fs::write(src.join("README.md"), "not an image\n").expect("readme");
    let archives = dir.join("archives");
    std::fs::create_dir_all(&archives).expect("mkdir");
    let zip = Command::new("python3")
        .arg("-c")
        .arg(
            "import shutil, sys; shutil.make_archive(sys.argv[1], 'zip', sys.argv[2], sys.argv[3])",
        )
        .arg(archives.join(TOP))
        .arg(dir.join("src"))
        .arg(TOP)
        .output_within()
        .expect("python3");
    assert!(zip.status.success(), "{}", text(&zip.stderr));

    let out = dir.join("out");
    let empty = dir.join("empty.sha256");
    std::fs::write(&empty, "").expect("manifest");
    let run = Command::new("python3")
        .arg(root().join("scripts/fetch-datasets"))
        .arg(&out)
        .args(["--only", "mtd", "--archives"])
        .arg(&archives)
        .arg("--manifest")
        .arg(&empty)
        .output_within()
        .expect("python3 with pillow and numpy (see .ci/run)");
    assert!(run.status.success(), "{}", text(&run.stderr));

    // The split by sorted index: i % 10 in {0, 1} test, 2 validation, else train.
    let mut sorted = good.clone();
    sorted.sort();
    let mtd = out.join("data/mtd");
    for (i, stem) in sorted.iter().enumerate() {
        let split = match i % 10 {
            0 | 1 => "test/good",
            2 => "validation/good",
            _ => "train/good",
        };
        let written = mtd.join(split).join(format!("{stem}.jpg"));
        let original = src.join(format!("MT_Free/Imgs/{stem}.jpg"));
        assert_eq!(
            std::fs::read(&written).unwrap_or_default(),
            std::fs::read(&original).expect("original"),
            "{stem} (sorted index {i}) belongs in {split}, byte for byte"
        );
    }
    let count = |d: &str| std::fs::read_dir(mtd.join(d)).map_or(0, |r| r.count());
    assert_eq!(
        (
            count("train/good"),
            count("validation/good"),
            count("test/good")
        ),
        (7, 1, 4)
    );
    for defect in ["blowhole", "break", "crack", "fray", "uneven"] {
        assert_eq!(count(&format!("test/{defect}")), 1);
        let mask = image::open(mtd.join(format!("ground_truth/{defect}/exp1_num_7_mask.png")))
            .expect("mask")
            .to_luma8();
        for (x, _, p) in mask.enumerate_pixels() {
            let source = mask_values[x as usize % mask_values.len()];
            let want = if source >= 128 { 255 } else { 0 };
            assert_eq!(p.0[0], want, "{defect}: source value {source} at x {x}");
        }
    }
    assert!(!mtd.join("README.md").exists());
}
