//! The networks' convolution, with a backward pass that is fast on the CPU.
//!
//! Burn's flex backend has its own convolution forward but takes the generic fallback for the
//! two gradients, which is several times slower than the forward itself (see `conv/cpu.rs`).
//! This module hooks a better one in through Burn's own extension mechanism, so Burn stays the
//! framework (modules, autodiff graph, optimizer, checkpoints):
//! - [`ConvBackend`] is a backend extension with the forward and the two gradients;
//! - on flex, all three are im2col + GEMM (`cpu`); on wgpu, Burn's own forward and input
//!   gradient, and the weight gradient as im2col + matmul (Burn's own gave a wrong result);
//! - on the autodiff backend, the forward registers a backward step that calls the inner
//!   backend's two gradient functions — the same structure as Burn's built-in conv2d.
//!
//! [`conv2d`] is the drop-in for `Conv2d::forward`: same options, same result.

pub mod cpu;

use std::borrow::Cow;

use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ConvOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DType, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::{Tensor, TensorData};

/// Convolution forward and gradients, per backend.
#[backend_extension(Flex, Autodiff, Cube: cfg(feature = "wgpu"))]
pub trait ConvBackend: Backend {
    /// `x` `[N, C_in, H, W]`, `weight` `[C_out, C_in, kh, kw]`, `bias` `[C_out]` →
    /// `[N, C_out, oh, ow]`. (The bias is not optional: every convolution of the networks has
    /// one, and [`conv2d`] sends the others to Burn's own operation.)
    fn conv2d_fast(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, Some(bias), options)
    }

    /// Gradient of the loss with respect to `x`, given the output gradient `grad`.
    fn conv2d_fast_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, grad, options)
    }

    /// Gradient of the loss with respect to `weight`, given the output gradient `grad`.
    fn conv2d_fast_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, grad, options)
    }
}

#[cfg(feature = "wgpu")]
impl ConvBackend for burn::backend::Cube {
    /// The weight gradient as im2col + one matrix product per image, summed over the batch:
    /// `dW[o, (c, ky, kx)] = Σ_n Σ_l dY[n, o, l] · cols[n, (c, ky, kx), l]`. Burn 0.22's own
    /// CubeCL weight gradient came out wrong on Mesa's lavapipe for the student's first
    /// convolution (3 input channels: off by 97 %, see README); the operations used here
    /// (unfold through a forward convolution, matmul, sum) are checked by the same gradient
    /// test against PyTorch.
    fn conv2d_fast_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        use burn::backend::ops::{FloatTensorOps, UnfoldOptions};
        use burn::tensor::Shape;
        let [(pt, pb), (pl, pr)] = options.padding;
        if options.groups != 1 || pt != pb || pl != pr {
            return Self::conv2d_weight_backward(x, weight, grad, options);
        }
        let ws = weight.shape();
        let (o, c, kh, kw) = (ws[0], ws[1], ws[2], ws[3]);
        let gs = grad.shape();
        let (n, l) = (gs[0], gs[2] * gs[3]);
        let unfold = UnfoldOptions::new(options.stride, [pt, pl], options.dilation);
        // [n, c·kh·kw, l] → [n, l, c·kh·kw]
        let cols = Self::float_swap_dims(Self::unfold4d(x, [kh, kw], unfold), 1, 2);
        let dy = Self::float_reshape(grad, Shape::new([n, o, l]));
        let dw = Self::float_sum_dim(Self::float_matmul(dy, cols), 0);
        Self::float_reshape(dw, Shape::new([o, c, kh, kw]))
    }
}

/// The geometry of a flex convolution when `cpu` handles it: f32, no groups, no dilation.
fn geometry(
    x: &FlexTensor,
    weight: &FlexTensor,
    options: &ConvOptions<2>,
) -> Option<cpu::Geometry> {
    let (xs, ws) = (x.shape(), weight.shape());
    let plain = x.dtype() == DType::F32
        && weight.dtype() == DType::F32
        && options.groups == 1
        && options.dilation == [1, 1]
        && xs.num_dims() == 4
        && ws.num_dims() == 4
        && xs[1] == ws[1];
    if !plain {
        return None;
    }
    let [(pt, pb), (pl, pr)] = options.padding;
    let out = |size: usize, k: usize, s: usize, before: usize, after: usize| {
        (size + before + after).checked_sub(k).map(|v| v / s + 1)
    };
    Some(cpu::Geometry {
        batch: xs[0],
        c_in: xs[1],
        h: xs[2],
        w: xs[3],
        c_out: ws[0],
        kh: ws[2],
        kw: ws[3],
        stride: options.stride,
        pad: [pt, pl],
        oh: out(xs[2], ws[2], options.stride[0], pt, pb)?,
        ow: out(xs[3], ws[3], options.stride[1], pl, pr)?,
    })
}

