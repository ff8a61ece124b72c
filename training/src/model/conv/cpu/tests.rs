use super::*;

/// Direct (seven-loop) convolution: the definition, independent of im2col and GEMM.
fn direct(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f32> {
    let mut y = vec![0f32; g.batch * g.c_out * g.positions()];
    for n in 0..g.batch {
        for co in 0..g.c_out {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    let mut acc = 0f64;
                    for ci in 0..g.c_in {
                        for i in 0..g.kh {
                            for j in 0..g.kw {
                                let iy = (oy * g.stride[0] + i) as isize - g.pad[0] as isize;
                                let ix = (ox * g.stride[1] + j) as isize - g.pad[1] as isize;
                                if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                    continue;
                                }
                                let xv =
                                    x[((n * g.c_in + ci) * g.h + iy as usize) * g.w + ix as usize];
                                let wv = w[((co * g.c_in + ci) * g.kh + i) * g.kw + j];
                                acc += f64::from(xv) * f64::from(wv);
                            }
                        }
                    }
                    y[((n * g.c_out + co) * g.oh + oy) * g.ow + ox] = acc as f32;
                }
            }
        }
    }
    y
}

/// Tile widths: whole images, and odd widths that split output rows anywhere (including
/// segments that lie entirely in the padding).
const TILES: [usize; 3] = [usize::MAX, 7, 13];

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn geometry(
    c_in: usize,
    h: usize,
    c_out: usize,
    k: usize,
    s: usize,
    pad: (usize, usize),
) -> Geometry {
    let out = (h + pad.0 + pad.1 - k) / s + 1;
    Geometry {
        batch: 2,
        c_in,
        h,
        w: h + 1,
        c_out,
        kh: k,
        kw: k,
        stride: [s, s],
        pad: [pad.0, pad.0],
        oh: out,
        ow: (h + 1 + pad.0 + pad.1 - k) / s + 1,
    }
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum()
}

/// The cases of this project's networks in miniature: padding 0, 1, 2 and 3, kernels 1, 3,
/// 4 and 8, strides 1 and 2, trailing padding different from leading.
fn cases() -> Vec<Geometry> {
    vec![
        geometry(3, 12, 5, 4, 1, (3, 3)),
        geometry(4, 9, 6, 3, 1, (1, 1)),
        geometry(4, 9, 6, 4, 1, (0, 0)),
        geometry(3, 16, 4, 4, 2, (1, 1)),
        geometry(2, 8, 3, 8, 1, (0, 0)),
        geometry(3, 7, 4, 4, 1, (2, 2)),
        geometry(5, 6, 2, 1, 1, (0, 0)),
        geometry(2, 10, 3, 3, 2, (1, 0)),
    ]
}

#[test]
fn forward_equals_the_direct_convolution() {
    for g in cases() {
        let x = values(g.batch * g.c_in * g.h * g.w, 1);
        let w = values(g.c_out * g.k(), 2);
        let reference = direct(&x, &w, &g);
        for tile in TILES {
            let y = forward_tiled(&x, &w, None, &g, tile);
            for (a, b) in y.iter().zip(&reference) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{g:?} tile {tile}: {a} vs {b}"
                );
            }
        }
    }
}

/// Both gradients through the adjoint identity ⟨conv(x, w), dy⟩ = ⟨x, ∂x⟩ = ⟨w, ∂w⟩,
/// which holds exactly for a linear map and needs no finite differences.
#[test]
fn gradients_are_the_adjoints_of_the_direct_convolution() {
    for g in cases() {
        let x = values(g.batch * g.c_in * g.h * g.w, 3);
        let w = values(g.c_out * g.k(), 4);
        let dy = values(g.batch * g.c_out * g.positions(), 5);
        let inner = dot(&direct(&x, &w, &g), &dy);
        for tile in TILES {
            check_gradients(&x, &w, &dy, &g, tile, inner);
        }
    }
}

fn check_gradients(x: &[f32], w: &[f32], dy: &[f32], g: &Geometry, tile: usize, inner: f64) {
    {
        let g = *g;
        let dw = weight_grad_tiled(x, dy, &g, tile);
        let dx = input_grad_tiled(dy, w, &g, tile);
        let tol = 1e-4 * (1.0 + inner.abs());
        assert!(
            (dot(w, &dw) - inner).abs() < tol,
            "{g:?} tile {tile}: weight gradient"
        );
        assert!(
            (dot(x, &dx) - inner).abs() < tol,
            "{g:?} tile {tile}: input gradient"
        );
        // And element by element: ∂w[e] = ⟨conv(x, unit e), dy⟩.
        for e in [0, g.c_out * g.k() / 2, g.c_out * g.k() - 1] {
            let mut unit = vec![0f32; w.len()];
            unit[e] = 1.0;
            let expected = dot(&direct(x, &unit, &g), dy);
            assert!((f64::from(dw[e]) - expected).abs() < 1e-4 * (1.0 + expected.abs()));
        }
        for e in [0, x.len() / 3, x.len() - 1] {
            let mut unit = vec![0f32; x.len()];
            unit[e] = 1.0;
            let expected = dot(&direct(&unit, w, &g), dy);
            assert!((f64::from(dx[e]) - expected).abs() < 1e-4 * (1.0 + expected.abs()));
        }
    }
}

#[test]
fn tiles_cover_every_position_once() {
    let g = geometry(64, 60, 2, 4, 1, (3, 3));
    let mut seen = vec![0u8; g.positions()];
    for (p0, tp) in g.tiles(g.tile()) {
        seen[p0..p0 + tp].iter_mut().for_each(|s| *s += 1);
    }
    assert!(g.tile() < g.positions(), "the case must span several tiles");
    assert!(seen.iter().all(|&s| s == 1));
}

#[test]
fn bias_is_added_per_output_channel() {
    let g = geometry(2, 5, 3, 3, 1, (1, 1));
    let x = values(g.batch * g.c_in * g.h * g.w, 6);
    let w = values(g.c_out * g.k(), 7);
    let b = [0.5, -1.0, 2.0];
    let with = forward(&x, &w, Some(&b), &g);
    let without = forward(&x, &w, None, &g);
    for (i, (a, c)) in with.iter().zip(&without).enumerate() {
        let channel = (i / g.positions()) % g.c_out;
        assert!((a - c - b[channel]).abs() < 1e-6);
    }
}
