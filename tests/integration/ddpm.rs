//! The DDPM family on the shared engine: the loss falls on a tiny run,
//! resume of `ddpm-unet` is exact (EMA included), DDIM with η = 0 is
//! deterministic, guidance and trajectories work, and the likelihood bound
//! is a proper number.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use genzoo::core::record::param_values;
use genzoo::core::{CpuDevice, Family, SampleRequest, SamplerOptions, TrainData};
use genzoo::data::{ImageData, ImageDataset, Scaling, synthetic};
use genzoo::models::ddpm::{DdpmConfig, DdpmTrainer};
use genzoo::train::logger::read_jsonl;
use genzoo::train::{TrainConfig, Trainer};

use crate::support::{
    assert_load_weights_takes_the_weights_alone, quiet_trainer, rng_lock, tiny_ddpm, train_losses,
    while_the_backend_rng_is_busy,
};

type B = Autodiff<Flex>;

fn data(size: usize, batch: usize) -> ImageData {
    let (x, y) = synthetic::images(64, size, 4, 1);
    let (tx, ty) = synthetic::images(16, size, 4, 2);
    ImageData::new(
        ImageDataset::new(x, y, (1, size, size), vec![]).unwrap(),
        ImageDataset::new(tx, ty, (1, size, size), vec![]).unwrap(),
        batch,
        Scaling::Signed,
        3,
    )
    .unwrap()
}

/// A small DDPM on 8×8 images: fast enough for many steps in a test.
fn fresh(config: &DdpmConfig) -> DdpmTrainer<B> {
    <Flex as Backend>::seed(&CpuDevice::default(), 5);
    DdpmTrainer::<B>::new(config.clone(), &CpuDevice::default())
}

fn trainer(dir: &std::path::Path, steps: u64, batch: usize, lr: f64, resume: bool) -> Trainer {
    let config = TrainConfig {
        steps: Some(steps),
        batch_size: batch,
        lr,
        seed: 1,
        log_every: 1,
        checkpoint_every: 2,
        samples: 4,
        sample_every: 0,
        eval_every: 0,
        ..Default::default()
    };
    quiet_trainer(dir, config, resume, "ddpm-test", "test")
}

#[test]
fn loss_falls_and_is_logged_per_quarter_of_t() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    trainer(tmp.path(), 60, 16, 2e-3, false)
        .fit(fresh(&tiny_ddpm(0)), &data(8, 16), &CpuDevice::default())
        .unwrap();
    let records = read_jsonl(&tmp.path().join("metrics.jsonl")).unwrap();
    let losses = train_losses(&records);
    let first = losses[..8].iter().sum::<f64>() / 8.0;
    let last = losses[losses.len() - 8..].iter().sum::<f64>() / 8.0;
    assert!(
        last < 0.6 * first,
        "loss should fall: first {first}, last {last}"
    );
    for key in [
        "train_loss_q1",
        "train_loss_q4",
        "test_loss",
        "test_loss_q2",
    ] {
        assert!(
            records.iter().any(|r| r.contains_key(key)),
            "metrics lack {key}"
        );
    }
    assert!(tmp.path().join("samples/final.png").exists());
}

#[test]
fn ddpm_unet_resume_is_exact_with_ema() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    // The reference network at 28×28, on a small batch.
    let config = DdpmConfig::default();
    let straight = trainer(&tmp.path().join("a"), 4, 4, 2e-4, false)
        .fit(fresh(&config), &data(28, 4), &device)
        .unwrap();
    trainer(&tmp.path().join("b"), 4, 4, 2e-4, false)
        .stop_after(Some(2))
        .fit(fresh(&config), &data(28, 4), &device)
        .unwrap();
    let resumed = trainer(&tmp.path().join("b"), 4, 4, 2e-4, true)
        .fit(fresh(&config), &data(28, 4), &device)
        .unwrap();
    assert_eq!(resumed.steps_this_call, 2);
    let (a, b) = (&straight.family, &resumed.family);
    assert_eq!(param_values(&a.unet), param_values(&b.unet));
    assert_eq!(
        param_values(a.ema_unet()),
        param_values(b.ema_unet()),
        "EMA weights too"
    );
    assert_ne!(
        param_values(a.ema_unet()),
        param_values(&a.unet),
        "the EMA lags the trained weights"
    );
    // Samples come from the EMA unless the trained weights are asked for.
    let request = |raw_weights: bool| SampleRequest {
        n: 1,
        seed: 3,
        sampler: SamplerOptions {
            steps: Some(2),
            raw_weights,
            ..Default::default()
        },
        ..Default::default()
    };
    let ema: Vec<f32> = a
        .sample_images(&request(false))
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let raw: Vec<f32> = a
        .sample_images(&request(true))
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    assert_ne!(ema, raw);
}

#[test]
fn load_weights_takes_the_unet_and_its_ema_but_no_optimizer() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let config = tiny_ddpm(0);
    let data = data(8, 8);
    let trained = trainer(tmp.path(), 2, 8, 1e-3, false)
        .fit(fresh(&config), &data, &CpuDevice::default())
        .unwrap()
        .family;
    assert_load_weights_takes_the_weights_alone(
        &tmp.path().join("checkpoints/step-00000002"),
        &trained,
        || fresh(&config),
        |d| [param_values(&d.unet), param_values(d.ema_unet())].concat(),
        data.train_batch(0, 0, &CpuDevice::default()),
    );
}

