//! A diffusion story: train the reference DDPM (`ddpm-unet`) on MNIST,
//! sample from its EMA weights with DDIM-50 and with ancestral DDPM-1000,
//! and bound its likelihood in bits/dim on test images.
//!
//! ```text
//! cargo run --release --example ddpm_mnist                         # MNIST, 5 epochs
//! cargo run --release --example ddpm_mnist -- fashion-mnist 1      # dataset, epochs
//! ```
//! Output goes to `runs/ddpm_mnist/`: grids every 500 steps (DDIM-50), and at
//! the end `samples/ddim50.png`, `samples/ddpm1000.png` and the bound.

use std::time::Instant;

use burn::backend::{Autodiff, Flex};
use genzoo::core::image::save_grid;
use genzoo::core::{CpuDevice, Family, Result, SampleRequest, SamplerOptions};
use genzoo::data::{ImageData, Locator, Scaling, load_image_dataset};
use genzoo::models::ddpm::{DdpmConfig, DdpmTrainer};
use genzoo::train::{RunDir, TrainConfig, Trainer};

type B = Autodiff<Flex>;

fn main() -> Result<()> {
    // Allocator settings and subnormals flushed to zero, as the genzoo binary has them.
    genzoo::core::backend::prepare_cpu(None)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dataset = args.first().map_or("mnist", String::as_str);
    let epochs: u64 = args.get(1).and_then(|e| e.parse().ok()).unwrap_or(5);
    let device = CpuDevice::default();

    // Diffusion works on pixels in [-1, 1]; x_T is N(0, I).
    let (train, test) = load_image_dataset(&dataset.parse()?, &Locator::from_env(None))?;
    let data = ImageData::new(train, test.clone(), 128, Scaling::Signed, 0)?;

    // ddpm-unet: T = 1000 linear schedule, ε-prediction, Adam 2e-4, EMA 0.999.
    let ddpm = DdpmTrainer::<B>::new(DdpmConfig::default(), &device);
    println!("{} parameters", ddpm.num_params());
    let config = TrainConfig {
        epochs: Some(epochs),
        batch_size: 128,
        lr: 2e-4,
        sample_every: 500,
        log_every: 50,
        ..Default::default()
    };
    let run = RunDir::create("runs/ddpm_mnist", true)?;
    let outcome = Trainer::new(run.clone(), config)
        .identity("ddpm-unet", "example")
        .fit(ddpm, &data, &device)?;
    let ddpm = outcome.family;

    // The same weights, two samplers: no retraining.
    for (name, method, n) in [("ddim50", "ddim", 64), ("ddpm1000", "ddpm", 16)] {
        let started = Instant::now();
        let request = SampleRequest {
            n,
            seed: 0,
            sampler: SamplerOptions {
                method: Some(method.into()),
                progress: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let samples = ddpm.sample_images(&request)?;
        save_grid(samples, 8, &run.root().join(format!("samples/{name}.png")))?;
        println!(
            "{name}: {n} samples in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    // The variational bound on 64 test images, every one of the 1000 terms.
    let indices: Vec<usize> = (0..64.min(test.len())).collect();
    let images = test.batch::<Flex>(&indices, Scaling::Unit, &device).images;
    let bits = ddpm.bits_per_dim(images, None, 0)?;
    println!(
        "variational bound: {:.3} bits/dim (mean of {} test images)",
        bits.iter().sum::<f64>() / bits.len() as f64,
        bits.len()
    );
    Ok(())
}
