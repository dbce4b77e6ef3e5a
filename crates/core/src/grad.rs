//! Gradient utilities over [`GradientsParams`].

use std::marker::PhantomData;

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

struct SquaredNorm<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
    _b: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let sq = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + sq,
                None => sq,
            });
        }
    }
}

struct Scale<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    factor: f64,
    _b: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads
                .register::<B::InnerBackend, D>(param.id, g * self.factor);
        }
    }
}

/// `sum + weight · grads` over `module`'s parameters: the running sum of an
/// accumulated step's micro-batch gradients (`sum` empty at the first).
pub fn add_scaled<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    sum: GradientsParams,
    mut grads: GradientsParams,
    weight: f64,
) -> GradientsParams {
    module.visit(&mut Scale::<B> {
        grads: &mut grads,
        factor: weight,
        _b: PhantomData,
    });
    let mut total = GradientsAccumulator::<M>::new();
    total.accumulate(module, sum);
    total.accumulate(module, grads);
    total.grads()
}

/// The global L2 norm of `module`'s gradients in `grads`.
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    let mut v = SquaredNorm::<B> {
        grads,
        total: None,
        _b: PhantomData,
    };
    module.visit(&mut v);
    v.total
        .map(|t| t.into_scalar().elem::<f64>().sqrt())
        .unwrap_or(0.0)
}

/// Scales all of `module`'s gradients so that their global L2 norm is at
/// most `max_norm`, exactly as PyTorch's `clip_grad_norm_` (burn's own
/// `GradientClipping::Norm` clips each tensor on its own). Returns the norm
/// before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = global_norm::<B, M>(module, grads);
    // PyTorch's formula: clip_coef = max_norm / (norm + 1e-6), applied when < 1.
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        module.visit(&mut Scale::<B> {
            grads,
            factor: coef,
            _b: PhantomData,
        });
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CpuAutodiff, CpuDevice};
    use burn::nn::{Linear, LinearConfig};

    #[test]
    fn clips_the_global_norm_not_each_tensor() {
        let dev = CpuDevice::default();
        let lin: Linear<CpuAutodiff> = LinearConfig::new(3, 2).init(&dev);
        let x = Tensor::<CpuAutodiff, 2>::ones([4, 3], &dev) * 10.0;
        let loss = lin.forward(x).sum();
        let mut grads = GradientsParams::from_grads(loss.backward(), &lin);
        let before = global_norm::<CpuAutodiff, _>(&lin, &grads);
        // weight grads are all 40, bias grads 4: norm sqrt(6*1600 + 2*16)
        assert!(
            (before - (6.0f64 * 1600.0 + 32.0).sqrt()).abs() < 1e-3,
            "{before}"
        );
        let returned = clip_global_norm::<CpuAutodiff, _>(&lin, &mut grads, 1.0);
        assert!((returned - before).abs() < 1e-9);
        let after = global_norm::<CpuAutodiff, _>(&lin, &grads);
        assert!((after - 1.0).abs() < 1e-4, "{after}");
        // The ratio between weight and bias gradients is preserved (global, not per tensor).
        let w = grads
            .get::<burn::backend::Flex, 2>(lin.weight.id)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let b = grads
            .get::<burn::backend::Flex, 1>(lin.bias.as_ref().unwrap().id)
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        assert!((w[0] / b[0] - 10.0).abs() < 1e-3);
    }
}
