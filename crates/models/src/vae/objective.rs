//! The VAE objective.
//!
//! Per example, the negative evidence lower bound (Kingma & Welling 2014, eq. 10):
//!
//! ```text
//! −ELBO(x) = E_q[−log p(x|z)] + KL(q(z|x) ‖ N(0, I))
//! ```
//!
//! with a Bernoulli decoder, so −log p(x|z) is the binary cross-entropy
//! with logits summed over pixels (targets are the pixel values in [0, 1]),
//! and the closed-form Gaussian KL (ibid., appendix B). The β-VAE objective
//! (Higgins et al. 2017) weights the KL by β; the reported −ELBO always
//! uses β = 1 so runs with different β compare on the same scale.

use burn::prelude::*;
use burn::tensor::activation::relu;

use super::model::Vae;

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
    let per_pixel =
        relu(logits.clone()) - logits.clone() * targets + logits.abs().neg().exp().log1p();
    per_pixel.sum_dim(1).reshape([n])
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
    let logits = model.decode(z, condition);
    ElboTerms {
        reconstruction: bernoulli_nll(logits, images),
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
    let logits = model.decode(z.clone(), condition.map(|c| c.repeat_dim(0, k)));
    let log_px_z = bernoulli_nll(logits, images.repeat_dim(0, k)).neg(); // [k·n]
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
        CpuBackend::seed(&dev, 3);
        let model = VaeConfig {
            hidden: 32,
            latent: 4,
            height: 8,
            width: 8,
            ..Default::default()
        }
        .init::<CpuBackend>(&dev);
        let x = Tensor::<CpuBackend, 4>::random(
            [16, 1, 8, 8],
            burn::tensor::Distribution::Uniform(0.0, 1.0),
            &dev,
        );
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
