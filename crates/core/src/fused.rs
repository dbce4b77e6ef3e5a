//! genzoo's own fused operations, through burn's backend-extension
//! mechanism: the [`FusedOps`] trait has the plain burn composition as its
//! default (what every backend without a kernel of its own runs), a Flex
//! implementation with parallel, vectorisable CPU kernels, and an
//! implementation for `Autodiff<B>` that records the op with its analytic
//! backward.
//!
//! Models call the free functions ([`gelu`], [`silu`]), which stay generic
//! over any `Backend`: they route the CPU backend (plain, autodiff, nested
//! autodiff) to its [`FusedOps`] implementation by type and give every other
//! backend burn's own operation. That keeps `B: FusedOps` bounds out of every
//! model, family and command.
//!
//! Why: Flex computes GELU with a scalar `libm` erf and SiLU through several
//! passes, on one thread (shared/notes/cpu-op-gap.md: GELU 81 ms vs PyTorch's
//! 2.4 ms on 12×784×512, forward and backward).

use std::any::Any;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::{
    ActivationOps, ConvOptions, ConvTransposeOptions, FloatTensor, FloatTensorOps, ModuleOps,
};
use burn::tensor::{TensorMetadata, TensorPrimitive};
use burn_flex::Flex;

mod attention;
mod conv;
mod kernels;

pub use conv::ConvGeometry;

/// Operations genzoo fuses where burn's are slow. Every method has the
/// plain burn composition as its default.
pub trait FusedOps: Backend {
    /// GELU, exact (erf) form: x·Φ(x).
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::gelu(x)
    }

    /// The gradient of [`FusedOps::fused_gelu`] at `x` times `grad`:
    /// (Φ(x) + x·φ(x))·grad.
    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_gelu_backward::<Self>(x, grad)
    }

    /// Nearest-neighbour ×2 upsampling of `[N, C, H, W]`: `[N, C, 2H, 2W]`,
    /// every value repeated over a 2×2 block.
    fn fused_upsample_nearest2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_upsample_nearest2::<Self>(x)
    }

    /// The gradient of [`FusedOps::fused_upsample_nearest2`]: each 2×2
    /// block of `grad` summed (`x` gives the shape only).
    fn fused_upsample_nearest2_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed_upsample_nearest2_backward::<Self>(x, grad)
    }

    /// `[a, b]` concatenated along the channels (dimension 1) of
    /// `[N, C_a, …]` and `[N, C_b, …]`.
    fn fused_cat_channels(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_cat(vec![a, b], 1)
    }

    /// The gradients of [`FusedOps::fused_cat_channels`]: `grad`'s first
    /// `first` channels and the rest.
    fn fused_split_channels(
        grad: FloatTensor<Self>,
        first: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_split_channels::<Self>(grad, first)
    }

    /// SiLU (swish): x·σ(x).
    fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_silu::<Self>(x)
    }

    /// The gradient of [`FusedOps::fused_silu`] at `x` times `grad`:
    /// σ(x)·(1 + x·(1 − σ(x)))·grad.
    fn fused_silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        composed_silu_backward::<Self>(x, grad)
    }

    /// LeakyReLU: x where x ≥ 0, slope·x below.
    fn fused_leaky_relu(x: FloatTensor<Self>, slope: f32) -> FloatTensor<Self> {
        Self::leaky_relu(x, slope.into())
    }

    /// The gradient of [`FusedOps::fused_leaky_relu`] at `x` times `grad`:
    /// grad where x ≥ 0, slope·grad below (burn's convention at 0).
    fn fused_leaky_relu_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        slope: f32,
    ) -> FloatTensor<Self> {
        composed_leaky_relu_backward::<Self>(x, grad, slope)
    }

    /// Softplus log(1 + eˣ), computed as max(x, 0) + log(1 + e^−|x|) so
    /// that it neither overflows nor loses small values.
    fn fused_softplus(x: FloatTensor<Self>) -> FloatTensor<Self> {
        primitive(composed_softplus(float::<Self, 1>(x)))
    }

    /// The gradient of [`FusedOps::fused_softplus`] at `x` times `grad`:
    /// σ(x)·grad.
    fn fused_softplus_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::float_mul(Self::sigmoid(x), grad)
    }

    /// Causal attention softmax(Q·Kᵀ·scale, position i seeing 0..=i)·V for
    /// `[batch, heads, T, head_size]` tensors.
    fn fused_causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        Self::fused_causal_attention_with_lse(q, k, v, scale).0
    }

    /// [`FusedOps::fused_causal_attention`] and the log-sum-exp of each
    /// score row (`[batch, heads, T]`), which its backward needs.
    fn fused_causal_attention_with_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_causal_attention::<Self>(q, k, v, scale)
    }

    /// The gradients (dQ, dK, dV) of causal attention given its inputs, its
    /// output and log-sum-exp, and the output's gradient.
    #[allow(clippy::too_many_arguments)]
    fn fused_causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_causal_attention_backward::<Self>(q, k, v, out, lse, grad, scale)
    }

    /// Causal self-attention of `n_head` heads from the packed output of the
    /// q/k/v projection, `[batch, T, 3·C]` (q, k, v side by side, each
    /// `[batch, T, C]` with head h in columns h·C/n_head..), to the heads
    /// re-assembled, `[batch, T, C]`: a GPT block's attention without the
    /// split, transpose and merge in between.
    fn fused_causal_self_attention(qkv: FloatTensor<Self>, n_head: usize) -> FloatTensor<Self> {
        Self::fused_causal_self_attention_with_lse(qkv, n_head).0
    }

    /// [`FusedOps::fused_causal_self_attention`] and the log-sum-exp of each
    /// score row (`[batch, n_head, T]`), which its backward needs.
    fn fused_causal_self_attention_with_lse(
        qkv: FloatTensor<Self>,
        n_head: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        split_self_attention::<Self>(qkv, n_head)
    }

    /// The gradient of [`FusedOps::fused_causal_self_attention`] with
    /// respect to its packed input, given the input, the output, its
    /// log-sum-exp and the output's gradient.
    fn fused_causal_self_attention_backward(
        qkv: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        n_head: usize,
    ) -> FloatTensor<Self> {
        split_self_attention_backward::<Self>(qkv, out, lse, grad, n_head)
    }

    /// Attention of the T queries `q` (`[B, H, T, D]`, the positions
    /// seen − T..seen) over the first `seen` positions of the key and value
    /// caches (`[B, H, capacity, D]`); query i sees positions 0..=seen − T + i.
    /// Scale 1/√D. What generation runs after the prompt, T = 1.
    fn fused_cached_attention(
        q: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        seen: usize,
    ) -> FloatTensor<Self> {
        composed_cached_attention::<Self>(q, key, value, seen)
    }

    /// 2-D convolution without bias, groups 1, dilation 1:
    /// `[N, C_in, H, W]` with `[C_out, C_in, kh, kw]` → `[N, C_out, H', W']`.
    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        geometry: ConvGeometry,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, conv_options(geometry))
    }

    /// The gradients (dX, dW) of [`FusedOps::fused_conv2d`] given the output's.
    fn fused_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geometry: ConvGeometry,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_conv2d_backward::<Self>(x, weight, grad, geometry)
    }

    /// 2-D transposed convolution without bias, groups 1, dilation 1, no
    /// output padding: `[N, C_in, H, W]` with `[C_in, C_out, kh, kw]` →
    /// `[N, C_out, (H − 1)·s − 2p + kh, ...]`.
    fn fused_conv_transpose2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        geometry: ConvGeometry,
    ) -> FloatTensor<Self> {
        Self::conv_transpose2d(x, weight, None, conv_transpose_options(geometry))
    }

    /// The gradients (dX, dW) of [`FusedOps::fused_conv_transpose2d`].
    fn fused_conv_transpose2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geometry: ConvGeometry,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_conv_transpose2d_backward::<Self>(x, weight, grad, geometry)
    }

    /// Each row of `x` (`[rows, len]`) shifted and scaled to zero mean and
    /// unit (biased) variance: (x − mean)·rstd with rstd = 1/√(var + eps).
    /// The core of GroupNorm (one row per sample and group) and LayerNorm
    /// (one row per position).
    fn fused_normalize_rows(x: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        Self::fused_normalize_rows_with_rstd(x, eps).0
    }

    /// [`FusedOps::fused_normalize_rows`] and each row's rstd (`[rows, 1]`),
    /// which its backward needs.
    fn fused_normalize_rows_with_rstd(
        x: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_normalize_rows::<Self>(x, eps)
    }

    /// The gradient of [`FusedOps::fused_normalize_rows`] from its output
    /// x̂, its rstd and the incoming gradient g, row by row:
    /// rstd·(g − mean(g) − x̂·mean(g·x̂)).
    fn fused_normalize_rows_backward(
        normed: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        composed_normalize_rows_backward::<Self>(normed, rstd, grad)
    }

    /// Batch normalisation in training mode (Ioffe & Szegedy 2015) over
    /// `x` `[N, C, S]` (S: the positions of a channel in one sample): every
    /// channel normalised with its batch mean μ and biased variance σ² (over
    /// N·S values), then scaled by γ and shifted by β (`[C]` each).
    /// Returns (y, μ, σ²); the statistics are for the running averages.
    fn fused_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_batch_norm::<Self>(x, gamma, beta, eps)
    }

    /// The gradients (dx, dγ, dβ) of [`FusedOps::fused_batch_norm`] from its
    /// input, its batch statistics, γ and the output's gradient g. With
    /// x̂ = (x − μ)/√(σ² + eps) and M values per channel: dβ = Σ g,
    /// dγ = Σ g·x̂, dx = γ/√(σ² + eps)·(g − dβ/M − x̂·dγ/M).
    fn fused_batch_norm_backward(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_batch_norm_backward::<Self>(x, mean, var, gamma, grad, eps)
    }

    /// Group normalisation (Wu & He 2018) of `x` `[N, C, S]`: the C
    /// channels of each sample split into `spec.groups` groups, each
    /// normalised with its own mean μ and biased variance σ² (over (C/G)·S
    /// values), then scaled by γ and shifted by β (`[C]` each), then SiLU
    /// when `spec.silu`. Returns (y, μ, rstd = 1/√(σ² + eps)), the
    /// statistics `[N·G]` for the backward pass.
    fn fused_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        spec: GroupNormSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_group_norm::<Self>(x, gamma, beta, spec)
    }

    /// The gradients (dx, dγ, dβ) of [`FusedOps::fused_group_norm`] from its
    /// inputs, its statistics and the output's gradient. With x̂ the
    /// normalised input, z = γ·x̂ + β and dz the gradient at z (through SiLU
    /// when present): dβ = Σ dz, dγ = Σ dz·x̂ (over samples and positions),
    /// and per (sample, group) of L values, with d = γ·dz:
    /// dx = rstd·(d − Σd/L − x̂·Σ(d·x̂)/L).
    #[allow(clippy::too_many_arguments)]
    fn fused_group_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: GroupNormSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_group_norm_backward::<Self>(x, gamma, beta, mean, rstd, grad, spec)
    }
}

/// What [`group_norm`] computes: the number of channel groups, the ε added
/// to the variance, and whether SiLU follows the affine map (fused, as
/// `GroupNorm → SiLU` in every residual block of the U-Net).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupNormSpec {
    /// Channel groups; divides the channel count.
    pub groups: usize,
    /// Added to the variance.
    pub eps: f32,
    /// Apply SiLU to the output.
    pub silu: bool,
}

fn composed_split_channels<B: Backend>(
    grad: FloatTensor<B>,
    first: usize,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let grad = float::<B, 4>(grad);
    let channels = grad.dims()[1];
    (
        primitive(grad.clone().narrow(1, 0, first)),
        primitive(grad.narrow(1, first, channels - first)),
    )
}

fn composed_group_norm<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    spec: GroupNormSpec,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let x = float::<B, 3>(x);
    let [n, c, s] = x.dims();
    let groups = spec.groups;
    let grouped = x.reshape([n, groups, (c / groups) * s]);
    let (var, mean) = grouped.clone().var_mean_bias(2);
    let rstd = (var + spec.eps as f64).sqrt().recip();
    let normed = ((grouped - mean.clone()) * rstd.clone()).reshape([n, c, s]);
    let z = normed * per_channel::<B>(gamma) + per_channel::<B>(beta);
    let y = if spec.silu {
        float(composed_silu::<B>(primitive(z)))
    } else {
        z
    };
    (
        primitive(y),
        primitive(mean.reshape([n * groups])),
        primitive(rstd.reshape([n * groups])),
    )
}

