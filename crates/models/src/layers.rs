//! Standard layers written for the CPU backend's fast paths.
//!
//! burn's CPU backend (Flex) vectorises element-wise ops between tensors of
//! one shape and ops with a per-row scalar (`[R, S]` with `[R, 1]`), but a
//! per-channel broadcast like `[1, C, 1, 1]` falls back to a scalar loop
//! (shared/notes/cpu-op-gap.md: BatchNorm 10–90× slower than PyTorch). The
//! functions here compute the same maths as burn's layers over `[N·C, H·W]`
//! views, with the same parameters, so checkpoints and every other backend
//! are unaffected.

use burn::module::Param;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::{BatchNorm, Initializer, Linear, PaddingConfig2d};
use burn::prelude::*;
use genzoo_core::fused::{self, ConvGeometry};
use genzoo_core::parallel;

/// `deconv.forward(x)` through genzoo's fused transposed convolution
/// ([`genzoo_core::fused::conv_transpose2d`]) when the layer fits it
/// (groups 1, dilation 1, no output padding), burn's otherwise.
pub fn conv_transpose2d<B: Backend>(deconv: &ConvTranspose2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    if deconv.groups != 1 || deconv.dilation != [1, 1] || deconv.padding_out != [0, 0] {
        return deconv.forward(x);
    }
    let geometry = ConvGeometry {
        stride: deconv.stride,
        padding: deconv.padding,
    };
    fused::conv_transpose2d(
        x,
        deconv.weight.val(),
        deconv.bias.as_ref().map(|b| b.val()),
        geometry,
    )
}

/// `conv.forward(x)` through genzoo's fused convolution
/// ([`genzoo_core::fused::conv2d`]) when the layer fits it (groups 1,
/// dilation 1, the same padding on both sides), burn's otherwise.
pub fn conv2d<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => [0, 0],
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == bottom && left == right => {
            [top, left]
        }
        _ => return conv.forward(x),
    };
    if conv.groups != 1 || conv.dilation != [1, 1] {
        return conv.forward(x);
    }
    let geometry = ConvGeometry {
        stride: conv.stride,
        padding,
    };
    fused::conv2d(
        x,
        conv.weight.val(),
        conv.bias.as_ref().map(|b| b.val()),
        geometry,
    )
}

/// `linear.forward(x)` for `[batch, t, d_in]`, computed over the
/// `[batch·t, d_in]` rows: one GEMM forward and one for the weight gradient.
/// burn's linear on a 3-D input multiplies batch element by batch element
/// and sums `batch` weight gradients of k = t each (gpt-char: 12 GEMMs of
/// k = 64 and a reduction, 4 % of a step, instead of one of k = 768).
/// `x` should be contiguous (the reshape is then free).
///
/// # Shapes
/// - x: `[batch, t, d_in]` → `[batch, t, d_out]`
pub fn linear_rows<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let [b, t, d_in] = x.dims();
    let y = linear.forward(x.reshape([b * t, d_in]));
    let d_out = y.dims()[1];
    y.reshape([b, t, d_out])
}

/// burn's [`BatchNorm::forward`]: the same maths, parameters and
/// running-statistics update, computed where the CPU backend is fast.
///
/// In training (an autodiff backend) it normalises with the batch's
/// statistics (biased variance, as burn does) and moves the running
/// statistics by `momentum`: one fused op with an analytic backward
/// ([`genzoo_core::fused::batch_norm`]). On a data-parallel replica the
/// batch is the global batch: statistics are averaged over replicas,
/// forward and backward ([`genzoo_core::parallel::replica_mean`]), over an
/// `[N·C, S]` view with per-row scale and shift (S = the product of the
/// dimensions after the channels). In inference it uses the running
/// statistics, over the same view.
///
/// # Shapes
/// - x: `[batch, channels, ...]` → same
pub fn batch_norm<B: Backend, const D: usize>(bn: &BatchNorm<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let dims = x.dims();
    let (n, c) = (dims[0], dims[1]);
    let s: usize = dims[2..].iter().product();
    let device = x.device();
    let training = B::ad_enabled(&device);
    // In a data-parallel run the statistics are those of the whole global
    // batch (synchronised BatchNorm): a step on N replicas is then the step
    // one device takes on the whole batch, and every replica's running
    // statistics stay equal.
    let replica = parallel::current().filter(|r| r.world > 1);
    if training && replica.is_none() {
        let (y, mean, var) = fused::batch_norm(
            x.reshape([n, c, s]),
            bn.gamma.val(),
            bn.beta.val(),
            bn.epsilon as f32,
        );
        update_running_stats(bn, mean, var);
        return y.reshape(dims);
    }

    let rows = x.reshape([n * c, s]);
    // A per-channel vector `[C]` as per-row scalars `[N·C, 1]`.
    let per_row = |v: Tensor<B, 1>| v.unsqueeze_dim::<2>(0).repeat_dim(0, n).reshape([n * c, 1]);
    // Per-channel mean of per-row values `[N·C, 1]`: `[C]`.
    let channel_mean = |r: Tensor<B, 2>| r.reshape([n, c]).mean_dim(0).reshape([c]);
    let over_replicas = |stat: Tensor<B, 1>| match replica {
        Some(r) => parallel::replica_mean(stat, r),
        None => stat,
    };
    let (centered, var) = if training {
        let mean = over_replicas(channel_mean(rows.clone().mean_dim(1)));
        let centered = rows - per_row(mean.clone());
        let var = over_replicas(channel_mean(centered.clone().square().mean_dim(1)));
        update_running_stats(bn, mean, var.clone());
        (centered, var)
    } else {
        let mean = bn.running_mean.value().to_device(&device);
        let var = bn.running_var.value().to_device(&device);
        (rows - per_row(mean), var)
    };
    let scale = bn.gamma.val() / (var + bn.epsilon).sqrt(); // [C]
    let y = centered * per_row(scale) + per_row(bn.beta.val());
    y.reshape(dims)
}

