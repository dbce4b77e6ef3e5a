//! The [`FusedOps`] trait: each method's default is the plain burn
//! composition, which every backend without a kernel of its own runs.

use burn::prelude::*;
use burn::tensor::ops::FloatTensor;

use super::composed::*;
use super::{ConvGeometry, ConvGrads};

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

    /// [`FusedOps::fused_causal_self_attention`] with dropout on the
    /// attention weights (nanoGPT's `attn_dropout`): the probability of
    /// head h, query i, key j is multiplied by `keep[b, h, i, j]` (0 for a
    /// dropped weight, 1/(1 − p) for a kept one; `[batch, n_head, T, T]`)
    /// before it weighs V.
    fn fused_causal_self_attention_dropped(
        qkv: FloatTensor<Self>,
        keep: FloatTensor<Self>,
        n_head: usize,
    ) -> FloatTensor<Self> {
        Self::fused_causal_self_attention_dropped_with_lse(qkv, keep, n_head).0
    }

    /// [`FusedOps::fused_causal_self_attention_dropped`] and the log-sum-exp
    /// of each score row (before dropout), which its backward needs.
    fn fused_causal_self_attention_dropped_with_lse(
        qkv: FloatTensor<Self>,
        keep: FloatTensor<Self>,
        n_head: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        composed_dropped_self_attention::<Self>(qkv, keep, n_head)
    }

    /// The gradient of [`FusedOps::fused_causal_self_attention_dropped`]
    /// with respect to its packed input (`keep` is a constant).
    fn fused_causal_self_attention_dropped_backward(
        qkv: FloatTensor<Self>,
        keep: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        n_head: usize,
    ) -> FloatTensor<Self> {
        composed_dropped_self_attention_backward::<Self>(qkv, keep, out, lse, grad, n_head)
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

    /// The gradients (dX, dW) of [`FusedOps::fused_conv2d`] given the
    /// output's: those `wanted`, `None` for the others.
    fn fused_conv2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geometry: ConvGeometry,
        wanted: ConvGrads,
    ) -> (Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        composed_conv2d_backward::<Self>(x, weight, grad, geometry, wanted)
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

    /// The gradients (dX, dW) of [`FusedOps::fused_conv_transpose2d`],
    /// those `wanted`.
    fn fused_conv_transpose2d_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        geometry: ConvGeometry,
        wanted: ConvGrads,
    ) -> (Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        composed_conv_transpose2d_backward::<Self>(x, weight, grad, geometry, wanted)
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

/// What [`group_norm`](super::group_norm) computes: the number of channel groups, the ε added
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

#[cfg(feature = "wgpu")]
impl FusedOps for burn::backend::Wgpu {}

#[cfg(feature = "cuda")]
impl FusedOps for burn::backend::Cuda {}