fn composed_group_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    mean: FloatTensor<B>,
    rstd: FloatTensor<B>,
    grad: FloatTensor<B>,
    spec: GroupNormSpec,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (x, g) = (float::<B, 3>(x), float::<B, 3>(grad));
    let [n, c, s] = x.dims();
    let (groups, len) = (spec.groups, (c / spec.groups) * s);
    let per_group = |v: FloatTensor<B>| float::<B, 1>(v).reshape([n, groups, 1]);
    let rstd = per_group(rstd);
    let normed =
        ((x.reshape([n, groups, len]) - per_group(mean)) * rstd.clone()).reshape([n, c, s]);
    let gamma = per_channel::<B>(gamma);
    let dz = if spec.silu {
        let z = normed.clone() * gamma.clone() + per_channel::<B>(beta);
        float(composed_silu_backward::<B>(primitive(z), primitive(g)))
    } else {
        g
    };
    let dbeta = dz.clone().sum_dim(2).sum_dim(0).reshape([c]);
    let dgamma = (dz.clone() * normed.clone())
        .sum_dim(2)
        .sum_dim(0)
        .reshape([c]);
    let d = (dz * gamma).reshape([n, groups, len]);
    let normed = normed.reshape([n, groups, len]);
    let mean_d = d.clone().mean_dim(2);
    let mean_dx = (d.clone() * normed.clone()).mean_dim(2);
    let dx = (d - mean_d - normed * mean_dx) * rstd;
    (
        primitive(dx.reshape([n, c, s])),
        primitive(dgamma),
        primitive(dbeta),
    )
}

/// A `[C]` vector as `[1, C, 1]`, to broadcast over `[N, C, S]`.
fn per_channel<B: Backend>(v: FloatTensor<B>) -> Tensor<B, 3> {
    let v = float::<B, 1>(v);
    let c = v.dims()[0];
    v.reshape([1, c, 1])
}

fn composed_batch_norm<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    eps: f32,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let x = float::<B, 3>(x);
    let c = x.dims()[1];
    // Every sample has S values per channel: the mean over S then over N is the mean over N·S.
    let mean = x.clone().mean_dim(2).mean_dim(0);
    let centered = x - mean.clone();
    let var = centered.clone().square().mean_dim(2).mean_dim(0);
    let scale = per_channel::<B>(gamma) / (var.clone() + eps as f64).sqrt();
    let y = centered * scale + per_channel::<B>(beta);
    (
        primitive(y),
        primitive(mean.reshape([c])),
        primitive(var.reshape([c])),
    )
}

fn composed_batch_norm_backward<B: Backend>(
    x: FloatTensor<B>,
    mean: FloatTensor<B>,
    var: FloatTensor<B>,
    gamma: FloatTensor<B>,
    grad: FloatTensor<B>,
    eps: f32,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (x, g) = (float::<B, 3>(x), float::<B, 3>(grad));
    let [n, c, s] = x.dims();
    let count = (n * s) as f64;
    let rstd = (per_channel::<B>(var) + eps as f64).sqrt().recip();
    let normed = (x - per_channel::<B>(mean)) * rstd.clone();
    let dbeta = g.clone().sum_dim(2).sum_dim(0);
    let dgamma = (g.clone() * normed.clone()).sum_dim(2).sum_dim(0);
    let dx = per_channel::<B>(gamma)
        * rstd
        * (g - dbeta.clone() / count - normed * dgamma.clone() / count);
    (
        primitive(dx),
        primitive(dgamma.reshape([c])),
        primitive(dbeta.reshape([c])),
    )
}

fn composed_normalize_rows<B: Backend>(
    x: FloatTensor<B>,
    eps: f32,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let x = float::<B, 2>(x);
    let (var, mean) = x.clone().var_mean_bias(1);
    let rstd = (var + eps as f64).sqrt().recip();
    let y = (x - mean) * rstd.clone();
    (y.into_primitive().tensor(), rstd.into_primitive().tensor())
}

fn composed_normalize_rows_backward<B: Backend>(
    normed: FloatTensor<B>,
    rstd: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let (y, rstd, g) = (
        float::<B, 2>(normed),
        float::<B, 2>(rstd),
        float::<B, 2>(grad),
    );
    let mean_g = g.clone().mean_dim(1);
    let mean_gy = (g.clone() * y.clone()).mean_dim(1);
    ((g - mean_g - y * mean_gy) * rstd)
        .into_primitive()
        .tensor()
}

fn conv_options(g: ConvGeometry) -> ConvOptions<2> {
    ConvOptions::new(g.stride, g.padding, [1, 1], 1)
}

fn conv_transpose_options(g: ConvGeometry) -> ConvTransposeOptions<2> {
    ConvTransposeOptions::new(g.stride, g.padding, [0, 0], [1, 1], 1)
}

/// (dX, dW) of a convolution from burn's own backward ops.
fn composed_conv2d_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    geometry: ConvGeometry,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let options = conv_options(geometry);
    let dx = B::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options.clone());
    (dx, B::conv2d_weight_backward(x, weight, grad, options))
}

/// (dX, dW) of a transposed convolution from burn's own backward ops.
fn composed_conv_transpose2d_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    geometry: ConvGeometry,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let options = conv_transpose_options(geometry);
    let dx = B::conv_transpose2d_x_backward(weight.clone(), grad.clone(), options.clone());
    (
        dx,
        B::conv_transpose2d_weight_backward(x, weight, grad, options),
    )
}

fn float<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

fn primitive<B: Backend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<B> {
    x.into_primitive().tensor()
}

/// Scores with the future masked out: `[B, H, T, T]`.
fn causal_scores<B: Backend>(q: Tensor<B, 4>, k: Tensor<B, 4>, scale: f32) -> Tensor<B, 4> {
    let [b, h, t, _] = q.dims();
    let future = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &q.device())
        .unsqueeze::<4>()
        .expand([b, h, t, t]);
    (q.matmul(k.swap_dims(2, 3)) * scale).mask_fill(future, f32::NEG_INFINITY)
}

/// `parts` tensors packed side by side in `[B, T, parts·C]`, each split
/// into `n_head` heads: `[B, n_head, T, C/n_head]` views.
fn split_heads<B: Backend, const N: usize>(
    packed: Tensor<B, 3>,
    n_head: usize,
    parts: usize,
) -> [Tensor<B, 4>; N] {
    let [b, t, width] = packed.dims();
    let c = width / parts;
    std::array::from_fn(|i| {
        packed
            .clone()
            .narrow(2, i * c, c)
            .reshape([b, t, n_head, c / n_head])
            .swap_dims(1, 2)
    })
}

/// `[B, H, T, D]` heads re-assembled as `[B, T, H·D]`.
fn merge_heads<B: Backend>(heads: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, t, d] = heads.dims();
    heads.swap_dims(1, 2).reshape([b, t, h * d])
}

/// Packed self-attention through split heads and `B`'s own causal
/// attention: what a backend without a packed kernel runs.
fn split_self_attention<B: FusedOps>(
    qkv: FloatTensor<B>,
    n_head: usize,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [q, k, v] = split_heads::<B, _>(float(qkv), n_head, 3).map(primitive);
    let scale = 1.0 / (q.shape()[3] as f32).sqrt();
    let (out, lse) = B::fused_causal_attention_with_lse(q, k, v, scale);
    (primitive(merge_heads(float::<B, 4>(out))), lse)
}

/// The backward of [`split_self_attention`]: d qkv `[B, T, 3·C]`.
fn split_self_attention_backward<B: FusedOps>(
    qkv: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    grad: FloatTensor<B>,
    n_head: usize,
) -> FloatTensor<B> {
    let [q, k, v] = split_heads::<B, _>(float(qkv), n_head, 3).map(primitive);
    let [out] = split_heads::<B, _>(float(out), n_head, 1).map(primitive);
    let [grad] = split_heads::<B, _>(float(grad), n_head, 1).map(primitive);
    let scale = 1.0 / (q.shape()[3] as f32).sqrt();
    let (dq, dk, dv) = B::fused_causal_attention_backward(q, k, v, out, lse, grad, scale);
    let merged = [dq, dk, dv].map(|g| merge_heads(float::<B, 4>(g)));
    primitive(Tensor::cat(merged.to_vec(), 2))
}

/// Causal attention and its row log-sum-exp from burn's tensor ops.
fn composed_causal_attention<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    scale: f32,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let scores = causal_scores(float::<B, 4>(q), float(k), scale);
    let max = scores.clone().max_dim(3).detach(); // [B, H, T, 1]; the diagonal keeps it finite
    let lse = (scores.clone() - max.clone()).exp().sum_dim(3).log() + max;
    let out = (scores - lse.clone()).exp().matmul(float(v));
    (primitive(out), primitive(lse.squeeze_dim::<3>(3)))
}

/// Cached attention from burn's tensor ops: the filled part of the caches,
/// the positions past `seen − T + i` masked for query i.
fn composed_cached_attention<B: Backend>(
    q: FloatTensor<B>,
    key: FloatTensor<B>,
    value: FloatTensor<B>,
    seen: usize,
) -> FloatTensor<B> {
    let q = float::<B, 4>(q);
    let [b, h, t, d] = q.dims();
    let (key, value) = (float::<B, 4>(key), float::<B, 4>(value));
    let scores = q.matmul(key.narrow(2, 0, seen).swap_dims(2, 3)) / (d as f64).sqrt();
    let hidden = Tensor::<B, 2, Bool>::tril_mask([t, seen], (seen - t) as i64, &scores.device())
        .unsqueeze::<4>()
        .expand([b, h, t, seen]);
    let weights = burn::tensor::activation::softmax(scores.mask_fill(hidden, f32::NEG_INFINITY), 3);
    primitive(weights.matmul(value.narrow(2, 0, seen)))
}

/// The attention backward from burn's tensor ops (P recomputed from lse).
fn composed_causal_attention_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    grad: FloatTensor<B>,
    scale: f32,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let (q, k, v) = (float::<B, 4>(q), float::<B, 4>(k), float::<B, 4>(v));
    let (out, grad) = (float::<B, 4>(out), float::<B, 4>(grad));
    let lse = float::<B, 3>(lse).unsqueeze_dim::<4>(3);
    let p = (causal_scores(q.clone(), k.clone(), scale) - lse).exp(); // [B, H, T, T]
    let dv = p.clone().swap_dims(2, 3).matmul(grad.clone());
    let dp = grad.clone().matmul(v.swap_dims(2, 3));
    let row_dot = (grad * out).sum_dim(3); // [B, H, T, 1]
    let ds = p * (dp - row_dot);
    let dq = ds.clone().matmul(k) * scale;
    let dk = ds.swap_dims(2, 3).matmul(q) * scale;
    (primitive(dq), primitive(dk), primitive(dv))
}

/// (Φ(x) + x·φ(x))·grad from differentiable float ops (burn's own
/// `gelu_backward` is the derivative of the tanh approximation).
fn composed_gelu_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let scaled = B::float_mul_scalar(x.clone(), std::f32::consts::FRAC_1_SQRT_2.into());
    let cdf = B::float_mul_scalar(
        B::float_add_scalar(B::float_erf(scaled), 1.0.into()),
        0.5.into(),
    );
    let square = B::float_mul(x.clone(), x.clone());
    let pdf = B::float_mul_scalar(
        B::float_exp(B::float_mul_scalar(square, (-0.5).into())),
        (1.0 / (2.0 * std::f64::consts::PI).sqrt()).into(),
    );
    B::float_mul(B::float_add(cdf, B::float_mul(x, pdf)), grad)
}

/// max(x, 0) + log(1 + e^−|x|) from burn's tensor ops (burn's own
/// `softplus` overflows past x ≈ 88).
fn composed_softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::relu(x.clone()) + x.abs().neg().exp().log1p()
}

/// `[N, C, H, W]` → `[N, C, 2H, 2W]` as a broadcast over two new axes.
fn composed_upsample_nearest2<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let [n, c, h, w] = x.shape().dims();
    let x = B::float_reshape(x, Shape::new([n, c, h, 1, w, 1]));
    let x = B::float_expand(x, Shape::new([n, c, h, 2, w, 2]));
    B::float_reshape(x, Shape::new([n, c, 2 * h, 2 * w]))
}

/// The sum of each 2×2 block of `grad`, from differentiable float ops.
fn composed_upsample_nearest2_backward<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let [n, c, h, w] = x.shape().dims();
    let grad = B::float_reshape(grad, Shape::new([n, c, h, 2, w, 2]));
    let grad = B::float_sum_dim(B::float_sum_dim(grad, 5), 3);
    B::float_reshape(grad, Shape::new([n, c, h, w]))
}

/// x·σ(x).
fn composed_silu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::float_mul(x.clone(), B::sigmoid(x))
}

/// grad where x ≥ 0, slope·grad below, from differentiable float ops.
fn composed_leaky_relu_backward<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
    slope: f32,
) -> FloatTensor<B> {
    let bool_dtype = burn::tensor::get_device_settings::<B>(&B::float_device(&x)).bool_dtype;
    let below = B::float_lower_elem(x, 0f32.into(), bool_dtype);
    let scaled = B::float_mul_scalar(grad.clone(), slope.into());
    B::float_mask_where(grad, below, scaled)
}

