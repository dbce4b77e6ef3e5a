//! Samplers: how to walk from x_T ~ N(0, I) back to x_0 given a network's
//! estimates. Each is a small type with its timesteps and one `step`, and
//! knows nothing of the network (as diffusers' schedulers): the same trained
//! model samples with either, no retraining.
//!
//! - [`Ddpm`]: ancestral sampling through all T steps (Ho et al. 2020, Algorithm 2).
//! - [`Ddim`]: the non-Markovian sampler on a subsequence of the steps
//!   (Song et al. 2021, eq. 12); η = 0 is deterministic, η = 1 is DDPM-like.

use burn::prelude::*;
use serde::{Deserialize, Serialize};

use super::schedule::NoiseSchedule;
use genzoo_core::{Error, Result};

/// The variance of DDPM's reverse steps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DdpmVariance {
    /// σ_t² = β̃_t, the posterior's variance (the lower bound of Ho et al. §3.2).
    #[default]
    Posterior,
    /// σ_t² = β_t (the upper bound).
    Beta,
}

/// Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2):
/// x_{t−1} = μ̃_t(x_t, x̂_0) + σ_t·z, z ~ N(0, I), no noise at the last step.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Ddpm {
    /// σ_t² = β̃_t or β_t.
    pub variance: DdpmVariance,
}

/// DDIM sampling (Song et al. 2021, eq. 12) on `steps` evenly spaced timesteps:
/// x_{t'} = √ᾱ_{t'}·x̂_0 + √(1 − ᾱ_{t'} − σ²)·ε̂ + σ·z with
/// σ = η·√((1 − ᾱ_{t'})/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_{t'}), t' the next timestep.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ddim {
    /// Number of network evaluations (1..=T).
    pub steps: usize,
    /// Stochasticity η ∈ [0, 1]: 0 deterministic, 1 as much noise as DDPM.
    pub eta: f64,
}

/// The current sample and the network's estimates at timestep t.
#[derive(Clone, Debug)]
pub struct Denoised<B: Backend> {
    /// The sample x_t.
    pub x_t: Tensor<B, 4>,
    /// The estimate x̂_0 (clipped to the data range).
    pub x0: Tensor<B, 4>,
    /// The noise ε̂ consistent with x_t and x̂_0.
    pub eps: Tensor<B, 4>,
}

/// A reverse process: the timesteps it visits and one step between them.
pub trait Sampler {
    /// The timesteps visited, from the noisiest down to 0.
    fn timesteps(&self, schedule: &NoiseSchedule) -> Vec<usize>;

    /// The standard deviation of the fresh noise added when stepping from
    /// `t` to `prev` (`None`: the final step to x_0).
    fn noise_scale(&self, schedule: &NoiseSchedule, t: usize, prev: Option<usize>) -> f64;

    /// x_{prev} from x_t with the model's x̂_0 and ε̂ at t, and fresh noise `z`
    /// (used only when [`Sampler::noise_scale`] is positive).
    fn step<B: Backend>(
        &self,
        schedule: &NoiseSchedule,
        t: usize,
        prev: Option<usize>,
        state: Denoised<B>,
        z: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4>;
}

fn add_noise<B: Backend>(x: Tensor<B, 4>, sigma: f64, z: Option<Tensor<B, 4>>) -> Tensor<B, 4> {
    match z {
        Some(z) if sigma > 0.0 => x + z * sigma,
        _ => x,
    }
}

impl Sampler for Ddpm {
    fn timesteps(&self, schedule: &NoiseSchedule) -> Vec<usize> {
        (0..schedule.steps()).rev().collect()
    }

    fn noise_scale(&self, schedule: &NoiseSchedule, t: usize, prev: Option<usize>) -> f64 {
        if prev.is_none() || t == 0 {
            return 0.0;
        }
        match self.variance {
            DdpmVariance::Posterior => schedule.posterior_variance(t).sqrt(),
            DdpmVariance::Beta => schedule.beta(t).sqrt(),
        }
    }

    fn step<B: Backend>(
        &self,
        schedule: &NoiseSchedule,
        t: usize,
        prev: Option<usize>,
        state: Denoised<B>,
        z: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        // Posterior mean μ̃_t = c₀·x̂_0 + c_t·x_t (Ho et al. eq. 7).
        let (c0, ct) = schedule.posterior_mean_coefficients(t);
        let mean = state.x0 * c0 + state.x_t * ct;
        add_noise(mean, self.noise_scale(schedule, t, prev), z)
    }
}

impl Ddim {
    /// A DDIM sampler, checked against the schedule's length.
    pub fn new(steps: usize, eta: f64, schedule: &NoiseSchedule) -> Result<Self> {
        if steps == 0 || steps > schedule.steps() {
            return Err(Error::Config(format!(
                "ddim: steps must be in 1..={}, got {steps}",
                schedule.steps()
            )));
        }
        if !(0.0..=1.0).contains(&eta) {
            return Err(Error::Config(format!(
                "ddim: eta must be in [0, 1], got {eta}"
            )));
        }
        Ok(Self { steps, eta })
    }
}

impl Sampler for Ddim {
    fn timesteps(&self, schedule: &NoiseSchedule) -> Vec<usize> {
        // Evenly spaced, 0 included: 0, T/S, 2T/S, ... (Song et al. §4.2, "linear").
        let t_max = schedule.steps();
        (0..self.steps)
            .map(|i| i * t_max / self.steps)
            .rev()
            .collect()
    }

