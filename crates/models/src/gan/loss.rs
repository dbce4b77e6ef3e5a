//! GAN objectives on discriminator logits, and the WGAN-GP penalty.
//!
//! - Non-saturating (Goodfellow et al. 2014, §3): D minimises
//!   softplus(−D(x)) + softplus(D(G(z))), G minimises softplus(−D(G(z))).
//! - Hinge (Lim & Ye 2017; Miyato et al. 2018): D minimises
//!   relu(1 − D(x)) + relu(1 + D(G(z))), G minimises −D(G(z)).
//! - Wasserstein (Arjovsky et al. 2017): the critic minimises
//!   D(G(z)) − D(x) (+ λ·GP), G minimises −D(G(z)).

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::activation::relu;
// Overflow-free softplus (burn's overflows past x ≈ 88), fused on the CPU backend.
use burn::tensor::backend::AutodiffBackend;
use genzoo_core::fused::softplus;
use serde::{Deserialize, Serialize};

use super::model::Discriminator;

/// Which adversarial objective to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GanLoss {
    /// Binary cross-entropy with logits, non-saturating generator loss.
    #[default]
    NonSaturating,
    /// Hinge loss.
    Hinge,
    /// Wasserstein loss (use with the gradient penalty).
    Wasserstein,
}

impl GanLoss {
    /// The discriminator's loss from its logits on real and fake images (`[batch]` each).
    pub fn discriminator<B: Backend>(self, real: Tensor<B, 1>, fake: Tensor<B, 1>) -> Tensor<B, 1> {
        match self {
            GanLoss::NonSaturating => softplus(real.neg()).mean() + softplus(fake).mean(),
            GanLoss::Hinge => relu(real.neg() + 1.0).mean() + relu(fake + 1.0).mean(),
            GanLoss::Wasserstein => fake.mean() - real.mean(),
        }
    }

    /// The generator's loss from the discriminator's logits on fake images.
    pub fn generator<B: Backend>(self, fake: Tensor<B, 1>) -> Tensor<B, 1> {
        match self {
            GanLoss::NonSaturating => softplus(fake.neg()).mean(),
            GanLoss::Hinge | GanLoss::Wasserstein => fake.mean().neg(),
        }
    }
}

/// The WGAN-GP penalty (Gulrajani et al. 2017, eq. 3):
/// E[(‖∇ₓ̂ D(x̂)‖₂ − 1)²] at x̂ = εx + (1 − ε)x̃, ε ~ U[0, 1] per example.
///
/// The norm is over each example's *whole* input gradient (all channels and
/// pixels), not over one dimension. The input gradient is itself
/// differentiated with respect to D's weights, which burn supports only
/// through a nested `Autodiff<Autodiff<_>>` backend: the critic is lifted
/// into it, differentiated once there, and the resulting gradient stays
/// attached to the critic's weights on `B`.
///
/// # Shapes
/// - interpolated: `[batch, channels, height, width]`
pub fn gradient_penalty<B: AutodiffBackend>(
    critic: &Discriminator<B>,
    interpolated: Tensor<B::InnerBackend, 4>,
) -> Tensor<B, 1> {
    let n = interpolated.dims()[0];
    let device = interpolated.device();
    let lifted: Discriminator<Autodiff<B>> = critic.clone().train::<Autodiff<B>>();
    let x = Tensor::<Autodiff<B>, 4>::from_inner(Tensor::<B, 4>::from_inner(interpolated))
        .require_grad();
    let labels = Tensor::<Autodiff<B>, 1, Int>::zeros([n], &device);
    let grads = lifted.forward(x.clone(), labels, false).sum().backward();
    let gx: Tensor<B, 4> = x.grad(&grads).expect("the critic depends on its input");
    penalty_from_input_gradient(gx)
}