/// σ(x)·(1 + x·(1 − σ(x)))·grad from differentiable float ops.
fn composed_silu_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let s = B::sigmoid(x.clone());
    let one_minus = B::float_add_scalar(B::float_neg(s.clone()), 1.0.into());
    let inner = B::float_add_scalar(B::float_mul(x, one_minus), 1.0.into());
    B::float_mul(B::float_mul(s, inner), grad)
}

impl FusedOps for Flex {
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        kernels::map(x, kernels::gelu).unwrap_or_else(Self::gelu)
    }

    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        kernels::zip(&x, &grad, kernels::gelu_grad)
            .unwrap_or_else(|| composed_gelu_backward::<Self>(x, grad))
    }

    fn fused_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        kernels::map(x, kernels::silu).unwrap_or_else(composed_silu::<Self>)
    }

    fn fused_upsample_nearest2(x: FloatTensor<Self>) -> FloatTensor<Self> {
        kernels::upsample_nearest2(&x).unwrap_or_else(|| composed_upsample_nearest2::<Self>(x))
    }

    fn fused_upsample_nearest2_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        kernels::upsample_nearest2_backward(&grad)
            .unwrap_or_else(|| composed_upsample_nearest2_backward::<Self>(x, grad))
    }

    fn fused_cat_channels(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        kernels::cat_channels(&a, &b).unwrap_or_else(|| Self::float_cat(vec![a, b], 1))
    }

    fn fused_split_channels(
        grad: FloatTensor<Self>,
        first: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        kernels::split_channels(&grad, first)
            .unwrap_or_else(|| composed_split_channels::<Self>(grad, first))
    }

    fn fused_softplus(x: FloatTensor<Self>) -> FloatTensor<Self> {
        kernels::map(x, kernels::softplus)
            .unwrap_or_else(|x| primitive(composed_softplus(float::<Self, 1>(x))))
    }

    fn fused_softplus_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        kernels::zip(&x, &grad, kernels::softplus_grad)
            .unwrap_or_else(|| Self::float_mul(Self::sigmoid(x), grad))
    }

    fn fused_silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        kernels::zip(&x, &grad, kernels::silu_grad)
            .unwrap_or_else(|| composed_silu_backward::<Self>(x, grad))
    }

    fn fused_leaky_relu(x: FloatTensor<Self>, slope: f32) -> FloatTensor<Self> {
        // A select then a multiply, so the loop vectorises (a branch on the
        // sign, with a conditional multiply, compiled to scalar code with
        // mispredictions: 13 % of a dcgan-28 step, forward and backward).
        kernels::map(x, move |v| v * if v < 0.0 { slope } else { 1.0 })
            .unwrap_or_else(|x| Self::leaky_relu(x, slope.into()))
    }

    fn fused_leaky_relu_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        slope: f32,
    ) -> FloatTensor<Self> {
        kernels::zip(&x, &grad, move |x, g| g * if x < 0.0 { slope } else { 1.0 })
            .unwrap_or_else(|| composed_leaky_relu_backward::<Self>(x, grad, slope))
    }

    fn fused_causal_attention_with_lse(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        attention::forward(&q, &k, &v, scale)
            .unwrap_or_else(|| composed_causal_attention::<Self>(q, k, v, scale))
    }

    fn fused_causal_self_attention_with_lse(
        qkv: FloatTensor<Self>,
        n_head: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        attention::packed_forward(&qkv, n_head)
            .unwrap_or_else(|| split_self_attention::<Self>(qkv, n_head))
    }

    fn fused_causal_self_attention_backward(
        qkv: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        n_head: usize,
    ) -> FloatTensor<Self> {
        attention::packed_backward(&qkv, &out, &lse, &grad, n_head)
            .unwrap_or_else(|| split_self_attention_backward::<Self>(qkv, out, lse, grad, n_head))
    }

    fn fused_cached_attention(
        q: FloatTensor<Self>,
        key: FloatTensor<Self>,
        value: FloatTensor<Self>,
        seen: usize,
    ) -> FloatTensor<Self> {
        attention::cached_forward(&q, &key, &value, seen)
            .unwrap_or_else(|| composed_cached_attention::<Self>(q, key, value, seen))
    }

    fn fused_causal_attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        attention::backward(&q, &k, &v, &out, &lse, &grad, scale).unwrap_or_else(|| {
            composed_causal_attention_backward::<Self>(q, k, v, out, lse, grad, scale)
        })
    }

    fn fused_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        geometry: ConvGeometry,
    ) -> FloatTensor<Self> {
        conv::forward(&x, &weight, geometry)
            .unwrap_or_else(|| Self::conv2d(x, weight, None, conv_options(geometry)))
    }

    fn fused_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geometry: ConvGeometry,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        conv::backward(&x, &weight, &grad, geometry)
            .unwrap_or_else(|| composed_conv2d_backward::<Self>(x, weight, grad, geometry))
    }

    fn fused_conv_transpose2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        geometry: ConvGeometry,
    ) -> FloatTensor<Self> {
        conv::transpose_forward(&x, &weight, geometry).unwrap_or_else(|| {
            Self::conv_transpose2d(x, weight, None, conv_transpose_options(geometry))
        })
    }

    fn fused_conv_transpose2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geometry: ConvGeometry,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        conv::transpose_backward(&x, &weight, &grad, geometry).unwrap_or_else(|| {
            composed_conv_transpose2d_backward::<Self>(x, weight, grad, geometry)
        })
    }

    fn fused_normalize_rows_with_rstd(
        x: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        kernels::normalize_rows(x, eps).unwrap_or_else(|x| composed_normalize_rows::<Self>(x, eps))
    }

    fn fused_normalize_rows_backward(
        normed: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        kernels::normalize_rows_backward(&normed, &rstd, &grad)
            .unwrap_or_else(|| composed_normalize_rows_backward::<Self>(normed, rstd, grad))
    }

    fn fused_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        kernels::batch_norm(&x, &gamma, &beta, eps)
            .unwrap_or_else(|| composed_batch_norm::<Self>(x, gamma, beta, eps))
    }

    fn fused_batch_norm_backward(
        x: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        var: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        kernels::batch_norm_backward(&x, &mean, &var, &gamma, &grad, eps)
            .unwrap_or_else(|| composed_batch_norm_backward::<Self>(x, mean, var, gamma, grad, eps))
    }

    fn fused_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        spec: GroupNormSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        kernels::group_norm(&x, &gamma, &beta, spec)
            .unwrap_or_else(|| composed_group_norm::<Self>(x, gamma, beta, spec))
    }

    fn fused_group_norm_backward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        spec: GroupNormSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        kernels::group_norm_backward(&x, &gamma, &beta, &mean, &rstd, &grad, spec).unwrap_or_else(
            || composed_group_norm_backward::<Self>(x, gamma, beta, mean, rstd, grad, spec),
        )
    }
}

/// Records a unary op whose backward is `backward(input, grad)`: the state
/// kept for the backward pass is the input itself.
macro_rules! unary_with_backward {
    ($name:ident, $forward:ident, $backward:ident) => {
        fn $forward(x: FloatTensor<Self>) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct $name;

            impl<B: FusedOps> Backward<B, 1> for $name {
                type State = FloatTensor<B>;

                fn backward(
                    self,
                    ops: Ops<Self::State, 1>,
                    grads: &mut Gradients,
                    _checkpointer: &mut Checkpointer,
                ) {
                    let input = ops.state;
                    unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                        B::$backward(input, grad)
                    });
                }
            }

            match $name
                .prepare::<C>([x.node.clone()])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => {
                    let output = B::$forward(x.primitive.clone());
                    prep.finish(x.primitive, output)
                }
                OpsKind::UnTracked(prep) => prep.finish(B::$forward(x.primitive)),
            }
        }
    };
}

/// Records a convolution-like op of (x, weight) whose backward
/// `backward(x, weight, grad, geometry)` gives (dX, dW).
macro_rules! conv_with_backward {
    ($name:ident, $forward:ident, $backward:ident) => {
        fn $forward(
            x: FloatTensor<Self>,
            weight: FloatTensor<Self>,
            geometry: ConvGeometry,
        ) -> FloatTensor<Self> {
            #[derive(Debug)]
            struct $name;

            impl<B: FusedOps> Backward<B, 2> for $name {
                /// x, the weight, the geometry.
                type State = (FloatTensor<B>, FloatTensor<B>, ConvGeometry);

                fn backward(
                    self,
                    ops: Ops<Self::State, 2>,
                    grads: &mut Gradients,
                    _checkpointer: &mut Checkpointer,
                ) {
                    let [node_x, node_weight] = ops.parents;
                    let grad = grads.consume::<B>(&ops.node);
                    let (x, weight, geometry) = ops.state;
                    let (dx, dw) = B::$backward(x, weight, grad, geometry);
                    for (node, g) in [(node_x, dx), (node_weight, dw)] {
                        if let Some(node) = node {
                            grads.register::<B>(node.id, g);
                        }
                    }
                }
            }

            let parents = [x.node.clone(), weight.node.clone()];
            match $name.prepare::<C>(parents).compute_bound().stateful() {
                OpsKind::Tracked(prep) => {
                    let out = B::$forward(x.primitive.clone(), weight.primitive.clone(), geometry);
                    prep.finish((x.primitive, weight.primitive, geometry), out)
                }
                OpsKind::UnTracked(prep) => {
                    prep.finish(B::$forward(x.primitive, weight.primitive, geometry))
                }
            }
        }
    };
}

/// Autodiff records the fused forward with its analytic backward; the
/// backward itself is the composed default, so nested autodiff (a gradient
/// penalty) differentiates through it.
impl<B: FusedOps, C: CheckpointStrategy> FusedOps for Autodiff<B, C> {
    unary_with_backward!(FusedGelu, fused_gelu, fused_gelu_backward);
    unary_with_backward!(FusedSilu, fused_silu, fused_silu_backward);
    unary_with_backward!(FusedSoftplus, fused_softplus, fused_softplus_backward);
    unary_with_backward!(
        FusedUpsampleNearest2,
        fused_upsample_nearest2,
        fused_upsample_nearest2_backward
    );

    fn fused_leaky_relu(x: FloatTensor<Self>, slope: f32) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedLeakyRelu;

