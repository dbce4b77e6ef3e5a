//! Noise schedules: the forward process q(x_t | x_0) of a DDPM.
//!
//! A [`BetaSchedule`] says how β_t grows; a [`NoiseSchedule`] holds the
//! tables every formula reads (β_t, α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s), in
//! f64 on the host. Timesteps are 0-based: t ∈ [0, T), so t = 0 is the first
//! noising step (Ho et al.'s t = 1).
//!
//! ```
//! use genzoo_models::ddpm::{BetaSchedule, NoiseSchedule};
//! let s = NoiseSchedule::new(BetaSchedule::Linear { start: 1e-4, end: 0.02 }, 1000);
//! assert!((s.alpha_bar(0) - (1.0 - 1e-4)).abs() < 1e-12);
//! assert!(s.alpha_bar(999) < 1e-4); // x_T is almost pure noise
//! ```

use serde::{Deserialize, Serialize};

/// How β_t grows with t.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BetaSchedule {
    /// β_t linear from `start` to `end` (Ho et al. 2020: 1e-4 to 0.02 over T = 1000).
    Linear {
        /// β of the first step.
        start: f64,
        /// β of the last step.
        end: f64,
    },
    /// ᾱ_t = f(t)/f(0) with f(t) = cos²(((t/T) + s)/(1 + s) · π/2), β_t
    /// clipped to 0.999 (Nichol & Dhariwal 2021, eq. 17).
    Cosine {
        /// The small offset s that keeps β_0 from being tiny (0.008 in the paper).
        offset: f64,
    },
}

impl Default for BetaSchedule {
    fn default() -> Self {
        BetaSchedule::Linear {
            start: 1e-4,
            end: 0.02,
        }
    }
}

impl BetaSchedule {
    /// β_0 .. β_{T−1}.
    pub fn betas(&self, steps: usize) -> Vec<f64> {
        match *self {
            BetaSchedule::Linear { start, end } => (0..steps)
                .map(|t| {
                    if steps == 1 {
                        start
                    } else {
                        start + (end - start) * t as f64 / (steps - 1) as f64
                    }
                })
                .collect(),
            BetaSchedule::Cosine { offset } => {
                let f = |t: f64| {
                    ((t / steps as f64 + offset) / (1.0 + offset) * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..steps)
                    .map(|t| (1.0 - f(t as f64 + 1.0) / f(t as f64)).min(0.999))
                    .collect()
            }
        }
    }
}

/// The tables of a forward process with T steps.
#[derive(Clone, Debug, PartialEq)]
pub struct NoiseSchedule {
    betas: Vec<f64>,
    alpha_bars: Vec<f64>,
}

impl NoiseSchedule {
    /// The process of `steps` steps with the given β schedule.
    pub fn new(schedule: BetaSchedule, steps: usize) -> Self {
        let betas = schedule.betas(steps);
        let alpha_bars = betas
            .iter()
            .scan(1.0, |prod, b| {
                *prod *= 1.0 - b;
                Some(*prod)
            })
            .collect();
        Self { betas, alpha_bars }
    }

    /// T, the number of steps.
    pub fn steps(&self) -> usize {
        self.betas.len()
    }

    /// β_t.
    pub fn beta(&self, t: usize) -> f64 {
        self.betas[t]
    }

    /// α_t = 1 − β_t.
    pub fn alpha(&self, t: usize) -> f64 {
        1.0 - self.betas[t]
    }

    /// ᾱ_t = ∏_{s ≤ t} α_s.
    pub fn alpha_bar(&self, t: usize) -> f64 {
        self.alpha_bars[t]
    }

    /// ᾱ of the step before t (1 before the first step).
    pub fn alpha_bar_prev(&self, t: usize) -> f64 {
        if t == 0 { 1.0 } else { self.alpha_bars[t - 1] }
    }

    /// The variance β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t of the posterior
    /// q(x_{t−1} | x_t, x_0) (Ho et al. eq. 7); 0 at t = 0.
    pub fn posterior_variance(&self, t: usize) -> f64 {
        (1.0 - self.alpha_bar_prev(t)) / (1.0 - self.alpha_bar(t)) * self.beta(t)
    }

    /// The posterior mean's coefficients (c₀, c_t): μ̃_t = c₀·x_0 + c_t·x_t
    /// (Ho et al. eq. 7).
    pub fn posterior_mean_coefficients(&self, t: usize) -> (f64, f64) {
        let (ab, ab_prev) = (self.alpha_bar(t), self.alpha_bar_prev(t));
        (
            self.beta(t) * ab_prev.sqrt() / (1.0 - ab),
            (1.0 - ab_prev) * self.alpha(t).sqrt() / (1.0 - ab),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_alpha_bar_matches_the_product_formula() {
        let s = NoiseSchedule::new(BetaSchedule::default(), 1000);
        // Independently: ᾱ_t = ∏ (1 − β_s), β_s = 1e-4 + (0.02 − 1e-4)·s/999, by logs.
        for t in [0usize, 1, 10, 499, 999] {
            let log: f64 = (0..=t)
                .map(|s| (1.0 - (1e-4 + (0.02 - 1e-4) * s as f64 / 999.0)).ln())
                .sum();
            assert!(
                (s.alpha_bar(t) - log.exp()).abs() < 1e-12,
                "t = {t}: {} vs {}",
                s.alpha_bar(t),
                log.exp()
            );
        }
        // Known values of the DDPM schedule (as tabulated by diffusers/openai code).
        assert!((s.alpha_bar(0) - 0.9999).abs() < 1e-12);
        assert!(
            (s.alpha_bar(999) - 4.0358e-5).abs() < 1e-8,
            "{}",
            s.alpha_bar(999)
        );
    }

    #[test]
    fn cosine_alpha_bar_is_the_closed_form() {
        let s = NoiseSchedule::new(BetaSchedule::Cosine { offset: 0.008 }, 1000);
        let f = |t: f64| {
            ((t / 1000.0 + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                .cos()
                .powi(2)
        };
        // No β is clipped before the very end, so ᾱ_t = f(t + 1)/f(0) exactly.
        for t in [0usize, 100, 500, 900] {
            let expected = f(t as f64 + 1.0) / f(0.0);
            assert!(
                (s.alpha_bar(t) - expected).abs() < 1e-10,
                "t = {t}: {} vs {expected}",
                s.alpha_bar(t)
            );
        }
        assert!(s.beta(999) <= 0.999);
        assert!(s.alpha_bar(999) < 1e-6);
    }

    #[test]
    fn posterior_terms_are_consistent() {
        let s = NoiseSchedule::new(BetaSchedule::default(), 100);
        assert_eq!(s.posterior_variance(0), 0.0);
        for t in 1..100 {
            assert!(s.posterior_variance(t) < s.beta(t));
            // A noiseless x_t = √ᾱ_t·x_0 has the posterior mean √ᾱ_{t−1}·x_0,
            // so c₀ + c_t·√ᾱ_t = √ᾱ_{t−1}.
            let (c0, ct) = s.posterior_mean_coefficients(t);
            let lhs = c0 + ct * s.alpha_bar(t).sqrt();
            assert!((lhs - s.alpha_bar_prev(t).sqrt()).abs() < 1e-12, "t = {t}");
        }
    }
}
