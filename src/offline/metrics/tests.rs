use super::*;

fn one(scores: &[f32], mask: &[u8], w: usize, h: usize) -> InMemory {
    InMemory {
        images: vec![(scores.to_vec(), mask.to_vec(), w, h)],
    }
}

#[test]
fn auroc_perfect_inverted_and_tied() {
    assert_eq!(
        roc_auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]),
        Some(1.0)
    );
    assert_eq!(
        roc_auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]),
        Some(0.0)
    );
    assert_eq!(roc_auc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
    // sklearn's documented example: 0.75.
    assert_eq!(
        roc_auc(&[0.1, 0.4, 0.35, 0.8], &[false, false, true, true]),
        Some(0.75)
    );
    // One tie across classes: pairs (neg 0.5, pos 0.5) count one half: (1 + 0.5 + 1 + 1)/4.
    assert_eq!(
        roc_auc(&[0.2, 0.5, 0.5, 0.9], &[false, false, true, true]),
        Some(0.875)
    );
    assert_eq!(roc_auc(&[0.1, 0.2], &[true, true]), None);
}

#[test]
fn key_preserves_order() {
    let v = [-f32::INFINITY, -2.0, -0.0, 0.0, 1e-30, 3.0, f32::INFINITY];
    for w in v.windows(2) {
        assert!(key(w[0]) <= key(w[1]), "{w:?}");
    }
    assert!(key(-1.0) < key(1.0));
}

#[test]
fn diagonal_pixels_are_one_region() {
    let mask = [1, 0, 0, 0, 1, 0, 0, 0, 1];
    let mut labels = Vec::new();
    assert_eq!(label_regions(&mask, 3, 3, &mut labels), 1);
    let mask = [1, 0, 1, 0, 0, 0, 1, 0, 1];
    assert_eq!(label_regions(&mask, 3, 3, &mut labels), 4);
}

#[test]
fn au_pro_by_hand_with_limit_between_points() {
    // 1x5 image: one region {0, 1}, normal pixels {2, 3, 4}.
    // Scores descending: p0 0.9 (region), n2 0.8, p1 0.7 (region), n3 0.6, n4 0.5.
    // Points (fpr, pro): (0,0) (0,0.5) (1/3,0.5) (1/3,1) (2/3,1) (1,1).
    // Limit 0.3 lies between (0, 0.5) and (1/3, 0.5): area 0.5·0.3 → normalized 0.5.
    let src = one(&[0.9, 0.7, 0.8, 0.6, 0.5], &[1, 1, 0, 0, 0], 5, 1);
    let m = pixel_metrics(&src, 0.3, 100);
    assert!((m.au_pro.expect("regions") - 0.5).abs() < 1e-12, "{m:?}");
    // Pixel AUROC: pairs (pos > neg): 0.9 beats all 3, 0.7 beats 2 → 5/6.
    assert!((m.pixel_auroc.expect("auroc") - 5.0 / 6.0).abs() < 1e-12);
    // Limit exactly on a point (1/3): area = 0.5·(1/3) → normalized 0.5.
    let m = pixel_metrics(&src, 1.0 / 3.0, 100);
    assert!((m.au_pro.expect("regions") - 0.5).abs() < 1e-12, "{m:?}");
}

#[test]
fn constant_map_gives_the_diagonal() {
    // Every pixel tied: one step from (0,0) to (1,1); PRO at 0.3 interpolates to 0.3.
    let src = one(&[0.5; 6], &[1, 1, 0, 0, 0, 0], 6, 1);
    let m = pixel_metrics(&src, 0.3, 100);
    assert!((m.pixel_auroc.expect("auroc") - 0.5).abs() < 1e-12);
    // ∫0^0.3 x dx / 0.3 = 0.15
    assert!((m.au_pro.expect("pro") - 0.15).abs() < 1e-12, "{m:?}");
}

#[test]
fn sliced_sweep_equals_single_pass() {
    // Many distinct scores over several images; a tiny budget forces many slices.
    let mut images = Vec::new();
    let mut seed = 12345u64;
    let mut rnd = || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as f32) / (1u64 << 31) as f32
    };
    for i in 0..5 {
        let (w, h) = (17 + i, 11);
        let mask: Vec<u8> = (0..w * h)
            .map(|p| u8::from((p % w > 8 && p / w > 3 && i % 2 == 0) || p == 3))
            .collect();
        let scores: Vec<f32> = (0..w * h)
            .map(|p| rnd() * 4.0 - 2.0 + f32::from(mask[p]) * 0.5)
            .collect();
        images.push((scores, mask, w, h));
    }
    let src = InMemory { images };
    let whole = pixel_metrics(&src, 0.3, usize::MAX);
    let sliced = pixel_metrics(&src, 0.3, 7);
    assert!(sliced.passes > 3, "{sliced:?}");
    assert_eq!(whole.pixel_auroc, sliced.pixel_auroc);
    let (a, b) = (whole.au_pro.expect("pro"), sliced.au_pro.expect("pro"));
    assert!((a - b).abs() < 1e-12, "{a} vs {b}");
}
