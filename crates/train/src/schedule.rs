//! Learning-rate schedules, as multipliers of the base rate. A schedule is
//! a pure function of the step, so its whole state is the step counter.

use genzoo_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// How the learning rate changes over a run. In a config file,
/// `schedule = { kind = "cosine", warmup_steps = 100, min_lr = 1e-4 }`
/// under `[train]`; every warm-up is nanoGPT's, from `base / (w + 1)` at
/// the first step to the base rate at step `w`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Schedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Linear warm-up over `warmup_steps`, then the base rate (Ho et al.
    /// 2020 warm up their DDPMs over 5000 steps; diffusers'
    /// `constant_with_warmup`).
    Warmup {
        /// Steps of linear warm-up.
        warmup_steps: u64,
    },
    /// Linear warm-up from 0 over `warmup_steps`, then cosine decay to
    /// `min_lr` at the last step (nanoGPT's `get_lr`).
    Cosine {
        /// Steps of linear warm-up.
        warmup_steps: u64,
        /// The rate at the end of the run (absolute, not a factor).
        min_lr: f64,
    },
    /// Linear warm-up, then linear decay to `min_lr` at the last step
    /// (BERT's; Hugging Face's `get_linear_schedule_with_warmup` with
    /// `min_lr = 0`).
    Linear {
        /// Steps of linear warm-up.
        #[serde(default)]
        warmup_steps: u64,
        /// The rate at the end of the run (absolute, not a factor).
        #[serde(default)]
        min_lr: f64,
    },
    /// The base rate times `gamma` once for each milestone passed: after
    /// `milestones[i]` steps the rate is `base · gamma^(i+1)` (PyTorch's
    /// `MultiStepLR`, counted in steps).
    Step {
        /// The steps after which the rate drops, in increasing order.
        milestones: Vec<u64>,
        /// The factor of each drop (PyTorch's default, 0.1, when unset).
        #[serde(default = "default_gamma")]
        gamma: f64,
    },
}

fn default_gamma() -> f64 {
    0.1
}

impl Schedule {
    /// The learning rate of step `step` (0-based) of a `total`-step run with base rate `base`.
    ///
    /// ```
    /// use genzoo_train::Schedule;
    /// let s = Schedule::Cosine { warmup_steps: 10, min_lr: 1e-4 };
    /// assert!((s.lr(1e-3, 5, 100) - 1e-3 * 6.0 / 11.0).abs() < 1e-12);
    /// assert!((s.lr(1e-3, 100, 100) - 1e-4).abs() < 1e-12);
    /// let s = Schedule::Step { milestones: vec![30, 60], gamma: 0.5 };
    /// assert_eq!(s.lr(0.1, 29, 90), 0.1);
    /// assert_eq!(s.lr(0.1, 30, 90), 0.05);
    /// assert_eq!(s.lr(0.1, 89, 90), 0.025);
    /// ```
    pub fn lr(&self, base: f64, step: u64, total: u64) -> f64 {
        let warm_up = |warmup_steps: u64| {
            // nanoGPT: learning_rate * (it + 1) / (warmup_iters + 1)
            (step < warmup_steps).then(|| base * (step + 1) as f64 / (warmup_steps + 1) as f64)
        };
        // How far the decay after a warm-up has come: 0 at its first step,
        // 1 at the last.
        let decayed = |warmup_steps: u64| {
            let span = total.saturating_sub(warmup_steps).max(1) as f64;
            (step.saturating_sub(warmup_steps) as f64 / span).min(1.0)
        };
        match self {
            Schedule::Constant => base,
            Schedule::Warmup { warmup_steps } => warm_up(*warmup_steps).unwrap_or(base),
            Schedule::Cosine {
                warmup_steps,
                min_lr,
            } => warm_up(*warmup_steps).unwrap_or_else(|| {
                let coeff = 0.5 * (1.0 + (std::f64::consts::PI * decayed(*warmup_steps)).cos());
                min_lr + coeff * (base - min_lr)
            }),
            Schedule::Linear {
                warmup_steps,
                min_lr,
            } => warm_up(*warmup_steps)
                .unwrap_or_else(|| base - (base - min_lr) * decayed(*warmup_steps)),
            Schedule::Step { milestones, gamma } => {
                let passed = milestones.iter().filter(|&&m| m <= step).count();
                base * gamma.powi(passed as i32)
            }
        }
    }

