//! The PDN's 2x2, stride-2 average pooling (zeros padded and counted, as PyTorch's
//! `AvgPool2d(2, 2, padding=p)`), with a direct CPU forward and backward.
//!
//! Burn's flex backend pools through a general 3-D kernel whose backward took 4% of a training
//! step. With stride equal to the kernel, every input pixel lies in at most one window, so the
//! backward is a plain scatter of `grad / 4`. Hooked in as [`crate::model::conv`] is: a backend
//! extension with an autodiff implementation; on wgpu, Burn's own operations.

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::pool::AvgPool2d;
use burn::tensor::{Tensor, TensorData};
use rayon::prelude::*;

/// 2x2 average pooling with stride 2, per backend.
#[backend_extension(Flex, Autodiff, Cube: cfg(feature = "wgpu"))]
pub trait PoolBackend: Backend {
    /// `x` `[N, C, H, W]` → `[N, C, (H + 2p − 2)/2 + 1, (W + 2p − 2)/2 + 1]`.
    fn avg_pool_2x2(x: FloatTensor<Self>, padding: usize) -> FloatTensor<Self> {
        Self::avg_pool2d(x, [2, 2], [2, 2], [padding, padding], true, false)
    }

    /// Gradient with respect to `x` of the pooling, given the output gradient `grad`.
    fn avg_pool_2x2_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        padding: usize,
    ) -> FloatTensor<Self> {
        Self::avg_pool2d_backward(x, grad, [2, 2], [2, 2], [padding, padding], true, false)
    }
}

#[cfg(feature = "wgpu")]
impl PoolBackend for burn::backend::Cube {}

/// Output side of the pooling for an input side `n`.
fn pooled(n: usize, padding: usize) -> usize {
    (n + 2 * padding).saturating_sub(2) / 2 + 1
}

/// `[N·C, H, W]` planes of a contiguous f32 NCHW tensor, or `None` (other dtypes and layouts
/// take Burn's own operation).
fn planes(x: &FlexTensor) -> Option<(&[f32], usize, usize)> {
    let shape = x.shape();
    if x.dtype() != DType::F32 || shape.num_dims() != 4 {
        return None;
    }
    Some((x.as_slice::<f32>()?, shape[2], shape[3]))
}

/// Forward on `[planes, h, w]` → `[planes, oh, ow]`.
pub fn forward(x: &[f32], h: usize, w: usize, padding: usize) -> Vec<f32> {
    let (oh, ow) = (pooled(h, padding), pooled(w, padding));
    let mut y = vec![0f32; x.len() / (h * w).max(1) * oh * ow];
    y.par_chunks_mut(oh * ow)
        .zip(x.par_chunks(h * w))
        .for_each(|(out, plane)| {
            for (oy, row) in out.chunks_exact_mut(ow).enumerate() {
                for (ox, v) in row.iter_mut().enumerate() {
                    let mut sum = 0.0;
                    for iy in (2 * oy..2 * oy + 2).filter_map(|y| y.checked_sub(padding)) {
                        for ix in (2 * ox..2 * ox + 2).filter_map(|x| x.checked_sub(padding)) {
                            if iy < h && ix < w {
                                sum += plane[iy * w + ix];
                            }
                        }
                    }
                    *v = 0.25 * sum;
                }
            }
        });
    y
}

/// Backward: `grad` `[planes, oh, ow]` → `[planes, h, w]`; each input pixel receives a quarter
/// of the gradient of the one window it lies in (none for pixels past the last window).
pub fn backward(grad: &[f32], h: usize, w: usize, padding: usize) -> Vec<f32> {
    let (oh, ow) = (pooled(h, padding), pooled(w, padding));
    let mut dx = vec![0f32; grad.len() / (oh * ow).max(1) * h * w];
    dx.par_chunks_mut(h * w)
        .zip(grad.par_chunks(oh * ow))
        .for_each(|(plane, g)| {
            for (iy, row) in plane.chunks_exact_mut(w).enumerate() {
                let oy = (iy + padding) / 2;
                if oy >= oh {
                    continue;
                }
                for (ix, v) in row.iter_mut().enumerate() {
                    let ox = (ix + padding) / 2;
                    if ox < ow {
                        *v = 0.25 * g[oy * ow + ox];
                    }
                }
            }
        });
    dx
}

fn flex(values: Vec<f32>, dims: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, dims))
}

impl PoolBackend for Flex {
    fn avg_pool_2x2(x: FlexTensor, padding: usize) -> FlexTensor {
        let Some((values, h, w)) = planes(&x) else {
            return Self::avg_pool2d(x, [2, 2], [2, 2], [padding, padding], true, false);
        };
        let shape = x.shape();
        let y = forward(values, h, w, padding);
        flex(
            y,
            [shape[0], shape[1], pooled(h, padding), pooled(w, padding)],
        )
    }

