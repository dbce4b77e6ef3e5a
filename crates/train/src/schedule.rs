//! Learning-rate schedules, as multipliers of the base rate. A schedule is
//! a pure function of the step, so its whole state is the step counter.

use serde::{Deserialize, Serialize};

/// How the learning rate changes over a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Linear warm-up from 0 over `warmup_steps`, then cosine decay to
    /// `min_lr` at the last step (nanoGPT's `get_lr`).
    Cosine {
        /// Steps of linear warm-up.
        warmup_steps: u64,
        /// The rate at the end of the run (absolute, not a factor).
        min_lr: f64,
    },
}

impl Schedule {
    /// The learning rate of step `step` (0-based) of a `total`-step run with base rate `base`.
    ///
    /// ```
    /// use genzoo_train::Schedule;
    /// let s = Schedule::Cosine { warmup_steps: 10, min_lr: 1e-4 };
    /// assert!((s.lr(1e-3, 5, 100) - 1e-3 * 6.0 / 11.0).abs() < 1e-12);
    /// assert!((s.lr(1e-3, 100, 100) - 1e-4).abs() < 1e-12);
    /// ```
    pub fn lr(&self, base: f64, step: u64, total: u64) -> f64 {
        match *self {
            Schedule::Constant => base,
            Schedule::Cosine {
                warmup_steps,
                min_lr,
            } => {
                if step < warmup_steps {
                    // nanoGPT: learning_rate * (it + 1) / (warmup_iters + 1)
                    return base * (step + 1) as f64 / (warmup_steps + 1) as f64;
                }
                if step >= total {
                    return min_lr;
                }
                let span = total.saturating_sub(warmup_steps).max(1) as f64;
                let progress = (step - warmup_steps) as f64 / span;
                let coeff = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                min_lr + coeff * (base - min_lr)
            }
        }
    }

    /// The multiplier of the base rate at `step`.
    pub fn factor(&self, base: f64, step: u64, total: u64) -> f64 {
        if base == 0.0 {
            1.0
        } else {
            self.lr(base, step, total) / base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_warms_up_then_decays_monotonically() {
        let s = Schedule::Cosine {
            warmup_steps: 100,
            min_lr: 1e-4,
        };
        let lrs: Vec<f64> = (0..2000).map(|t| s.lr(1e-3, t, 2000)).collect();
        assert!(lrs[0] < lrs[50] && lrs[50] < lrs[99]);
        assert!((lrs[100] - 1e-3).abs() < 1e-12);
        assert!(lrs[100..].windows(2).all(|w| w[1] <= w[0]));
        assert!((lrs[1050] - (1e-4 + 0.5 * 9e-4)).abs() < 1e-9);
        assert_eq!(Schedule::Constant.lr(0.1, 7, 10), 0.1);
    }
}