#[test]
fn ddim_with_eta_zero_is_deterministic_and_seeds_matter() {
    let _guard = rng_lock();
    let ddpm = fresh(&tiny_ddpm(0));
    let request = |seed: u64, eta: f64| SampleRequest {
        n: 3,
        seed,
        sampler: SamplerOptions {
            method: Some("ddim".into()),
            steps: Some(10),
            eta: Some(eta),
            ..Default::default()
        },
        ..Default::default()
    };
    let values = |r: &SampleRequest| -> Vec<f32> {
        ddpm.sample_images(r).unwrap().into_data().to_vec().unwrap()
    };
    let a = values(&request(4, 0.0));
    // Random draws elsewhere meanwhile must not change the samples.
    assert_eq!(
        a,
        while_the_backend_rng_is_busy(|| values(&request(4, 0.0)))
    );
    assert_ne!(a, values(&request(5, 0.0)));
    // Stochastic DDIM is reproducible by seed too, and differs from η = 0.
    let noisy = values(&request(4, 1.0));
    assert_eq!(noisy, values(&request(4, 1.0)));
    assert_ne!(noisy, a);
    assert!(a.iter().all(|v| (0.0..=1.0).contains(v)));
    // DDPM runs all T steps.
    let ddpm_request = SampleRequest {
        n: 2,
        seed: 1,
        sampler: SamplerOptions {
            method: Some("ddpm".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    assert_eq!(
        ddpm.sample_images(&ddpm_request).unwrap().dims(),
        [2, 1, 8, 8]
    );
}

#[test]
fn guidance_trajectories_and_bad_sampler_options() {
    let _guard = rng_lock();
    let conditional = fresh(&tiny_ddpm(4));
    let guided = SampleRequest {
        n: 4,
        seed: 0,
        class: Some(2),
        sampler: SamplerOptions {
            guidance: Some(3.0),
            steps: Some(5),
            ..Default::default()
        },
        ..Default::default()
    };
    let a: Vec<f32> = conditional
        .sample_images(&guided)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let unguided = SampleRequest {
        sampler: SamplerOptions {
            guidance: Some(0.0),
            ..guided.sampler.clone()
        },
        ..guided.clone()
    };
    let b: Vec<f32> = conditional
        .sample_images(&unguided)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    assert_eq!(a.len(), 4 * 64);
    assert_ne!(a, b, "guidance changes the samples");

    let trajectory = conditional.sample_trajectory(&guided, 6).unwrap();
    assert_eq!(trajectory.dims(), [6, 1, 8, 8]);
    // A trajectory follows one sample: its last frame is that sample.
    let one = SampleRequest {
        n: 1,
        ..guided.clone()
    };
    let single: Vec<f32> = conditional
        .sample_images(&one)
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let last: Vec<f32> = trajectory.narrow(0, 5, 1).into_data().to_vec().unwrap();
    assert_eq!(single, last);

    let unconditional = fresh(&tiny_ddpm(0));
    let err = unconditional
        .sample_images(&guided)
        .unwrap_err()
        .to_string();
    assert!(err.contains("class-conditional"), "{err}");
    let bad = SampleRequest {
        n: 1,
        sampler: SamplerOptions {
            method: Some("euler".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(
        unconditional
            .sample_images(&bad)
            .unwrap_err()
            .to_string()
            .contains("use ddim, dpm-solver or ddpm")
    );
    let too_many = SampleRequest {
        n: 1,
        sampler: SamplerOptions {
            steps: Some(101),
            ..Default::default()
        },
        ..Default::default()
    };
    assert!(
        unconditional
            .sample_images(&too_many)
            .unwrap_err()
            .to_string()
            .contains("1..=100")
    );
}

#[test]
fn the_bound_is_positive_and_the_estimate_tracks_the_exact_sum() {
    let _guard = rng_lock();
    let ddpm = fresh(&tiny_ddpm(0));
    let (pixels, _) = synthetic::images(4, 8, 4, 9);
    let images: Vec<f32> = pixels.iter().map(|p| *p as f32 / 255.0).collect();
    let x =
        Tensor::<Flex, 4>::from_data(TensorData::new(images, [4, 1, 8, 8]), &CpuDevice::default());
    let exact = ddpm.bits_per_dim(x.clone(), None, 0).unwrap();
    let all_steps = ddpm.bits_per_dim(x.clone(), Some(100), 0).unwrap();
    assert_eq!(exact, all_steps, "k = T is the exact bound");
    let estimate = ddpm.bits_per_dim(x, Some(40), 0).unwrap();
    for (e, s) in exact.iter().zip(&estimate) {
        // An untrained model: several bits/dim at least (8 bits/dim would be a uniform model).
        assert!(e.is_finite() && *e > 1.0, "{e}");
        assert!((e - s).abs() < 0.15 * e, "estimate {s} vs exact {e}");
    }
}