    fn avg_pool_2x2_backward(x: FlexTensor, grad: FlexTensor, padding: usize) -> FlexTensor {
        let shape = x.shape();
        let grad = if grad.is_contiguous() {
            grad
        } else {
            grad.to_contiguous()
        };
        let (Some(g), true) = (grad.as_slice::<f32>(), shape.num_dims() == 4) else {
            return Self::avg_pool2d_backward(
                x,
                grad,
                [2, 2],
                [2, 2],
                [padding, padding],
                true,
                false,
            );
        };
        let dx = backward(g, shape[2], shape[3], padding);
        flex(dx, [shape[0], shape[1], shape[2], shape[3]])
    }
}

#[derive(Debug)]
struct PoolBackward;

impl<B: Backend + PoolBackend> Backward<B, 1> for PoolBackward {
    /// The checkpointed input (for its shape) and the padding.
    type State = (NodeId, usize);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, padding) = ops.state;
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::avg_pool_2x2_backward(x, grad, padding));
        }
    }
}

impl<B: Backend + PoolBackend, C: CheckpointStrategy> PoolBackend for Autodiff<B, C> {
    fn avg_pool_2x2(x: FloatTensor<Self>, padding: usize) -> FloatTensor<Self> {
        match PoolBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                prep.finish(
                    (x_state, padding),
                    B::avg_pool_2x2(x.into_primitive(), padding),
                )
            }
            OpsKind::UnTracked(prep) => prep.finish(B::avg_pool_2x2(x.into_primitive(), padding)),
        }
    }
}

/// `pool.forward(x)` through [`PoolBackend`] when `pool` is the PDN's 2x2/stride-2 pooling
/// counting padded zeros; any other pooling goes to Burn's own forward.
///
/// # Shapes
/// - input `[N, C, H, W]`, output `[N, C, (H + 2p − 2)/2 + 1, (W + 2p − 2)/2 + 1]`.
pub fn avg_pool(pool: &AvgPool2d, x: Tensor<4>) -> Tensor<4> {
    let padding = match pool.padding {
        PaddingConfig2d::Valid => Some(0),
        PaddingConfig2d::Explicit(t, l, b, r) if t == l && l == b && b == r => Some(t),
        _ => None,
    };
    match padding {
        Some(p)
            if pool.kernel_size == [2, 2]
                && pool.stride == [2, 2]
                && pool.count_include_pad
                && !pool.ceil_mode =>
        {
            Tensor::from_dispatch(<Dispatch as PoolBackend>::avg_pool_2x2(
                x.into_dispatch(),
                p,
            ))
        }
        _ => pool.forward(x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pooling by the definition: every window, zero padding counted, divided by 4.
    fn reference(x: &[f32], h: usize, w: usize, p: usize) -> Vec<f32> {
        let (oh, ow) = (pooled(h, p), pooled(w, p));
        let mut y = Vec::new();
        for plane in x.chunks(h * w) {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = 0.0;
                    for a in 0..2 {
                        for b in 0..2 {
                            let (iy, ix) = (
                                (2 * oy + a) as isize - p as isize,
                                (2 * ox + b) as isize - p as isize,
                            );
                            if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                                s += plane[iy as usize * w + ix as usize];
                            }
                        }
                    }
                    y.push(s / 4.0);
                }
            }
        }
        y
    }

    #[test]
    fn forward_and_backward_are_adjoint_and_match_the_definition() {
        // Odd and even sides, padding off and on (the PDN's 253 → 126 and padded 259 → 130).
        for (h, w, p) in [(7, 6, 0), (7, 6, 1), (6, 9, 1), (5, 5, 0)] {
            let planes = 3;
            let x: Vec<f32> = (0..planes * h * w)
                .map(|i| ((i * 37 % 101) as f32) / 50.0 - 1.0)
                .collect();
            let y = forward(&x, h, w, p);
            assert_eq!(y, reference(&x, h, w, p), "{h}x{w} p{p}");
            let g: Vec<f32> = (0..y.len())
                .map(|i| ((i * 13 % 29) as f32) / 7.0 - 2.0)
                .collect();
            let dx = backward(&g, h, w, p);
            // ⟨pool(x), g⟩ = ⟨x, pool'(g)⟩ for the linear map.
            let lhs: f64 = y
                .iter()
                .zip(&g)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            let rhs: f64 = x
                .iter()
                .zip(&dx)
                .map(|(a, b)| f64::from(*a) * f64::from(*b))
                .sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * (1.0 + lhs.abs()),
                "{h}x{w} p{p}: {lhs} vs {rhs}"
            );
        }
    }
}
