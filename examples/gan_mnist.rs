//! A student's story: train the reference DCGAN on MNIST with genzoo as a
//! library, watch its progress grids, and draw a final grid from fixed noise.
//!
//! ```text
//! cargo run --release --example gan_mnist                        # MNIST, 5 epochs
//! cargo run --release --example gan_mnist -- fashion-mnist 1     # dataset, epochs
//! ```
//! Output goes to `runs/gan_mnist/`: `samples/step-*.png` every 200 steps,
//! `samples/progress.png` (those grids side by side) and `samples/final.png`.

use burn::backend::{Autodiff, Flex};
use genzoo::core::family::SampleRequest;
use genzoo::core::image::save_grid;
use genzoo::core::{CpuDevice, Family, Result};
use genzoo::data::{ImageData, Locator, Scaling, load_image_dataset};
use genzoo::models::gan::{GanConfig, GanTrainer};
use genzoo::train::{RunDir, TrainConfig, Trainer};

type B = Autodiff<Flex>;

fn main() -> Result<()> {
    // Allocator settings and subnormals flushed to zero, as the genzoo binary has them.
    genzoo::core::backend::prepare_cpu(None)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dataset = args.first().map_or("mnist", String::as_str);
    let epochs: u64 = args.get(1).and_then(|e| e.parse().ok()).unwrap_or(5);
    let device = CpuDevice::default();

    // GANs work on pixels in [-1, 1] (the generator ends in tanh).
    let (train, test) = load_image_dataset(&dataset.parse()?, &Locator::from_env(None))?;
    let data = ImageData::new(train, test, 64, Scaling::Signed, 0)?;

    // dcgan-28: InfoGAN-style generator and discriminator, BCE loss, Adam(2e-4, β₁ = 0.5) for both.
    let gan = GanTrainer::<B>::new(GanConfig::default(), &device);
    let (g, d) = gan.param_counts();
    println!("generator {g} parameters, discriminator {d}");
    let config = TrainConfig {
        epochs: Some(epochs),
        batch_size: 64,
        lr: 2e-4,
        sample_every: 200,
        log_every: 100,
        ..Default::default()
    };
    let run = RunDir::create("runs/gan_mnist", true)?;
    let outcome = Trainer::new(run.clone(), config)
        .identity("dcgan-28", "example")
        .fit(gan, &data, &device)?;
    let m = &outcome.last_train;
    println!(
        "last steps: D loss {:.3}, G loss {:.3}, D(x) {:.3}, D(G(z)) {:.3}",
        m.get("d_loss").unwrap_or(f64::NAN),
        m.get("g_loss").unwrap_or(f64::NAN),
        m.get("d_real").unwrap_or(f64::NAN),
        m.get("d_fake").unwrap_or(f64::NAN)
    );

    // 100 samples from the trained generator.
    let samples = outcome.family.sample_images(&SampleRequest {
        n: 100,
        seed: 7,
        class: None,
        ..Default::default()
    })?;
    save_grid(samples, 10, &run.root().join("samples/hundred.png"))?;
    println!("see {}/samples/", run.root().display());
    Ok(())
}
