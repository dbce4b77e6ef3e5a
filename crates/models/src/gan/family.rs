//! The GAN's training step: one discriminator update, then (every
//! `n_critic` steps) one generator update on the same fake batch, each
//! with its own Adam optimizer, as PyTorch's DCGAN example does.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use genzoo_core::ema::Ema;
use genzoo_core::family::{SampleRequest, SamplerOptions};
use genzoo_core::grad::global_norm;
use genzoo_core::noise;
use genzoo_core::optim::FusedAdam;
use genzoo_core::parallel::{Replica, broadcast_autodiff, broadcast_module};
use genzoo_core::record::{
    load_module, load_optimizer, save_module, save_optimizer, trainable_params,
};
use genzoo_core::weights::{NamedTensors, pytorch_layout};
use genzoo_core::{Error, Family, ImageBatch, Metrics, Result, StepContext};
use serde::{Deserialize, Serialize};

use super::loss::{GanLoss, gradient_penalty};
use super::model::{Discriminator, DiscriminatorKind, Generator, GeneratorShape};

/// GAN hyper-parameters. The defaults are the `dcgan-28` reference model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GanConfig {
    /// Image channels (set from the data).
    pub channels: usize,
    /// Image height, divisible by 4 (set from the data).
    pub height: usize,
    /// Image width, divisible by 4 (set from the data).
    pub width: usize,
    /// Noise dimensions.
    pub latent: usize,
    /// Condition G (label embedding) and D (projection) on the class.
    pub conditional: bool,
    /// Number of classes (set from the data when `conditional`).
    pub num_classes: usize,
    /// Width of the generator's label embedding.
    pub label_embedding: usize,
    /// BatchNorm (DCGAN), spectral (SNGAN) or plain (WGAN-GP critic).
    pub discriminator: DiscriminatorKind,
    /// The adversarial objective.
    pub loss: GanLoss,
    /// Weight λ of the gradient penalty (0: off; needs a `plain` discriminator).
    pub gradient_penalty: f64,
    /// Discriminator steps per generator step.
    pub n_critic: u64,
    /// Discriminator learning rate as a multiple of the engine's (the generator's).
    pub d_lr_scale: f64,
    /// Adam β₁, β₂ of the generator.
    pub g_betas: (f32, f32),
    /// Adam β₁, β₂ of the discriminator.
    pub d_betas: (f32, f32),
    /// Adam ε (PyTorch's 1e-8).
    pub adam_eps: f32,
    /// Keep an EMA of the generator with this decay and sample from it (off when unset).
    pub ema_decay: Option<f64>,
    /// Warn when D's loss stays below this while G's exceeds `collapse_g_loss`...
    pub collapse_d_loss: f64,
    /// ...with G's loss above this...
    pub collapse_g_loss: f64,
    /// ...for this many consecutive steps.
    pub collapse_patience: u64,
}

impl Default for GanConfig {
    fn default() -> Self {
        Self {
            channels: 1,
            height: 28,
            width: 28,
            latent: 100,
            conditional: false,
            num_classes: 0,
            label_embedding: 50,
            discriminator: DiscriminatorKind::BatchNorm,
            loss: GanLoss::NonSaturating,
            gradient_penalty: 0.0,
            n_critic: 1,
            d_lr_scale: 1.0,
            g_betas: (0.5, 0.999),
            d_betas: (0.5, 0.999),
            adam_eps: 1e-8,
            ema_decay: None,
            collapse_d_loss: 0.01,
            collapse_g_loss: 8.0,
            collapse_patience: 200,
        }
    }
}

