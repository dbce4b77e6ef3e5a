//! The VAE objective.
//!
//! Per example, the negative evidence lower bound (Kingma & Welling 2014, eq. 10):
//!
//! ```text
//! −ELBO(x) = E_q[−log p(x|z)] + KL(q(z|x) ‖ N(0, I))
//! ```
//!
//! with −log p(x|z) summed over pixels: the binary cross-entropy with logits
//! for a Bernoulli decoder (targets are the pixel values in [0, 1]), or the
//! discretised-logistic NLL of the 8-bit values; and the closed-form Gaussian
//! KL (ibid., appendix B). The β-VAE objective
//! (Higgins et al. 2017) weights the KL by β; the reported −ELBO always
//! uses β = 1 so runs with different β compare on the same scale.

use burn::prelude::*;
// max(x, 0) + log(1 + e^−|x|): burn's own `softplus` overflows past x ≈ 88.
use burn::tensor::activation::sigmoid;
use genzoo_core::fused::softplus;

use super::model::{PixelLikelihood, Vae};

/// Per-example terms of the objective, each `[batch]`, in nats.
#[derive(Clone, Debug)]
pub struct ElboTerms<B: Backend> {
    /// −log p(x|z) for one z ~ q(z|x).
    pub reconstruction: Tensor<B, 1>,
    /// KL(q(z|x) ‖ p(z)).
    pub kl: Tensor<B, 1>,
}

impl<B: Backend> ElboTerms<B> {
    /// −ELBO per example (β = 1).
    pub fn neg_elbo(&self) -> Tensor<B, 1> {
        self.reconstruction.clone() + self.kl.clone()
    }

    /// The batch mean of reconstruction + β·KL: the loss that is minimised.
    pub fn loss(&self, beta: f64) -> Tensor<B, 1> {
        (self.reconstruction.clone() + self.kl.clone() * beta).mean()
    }
}

/// Binary cross-entropy with logits, summed over all but the batch dimension,
/// in the numerically stable form max(l, 0) − l·x + log(1 + e^−|l|).
///
/// # Shapes
/// - logits, targets: `[batch, ...]` (any rank, flattened per example)
/// - returns: `[batch]`
pub fn bernoulli_nll<B: Backend, const D: usize>(
    logits: Tensor<B, D>,
    targets: Tensor<B, D>,
) -> Tensor<B, 1> {
    let n = logits.dims()[0];
    let logits = logits.reshape([n as i32, -1]);
    let targets = targets.reshape([n as i32, -1]);
    let per_pixel = softplus(logits.clone()) - logits * targets;
    per_pixel.sum_dim(1).reshape([n])
}

/// The smallest log-scale of the discretised logistic: a scale of e⁻⁷ ≈ 0.0009
/// is already below half a bin (1/510), so smaller ones only risk overflow
/// (the bound PixelCNN++ uses).
pub const MIN_LOG_SCALE: f64 = -7.0;

/// The NLL of 8-bit images under a discretised logistic per pixel (Salimans
/// et al. 2017, eq. 2, one mixture component), summed over pixels, in nats.
///
/// Pixel values are k/255 in [0, 1]. Value x has the logistic mass of its bin
/// [x − 1/510, x + 1/510]; the bins of 0 and 1 extend to −∞ and +∞, so the
/// 256 probabilities sum to one. Where the mass underflows in f32 the density
/// at the bin centre times the bin width stands in for it.
///
/// # Shapes
/// - params: `[batch, 2·C, H, W]`: means (first C channels) and log-scales
/// - images: `[batch, C, H, W]`
/// - returns: `[batch]`
pub fn discretized_logistic_nll<B: Backend>(
    params: Tensor<B, 4>,
    images: Tensor<B, 4>,
) -> Tensor<B, 1> {
    let [n, c, h, w] = images.dims();
    let mean = params.clone().slice([0..n, 0..c, 0..h, 0..w]);
    let log_scale = params
        .slice([0..n, c..2 * c, 0..h, 0..w])
        .clamp_min(MIN_LOG_SCALE);
    let half_bin = 0.5 / 255.0;
    let inv_scale = log_scale.clone().neg().exp();
    let centered = images.clone() - mean;
    let upper = (centered.clone() + half_bin) * inv_scale.clone();
    let lower = (centered.clone() - half_bin) * inv_scale.clone();
    // log σ(a) = a − softplus(a); log(1 − σ(a)) = −softplus(a).
    let log_cdf_upper = upper.clone() - softplus(upper.clone());
    let log_survival_lower = softplus(lower.clone()).neg();
    let mass = sigmoid(upper) - sigmoid(lower);
    let mid = centered * inv_scale;
    let log_density_mid = mid.clone() - log_scale - softplus(mid) * 2.0;
    let interior = mass
        .clone()
        .clamp_min(1e-12)
        .log()
        .mask_where(mass.lower_elem(1e-5), log_density_mid - 255f64.ln());
    let log_prob = interior
        .mask_where(
            images.clone().greater_elem(1.0 - half_bin),
            log_survival_lower,
        )
        .mask_where(images.lower_elem(half_bin), log_cdf_upper);
    log_prob
        .reshape([n as i32, -1])
        .sum_dim(1)
        .reshape([n])
        .neg()
}