/// E[(‖g‖₂ − 1)²] where ‖g‖₂ is each example's norm over *all* of its
/// input-gradient entries (channels × height × width).
///
/// # Shapes
/// - gradient: `[batch, channels, height, width]` → `[1]`
pub fn penalty_from_input_gradient<B: Backend>(gradient: Tensor<B, 4>) -> Tensor<B, 1> {
    let n = gradient.dims()[0];
    let norms = (gradient.reshape([n as i32, -1]).powi_scalar(2).sum_dim(1) + 1e-12).sqrt(); // [N, 1]
    (norms - 1.0).powi_scalar(2).mean()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gan::model::DiscriminatorKind;
    use crate::layers::conv2d;
    use burn::backend::Flex;
    use burn::module::{AutodiffModule, Module, ModuleMapper, Param, ParamId};
    use genzoo_core::CpuDevice;
    use genzoo_core::fused::leaky_relu;
    use genzoo_core::seed::{host_rng, normal_tensor, uniform_tensor};

    type AB = Autodiff<Flex>;

    /// Adds `h · direction` to one parameter.
    struct Perturb {
        id: ParamId,
        direction: Tensor<Flex, 4>,
        h: f32,
    }

    impl ModuleMapper<AB> for Perturb {
        fn map_float<const D: usize>(
            &mut self,
            param: Param<Tensor<AB, D>>,
        ) -> Param<Tensor<AB, D>> {
            let (id, value, mapper) = param.consume();
            let value = if id == self.id {
                let dims = value.dims();
                value + Tensor::<AB, 4>::from_inner(self.direction.clone() * self.h).reshape(dims)
            } else {
                value
            };
            Param::from_mapped_value(id, value, mapper)
        }
    }

    /// Which of the critic's second-layer LeakyReLU inputs are positive:
    /// the only kinks a change of `conv2`'s weights can move.
    fn second_layer_signs(critic: &Discriminator<AB>, x: Tensor<Flex, 4>) -> Vec<bool> {
        let critic = critic.valid();
        let h = conv2d(critic.conv1.as_ref().unwrap(), x);
        let h = conv2d(critic.conv2.as_ref().unwrap(), leaky_relu(h, 0.2));
        let values = h.into_data().to_vec::<f32>().unwrap();
        values.iter().map(|v| *v > 0.0).collect()
    }

    #[test]
    fn gradient_penalty_gradient_matches_finite_differences() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        Flex::seed(&dev, 21);
        let critic = Discriminator::<AB>::new(DiscriminatorKind::Plain, 1, 8, 8, 0, &dev);
        let x = uniform_tensor::<Flex, 4>(&mut rng, [4, 1, 8, 8], -1.0, 1.0, &dev);
        let weight = critic.conv2.as_ref().unwrap().weight.clone();
        let grads = gradient_penalty(&critic, x.clone()).backward();
        let g = weight
            .grad(&grads)
            .expect("the penalty depends on the conv weights");
        // A unit direction half along the gradient (a derivative well above
        // f32 noise) and half random (so a wrong gradient shows either way).
        let unit = |t: Tensor<Flex, 4>| t.clone() / t.powi_scalar(2).sum().sqrt().unsqueeze();
        let random = normal_tensor::<Flex, 4>(&mut rng, weight.dims(), 0.0, 1.0, &dev);
        let direction = unit(unit(g.clone()) + unit(random));
        let analytic: f64 = (g * direction.clone()).sum().into_scalar().elem();

        let shifted = |h: f32| {
            critic.clone().map(&mut Perturb {
                id: weight.id,
                direction: direction.clone(),
                h,
            })
        };
        // The penalty jumps where a LeakyReLU input changes sign, so central
        // differences hold only for a step that moves no input across 0.
        let mut h = 1e-3;
        while second_layer_signs(&shifted(h), x.clone())
            != second_layer_signs(&shifted(-h), x.clone())
        {
            h /= 2.0;
            assert!(h > 1e-6, "no step short of a LeakyReLU kink");
        }
        let at = |h: f32| -> f64 {
            gradient_penalty(&shifted(h), x.clone())
                .into_scalar()
                .elem()
        };
        let numeric = (at(h) - at(-h)) / (2.0 * h as f64);
        assert!(
            analytic.abs() > 0.1,
            "degenerate test: directional derivative {analytic}"
        );
        assert!(
            (analytic - numeric).abs() <= 2e-2 * numeric.abs(),
            "autodiff {analytic} vs finite differences {numeric} (h = {h})"
        );
    }

    #[test]
    fn penalty_norm_is_over_each_examples_whole_gradient() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        // Example 0: 8 entries of 0.5 (norm √2); example 1: one entry of 3 (norm 3).
        let mut values = vec![0.5f32; 8];
        let mut second = vec![0.0f32; 8];
        second[5] = 3.0;
        values.extend(second);
        let g = Tensor::<Flex, 4>::from_data(TensorData::new(values, [2, 2, 2, 2]), &dev);
        let got: f64 = penalty_from_input_gradient(g).into_scalar().elem();
        let want = ((2f64.sqrt() - 1.0).powi(2) + (3.0f64 - 1.0).powi(2)) / 2.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