impl GanConfig {
    /// Rejects configurations no GAN can be built or trained from.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("gan: {m}")));
        if !self.height.is_multiple_of(4)
            || !self.width.is_multiple_of(4)
            || self.height == 0
            || self.width == 0
        {
            return bad(format!(
                "height and width must be positive multiples of 4, got {}x{}",
                self.height, self.width
            ));
        }
        if self.latent == 0 || self.channels == 0 {
            return bad("latent and channels must be positive".into());
        }
        if self.conditional && self.num_classes < 2 {
            return bad("a conditional GAN needs at least 2 classes".into());
        }
        if self.gradient_penalty > 0.0 && self.discriminator != DiscriminatorKind::Plain {
            return bad("the gradient penalty needs discriminator = \"plain\" (BatchNorm breaks the per-example penalty and burn cannot differentiate spectral norm twice here)".into());
        }
        if self.gradient_penalty > 0.0 && self.conditional {
            return bad(
                "the gradient penalty is not supported with a conditional (projection) critic"
                    .into(),
            );
        }
        if self.n_critic == 0 {
            return bad("n_critic must be at least 1".into());
        }
        Ok(())
    }

    fn generator_shape(&self) -> GeneratorShape {
        GeneratorShape {
            latent: self.latent,
            channels: self.channels,
            height: self.height,
            width: self.width,
            num_classes: if self.conditional {
                self.num_classes
            } else {
                0
            },
            embedding: self.label_embedding,
        }
    }
}

type AdamOf<M, B> = OptimizerAdaptor<FusedAdam, M, B>;

/// Share of real images with a positive logit and fake ones with a non-positive one.
///
/// # Shapes
/// - real, fake: `[batch]` → `[1]`
fn discriminator_accuracy<Bk: Backend>(real: Tensor<Bk, 1>, fake: Tensor<Bk, 1>) -> Tensor<Bk, 1> {
    let n = real.dims()[0] + fake.dims()[0];
    (real.greater_elem(0.0).float().sum() + fake.lower_equal_elem(0.0).float().sum()) / n as f64
}

/// A generator and a discriminator with their optimizers: the `gan` family.
pub struct GanTrainer<B: AutodiffBackend> {
    /// The generator.
    pub generator: Generator<B>,
    /// The discriminator (critic).
    pub discriminator: Discriminator<B>,
    g_optimizer: AdamOf<Generator<B>, B>,
    d_optimizer: AdamOf<Discriminator<B>, B>,
    ema: Option<Ema<Generator<B::InnerBackend>>>,
    config: GanConfig,
    device: B::Device,
    collapse_streak: u64,
}

/// Metrics of one discriminator update.
struct DStep {
    loss: f64,
    real: f64,
    fake: f64,
    accuracy: f64,
    grad_norm: f64,
}

