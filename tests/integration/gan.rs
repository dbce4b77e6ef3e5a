//! The GAN family on the shared engine: D learns to tell real from fake,
//! resume is exact for dcgan-28, and the progress strip is written.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;

use genzoo::core::record::param_values;
use genzoo::core::{CpuDevice, TrainData};
use genzoo::data::{ImageData, ImageDataset, Scaling, synthetic};
use genzoo::models::gan::{GanConfig, GanTrainer};
use genzoo::train::logger::read_jsonl;
use genzoo::train::{TrainConfig, Trainer};

use crate::support::{
    assert_load_weights_takes_the_weights_alone, assert_samples_depend_on_the_seed_alone,
    quiet_trainer, rng_lock,
};

type B = Autodiff<Flex>;

fn data(size: usize) -> ImageData {
    let (x, y) = synthetic::images(64, size, 4, 1);
    let (tx, ty) = synthetic::images(32, size, 4, 2);
    ImageData::new(
        ImageDataset::new(x, y, (1, size, size), vec![]).unwrap(),
        ImageDataset::new(tx, ty, (1, size, size), vec![]).unwrap(),
        16,
        Scaling::Signed,
        3,
    )
    .unwrap()
}

fn fresh(config: &GanConfig) -> GanTrainer<B> {
    <Flex as Backend>::seed(&CpuDevice::default(), 5);
    GanTrainer::<B>::new(config.clone(), &CpuDevice::default())
}

fn trainer(dir: &std::path::Path, steps: u64, resume: bool) -> Trainer {
    let config = TrainConfig {
        steps: Some(steps),
        batch_size: 16,
        lr: 2e-4,
        seed: 1,
        log_every: 1,
        checkpoint_every: 3,
        samples: 4,
        sample_every: 2,
        ..Default::default()
    };
    quiet_trainer(dir, config, resume, "dcgan-28", "test")
}

#[test]
fn discriminator_accuracy_departs_from_chance() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let config = GanConfig {
        height: 12,
        width: 12,
        ..Default::default()
    };
    trainer(tmp.path(), 12, false)
        .fit(fresh(&config), &data(12), &CpuDevice::default())
        .unwrap();
    let records = read_jsonl(&tmp.path().join("metrics.jsonl")).unwrap();
    let acc: Vec<f64> = records
        .iter()
        .filter_map(|r| r.get("train_d_accuracy")?.as_f64())
        .collect();
    let late = acc[acc.len() - 4..].iter().sum::<f64>() / 4.0;
    assert!(
        late > 0.75,
        "D should tell real from fake well above chance (0.5): {acc:?}"
    );
    for key in [
        "train_d_loss",
        "train_g_loss",
        "train_d_real",
        "train_d_fake",
        "train_g_grad_norm",
        "train_d_grad_norm",
    ] {
        assert!(
            records.iter().any(|r| r.contains_key(key)),
            "metrics lack {key}"
        );
    }
    assert!(tmp.path().join("samples/progress.png").exists());
}

#[test]
fn dcgan_28_resume_is_exact() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let config = GanConfig {
        ema_decay: Some(0.9),
        ..GanConfig::default()
    };
    let straight = trainer(&tmp.path().join("a"), 6, false)
        .fit(fresh(&config), &data(28), &device)
        .unwrap();
    trainer(&tmp.path().join("b"), 6, false)
        .stop_after(Some(3))
        .fit(fresh(&config), &data(28), &device)
        .unwrap();
    let resumed = trainer(&tmp.path().join("b"), 6, true)
        .fit(fresh(&config), &data(28), &device)
        .unwrap();
    assert_eq!(resumed.steps_this_call, 3);
    let (a, b) = (&straight.family, &resumed.family);
    assert_eq!(param_values(&a.generator), param_values(&b.generator));
    assert_eq!(
        param_values(&a.discriminator),
        param_values(&b.discriminator)
    );
    assert_eq!(
        param_values(&a.sampling_generator()),
        param_values(&b.sampling_generator()),
        "EMA weights too"
    );
}

#[test]
fn load_weights_takes_generator_discriminator_and_ema_but_no_optimizer() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let config = GanConfig {
        height: 12,
        width: 12,
        ema_decay: Some(0.9),
        ..Default::default()
    };
    let data = data(12);
    let trained = trainer(tmp.path(), 3, false)
        .fit(fresh(&config), &data, &CpuDevice::default())
        .unwrap()
        .family;
    let weights = |g: &GanTrainer<B>| {
        [
            param_values(&g.generator),
            param_values(&g.discriminator),
            param_values(&g.sampling_generator()),
        ]
        .concat()
    };
    assert_load_weights_takes_the_weights_alone(
        &tmp.path().join("checkpoints/step-00000003"),
        &trained,
        || fresh(&config),
        weights,
        data.train_batch(0, 0, &CpuDevice::default()),
    );
}

#[test]
fn samples_depend_on_the_seed_alone() {
    // Held throughout: the busy thread below must not disturb other tests' draws.
    let _guard = rng_lock();
    let gan = fresh(&GanConfig {
        height: 12,
        width: 12,
        ..Default::default()
    });
    assert_samples_depend_on_the_seed_alone(&gan);
}
