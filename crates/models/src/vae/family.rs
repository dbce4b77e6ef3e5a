//! The VAE's training step: one Adam update on the batch mean of
//! reconstruction + β·KL.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use genzoo_core::family::{SampleRequest, SamplerOptions};
use genzoo_core::noise;
use genzoo_core::optim::FusedAdam;
use genzoo_core::parallel::{Replica, broadcast_autodiff};
use genzoo_core::record::{load_module, load_optimizer, save_module, save_optimizer};
use genzoo_core::seed::derive;
use genzoo_core::weights::{NamedTensors, pytorch_layout};
use genzoo_core::{Family, ImageBatch, Metrics, Result, StepContext};

use super::model::{Vae, VaeConfig};
use super::objective::{elbo_terms, iwae_nll};

/// A VAE with its Adam optimizer: the `vae` family.
pub struct VaeTrainer<B: AutodiffBackend> {
    /// The network.
    pub model: Vae<B>,
    optimizer: OptimizerAdaptor<FusedAdam, Vae<B>, B>,
    config: VaeConfig,
    device: B::Device,
}

impl<B: AutodiffBackend> VaeTrainer<B> {
    /// A freshly initialised VAE and optimizer.
    pub fn new(config: VaeConfig, device: &B::Device) -> Self {
        let model = config.init::<B>(device);
        let optimizer =
            FusedAdam::new(config.adam_beta1, config.adam_beta2, config.adam_eps).init();
        Self {
            model,
            optimizer,
            config,
            device: device.clone(),
        }
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// The importance-weighted NLL estimate (nats per image) of a batch, averaged.
    pub fn iwae_nll(&self, batch: &ImageBatch<B>, k: usize) -> f64 {
        let model = self.model.valid();
        iwae_nll(
            &model,
            batch.images.clone().inner(),
            batch.labels.clone().inner(),
            k,
        )
        .mean()
        .into_scalar()
        .elem()
    }

    /// Importance samples per image of the bits/dim bound when none are asked for.
    pub const DEFAULT_IWAE_SAMPLES: usize = 128;

    /// The ELBO's terms as metrics (nats per image), added to `metrics`.
    /// `bits_per_dim` only where the decoder is a likelihood of 8-bit images
    /// ([`VaeConfig::check_bits_per_dim`]): a Bernoulli decoder's −ELBO over
    /// intensities divided by the pixels is a number, but not one on the
    /// scale of the DDPM's or gpt-pixel's bits/dim.
    fn elbo_metrics(
        &self,
        metrics: Metrics,
        neg_elbo: f64,
        reconstruction: f64,
        kl: f64,
    ) -> Metrics {
        let metrics = metrics.with("neg_elbo", neg_elbo);
        let metrics = if self.config.check_bits_per_dim().is_ok() {
            let pixels = self.config.pixels() as f64;
            metrics.with("bits_per_dim", neg_elbo / (pixels * std::f64::consts::LN_2))
        } else {
            metrics
        };
        metrics
            .with("reconstruction", reconstruction)
            .with("kl", kl)
    }

    /// Reconstructions of a batch's images in `[0, 1]`.
    pub fn reconstruct(&self, batch: &ImageBatch<B>) -> Tensor<B::InnerBackend, 4> {
        self.model
            .valid()
            .reconstruct(batch.images.clone().inner(), batch.labels.clone().inner())
    }
}

impl<B: AutodiffBackend> Family<B> for VaeTrainer<B> {
    type Batch = ImageBatch<B>;

    fn num_params(&self) -> usize {
        self.model.num_params()
    }

    fn supports_micro_batches(&self) -> bool {
        // One update per step, nothing else moves with the weights.
        true
    }

    fn train_step(
        mut self,
        batch: ImageBatch<B>,
        ctx: &mut StepContext,
    ) -> Result<(Self, Metrics)> {
        let terms = elbo_terms(&self.model, batch.images, batch.labels);
        let loss = terms.loss(self.config.beta);
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        self.model = ctx.apply(&mut self.optimizer, self.model, grads)?;

        let mean = |t: Tensor<B, 1>| -> f64 { t.mean().into_scalar().elem() };
        let metrics = Metrics::new().with("loss", loss.into_scalar().elem());
        let metrics = self.elbo_metrics(
            metrics,
            mean(terms.neg_elbo()),
            mean(terms.reconstruction),
            mean(terms.kl),
        );
        Ok((self, metrics))
    }