impl<B: AutodiffBackend> GanTrainer<B> {
    /// A freshly initialised GAN.
    pub fn new(config: GanConfig, device: &B::Device) -> Self {
        let classes = if config.conditional {
            config.num_classes
        } else {
            0
        };
        let generator = Generator::new(&config.generator_shape(), device);
        let discriminator = Discriminator::new(
            config.discriminator,
            config.channels,
            config.height,
            config.width,
            classes,
            device,
        );
        genzoo_core::record::force_init(&generator);
        genzoo_core::record::force_init(&discriminator);
        let adam = |(b1, b2): (f32, f32)| FusedAdam::new(b1, b2, config.adam_eps);
        let ema = config.ema_decay.map(|d| Ema::new(&generator, d, true));
        Self {
            g_optimizer: adam(config.g_betas).init(),
            d_optimizer: adam(config.d_betas).init(),
            generator,
            discriminator,
            ema,
            config,
            device: device.clone(),
            collapse_streak: 0,
        }
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &GanConfig {
        &self.config
    }

    /// Trainable parameters of (generator, discriminator), BatchNorm running statistics excluded.
    pub fn param_counts(&self) -> (usize, usize) {
        (
            trainable_params(&self.generator),
            trainable_params(&self.discriminator),
        )
    }

    /// Noise z ~ N(0, I), `[n, latent]`, one row per example from the step's
    /// noise stream ([`genzoo_core::noise`]; the backend's seeded RNG outside one).
    pub fn noise<Bk: Backend>(&self, n: usize, device: &Bk::Device) -> Tensor<Bk, 2> {
        noise::normal_per_example([n, self.config.latent], device)
    }

    /// One discriminator update on real images and a *detached* fake batch.
    /// Only D's weights change.
    fn discriminator_update(
        &mut self,
        real: Tensor<B, 4>,
        fake: Tensor<B, 4>,
        labels: Tensor<B, 1, Int>,
        ctx: &mut StepContext,
    ) -> Result<DStep> {
        let d = &self.discriminator;
        let n = real.dims()[0];
        let real_logits = d.forward(real.clone(), labels.clone(), true);
        let fake_logits = d.forward(fake.clone(), labels, true);
        let mut loss = self
            .config
            .loss
            .discriminator(real_logits.clone(), fake_logits.clone());
        if self.config.gradient_penalty > 0.0 {
            let eps = noise::uniform_per_example::<B::InnerBackend, 4>(
                [n, 1, 1, 1],
                0.0,
                1.0,
                &self.device,
            );
            let mix = real.inner() * eps.clone() + fake.inner() * (eps.neg() + 1.0);
            loss = loss + gradient_penalty(d, mix) * self.config.gradient_penalty;
        }
        let grads = GradientsParams::from_grads(loss.backward(), d);
        let grad_norm = global_norm::<B, _>(d, &grads);
        let lr = ctx.lr() * self.config.d_lr_scale;
        self.discriminator =
            ctx.apply_with_lr(&mut self.d_optimizer, self.discriminator.clone(), grads, lr)?;
        let scalar = |t: Tensor<B, 1>| -> f64 { t.into_scalar().elem() };
        let accuracy = discriminator_accuracy(real_logits.clone(), fake_logits.clone());
        let (real_mean, fake_mean) = match self.config.loss {
            // D(x) as a probability for the BCE loss, as PyTorch's DCGAN example prints it.
            GanLoss::NonSaturating => (
                scalar(burn::tensor::activation::sigmoid(real_logits).mean()),
                scalar(burn::tensor::activation::sigmoid(fake_logits).mean()),
            ),
            _ => (scalar(real_logits.mean()), scalar(fake_logits.mean())),
        };
        Ok(DStep {
            loss: scalar(loss),
            real: real_mean,
            fake: fake_mean,
            accuracy: scalar(accuracy),
            grad_norm,
        })
    }

    /// One generator update through the discriminator on the fake batch
    /// (with its graph). Only G's weights change; returns (loss, grad norm).
    fn generator_update(
        &mut self,
        fake: Tensor<B, 4>,
        labels: Tensor<B, 1, Int>,
        ctx: &mut StepContext,
    ) -> Result<(f64, f64)> {
        // D passes the gradient through to the fake images, but its own
        // weights are not tracked: their gradients would be dropped, and
        // the backward pass skips computing them (about half of D's backward).
        let discriminator = self.discriminator.clone().no_grad();
        let logits = discriminator.forward(fake, labels, false);
        let loss = self.config.loss.generator(logits);
        let mut grads = loss.backward();
        // Only G's gradients are taken, so D is untouched.
        let g_grads = GradientsParams::from_module(&mut grads, &self.generator);
        let grad_norm = global_norm::<B, _>(&self.generator, &g_grads);
        self.generator = ctx.apply(&mut self.g_optimizer, self.generator.clone(), g_grads)?;
        if let Some(ema) = &mut self.ema {
            ema.update(&self.generator, ctx.step);
        }
        Ok((loss.into_scalar().elem(), grad_norm))
    }

    /// A discriminator update alone (for tests of the update's isolation).
    pub fn discriminator_step(
        &mut self,
        batch: &ImageBatch<B>,
        ctx: &mut StepContext,
    ) -> Result<f64> {
        let z = self.noise::<B>(batch.len(), &self.device);
        let fake = self.generator.forward(z, batch.labels.clone()).detach();
        Ok(self
            .discriminator_update(batch.images.clone(), fake, batch.labels.clone(), ctx)?
            .loss)
    }

    /// A generator update alone (for tests of the update's isolation).
    pub fn generator_step(&mut self, batch: &ImageBatch<B>, ctx: &mut StepContext) -> Result<f64> {
        let z = self.noise::<B>(batch.len(), &self.device);
        let fake = self.generator.forward(z, batch.labels.clone());
        Ok(self.generator_update(fake, batch.labels.clone(), ctx)?.0)
    }

    /// The generator samples are drawn from: the EMA when enabled.
    pub fn sampling_generator(&self) -> Generator<B::InnerBackend> {
        match &self.ema {
            Some(ema) => ema.module.clone(),
            None => self.generator.valid(),
        }
    }
}

impl<B: AutodiffBackend> Family<B> for GanTrainer<B> {
    type Batch = ImageBatch<B>;