    fn noise_scale(&self, schedule: &NoiseSchedule, t: usize, prev: Option<usize>) -> f64 {
        let (ab, ab_prev) = (
            schedule.alpha_bar(t),
            prev.map_or(1.0, |p| schedule.alpha_bar(p)),
        );
        self.eta * ((1.0 - ab_prev) / (1.0 - ab)).sqrt() * (1.0 - ab / ab_prev).max(0.0).sqrt()
    }

    fn step<B: Backend>(
        &self,
        schedule: &NoiseSchedule,
        t: usize,
        prev: Option<usize>,
        state: Denoised<B>,
        z: Option<Tensor<B, 4>>,
    ) -> Tensor<B, 4> {
        let ab_prev = prev.map_or(1.0, |p| schedule.alpha_bar(p));
        let sigma = self.noise_scale(schedule, t, prev);
        let direction = (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt();
        add_noise(state.x0 * ab_prev.sqrt() + state.eps * direction, sigma, z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ddpm::schedule::BetaSchedule;
    use burn::backend::Flex;
    use genzoo_core::CpuDevice;

    #[test]
    fn timesteps_cover_the_process() {
        let s = NoiseSchedule::new(BetaSchedule::default(), 1000);
        let ddim = Ddim::new(50, 0.0, &s).unwrap();
        let ts = ddim.timesteps(&s);
        assert_eq!(ts.len(), 50);
        assert_eq!((ts[0], ts[49]), (980, 0));
        assert_eq!(Ddpm::default().timesteps(&s).len(), 1000);
        assert!(Ddim::new(0, 0.0, &s).is_err() && Ddim::new(1001, 0.0, &s).is_err());
        assert!(Ddim::new(10, 1.5, &s).is_err());
    }

    #[test]
    fn ddim_with_all_steps_and_eta_one_has_ddpm_noise() {
        // With every timestep and η = 1, DDIM's σ is the DDPM posterior's √β̃_t (Song et al. §4.1).
        let s = NoiseSchedule::new(BetaSchedule::default(), 1000);
        let ddim = Ddim::new(1000, 1.0, &s).unwrap();
        for t in [1usize, 10, 500, 999] {
            let a = ddim.noise_scale(&s, t, Some(t - 1));
            let b = Ddpm::default().noise_scale(&s, t, Some(t - 1));
            assert!((a - b).abs() < 1e-12, "t = {t}: {a} vs {b}");
        }
        assert_eq!(
            Ddim::new(50, 0.0, &s)
                .unwrap()
                .noise_scale(&s, 980, Some(960)),
            0.0
        );
    }

    #[test]
    fn a_perfect_x0_estimate_is_recovered() {
        // Given the true x_0 and the ε that made x_t, a deterministic DDIM step lands
        // exactly on q's mean at the previous timestep and the last step returns x_0.
        let dev = CpuDevice::default();
        let s = NoiseSchedule::new(BetaSchedule::default(), 1000);
        let ddim = Ddim::new(10, 0.0, &s).unwrap();
        let x0 = Tensor::<Flex, 4>::from_floats([[[[0.5, -0.25]]]], &dev);
        let eps = Tensor::<Flex, 4>::from_floats([[[[1.0, 2.0]]]], &dev);
        let xt =
            x0.clone() * s.alpha_bar(500).sqrt() + eps.clone() * (1.0 - s.alpha_bar(500)).sqrt();
        let prev = ddim.step(
            &s,
            500,
            Some(400),
            Denoised {
                x_t: xt.clone(),
                x0: x0.clone(),
                eps: eps.clone(),
            },
            None,
        );
        let expected =
            x0.clone() * s.alpha_bar(400).sqrt() + eps.clone() * (1.0 - s.alpha_bar(400)).sqrt();
        prev.into_data().assert_approx_eq::<f32>(
            &expected.into_data(),
            burn::tensor::Tolerance::absolute(1e-6),
        );
        let last = ddim.step(
            &s,
            0,
            None,
            Denoised {
                x_t: xt.clone(),
                x0: x0.clone(),
                eps: eps.clone(),
            },
            None,
        );
        last.into_data().assert_approx_eq::<f32>(
            &x0.clone().into_data(),
            burn::tensor::Tolerance::absolute(1e-6),
        );
        let ddpm_last = Ddpm::default().step(
            &s,
            0,
            None,
            Denoised {
                x_t: xt,
                x0: x0.clone(),
                eps,
            },
            None,
        );
        ddpm_last
            .into_data()
            .assert_approx_eq::<f32>(&x0.into_data(), burn::tensor::Tolerance::absolute(1e-6));
    }
}
