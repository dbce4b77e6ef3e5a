//! The fused operations composed of burn's own: [`super::FusedOps`]'s
//! defaults and the backward passes autodiff differentiates through.

use burn::prelude::*;
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions, FloatTensor};
use burn::tensor::{TensorMetadata, TensorPrimitive};

use super::{ConvGeometry, ConvGrads, FusedOps, GroupNormSpec};

pub(super) fn composed_split_channels<B: Backend>(
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

pub(super) fn composed_group_norm<B: Backend>(
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

pub(super) fn composed_group_norm_backward<B: Backend>(
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
pub(super) fn per_channel<B: Backend>(v: FloatTensor<B>) -> Tensor<B, 3> {
    let v = float::<B, 1>(v);
    let c = v.dims()[0];
    v.reshape([1, c, 1])
}

pub(super) fn composed_batch_norm<B: Backend>(
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

pub(super) fn composed_batch_norm_backward<B: Backend>(
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

pub(super) fn composed_normalize_rows<B: Backend>(
    x: FloatTensor<B>,
    eps: f32,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let x = float::<B, 2>(x);
    let (var, mean) = x.clone().var_mean_bias(1);
    let rstd = (var + eps as f64).sqrt().recip();
    let y = (x - mean) * rstd.clone();
    (y.into_primitive().tensor(), rstd.into_primitive().tensor())
}

pub(super) fn composed_normalize_rows_backward<B: Backend>(
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

pub(super) fn conv_options(g: ConvGeometry) -> ConvOptions<2> {
    ConvOptions::new(g.stride, g.padding, [1, 1], 1)
}

pub(super) fn conv_transpose_options(g: ConvGeometry) -> ConvTransposeOptions<2> {
    ConvTransposeOptions::new(g.stride, g.padding, [0, 0], [1, 1], 1)
}

/// (dX, dW) of a convolution from burn's own backward ops.
pub(super) fn composed_conv2d_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    geometry: ConvGeometry,
    wanted: ConvGrads,
) -> (Option<FloatTensor<B>>, Option<FloatTensor<B>>) {
    let options = conv_options(geometry);
    let dx = wanted
        .x
        .then(|| B::conv2d_x_backward(x.clone(), weight.clone(), grad.clone(), options.clone()));
    let dw = wanted
        .weight
        .then(|| B::conv2d_weight_backward(x, weight, grad, options));
    (dx, dw)
}

/// (dX, dW) of a transposed convolution from burn's own backward ops.
pub(super) fn composed_conv_transpose2d_backward<B: Backend>(
    x: FloatTensor<B>,
    weight: FloatTensor<B>,
    grad: FloatTensor<B>,
    geometry: ConvGeometry,
    wanted: ConvGrads,
) -> (Option<FloatTensor<B>>, Option<FloatTensor<B>>) {
    let options = conv_transpose_options(geometry);
    let dx = wanted
        .x
        .then(|| B::conv_transpose2d_x_backward(weight.clone(), grad.clone(), options.clone()));
    let dw = wanted
        .weight
        .then(|| B::conv_transpose2d_weight_backward(x, weight, grad, options));
    (dx, dw)
}

pub(super) fn float<B: Backend, const D: usize>(x: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

pub(super) fn primitive<B: Backend, const D: usize>(x: Tensor<B, D>) -> FloatTensor<B> {
    x.into_primitive().tensor()
}

/// Scores with the future masked out: `[B, H, T, T]`.
pub(super) fn causal_scores<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    scale: f32,
) -> Tensor<B, 4> {
    let [b, h, t, _] = q.dims();
    let future = Tensor::<B, 2, Bool>::tril_mask([t, t], 0, &q.device())
        .unsqueeze::<4>()
        .expand([b, h, t, t]);
    (q.matmul(k.swap_dims(2, 3)) * scale).mask_fill(future, f32::NEG_INFINITY)
}

/// `parts` tensors packed side by side in `[B, T, parts·C]`, each split
/// into `n_head` heads: `[B, n_head, T, C/n_head]` views.
pub(super) fn split_heads<B: Backend, const N: usize>(
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
pub(super) fn merge_heads<B: Backend>(heads: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, h, t, d] = heads.dims();
    heads.swap_dims(1, 2).reshape([b, t, h * d])
}

/// Packed self-attention through split heads and `B`'s own causal
/// attention: what a backend without a packed kernel runs.
pub(super) fn split_self_attention<B: FusedOps>(
    qkv: FloatTensor<B>,
    n_head: usize,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [q, k, v] = split_heads::<B, _>(float(qkv), n_head, 3).map(primitive);
    let scale = 1.0 / (q.shape()[3] as f32).sqrt();
    let (out, lse) = B::fused_causal_attention_with_lse(q, k, v, scale);
    (primitive(merge_heads(float::<B, 4>(out))), lse)
}

/// The backward of [`split_self_attention`]: d qkv `[B, T, 3·C]`.
pub(super) fn split_self_attention_backward<B: FusedOps>(
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
pub(super) fn composed_causal_attention<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    scale: f32,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let (p, lse) = causal_probabilities::<B>(float(q), float(k), scale);
    let out = p.matmul(float(v));
    (primitive(out), primitive(lse.squeeze_dim::<3>(3)))
}

/// The causal attention probabilities `[B, H, T, T]` and each row's
/// log-sum-exp `[B, H, T, 1]`.
fn causal_probabilities<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    scale: f32,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let scores = causal_scores(q, k, scale);
    let max = scores.clone().max_dim(3).detach(); // [B, H, T, 1]; the diagonal keeps it finite
    let lse = (scores.clone() - max.clone()).exp().sum_dim(3).log() + max;
    ((scores - lse.clone()).exp(), lse)
}

/// Packed self-attention with dropout's multipliers `keep` (`[B, H, T, T]`)
/// on the weights, and the rows' log-sum-exp, from burn's tensor ops.
pub(super) fn composed_dropped_self_attention<B: Backend>(
    qkv: FloatTensor<B>,
    keep: FloatTensor<B>,
    n_head: usize,
) -> (FloatTensor<B>, FloatTensor<B>) {
    let [q, k, v] = split_heads::<B, 3>(float(qkv), n_head, 3);
    let scale = 1.0 / (q.dims()[3] as f32).sqrt();
    let (p, lse) = causal_probabilities(q, k, scale);
    let out = (p * float::<B, 4>(keep)).matmul(v);
    (
        primitive(merge_heads(out)),
        primitive(lse.squeeze_dim::<3>(3)),
    )
}

/// The backward of [`composed_dropped_self_attention`]: d qkv `[B, T, 3·C]`.
pub(super) fn composed_dropped_self_attention_backward<B: Backend>(
    qkv: FloatTensor<B>,
    keep: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    grad: FloatTensor<B>,
    n_head: usize,
) -> FloatTensor<B> {
    let [q, k, v] = split_heads::<B, 3>(float(qkv), n_head, 3);
    let [out] = split_heads::<B, 1>(float(out), n_head, 1);
    let [grad] = split_heads::<B, 1>(float(grad), n_head, 1);
    let scale = 1.0 / (q.dims()[3] as f32).sqrt();
    let lse = float::<B, 3>(lse);
    let grads = attention_backward([q, k, v, out, grad], lse, Some(float(keep)), scale);
    let merged = grads.map(merge_heads);
    primitive(Tensor::cat(merged.to_vec(), 2))
}

/// Cached attention from burn's tensor ops: the filled part of the caches,
/// the positions past `seen − T + i` masked for query i.
pub(super) fn composed_cached_attention<B: Backend>(
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
pub(super) fn composed_causal_attention_backward<B: Backend>(
    q: FloatTensor<B>,
    k: FloatTensor<B>,
    v: FloatTensor<B>,
    out: FloatTensor<B>,
    lse: FloatTensor<B>,
    grad: FloatTensor<B>,
    scale: f32,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let inputs = [q, k, v, out, grad].map(float::<B, 4>);
    let [dq, dk, dv] = attention_backward(inputs, float(lse), None, scale).map(primitive);
    (dq, dk, dv)
}

/// dQ, dK, dV of causal attention (with dropout's multipliers `keep`, if
/// any: O = (P ∘ M)·V) from q, k, v, the output, its gradient and the rows'
/// log-sum-exp (`[B, H, T]`), P recomputed from it.
fn attention_backward<B: Backend>(
    [q, k, v, out, grad]: [Tensor<B, 4>; 5],
    lse: Tensor<B, 3>,
    keep: Option<Tensor<B, 4>>,
    scale: f32,
) -> [Tensor<B, 4>; 3] {
    let p = (causal_scores(q.clone(), k.clone(), scale) - lse.unsqueeze_dim::<4>(3)).exp(); // [B, H, T, T]
    let dp = grad.clone().matmul(v.swap_dims(2, 3));
    let (dp, dropped) = match keep {
        Some(keep) => (dp * keep.clone(), p.clone() * keep),
        None => (dp, p.clone()),
    };
    let dv = dropped.swap_dims(2, 3).matmul(grad.clone());
    // Σⱼ Pᵢⱼ·dPᵢⱼ = dOᵢ·Oᵢ, with or without dropout.
    let row_dot = (grad * out).sum_dim(3); // [B, H, T, 1]
    let ds = p * (dp - row_dot);
    let dq = ds.clone().matmul(k) * scale;
    let dk = ds.swap_dims(2, 3).matmul(q) * scale;
    [dq, dk, dv]
}

/// (Φ(x) + x·φ(x))·grad from differentiable float ops (burn's own
/// `gelu_backward` is the derivative of the tanh approximation).
pub(super) fn composed_gelu_backward<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
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
pub(super) fn composed_softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    burn::tensor::activation::relu(x.clone()) + x.abs().neg().exp().log1p()
}

/// `[N, C, H, W]` → `[N, C, 2H, 2W]` as a broadcast over two new axes.
pub(super) fn composed_upsample_nearest2<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let [n, c, h, w] = x.shape().dims();
    let x = B::float_reshape(x, Shape::new([n, c, h, 1, w, 1]));
    let x = B::float_expand(x, Shape::new([n, c, h, 2, w, 2]));
    B::float_reshape(x, Shape::new([n, c, 2 * h, 2 * w]))
}

/// The sum of each 2×2 block of `grad`, from differentiable float ops.
pub(super) fn composed_upsample_nearest2_backward<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let [n, c, h, w] = x.shape().dims();
    let grad = B::float_reshape(grad, Shape::new([n, c, h, 2, w, 2]));
    let grad = B::float_sum_dim(B::float_sum_dim(grad, 5), 3);
    B::float_reshape(grad, Shape::new([n, c, h, w]))
}

/// x·σ(x).
pub(super) fn composed_silu<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    B::float_mul(x.clone(), B::sigmoid(x))
}

/// grad where x ≥ 0, slope·grad below, from differentiable float ops.
pub(super) fn composed_leaky_relu_backward<B: Backend>(
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
pub(super) fn composed_silu_backward<B: Backend>(
    x: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> FloatTensor<B> {
    let s = B::sigmoid(x.clone());
    let one_minus = B::float_add_scalar(B::float_neg(s.clone()), 1.0.into());
    let inner = B::float_add_scalar(B::float_mul(x, one_minus), 1.0.into());
    B::float_mul(B::float_mul(s, inner), grad)
}