    fn num_params(&self) -> usize {
        let (g, d) = self.param_counts();
        g + d
    }

    fn train_step(
        mut self,
        batch: ImageBatch<B>,
        ctx: &mut StepContext,
    ) -> Result<(Self, Metrics)> {
        let n = batch.len();
        // One generator forward: its output, detached, trains D; with its graph, trains G.
        let z = self.noise::<B>(n, &self.device);
        let fake = self.generator.forward(z, batch.labels.clone());
        let d = self.discriminator_update(
            batch.images,
            fake.clone().detach(),
            batch.labels.clone(),
            ctx,
        )?;
        let mut metrics = Metrics::new().with("d_loss", d.loss);
        if ctx.step.is_multiple_of(self.config.n_critic) {
            let (g_loss, g_norm) = self.generator_update(fake, batch.labels, ctx)?;
            metrics.push("g_loss", g_loss);
            metrics.push("g_grad_norm", g_norm);
            if d.loss < self.config.collapse_d_loss && g_loss > self.config.collapse_g_loss {
                self.collapse_streak += 1;
                if self.collapse_streak == self.config.collapse_patience {
                    ctx.warn(format!(
                        "possible collapse: D's loss has been below {} and G's above {} for {} steps (step {}); \
                         D wins outright and G gets no useful gradient. Try a lower D learning rate (d_lr_scale), \
                         the sngan-28 preset, or restart from an earlier checkpoint",
                        self.config.collapse_d_loss, self.config.collapse_g_loss, self.collapse_streak, ctx.step
                    ));
                }
            } else {
                self.collapse_streak = 0;
            }
        }
        metrics.push("d_real", d.real);
        metrics.push("d_fake", d.fake);
        metrics.push("d_accuracy", d.accuracy);
        metrics.push("d_grad_norm", d.grad_norm);
        Ok((self, metrics))
    }

    fn eval_batch(&self, batch: ImageBatch<B>) -> Result<Metrics> {
        // Held-out adversarial losses with the networks in eval mode.
        let n = batch.len();
        let (g, d) = (self.generator.valid(), self.discriminator.valid());
        let labels = batch.labels.inner();
        let z = self.noise::<B::InnerBackend>(n, &self.device);
        let fake = g.forward(z, labels.clone());
        let real_logits = d.forward(batch.images.inner(), labels.clone(), false);
        let fake_logits = d.forward(fake, labels, false);
        let d_loss: f64 = self
            .config
            .loss
            .discriminator(real_logits.clone(), fake_logits.clone())
            .into_scalar()
            .elem();
        let g_loss: f64 = self
            .config
            .loss
            .generator(fake_logits.clone())
            .into_scalar()
            .elem();
        let accuracy: f64 = discriminator_accuracy(real_logits, fake_logits)
            .into_scalar()
            .elem();
        Ok(Metrics::new()
            .with("d_loss", d_loss)
            .with("g_loss", g_loss)
            .with("d_accuracy", accuracy))
    }

    fn sample_images(&self, request: &SampleRequest) -> Result<Tensor<B::InnerBackend, 4>> {
        let labels =
            request.labels::<B::InnerBackend>(self.num_classes(), "cdcgan-28", &self.device)?;
        // Host noise seeded by the request: the same images whatever else runs.
        let _noise = noise::begin(genzoo_core::seed::derive(request.seed, "gan-sample", 0));
        let z = self.noise::<B::InnerBackend>(request.n, &self.device);
        self.decode_latents(z, labels, &request.sampler)
    }

