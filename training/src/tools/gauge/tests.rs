use super::*;

/// Distances against a brute-force loop, with more memory than one chunk.
#[test]
fn nearest_matches_brute_force() {
    let dim = 7;
    let mut rng = Rng::new(3);
    let mut draw =
        |n: usize| -> Vec<f32> { (0..n * dim).map(|_| rng.uniform() as f32 - 0.5).collect() };
    let memory = Memory::new(draw(MEMORY_CHUNK + 100), dim);
    let cells = draw(33);
    let got = memory.nearest(&cells);
    for (i, cell) in cells.chunks_exact(dim).enumerate() {
        let want = memory
            .vectors
            .chunks_exact(dim)
            .map(|m| {
                m.iter()
                    .zip(cell)
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f32>()
            })
            .fold(f32::INFINITY, f32::min)
            .sqrt();
        assert!(
            (got[i] - want).abs() < 1e-4,
            "cell {i}: {} vs {want}",
            got[i]
        );
    }
}

#[test]
fn inner_max_leaves_the_ring_out() {
    let mut map = vec![0f32; 16];
    map[0] = 9.0; // a corner: in the ring
    map[5] = 2.0; // (1, 1): inside
    assert_eq!(inner_max(&map, 4, 1), 2.0);
    assert_eq!(inner_max(&map, 4, 0), 9.0);
    assert_eq!(
        inner_max(&map, 4, 2),
        9.0,
        "a ring that leaves nothing: the whole map"
    );
}

/// Features known by construction: every good cell is the zero vector, a defect image has
/// one cell at distance 10 from everything in the memory.
struct Planted {
    grid: usize,
    /// The cell that is far in defect images.
    cell: (usize, usize),
}

impl FeatureSource for Planted {
    fn describe(&self) -> String {
        "planted".into()
    }

    fn features(&mut self, path: &Path) -> Result<FeatureMap, GaugeError> {
        let dim = 4;
        let mut data = vec![0f32; self.grid * self.grid * dim];
        if path.to_string_lossy().contains("/test/crack/") {
            data[(self.cell.1 * self.grid + self.cell.0) * dim] = 10.0;
        }
        Ok(FeatureMap {
            grid: self.grid,
            dim,
            data,
            pad: 0,
        })
    }
}

/// A 32x32-pixel dataset: 3 train, 2 good and 2 crack test images; each crack's mask is
/// the 4x4 pixels of cell `cell` of an 8x8 grid.
fn planted_dataset(name: &str, cell: (usize, usize)) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("gauge-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let png = |path: std::path::PathBuf, img: image::GrayImage| {
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        img.save(&path).expect("png");
    };
    let plain = image::GrayImage::from_pixel(32, 32, image::Luma([100]));
    for i in 0..3 {
        png(dir.join(format!("train/good/{i}.png")), plain.clone());
    }
    for i in 0..2 {
        png(dir.join(format!("test/good/{i}.png")), plain.clone());
        png(dir.join(format!("test/crack/{i}.png")), plain.clone());
        let mask = image::GrayImage::from_fn(32, 32, |x, y| {
            let inside = x as usize / 4 == cell.0 && y as usize / 4 == cell.1;
            image::Luma([if inside { 255 } else { 0 }])
        });
        png(dir.join(format!("ground_truth/crack/{i}_mask.png")), mask);
    }
    dir
}

#[test]
fn gauge_scores_planted_features_as_constructed() {
    let config = GaugeConfig {
        memory: 1000,
        seed: 0,
        ring: 2,
    };
    // Inside the ring: every score separates; the map's bilinear spread stays below the
    // mask's smallest weight (0.625² of the peak against 0.375·0.875 outside).
    let dir = planted_dataset("inside", (3, 3));
    let mut source = Planted {
        grid: 8,
        cell: (3, 3),
    };
    let r = gauge(&mut source, &dir, &config, &mut |_| {}).expect("gauge");
    assert_eq!(r.memory, 3 * 64, "memory capped at the cells there are");
    assert_eq!(r.test_images, 4);
    assert_eq!(r.image_auroc, Some(1.0));
    assert_eq!(r.image_auroc_inner, Some(1.0));
    let near_one = |v: Option<f64>| v.is_some_and(|v| (v - 1.0).abs() < 1e-9);
    assert!(
        near_one(r.report.overall.pixel_auroc),
        "{:?}",
        r.report.overall
    );
    assert!(near_one(r.report.overall.au_pro), "{:?}", r.report.overall);
    // On the edge: the whole-map score still separates, the inner one sees only ties.
    let dir = planted_dataset("edge", (0, 0));
    let mut source = Planted {
        grid: 8,
        cell: (0, 0),
    };
    let r = gauge(&mut source, &dir, &config, &mut |_| {}).expect("gauge");
    assert_eq!(r.image_auroc, Some(1.0));
    assert_eq!(r.image_auroc_inner, Some(0.5));
}
