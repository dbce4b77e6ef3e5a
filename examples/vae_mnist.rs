//! A student's story: train the reference MNIST VAE with genzoo as a
//! library, then write samples, reconstructions, walks through its latent
//! space and an importance-weighted likelihood estimate.
//!
//! ```text
//! cargo run --release --example vae_mnist                         # MNIST (downloaded once into the cache)
//! cargo run --release --example vae_mnist -- fashion-mnist 10     # dataset, epochs
//! ```
//! Output goes to `runs/vae_mnist/`.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use genzoo::core::family::SampleRequest;
use genzoo::core::image::save_grid;
use genzoo::core::latent;
use genzoo::core::{CpuDevice, Family, Result, TrainData};
use genzoo::data::{ImageData, Locator, Scaling, load_image_dataset};
use genzoo::models::vae::{VaeConfig, VaeTrainer};
use genzoo::train::{RunDir, TrainConfig, Trainer};

type B = Autodiff<Flex>;

fn main() -> Result<()> {
    // Allocator settings and subnormals flushed to zero, as the genzoo binary has them.
    genzoo::core::backend::prepare_cpu(None)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dataset = args.first().map_or("mnist", String::as_str);
    let epochs: u64 = args.get(1).and_then(|e| e.parse().ok()).unwrap_or(5);
    let device = CpuDevice::default();

    // 1. Data: found locally or downloaded with checksums; pixels in [0, 1].
    let (train, test) = load_image_dataset(&dataset.parse()?, &Locator::from_env(None))?;
    let data = ImageData::new(train, test, 128, Scaling::Unit, 0)?;

    // 2. The reference VAE (784-400-20, Bernoulli decoder, Adam 1e-3) and the engine.
    let vae = VaeTrainer::<B>::new(VaeConfig::default(), &device);
    let config = TrainConfig {
        epochs: Some(epochs),
        batch_size: 128,
        lr: 1e-3,
        ..Default::default()
    };
    let run = RunDir::create("runs/vae_mnist", true)?;
    let outcome = Trainer::new(run.clone(), config)
        .identity("vae-mlp", "example")
        .fit(vae, &data, &device)?;
    let vae = outcome.family;
    if let Some(eval) = &outcome.last_eval {
        // Nats per image: a Bernoulli decoder's bound is over intensities, so it
        // has no bits/dim to set beside the other families' (vae-mlp-dl has).
        println!(
            "test -ELBO: {:.2} nats",
            eval.get("neg_elbo").unwrap_or(f64::NAN)
        );
    }

    // 3. Samples from the prior.
    let samples = vae.sample_images(&SampleRequest {
        n: 64,
        seed: 1,
        class: None,
        ..Default::default()
    })?;
    save_grid(samples, 8, &run.root().join("samples.png"))?;

    // 4. Reconstructions: 16 test images (top two rows) above their reconstructions.
    let (batch, _) = TrainData::<B>::eval_batch(&data, 0, &device);
    let originals = batch.images.clone().inner().narrow(0, 0, 16);
    let reconstructions = vae.reconstruct(&batch).narrow(0, 0, 16);
    save_grid(
        Tensor::cat(vec![originals, reconstructions], 0),
        8,
        &run.root().join("reconstructions.png"),
    )?;

    // 5. The latent space: 8 interpolations between random codes, and the
    //    first test image's code with each of its 5 most active dimensions
    //    swept from -3 to 3 (the dimensions whose posterior mean varies most).
    let walks = latent::interpolate(&vae, 8, 10, None, 1, &Default::default(), &device)?;
    save_grid(walks, 10, &run.root().join("interpolations.png"))?;
    let images = batch.images.clone().inner();
    let labels = batch.labels.clone().inner();
    let means: Vec<f32> = vae
        .encode_images(images.clone(), labels.clone())?
        .into_data()
        .to_vec()
        .expect("f32 codes");
    let dims = latent::by_activity(&latent::activity(&means, vae.model.latent()));
    let traversals = latent::traverse(
        &vae,
        images.narrow(0, 0, 1),
        labels.narrow(0, 0, 1),
        &dims[..5],
        &latent::linspace(-3.0, 3.0, 10),
        &Default::default(),
    )?;
    save_grid(traversals, 10, &run.root().join("traversals.png"))?;

    // 6. A tighter likelihood estimate: the IWAE bound with k = 64 on the first test batch.
    let nll = vae.iwae_nll(&batch, 64);
    println!("IWAE (k=64) NLL on 128 test images: {nll:.2} nats");
    println!(
        "wrote {}/samples.png, reconstructions.png, interpolations.png and traversals.png",
        run.root().display()
    );
    Ok(())
}
