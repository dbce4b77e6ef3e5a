//! Adam with its update fused into one pass per parameter on the CPU
//! backend.
//!
//! burn's `Adam` updates a parameter with ~13 tensor operations (moments,
//! bias correction, square root, division, step), each a pass over the
//! parameter and a fresh buffer: 20 % of a vae-mlp training step here.
//! [`FusedAdam`] does the same arithmetic in one pass on the CPU backend and
//! is burn's `Adam` everywhere else. Its state is burn's `AdamState`, so
//! optimizer records (checkpoints) are the same either way.

use std::any::Any;

use burn::module::AutodiffModule;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{
    Adam, AdamConfig, AdamState, AdaptiveMomentumState, LearningRate, SimpleOptimizer,
};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::AutodiffBackend;
use burn_flex::Flex;

use crate::fused::{AdamScalars, adam_handles_flex, adam_step_flex};

/// Adam (Kingma & Ba 2015) as burn computes it (ε added to √v̂; no weight
/// decay, no AMSGrad): bit-identical updates and the same optimizer record,
/// with each parameter's update one fused pass on the CPU backend.
///
/// ```
/// use burn::backend::Autodiff;
/// use burn::nn::{Linear, LinearConfig};
/// use burn::optim::{GradientsParams, Optimizer};
/// use burn::prelude::*;
/// use genzoo_core::optim::FusedAdam;
/// use genzoo_core::{CpuBackend, CpuDevice};
/// type B = Autodiff<CpuBackend>;
/// let device = CpuDevice::default();
/// let layer: Linear<B> = LinearConfig::new(3, 2).init(&device);
/// let mut optimizer = FusedAdam::new(0.9, 0.999, 1e-8).init::<B, Linear<B>>();
/// let loss = layer.forward(Tensor::<B, 2>::ones([4, 3], &device)).sum();
/// let grads = GradientsParams::from_grads(loss.backward(), &layer);
/// let layer = optimizer.step(1e-3, layer, grads);
/// ```
#[derive(Clone)]
pub struct FusedAdam {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    /// burn's own Adam with the same settings: every backend but the CPU one.
    burn: Adam,
}

impl FusedAdam {
    /// Adam with moment decays β₁, β₂ and ε.
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32) -> Self {
        let burn = AdamConfig::new()
            .with_beta_1(beta_1)
            .with_beta_2(beta_2)
            .with_epsilon(epsilon)
            .build();
        Self {
            beta_1,
            beta_2,
            epsilon,
            burn,
        }
    }

    /// The optimizer for module `M` on backend `B`.
    pub fn init<B: AutodiffBackend, M: AutodiffModule<B>>(self) -> OptimizerAdaptor<Self, M, B> {
        OptimizerAdaptor::from(self)
    }

    /// The update on the CPU backend; the inputs back for any other.
    #[allow(clippy::type_complexity)]
    fn step_cpu<B: Backend, const D: usize>(
        &self,
        lr: LearningRate,
        inputs: (Tensor<B, D>, Tensor<B, D>, Option<AdamState<B, D>>),
    ) -> Result<
        (Tensor<B, D>, Option<AdamState<B, D>>),
        (Tensor<B, D>, Tensor<B, D>, Option<AdamState<B, D>>),
    > {
        type Inputs<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Option<AdamState<B, D>>);
        let boxed: Box<dyn Any> = Box::new(inputs);
        let (param, grad, state) = match boxed.downcast::<Inputs<Flex, D>>() {
            Ok(inputs) => *inputs,
            Err(boxed) => return Err(*boxed.downcast::<Inputs<B, D>>().expect("unchanged")),
        };
        let time = state.as_ref().map_or(0, |s| s.momentum.time) + 1;
        // burn's bias corrections, in f32 as burn computes them.
        let bias_correction2_sqrt = (1.0 - self.beta_2.powi(time as i32)).sqrt();
        let scalars = AdamScalars {
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            combined: bias_correction2_sqrt / (1.0 - self.beta_1.powi(time as i32)),
            eps_scaled: self.epsilon * bias_correction2_sqrt,
            lr: lr as f32,
        };
        let primitive = |t: Tensor<Flex, D>| t.into_primitive().tensor();
        let tensor = |x| Tensor::<Flex, D>::from_primitive(TensorPrimitive::Float(x));
        let (p, g) = (primitive(param.clone()), primitive(grad.clone()));
        let moments = state.as_ref().map(|s| {
            let m = primitive(s.momentum.moment_1.clone());
            (m, primitive(s.momentum.moment_2.clone()))
        });
        let output: (Tensor<Flex, D>, Option<AdamState<Flex, D>>) =
            if adam_handles_flex(&p, &g, moments.as_ref().map(|(m, v)| (m, v))) {
                // Drop the other handles first: a buffer held once is updated in place.
                drop((param, grad, state));
                let (p, m, v) = adam_step_flex(p, &g, moments, scalars);
                let momentum = AdaptiveMomentumState::new(time, tensor(m), tensor(v));
                (tensor(p), Some(AdamState::new(momentum)))
            } else {
                // Not f32: burn's Adam.
                drop((p, g, moments));
                self.burn.step(lr, param, grad, state)
            };
        let boxed: Box<dyn Any> = Box::new(output);
        Ok(*boxed.downcast().expect("B is Flex"))
    }
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdam {
    type State<const D: usize> = AdamState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        match self.step_cpu(lr, (tensor, grad, state)) {
            Ok(output) => output,
            Err((tensor, grad, state)) => self.burn.step(lr, tensor, grad, state),
        }
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <Adam as SimpleOptimizer<B>>::to_device(state, device)
    }
}