/// −log p(x|z) summed over pixels under the model's likelihood, `[batch]`.
pub fn reconstruction_nll<B: Backend>(
    likelihood: PixelLikelihood,
    params: Tensor<B, 4>,
    images: Tensor<B, 4>,
) -> Tensor<B, 1> {
    match likelihood {
        PixelLikelihood::Bernoulli => bernoulli_nll(params, images),
        PixelLikelihood::DiscretizedLogistic => discretized_logistic_nll(params, images),
    }
}

/// KL(N(μ, σ²) ‖ N(0, I)) = −½ Σ (1 + log σ² − μ² − σ²).
///
/// # Shapes
/// - mu, log_var: `[batch, latent]`
/// - returns: `[batch]`
pub fn gaussian_kl<B: Backend>(mu: Tensor<B, 2>, log_var: Tensor<B, 2>) -> Tensor<B, 1> {
    let n = mu.dims()[0];
    let terms = log_var.clone() + 1.0 - mu.powi_scalar(2) - log_var.exp();
    (terms.sum_dim(1) * -0.5).reshape([n])
}

/// One-sample estimate of the objective's terms for a batch.
pub fn elbo_terms<B: Backend>(
    model: &Vae<B>,
    images: Tensor<B, 4>,
    labels: Tensor<B, 1, Int>,
) -> ElboTerms<B> {
    let condition = model.condition(labels);
    let (mu, log_var) = model.encode(images.clone(), condition.clone());
    let z = Vae::reparameterize(mu.clone(), log_var.clone());
    let params = model.decode(z, condition);
    ElboTerms {
        reconstruction: reconstruction_nll(model.likelihood(), params, images),
        kl: gaussian_kl(mu, log_var),
    }
}

