//! The wgpu backend path, proven on every change: the engine trains a small
//! VAE on burn's wgpu backend. CI installs lavapipe (a software Vulkan
//! driver) and sets `GENZOO_REQUIRE_WGPU=1`, so a missing or broken adapter
//! fails there; elsewhere, without any Vulkan driver, the test says so and
//! passes.
//!
//! It is a test of this crate, not of the CLI's `--backend wgpu`, for the
//! build's sake: compiling the wgpu backend into every command and family
//! of the CLI (`--features wgpu`) took ~470 s more of a clean build; here it
//! is compiled for one family, and at this crate's opt-level 0, where it
//! takes ~70 s of CPU (~500 s at opt-level 3, for a run no faster). What
//! the CLI adds for wgpu is its dispatch and the adapter probe
//! ([`genzoo_core::backend::with_backend`]); the probe is the one this test
//! runs first.

use std::path::Path;

use burn::backend::wgpu::WgpuDevice;
use burn::backend::{Autodiff, Wgpu};
use burn::tensor::backend::Backend;
use genzoo_core::backend::{WGPU_HINT, probe};
use genzoo_data::{ImageData, ImageDataset, Scaling, synthetic};
use genzoo_models::vae::{VaeConfig, VaeTrainer};
use genzoo_train::logger::read_jsonl;
use genzoo_train::{RunDir, TrainConfig, Trainer};

type B = Autodiff<Wgpu>;

/// 24 steps of a small VAE (hidden 32, latent 4) on 8×8 images, 16 per
/// step, split into `micro_batches`; returns the logged training losses.
fn short_run(dir: &Path, micro_batches: usize) -> Vec<f64> {
    let device = WgpuDevice::default();
    B::seed(&device, 1);
    let (x, y) = synthetic::images(64, 8, 4, 1);
    let (test_x, test_y) = synthetic::images(16, 8, 4, 2);
    let data = ImageData::new(
        ImageDataset::new(x, y, (1, 8, 8), vec![]).unwrap(),
        ImageDataset::new(test_x, test_y, (1, 8, 8), vec![]).unwrap(),
        16,
        Scaling::Unit,
        0,
    )
    .unwrap();
    let vae = VaeTrainer::<B>::new(
        VaeConfig {
            height: 8,
            width: 8,
            hidden: 32,
            latent: 4,
            ..Default::default()
        },
        &device,
    );
    let config = TrainConfig {
        steps: Some(24),
        micro_batches,
        lr: 5e-3,
        log_every: 1,
        samples: 4,
        ..Default::default()
    };
    let outcome = Trainer::new(RunDir::create(dir, false).unwrap(), config)
        .progress(false)
        .fit(vae, &data, &device)
        .unwrap();
    assert_eq!(outcome.step, 24);
    read_jsonl(&dir.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .filter_map(|record| record.get("train_loss")?.as_f64())
        .collect()
}

#[test]
fn trains_on_wgpu() {
    if let Err(e) = probe::<Wgpu>(&WgpuDevice::default(), "wgpu", WGPU_HINT) {
        if std::env::var("GENZOO_REQUIRE_WGPU").as_deref() == Ok("1") {
            panic!("GENZOO_REQUIRE_WGPU=1 but {e}");
        }
        eprintln!("no wgpu adapter on this machine, wgpu path not exercised: {e}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("whole");
    let losses = short_run(&run, 1);
    assert_eq!(losses.len(), 24);
    let (first, last) = (
        losses[..4].iter().sum::<f64>(),
        losses[20..].iter().sum::<f64>(),
    );
    assert!(last < first, "loss should fall on wgpu too: {losses:?}");
    assert!(run.join("samples/final.png").exists());

    // The same run in micro-batches of 4 (gradients summed on the device).
    let split_losses = short_run(&tmp.path().join("split"), 4);
    assert_eq!(split_losses.len(), 24);
    for (a, b) in losses.iter().zip(&split_losses) {
        assert!(
            (a - b).abs() < 1e-3 * a.abs(),
            "{losses:?} vs {split_losses:?}"
        );
    }
}