    fn num_classes(&self) -> usize {
        if self.config.conditional {
            self.config.num_classes
        } else {
            0
        }
    }

    fn latent_dim(&self) -> Option<usize> {
        Some(self.config.latent)
    }

    /// G(z, y) of the generator samples come from (the EMA when enabled).
    fn decode_latents(
        &self,
        codes: Tensor<B::InnerBackend, 2>,
        labels: Tensor<B::InnerBackend, 1, Int>,
        _sampler: &SamplerOptions,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        // [-1, 1] → [0, 1]
        Ok((self.sampling_generator().forward(codes, labels) + 1.0) / 2.0)
    }

    /// `generator.*`, `discriminator.*`, and `generator_ema.*` when the
    /// run keeps an EMA (the weights samples come from).
    fn pytorch_weights(&self) -> Result<NamedTensors> {
        let mut tensors = pytorch_layout(&self.generator, "generator.")?;
        tensors.extend(pytorch_layout(&self.discriminator, "discriminator.")?);
        if let Some(ema) = &self.ema {
            tensors.extend(pytorch_layout(&ema.module, "generator_ema.")?);
        }
        Ok(tensors)
    }

    fn broadcast_weights(mut self, replica: &Replica) -> Result<Self> {
        self.generator = broadcast_autodiff(self.generator, replica)?;
        self.discriminator = broadcast_autodiff(self.discriminator, replica)?;
        if let Some(ema) = self.ema.as_mut() {
            ema.module = broadcast_module(ema.module.clone(), replica)?;
        }
        Ok(self)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        save_module(&self.generator, &dir.join("generator"))?;
        save_module(&self.discriminator, &dir.join("discriminator"))?;
        save_optimizer(
            &self.g_optimizer,
            &self.generator,
            &dir.join("generator_optimizer"),
        )?;
        save_optimizer(
            &self.d_optimizer,
            &self.discriminator,
            &dir.join("discriminator_optimizer"),
        )?;
        if let Some(ema) = &self.ema {
            save_module(&ema.module, &dir.join("generator_ema"))?;
        }
        let state = serde_json::json!({ "collapse_streak": self.collapse_streak });
        std::fs::write(dir.join("gan_state.json"), state.to_string()).map_err(|e| Error::io(dir, e))
    }

    fn load(mut self, dir: &Path) -> Result<Self> {
        self = self.load_weights(dir)?;
        self.g_optimizer = load_optimizer(
            self.g_optimizer,
            &self.generator,
            &dir.join("generator_optimizer"),
        )?;
        self.d_optimizer = load_optimizer(
            self.d_optimizer,
            &self.discriminator,
            &dir.join("discriminator_optimizer"),
        )?;
        let state = dir.join("gan_state.json");
        let text = std::fs::read_to_string(&state).map_err(|e| Error::io(&state, e))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::checkpoint(&state, format!("not a GAN state file: {e}")))?;
        self.collapse_streak = value["collapse_streak"]
            .as_u64()
            .ok_or_else(|| Error::checkpoint(&state, "collapse_streak is missing"))?;
        Ok(self)
    }