/// The importance-weighted estimate of −log p(x) (Burda et al. 2016, eq. 8)
/// with `k` samples per example, in nats, `[batch]`:
///
/// ```text
/// −log p(x) ≈ −log (1/k) Σᵢ p(x|zᵢ) p(zᵢ) / q(zᵢ|x),   zᵢ ~ q(z|x)
/// ```
///
/// It is an upper bound on the NLL that tightens as k grows (k = 1 is the −ELBO).
pub fn iwae_nll<B: Backend>(
    model: &Vae<B>,
    images: Tensor<B, 4>,
    labels: Tensor<B, 1, Int>,
    k: usize,
) -> Tensor<B, 1> {
    let k = k.max(1);
    let n = images.dims()[0];
    let condition = model.condition(labels);
    let (mu, log_var) = model.encode(images.clone(), condition.clone());
    // Tile everything k times along the batch: row i·n + j is sample i of example j.
    let mu_k = mu.repeat_dim(0, k); // [k·n, latent]
    let log_var_k = log_var.repeat_dim(0, k);
    let z = Vae::reparameterize(mu_k.clone(), log_var_k.clone());
    let params = model.decode(z.clone(), condition.map(|c| c.repeat_dim(0, k)));
    let log_px_z = reconstruction_nll(model.likelihood(), params, images.repeat_dim(0, k)).neg(); // [k·n]
    let ln_2pi = (2.0 * std::f64::consts::PI).ln();
    let log_pz = (z.clone().powi_scalar(2) + ln_2pi)
        .sum_dim(1)
        .reshape([k * n])
        * -0.5;
    let log_qz = ((z - mu_k).powi_scalar(2) / log_var_k.clone().exp() + log_var_k + ln_2pi)
        .sum_dim(1)
        .reshape([k * n])
        * -0.5;
    let log_w = (log_px_z + log_pz - log_qz).reshape([k, n]);
    // log-mean-exp over the k samples, stabilised by the max.
    let max = log_w.clone().max_dim(0); // [1, n]
    let lme = (log_w - max.clone()).exp().mean_dim(0).log() + max;
    lme.reshape([n]).neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vae::VaeConfig;
    use genzoo_core::seed::{host_rng, uniform_tensor};
    use genzoo_core::{CpuBackend, CpuDevice};

    #[test]
    fn bce_matches_the_naive_formula() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let l = Tensor::<CpuBackend, 2>::from_floats([[0.5, -2.0, 3.0]], &dev);
        let x = Tensor::<CpuBackend, 2>::from_floats([[1.0, 0.25, 0.0]], &dev);
        let got = bernoulli_nll(l, x).into_scalar();
        let naive: f32 = [(0.5f32, 1.0f32), (-2.0, 0.25), (3.0, 0.0)]
            .iter()
            .map(|&(l, x)| {
                let p = 1.0 / (1.0 + (-l).exp());
                -(x * p.ln() + (1.0 - x) * (1.0 - p).ln())
            })
            .sum();
        assert!((got - naive).abs() < 1e-5, "{got} vs {naive}");
    }

    /// The logistic CDF in f64, for the naive reference.
    fn logistic_cdf(x: f64, mean: f64, scale: f64) -> f64 {
        1.0 / (1.0 + (-(x - mean) / scale).exp())
    }

    #[test]
    fn discretized_logistic_is_a_distribution_over_the_256_values() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        // One pixel, every value k/255, under a few (mean, log-scale) pairs,
        // from wide to narrower than a bin and at the edges.
        for (mean, log_scale) in [
            (0.5f64, -1.0f64),
            (0.02, -3.0),
            (0.99, -4.0),
            (0.3, -7.5),
            (1.4, 0.5),
        ] {
            let values: Vec<f32> = (0..256).map(|k| k as f32 / 255.0).collect();
            let images = Tensor::<CpuBackend, 1>::from_floats(values.as_slice(), &dev)
                .reshape([256, 1, 1, 1]);
            let params =
                Tensor::<CpuBackend, 1>::from_floats([mean as f32, log_scale as f32], &dev)
                    .reshape([1, 2, 1, 1])
                    .repeat_dim(0, 256);
            let nll: Vec<f32> = discretized_logistic_nll(params, images)
                .into_data()
                .to_vec()
                .unwrap();
            let total: f64 = nll.iter().map(|&l| (-(l as f64)).exp()).sum();
            assert!(
                (total - 1.0).abs() < 2e-3,
                "({mean}, {log_scale}): mass {total}"
            );
            // Each value against the naive f64 formula where its mass is not tiny.
            let scale = log_scale.max(MIN_LOG_SCALE).exp();
            for (k, &l) in nll.iter().enumerate() {
                let x = k as f64 / 255.0;
                let upper = if k == 255 {
                    1.0
                } else {
                    logistic_cdf(x + 0.5 / 255.0, mean, scale)
                };
                let lower = if k == 0 {
                    0.0
                } else {
                    logistic_cdf(x - 0.5 / 255.0, mean, scale)
                };
                let p = upper - lower;
                if p > 1e-4 {
                    let naive = -p.ln();
                    assert!(
                        (l as f64 - naive).abs() < 1e-3 * naive.abs().max(1.0),
                        "({mean}, {log_scale}) k={k}: {l} vs {naive}"
                    );
                }
            }
        }
    }

    #[test]
    fn discretized_logistic_gradients_are_finite_for_extreme_parameters() {
        let _guard = crate::rng_lock();
        type Ad = burn::backend::Autodiff<CpuBackend>;
        let dev = CpuDevice::default();
        let params = Tensor::<Ad, 1>::from_floats([3.0, -20.0, -2.0, 9.0, 0.5, -7.0], &dev)
            .reshape([3, 2, 1, 1])
            .require_grad();
        let images =
            Tensor::<Ad, 1>::from_floats([0.0, 1.0, 128.0 / 255.0], &dev).reshape([3, 1, 1, 1]);
        let loss = discretized_logistic_nll(params.clone(), images).sum();
        assert!(loss.clone().into_scalar().is_finite());
        let grads = loss.backward();
        let g: Vec<f32> = params.grad(&grads).unwrap().into_data().to_vec().unwrap();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    }

    #[test]
    fn kl_is_zero_at_the_prior_and_positive_elsewhere() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let zero = Tensor::<CpuBackend, 2>::zeros([2, 3], &dev);
        assert!(
            gaussian_kl(zero.clone(), zero.clone())
                .abs()
                .max()
                .into_scalar()
                < 1e-7
        );
        let mu = Tensor::<CpuBackend, 2>::ones([1, 1], &dev);
        // KL(N(1,1) || N(0,1)) = 0.5
        assert!((gaussian_kl(mu, Tensor::zeros([1, 1], &dev)).into_scalar() - 0.5).abs() < 1e-6);
    }

    #[test]
    fn iwae_bound_is_tighter_than_the_elbo_on_average() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        CpuBackend::seed(&dev, 3);
        let model = VaeConfig {
            hidden: 32,
            latent: 4,
            height: 8,
            width: 8,
            ..Default::default()
        }
        .init::<CpuBackend>(&dev);
        let x = uniform_tensor::<CpuBackend, 4>(&mut rng, [16, 1, 8, 8], 0.0, 1.0, &dev);
        let labels = Tensor::<CpuBackend, 1, Int>::zeros([16], &dev);
        let elbo: f32 = (0..20)
            .map(|_| {
                elbo_terms(&model, x.clone(), labels.clone())
                    .neg_elbo()
                    .mean()
                    .into_scalar()
            })
            .sum::<f32>()
            / 20.0;
        let iwae: f32 = iwae_nll(&model, x, labels, 64).mean().into_scalar();
        assert!(iwae < elbo, "IWAE {iwae} should be below the -ELBO {elbo}");
        assert!(iwae > 0.0);
    }
}
