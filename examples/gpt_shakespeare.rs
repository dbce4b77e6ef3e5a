//! nanoGPT's CPU recipe on Tiny Shakespeare with genzoo as a library: the
//! `gpt-char` transformer, AdamW with cosine decay and clipping, then a
//! sample continuing "ROMEO:".
//!
//! ```text
//! cargo run --release --example gpt_shakespeare -- path/to/tinyshakespeare.txt 2000
//! ```
//! Output goes to `runs/gpt_shakespeare/`.

use burn::backend::{Autodiff, Flex};
use genzoo::core::{CpuDevice, Family, Result, TextRequest, TokenSampling};
use genzoo::data::{TextCorpus, TextData};
use genzoo::models::gpt::{GptConfig, GptInput, GptText};
use genzoo::train::{RunDir, Schedule, TrainConfig, Trainer};

type B = Autodiff<Flex>;

fn main() -> Result<()> {
    // Allocator settings and subnormals flushed to zero, as the genzoo binary has them.
    genzoo::core::backend::prepare_cpu(None)?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().map_or("tinyshakespeare.txt", String::as_str);
    let steps: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let device = CpuDevice::default();

    // Characters as tokens; 90% to train on, 10% to validate.
    let corpus = TextCorpus::from_file(path.as_ref(), false)?;
    let input = GptInput::Text {
        vocabulary: corpus.vocabulary.chars_string(),
    };
    let config = GptConfig {
        vocab_size: corpus.vocabulary.len(),
        input: input.clone(),
        ..GptConfig::default()
    };
    let data = TextData::new(corpus, config.block_size, 12, 0, 200)?;

    // 4 layers, 4 heads, 128 wide, block 64; AdamW 1e-3 → 1e-4 (cosine, 100 warm-up steps), clip 1.0.
    let gpt = GptText::<B>::new(config, &input, &device)?;
    let train = TrainConfig {
        steps: Some(steps),
        batch_size: 12,
        lr: 1e-3,
        schedule: Schedule::Cosine {
            warmup_steps: 100,
            min_lr: 1e-4,
        },
        clip_norm: Some(1.0),
        eval_every: 250,
        eval_batches: Some(200),
        // As nanoGPT's Shakespeare config, keep the weights of the best
        // validation loss (runs/gpt_shakespeare/checkpoints/best).
        keep_best: Some("val_loss".into()),
        ..Default::default()
    };
    let run = RunDir::create("runs/gpt_shakespeare", true)?;
    let outcome = Trainer::new(run, train)
        .identity("gpt-char", "example")
        .fit(gpt, &data, &device)?;
    if let Some(eval) = &outcome.last_eval {
        println!(
            "validation loss {:.4} nats/char",
            eval.get("loss").unwrap_or(f64::NAN)
        );
    }
    let request = TextRequest {
        prompt: "ROMEO:".into(),
        tokens: 300,
        sampling: TokenSampling {
            temperature: 0.8,
            top_k: Some(40),
            ..TokenSampling::default()
        },
        seed: 0,
    };
    println!("ROMEO:{}", outcome.family.generate_text(&request)?);
    Ok(())
}