/// The tensor's floats, borrowed when it is contiguous (the usual case: no copy of the layer's
/// input, which autodiff also holds for the backward pass).
fn floats(t: &FlexTensor) -> Cow<'_, [f32]> {
    match t.as_slice::<f32>() {
        Some(values) => Cow::Borrowed(values),
        None => Cow::Owned(
            t.to_contiguous()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap_or_default(),
        ),
    }
}

fn flex(values: Vec<f32>, dims: [usize; 4]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, dims))
}

impl ConvBackend for Flex {
    fn conv2d_fast(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        let Some(g) = geometry(&x, &weight, &options) else {
            return Self::conv2d(x, weight, Some(bias), options);
        };
        let y = cpu::forward(&floats(&x), &floats(&weight), Some(&floats(&bias)), &g);
        flex(y, [g.batch, g.c_out, g.oh, g.ow])
    }

    fn conv2d_fast_x_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        let Some(g) = geometry(&x, &weight, &options) else {
            return Self::conv2d_x_backward(x, weight, grad, options);
        };
        let dx = cpu::input_grad(&floats(&grad), &floats(&weight), &g);
        flex(dx, [g.batch, g.c_in, g.h, g.w])
    }

    fn conv2d_fast_weight_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        let Some(g) = geometry(&x, &weight, &options) else {
            return Self::conv2d_weight_backward(x, weight, grad, options);
        };
        let dw = cpu::weight_grad(&floats(&x), &floats(&grad), &g);
        flex(dw, [g.c_out, g.c_in, g.kh, g.kw])
    }
}

/// The backward step of a convolution with bias: input and weight gradients from the inner
/// backend's [`ConvBackend`], the bias gradient as a sum of the output gradient.
#[derive(Debug)]
struct ConvBackward;

impl<B: Backend + ConvBackend> Backward<B, 3> for ConvBackward {
    /// Checkpointed input and weight, the options.
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
        let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
        if let Some(node) = node_bias {
            // Σ over images and positions: [N, C, H, W] → [1, C, 1, 1] → [C].
            let c = grad.shape()[1];
            let sum = [0, 2, 3]
                .into_iter()
                .fold(grad.clone(), |g, dim| B::float_sum_dim(g, dim));
            grads.register::<B>(node.id, B::float_reshape(sum, [c].into()));
        }
        if let Some(node) = node_x {
            let dx =
                B::conv2d_fast_x_backward(x.clone(), weight.clone(), grad.clone(), options.clone());
            grads.register::<B>(node.id, dx);
        }
        if let Some(node) = node_weight {
            let dw = B::conv2d_fast_weight_backward(x, weight, grad, options);
            grads.register::<B>(node.id, dw);
        }
    }
}

impl<B: Backend + ConvBackend, C: CheckpointStrategy> ConvBackend for Autodiff<B, C> {
    fn conv2d_fast(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let prep = ConvBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        let inner_bias = bias.into_primitive();
        match prep {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let out = B::conv2d_fast(
                    x.into_primitive(),
                    weight.into_primitive(),
                    inner_bias,
                    options.clone(),
                );
                prep.finish((x_state, weight_state, options), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_fast(
                x.into_primitive(),
                weight.into_primitive(),
                inner_bias,
                options,
            )),
        }
    }
}

/// `conv.forward(x)` through [`ConvBackend`]: the same padding rules and result as Burn's
/// `Conv2d::forward`, with the fast gradients when training.
///
/// # Shapes
/// - input `[N, C_in, H, W]`, output `[N, C_out, oh, ow]`.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let bias = conv.bias.as_ref().map(|b| b.val());
    conv2d_with(conv, conv.weight.val(), bias, x)
}

/// [`conv2d`] with other weights (e.g. a slice of `conv`'s own) under `conv`'s stride and
/// padding.
///
/// # Shapes
/// - `weight` `[C_out, C_in, kh, kw]`, `bias` `[C_out]`; input `[N, C_in, H, W]`, output
///   `[N, C_out, oh, ow]`.
pub fn conv2d_with(
    conv: &Conv2d,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    x: Tensor<4>,
) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [(0, 0), (0, 0)],
        PaddingConfig2d::Explicit(top, left, bottom, right) => [(top, bottom), (left, right)],
        PaddingConfig2d::Same => {
            // Burn's `Same`: total padding (out − 1)·stride + k − in, the extra row/column last.
            let same = |size: usize, k: usize, s: usize| {
                let total = ((size.div_ceil(s)).saturating_sub(1) * s + k).saturating_sub(size);
                (total / 2, total - total / 2)
            };
            [
                same(h, conv.kernel_size[0], conv.stride[0]),
                same(w, conv.kernel_size[1], conv.stride[1]),
            ]
        }
    };
    let options = ConvOptions::new_with_padding(conv.stride, padding, conv.dilation, conv.groups);
    let Some(bias) = bias else {
        return burn::tensor::module::conv2d(x, weight, None, options);
    };
    let out = <Dispatch as ConvBackend>::conv2d_fast(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        options,
    );
    Tensor::from_dispatch(out)
}
