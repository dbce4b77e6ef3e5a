//! The transformer on images: `gpt-pixel` reads each image as 784 pixels
//! quantised to 16 grey levels, after a start token, and learns the exact
//! likelihood of the next pixel; samples are drawn pixel by pixel with the
//! key/value cache.
//!
//! ```text
//! cargo run --release --example gpt_mnist -- mnist 300     # dataset, steps
//! ```
//! Output goes to `runs/gpt_mnist/`.

use burn::backend::{Autodiff, Flex};
use genzoo::core::image::save_grid;
use genzoo::core::{CpuDevice, Family, Result, SampleRequest};
use genzoo::data::{ImageData, Locator, Scaling, load_image_dataset};
use genzoo::models::gpt::{GptConfig, GptInput, GptPixel};
use genzoo::train::{RunDir, Schedule, TrainConfig, Trainer};

type B = Autodiff<Flex>;

fn main() -> Result<()> {
    // Allocator settings and subnormals flushed to zero, as the genzoo binary has them.
    genzoo::core::backend::prepare_cpu(None)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dataset = args.first().map_or("mnist", String::as_str);
    let steps: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(300);
    let device = CpuDevice::default();

    let (train, test) = load_image_dataset(&dataset.parse()?, &Locator::from_env(None))?;
    let (c, h, w) = train.dims();
    let data = ImageData::new(train, test.take(1200), 12, Scaling::Unit, 0)?;

    // The gpt-char transformer over 16 levels + a start token, context c·h·w + 1.
    let input = GptInput::Pixels {
        levels: 16,
        shape: (c, h, w),
    };
    let config = GptConfig {
        vocab_size: 17,
        block_size: c * h * w + 1,
        input: input.clone(),
        ..GptConfig::default()
    };
    let gpt = GptPixel::<B>::new(config, &input, &device)?;
    let train = TrainConfig {
        steps: Some(steps),
        batch_size: 12,
        lr: 1e-3,
        schedule: Schedule::Cosine {
            warmup_steps: 100,
            min_lr: 1e-4,
        },
        clip_norm: Some(1.0),
        eval_every: steps,
        ..Default::default()
    };
    let run = RunDir::create("runs/gpt_mnist", true)?;
    let outcome = Trainer::new(run.clone(), train)
        .identity("gpt-pixel", "example")
        .fit(gpt, &data, &device)?;
    if let Some(eval) = &outcome.last_eval {
        println!(
            "test NLL: {:.4} bits per (16-level) pixel",
            eval.get("bits_per_dim").unwrap_or(f64::NAN)
        );
    }
    let samples = outcome.family.sample_images(&SampleRequest {
        n: 16,
        seed: 0,
        class: None,
        ..Default::default()
    })?;
    save_grid(samples, 4, &run.root().join("samples.png"))?;
    println!("wrote {}/samples.png", run.root().display());
    Ok(())
}
