//! Flex's [`FusedOps`]: the CPU kernels of [`super::kernels`],
//! [`super::attention`] and [`super::conv`].

use burn::tensor::ops::{ActivationOps, FloatTensor, FloatTensorOps, ModuleOps};
use burn_flex::Flex;

use super::composed::*;
use super::{ConvGeometry, ConvGrads, FusedOps, GroupNormSpec, attention, conv, kernels};

impl FusedOps for Flex {
    fn fused_gelu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        kernels::map(x, kernels::gelu).unwrap_or_else(Self::gelu)
    }

    fn fused_gelu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        kernels::zip(&x, grad, kernels::gelu_grad)
            .unwrap_or_else(|grad| composed_gelu_backward::<Self>(x, grad))
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
        kernels::zip(&x, grad, kernels::softplus_grad)
            .unwrap_or_else(|grad| Self::float_mul(Self::sigmoid(x), grad))
    }

    fn fused_silu_backward(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        kernels::zip(&x, grad, kernels::silu_grad)
            .unwrap_or_else(|grad| composed_silu_backward::<Self>(x, grad))
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
        kernels::zip(&x, grad, move |x, g| g * if x < 0.0 { slope } else { 1.0 })
            .unwrap_or_else(|grad| composed_leaky_relu_backward::<Self>(x, grad, slope))
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
        attention::packed_forward(&qkv, None, n_head)
            .unwrap_or_else(|| split_self_attention::<Self>(qkv, n_head))
    }

    fn fused_causal_self_attention_backward(
        qkv: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        n_head: usize,
    ) -> FloatTensor<Self> {
        attention::packed_backward(&qkv, None, &out, &lse, &grad, n_head)
            .unwrap_or_else(|| split_self_attention_backward::<Self>(qkv, out, lse, grad, n_head))
    }

    fn fused_causal_self_attention_dropped_with_lse(
        qkv: FloatTensor<Self>,
        keep: FloatTensor<Self>,
        n_head: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        attention::packed_forward(&qkv, Some(&keep), n_head)
            .unwrap_or_else(|| composed_dropped_self_attention::<Self>(qkv, keep, n_head))
    }

    fn fused_causal_self_attention_dropped_backward(
        qkv: FloatTensor<Self>,
        keep: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        n_head: usize,
    ) -> FloatTensor<Self> {
        attention::packed_backward(&qkv, Some(&keep), &out, &lse, &grad, n_head).unwrap_or_else(
            || composed_dropped_self_attention_backward::<Self>(qkv, keep, out, lse, grad, n_head),
        )
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
        wanted: ConvGrads,
    ) -> (Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        conv::backward(&x, &weight, &grad, geometry, wanted)
            .unwrap_or_else(|| composed_conv2d_backward::<Self>(x, weight, grad, geometry, wanted))
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
        wanted: ConvGrads,
    ) -> (Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        conv::transpose_backward(&x, &weight, &grad, geometry, wanted).unwrap_or_else(|| {
            composed_conv_transpose2d_backward::<Self>(x, weight, grad, geometry, wanted)
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