/// Moves `bn`'s running statistics towards a batch's by its momentum.
fn update_running_stats<B: Backend>(bn: &BatchNorm<B>, mean: Tensor<B, 1>, var: Tensor<B, 1>) {
    let device = mean.device();
    let m = bn.momentum;
    let running_mean =
        bn.running_mean.value_sync().to_device(&device) * (1.0 - m) + mean.detach() * m;
    let running_var = bn.running_var.value_sync().to_device(&device) * (1.0 - m) + var.detach() * m;
    bn.running_mean.update(running_mean.detach());
    bn.running_var.update(running_var.detach());
}

/// Layer normalisation (Ba et al. 2016) over the last dimension with a
/// learned scale γ and an optional shift β: the same parameters and record
/// as burn's `LayerNorm`, computed as one fused row normalisation
/// ([`genzoo_core::fused::normalize_rows`], an analytic backward on the CPU
/// backend) where burn's autodiff differentiates its layer norm op by op.
///
/// ```
/// use burn::prelude::*;
/// use genzoo_core::{CpuBackend, CpuDevice};
/// use genzoo_models::layers::LayerNorm;
/// let norm = LayerNorm::<CpuBackend>::new(4, true, &CpuDevice::default());
/// let x = Tensor::<CpuBackend, 3>::from_floats([[[1.0, 2.0, 3.0, 6.0]]], &CpuDevice::default());
/// let y = norm.forward(x);
/// assert!(y.mean().into_scalar().abs() < 1e-6);
/// ```
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    /// Scale γ, `[d_model]`.
    pub gamma: Param<Tensor<B, 1>>,
    /// Shift β, `[d_model]`, if the layer has one.
    pub beta: Option<Param<Tensor<B, 1>>>,
    epsilon: f64,
}