        impl<B: FusedOps> Backward<B, 1> for FusedLeakyRelu {
            /// The input and the slope.
            type State = (FloatTensor<B>, f32);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (input, slope) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::fused_leaky_relu_backward(input, grad, slope)
                });
            }
        }

        match FusedLeakyRelu
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let output = B::fused_leaky_relu(x.primitive.clone(), slope);
                prep.finish((x.primitive, slope), output)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_leaky_relu(x.primitive, slope)),
        }
    }

    fn fused_causal_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        scale: f32,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedCausalAttention;

        impl<B: FusedOps> Backward<B, 3> for FusedCausalAttention {
            /// q, k, v, the output, its log-sum-exp, the scale.
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                f32,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_q, node_k, node_v] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (q, k, v, out, lse, scale) = ops.state;
                let (dq, dk, dv) =
                    B::fused_causal_attention_backward(q, k, v, out, lse, grad, scale);
                for (node, g) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let parents = [q.node.clone(), k.node.clone(), v.node.clone()];
        match FusedCausalAttention
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, lse) = B::fused_causal_attention_with_lse(
                    q.primitive.clone(),
                    k.primitive.clone(),
                    v.primitive.clone(),
                    scale,
                );
                let state = (
                    q.primitive,
                    k.primitive,
                    v.primitive,
                    out.clone(),
                    lse,
                    scale,
                );
                prep.finish(state, out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_causal_attention(
                q.primitive,
                k.primitive,
                v.primitive,
                scale,
            )),
        }
    }

    fn fused_causal_self_attention(qkv: FloatTensor<Self>, n_head: usize) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedCausalSelfAttention;

        impl<B: FusedOps> Backward<B, 1> for FusedCausalSelfAttention {
            /// The packed input, the output, its log-sum-exp, the heads.
            type State = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>, usize);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (qkv, out, lse, n_head) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::fused_causal_self_attention_backward(qkv, out, lse, grad, n_head)
                });
            }
        }

        match FusedCausalSelfAttention
            .prepare::<C>([qkv.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, lse) =
                    B::fused_causal_self_attention_with_lse(qkv.primitive.clone(), n_head);
                prep.finish((qkv.primitive, out.clone(), lse, n_head), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_causal_self_attention(qkv.primitive, n_head))
            }
        }
    }

    conv_with_backward!(FusedConv2d, fused_conv2d, fused_conv2d_backward);
    conv_with_backward!(
        FusedConvTranspose2d,
        fused_conv_transpose2d,
        fused_conv_transpose2d_backward
    );

    fn fused_normalize_rows(x: FloatTensor<Self>, eps: f32) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedNormalizeRows;

        impl<B: FusedOps> Backward<B, 1> for FusedNormalizeRows {
            /// The output x̂ and each row's rstd.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let (normed, rstd) = ops.state;
                unary::<B, _>(ops.parents, ops.node, grads, |grad| {
                    B::fused_normalize_rows_backward(normed, rstd, grad)
                });
            }
        }

        match FusedNormalizeRows
            .prepare::<C>([x.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (normed, rstd) = B::fused_normalize_rows_with_rstd(x.primitive, eps);
                prep.finish((normed.clone(), rstd), normed)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::fused_normalize_rows(x.primitive, eps)),
        }
    }

    fn fused_batch_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct FusedBatchNorm;

        impl<B: FusedOps> Backward<B, 3> for FusedBatchNorm {
            /// x, the batch mean and variance, γ, eps.
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                f32,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, mean, var, gamma, eps) = ops.state;
                let (dx, dgamma, dbeta) =
                    B::fused_batch_norm_backward(x, mean, var, gamma, grad, eps);
                for (node, g) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        // The statistics leave the graph: they only feed the running averages.
        let untracked = |t: FloatTensor<B>| <Self as AutodiffBackend>::from_inner(t);
        let parents = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        match FusedBatchNorm
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, mean, var) = B::fused_batch_norm(
                    x.primitive.clone(),
                    gamma.primitive.clone(),
                    beta.primitive,
                    eps,
                );
                let stats = (untracked(mean.clone()), untracked(var.clone()));
                let state = (x.primitive, mean, var, gamma.primitive, eps);
                (prep.finish(state, y), stats.0, stats.1)
            }
            OpsKind::UnTracked(prep) => {
                let (y, mean, var) =
                    B::fused_batch_norm(x.primitive, gamma.primitive, beta.primitive, eps);
                (prep.finish(y), untracked(mean), untracked(var))
            }
        }
    }

    fn fused_cat_channels(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct FusedCatChannels;

        impl<B: FusedOps> Backward<B, 2> for FusedCatChannels {
            /// The first input's channels.
            type State = usize;

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_a, node_b] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (da, db) = B::fused_split_channels(grad, ops.state);
                for (node, g) in [(node_a, da), (node_b, db)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        let first = a.primitive.shape()[1];
        match FusedCatChannels
            .prepare::<C>([a.node.clone(), b.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                prep.finish(first, B::fused_cat_channels(a.primitive, b.primitive))
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::fused_cat_channels(a.primitive, b.primitive))
            }
        }
    }

    fn fused_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        spec: GroupNormSpec,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        #[derive(Debug)]
        struct FusedGroupNorm;

        impl<B: FusedOps> Backward<B, 3> for FusedGroupNorm {
            /// x, γ, β, the per-group mean and rstd, the spec.
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                GroupNormSpec,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, gamma, beta, mean, rstd, spec) = ops.state;
                let (dx, dgamma, dbeta) =
                    B::fused_group_norm_backward(x, gamma, beta, mean, rstd, grad, spec);
                for (node, g) in [(node_x, dx), (node_gamma, dgamma), (node_beta, dbeta)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, g);
                    }
                }
            }
        }

        // The statistics leave the graph: only the backward pass reads them.
        let untracked = |t: FloatTensor<B>| <Self as AutodiffBackend>::from_inner(t);
        let parents = [x.node.clone(), gamma.node.clone(), beta.node.clone()];
        match FusedGroupNorm
            .prepare::<C>(parents)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (y, mean, rstd) = B::fused_group_norm(
                    x.primitive.clone(),
                    gamma.primitive.clone(),
                    beta.primitive.clone(),
                    spec,
                );
                let stats = (untracked(mean.clone()), untracked(rstd.clone()));
                let state = (
                    x.primitive,
                    gamma.primitive,
                    beta.primitive,
                    mean,
                    rstd,
                    spec,
                );
                (prep.finish(state, y), stats.0, stats.1)
            }
            OpsKind::UnTracked(prep) => {
                let (y, mean, rstd) =
                    B::fused_group_norm(x.primitive, gamma.primitive, beta.primitive, spec);
                (prep.finish(y), untracked(mean), untracked(rstd))
            }
        }
    }
}

#[cfg(feature = "wgpu")]
impl FusedOps for burn::backend::Wgpu {}

#[cfg(feature = "cuda")]
impl FusedOps for burn::backend::Cuda {}

/// Runs `op` on `input` when `In` (inputs of some backend `B`) is `InF`
/// (the same inputs of backend `F`), that is when `B` is `F`, and returns
/// its `OutF` as `Out` (the same outputs of `B`); hands `input` back
/// untouched otherwise. How the free functions reach one backend's
/// [`FusedOps`] by type, without `B: FusedOps` bounds on their callers.
fn route_as<In: 'static, InF: 'static, OutF: 'static, Out: 'static>(
    input: In,
    op: impl FnOnce(InF) -> OutF,
) -> std::result::Result<Out, In> {
    let boxed: Box<dyn Any> = Box::new(input);
    match boxed.downcast::<InF>() {
        Ok(input) => {
            let output: Box<dyn Any> = Box::new(op(*input));
            Ok(*output.downcast::<Out>().expect("F is B"))
        }
        Err(boxed) => Err(*boxed.downcast::<In>().expect("unchanged")),
    }
}

/// Runs `op` on `x` through backend `F` (its [`FusedOps`], or another extension) when `B` is `F`;
/// hands `x` back untouched otherwise.
pub(crate) fn routed<F: Backend, B: Backend, const D: usize>(
    x: Tensor<B, D>,
    op: impl FnOnce(FloatTensor<F>) -> FloatTensor<F>,
) -> std::result::Result<Tensor<B, D>, Tensor<B, D>> {
    route_as(x, |x: Tensor<F, D>| float::<F, D>(op(primitive(x))))
}

/// The CPU backends genzoo has kernels for, plain and under one or two
/// levels of autodiff; `None` hands `x` back for burn's own op.
macro_rules! route_cpu {
    ($x:expr, $method:ident) => {
        routed::<Flex, B, D>($x, <Flex as FusedOps>::$method)
            .or_else(|x| routed::<Autodiff<Flex>, B, D>(x, <Autodiff<Flex> as FusedOps>::$method))
            .or_else(|x| {
                routed::<Autodiff<Autodiff<Flex>>, B, D>(
                    x,
                    <Autodiff<Autodiff<Flex>> as FusedOps>::$method,
                )
            })
    };
}

/// GELU (exact, erf form) on any backend: genzoo's fused kernel on the CPU
/// backend, burn's `gelu` elsewhere.
///
/// ```
/// use burn::prelude::*;
/// use genzoo_core::{CpuBackend, CpuDevice};
/// let x = Tensor::<CpuBackend, 1>::from_floats([-1.0, 0.0, 2.0], &CpuDevice::default());
/// let y = genzoo_core::fused::gelu(x.clone());
/// let reference = burn::tensor::activation::gelu(x);
/// assert!((y - reference).abs().max().into_scalar() < 1e-5);
/// ```
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    route_cpu!(x, fused_gelu).unwrap_or_else(burn::tensor::activation::gelu)
}

/// Each row of `x` (`[rows, len]`) normalised to zero mean and unit
/// variance, (x − mean)/√(var + eps) (biased variance, as GroupNorm): one
/// fused pass with an analytic backward on the CPU backend, burn's ops
/// elsewhere.
///
/// ```
/// use burn::prelude::*;
/// use genzoo_core::{CpuBackend, CpuDevice};
/// let x = Tensor::<CpuBackend, 2>::from_floats([[1.0, 2.0, 3.0, 6.0]], &CpuDevice::default());
/// let y = genzoo_core::fused::normalize_rows(x, 1e-5);
/// assert!(y.clone().mean().into_scalar().abs() < 1e-6);
/// assert!((y.var_bias(1).into_scalar() - 1.0).abs() < 1e-4);
/// ```
pub fn normalize_rows<B: Backend>(x: Tensor<B, 2>, eps: f32) -> Tensor<B, 2> {
    routed::<Flex, B, 2>(x, |x| <Flex as FusedOps>::fused_normalize_rows(x, eps))
        .or_else(|x| {
            routed::<Autodiff<Flex>, B, 2>(x, |x| {
                <Autodiff<Flex> as FusedOps>::fused_normalize_rows(x, eps)
            })
        })
        .unwrap_or_else(|x| {
            let (var, mean) = x.clone().var_mean_bias(1);
            (x - mean) * (var + eps as f64).sqrt().recip()
        })
}

/// The output and batch statistics of [`batch_norm`]: y `[N, C, S]`, and
/// the per-channel mean and biased variance `[C]` (outside the autodiff
/// graph), for the running averages.
pub type BatchNormOutput<B> = (Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 1>);

type AffineNormInput<B> = (Tensor<B, 3>, Tensor<B, 1>, Tensor<B, 1>);

/// Runs batch normalisation through backend `F`'s [`FusedOps`] when `B` is
/// `F`; hands the inputs back untouched otherwise.
fn routed_batch_norm<F: FusedOps, B: Backend>(
    input: AffineNormInput<B>,
    eps: f32,
) -> std::result::Result<BatchNormOutput<B>, AffineNormInput<B>> {
    route_as(input, |(x, gamma, beta): AffineNormInput<F>| {
        let (y, mean, var) =
            F::fused_batch_norm(primitive(x), primitive(gamma), primitive(beta), eps);
        let output: BatchNormOutput<F> = (float(y), float(mean), float(var));
        output
    })
}

/// Batch normalisation in training mode over `x` `[N, C, S]` (S: a
/// channel's positions in one sample, 1 after a linear layer): each channel
/// normalised with its batch mean and biased variance (over N·S values),
/// scaled by `gamma` and shifted by `beta`. One fused pass forward and one
/// backward (an analytic gradient for x, γ and β) on the CPU backend;
/// burn's ops elsewhere. Returns y and the batch statistics.
///
/// ```
/// use burn::prelude::*;
/// use genzoo_core::{CpuBackend, CpuDevice};
/// let device = CpuDevice::default();
/// let x = Tensor::<CpuBackend, 3>::from_floats([[[1.0, 3.0]], [[5.0, 7.0]]], &device);
/// let (gamma, beta) = (Tensor::ones([1], &device), Tensor::zeros([1], &device));
/// let (y, mean, var) = genzoo_core::fused::batch_norm(x, gamma, beta, 1e-5);
/// assert_eq!(mean.into_scalar(), 4.0);
/// assert_eq!(var.into_scalar(), 5.0);
/// assert!(y.mean().into_scalar().abs() < 1e-6);
/// ```
pub fn batch_norm<B: Backend>(
    x: Tensor<B, 3>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f32,
) -> BatchNormOutput<B> {
    routed_batch_norm::<Flex, B>((x, gamma, beta), eps)
        .or_else(|input| routed_batch_norm::<Autodiff<Flex>, B>(input, eps))
        .or_else(|input| routed_batch_norm::<Autodiff<Autodiff<Flex>>, B>(input, eps))
        .unwrap_or_else(|(x, gamma, beta)| {
            let (y, mean, var) =
                composed_batch_norm::<B>(primitive(x), primitive(gamma), primitive(beta), eps);
            (
                float(y),
                float::<B, 1>(mean).detach(),
                float::<B, 1>(var).detach(),
            )
        })
}

/// Runs group normalisation through backend `F`'s [`FusedOps`] when `B` is
/// `F`; hands the inputs back untouched otherwise.
fn routed_group_norm<F: FusedOps, B: Backend>(
    input: AffineNormInput<B>,
    spec: GroupNormSpec,
) -> std::result::Result<Tensor<B, 3>, AffineNormInput<B>> {
    route_as(input, |(x, gamma, beta): AffineNormInput<F>| {
        let (y, _, _) = F::fused_group_norm(primitive(x), primitive(gamma), primitive(beta), spec);
        float::<F, 3>(y)
    })
}

/// Group normalisation over `x` `[N, C, S]` (S: a channel's positions):
/// each sample's channels in `spec.groups` groups, each group normalised
/// with its own mean and biased variance, then the per-channel `gamma`
/// and `beta`, then SiLU when `spec.silu`. On the CPU backend one pass
/// over each sample forward and two backward (dx, dγ, dβ analytic), where
/// the composition makes four (normalise, scale, shift, SiLU) each way;
/// burn's ops elsewhere.
///
/// ```
/// use burn::prelude::*;
/// use genzoo_core::fused::{group_norm, GroupNormSpec};
/// use genzoo_core::{CpuBackend, CpuDevice};
/// let device = CpuDevice::default();
/// // One sample, two channels in one group: normalised together.
/// let x = Tensor::<CpuBackend, 3>::from_floats([[[1.0, 3.0], [5.0, 7.0]]], &device);
/// let (gamma, beta) = (Tensor::ones([2], &device), Tensor::zeros([2], &device));
/// let spec = GroupNormSpec { groups: 1, eps: 1e-5, silu: false };
/// let y = group_norm(x, gamma, beta, spec).into_data().to_vec::<f32>().unwrap();
/// // Mean 4, variance 5: y = (x − 4)/√5.
/// let expected = [-3.0, -1.0, 1.0, 3.0].map(|v: f32| v / 5f32.sqrt());
/// assert!(y.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-5));
/// ```
pub fn group_norm<B: Backend>(
    x: Tensor<B, 3>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    spec: GroupNormSpec,
) -> Tensor<B, 3> {
    routed_group_norm::<Flex, B>((x, gamma, beta), spec)
        .or_else(|input| routed_group_norm::<Autodiff<Flex>, B>(input, spec))
        .or_else(|input| routed_group_norm::<Autodiff<Autodiff<Flex>>, B>(input, spec))
        .unwrap_or_else(|(x, gamma, beta)| {
            let (y, _, _) =
                composed_group_norm::<B>(primitive(x), primitive(gamma), primitive(beta), spec);
            float(y)
        })
}