    /// Refuses a schedule no run can follow with base rate `base`.
    pub fn validate(&self, base: f64) -> Result<()> {
        match self {
            Schedule::Constant | Schedule::Warmup { .. } => Ok(()),
            Schedule::Cosine { min_lr, .. } | Schedule::Linear { min_lr, .. } => {
                if (0.0..=base).contains(min_lr) {
                    Ok(())
                } else {
                    Err(Error::Config(format!(
                        "the schedule's min_lr must be between 0 and lr ({base}), got {min_lr}"
                    )))
                }
            }
            Schedule::Step { milestones, gamma } => {
                if !(*gamma > 0.0 && gamma.is_finite()) {
                    return Err(Error::Config(format!(
                        "the step schedule's gamma must be a positive number, got {gamma}"
                    )));
                }
                if milestones.is_empty() || !milestones.windows(2).all(|w| w[0] < w[1]) {
                    return Err(Error::Config(format!(
                        "the step schedule's milestones must be one or more steps in increasing \
                         order, got {milestones:?}"
                    )));
                }
                Ok(())
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

    #[test]
    fn every_warm_up_is_the_same_and_each_schedule_ends_where_it_says() {
        let (base, total) = (1e-3, 1000);
        let warmed = [
            Schedule::Warmup { warmup_steps: 50 },
            Schedule::Cosine {
                warmup_steps: 50,
                min_lr: 1e-4,
            },
            Schedule::Linear {
                warmup_steps: 50,
                min_lr: 1e-4,
            },
        ];
        for s in &warmed {
            for t in 0..50 {
                assert_eq!(s.lr(base, t, total), base * (t + 1) as f64 / 51.0, "{s:?}");
            }
            assert!((s.lr(base, 50, total) - base).abs() < 1e-15, "{s:?}");
        }
        let [warmup, cosine, linear] = warmed;
        assert!((50..total).all(|t| warmup.lr(base, t, total) == base));
        // Linear decay: halfway between the peak and min_lr halfway through
        // the decay, min_lr at the end and after it.
        assert!((linear.lr(base, 525, total) - 5.5e-4).abs() < 1e-12);
        for s in [&cosine, &linear] {
            assert!((s.lr(base, total, total) - 1e-4).abs() < 1e-15, "{s:?}");
            assert!((s.lr(base, total + 7, total) - 1e-4).abs() < 1e-15, "{s:?}");
            let lrs: Vec<f64> = (50..=total).map(|t| s.lr(base, t, total)).collect();
            assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "{s:?}");
        }
        // Without a warm-up the first step takes the peak rate.
        let no_warmup = Schedule::Linear {
            warmup_steps: 0,
            min_lr: 0.0,
        };
        assert_eq!(no_warmup.lr(base, 0, total), base);
        assert_eq!(no_warmup.lr(base, total, total), 0.0);
    }

    #[test]
    fn a_step_schedule_drops_after_each_milestone() {
        let s = Schedule::Step {
            milestones: vec![3, 5],
            gamma: 0.1,
        };
        let lrs: Vec<f64> = (0..7).map(|t| s.lr(1.0, t, 7)).collect();
        let expected = [1.0, 1.0, 1.0, 0.1, 0.1, 0.1f64 * 0.1, 0.1 * 0.1];
        assert_eq!(lrs, expected);
    }

    #[test]
    fn schedules_read_from_toml_and_the_unusable_are_refused() {
        let read = |text: &str| -> Schedule {
            #[derive(serde::Deserialize)]
            struct Train {
                schedule: Schedule,
            }
            toml::from_str::<Train>(text).unwrap().schedule
        };
        assert_eq!(
            read(r#"schedule = { kind = "step", milestones = [100, 200] }"#),
            Schedule::Step {
                milestones: vec![100, 200],
                gamma: 0.1
            }
        );
        assert_eq!(
            read(r#"schedule = { kind = "linear" }"#),
            Schedule::Linear {
                warmup_steps: 0,
                min_lr: 0.0
            }
        );
        assert_eq!(
            read(r#"schedule = { kind = "warmup", warmup_steps = 5000 }"#),
            Schedule::Warmup { warmup_steps: 5000 }
        );
        let refused = |s: Schedule| s.validate(1e-3).unwrap_err().to_string();
        let too_high = Schedule::Cosine {
            warmup_steps: 0,
            min_lr: 1e-2,
        };
        assert!(refused(too_high).contains("min_lr must be between 0 and lr"));
        let negative = Schedule::Linear {
            warmup_steps: 0,
            min_lr: -1.0,
        };
        assert!(refused(negative).contains("min_lr"));
        let unordered = Schedule::Step {
            milestones: vec![200, 100],
            gamma: 0.1,
        };
        assert!(refused(unordered).contains("increasing order"));
        let zero_gamma = Schedule::Step {
            milestones: vec![100],
            gamma: 0.0,
        };
        assert!(refused(zero_gamma).contains("gamma"));
        assert!(
            Schedule::Step {
                milestones: vec![100],
                gamma: 0.5
            }
            .validate(1e-3)
            .is_ok()
        );
    }
}
