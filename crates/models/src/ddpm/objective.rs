//! What a DDPM learns and how it is scored: the forward sample q(x_t | x_0),
//! the network's target (ε or v) and the conversions between ε, v and x_0,
//! the simple MSE loss (Ho et al. 2020, eq. 14), and the variational bound
//! in bits/dim (Ho et al. eq. 5 with the discretised decoder at t = 0).

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::schedule::NoiseSchedule;

/// What the network predicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    /// The noise ε (Ho et al. 2020).
    #[default]
    Epsilon,
    /// The velocity v = √ᾱ·ε − √(1−ᾱ)·x_0 (Salimans & Ho 2022, §4).
    V,
}

/// Per-example values as a `[batch, 1, 1, 1]` tensor that broadcasts over images.
pub fn per_example<B: Backend>(values: &[f64], device: &B::Device) -> Tensor<B, 4> {
    let v: Vec<f32> = values.iter().map(|x| *x as f32).collect();
    Tensor::<B, 1>::from_floats(v.as_slice(), device).reshape([values.len(), 1, 1, 1])
}

/// √ᾱ_t and √(1 − ᾱ_t) for each example's timestep, `[batch, 1, 1, 1]` each.
pub fn signal_and_noise_scales<B: Backend>(
    schedule: &NoiseSchedule,
    t: &[usize],
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 4>) {
    let signal: Vec<f64> = t.iter().map(|&t| schedule.alpha_bar(t).sqrt()).collect();
    let noise: Vec<f64> = t
        .iter()
        .map(|&t| (1.0 - schedule.alpha_bar(t)).sqrt())
        .collect();
    (per_example(&signal, device), per_example(&noise, device))
}

/// The forward process in one jump: x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (Ho et al. eq. 4).
pub fn q_sample<B: Backend>(
    schedule: &NoiseSchedule,
    x0: Tensor<B, 4>,
    t: &[usize],
    noise: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let (a, s) = signal_and_noise_scales(schedule, t, &x0.device());
    x0 * a + noise * s
}

impl Prediction {
    /// The regression target for (x_0, ε) at timesteps `t`.
    pub fn target<B: Backend>(
        self,
        schedule: &NoiseSchedule,
        x0: Tensor<B, 4>,
        noise: Tensor<B, 4>,
        t: &[usize],
    ) -> Tensor<B, 4> {
        match self {
            Prediction::Epsilon => noise,
            Prediction::V => {
                let (a, s) = signal_and_noise_scales(schedule, t, &x0.device());
                noise * a - x0 * s
            }
        }
    }

    /// (x̂_0, ε̂) from the network's output on x_t at timesteps `t`.
    pub fn to_x0_and_eps<B: Backend>(
        self,
        schedule: &NoiseSchedule,
        x_t: Tensor<B, 4>,
        output: Tensor<B, 4>,
        t: &[usize],
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let (a, s) = signal_and_noise_scales(schedule, t, &x_t.device());
        match self {
            // x_0 = (x_t − √(1−ᾱ)·ε)/√ᾱ
            Prediction::Epsilon => ((x_t - output.clone() * s) / a, output),
            // x_0 = √ᾱ·x_t − √(1−ᾱ)·v ;  ε = √(1−ᾱ)·x_t + √ᾱ·v
            Prediction::V => (
                x_t.clone() * a.clone() - output.clone() * s.clone(),
                x_t * s + output * a,
            ),
        }
    }
}

/// ε implied by x_t and an estimate of x_0: ε = (x_t − √ᾱ·x̂_0)/√(1−ᾱ).
pub fn eps_from_x0<B: Backend>(
    schedule: &NoiseSchedule,
    x_t: Tensor<B, 4>,
    x0: Tensor<B, 4>,
    t: &[usize],
) -> Tensor<B, 4> {
    let (a, s) = signal_and_noise_scales(schedule, t, &x_t.device());
    (x_t - x0 * a) / s
}

/// KL(N(μ₁, e^{lv₁}) ‖ N(μ₂, e^{lv₂})) elementwise, in nats.
fn normal_kl<B: Backend>(
    mean1: Tensor<B, 4>,
    logvar1: Tensor<B, 4>,
    mean2: Tensor<B, 4>,
    logvar2: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let diff = mean1 - mean2;
    (logvar2.clone() - logvar1.clone()
        + (logvar1 - logvar2.clone()).exp()
        + diff.square() * logvar2.neg().exp()
        - 1.0)
        * 0.5
}