pub(crate) use kernels::AdamScalars;

/// Whether [`adam_step_flex`] handles these tensors (f32, one shape).
pub(crate) fn adam_handles_flex(
    param: &FloatTensor<Flex>,
    grad: &FloatTensor<Flex>,
    moments: Option<(&FloatTensor<Flex>, &FloatTensor<Flex>)>,
) -> bool {
    kernels::adam_handles(param, grad, moments)
}

/// One Adam update of a CPU-backend parameter in a single pass, in place
/// where the buffers allow (see [`crate::optim::FusedAdam`]): (θ', m', v').
///
/// # Panics
/// Unless [`adam_handles_flex`] the tensors.
pub(crate) fn adam_step_flex(
    param: FloatTensor<Flex>,
    grad: &FloatTensor<Flex>,
    moments: Option<(FloatTensor<Flex>, FloatTensor<Flex>)>,
    scalars: AdamScalars,
) -> (FloatTensor<Flex>, FloatTensor<Flex>, FloatTensor<Flex>) {
    kernels::adam_step(param, grad, moments, scalars)
}

/// Softplus log(1 + eˣ) on any backend, in the form that neither overflows
/// nor loses small values (max(x, 0) + log(1 + e^−|x|)): one fused pass with
/// an analytic backward on the CPU backend, burn's ops elsewhere.
///
/// ```
/// use burn::prelude::*;
/// use genzoo_core::{CpuBackend, CpuDevice};
/// let x = Tensor::<CpuBackend, 1>::from_floats([-100.0, 0.0, 100.0], &CpuDevice::default());
/// let y: Vec<f32> = genzoo_core::fused::softplus(x).into_data().to_vec().unwrap();
/// assert!(y[0] >= 0.0 && y[0] < 1e-30);
/// assert!((y[1] - 2f32.ln()).abs() < 1e-6 && (y[2] - 100.0).abs() < 1e-4);
/// ```
pub fn softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    route_cpu!(x, fused_softplus).unwrap_or_else(composed_softplus)
}

/// Nearest-neighbour ×2 upsampling on any backend: one copy pass (and a
/// 2×2-sum backward) on the CPU backend, a broadcast and reshape elsewhere
/// (on the CPU backend that reshape is a scalar strided copy).
///
/// # Shapes
/// - x: `[batch, channels, h, w]` → `[batch, channels, 2h, 2w]`
pub fn upsample_nearest2<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    const D: usize = 4; // the rank `route_cpu!` routes at
    route_cpu!(x, fused_upsample_nearest2)
        .unwrap_or_else(|x| float::<B, 4>(composed_upsample_nearest2::<B>(primitive(x))))
}

/// `[a, b]` concatenated along the channels, as `Tensor::cat(vec![a, b], 1)`.
/// Under autodiff on the CPU backend its backward hands each input a
/// contiguous gradient: burn's cat backward gives strided views of the
/// output gradient, and where an input also feeds another layer (the
/// U-Net's skips) adding the two gradients then takes Flex's scalar
/// strided path (2.4 % of a ddpm-unet step) and reshaping them a copy.
///
/// # Shapes
/// - a: `[batch, c_a, h, w]`, b: `[batch, c_b, h, w]` → `[batch, c_a + c_b, h, w]`
pub fn cat_channels<B: Backend>(a: Tensor<B, 4>, b: Tensor<B, 4>) -> Tensor<B, 4> {
    type Pair<B> = (Tensor<B, 4>, Tensor<B, 4>);
    fn routed_cat<F: FusedOps, B: Backend>(
        pair: Pair<B>,
    ) -> std::result::Result<Tensor<B, 4>, Pair<B>> {
        route_as(pair, |(a, b): Pair<F>| {
            float::<F, 4>(F::fused_cat_channels(primitive(a), primitive(b)))
        })
    }
    routed_cat::<Flex, B>((a, b))
        .or_else(routed_cat::<Autodiff<Flex>, B>)
        .or_else(routed_cat::<Autodiff<Autodiff<Flex>>, B>)
        .unwrap_or_else(|(a, b)| Tensor::cat(vec![a, b], 1))
}

/// SiLU (swish, x·σ(x)) on any backend: genzoo's fused kernel on the CPU
/// backend, burn's `silu` elsewhere.
pub fn silu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    route_cpu!(x, fused_silu).unwrap_or_else(burn::tensor::activation::silu)
}

/// LeakyReLU (x where x ≥ 0, `slope`·x below) on any backend: one pass
/// forward and backward on the CPU backend, burn's `leaky_relu` (a mask
/// and a select, differentiated op by op) elsewhere.
///
/// ```
/// use burn::prelude::*;
/// use genzoo_core::{CpuBackend, CpuDevice};
/// let x = Tensor::<CpuBackend, 1>::from_floats([-2.0, 0.0, 3.0], &CpuDevice::default());
/// let y: Vec<f32> = genzoo_core::fused::leaky_relu(x, 0.2).into_data().to_vec().unwrap();
/// assert_eq!(y, [-0.4, 0.0, 3.0]);
/// ```
pub fn leaky_relu<B: Backend, const D: usize>(x: Tensor<B, D>, slope: f64) -> Tensor<B, D> {
    let slope32 = slope as f32;
    routed::<Flex, B, D>(x, |x| <Flex as FusedOps>::fused_leaky_relu(x, slope32))
        .or_else(|x| {
            routed::<Autodiff<Flex>, B, D>(x, |x| {
                <Autodiff<Flex> as FusedOps>::fused_leaky_relu(x, slope32)
            })
        })
        .or_else(|x| {
            routed::<Autodiff<Autodiff<Flex>>, B, D>(x, |x| {
                <Autodiff<Autodiff<Flex>> as FusedOps>::fused_leaky_relu(x, slope32)
            })
        })
        .unwrap_or_else(|x| burn::tensor::activation::leaky_relu(x, slope))
}

/// Runs causal attention through backend `F`'s [`FusedOps`] when `B` is `F`;
/// hands the inputs back untouched otherwise.
type Qkv<B> = (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>);

fn routed_attention<F: FusedOps, B: Backend>(
    qkv: Qkv<B>,
    scale: f32,
) -> std::result::Result<Tensor<B, 4>, Qkv<B>> {
    route_as(qkv, |(q, k, v): Qkv<F>| {
        let out = F::fused_causal_attention(primitive(q), primitive(k), primitive(v), scale);
        float::<F, 4>(out)
    })
}

/// Causal self-attention softmax(Q·Kᵀ/√d, position i seeing 0..=i)·V on any
/// backend: genzoo's fused kernels on the CPU backend (parallel over batch
/// and heads, backward recomputing the probabilities), burn's `attention`
/// with `is_causal` elsewhere.
///
/// # Shapes
/// - q, k, v: `[batch, heads, t, head_size]` → `[batch, heads, t, head_size]`
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let scale = 1.0 / (q.dims()[3] as f32).sqrt();
    routed_attention::<Flex, B>((q, k, v), scale)
        .or_else(|qkv| routed_attention::<Autodiff<Flex>, B>(qkv, scale))
        .or_else(|qkv| routed_attention::<Autodiff<Autodiff<Flex>>, B>(qkv, scale))
        .unwrap_or_else(|(q, k, v)| {
            let options = burn::tensor::ops::AttentionModuleOptions {
                scale: None,
                softcap: None,
                is_causal: true,
            };
            burn::tensor::module::attention(q, k, v, None, None, options)
        })
}

/// A GPT block's causal self-attention from the packed q/k/v projection
/// `[batch, t, 3·c]` (q, k, v side by side; head h of each in columns
/// h·c/n_head..) to the re-assembled heads `[batch, t, c]`, on any backend:
/// genzoo's fused kernels on the CPU backend (the heads read and written in
/// place, no split/transpose/merge copies, forward or backward), burn's
/// `attention` with `is_causal` on the split heads elsewhere.
///
/// ```
/// use burn::prelude::*;
/// use genzoo_core::{CpuBackend, CpuDevice};
/// let qkv = Tensor::<CpuBackend, 3>::ones([2, 5, 3 * 8], &CpuDevice::default());
/// let y = genzoo_core::fused::causal_self_attention(qkv, 2);
/// assert_eq!(y.dims(), [2, 5, 8]);
/// ```
pub fn causal_self_attention<B: Backend>(qkv: Tensor<B, 3>, n_head: usize) -> Tensor<B, 3> {
    routed::<Flex, B, 3>(qkv, |x| {
        <Flex as FusedOps>::fused_causal_self_attention(x, n_head)
    })
    .or_else(|x| {
        routed::<Autodiff<Flex>, B, 3>(x, |x| {
            <Autodiff<Flex> as FusedOps>::fused_causal_self_attention(x, n_head)
        })
    })
    .or_else(|x| {
        routed::<Autodiff<Autodiff<Flex>>, B, 3>(x, |x| {
            <Autodiff<Autodiff<Flex>> as FusedOps>::fused_causal_self_attention(x, n_head)
        })
    })
    .unwrap_or_else(|qkv| {
        let [q, k, v] = split_heads(qkv, n_head, 3);
        let options = burn::tensor::ops::AttentionModuleOptions {
            scale: None,
            softcap: None,
            is_causal: true,
        };
        merge_heads(burn::tensor::module::attention(
            q, k, v, None, None, options,
        ))
    })
}

/// Attention of new positions over a key/value cache, on any backend:
/// the T queries `q` are the positions seen − T..seen, the caches hold
/// keys and values for at least the first `seen` positions (the rest of
/// their capacity is not read), and query i sees positions 0..=seen − T + i.
/// Scale 1/√head_size. genzoo's kernel on the CPU backend (dot products
/// straight over the cache, one task per head when that pays), burn's ops
/// elsewhere. For generation: it has no backward of its own.
///
/// # Shapes
/// - q: `[batch, heads, t, head_size]`, key and value: `[batch, heads, capacity, head_size]`
///   → `[batch, heads, t, head_size]`
///
/// ```
/// use burn::prelude::*;
/// use genzoo_core::{CpuBackend, CpuDevice};
/// let device = CpuDevice::default();
/// let q = Tensor::<CpuBackend, 4>::ones([1, 2, 1, 4], &device);
/// // Room for 8 positions, 3 filled: the new query sees those 3.
/// let key = Tensor::<CpuBackend, 4>::ones([1, 2, 8, 4], &device);
/// let value = Tensor::<CpuBackend, 4>::ones([1, 2, 8, 4], &device);
/// let y = genzoo_core::fused::cached_attention(q, key, value, 3);
/// assert_eq!(y.dims(), [1, 2, 1, 4]);
/// assert!((y.sum().into_scalar() - 8.0).abs() < 1e-6); // the mean of ones
/// ```
pub fn cached_attention<B: Backend>(
    q: Tensor<B, 4>,
    key: Tensor<B, 4>,
    value: Tensor<B, 4>,
    seen: usize,
) -> Tensor<B, 4> {
    route_as((q, key, value), |(q, k, v): Qkv<Flex>| {
        float::<Flex, 4>(Flex::fused_cached_attention(
            primitive(q),
            primitive(k),
            primitive(v),
            seen,
        ))
    })
    .unwrap_or_else(|(q, k, v)| {
        float(composed_cached_attention::<B>(
            primitive(q),
            primitive(k),
            primitive(v),
            seen,
        ))
    })
}

type XW<B> = (Tensor<B, 4>, Tensor<B, 4>);

/// Runs the convolution through backend `F`'s [`FusedOps`] when `B` is `F`.
fn routed_conv<F: FusedOps, B: Backend>(
    xw: XW<B>,
    geometry: ConvGeometry,
    op: fn(FloatTensor<F>, FloatTensor<F>, ConvGeometry) -> FloatTensor<F>,
) -> std::result::Result<Tensor<B, 4>, XW<B>> {
    route_as(xw, |(x, weight): XW<F>| {
        float::<F, 4>(op(primitive(x), primitive(weight), geometry))
    })
}