    fn eval_batch(&self, batch: ImageBatch<B>) -> Result<Metrics> {
        let model = self.model.valid();
        let terms = elbo_terms(&model, batch.images.inner(), batch.labels.inner());
        let mean = |t: Tensor<B::InnerBackend, 1>| -> f64 { t.mean().into_scalar().elem() };
        Ok(self.elbo_metrics(
            Metrics::new(),
            mean(terms.neg_elbo()),
            mean(terms.reconstruction),
            mean(terms.kl),
        ))
    }

    /// The importance-weighted bound (k = `effort`, default
    /// [`Self::DEFAULT_IWAE_SAMPLES`]) in bits/dim; only for the discretised
    /// logistic, the one decoder that is a likelihood of 8-bit images.
    fn bits_per_dim(
        &self,
        images: Tensor<B::InnerBackend, 4>,
        effort: Option<usize>,
        seed: u64,
    ) -> Result<Vec<f64>> {
        self.config.check_bits_per_dim()?;
        let k = effort.unwrap_or(Self::DEFAULT_IWAE_SAMPLES).max(1);
        let model = self.model.valid();
        let device = &self.device;
        // The 8-bit values exactly, whatever rounding the caller's scaling left.
        let images = (images * 255.0).round() / 255.0;
        let n = images.dims()[0];
        // About 16k decoded rows per call bounds the memory whatever k is.
        let per_call = (16_384 / k).max(1);
        let dims = self.config.pixels() as f64 * std::f64::consts::LN_2;
        // Host noise seeded by the call: the same bound whatever else runs.
        let _noise = noise::begin(derive(seed, "vae-iwae", 0));
        let mut bits = Vec::with_capacity(n);
        for start in (0..n).step_by(per_call) {
            let end = (start + per_call).min(n);
            let chunk = images.clone().narrow(0, start, end - start);
            let labels = Tensor::zeros([end - start], device);
            let nll: Vec<f32> = iwae_nll(&model, chunk, labels, k)
                .into_data()
                .to_vec()
                .map_err(|e| genzoo_core::Error::Config(format!("{e:?}")))?;
            bits.extend(nll.into_iter().map(|v| v as f64 / dims));
        }
        Ok(bits)
    }

    fn sample_images(&self, request: &SampleRequest) -> Result<Tensor<B::InnerBackend, 4>> {
        let device = &self.device;
        let labels = request.labels::<B::InnerBackend>(
            self.model.num_classes(),
            "a conditional preset (cvae-mlp, cvae-conv)",
            device,
        )?;
        let _noise = noise::begin(derive(request.seed, "vae-sample", 0));
        Ok(self.model.valid().sample(labels, device))
    }

    fn num_classes(&self) -> usize {
        self.model.num_classes()
    }

    fn latent_dim(&self) -> Option<usize> {
        Some(self.model.latent())
    }

    /// The decoder's mean images of the codes, as [`Vae::sample`] shows prior draws.
    fn decode_latents(
        &self,
        codes: Tensor<B::InnerBackend, 2>,
        labels: Tensor<B::InnerBackend, 1, Int>,
        _sampler: &SamplerOptions,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        let model = self.model.valid();
        let condition = model.condition(labels);
        Ok(model.mean_image(model.decode(codes, condition)))
    }

    /// The posterior means μ(x, y).
    fn encode_images(
        &self,
        images: Tensor<B::InnerBackend, 4>,
        labels: Tensor<B::InnerBackend, 1, Int>,
    ) -> Result<Tensor<B::InnerBackend, 2>> {
        let model = self.model.valid();
        let condition = model.condition(labels);
        Ok(model.encode(images, condition).0)
    }

    fn pytorch_weights(&self) -> Result<NamedTensors> {
        pytorch_layout(&self.model, "")
    }

    fn broadcast_weights(mut self, replica: &Replica) -> Result<Self> {
        self.model = broadcast_autodiff(self.model, replica)?;
        Ok(self)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        save_module(&self.model, &dir.join("model"))?;
        save_optimizer(&self.optimizer, &self.model, &dir.join("optimizer"))
    }

    fn load(mut self, dir: &Path) -> Result<Self> {
        self = self.load_weights(dir)?;
        self.optimizer = load_optimizer(self.optimizer, &self.model, &dir.join("optimizer"))?;
        Ok(self)
    }

    fn load_weights(mut self, dir: &Path) -> Result<Self> {
        self.model = load_module(self.model, &dir.join("model"))?;
        Ok(self)
    }
}