/// Standard normal CDF Φ(x) = (1 + erf(x/√2))/2.
fn normal_cdf<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    ((x / std::f64::consts::SQRT_2).erf() + 1.0) * 0.5
}

/// log p(x_0 | x_1) of a Gaussian discretised to 256 bins on [−1, 1]
/// (Ho et al. §3.3; the edge bins extend to ±∞), elementwise, in nats.
pub fn discretized_gaussian_log_likelihood<B: Backend>(
    x: Tensor<B, 4>,
    mean: Tensor<B, 4>,
    log_scale: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let centered = x.clone() - mean;
    let inv_std = log_scale.neg().exp();
    let cdf_plus = normal_cdf((centered.clone() + 1.0 / 255.0) * inv_std.clone());
    let cdf_min = normal_cdf((centered - 1.0 / 255.0) * inv_std);
    let tiny = 1e-12;
    let log_cdf_plus = cdf_plus.clone().clamp_min(tiny).log();
    let log_one_minus_cdf_min = (cdf_min.clone().neg() + 1.0).clamp_min(tiny).log();
    let log_delta = (cdf_plus - cdf_min).clamp_min(tiny).log();
    let interior = log_delta.mask_where(x.clone().greater_elem(0.999), log_one_minus_cdf_min);
    interior.mask_where(x.lower_elem(-0.999), log_cdf_plus)
}

/// One term of the variational bound at timestep t for every example, in
/// bits/dim: KL(q(x_{t−1}|x_t,x_0) ‖ p_θ(x_{t−1}|x_t)) for t > 0, the
/// discretised decoder's −log p_θ(x_0|x_1) at t = 0 (Ho et al. eq. 5).
///
/// `x0_hat` is the model's estimate of x_0 (clipped to [−1, 1]); the model's
/// variance is the posterior variance β̃_t (with β̃_1 at t = 0, as in
/// Nichol & Dhariwal's code, since β̃ is 0 there).
///
/// # Shapes
/// - x0, x_t, x0_hat: `[batch, c, h, w]` → `[batch]`
pub fn vlb_term<B: Backend>(
    schedule: &NoiseSchedule,
    x0: Tensor<B, 4>,
    x_t: Tensor<B, 4>,
    x0_hat: Tensor<B, 4>,
    t: usize,
) -> Tensor<B, 1> {
    let [n, c, h, w] = x0.dims();
    let device = x0.device();
    let (c0, ct) = schedule.posterior_mean_coefficients(t);
    let log_var = if t == 0 {
        schedule
            .posterior_variance(1.min(schedule.steps() - 1))
            .max(1e-20)
            .ln()
    } else {
        schedule.posterior_variance(t).ln()
    };
    let model_mean = x0_hat * c0 + x_t.clone() * ct;
    let model_log_var = Tensor::<B, 4>::full([1, 1, 1, 1], log_var, &device);
    let nats = if t == 0 {
        discretized_gaussian_log_likelihood(x0, model_mean, model_log_var * 0.5).neg()
    } else {
        let true_mean = x0 * c0 + x_t * ct;
        normal_kl(true_mean, model_log_var.clone(), model_mean, model_log_var)
    };
    nats.reshape([n, c * h * w]).mean_dim(1).reshape([n]) / std::f64::consts::LN_2
}

