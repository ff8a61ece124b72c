use super::*;

#[test]
fn cosine_schedule_starts_at_the_rate_and_ends_near_zero() {
    let s = LrSchedule::Cosine;
    assert_eq!(s.at(1e-3, 0, 100), 1e-3);
    assert!((s.at(1e-3, 50, 100) - 5e-4).abs() < 1e-12);
    assert!(s.at(1e-3, 99, 100) < 1e-6);
    assert_eq!(LrSchedule::Constant.at(1e-4, 99, 100), 1e-4);
}

/// Two folders weighted 3:1 get about 3/4 and 1/4 of the draws; one folder draws only the
/// file (the stream of single-folder runs is unchanged).
#[test]
fn weighted_folders_share_the_draws() {
    let dir = std::env::temp_dir().join(format!("distill-pool-{}", std::process::id()));
    let (a, b) = (dir.join("a"), dir.join("b"));
    for d in [&a, &b] {
        std::fs::create_dir_all(d).expect("mkdir");
        for i in 0..3 {
            std::fs::write(d.join(format!("{i}.png")), b"x").expect("file");
        }
    }
    let pool = ImagePool::open(&[
        ImageFolder {
            dir: a.clone(),
            weight: 3.0,
        },
        ImageFolder {
            dir: b.clone(),
            weight: 1.0,
        },
    ])
    .expect("pool");
    let mut rng = Rng::new(1);
    let from_a = (0..4000)
        .filter(|_| pool.draw(&mut rng).starts_with(&a))
        .count();
    assert!((2850..3150).contains(&from_a), "{from_a} of 4000 from a");
    let single = ImagePool::open(&[ImageFolder {
        dir: a.clone(),
        weight: 1.0,
    }])
    .expect("pool");
    let (mut r1, mut r2) = (Rng::new(7), Rng::new(7));
    let files = data::folder_files(&a).expect("files");
    for _ in 0..10 {
        assert_eq!(single.draw(&mut r1), &files[r2.below(files.len())]);
    }
    assert!(
        ImagePool::open(&[ImageFolder {
            dir: a,
            weight: 0.0
        }])
        .is_err()
    );
}
