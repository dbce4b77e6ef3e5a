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
//!
//! Where things are: this file holds the free functions and their routing;
//! `ops.rs` the trait, `composed.rs` its default compositions, `flex.rs`
//! Flex's implementation (its kernels in `kernels.rs`, `attention.rs` and
//! `conv.rs`), `autodiff.rs` the recorded ops with their backward passes.

use std::any::Any;

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn_flex::Flex;

mod attention;
mod autodiff;
mod composed;
mod conv;
mod flex;
mod kernels;
mod ops;
#[cfg(test)]
mod tests;

use composed::*;
pub use conv::{ConvGeometry, ConvGrads};
pub use ops::{FusedOps, GroupNormSpec};

/// Runs `op` on `input` when `In` (inputs of some backend `B`) is `InF`
/// (the same inputs of backend `F`), that is when `B` is `F`, and returns
/// its `OutF` as `Out` (the same outputs of `B`); hands `input` back
/// untouched otherwise. How the free functions reach one backend's
/// [`FusedOps`] by type, without `B: FusedOps` bounds on their callers.
pub(crate) fn route_as<In: 'static, InF: 'static, OutF: 'static, Out: 'static>(
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

/// Runs dropped self-attention through backend `F`'s [`FusedOps`] when `B`
/// is `F`; hands the inputs back untouched otherwise.
fn routed_dropped_attention<F: FusedOps, B: Backend>(
    inputs: (Tensor<B, 3>, Tensor<B, 4>),
    n_head: usize,
) -> std::result::Result<Tensor<B, 3>, (Tensor<B, 3>, Tensor<B, 4>)> {
    route_as(inputs, |(qkv, keep): (Tensor<F, 3>, Tensor<F, 4>)| {
        let out = F::fused_causal_self_attention_dropped(primitive(qkv), primitive(keep), n_head);
        float::<F, 3>(out)
    })
}

/// [`causal_self_attention`] with dropout on the attention weights
/// (nanoGPT's `attn_dropout`): the probability with which query i of head
/// h attends to key j is multiplied by `keep[b, h, i, j]` (0 where dropped,
/// 1/(1 − p) where kept; the caller draws it) before it weighs the values.
/// genzoo's fused kernels on the CPU backend (forward and backward, as
/// without dropout), burn's ops elsewhere.
///
/// # Shapes
/// - qkv: `[batch, t, 3·c]`, keep: `[batch, n_head, t, t]` → `[batch, t, c]`
///
/// ```
/// use burn::prelude::*;
/// use genzoo_core::{CpuBackend, CpuDevice};
/// let dev = CpuDevice::default();
/// let qkv = Tensor::<CpuBackend, 3>::ones([2, 5, 3 * 8], &dev);
/// let keep = Tensor::<CpuBackend, 4>::ones([2, 2, 5, 5], &dev); // nothing dropped
/// let y = genzoo_core::fused::causal_self_attention_dropped(qkv, keep, 2);
/// assert_eq!(y.dims(), [2, 5, 8]);
/// ```
pub fn causal_self_attention_dropped<B: Backend>(
    qkv: Tensor<B, 3>,
    keep: Tensor<B, 4>,
    n_head: usize,
) -> Tensor<B, 3> {
    routed_dropped_attention::<Flex, B>((qkv, keep), n_head)
        .or_else(|inputs| routed_dropped_attention::<Autodiff<Flex>, B>(inputs, n_head))
        .or_else(|inputs| routed_dropped_attention::<Autodiff<Autodiff<Flex>>, B>(inputs, n_head))
        .unwrap_or_else(|(qkv, keep)| {
            float(composed_dropped_self_attention::<B>(primitive(qkv), primitive(keep), n_head).0)
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