/// The CPU backends genzoo has kernels for, for a convolution-like op.
macro_rules! route_conv {
    ($xw:expr, $geometry:expr, $method:ident) => {
        routed_conv::<Flex, B>($xw, $geometry, <Flex as FusedOps>::$method)
            .or_else(|xw| {
                routed_conv::<Autodiff<Flex>, B>(
                    xw,
                    $geometry,
                    <Autodiff<Flex> as FusedOps>::$method,
                )
            })
            .or_else(|xw| {
                routed_conv::<Autodiff<Autodiff<Flex>>, B>(
                    xw,
                    $geometry,
                    <Autodiff<Autodiff<Flex>> as FusedOps>::$method,
                )
            })
    };
}

/// 2-D convolution (groups 1, dilation 1, symmetric zero padding) with an
/// optional bias on any backend: genzoo's per-sample im2col + GEMM kernels
/// on the CPU backend (both gradients batch-parallel), burn's `conv2d`
/// elsewhere.
///
/// # Shapes
/// - x: `[batch, c_in, h, w]`, weight: `[c_out, c_in, kh, kw]`, bias: `[c_out]`
/// - returns: `[batch, c_out, h', w']`
pub fn conv2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    geometry: ConvGeometry,
) -> Tensor<B, 4> {
    let routed = route_conv!((x, weight), geometry, fused_conv2d);
    match routed {
        Ok(out) => with_bias(out, bias),
        Err((x, weight)) => burn::tensor::module::conv2d(x, weight, bias, conv_options(geometry)),
    }
}

/// `out + bias` with the bias as per-row scalars of an `[N·C, H·W]` view (the fast path).
fn with_bias<B: Backend>(out: Tensor<B, 4>, bias: Option<Tensor<B, 1>>) -> Tensor<B, 4> {
    match bias {
        Some(bias) => {
            let [n, c, h, w] = out.dims();
            let per_row = bias
                .unsqueeze_dim::<2>(0)
                .repeat_dim(0, n)
                .reshape([n * c, 1]);
            (out.reshape([n * c, h * w]) + per_row).reshape([n, c, h, w])
        }
        None => out,
    }
}

