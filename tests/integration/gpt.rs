//! The transformer family on the shared engine: loss goes down on a tiny
//! corpus, resume is exact, and gpt-pixel trains on images and samples them.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use genzoo::core::record::param_values;
use genzoo::core::{CpuDevice, Family, SampleRequest, TextRequest, TokenSampling, TrainData};
use genzoo::data::{ImageData, ImageDataset, Scaling, TextCorpus, TextData, synthetic};
use genzoo::models::gpt::{GptConfig, GptInput, GptPixel, GptText};
use genzoo::train::logger::read_jsonl;
use genzoo::train::{RunDir, Schedule, TrainConfig, Trainer};

use crate::support::{
    assert_load_weights_takes_the_weights_alone, max_diff, quiet_trainer, rng_lock,
    tensorboard_view, train_losses,
};

type B = Autodiff<Flex>;

fn corpus() -> TextCorpus {
    let verse =
        "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n";
    TextCorpus::from_text(&verse.repeat(40), false).unwrap()
}

fn small(vocab: &TextCorpus) -> (GptConfig, GptInput) {
    let input = GptInput::Text {
        vocabulary: vocab.vocabulary.chars_string(),
    };
    let config = GptConfig {
        vocab_size: vocab.vocabulary.len(),
        block_size: 16,
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        input: input.clone(),
        ..Default::default()
    };
    (config, input)
}

fn fresh(corpus: &TextCorpus, dropout: f64) -> GptText<B> {
    <Flex as Backend>::seed(&CpuDevice::default(), 3);
    let (mut config, input) = small(corpus);
    config.dropout = dropout;
    GptText::<B>::new(config, &input, &CpuDevice::default()).unwrap()
}

fn train_config(steps: u64) -> TrainConfig {
    TrainConfig {
        steps: Some(steps),
        batch_size: 8,
        lr: 3e-3,
        schedule: Schedule::Cosine {
            warmup_steps: 5,
            min_lr: 3e-4,
        },
        clip_norm: Some(1.0),
        log_every: 1,
        eval_every: 20,
        checkpoint_every: 10,
        ..Default::default()
    }
}

fn trainer(dir: &std::path::Path, steps: u64, resume: bool) -> Trainer {
    quiet_trainer(dir, train_config(steps), resume, "gpt-test", "tiny")
}

#[test]
fn loss_goes_down_and_text_comes_out() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus();
    let data = TextData::new(corpus.clone(), 16, 8, 1, 4).unwrap();
    let out = trainer(tmp.path(), 80, false)
        .fit(fresh(&corpus, 0.0), &data, &CpuDevice::default())
        .unwrap();
    let records = read_jsonl(&tmp.path().join("metrics.jsonl")).unwrap();
    let losses = train_losses(&records);
    let (first, last) = (
        losses[..5].iter().sum::<f64>() / 5.0,
        losses[losses.len() - 5..].iter().sum::<f64>() / 5.0,
    );
    assert!(last < 0.6 * first, "loss should fall: {first} → {last}");
    assert!(
        records
            .iter()
            .any(|r| r.contains_key("val_loss") && r.contains_key("val_bits_per_char"))
    );
    assert!(
        records.iter().any(|r| r.contains_key("train_grad_norm")),
        "clipping reports the norm"
    );
    let text = out
        .family
        .generate_text(&TextRequest {
            prompt: "To be".into(),
            tokens: 30,
            sampling: TokenSampling {
                temperature: 0.5,
                ..TokenSampling::default()
            },
            seed: 1,
        })
        .unwrap();
    assert_eq!(text.chars().count(), 30);
    // The run's text sample, also for TensorBoard's text plugin, as a
    // Markdown code block (each line indented by four spaces).
    let written = std::fs::read_to_string(tmp.path().join("samples/final.txt")).unwrap();
    let texts: Vec<(u64, String)> = tensorboard_view(tmp.path())
        .into_iter()
        .flat_map(|e| e.texts.into_iter().map(move |(_, text)| (e.step, text)))
        .collect();
    let block: String = written.lines().map(|l| format!("    {l}\n")).collect();
    assert_eq!(texts, [(80, block)]);
}

#[test]
fn gpt_resume_is_exact_with_dropout() {
    // Dropout masks come from each step's noise stream, so resuming drops
    // what the uninterrupted run drops.
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus();
    let data = TextData::new(corpus.clone(), 16, 8, 2, 2).unwrap();
    let device = CpuDevice::default();
    let straight = trainer(&tmp.path().join("a"), 20, false)
        .fit(fresh(&corpus, 0.1), &data, &device)
        .unwrap();
    trainer(&tmp.path().join("b"), 20, false)
        .stop_after(Some(10))
        .fit(fresh(&corpus, 0.1), &data, &device)
        .unwrap();
    let resumed = trainer(&tmp.path().join("b"), 20, true)
        .fit(fresh(&corpus, 0.1), &data, &device)
        .unwrap();
    assert_eq!(resumed.steps_this_call, 10);
    assert_eq!(
        param_values(straight.family.model()),
        param_values(resumed.family.model())
    );
}

#[test]
fn load_weights_takes_the_transformer_but_no_optimizer() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus();
    let data = TextData::new(corpus.clone(), 16, 8, 2, 2).unwrap();
    let trained = trainer(tmp.path(), 10, false)
        .fit(fresh(&corpus, 0.0), &data, &CpuDevice::default())
        .unwrap()
        .family;
    assert_load_weights_takes_the_weights_alone(
        &tmp.path().join("checkpoints/step-00000010"),
        &trained,
        || fresh(&corpus, 0.0),
        |g| param_values(g.model()),
        data.train_batch(0, 0, &CpuDevice::default()),
    );
}

