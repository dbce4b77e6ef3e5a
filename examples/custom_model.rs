//! Research code's view: a model defined here, outside genzoo's crates,
//! trained by genzoo's engine with checkpoints, metrics and sample grids.
//!
//! The model is a small deterministic autoencoder. To plug into the engine
//! it implements one trait, [`Family`]: a training step that computes
//! gradients and hands them to the step context, evaluation, sampling, and
//! checkpoint I/O. Nothing in genzoo changes.
//!
//! ```text
//! cargo run --release --example custom_model
//! ```
//! It trains on a small synthetic MNIST-format dataset it writes itself,
//! so it needs no download.

use std::path::Path;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::nn::{Linear, LinearConfig};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, AdamConfig, GradientsParams};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::backend::AutodiffBackend;
use genzoo::core::family::SampleRequest;
use genzoo::core::record::{load_module, load_optimizer, save_module, save_optimizer};
use genzoo::core::{CpuDevice, Family, ImageBatch, Metrics, Result, StepContext};
use genzoo::data::{ImageData, Locator, Scaling, load_image_dataset, synthetic};
use genzoo::train::{RunDir, TrainConfig, Trainer};

/// A 784 → 64 → 8 → 64 → 784 autoencoder.
#[derive(Module, Debug)]
struct Autoencoder<B: Backend> {
    enc1: Linear<B>,
    enc2: Linear<B>,
    dec1: Linear<B>,
    dec2: Linear<B>,
}

const PIXELS: usize = 28 * 28;
const CODE: usize = 8;

impl<B: Backend> Autoencoder<B> {
    fn new(device: &B::Device) -> Self {
        Self {
            enc1: LinearConfig::new(PIXELS, 64).init(device),
            enc2: LinearConfig::new(64, CODE).init(device),
            dec1: LinearConfig::new(CODE, 64).init(device),
            dec2: LinearConfig::new(64, PIXELS).init(device),
        }
    }
    /// `[n, PIXELS]` → `[n, CODE]`
    fn encode(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.enc2.forward(relu(self.enc1.forward(x)))
    }
    /// `[n, CODE]` → `[n, PIXELS]` in [0, 1]
    fn decode(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        sigmoid(self.dec2.forward(relu(self.dec1.forward(z))))
    }
}

/// The family: the network, its optimizer, and the device.
struct AutoencoderFamily<B: AutodiffBackend> {
    net: Autoencoder<B>,
    optimizer: OptimizerAdaptor<Adam, Autoencoder<B>, B>,
    device: B::Device,
}

impl<B: AutodiffBackend> Family<B> for AutoencoderFamily<B> {
    type Batch = ImageBatch<B>;

    fn num_params(&self) -> usize {
        self.net.num_params()
    }

    fn train_step(
        mut self,
        batch: ImageBatch<B>,
        ctx: &mut StepContext,
    ) -> Result<(Self, Metrics)> {
        let x = batch.images.flatten::<2>(1, 3);
        let loss = (self.net.decode(self.net.encode(x.clone())) - x)
            .powi_scalar(2)
            .mean();
        let grads = GradientsParams::from_grads(loss.backward(), &self.net);
        // The engine applies the update: scheduled learning rate, clipping,
        // summing micro-batches' gradients and the data-parallel all-reduce
        // all happen in there.
        self.net = ctx.apply(&mut self.optimizer, self.net, grads)?;
        Ok((self, Metrics::new().with("mse", loss.into_scalar().elem())))
    }

    /// One update per step and no other state (an EMA would move only when
    /// `ctx.updates_weights()`), so `micro_batches` may split the steps.
    fn supports_micro_batches(&self) -> bool {
        true
    }

    fn eval_batch(&self, batch: ImageBatch<B>) -> Result<Metrics> {
        let net = self.net.valid();
        let x = batch.images.inner().flatten::<2>(1, 3);
        let mse = (net.decode(net.encode(x.clone())) - x)
            .powi_scalar(2)
            .mean();
        Ok(Metrics::new().with("mse", mse.into_scalar().elem()))
    }

    /// An autoencoder has no prior: decode random codes, which shows what the decoder has learnt.
    fn sample_images(&self, request: &SampleRequest) -> Result<Tensor<B::InnerBackend, 4>> {
        B::InnerBackend::seed(&self.device, request.seed);
        let z = Tensor::random(
            [request.n, CODE],
            Distribution::Normal(0.0, 1.0),
            &self.device,
        );
        Ok(self.net.valid().decode(z).reshape([request.n, 1, 28, 28]))
    }

    fn save(&self, dir: &Path) -> Result<()> {
        save_module(&self.net, &dir.join("autoencoder"))?;
        save_optimizer(&self.optimizer, &self.net, &dir.join("adam"))
    }

    fn load(mut self, dir: &Path) -> Result<Self> {
        self.net = load_module(self.net, &dir.join("autoencoder"))?;
        self.optimizer = load_optimizer(self.optimizer, &self.net, &dir.join("adam"))?;
        Ok(self)
    }
}

fn main() -> Result<()> {
    // Allocator settings and subnormals flushed to zero, as the genzoo binary has them.
    genzoo::core::backend::prepare_cpu(None)?;
    type B = Autodiff<Flex>;
    let device = CpuDevice::default();
    B::seed(&device, 0);

    // Data: a synthetic MNIST-format directory, loaded like any other (`idx:<DIR>`).
    let dir = std::env::temp_dir().join("genzoo-custom-model-data");
    synthetic::write_idx_dataset(&dir, 2048, 256, 28, 10)?;
    let (train, test) = load_image_dataset(
        &format!("idx:{}", dir.display()).parse()?,
        &Locator::from_env(None),
    )?;
    let data = ImageData::new(train, test, 64, Scaling::Unit, 0)?;

    let family = AutoencoderFamily::<B> {
        net: Autoencoder::new(&device),
        optimizer: AdamConfig::new().init(),
        device,
    };
    let config = TrainConfig {
        epochs: Some(3),
        lr: 2e-3,
        checkpoint_every: 32,
        sample_every: 32,
        samples: 16,
        ..Default::default()
    };
    let run = RunDir::create("runs/custom_model", true)?;

    // Train half the budget, then resume from the checkpoint, as after an interruption.
    let first = Trainer::new(run.clone(), config.clone())
        .identity("autoencoder", "784-64-8")
        .stop_after(Some(48))
        .fit(family, &data, &device)?;
    println!(
        "interrupted at step {} of {}",
        first.step, first.total_steps
    );
    let fresh = AutoencoderFamily::<B> {
        net: Autoencoder::new(&device),
        optimizer: AdamConfig::new().init(),
        device,
    };
    let done = Trainer::new(run.clone(), config)
        .identity("autoencoder", "784-64-8")
        .resume(true)
        .fit(fresh, &data, &device)?;
    println!(
        "finished at step {}; test mse {:.5}; see {}/metrics.jsonl, samples/ and checkpoints/",
        done.step,
        done.last_eval
            .and_then(|m| m.get("mse"))
            .unwrap_or(f64::NAN),
        run.root().display()
    );
    Ok(())
}