    /// The collapse streak starts again at 0, with the optimizers.
    fn load_weights(mut self, dir: &Path) -> Result<Self> {
        self.generator = load_module(self.generator, &dir.join("generator"))?;
        self.discriminator = load_module(self.discriminator, &dir.join("discriminator"))?;
        if let Some(ema) = &mut self.ema {
            ema.module = load_module(ema.module.clone(), &dir.join("generator_ema"))?;
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use genzoo_core::CpuDevice;
    use genzoo_core::record::trainable_values;
    use genzoo_core::seed::{host_rng, uniform_tensor};

    type AB = Autodiff<Flex>;

    #[test]
    fn dcgan_28_has_the_reference_parameter_counts() {
        let _guard = crate::rng_lock();
        // G: Linear(100, 6272) 633,472 + BN(6272) 12,544 + ConvT(128→64, 4×4) 131,136 + BN(64) 128
        //    + ConvT(64→1, 4×4) 1,025 = 778,305
        // D: Conv(1→64) 1,088 + Conv(64→128) 131,200 + BN(128) 256 + Linear(6272, 1) 6,273 = 138,817
        let gan = GanTrainer::<AB>::new(GanConfig::default(), &CpuDevice::default());
        assert_eq!(gan.param_counts(), (778_305, 138_817));
    }

    #[test]
    fn shapes_and_ranges_for_every_variant() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        for (kind, conditional) in [
            (DiscriminatorKind::BatchNorm, false),
            (DiscriminatorKind::BatchNorm, true),
            (DiscriminatorKind::Spectral, false),
            (DiscriminatorKind::Plain, false),
        ] {
            for (c, h, w) in [(1, 28, 28), (3, 32, 32)] {
                let config = GanConfig {
                    channels: c,
                    height: h,
                    width: w,
                    discriminator: kind,
                    conditional,
                    num_classes: if conditional { 10 } else { 0 },
                    ..Default::default()
                };
                let gan = GanTrainer::<AB>::new(config, &dev);
                let labels = Tensor::<AB, 1, Int>::from_ints([0, 3, 9], &dev);
                let fake = gan
                    .generator
                    .forward(gan.noise::<AB>(3, &dev), labels.clone());
                assert_eq!(fake.dims(), [3, c, h, w]);
                let (lo, hi): (f32, f32) = (
                    fake.clone().min().into_scalar(),
                    fake.clone().max().into_scalar(),
                );
                assert!(
                    lo >= -1.0 && hi <= 1.0,
                    "tanh output in [-1, 1], got [{lo}, {hi}]"
                );
                assert_eq!(gan.discriminator.forward(fake, labels, true).dims(), [3]);
                let samples = gan
                    .sample_images(&SampleRequest {
                        n: 4,
                        seed: 1,
                        class: None,
                        ..Default::default()
                    })
                    .unwrap();
                let (lo, hi): (f32, f32) = (
                    samples.clone().min().into_scalar(),
                    samples.max().into_scalar(),
                );
                assert!(lo >= 0.0 && hi <= 1.0);
            }
        }
    }

    #[test]
    fn each_update_changes_only_its_own_network() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        Flex::seed(&dev, 2);
        for kind in [DiscriminatorKind::BatchNorm, DiscriminatorKind::Spectral] {
            let mut gan = GanTrainer::<AB>::new(
                GanConfig {
                    height: 8,
                    width: 8,
                    discriminator: kind,
                    ..Default::default()
                },
                &dev,
            );
            let batch = ImageBatch {
                images: uniform_tensor::<AB, 4>(&mut rng, [8, 1, 8, 8], -1.0, 1.0, &dev),
                labels: Tensor::<AB, 1, Int>::zeros([8], &dev),
            };
            let mut ctx = StepContext::new(1, 1e-2);
            let (g0, d0) = (
                trainable_values(&gan.generator),
                trainable_values(&gan.discriminator),
            );
            gan.discriminator_step(&batch, &mut ctx).unwrap();
            let (g1, d1) = (
                trainable_values(&gan.generator),
                trainable_values(&gan.discriminator),
            );
            assert_eq!(g0, g1, "a D step must leave G unchanged ({kind:?})");
            assert_ne!(d0, d1, "a D step must change D");
            gan.generator_step(&batch, &mut ctx).unwrap();
            let (g2, d2) = (
                trainable_values(&gan.generator),
                trainable_values(&gan.discriminator),
            );
            assert_eq!(d1, d2, "a G step must leave D unchanged ({kind:?})");
            assert_ne!(g1, g2, "a G step must change G");
        }
    }