impl<B: Backend> LayerNorm<B> {
    /// γ = 1, β = 0 (when `bias`), ε = 1e-5 (burn's and PyTorch's default).
    pub fn new(d_model: usize, bias: bool, device: &B::Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([d_model], device),
            beta: bias.then(|| Initializer::Zeros.init([d_model], device)),
            epsilon: 1e-5,
        }
    }

    /// # Shapes
    /// - x: `[..., d_model]` → same
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let dims = x.dims();
        let d_model = dims[D - 1];
        let rows = dims[..D - 1].iter().product();
        // One row per position; γ and β broadcast over the rows.
        let normed = fused::normalize_rows(x.reshape([rows, d_model]), self.epsilon as f32);
        let scaled = normed * self.gamma.val().unsqueeze_dim::<2>(0);
        let shifted = match &self.beta {
            Some(beta) => scaled + beta.val().unsqueeze_dim::<2>(0),
            None => scaled,
        };
        shifted.reshape(dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::module::AutodiffModule;
    use burn::nn::BatchNormConfig;
    use genzoo_core::seed::{host_rng, normal_tensor, uniform_tensor};
    use genzoo_core::{CpuBackend, CpuDevice};

    type Ad = Autodiff<CpuBackend>;

    fn max_diff<const D: usize>(a: Tensor<CpuBackend, D>, b: Tensor<CpuBackend, D>) -> f32 {
        (a - b).abs().max().into_scalar()
    }

    /// Within 1e-4, relative to the reference's largest magnitude when that
    /// exceeds 1 (γ and β gradients sum over the whole batch).
    fn close<const D: usize>(
        ours: Tensor<CpuBackend, D>,
        reference: Tensor<CpuBackend, D>,
    ) -> bool {
        let scale = reference.clone().abs().max().into_scalar().max(1.0);
        max_diff(ours, reference) <= 1e-4 * scale
    }

    /// Values, gradients (input, γ, β) and running statistics against
    /// burn's module, in training and inference, for ranks 2 and 4.
    fn matches_burn<const D: usize>(shape: [usize; D]) {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        let c = shape[1];
        let ours: BatchNorm<Ad> = BatchNormConfig::new(c).init(&dev);
        // Non-trivial affine parameters, shared by both.
        let gamma = uniform_tensor::<Ad, 1>(&mut rng, [c], 0.5, 1.5, &dev);
        let beta = uniform_tensor::<Ad, 1>(&mut rng, [c], -0.5, 0.5, &dev);
        let ours = BatchNorm {
            gamma: burn::module::Param::from_tensor(gamma),
            beta: burn::module::Param::from_tensor(beta),
            ..ours
        };
        let theirs = ours.clone();
        let x = normal_tensor::<CpuBackend, D>(&mut rng, shape, 0.3, 2.0, &dev);
        let upstream = normal_tensor::<Ad, D>(&mut rng, shape, 0.0, 1.0, &dev);
        for step in 0..2 {
            let xa = Tensor::<Ad, D>::from_inner(x.clone()).require_grad();
            let xb = Tensor::<Ad, D>::from_inner(x.clone()).require_grad();
            let ya = batch_norm(&ours, xa.clone());
            let yb = theirs.forward(xb.clone());
            assert!(
                max_diff(ya.clone().inner(), yb.clone().inner()) < 1e-4,
                "step {step}"
            );
            let ga = (ya * upstream.clone()).sum().backward();
            let gb = (yb * upstream.clone()).sum().backward();
            let grad = |t: &Tensor<Ad, D>, g| t.grad(g).unwrap();
            assert!(max_diff(grad(&xa, &ga), grad(&xb, &gb)) < 1e-4);
            let pa = ours.gamma.grad(&ga).unwrap();
            let pb = theirs.gamma.grad(&gb).unwrap();
            assert!(close(pa, pb));
            let pa = ours.beta.grad(&ga).unwrap();
            let pb = theirs.beta.grad(&gb).unwrap();
            assert!(close(pa, pb));
            let stats = |bn: &BatchNorm<Ad>| {
                (
                    bn.running_mean.value().inner(),
                    bn.running_var.value().inner(),
                )
            };
            let ((ma, va), (mb, vb)) = (stats(&ours), stats(&theirs));
            assert!(max_diff(ma, mb) < 1e-5 && max_diff(va, vb) < 1e-4);
        }
        // Inference: the running statistics.
        let ya = batch_norm(&ours.valid(), x.clone());
        let yb = theirs.valid().forward(x);
        assert!(max_diff(ya, yb) < 1e-4);
    }

    #[test]
    fn layer_norm_matches_burns_module() {
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        for bias in [true, false] {
            let ours = LayerNorm::<Ad>::new(37, bias, &dev);
            let mut theirs = burn::nn::LayerNormConfig::new(37)
                .with_bias(bias)
                .init::<Ad>(&dev);
            // Non-trivial γ and β, the same in both.
            let gamma = normal_tensor::<Ad, 1>(&mut rng, [37], 1.0, 0.5, &dev);
            let beta = normal_tensor::<Ad, 1>(&mut rng, [37], 0.0, 0.5, &dev);
            let ours = LayerNorm {
                gamma: Param::from_tensor(gamma.clone()),
                beta: bias.then(|| Param::from_tensor(beta.clone())),
                ..ours
            };
            theirs.gamma = Param::from_tensor(gamma);
            theirs.beta = bias.then(|| Param::from_tensor(beta));
            let x = normal_tensor::<Ad, 3>(&mut rng, [3, 5, 37], 2.0, 3.0, &dev).require_grad();
            let upstream = normal_tensor::<Ad, 3>(&mut rng, [3, 5, 37], 0.0, 1.0, &dev);
            let (ya, yb) = (ours.forward(x.clone()), theirs.forward(x.clone()));
            assert!(max_diff(ya.clone().inner(), yb.clone().inner()) < 1e-4);
            let ga = (ya * upstream.clone()).sum().backward();
            let gb = (yb * upstream).sum().backward();
            assert!(close(x.grad(&ga).unwrap(), x.grad(&gb).unwrap()));
            let (pa, pb) = (ours.gamma.val(), theirs.gamma.val());
            assert!(close(pa.grad(&ga).unwrap(), pb.grad(&gb).unwrap()));
            if let (Some(a), Some(b)) = (&ours.beta, &theirs.beta) {
                assert!(close(
                    a.val().grad(&ga).unwrap(),
                    b.val().grad(&gb).unwrap()
                ));
            }
        }
    }

    #[test]
    fn batch_norm_matches_burns_module() {
        let _guard = crate::rng_lock();
        CpuBackend::seed(&CpuDevice::default(), 5);
        matches_burn([16, 6, 5, 7]);
        matches_burn([32, 9]);
    }
}
