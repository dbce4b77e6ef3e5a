//! The wgpu backend path, proven on every change: CI installs lavapipe (a
//! software Vulkan driver) and sets `GENZOO_REQUIRE_WGPU=1`, so a missing
//! or broken adapter fails there. Elsewhere, without any Vulkan driver,
//! the test says so and passes.
//!
//! It trains through the `genzoo` binary, as a user would with
//! `--backend wgpu`: the wgpu backend's code (CubeCL's kernels and the
//! whole backend, generic over its runtime) is then compiled once, in the
//! library behind the binary. A test that called the engine itself would
//! compile all of it a second time, which took 7 minutes of CI's build on
//! a slow CPU.
#![cfg(feature = "wgpu")]

use std::path::Path;
use std::process::Output;

use genzoo::data::synthetic::write_idx_dataset;
use genzoo::train::logger::read_jsonl;

use crate::support::{genzoo, output_text, train_losses};

/// A short run of a small VAE (hidden 32, latent 4) on 8×8 images, its
/// 16-example steps split into `micro_batches`.
fn train_on_wgpu(dir: &Path, out: &str, micro_batches: usize) -> Output {
    let micro_batches = micro_batches.to_string();
    genzoo(
        &[
            "train",
            "vae-mlp",
            "--dataset",
            "idx:digits",
            "--config",
            "small.toml",
            "--backend",
            "wgpu",
            "--batch-size",
            "16",
            "--steps",
            "24",
            "--micro-batches",
            &micro_batches,
            "--lr",
            "5e-3",
            "--seed",
            "1",
            "--log-every",
            "1",
            "--out",
            out,
        ],
        dir,
    )
}

/// The training losses a run logged.
fn run_losses(run: &Path) -> Vec<f64> {
    train_losses(&read_jsonl(&run.join("metrics.jsonl")).unwrap())
}

#[test]
fn trains_on_wgpu() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 64, 16, 8, 4).unwrap();
    std::fs::write(
        dir.join("small.toml"),
        "[model]\nhidden = 32\nlatent = 4\n[train]\nsamples = 4\n",
    )
    .unwrap();

    let out = train_on_wgpu(dir, "whole", 1);
    let text = output_text(&out);
    if !out.status.success() {
        let required = std::env::var("GENZOO_REQUIRE_WGPU").as_deref() == Ok("1");
        if text.contains("the wgpu backend failed its first operation") && !required {
            eprintln!("no wgpu adapter on this machine, wgpu path not exercised: {text}");
            return;
        }
        panic!("wgpu training failed:\n{text}");
    }
    let run = dir.join("whole");
    let losses = run_losses(&run);
    assert_eq!(losses.len(), 24, "{text}");
    let (first, last) = (
        losses[..4].iter().sum::<f64>(),
        losses[20..].iter().sum::<f64>(),
    );
    assert!(last < first, "loss should fall on wgpu too: {losses:?}");
    assert!(run.join("samples/final.png").exists());

    // The same run in micro-batches of 4 (gradients summed on the device).
    let out = train_on_wgpu(dir, "split", 4);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let split_losses = run_losses(&dir.join("split"));
    assert_eq!(split_losses.len(), 24);
    for (a, b) in losses.iter().zip(&split_losses) {
        assert!(
            (a - b).abs() < 1e-3 * a.abs(),
            "{losses:?} vs {split_losses:?}"
        );
    }
}