    #[test]
    fn a_frozen_discriminator_passes_the_same_gradient_and_computes_none_of_its_own() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        let gan = GanTrainer::<AB>::new(
            GanConfig {
                height: 8,
                width: 8,
                ..Default::default()
            },
            &dev,
        );
        let fake = uniform_tensor::<AB, 4>(&mut rng, [4, 1, 8, 8], -1.0, 1.0, &dev);
        let labels = Tensor::<AB, 1, Int>::zeros([4], &dev);
        // The generator's update as it is taken: the loss through D of the fake images.
        let through = |d: &Discriminator<AB>| {
            let fake = fake.clone().require_grad();
            let loss = gan
                .config
                .loss
                .generator(d.forward(fake.clone(), labels.clone(), false));
            let mut grads = loss.backward();
            let d_grads = GradientsParams::from_module(&mut grads, d).len();
            (fake.grad(&grads).unwrap(), d_grads)
        };
        let (tracked, d_tracked) = through(&gan.discriminator);
        let (frozen, d_frozen) = through(&gan.discriminator.clone().no_grad());
        // Two convolutions, BatchNorm and the head, each a weight and a bias.
        assert_eq!(
            d_tracked, 8,
            "every parameter of D has a gradient when tracked"
        );
        assert_eq!(d_frozen, 0, "a frozen D computes no gradient of its own");
        assert_eq!(
            tracked.to_data(),
            frozen.to_data(),
            "the same gradient reaches G"
        );
    }

    #[test]
    fn wgan_gp_trains_a_step() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        Flex::seed(&dev, 9);
        let config = GanConfig {
            height: 8,
            width: 8,
            discriminator: DiscriminatorKind::Plain,
            loss: GanLoss::Wasserstein,
            gradient_penalty: 10.0,
            n_critic: 2,
            ..Default::default()
        };
        let gan = GanTrainer::<AB>::new(config, &dev);
        let batch = ImageBatch {
            images: uniform_tensor::<AB, 4>(&mut rng, [4, 1, 8, 8], -1.0, 1.0, &dev),
            labels: Tensor::<AB, 1, Int>::zeros([4], &dev),
        };
        let (gan, m1) = gan
            .train_step(batch.clone(), &mut StepContext::new(1, 1e-4))
            .unwrap();
        assert!(
            m1.get("g_loss").is_none(),
            "step 1 of n_critic = 2 trains D only"
        );
        let (_, m2) = gan
            .train_step(batch, &mut StepContext::new(2, 1e-4))
            .unwrap();
        assert!(m2.get("g_loss").is_some_and(f64::is_finite));
        assert!(m2.get("d_loss").is_some_and(f64::is_finite));
    }

    #[test]
    fn collapse_guard_warns_once_with_the_step() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        // Thresholds every step meets, so the guard must fire after `patience` steps.
        let config = GanConfig {
            height: 8,
            width: 8,
            collapse_d_loss: 1e9,
            collapse_g_loss: -1e9,
            collapse_patience: 3,
            ..Default::default()
        };
        let mut gan = GanTrainer::<AB>::new(config, &dev);
        let batch = ImageBatch {
            images: uniform_tensor::<AB, 4>(&mut rng, [4, 1, 8, 8], -1.0, 1.0, &dev),
            labels: Tensor::<AB, 1, Int>::zeros([4], &dev),
        };
        let mut warned_at = Vec::new();
        for step in 1..=5 {
            let mut ctx = StepContext::new(step, 2e-4);
            gan = gan.train_step(batch.clone(), &mut ctx).unwrap().0;
            if !ctx.warnings.is_empty() {
                assert!(
                    ctx.warnings[0].contains(&format!("step {step}")),
                    "{:?}",
                    ctx.warnings
                );
                warned_at.push(step);
            }
        }
        assert_eq!(warned_at, vec![3]);
    }

    #[test]
    fn gradient_penalty_needs_a_plain_critic() {
        let _guard = crate::rng_lock();
        let config = GanConfig {
            gradient_penalty: 10.0,
            ..Default::default()
        };
        assert!(config.validate().unwrap_err().to_string().contains("plain"));
    }
}