#[test]
fn micro_batches_train_as_the_whole_batch_with_dropout_and_weight_decay() {
    // A batch of 8 split into micro-batches of 2, 3 and 3: each has its own
    // dropout masks (the rows of the whole batch's), and weight decay, like
    // the update, happens once per step.
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus();
    let data = TextData::new(corpus.clone(), 16, 8, 2, 2).unwrap();
    let device = CpuDevice::default();
    let run = |name: &str, micro_batches: usize| {
        let config = TrainConfig {
            micro_batches,
            ..train_config(12)
        };
        let run = RunDir::create(tmp.path().join(name), false).unwrap();
        let out = Trainer::new(run, config)
            .progress(false)
            .fit(fresh(&corpus, 0.1), &data, &device)
            .unwrap();
        let records = read_jsonl(&tmp.path().join(name).join("metrics.jsonl")).unwrap();
        let logged = |key: &str| -> Vec<f64> {
            records
                .iter()
                .filter_map(|r| r.get(key)?.as_f64())
                .collect()
        };
        let losses = (logged("train_loss"), logged("train_grad_norm"));
        (param_values(out.family.model()), losses)
    };
    let (whole, whole_logged) = run("whole", 1);
    let (split, split_logged) = run("split", 3);
    let diff = max_diff(&whole, &split);
    assert!(diff < 1e-5, "weights differ by {diff}");
    // The logged loss is the whole batch's mean, the norm the summed gradient's.
    for (a, b) in [
        (&whole_logged.0, &split_logged.0),
        (&whole_logged.1, &split_logged.1),
    ] {
        assert_eq!(a.len(), 12);
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-4 * x.abs().max(1.0), "{x} vs {y}");
        }
    }
}

#[test]
fn gpt_pixel_trains_on_images_and_samples_them() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let (x, y) = synthetic::images(48, 6, 3, 1);
    let (tx, ty) = synthetic::images(16, 6, 3, 2);
    let data = ImageData::new(
        ImageDataset::new(x, y, (1, 6, 6), vec![]).unwrap(),
        ImageDataset::new(tx, ty, (1, 6, 6), vec![]).unwrap(),
        8,
        Scaling::Unit,
        0,
    )
    .unwrap();
    let input = GptInput::Pixels {
        levels: 16,
        shape: (1, 6, 6),
    };
    let config = GptConfig {
        vocab_size: 17,
        block_size: 37,
        n_layer: 2,
        n_head: 2,
        n_embd: 32,
        input: input.clone(),
        ..Default::default()
    };
    let fresh = || {
        <Flex as Backend>::seed(&device, 4);
        GptPixel::<B>::new(config.clone(), &input, &device).unwrap()
    };
    let gpt = fresh();
    let config = TrainConfig {
        steps: Some(40),
        batch_size: 8,
        lr: 3e-3,
        log_every: 1,
        samples: 4,
        ..Default::default()
    };
    let out = Trainer::new(RunDir::create(tmp.path(), false).unwrap(), config)
        .progress(false)
        .fit(gpt, &data, &device)
        .unwrap();
    let records = read_jsonl(&tmp.path().join("metrics.jsonl")).unwrap();
    let losses = train_losses(&records);
    assert!(losses[losses.len() - 1] < 0.7 * losses[0], "{losses:?}");
    assert!(records.iter().any(|r| r.contains_key("test_bits_per_dim")));
    let samples = out
        .family
        .sample_images(&SampleRequest {
            n: 3,
            seed: 1,
            class: None,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(samples.dims(), [3, 1, 6, 6]);
    let (lo, hi): (f32, f32) = (
        samples.clone().min().into_scalar(),
        samples.max().into_scalar(),
    );
    assert!(lo > 0.0 && hi < 1.0);
    assert!(tmp.path().join("samples/final.png").exists());

    // The exact likelihood of 8-bit images: the held-out cross-entropy in bits
    // plus 4 bits/pixel for the byte within its 16-value level, as logged.
    let test = ImageDataset::new(
        synthetic::images(16, 6, 3, 2).0,
        synthetic::images(16, 6, 3, 2).1,
        (1, 6, 6),
        vec![],
    )
    .unwrap();
    let images = test
        .batch::<Flex>(&(0..16).collect::<Vec<_>>(), Scaling::Unit, &device)
        .images;
    let bits = out.family.bits_per_dim(images, None, 0).unwrap();
    let mean = bits.iter().sum::<f64>() / bits.len() as f64;
    let test_bits = records
        .iter()
        .rev()
        .find_map(|r| r.get("test_bits_per_dim")?.as_f64())
        .unwrap();
    let test_loss = records
        .iter()
        .rev()
        .find_map(|r| r.get("test_loss")?.as_f64())
        .unwrap();
    assert!(
        (test_bits - (test_loss / std::f64::consts::LN_2 + 4.0)).abs() < 1e-9,
        "{test_bits} vs {test_loss} nats"
    );
    assert!((mean - test_bits).abs() < 1e-3, "{mean} vs {test_bits}");

    // Its weights start another run (init_from) without its optimizer.
    assert_load_weights_takes_the_weights_alone(
        &tmp.path().join("checkpoints/step-00000040"),
        &out.family,
        fresh,
        |g| param_values(g.model()),
        data.train_batch(0, 0, &device),
    );
}
