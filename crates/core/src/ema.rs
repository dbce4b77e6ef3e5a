//! An exponential moving average of a model's weights (Polyak averaging),
//! the one implementation the GAN (optional generator EMA) and DDPM
//! (sampling weights) families share.

use std::collections::HashMap;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

/// The EMA of a module, held on the inner (non-autodiff) backend.
///
/// After every optimizer step: `ema ← decay·ema + (1 − decay)·θ`, where
/// with `warmup` the decay used at update n is `min(decay, (1 + n)/(10 + n))`
/// (as in TensorFlow's `ExponentialMovingAverage` with `num_updates`), so
/// early averages are not dominated by the random initialisation.
/// BatchNorm running statistics are averaged like weights.
#[derive(Clone, Debug)]
pub struct Ema<M> {
    /// The averaged module.
    pub module: M,
    /// The target decay.
    pub decay: f64,
    /// Whether to ramp the decay up over the first updates.
    pub warmup: bool,
}

impl<M> Ema<M> {
    /// An average starting at `model`'s current weights.
    pub fn new<B>(model: &impl AutodiffModule<B, InnerModule = M>, decay: f64, warmup: bool) -> Self
    where
        B: AutodiffBackend,
        M: Module<B::InnerBackend>,
    {
        crate::record::force_init(model);
        Self {
            module: model.valid(),
            decay,
            warmup,
        }
    }

    /// The decay applied at update number `n` (1 for the first update).
    pub fn decay_at(&self, n: u64) -> f64 {
        if self.warmup {
            self.decay.min((1.0 + n as f64) / (10.0 + n as f64))
        } else {
            self.decay
        }
    }

    /// Moves the average towards `model`'s weights; `n` counts updates from 1
    /// (the engine's step number, so a resumed run ramps identically).
    pub fn update<B>(&mut self, model: &impl AutodiffModule<B, InnerModule = M>, n: u64)
    where
        B: AutodiffBackend,
        M: Module<B::InnerBackend>,
    {
        let decay = self.decay_at(n);
        let mut collect = Collect::<B::InnerBackend> {
            values: HashMap::new(),
        };
        model.valid().visit(&mut collect);
        let module = self.module.clone();
        self.module = module.map(&mut Blend {
            source: collect.values,
            decay,
        });
    }
}

struct Collect<B: Backend> {
    values: HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.values.insert(param.id, param.val().reshape([-1]));
    }
}

struct Blend<B: Backend> {
    source: HashMap<ParamId, Tensor<B, 1>>,
    decay: f64,
}

impl<B: Backend> ModuleMapper<B> for Blend<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, value, mapper) = param.consume();
        let blended = match self.source.remove(&id) {
            Some(src) => {
                value.clone() * self.decay + src.reshape(value.dims()) * (1.0 - self.decay)
            }
            None => value,
        };
        Param::from_mapped_value(id, blended, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CpuAutodiff, CpuDevice};
    use crate::record::param_values;
    use burn::nn::{Linear, LinearConfig};

    #[test]
    fn ema_follows_the_closed_form() {
        let dev = CpuDevice::default();
        let model: Linear<CpuAutodiff> = LinearConfig::new(2, 1).init(&dev);
        let start = param_values(&model.valid());
        let mut ema = Ema::new(&model, 0.9, false);
        // Move the model to all-ones weights and update twice: ema = start·0.81 + 1·0.19.
        let ones = model.clone().map(&mut OnesMapper);
        ema.update(&ones, 1);
        ema.update(&ones, 2);
        let got = param_values(&ema.module);
        for (g, s) in got.iter().zip(&start) {
            assert!(
                (g - (s * 0.81 + 0.19)).abs() < 1e-6,
                "{g} vs {}",
                s * 0.81 + 0.19
            );
        }
        let warm = Ema {
            module: ema.module.clone(),
            decay: 0.999,
            warmup: true,
        };
        assert!((warm.decay_at(1) - 2.0 / 11.0).abs() < 1e-12);
        assert_eq!(warm.decay_at(1_000_000), 0.999);
    }

    struct OnesMapper;
    impl<B: Backend> ModuleMapper<B> for OnesMapper {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, value, mapper) = param.consume();
            Param::from_mapped_value(id, value.ones_like(), mapper)
        }
    }
}