/// The prior term KL(q(x_T | x_0) ‖ N(0, I)) in bits/dim, `[batch]`.
pub fn prior_bits_per_dim<B: Backend>(schedule: &NoiseSchedule, x0: Tensor<B, 4>) -> Tensor<B, 1> {
    let [n, c, h, w] = x0.dims();
    let last = schedule.steps() - 1;
    let ab = schedule.alpha_bar(last);
    let mean = x0.clone() * ab.sqrt();
    let log_var = mean.zeros_like() + (1.0 - ab).ln();
    let kl = normal_kl(mean.clone(), log_var, mean.zeros_like(), mean.zeros_like());
    kl.reshape([n, c * h * w]).mean_dim(1).reshape([n]) / std::f64::consts::LN_2
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddpm::schedule::BetaSchedule;
    use burn::backend::Flex;
    use genzoo_core::CpuDevice;
    use genzoo_core::seed::{host_rng, normal_tensor, uniform_tensor};

    fn schedule() -> NoiseSchedule {
        NoiseSchedule::new(BetaSchedule::default(), 1000)
    }

    #[test]
    fn q_sample_has_the_forward_process_statistics() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        Flex::seed(&dev, 3);
        let s = schedule();
        // 20,000 draws of x_t for one pixel x_0 = 0.5 at t = 300:
        // mean √ᾱ·0.5, variance 1 − ᾱ.
        let n = 20_000;
        let t = vec![300usize; n];
        let x0 = Tensor::<Flex, 4>::full([n, 1, 1, 1], 0.5, &dev);
        let noise = normal_tensor::<Flex, 4>(&mut rng, [n, 1, 1, 1], 0.0, 1.0, &dev);
        let xt: Vec<f32> = q_sample(&s, x0, &t, noise).into_data().to_vec().unwrap();
        let mean = xt.iter().map(|v| *v as f64).sum::<f64>() / n as f64;
        let var = xt.iter().map(|v| (*v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
        let ab = s.alpha_bar(300);
        // Standard errors: √(var/n) ≈ 0.006 for the mean; the variance's ≈ var·√(2/n) ≈ 0.009.
        assert!(
            (mean - ab.sqrt() * 0.5).abs() < 0.03,
            "mean {mean} vs {}",
            ab.sqrt() * 0.5
        );
        assert!(
            (var - (1.0 - ab)).abs() < 0.05,
            "variance {var} vs {}",
            1.0 - ab
        );
    }

    #[test]
    fn eps_and_v_conversions_round_trip() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        let s = schedule();
        let t = [0usize, 10, 500, 999];
        let x0 = uniform_tensor::<Flex, 4>(&mut rng, [4, 1, 3, 3], -1.0, 1.0, &dev);
        let eps = normal_tensor::<Flex, 4>(&mut rng, [4, 1, 3, 3], 0.0, 1.0, &dev);
        let xt = q_sample(&s, x0.clone(), &t, eps.clone());
        let tol = burn::tensor::Tolerance::<f32>::absolute(2e-3);
        for p in [Prediction::Epsilon, Prediction::V] {
            // The exact target, converted back, gives the x_0 and ε that made x_t.
            let target = p.target(&s, x0.clone(), eps.clone(), &t);
            let (x0_back, eps_back) = p.to_x0_and_eps(&s, xt.clone(), target, &t);
            // ε-prediction divides by √ᾱ_999 ≈ 0.006, so compare x_0 only where that is benign.
            let rows = if p == Prediction::Epsilon { 0..3 } else { 0..4 };
            x0_back
                .slice([rows.clone()])
                .into_data()
                .assert_approx_eq(&x0.clone().slice([rows]).into_data(), tol);
            eps_back
                .into_data()
                .assert_approx_eq(&eps.clone().into_data(), tol);
        }
        // And ε from (x_t, x_0).
        eps_from_x0(&s, xt, x0, &t)
            .into_data()
            .assert_approx_eq(&eps.into_data(), tol);
    }

    #[test]
    fn vlb_terms_vanish_for_a_perfect_model_and_the_decoder_is_a_probability() {
        let dev = CpuDevice::default();
        let s = schedule();
        let x0 = Tensor::<Flex, 4>::from_floats([[[[-1.0, -0.2], [0.6, 1.0]]]], &dev);
        let xt = x0.clone() * 0.9;
        // Knowing x_0 exactly, the KL terms are 0.
        let kl: f32 = vlb_term(&s, x0.clone(), xt.clone(), x0.clone(), 500).into_scalar();
        assert!(kl.abs() < 1e-6, "{kl}");
        // At t = 0 the decoder's probabilities over the 256 bins sum to 1.
        let mean = Tensor::<Flex, 4>::full([1, 1, 1, 1], 0.1, &dev);
        let log_scale = Tensor::<Flex, 4>::full([1, 1, 1, 1], (0.05f64).ln(), &dev);
        let bins: Vec<f32> = (0..256).map(|i| (i as f32 / 255.0) * 2.0 - 1.0).collect();
        let x = Tensor::<Flex, 1>::from_floats(bins.as_slice(), &dev).reshape([256, 1, 1, 1]);
        let total: f32 = discretized_gaussian_log_likelihood(x, mean, log_scale)
            .exp()
            .sum()
            .into_scalar();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
        // The prior term is tiny for the reference schedule (ᾱ_T ≈ 4e-5).
        let prior: f32 = prior_bits_per_dim(&s, x0).into_scalar();
        assert!(prior > 0.0 && prior < 1e-4, "{prior}");
    }
}