/// 2-D transposed convolution (groups 1, dilation 1, no output padding)
/// with an optional bias on any backend: genzoo's kernels on the CPU backend
/// (the adjoint of [`conv2d`]'s, batch-parallel), burn's `conv_transpose2d`
/// elsewhere.
///
/// # Shapes
/// - x: `[batch, c_in, h, w]`, weight: `[c_in, c_out, kh, kw]`, bias: `[c_out]`
/// - returns: `[batch, c_out, (h − 1)·stride − 2·padding + kh, ...]`
pub fn conv_transpose2d<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    geometry: ConvGeometry,
) -> Tensor<B, 4> {
    let routed = route_conv!((x, weight), geometry, fused_conv_transpose2d);
    match routed {
        Ok(out) => with_bias(out, bias),
        Err((x, weight)) => burn::tensor::module::conv_transpose2d(
            x,
            weight,
            bias,
            conv_transpose_options(geometry),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seed::{host_rng, normal_tensor};
    use crate::{CpuBackend, CpuDevice};
    use burn::tensor::activation;

    type Ad = Autodiff<CpuBackend>;

    fn max_diff<const D: usize>(a: Tensor<CpuBackend, D>, b: Tensor<CpuBackend, D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// Within 1e-4, relative to the reference's largest magnitude when that
    /// exceeds 1 (gradients that sum thousands of f32 terms).
    fn close<const D: usize>(
        ours: Tensor<CpuBackend, D>,
        reference: Tensor<CpuBackend, D>,
    ) -> bool {
        close_with_terms(ours, reference, 0.0)
    }

    /// `close`, with the tolerance also relative to `terms`: the size of the
    /// terms a result is the difference of, where they cancel.
    fn close_with_terms<const D: usize>(
        ours: Tensor<CpuBackend, D>,
        reference: Tensor<CpuBackend, D>,
        terms: f32,
    ) -> bool {
        let scale = reference.clone().abs().max().into_scalar().max(1.0);
        max_diff(ours, reference) <= 1e-4 * scale.max(terms)
    }

    /// Values and input gradients of a fused op against burn's composition
    /// on random inputs (wide enough to reach the tails), within 1e-4.
    fn matches_composed(
        fused: fn(Tensor<Ad, 3>) -> Tensor<Ad, 3>,
        composed: fn(Tensor<Ad, 3>) -> Tensor<Ad, 3>,
    ) {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        // Odd sizes exercise the kernels' chunk remainders.
        let x = normal_tensor::<Ad, 3>(&mut rng, [3, 37, 129], 0.0, 3.0, &dev);
        let tails =
            Tensor::<Ad, 1>::from_floats([-90.0, -30.0, -9.0, 0.0, 1e-6, 9.0, 30.0, 90.0], &dev)
                .reshape([1, 1, 8])
                .repeat_dim(0, 3)
                .repeat_dim(1, 37);
        let x = Tensor::cat(vec![x, tails], 2);
        let upstream = normal_tensor::<Ad, 3>(&mut rng, x.dims(), 0.0, 1.0, &dev);
        let xa = x.clone().require_grad();
        let xb = x.require_grad();
        let ya = fused(xa.clone());
        let yb = composed(xb.clone());
        assert!(max_diff(ya.clone().inner(), yb.clone().inner()) < 1e-4);
        let ga = (ya * upstream.clone()).sum().backward();
        let gb = (yb * upstream).sum().backward();
        let (da, db) = (xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap());
        assert!(max_diff(da, db) < 1e-4);
    }

    #[test]
    fn nearest_upsampling_matches_burns_interpolate_in_values_and_gradients() {
        use burn::tensor::module::interpolate;
        use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        // Odd sizes, and enough lines to span several parallel tasks.
        for [n, c, h, w] in [[2, 3, 5, 7], [3, 64, 14, 14], [1, 1, 1, 1]] {
            let x = normal_tensor::<Ad, 4>(&mut rng, [n, c, h, w], 0.0, 1.0, &dev);
            let (xa, xb) = (x.clone().require_grad(), x.require_grad());
            let ours = upsample_nearest2(xa.clone());
            let theirs = interpolate(
                xb.clone(),
                [2 * h, 2 * w],
                InterpolateOptions::new(InterpolateMode::Nearest),
            );
            assert_eq!(ours.dims(), [n, c, 2 * h, 2 * w]);
            assert_eq!(max_diff(ours.clone().inner(), theirs.clone().inner()), 0.0);
            let upstream = normal_tensor::<Ad, 4>(&mut rng, ours.dims(), 0.0, 1.0, &dev);
            let ga = (ours * upstream.clone()).sum().backward();
            let gb = (theirs * upstream).sum().backward();
            assert!(max_diff(xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap()) < 1e-5);
            // The composed default (other backends) gives the same values.
            let composed = float::<CpuBackend, 4>(composed_upsample_nearest2::<CpuBackend>(
                primitive(xa.clone().inner()),
            ));
            assert_eq!(max_diff(composed, upsample_nearest2(xa.inner())), 0.0);
        }
    }

    #[test]
    fn gelu_matches_burns_composition_in_values_and_gradients() {
        // burn's own gelu_backward is the tanh approximation's derivative,
        // so the reference is the exact formula composed from erf.
        fn exact(x: Tensor<Ad, 3>) -> Tensor<Ad, 3> {
            x.clone() * ((x / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5
        }
        matches_composed(gelu, exact);
    }

    #[test]
    fn softplus_matches_burns_composition_in_values_and_gradients() {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        let x = normal_tensor::<CpuBackend, 2>(&mut rng, [7, 301], 0.0, 6.0, &dev);
        let tails = Tensor::<CpuBackend, 1>::from_floats(
            [-100.0, -88.0, -20.0, -1e-6, 0.0, 1e-6, 20.0, 88.0, 100.0],
            &dev,
        )
        .reshape([1, 9])
        .repeat_dim(0, 7);
        let x = Tensor::cat(vec![x, tails], 1);
        let upstream = normal_tensor::<CpuBackend, 2>(&mut rng, x.dims(), 0.0, 1.0, &dev);
        // Values: the composition from burn's ops.
        let ours = softplus(x.clone());
        assert!(max_diff(ours, composed_softplus(x.clone())) < 1e-4);
        // Gradients: σ(x)·upstream from burn's sigmoid (the composition's
        // own gradient is the subgradient 0 at x = 0, through relu and abs).
        let xa = Tensor::<Ad, 2>::from_inner(x.clone()).require_grad();
        let grads = (softplus(xa.clone()) * Tensor::from_inner(upstream.clone()))
            .sum()
            .backward();
        let expected = activation::sigmoid(x) * upstream;
        assert!(max_diff(xa.grad(&grads).unwrap(), expected) < 1e-4);
    }

    #[test]
    fn silu_matches_burns_composition_in_values_and_gradients() {
        matches_composed(silu, activation::silu);
    }

    #[test]
    fn kernels_that_reuse_their_input_buffer_leave_shared_inputs_alone() {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        let x = normal_tensor::<CpuBackend, 2>(&mut rng, [6, 50], 1.0, 2.0, &dev);
        let before: Vec<f32> = x.to_data().to_vec().unwrap();
        let reference: Vec<f32> = activation::silu(x.clone()).into_data().to_vec().unwrap();
        // Shared (x is kept): a new buffer. Owned (a fresh copy): written over.
        for input in [x.clone(), x.clone() * 1.0] {
            let y: Vec<f32> = silu(input).into_data().to_vec().unwrap();
            assert!(y.iter().zip(&reference).all(|(a, b)| (a - b).abs() < 1e-5));
            let normed = normalize_rows(x.clone() * 1.0, 1e-5);
            assert!(normed.mean().into_scalar().abs() < 1e-5);
        }
        let kept = x.clone();
        let _ = normalize_rows(x, 1e-5);
        assert_eq!(kept.into_data().to_vec::<f32>().unwrap(), before);
    }

    #[test]
    fn leaky_relu_matches_burns_in_values_and_gradients() {
        matches_composed(|x| leaky_relu(x, 0.2), |x| activation::leaky_relu(x, 0.2));
    }

    #[test]
    fn row_normalisation_matches_burns_composition_in_values_and_gradients() {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        // Rows of GroupNorm's sizes (N·G rows of (C/G)·H·W), an odd length,
        // a constant row (variance 0: eps decides), and large offsets.
        for (rows, len, mean, std) in [(8, 1568, 0.0, 1.0), (5, 37, 3.0, 0.1), (3, 1, 0.0, 1.0)] {
            let x = normal_tensor::<Ad, 2>(&mut rng, [rows, len], mean, std, &dev);
            let x = Tensor::cat(vec![x, Tensor::ones([1, len], &dev) * 2.0], 0);
            let upstream = normal_tensor::<Ad, 2>(&mut rng, x.dims(), 0.0, 1.0, &dev);
            let (xa, xb) = (x.clone().require_grad(), x.require_grad());
            let ya = normalize_rows(xa.clone(), 1e-5);
            let yb = {
                let (var, m) = xb.clone().var_mean_bias(1);
                (xb.clone() - m) * (var + 1e-5).sqrt().recip()
            };
            assert!(max_diff(ya.clone().inner(), yb.clone().inner()) < 1e-4);
            let ga = (ya * upstream.clone()).sum().backward();
            let gb = (yb * upstream).sum().backward();
            let (da, db) = (xa.grad(&ga).unwrap(), xb.grad(&gb).unwrap());
            assert!(close(da, db), "{rows}x{len}");
        }
    }

    #[test]
    fn batch_norm_matches_burns_composition_in_values_and_gradients() {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        // DCGAN's shapes (after a linear layer: S = 1; after a convolution:
        // S = H·W), odd sizes, an offset mean, and a constant channel.
        for (n, c, s, mean, std) in [
            (64, 128, 49, 0.0, 1.0),
            (16, 300, 1, 0.5, 2.0),
            (3, 5, 37, 4.0, 0.1),
            (1, 2, 1, 0.0, 1.0),
        ] {
            let x = normal_tensor::<Ad, 3>(&mut rng, [n, c, s], mean, std, &dev);
            let x = Tensor::cat(vec![x, Tensor::ones([n, 1, s], &dev) * 3.0], 1);
            let c = c + 1;
            let gamma = normal_tensor::<Ad, 1>(&mut rng, [c], 1.0, 0.5, &dev);
            let beta = normal_tensor::<Ad, 1>(&mut rng, [c], 0.0, 0.5, &dev);
            let upstream = normal_tensor::<Ad, 3>(&mut rng, [n, c, s], 0.0, 1.0, &dev);
            let inputs = || {
                (
                    x.clone().require_grad(),
                    gamma.clone().require_grad(),
                    beta.clone().require_grad(),
                )
            };
            let (xa, ga, ba) = inputs();
            let (xb, gb, bb) = inputs();
            let (ya, mean_a, var_a) = batch_norm(xa.clone(), ga.clone(), ba.clone(), 1e-5);
            // burn's autodiff through the broadcast composition.
            let (yb, mean_b, var_b) = {
                let (y, m, v) = composed_batch_norm::<Ad>(
                    primitive(xb.clone()),
                    primitive(gb.clone()),
                    primitive(bb.clone()),
                    1e-5,
                );
                (float::<Ad, 3>(y), float::<Ad, 1>(m), float::<Ad, 1>(v))
            };
            let shape = format!("{n}x{c}x{s}");
            assert!(close(ya.clone().inner(), yb.clone().inner()), "y {shape}");
            assert!(close(mean_a.inner(), mean_b.inner()), "mean {shape}");
            assert!(close(var_a.inner(), var_b.inner()), "var {shape}");
            let grads_a = (ya * upstream.clone()).sum().backward();
            let grads_b = (yb * upstream).sum().backward();
            let pairs = [("dx", xa.grad(&grads_a).unwrap(), xb.grad(&grads_b).unwrap())];
            for (name, ours, theirs) in pairs {
                assert!(close(ours, theirs), "{name} {shape}");
            }
            for (name, ours, theirs) in [
                (
                    "dgamma",
                    ga.grad(&grads_a).unwrap(),
                    gb.grad(&grads_b).unwrap(),
                ),
                (
                    "dbeta",
                    ba.grad(&grads_a).unwrap(),
                    bb.grad(&grads_b).unwrap(),
                ),
            ] {
                assert!(close(ours, theirs), "{name} {shape}");
            }
        }
    }

    #[test]
    fn group_norm_matches_burns_composition_in_values_and_gradients() {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        // The U-Net's shapes (8 groups of 32 and 64 channels over 28×28 and
        // 7×7), odd sizes, one channel per group, an offset mean, and a
        // constant group (variance 0: eps decides); with and without SiLU.
        for (n, c, s, groups, mean, std) in [
            (4, 32, 784, 8, 0.0, 1.0),
            (3, 64, 49, 8, 2.0, 3.0),
            (2, 6, 37, 3, 0.0, 0.5),
            (2, 5, 1, 5, 1.0, 1.0),
            (1, 4, 3, 1, 0.0, 1.0),
        ] {
            let x = normal_tensor::<Ad, 3>(&mut rng, [n, c, s], mean, std, &dev);
            // The last group constant in the first sample.
            let per_group = c / groups;
            let x = x.slice_assign(
                [0..1, c - per_group..c, 0..s],
                Tensor::ones([1, per_group, s], &dev) * 3.0,
            );
            let gamma = normal_tensor::<Ad, 1>(&mut rng, [c], 1.0, 0.5, &dev);
            let beta = normal_tensor::<Ad, 1>(&mut rng, [c], 0.0, 0.5, &dev);
            let upstream = normal_tensor::<Ad, 3>(&mut rng, [n, c, s], 0.0, 1.0, &dev);
            for silu in [false, true] {
                let spec = GroupNormSpec {
                    groups,
                    eps: 1e-5,
                    silu,
                };
                let inputs = || {
                    (
                        x.clone().require_grad(),
                        gamma.clone().require_grad(),
                        beta.clone().require_grad(),
                    )
                };
                let (xa, ga, ba) = inputs();
                let (xb, gb, bb) = inputs();
                let ya = group_norm(xa.clone(), ga.clone(), ba.clone(), spec);
                // burn's autodiff through the composition.
                let yb = {
                    let (y, _, _) = composed_group_norm::<Ad>(
                        primitive(xb.clone()),
                        primitive(gb.clone()),
                        primitive(bb.clone()),
                        spec,
                    );
                    float::<Ad, 3>(y)
                };
                let case = format!("{n}x{c}x{s} groups {groups} silu {silu}");
                assert!(close(ya.clone().inner(), yb.clone().inner()), "y {case}");
                // Inference (no autodiff) takes the plain kernel.
                let plain = group_norm(
                    x.clone().inner(),
                    gamma.clone().inner(),
                    beta.clone().inner(),
                    spec,
                );
                assert!(close(plain, yb.clone().inner()), "y untracked {case}");
                let grads_a = (ya * upstream.clone()).sum().backward();
                let grads_b = (yb * upstream.clone()).sum().backward();
                // dx = rstd·(d − mean(d) − x̂·mean(d·x̂)) with d = γ·dz: in a
                // one-element group it is exactly 0, a difference of terms
                // of size rstd·|γ·dz| (316·|γ·dz| when eps decides) whose
                // f32 rounding is all that is left. dz ≤ 1.1·dy under SiLU.
                let (_, _, rstd) = composed_group_norm::<CpuBackend>(
                    primitive(x.clone().inner()),
                    primitive(gamma.clone().inner()),
                    primitive(beta.clone().inner()),
                    spec,
                );
                let rstd = float::<CpuBackend, 1>(rstd)
                    .reshape([n, groups, 1])
                    .expand([n, groups, per_group * s])
                    .reshape([n, c, s]);
                let terms = (upstream.clone().inner().abs()
                    * gamma.clone().inner().abs().reshape([1, c, 1])
                    * rstd
                    * 1.1)
                    .max()
                    .into_scalar();
                let (dx_a, dx_b) = (xa.grad(&grads_a).unwrap(), xb.grad(&grads_b).unwrap());
                assert!(close_with_terms(dx_a, dx_b, terms), "dx {case}");
                for (name, ours, theirs) in [
                    (
                        "dgamma",
                        ga.grad(&grads_a).unwrap(),
                        gb.grad(&grads_b).unwrap(),
                    ),
                    (
                        "dbeta",
                        ba.grad(&grads_a).unwrap(),
                        bb.grad(&grads_b).unwrap(),
                    ),
                ] {
                    assert!(close(ours, theirs), "{name} {case}");
                }
            }
        }
    }

    #[test]
    fn group_norm_backward_composition_matches_burns_autodiff() {
        // The composed backward (what other backends and nested autodiff
        // run) against burn differentiating the composed forward.
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        let (n, c, s, groups) = (3, 6, 10, 2);
        let x = normal_tensor::<Ad, 3>(&mut rng, [n, c, s], 0.5, 2.0, &dev);
        let gamma = normal_tensor::<Ad, 1>(&mut rng, [c], 1.0, 0.5, &dev);
        let beta = normal_tensor::<Ad, 1>(&mut rng, [c], 0.0, 0.5, &dev);
        let upstream = normal_tensor::<CpuBackend, 3>(&mut rng, [n, c, s], 0.0, 1.0, &dev);
        for silu in [false, true] {
            let spec = GroupNormSpec {
                groups,
                eps: 1e-5,
                silu,
            };
            let (xa, ga, ba) = (
                x.clone().require_grad(),
                gamma.clone().require_grad(),
                beta.clone().require_grad(),
            );
            let (y, mean, rstd) = composed_group_norm::<Ad>(
                primitive(xa.clone()),
                primitive(ga.clone()),
                primitive(ba.clone()),
                spec,
            );
            let grads = (float::<Ad, 3>(y) * Tensor::from_inner(upstream.clone()))
                .sum()
                .backward();
            let inner = |t: FloatTensor<Ad>| float::<Ad, 1>(t).inner();
            let (dx, dgamma, dbeta) = composed_group_norm_backward::<CpuBackend>(
                primitive(x.clone().inner()),
                primitive(gamma.clone().inner()),
                primitive(beta.clone().inner()),
                primitive(inner(mean)),
                primitive(inner(rstd)),
                primitive(upstream.clone()),
                spec,
            );
            assert!(
                close(float::<CpuBackend, 3>(dx), xa.grad(&grads).unwrap()),
                "dx silu {silu}"
            );
            assert!(
                close(float::<CpuBackend, 1>(dgamma), ga.grad(&grads).unwrap()),
                "dgamma silu {silu}"
            );
            assert!(
                close(float::<CpuBackend, 1>(dbeta), ba.grad(&grads).unwrap()),
                "dbeta silu {silu}"
            );
        }
    }

    /// burn-flex is patched (third_party/burn-flex/GENZOO-PATCH.md) to run
    /// element-wise ops on ≥ 2¹⁶ elements in parallel chunks: same-shape,
    /// shared-row and per-row-scalar operands, in place and copied, must
    /// give exactly the element-by-element result.
    #[test]
    fn large_element_wise_ops_match_element_by_element() {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        // 210,000 elements: rows of 1000 do not divide the 16,384 chunk.
        let (n, c, s) = (3, 70, 1000);
        let mut data = |dims: Vec<usize>| {
            let len = dims.iter().product::<usize>();
            normal_tensor::<CpuBackend, 1>(&mut rng, [len], 0.0, 1.0, &dev).into_data()
        };
        let (x, y) = (data(vec![n, c, s]), data(vec![n, c, s]));
        let (row, per_row) = (data(vec![s]), data(vec![n * c]));
        let v = |d: &TensorData| d.to_vec::<f32>().unwrap();
        let (xs, ys, rows, scalars) = (v(&x), v(&y), v(&row), v(&per_row));
        let fresh =
            |d: &TensorData| Tensor::<CpuBackend, 1>::from_data(d.clone(), &dev).reshape([n, c, s]);
        let check = |got: Tensor<CpuBackend, 3>, want: &dyn Fn(usize) -> f32, what: &str| {
            let got = got.into_data().to_vec::<f32>().unwrap();
            let bad = (0..got.len()).find(|&i| got[i] != want(i));
            assert!(bad.is_none(), "{what}: element {bad:?}");
        };
        for unique in [true, false] {
            let lhs = fresh(&x);
            // A second handle on the buffer forces the copying path.
            let keep = (!unique).then(|| lhs.clone());
            check(lhs + fresh(&y), &|i| xs[i] + ys[i], "same shape");
            let lhs = fresh(&x);
            let keep2 = (!unique).then(|| lhs.clone());
            let shared = Tensor::<CpuBackend, 1>::from_data(row.clone(), &dev).reshape([1, 1, s]);
            check(lhs * shared, &|i| xs[i] * rows[i % s], "shared row");
            let lhs = fresh(&x);
            let keep3 = (!unique).then(|| lhs.clone());
            let scalar =
                Tensor::<CpuBackend, 1>::from_data(per_row.clone(), &dev).reshape([n, c, 1]);
            check(lhs - scalar, &|i| xs[i] - scalars[i / s], "per-row scalar");
            drop((keep, keep2, keep3));
        }
    }

    #[test]
    fn cat_channels_matches_burns_cat_in_values_and_gradients() {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        let a = normal_tensor::<Ad, 4>(&mut rng, [2, 3, 4, 5], 0.0, 1.0, &dev);
        let b = normal_tensor::<Ad, 4>(&mut rng, [2, 5, 4, 5], 0.0, 1.0, &dev);
        let upstream = normal_tensor::<Ad, 4>(&mut rng, [2, 8, 4, 5], 0.0, 1.0, &dev);
        let run = |fused: bool| {
            let (a, b) = (a.clone().require_grad(), b.clone().require_grad());
            let y = if fused {
                cat_channels(a.clone(), b.clone())
            } else {
                Tensor::cat(vec![a.clone(), b.clone()], 1)
            };
            // `a` also feeds another op: its two gradients are added.
            let loss = (y.clone() * upstream.clone()).sum() + (a.clone() * a.clone()).sum();
            let grads = loss.backward();
            (y.inner(), a.grad(&grads).unwrap(), b.grad(&grads).unwrap())
        };
        let (ours, theirs) = (run(true), run(false));
        assert_eq!(max_diff(ours.0, theirs.0), 0.0);
        assert!(max_diff(ours.1, theirs.1) < 1e-6);
        assert_eq!(max_diff(ours.2, theirs.2), 0.0);
        // Untracked: the plain backend's kernel, on a strided view and with
        // an empty part.
        let wide = normal_tensor::<CpuBackend, 4>(&mut rng, [2, 3, 4, 7], 0.0, 1.0, &dev);
        let view = wide.slice([0..2, 0..3, 0..4, 1..6]);
        let plain_b = b.clone().inner();
        let expected = Tensor::cat(vec![view.clone(), plain_b.clone()], 1);
        assert_eq!(max_diff(cat_channels(view, plain_b.clone()), expected), 0.0);
        let empty = Tensor::<CpuBackend, 4>::zeros([2, 0, 4, 5], &dev);
        assert_eq!(max_diff(cat_channels(empty, plain_b.clone()), plain_b), 0.0);
        // Splits at the edges: one part empty.
        let grad = primitive(upstream.inner());
        for first in [0, 8] {
            let (da, db) = <CpuBackend as FusedOps>::fused_split_channels(grad.clone(), first);
            assert_eq!(da.shape().dims::<4>(), [2, first, 4, 5]);
            assert_eq!(db.shape().dims::<4>(), [2, 8 - first, 4, 5]);
        }
    }

    #[test]
    fn causal_attention_matches_burns_in_values_and_gradients() {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        // 150 and 129 cross the kernel's 64-row blocks (a partial last block);
        // small heads share a task (all of them, or 8 a task for [4, 4, 64,
        // 32]), heads of 256 × 16 have one each.
        for [b, h, t, d] in [
            [2, 3, 17, 8],
            [1, 2, 64, 32],
            [1, 1, 1, 4],
            [1, 2, 150, 8],
            [4, 4, 64, 32],
            [1, 2, 256, 16],
        ] {
            let mut input =
                || normal_tensor::<Ad, 4>(&mut rng, [b, h, t, d], 0.0, 1.5, &dev).require_grad();
            let (q, k, v) = (input(), input(), input());
            let upstream = normal_tensor::<Ad, 4>(&mut rng, [b, h, t, d], 0.0, 1.0, &dev);
            let ours = causal_attention(q.clone(), k.clone(), v.clone());
            // burn's decomposed attention with an explicit causal mask.
            let theirs = {
                let scores = q.clone().matmul(k.clone().swap_dims(2, 3)) / (d as f64).sqrt();
                let future = Tensor::<Ad, 2, Bool>::tril_mask([t, t], 0, &dev)
                    .unsqueeze::<4>()
                    .expand([b, h, t, t]);
                activation::softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3)
                    .matmul(v.clone())
            };
            assert!(max_diff(ours.clone().inner(), theirs.clone().inner()) < 1e-4);
            let ga = (ours * upstream.clone()).sum().backward();
            let gb = (theirs * upstream).sum().backward();
            for x in [&q, &k, &v] {
                let (a, b) = (x.grad(&ga).unwrap(), x.grad(&gb).unwrap());
                assert!(max_diff(a, b) < 1e-4, "{t}x{d}");
            }
            // The composed default (what other backends' FusedOps run) agrees too.
            let (out, lse) = composed_causal_attention::<CpuBackend>(
                primitive(q.clone().inner()),
                primitive(k.clone().inner()),
                primitive(v.clone().inner()),
                1.0 / (d as f32).sqrt(),
            );
            let fused = causal_attention(q.inner(), k.inner(), v.inner());
            assert!(max_diff(float::<CpuBackend, 4>(out), fused) < 1e-4);
            assert_eq!(float::<CpuBackend, 3>(lse).dims(), [b, h, t]);
        }
    }

    /// Generation's attention over a cache: the last T queries of a causal
    /// attention, computed from caches whose unfilled rows (NaN here) are
    /// never read; the kernel and the composition other backends run.
    #[test]
    fn cached_attention_is_the_last_rows_of_causal_attention() {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        // [b, h, T, seen, capacity, d]: one new query and several after a
        // prefix; a head size that 16 does not divide; enough work for the
        // parallel path; a single position.
        for [b, h, t, seen, capacity, d] in [
            [2, 3, 1, 17, 20, 8],
            [1, 2, 3, 40, 64, 20],
            [4, 4, 2, 300, 310, 16],
            [1, 1, 1, 1, 1, 4],
        ] {
            let mut input =
                || normal_tensor::<CpuBackend, 4>(&mut rng, [b, h, seen, d], 0.0, 1.5, &dev);
            let (q, k, v) = (input(), input(), input());
            let expected = causal_attention(q.clone(), k.clone(), v.clone()).narrow(2, seen - t, t);
            let cache = |x: Tensor<CpuBackend, 4>| {
                Tensor::<CpuBackend, 4>::full([b, h, capacity, d], f32::NAN, &dev)
                    .slice_assign([0..b, 0..h, 0..seen, 0..d], x)
            };
            let (key, value, q) = (cache(k), cache(v), q.narrow(2, seen - t, t));
            let ours = cached_attention(q.clone(), key.clone(), value.clone(), seen);
            assert_eq!(ours.dims(), [b, h, t, d]);
            assert!(
                max_diff(ours, expected.clone()) < 1e-5,
                "{b}x{h}x{t}x{seen}x{d}"
            );
            let composed = composed_cached_attention::<CpuBackend>(
                primitive(q),
                primitive(key),
                primitive(value),
                seen,
            );
            assert!(max_diff(float::<CpuBackend, 4>(composed), expected) < 1e-5);
        }
    }

    /// burn-flex is patched (third_party/burn-flex/GENZOO-PATCH.md) so that
    /// `slice_assign` writes a tensor that holds its buffer alone in place
    /// (a key/value cache grows by one position per step); a tensor that
    /// shares its buffer is still copied first, leaving the other intact.
    #[test]
    fn slice_assign_writes_in_place_only_what_is_held_alone() {
        let dev = CpuDevice::default();
        let address = |x: &Tensor<CpuBackend, 2>| {
            primitive(x.clone()).as_slice::<f32>().unwrap().as_ptr() as usize
        };
        let row = || Tensor::<CpuBackend, 2>::from_floats([[7.0, 8.0, 9.0]], &dev);
        let buffer = Tensor::<CpuBackend, 2>::zeros([4, 3], &dev);
        let before = address(&buffer);
        let written = buffer.slice_assign([2..3, 0..3], row());
        assert_eq!(address(&written), before, "held alone: written in place");
        let shared = written.clone();
        let copied = written.slice_assign([0..1, 0..3], row());
        assert_ne!(address(&copied), before, "shared: copied");
        let rows = |x: Tensor<CpuBackend, 2>| x.into_data().to_vec::<f32>().unwrap();
        let (z, r) = ([0.0f32; 3], [7.0f32, 8.0, 9.0]);
        assert_eq!(
            rows(shared),
            [z, z, r, z].concat(),
            "the other handle is untouched"
        );
        assert_eq!(rows(copied), [r, z, r, z].concat());
    }

    #[test]
    fn packed_self_attention_matches_split_heads_in_values_and_gradients() {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        for (b, t, n_head, head_size) in
            [(2, 17, 3, 8), (1, 64, 4, 32), (1, 1, 1, 4), (2, 129, 2, 8)]
        {
            let c = n_head * head_size;
            let qkv =
                normal_tensor::<Ad, 3>(&mut rng, [b, t, 3 * c], 0.0, 1.5, &dev).require_grad();
            let upstream = normal_tensor::<Ad, 3>(&mut rng, [b, t, c], 0.0, 1.0, &dev);
            let ours = causal_self_attention(qkv.clone(), n_head);
            // The heads split out, burn's decomposed attention with an
            // explicit mask, the heads merged back.
            let theirs = {
                let [q, k, v] = split_heads(qkv.clone(), n_head, 3);
                let scores = q.matmul(k.swap_dims(2, 3)) / (head_size as f64).sqrt();
                let future = Tensor::<Ad, 2, Bool>::tril_mask([t, t], 0, &dev)
                    .unsqueeze::<4>()
                    .expand([b, n_head, t, t]);
                merge_heads(
                    activation::softmax(scores.mask_fill(future, f32::NEG_INFINITY), 3).matmul(v),
                )
            };
            assert_eq!(ours.dims(), [b, t, c]);
            assert!(max_diff(ours.clone().inner(), theirs.clone().inner()) < 1e-4);
            let ga = (ours * upstream.clone()).sum().backward();
            let gb = (theirs * upstream).sum().backward();
            let (da, db) = (qkv.grad(&ga).unwrap(), qkv.grad(&gb).unwrap());
            assert!(max_diff(da, db) < 1e-4, "{t}x{c}");
        }
    }

    #[test]
    fn conv2d_matches_burns_in_values_and_gradients() {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        // (N, C_in, H, W, C_out, k, stride, padding): the U-Net's 3×3 convs,
        // its stride-2 downsampling, DCGAN's 4×4 stride 2, odd sizes.
        for (n, ci, h, w, co, k, s, p) in [
            (3, 4, 9, 7, 5, 3, 1, 1),
            (2, 3, 8, 8, 6, 3, 2, 1),
            (2, 2, 28, 28, 4, 4, 2, 1),
            (1, 1, 5, 6, 2, 1, 1, 0),
            (2, 3, 6, 5, 2, 3, 1, 0),
            (1, 2, 7, 9, 3, 5, 2, 2),
            (2, 1, 5, 5, 2, 3, 3, 2),
            // Stride 1 with more channels (the U-Net's shape of layer).
            (3, 9, 6, 7, 5, 3, 1, 1),
            (2, 8, 5, 5, 4, 3, 1, 0),
            (1, 8, 7, 6, 3, 5, 1, 2),
            // Stride 1 over ≥ 196 positions: the forward by kernel rows,
            // 'same' and 'valid' padding, and the U-Net's 28×28 layer.
            (2, 5, 14, 15, 3, 3, 1, 1),
            (1, 3, 16, 13, 4, 5, 1, 2),
            (1, 3, 18, 16, 2, 3, 1, 0),
            (2, 32, 28, 28, 32, 3, 1, 1),
        ] {
            let x = normal_tensor::<Ad, 4>(&mut rng, [n, ci, h, w], 0.0, 1.0, &dev).require_grad();
            let weight =
                normal_tensor::<Ad, 4>(&mut rng, [co, ci, k, k], 0.0, 0.5, &dev).require_grad();
            let bias = normal_tensor::<Ad, 1>(&mut rng, [co], 0.0, 0.5, &dev).require_grad();
            let geometry = ConvGeometry {
                stride: [s, s],
                padding: [p, p],
            };
            let ours = conv2d(x.clone(), weight.clone(), Some(bias.clone()), geometry);
            let theirs = burn::tensor::module::conv2d(
                x.clone(),
                weight.clone(),
                Some(bias.clone()),
                conv_options(geometry),
            );
            assert_eq!(ours.dims(), theirs.dims());
            assert!(max_diff(ours.clone().inner(), theirs.clone().inner()) < 1e-4);
            let upstream = normal_tensor::<Ad, 4>(&mut rng, ours.dims(), 0.0, 1.0, &dev);
            let ga = (ours * upstream.clone()).sum().backward();
            let gb = (theirs * upstream).sum().backward();
            assert!(max_diff(x.grad(&ga).unwrap(), x.grad(&gb).unwrap()) < 1e-4);
            assert!(close(weight.grad(&ga).unwrap(), weight.grad(&gb).unwrap()));
            assert!(close(bias.grad(&ga).unwrap(), bias.grad(&gb).unwrap()));

            // The transposed convolution with the same geometry, from [n, co, ...] back up.
            let y = normal_tensor::<Ad, 4>(
                &mut rng,
                theirs_shape(n, co, h, w, k, s, p),
                0.0,
                1.0,
                &dev,
            )
            .require_grad();
            let weight_t =
                normal_tensor::<Ad, 4>(&mut rng, [co, ci, k, k], 0.0, 0.5, &dev).require_grad();
            let bias_t = normal_tensor::<Ad, 1>(&mut rng, [ci], 0.0, 0.5, &dev).require_grad();
            let ours =
                conv_transpose2d(y.clone(), weight_t.clone(), Some(bias_t.clone()), geometry);
            let theirs = burn::tensor::module::conv_transpose2d(
                y.clone(),
                weight_t.clone(),
                Some(bias_t.clone()),
                conv_transpose_options(geometry),
            );
            assert_eq!(ours.dims(), theirs.dims());
            assert!(close(ours.clone().inner(), theirs.clone().inner()));
            let upstream = normal_tensor::<Ad, 4>(&mut rng, ours.dims(), 0.0, 1.0, &dev);
            let ga = (ours * upstream.clone()).sum().backward();
            let gb = (theirs * upstream).sum().backward();
            assert!(close(y.grad(&ga).unwrap(), y.grad(&gb).unwrap()));
            assert!(close(
                weight_t.grad(&ga).unwrap(),
                weight_t.grad(&gb).unwrap()
            ));
            assert!(close(bias_t.grad(&ga).unwrap(), bias_t.grad(&gb).unwrap()));
        }
    }

    /// The output shape of a convolution: the transposed one's input.
    fn theirs_shape(
        n: usize,
        co: usize,
        h: usize,
        w: usize,
        k: usize,
        s: usize,
        p: usize,
    ) -> [usize; 4] {
        [n, co, (h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1]
    }

    #[test]
    fn the_plain_backend_and_nested_autodiff_route_too() {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        let x = normal_tensor::<CpuBackend, 2>(&mut rng, [5, 33], 0.0, 2.0, &dev);
        assert!(max_diff(gelu(x.clone()), activation::gelu(x.clone())) < 1e-4);
        assert!(max_diff(silu(x.clone()), activation::silu(x.clone())) < 1e-4);
        // Second derivative of Σ silu(x) through nested autodiff (the fused
        // op's backward is differentiable): σ'(x)(2 + x(1 − 2σ(x))).
        type Ad2 = Autodiff<Autodiff<CpuBackend>>;
        let outer = Tensor::<Ad, 2>::from_inner(x.clone()).require_grad();
        let inner = Tensor::<Ad2, 2>::from_inner(outer.clone()).require_grad();
        let grads = silu(inner.clone()).sum().backward();
        let first = inner.grad(&grads).unwrap(); // Tensor<Ad, 2>, tracked
        let second = outer.grad(&first.sum().backward()).unwrap();
        let s = activation::sigmoid(x.clone());
        let expected = s.clone() * (s.clone().neg() + 1.0) * (x * (s * -2.0 + 1.0) + 2.0);
        assert!(max_diff(second, expected) < 1e-4);
    }
}