impl<B: Backend> crate::record::AdamStated<B> for FusedAdam {
    fn to_adam<const D: usize>(state: AdamState<B, D>) -> AdamState<B, D> {
        state
    }
    fn from_adam<const D: usize>(state: AdamState<B, D>) -> AdamState<B, D> {
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{load_optimizer, save_optimizer};
    use crate::{CpuBackend, CpuDevice};
    use burn::backend::Autodiff;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::{GradientsParams, Optimizer};

    type Ad = Autodiff<CpuBackend>;

    /// A deterministic loss (no RNG: both optimizers must see the same gradients).
    fn loss(layer: &Linear<Ad>, step: usize) -> Tensor<Ad, 1> {
        let [d_in, _] = layer.weight.dims();
        let n = 8 * d_in;
        let x = Tensor::<Ad, 1, Int>::arange(0..n as i64, &CpuDevice::default())
            .float()
            .mul_scalar(0.37)
            .add_scalar(step as f64)
            .sin()
            .reshape([8, d_in]);
        layer.forward(x).powf_scalar(2.0).mean()
    }

    fn weights(layer: &Linear<Ad>) -> Vec<f32> {
        let mut v: Vec<f32> = layer.weight.val().into_data().to_vec().unwrap();
        v.extend(
            layer
                .bias
                .as_ref()
                .unwrap()
                .val()
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        );
        v
    }

    #[test]
    fn updates_are_bit_identical_to_burns_adam() {
        let device = CpuDevice::default();
        // 37×1100: more than one of the kernel's parallel chunks.
        let layer: Linear<Ad> = LinearConfig::new(37, 1100).init(&device);
        let _ = layer.num_params(); // initialise (lazy) before cloning
        let before = weights(&layer);
        // A copy sharing the buffers: the in-place update must not reach it.
        let kept = layer.clone();
        let (mut ours, mut theirs) = (layer.clone(), layer);
        let mut fused = FusedAdam::new(0.5, 0.99, 1e-8).init::<Ad, Linear<Ad>>();
        let mut burn = AdamConfig::new()
            .with_beta_1(0.5)
            .with_beta_2(0.99)
            .with_epsilon(1e-8)
            .init::<Ad, Linear<Ad>>();
        for step in 0..4 {
            let grads = GradientsParams::from_grads(loss(&ours, step).backward(), &ours);
            ours = fused.step(1e-2, ours, grads);
            let grads = GradientsParams::from_grads(loss(&theirs, step).backward(), &theirs);
            theirs = burn.step(1e-2, theirs, grads);
            let (a, b) = (weights(&ours), weights(&theirs));
            let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            assert_eq!(
                differ,
                0,
                "step {step}: {differ} of {} weights differ",
                a.len()
            );
        }
        assert_ne!(weights(&ours), before, "the steps moved the weights");
        assert_eq!(weights(&kept), before, "a shared copy kept its weights");
    }

    #[test]
    fn reads_and_writes_burns_optimizer_records() {
        let device = CpuDevice::default();
        let dir = tempfile::tempdir().unwrap();
        let layer: Linear<Ad> = LinearConfig::new(5, 3).init(&device);
        let _ = layer.num_params();
        // Two steps of burn's Adam, saved (a checkpoint from before FusedAdam) ...
        let mut burn = AdamConfig::new()
            .with_epsilon(1e-8)
            .init::<Ad, Linear<Ad>>();
        let mut theirs = layer;
        for step in 0..2 {
            let grads = GradientsParams::from_grads(loss(&theirs, step).backward(), &theirs);
            theirs = burn.step(1e-2, theirs, grads);
        }
        save_optimizer(&burn, &theirs, &dir.path().join("optimizer")).unwrap();
        // ... resumed with FusedAdam: the third step equals burn's third step.
        let fused = FusedAdam::new(0.9, 0.999, 1e-8).init::<Ad, Linear<Ad>>();
        let mut fused = load_optimizer(fused, &theirs, &dir.path().join("optimizer")).unwrap();
        let mut ours = theirs.clone();
        let grads = GradientsParams::from_grads(loss(&ours, 2).backward(), &ours);
        ours = fused.step(1e-2, ours, grads);
        let grads = GradientsParams::from_grads(loss(&theirs, 2).backward(), &theirs);
        theirs = burn.step(1e-2, theirs, grads);
        assert_eq!(weights(&ours), weights(&theirs));
    }
}
