//! The training engine end to end through the library: loss goes down,
//! exact resume (also of a run that reached no checkpoint; not with
//! another batch size or other data), corrupt-checkpoint fallback, the NaN stop and
//! the stop at a checkpoint that cannot be written, refusing
//! checkpoints of other models, steps split into micro-batches, the best
//! held-out checkpoint, and a run asked to stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use burn::backend::{Autodiff, Flex};
use burn::module::AutodiffModule;
use burn::nn::{Linear, LinearConfig};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{Adam, AdamConfig, GradientsParams};
use burn::prelude::*;
use genzoo::core::family::SampleRequest;
use genzoo::core::record::{
    load_module, load_optimizer, param_values, save_module, save_optimizer,
};
use genzoo::core::{CpuDevice, Error, Family, ImageBatch, Metrics, Result, StepContext, TrainData};
use genzoo::data::{ImageData, ImageDataset, Scaling, synthetic};
use genzoo::models::vae::{PixelLikelihood, VaeConfig, VaeTrainer};
use genzoo::train::checkpoint::{FORMAT_VERSION, list_checkpoints};
use genzoo::train::evaluator::{Evaluator, SampleScore, train_evaluator};
use genzoo::train::logger::read_jsonl;
use genzoo::train::{RunDir, Schedule, TrainConfig, Trainer};

use crate::support::{
    StopsDuringEvaluation, assert_load_weights_takes_the_weights_alone,
    assert_samples_depend_on_the_seed_alone, checkpoint_steps, max_diff, quiet_trainer, rng_lock,
    tensorboard_files, tensorboard_view, train_losses,
};

type B = Autodiff<Flex>;

const SIZE: usize = 12;

fn data(seed: u64) -> ImageData {
    images(96, 16, seed)
}

/// `n` training images in batches of `batch` (and 32 test images).
fn images(n: usize, batch: usize, seed: u64) -> ImageData {
    let (x, y) = synthetic::images(n, SIZE, 4, 1);
    let (tx, ty) = synthetic::images(32, SIZE, 4, 2);
    let train = ImageDataset::new(x, y, (1, SIZE, SIZE), vec![]).unwrap();
    let test = ImageDataset::new(tx, ty, (1, SIZE, SIZE), vec![]).unwrap();
    ImageData::new(train, test, batch, Scaling::Unit, seed).unwrap()
}

fn vae_config() -> VaeConfig {
    VaeConfig {
        height: SIZE,
        width: SIZE,
        hidden: 32,
        latent: 4,
        ..Default::default()
    }
}

fn train_config(steps: u64) -> TrainConfig {
    TrainConfig {
        steps: Some(steps),
        batch_size: 16,
        lr: 3e-3,
        seed: 7,
        log_every: 1,
        checkpoint_every: 4,
        keep_checkpoints: 10,
        samples: 4,
        ..Default::default()
    }
}

fn fresh_vae() -> VaeTrainer<B> {
    // Initialisation is seeded like everything else.
    <Flex as Backend>::seed(&CpuDevice::default(), 11);
    VaeTrainer::<B>::new(vae_config(), &CpuDevice::default())
}

fn trainer(dir: &Path, cfg: TrainConfig, resume: bool) -> Trainer {
    let fingerprint = toml::to_string(&vae_config()).unwrap();
    quiet_trainer(dir, cfg, resume, "tiny-vae", fingerprint)
}

fn weights(f: &VaeTrainer<B>) -> Vec<f32> {
    param_values(&f.model.valid())
}

#[test]
fn vae_samples_depend_on_the_seed_alone() {
    // Held throughout: the busy thread must not disturb other tests' draws.
    let _guard = rng_lock();
    let vae = fresh_vae();
    assert_samples_depend_on_the_seed_alone(&vae);
}

#[test]
fn loss_goes_down_on_a_tiny_run() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let out = trainer(tmp.path(), train_config(60), false)
        .fit(fresh_vae(), &data(1), &CpuDevice::default())
        .unwrap();
    assert_eq!(out.step, 60);
    let records = read_jsonl(&tmp.path().join("metrics.jsonl")).unwrap();
    let losses = train_losses(&records);
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[losses.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(
        last < 0.8 * first,
        "loss should fall: first {first}, last {last}"
    );
    // Evaluation ran at every epoch end (96 / 16 = 6 steps), logged with the test_ prefix.
    let evals = records
        .iter()
        .filter(|r| r.contains_key("test_neg_elbo"))
        .count();
    assert_eq!(evals, 10);
    // A Bernoulli decoder's −ELBO is over intensities, not 8-bit values: no
    // bits/dim to set beside the other families'.
    assert!(
        records
            .iter()
            .all(|r| r.keys().all(|k| !k.contains("bits_per_dim"))),
        "{:?}",
        records.last()
    );
    assert!(tmp.path().join("samples/final.png").exists());
}

#[test]
fn a_discretized_logistic_vae_learns_and_bounds_the_8_bit_likelihood() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let config = VaeConfig {
        likelihood: PixelLikelihood::DiscretizedLogistic,
        ..vae_config()
    };
    <Flex as Backend>::seed(&CpuDevice::default(), 11);
    let fresh = VaeTrainer::<B>::new(config.clone(), &CpuDevice::default());
    let data = data(1);
    let images = data
        .test
        .batch::<Flex>(
            &(0..16).collect::<Vec<_>>(),
            Scaling::Unit,
            &CpuDevice::default(),
        )
        .images;
    let bits = |f: &VaeTrainer<B>, k: usize, seed: u64| -> f64 {
        let b = f.bits_per_dim(images.clone(), Some(k), seed).unwrap();
        assert_eq!(b.len(), 16);
        assert!(b.iter().all(|v| v.is_finite() && *v > 0.0), "{b:?}");
        b.iter().sum::<f64>() / b.len() as f64
    };
    let untrained = bits(&fresh, 16, 0);
    let run = Trainer::new(RunDir::create(tmp.path(), false).unwrap(), train_config(60))
        .identity("tiny-vae-dl", toml::to_string(&config).unwrap())
        .progress(false);
    let trained = run.fit(fresh, &data, &CpuDevice::default()).unwrap().family;
    // The logged bits/dim are the logged −ELBO's, per pixel and in bits.
    let records = read_jsonl(&tmp.path().join("metrics.jsonl")).unwrap();
    let last_eval = records
        .iter()
        .rev()
        .find(|r| r.contains_key("test_neg_elbo"))
        .unwrap();
    let logged = |key: &str| last_eval[key].as_f64().unwrap();
    let per_pixel = logged("test_neg_elbo") / ((SIZE * SIZE) as f64 * std::f64::consts::LN_2);
    assert!((logged("test_bits_per_dim") - per_pixel).abs() < 1e-9 * per_pixel);
    assert!(records.iter().any(|r| r.contains_key("train_bits_per_dim")));
    let elbo = bits(&trained, 1, 0);
    let iwae = bits(&trained, 64, 0);
    assert!(
        iwae < 0.8 * untrained,
        "training should lower the bound: {untrained} → {iwae} bits/dim"
    );
    // The importance-weighted bound is tighter than the ELBO (k = 1)...
    assert!(iwae <= elbo, "IWAE {iwae} vs ELBO {elbo}");
    // ...and a seed fixes its draws.
    assert_eq!(bits(&trained, 64, 0), iwae);

    // A Bernoulli decoder has no 8-bit likelihood: refused with the way out.
    let err = fresh_vae()
        .bits_per_dim(images, None, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("discretized-logistic"), "{err}");
}

#[test]
fn resume_is_exact() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let straight = trainer(&tmp.path().join("straight"), train_config(16), false)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();

    let split = tmp.path().join("split");
    let first = trainer(&split, train_config(16), false)
        .stop_after(Some(8))
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    assert_eq!(first.step, 8);
    // A new process would start from a fresh model and optimizer: so do we.
    let resumed = trainer(&split, train_config(16), true)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    assert_eq!(resumed.step, 16);
    assert_eq!(resumed.steps_this_call, 8);
    // Bitwise: same weights, hence same optimizer state and data order too.
    assert_eq!(weights(&straight.family), weights(&resumed.family));

    // The logs agree as well (the resumed run did not duplicate records).
    let a = read_jsonl(&tmp.path().join("straight/metrics.jsonl")).unwrap();
    let b = read_jsonl(&split.join("metrics.jsonl")).unwrap();
    let losses = |r: &Vec<serde_json::Map<String, serde_json::Value>>| -> Vec<(u64, f64)> {
        r.iter()
            .filter_map(|m| Some((m.get("step")?.as_u64()?, m.get("train_loss")?.as_f64()?)))
            .collect()
    };
    assert_eq!(losses(&a), losses(&b));
}

/// An evaluator of `data`'s kind of images (one epoch), saved in `dir`.
fn tiny_evaluator(dir: &Path) {
    let (x, y) = synthetic::images(96, SIZE, 4, 1);
    let (tx, ty) = synthetic::images(32, SIZE, 4, 2);
    let train = ImageDataset::new(x, y, (1, SIZE, SIZE), vec![]).unwrap();
    let test = ImageDataset::new(tx, ty, (1, SIZE, SIZE), vec![]).unwrap();
    let device = CpuDevice::default();
    train_evaluator::<B>("synthetic", &train, &test, 1, 0, &device, |_, _, _, _| {})
        .unwrap()
        .save(dir)
        .unwrap();
}

#[test]
fn sample_quality_is_logged_at_each_evaluation_keeps_the_best_and_leaves_training_alone() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let evaluator = tmp.path().join("evaluator");
    tiny_evaluator(&evaluator);
    let scored_config = TrainConfig {
        fid_samples: 40,
        eval_every: 3,
        keep_best: Some("test_fid".into()),
        ..train_config(12)
    };
    let run = tmp.path().join("scored");
    let scored = trainer(&run, scored_config.clone(), false)
        .sample_quality(&evaluator)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    let records = read_jsonl(&run.join("metrics.jsonl")).unwrap();
    let evals: Vec<_> = records
        .iter()
        .filter(|r| r.contains_key("test_neg_elbo"))
        .collect();
    let logged = |key: &str| -> Vec<(u64, f64)> {
        evals
            .iter()
            .map(|r| (r["step"].as_u64().unwrap(), r[key].as_f64().unwrap()))
            .collect()
    };
    let fids = logged("test_fid");
    assert_eq!(
        fids.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [3, 6, 9, 12]
    );
    assert!(
        fids.iter().all(|(_, v)| v.is_finite() && *v > 0.0),
        "{fids:?}"
    );
    assert!(logged("test_kid").iter().all(|(_, v)| v.is_finite()));
    assert_eq!(
        scored.last_eval.as_ref().unwrap().get("fid"),
        Some(fids[3].1)
    );

    // Scoring samples draws no training noise: the same run without it
    // trains the same weights.
    let plain_config = TrainConfig {
        fid_samples: 0,
        keep_best: None,
        ..scored_config.clone()
    };
    let plain = trainer(&tmp.path().join("plain"), plain_config, false)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    assert_eq!(weights(&plain.family), weights(&scored.family));

    // The best checkpoint is the lowest FID's, and its weights score it again.
    let (best_step, best_fid) = fids
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    let best_dir = run.join("checkpoints/best");
    let best = fresh_vae().load(&best_dir).unwrap();
    let score = SampleScore::new(
        Evaluator::<Flex>::load(&evaluator, &device).unwrap(),
        40,
        scored_config.seed,
    )
    .unwrap();
    let again = score.measure(&best).unwrap();
    assert_eq!(
        again[0],
        ("fid".to_string(), best_fid),
        "best at step {best_step}"
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(best_dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["best"]["step"].as_u64(), Some(best_step));

    // A resumed run logs what the straight one did.
    let split = tmp.path().join("split");
    trainer(&split, scored_config.clone(), false)
        .sample_quality(&evaluator)
        .stop_after(Some(6))
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    trainer(&split, scored_config.clone(), true)
        .sample_quality(&evaluator)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    let split_records = read_jsonl(&split.join("metrics.jsonl")).unwrap();
    let held_out = |r: &[serde_json::Map<String, serde_json::Value>]| -> Vec<String> {
        r.iter()
            .filter(|m| m.contains_key("test_fid"))
            .map(|m| serde_json::Value::Object(m.clone()).to_string())
            .collect()
    };
    assert_eq!(held_out(&records), held_out(&split_records));

    // Without the evaluator the run is refused before it writes anything.
    let refused = tmp.path().join("refused");
    let err = trainer(&refused, scored_config, false)
        .fit(fresh_vae(), &data(3), &device)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("Trainer::sample_quality"), "{err}");
    assert!(!refused.join("metrics.jsonl").exists());
}

#[test]
fn a_resume_with_no_checkpoint_redoes_the_log_of_the_attempt_before() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let straight_dir = tmp.path().join("straight");
    let straight = trainer(&straight_dir, train_config(8), false)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();

    let run = tmp.path().join("run");
    let sampling_every = |n: u64| TrainConfig {
        sample_every: n,
        ..train_config(8)
    };
    trainer(&run, sampling_every(2), false)
        .stop_after(Some(6))
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    // As after a first checkpoint that failed (a full disk): the log holds
    // six steps, and no checkpoint does.
    std::fs::remove_dir_all(run.join("checkpoints")).unwrap();
    let resumed = trainer(&run, sampling_every(4), true)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    assert_eq!(resumed.steps_this_call, 8, "trained again from step 0");
    assert_eq!(weights(&straight.family), weights(&resumed.family));
    // Only this call's grids: none of the first attempt's steps 2 and 6.
    let mut grids: Vec<String> = std::fs::read_dir(run.join("samples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("step-"))
        .collect();
    grids.sort();
    assert_eq!(grids, ["step-00000004.png", "step-00000008.png"]);

    // Each step logged once, as in the run that went straight through.
    let logged = |dir: &Path| -> Vec<(u64, Option<f64>)> {
        read_jsonl(&dir.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|m| {
                let step = m["step"].as_u64().unwrap();
                (step, m.get("train_loss").and_then(|v| v.as_f64()))
            })
            .collect()
    };
    assert_eq!(logged(&run), logged(&straight_dir));
    let csv_keys = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("metrics.csv"))
            .unwrap()
            .lines()
            .map(|line| line.rsplit_once(',').unwrap().0.to_string())
            .collect()
    };
    assert_eq!(csv_keys(&run), csv_keys(&straight_dir));
}

#[test]
fn the_learning_rate_of_each_step_follows_the_schedule() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let logged_rates = |name: &str, schedule: Schedule| -> Vec<f64> {
        let dir = tmp.path().join(name);
        let config = TrainConfig {
            schedule,
            lr: 1e-2,
            ..train_config(6)
        };
        trainer(&dir, config, false)
            .fit(fresh_vae(), &data(3), &CpuDevice::default())
            .unwrap();
        read_jsonl(&dir.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .filter_map(|r| r.get("lr")?.as_f64())
            .collect()
    };
    let step = Schedule::Step {
        milestones: vec![3, 5],
        gamma: 0.5,
    };
    assert_eq!(
        logged_rates("step", step),
        [1e-2, 1e-2, 1e-2, 5e-3, 5e-3, 2.5e-3]
    );
    let linear = Schedule::Linear {
        warmup_steps: 2,
        min_lr: 0.0,
    };
    let rates = logged_rates("linear", linear);
    let expected = [1e-2 / 3.0, 2e-2 / 3.0, 1e-2, 7.5e-3, 5e-3, 2.5e-3];
    assert_eq!(rates.len(), expected.len());
    for (got, want) in rates.iter().zip(expected) {
        assert!((got - want).abs() < 1e-12, "{rates:?}");
    }
}

#[test]
fn tensorboard_shows_what_the_metrics_files_and_grids_hold_across_a_resume() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let run = tmp.path().join("run");
    let config = TrainConfig {
        sample_every: 2,
        ..train_config(8)
    };
    trainer(&run, config.clone(), false)
        .stop_after(Some(6))
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    // As after a kill between steps 4 and 6's checkpoints: steps 5 and 6
    // are logged, and redone by the resume.
    std::fs::remove_dir_all(run.join("checkpoints/step-00000006")).unwrap();
    trainer(&run, config, true)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();

    let files = tensorboard_files(&run);
    assert_eq!(files.len(), 2, "one file a call");
    let restarts: Vec<Vec<u64>> = files
        .iter()
        .map(|f| f.iter().filter(|e| e.restart).map(|e| e.step).collect())
        .collect();
    assert_eq!(
        restarts,
        [vec![], vec![5]],
        "the resume starts over at step 5"
    );

    // The scalars shown are the log's, each step once, `train_` and
    // `test_` as the sections `train/` and `test/`.
    let view = tensorboard_view(&run);
    let mut shown: Vec<(u64, String, f32)> = view
        .iter()
        .flat_map(|e| e.scalars.iter().map(|(tag, v)| (e.step, tag.clone(), *v)))
        .collect();
    let mut logged: Vec<(u64, String, f32)> = read_jsonl(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .flat_map(|record| {
            let step = record["step"].as_u64().unwrap();
            record
                .iter()
                .filter(|(k, _)| *k != "step")
                .map(move |(k, v)| {
                    let tag = k
                        .replacen("train_", "train/", 1)
                        .replacen("test_", "test/", 1);
                    (step, tag, v.as_f64().unwrap() as f32)
                })
        })
        .collect();
    shown.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    logged.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    assert!(shown.iter().any(|(_, tag, _)| tag == "test/neg_elbo"));
    assert_eq!(shown, logged);

    // The grids shown are the files in samples/, each once: the first
    // call's of steps 2 and 4, the second call's of 6 (the first call's
    // dropped) and 8, which is also the final grid.
    let grids: Vec<(u64, Vec<u8>)> = view
        .iter()
        .flat_map(|e| {
            e.images.iter().map(|(tag, png)| {
                assert_eq!(tag, "samples");
                (e.step, png.clone())
            })
        })
        .collect();
    let sample =
        |step: u64| std::fs::read(run.join(format!("samples/step-{step:08}.png"))).unwrap();
    assert_eq!(
        grids,
        [2, 4, 6, 8].map(|step| (step, sample(step))),
        "{:?}",
        grids.iter().map(|g| g.0).collect::<Vec<_>>()
    );

    // Turned off, a run writes none.
    let off = tmp.path().join("off");
    let config = TrainConfig {
        tensorboard: false,
        ..train_config(2)
    };
    trainer(&off, config, false)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    assert!(off.join("metrics.jsonl").exists());
    assert!(tensorboard_files(&off).is_empty());
}

#[test]
fn a_resume_with_another_batch_size_or_data_is_refused_before_it_changes_anything() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let run = tmp.path().join("run");
    trainer(&run, train_config(16), false)
        .stop_after(Some(5))
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    let log = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let refusal = |cfg: TrainConfig, data: &ImageData| {
        trainer(&run, cfg, true)
            .fit(fresh_vae(), data, &device)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let batch_32 = TrainConfig {
        batch_size: 32,
        ..train_config(16)
    };
    let err = refusal(batch_32, &images(96, 32, 3));
    assert!(
        err.contains("trained with batches of 16 and this call asks for 32"),
        "{err}"
    );
    let err = refusal(train_config(16), &images(48, 16, 3));
    assert!(
        err.contains("gave 6 batches per epoch and this call's gives 3"),
        "{err}"
    );
    // As many other images: their fingerprint tells them apart.
    let (x, y) = synthetic::images(96, SIZE, 4, 9);
    let other = ImageDataset::new(x, y, (1, SIZE, SIZE), vec![]).unwrap();
    let other = ImageData::new(other, data(3).test, 16, Scaling::Unit, 3).unwrap();
    let err = refusal(train_config(16), &other);
    assert!(
        err.contains("its training examples are not this call's: as many batches, but another"),
        "{err}"
    );
    // A checkpoint from before these were recorded, at batch 5 of 6.
    let manifest = run.join("checkpoints/step-00000005/manifest.json");
    let mut fields: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    assert_eq!(fields["batch_in_epoch"], 5);
    for recorded_since in ["batch_size", "batches_per_epoch", "data_fingerprint"] {
        fields.remove(recorded_since).unwrap();
    }
    std::fs::write(&manifest, serde_json::to_vec(&fields).unwrap()).unwrap();
    let err = refusal(train_config(16), &images(48, 16, 3));
    assert!(
        err.contains("batch 5 of epoch 0, is past the end of this data's epochs of 3 batches"),
        "{err}"
    );
    // Nothing was changed: the log is as it was, and the run's own data resumes it.
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), log);
    let resumed = trainer(&run, train_config(16), true)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    assert_eq!(resumed.steps_this_call, 11);
}

#[test]
fn a_resume_with_a_budget_the_run_has_passed_is_refused() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let run = tmp.path().join("run");
    trainer(&run, train_config(8), false)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    let refusal = |cfg: TrainConfig| {
        trainer(&run, cfg, true)
            .fit(fresh_vae(), &data(3), &device)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let err = refusal(train_config(4));
    assert!(
        err.contains("is at step 8 already, past this call's budget of 4 steps"),
        "{err}"
    );
    let one_epoch = TrainConfig {
        steps: None,
        epochs: Some(1),
        ..train_config(8)
    };
    let err = refusal(one_epoch);
    assert!(
        err.contains("past this call's budget of 1 epoch, 6 steps"),
        "{err}"
    );
    // The budget it finished on, or a larger one, is no error.
    let same = trainer(&run, train_config(8), true)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    assert_eq!((same.step, same.steps_this_call), (8, 0));
    let more = trainer(&run, train_config(10), true)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    assert_eq!((more.step, more.steps_this_call), (10, 2));

    // Refused before anything is changed: the log keeps the steps after
    // the newest checkpoint (as a run killed after step 4 would have).
    for step in [8, 10] {
        std::fs::remove_dir_all(run.join(format!("checkpoints/step-{step:08}"))).unwrap();
    }
    let log = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let err = refusal(train_config(3));
    assert!(
        err.contains("is at step 4 already, past this call's budget of 3 steps"),
        "{err}"
    );
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), log);
}

#[test]
fn a_run_asked_to_stop_checkpoints_its_step_and_resumes_exactly() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let straight = trainer(&tmp.path().join("straight"), train_config(16), false)
        .stop_when(Arc::new(AtomicBool::new(false)))
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    assert!(!straight.interrupted);

    // Asked before it starts: the call takes one step, as a signal during
    // the first would leave it.
    let split = tmp.path().join("split");
    let stopped = trainer(&split, train_config(16), false)
        .stop_when(Arc::new(AtomicBool::new(true)))
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    assert!(stopped.interrupted);
    assert_eq!((stopped.step, stopped.steps_this_call), (1, 1));
    // Step 1 is no multiple of checkpoint_every (4): checkpointed for the stop.
    assert_eq!(checkpoint_steps(&split), [1]);
    assert!(
        !split.join("samples/final.png").exists(),
        "a stopped run has not finished"
    );

    let resumed = trainer(&split, train_config(16), true)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    assert_eq!((resumed.step, resumed.steps_this_call), (16, 15));
    assert!(!resumed.interrupted);
    assert_eq!(weights(&straight.family), weights(&resumed.family));
    // One record a step, none repeated by the resume.
    let losses = |run: &Path| train_losses(&read_jsonl(&run.join("metrics.jsonl")).unwrap());
    assert_eq!(losses(&tmp.path().join("straight")).len(), 16);
    assert_eq!(losses(&tmp.path().join("straight")), losses(&split));
}

#[test]
fn a_stop_asked_during_an_evaluation_ends_the_run_at_that_step() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let run = tmp.path().join("run");
    let stop = Arc::new(AtomicBool::new(false));
    let data = StopsDuringEvaluation {
        data: data(3),
        stop: stop.clone(),
    };
    // 6 batches an epoch: the first evaluation is after step 6.
    let stopped = trainer(&run, train_config(16), false)
        .stop_when(stop)
        .fit(fresh_vae(), &data, &device)
        .unwrap();
    assert!(stopped.interrupted);
    assert_eq!(stopped.step, 6, "not stopped at the evaluated step");
    assert_eq!(stopped.last_eval_step, Some(6));
    assert_eq!(checkpoint_steps(&run), [4, 6]);
    // The log ends at that step.
    let records = read_jsonl(&run.join("metrics.jsonl")).unwrap();
    assert_eq!(records.last().unwrap()["step"], 6);
    assert_eq!(train_losses(&records).len(), 6);
}

#[test]
fn corrupt_checkpoint_falls_back_to_the_previous_one() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let straight = trainer(&tmp.path().join("straight"), train_config(16), false)
        .fit(fresh_vae(), &data(5), &device)
        .unwrap();

    let run = tmp.path().join("run");
    trainer(&run, train_config(16), false)
        .stop_after(Some(12))
        .fit(fresh_vae(), &data(5), &device)
        .unwrap();
    let ckpts = list_checkpoints(&run.join("checkpoints")).unwrap();
    assert_eq!(
        ckpts.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![4, 8, 12]
    );
    // Truncate the newest checkpoint's weights, as a crash or a full disk would.
    let newest = ckpts[2].1.join("model.safetensors");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();

    let resumed = trainer(&run, train_config(16), true)
        .fit(fresh_vae(), &data(5), &device)
        .unwrap();
    assert_eq!(
        resumed.steps_this_call, 8,
        "resumed from step 8, the last good checkpoint"
    );
    assert_eq!(weights(&straight.family), weights(&resumed.family));
}

#[test]
fn checkpoints_of_another_config_or_a_newer_format_are_refused() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let run = tmp.path().join("run");
    trainer(&run, train_config(4), false)
        .fit(fresh_vae(), &data(1), &device)
        .unwrap();

    // Another config under the same name: refused, and nothing is written.
    let other = Trainer::new(RunDir::open(&run).unwrap(), train_config(8))
        .identity(
            "tiny-vae",
            toml::to_string(&VaeConfig {
                hidden: 48,
                ..vae_config()
            })
            .unwrap(),
        )
        .resume(true)
        .progress(false);
    let err = other
        .fit(fresh_vae(), &data(1), &device)
        .err()
        .expect("must refuse")
        .to_string();
    // The one key that differs, not both configs in full.
    assert!(
        err.ends_with("it was written with another model config: hidden = 32 in the checkpoint, 48 in this run"),
        "{err}"
    );
    let err = Trainer::new(RunDir::open(&run).unwrap(), train_config(8))
        .identity("other-model", toml::to_string(&vae_config()).unwrap())
        .resume(true)
        .progress(false)
        .fit(fresh_vae(), &data(1), &device)
        .err()
        .expect("must refuse")
        .to_string();
    assert!(err.contains("belongs to model 'tiny-vae'"), "{err}");

    // Weights of another shape, loaded directly: refused with the tensor named.
    let ckpt = list_checkpoints(&run.join("checkpoints"))
        .unwrap()
        .pop()
        .unwrap()
        .1;
    let bigger = VaeTrainer::<B>::new(
        VaeConfig {
            hidden: 64,
            ..vae_config()
        },
        &device,
    );
    let err = bigger.load(&ckpt).err().expect("must refuse").to_string();
    assert!(err.contains("shape") && err.contains("hidden"), "{err}");

    // A checkpoint from a newer format version, and one from format 1
    // (burn's MessagePack records): both refused, and named.
    let manifest = ckpt.join("manifest.json");
    let written = std::fs::read_to_string(&manifest).unwrap();
    let current = format!("\"format_version\": {FORMAT_VERSION}");
    assert!(written.contains(&current), "{written}");
    for (version, says) in [(99, "upgrade"), (1, "train it again")] {
        let text = written.replace(&current, &format!("\"format_version\": {version}"));
        std::fs::write(&manifest, text).unwrap();
        let err = trainer(&run, train_config(8), true)
            .fit(fresh_vae(), &data(1), &device)
            .err()
            .expect("must refuse")
            .to_string();
        assert!(
            err.contains(&format!("format {version}")) && err.contains(says),
            "{err}"
        );
    }
}

#[test]
fn a_new_run_refuses_a_directory_with_checkpoints() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    trainer(&run, train_config(4), false)
        .fit(fresh_vae(), &data(1), &CpuDevice::default())
        .unwrap();
    assert!(RunDir::create(&run, false).is_err());
}

/// A one-layer family whose loss turns NaN at a chosen step, or whose
/// checkpoint fails to be written at a chosen save (as on a full disk): the
/// engine must stop there.
struct Faulty<B: burn::tensor::backend::AutodiffBackend> {
    net: Linear<B>,
    optimizer: OptimizerAdaptor<Adam, Linear<B>, B>,
    nan_step: Option<u64>,
    failing_save: Option<usize>,
    saves: std::cell::Cell<usize>,
    device: B::Device,
}

impl Faulty<B> {
    fn new(device: CpuDevice) -> Self {
        Self {
            net: LinearConfig::new(SIZE * SIZE, SIZE * SIZE).init(&device),
            optimizer: AdamConfig::new().init(),
            nan_step: None,
            failing_save: None,
            saves: Default::default(),
            device,
        }
    }
}

impl Family<B> for Faulty<B> {
    type Batch = ImageBatch<B>;
    fn num_params(&self) -> usize {
        self.net.num_params()
    }
    fn train_step(
        mut self,
        batch: ImageBatch<B>,
        ctx: &mut StepContext,
    ) -> Result<(Self, Metrics)> {
        let n = batch.len();
        let x = batch.images.reshape([n as i32, -1]);
        let mut loss = (self.net.forward(x.clone()) - x).powi_scalar(2).mean();
        if Some(ctx.step) == self.nan_step {
            loss = loss * f32::NAN;
        }
        let grads = GradientsParams::from_grads(loss.backward(), &self.net);
        self.net = ctx.apply(&mut self.optimizer, self.net, grads)?;
        let value = loss.into_scalar().elem::<f64>();
        Ok((self, Metrics::new().with("loss", value)))
    }
    fn eval_batch(&self, _: ImageBatch<B>) -> Result<Metrics> {
        Ok(Metrics::new())
    }
    fn sample_images(&self, r: &SampleRequest) -> Result<Tensor<Flex, 4>> {
        Ok(Tensor::zeros([r.n, 1, SIZE, SIZE], &self.device))
    }
    fn save(&self, dir: &Path) -> Result<()> {
        save_module(&self.net, &dir.join("net"))?;
        self.saves.set(self.saves.get() + 1);
        if Some(self.saves.get()) == self.failing_save {
            let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
            return Err(Error::io(dir.join("optim.safetensors"), full));
        }
        save_optimizer(&self.optimizer, &self.net, &dir.join("optim"))
    }
    fn load(mut self, dir: &Path) -> Result<Self> {
        self.net = load_module(self.net, &dir.join("net"))?;
        self.optimizer = load_optimizer(self.optimizer, &self.net, &dir.join("optim"))?;
        Ok(self)
    }
}

#[test]
fn a_run_started_from_another_runs_weights_trains_them_with_a_fresh_optimizer() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let source = trainer(&tmp.path().join("source"), train_config(8), false)
        .fit(fresh_vae(), &data(3), &device)
        .unwrap();
    let checkpoint = tmp.path().join("source/checkpoints/step-00000008");
    assert_load_weights_takes_the_weights_alone(
        &checkpoint,
        &source.family,
        fresh_vae,
        weights,
        data(3).train_batch(0, 0, &device),
    );
    let from_source = |steps: u64| TrainConfig {
        init_from: Some(checkpoint.clone()),
        ..train_config(steps)
    };
    // Fine-tuned in another data order.
    let tuned = trainer(&tmp.path().join("tuned"), from_source(8), false)
        .fit(fresh_vae(), &data(4), &device)
        .unwrap();
    assert_eq!((tuned.step, tuned.steps_this_call), (8, 8));
    // Bitwise the run of the source's weights loaded by hand into a fresh
    // family (new optimizer, schedule from step 0)...
    let by_hand = trainer(&tmp.path().join("by-hand"), train_config(8), false)
        .fit(
            fresh_vae().load_weights(&checkpoint).unwrap(),
            &data(4),
            &device,
        )
        .unwrap();
    assert!(
        weights(&tuned.family) == weights(&by_hand.family),
        "the source's weights, trained with a new optimizer"
    );
    // ...and not a fresh start's.
    let scratch = trainer(&tmp.path().join("scratch"), train_config(8), false)
        .fit(fresh_vae(), &data(4), &device)
        .unwrap();
    assert!(
        weights(&tuned.family) != weights(&scratch.family),
        "not a fresh start's"
    );

    // Resumed, it goes on from its own checkpoint, not from the source's.
    let split = tmp.path().join("split");
    trainer(&split, from_source(8), false)
        .stop_after(Some(4))
        .fit(fresh_vae(), &data(4), &device)
        .unwrap();
    let resumed = trainer(&split, from_source(8), true)
        .fit(fresh_vae(), &data(4), &device)
        .unwrap();
    assert_eq!(resumed.steps_this_call, 4);
    assert!(
        weights(&resumed.family) == weights(&tuned.family),
        "the resume is exact"
    );

    // Refused before a step, naming why: a directory that is no
    // checkpoint, a checkpoint of another model config, a family that
    // cannot load weights alone.
    let refused = |name: &str, trainer: Trainer| {
        let err = trainer
            .fit(fresh_vae(), &data(4), &device)
            .err()
            .expect("must refuse")
            .to_string();
        let dir = tmp.path().join(name).join("checkpoints");
        assert!(list_checkpoints(&dir).unwrap().is_empty(), "{name}");
        err
    };
    let not_a_checkpoint = TrainConfig {
        init_from: Some(tmp.path().join("source")),
        ..train_config(8)
    };
    let err = refused("a", trainer(&tmp.path().join("a"), not_a_checkpoint, false));
    assert!(err.contains("not a checkpoint directory"), "{err}");
    let wider = toml::to_string(&VaeConfig {
        hidden: 64,
        ..vae_config()
    })
    .unwrap();
    let other_config = quiet_trainer(
        &tmp.path().join("b"),
        from_source(8),
        false,
        "tiny-vae",
        wider,
    );
    let err = refused("b", other_config);
    assert!(
        err.contains("hidden = 32 in the checkpoint, 64 in this run"),
        "{err}"
    );
    let err = trainer(&tmp.path().join("c"), from_source(8), false)
        .fit(Faulty::new(device), &data(4), &device)
        .err()
        .expect("must refuse")
        .to_string();
    assert!(
        err.contains("cannot start from another run's weights"),
        "{err}"
    );
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_last_checkpoint() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let family = Faulty {
        nan_step: Some(7),
        ..Faulty::new(device)
    };
    let err = trainer(tmp.path(), train_config(20), false)
        .fit(family, &data(1), &device)
        .err()
        .expect("must stop");
    match &err {
        Error::NonFinite { step, name, .. } => {
            assert_eq!((*step, name.as_str()), (7, "train_loss"))
        }
        other => panic!("expected NonFinite, got {other}"),
    }
    assert!(err.to_string().contains("step 7"));
    let ckpts: Vec<(u64, PathBuf)> = list_checkpoints(&tmp.path().join("checkpoints")).unwrap();
    assert_eq!(ckpts.iter().map(|(s, _)| *s).collect::<Vec<_>>(), vec![4]);
    // The surviving checkpoint verifies and loads.
    let identity = genzoo::train::CheckpointIdentity {
        model: "tiny-vae".into(),
        fingerprint: toml::to_string(&vae_config()).unwrap(),
    };
    assert!(genzoo::train::checkpoint::verify(&ckpts[0].1, &identity).is_ok());
}

#[test]
fn a_checkpoint_that_cannot_be_written_stops_the_run_and_says_what_it_keeps() {
    let _guard = rng_lock();
    let device = CpuDevice::default();
    for (failing_save, expected, kept) in [
        (
            2,
            "training stopped at step 8, whose checkpoint could not be written: ",
            vec![4],
        ),
        (1, "training stopped at step 4, whose checkpoint", vec![]),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let family = Faulty {
            failing_save: Some(failing_save),
            ..Faulty::new(device)
        };
        let err = trainer(tmp.path(), train_config(20), false)
            .fit(family, &data(1), &device)
            .err()
            .expect("must stop")
            .to_string();
        assert!(err.contains(expected), "{err}");
        let what_is_kept = match failing_save {
            2 => {
                "The run keeps its checkpoint of step 4, which a resume goes on from (steps 5 to 8 \
                  are not kept); free space (or fix the cause) first"
            }
            _ => "The run has no checkpoint yet: a resume starts it from step 0",
        };
        assert!(err.contains(what_is_kept), "{err}");
        // The half-written checkpoint is gone; the one before it is intact.
        let ckpts = tmp.path().join("checkpoints");
        let steps: Vec<u64> = list_checkpoints(&ckpts)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(steps, kept);
        let names: Vec<String> = std::fs::read_dir(&ckpts)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), kept.len(), "{names:?}");
    }
}

/// A budget of `minutes` under a cosine schedule, whose horizon is the plan.
fn minutes_config(minutes: f64) -> TrainConfig {
    TrainConfig {
        steps: None,
        minutes: Some(minutes),
        schedule: Schedule::Cosine {
            warmup_steps: 2,
            min_lr: 3e-4,
        },
        log_every: 50,
        checkpoint_every: 10_000,
        ..train_config(0)
    }
}

fn last_manifest(run: &Path) -> serde_json::Value {
    let ckpts = list_checkpoints(&run.join("checkpoints")).unwrap();
    let path = ckpts.last().unwrap().1.join("manifest.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Rewrites the newest checkpoint's training time as ~0, as if its steps
/// had taken no time; returns its step.
fn erase_time_spent(run: &Path) -> u64 {
    let ckpts = list_checkpoints(&run.join("checkpoints")).unwrap();
    let path = ckpts.last().unwrap().1.join("manifest.json");
    let mut manifest = last_manifest(run);
    manifest["train_seconds"] = serde_json::json!(1e-9);
    std::fs::write(&path, manifest.to_string()).unwrap();
    manifest["step"].as_u64().unwrap()
}

#[test]
fn a_minutes_budget_plans_its_steps_and_trains_as_a_steps_run_of_that_length() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let timed_dir = tmp.path().join("timed");
    // 15 steps: fewer than the 20 after which a run may plan again.
    let timed = trainer(&timed_dir, minutes_config(0.01), false)
        .stop_after(Some(15))
        .fit(fresh_vae(), &data(5), &device)
        .unwrap();
    assert!(timed.total_steps >= 20, "planned {}", timed.total_steps);
    assert_eq!(timed.step, 15);
    assert!(!timed_dir.join("probe").exists());
    let manifest = last_manifest(&timed_dir);
    assert_eq!(manifest["planned_minutes"], 0.01);
    assert_eq!(manifest["total_steps"], timed.total_steps);
    // (serde_json reads floats to within an ulp)
    let recorded = manifest["train_seconds"].as_f64().unwrap();
    assert!((recorded - timed.train_seconds).abs() < 1e-12, "{recorded}");
    // The timing steps were undone: a run planned in steps from the start
    // (the cosine's horizon included) has the same weights, bit for bit.
    let planned = TrainConfig {
        steps: Some(timed.total_steps),
        minutes: None,
        ..minutes_config(0.01)
    };
    let straight = trainer(&tmp.path().join("straight"), planned, false)
        .stop_after(Some(15))
        .fit(fresh_vae(), &data(5), &device)
        .unwrap();
    assert_eq!(weights(&straight.family), weights(&timed.family));

    // Left to run, it ends as planned, or on the clock at the budget.
    let rest = trainer(&timed_dir, minutes_config(0.01), true)
        .fit(fresh_vae(), &data(5), &device)
        .unwrap();
    assert!(
        rest.step == rest.total_steps || 0.6 <= timed.train_seconds + rest.train_seconds,
        "{} of {} steps in {} s",
        rest.step,
        rest.total_steps,
        timed.train_seconds + rest.train_seconds
    );
    // The run's time over both calls: the checkpoint's record plus this call's.
    assert_eq!(timed.total_train_seconds, timed.train_seconds);
    assert!((rest.total_train_seconds - (recorded + rest.train_seconds)).abs() < 1e-9);
    assert!(timed_dir.join("samples/final.png").exists());
}

#[test]
fn a_minutes_run_resumes_on_its_plan_and_stops_on_the_clock() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let run = tmp.path();
    let first = trainer(run, minutes_config(0.01), false)
        .stop_after(Some(5))
        .fit(fresh_vae(), &data(5), &device)
        .unwrap();
    assert_eq!(first.step, 5);
    // The same budget: the plan is kept, not timed again (one step: too
    // few to plan again from the call's pace).
    let kept = trainer(run, minutes_config(0.01), true)
        .stop_after(Some(1))
        .fit(fresh_vae(), &data(5), &device)
        .unwrap();
    assert_eq!((kept.step, kept.total_steps), (6, first.total_steps));
    let rest = trainer(run, minutes_config(0.01), true)
        .fit(fresh_vae(), &data(5), &device)
        .unwrap();
    // A budget already spent: planned again from the run's own pace, to no more steps.
    let spent = trainer(run, minutes_config(1e-6), true)
        .fit(fresh_vae(), &data(5), &device)
        .unwrap();
    assert_eq!((spent.steps_this_call, spent.total_steps), (0, rest.step));

    // A plan far too long for its budget (the pace recorded as ~0) is
    // planned again from the run's own pace a tenth into the budget.
    erase_time_spent(run);
    let replanned = trainer(run, minutes_config(0.005), true)
        .fit(fresh_vae(), &data(5), &device)
        .unwrap();
    assert!(
        replanned.total_steps < 100_000,
        "still {} steps planned",
        replanned.total_steps
    );
    assert!(replanned.steps_this_call >= 20);

    // Too short a budget to plan again: the clock stops the run, with a checkpoint.
    let before = erase_time_spent(run);
    let clocked = trainer(run, minutes_config(0.00002), true)
        .fit(fresh_vae(), &data(5), &device)
        .unwrap();
    assert!(
        (1..20).contains(&clocked.steps_this_call),
        "{}",
        clocked.steps_this_call
    );
    assert!(clocked.step < clocked.total_steps);
    assert!(clocked.train_seconds >= 0.0012, "{}", clocked.train_seconds);
    // Evaluated at the step it ended at, as a run at its planned end is.
    assert!(clocked.last_eval.is_some());
    assert_eq!(clocked.last_eval_step, Some(clocked.step));
    let manifest = last_manifest(run);
    assert_eq!(manifest["step"], before + clocked.steps_this_call);
    assert_eq!(manifest["step"], clocked.step);
}

#[test]
fn micro_batches_train_as_the_whole_batch_down_to_a_short_last_batch() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    // 98 images in batches of 16: six whole batches, then one of 2 rows,
    // which three micro-batches cannot split: it is taken as two.
    let images = images(98, 16, 1);
    let run = |name: &str, micro_batches: usize| {
        let config = TrainConfig {
            micro_batches,
            ..train_config(9)
        };
        let out = trainer(&tmp.path().join(name), config, false)
            .fit(fresh_vae(), &images, &device)
            .unwrap();
        let records = read_jsonl(&tmp.path().join(name).join("metrics.jsonl")).unwrap();
        let losses = train_losses(&records);
        (weights(&out.family), losses)
    };
    let (whole, whole_losses) = run("whole", 1);
    let (split, split_losses) = run("split", 3);
    let diff = max_diff(&whole, &split);
    assert!(diff < 1e-5, "weights differ by {diff}");
    assert_eq!(whole_losses.len(), 9);
    for (a, b) in whole_losses.iter().zip(&split_losses) {
        assert!((a - b).abs() < 1e-4 * a.abs(), "loss {a} vs {b}");
    }
}

#[test]
fn a_family_that_cannot_split_its_steps_is_refused_before_training() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    // A family says so itself (`Family::supports_micro_batches`); this one
    // does not, so the engine must not guess.
    let family = Faulty::new(device);
    let config = TrainConfig {
        micro_batches: 2,
        ..train_config(4)
    };
    let err = trainer(tmp.path(), config, false)
        .fit(family, &data(1), &device)
        .err()
        .expect("must refuse");
    assert!(
        err.to_string()
            .contains("cannot split its steps into micro-batches"),
        "{err}"
    );
    assert!(
        !tmp.path().join("checkpoints").exists() || {
            list_checkpoints(&tmp.path().join("checkpoints"))
                .unwrap()
                .is_empty()
        }
    );
    assert!(!tmp.path().join("metrics.jsonl").exists());
}

/// A family whose held-out "loss" follows a script of the steps it has
/// taken (saved with its checkpoints), so that the best step is known.
struct Scripted<B: burn::tensor::backend::AutodiffBackend> {
    net: Linear<B>,
    optimizer: OptimizerAdaptor<Adam, Linear<B>, B>,
    steps: u64,
    device: B::Device,
}

/// Held-out loss after each step.
fn scripted_loss(step: u64) -> f64 {
    [9.0, 5.0, 6.0, 2.0, 7.0, 3.0, 4.0, 1.0, 8.0][step as usize % 9]
}

impl Scripted<B> {
    fn new() -> Self {
        let device = CpuDevice::default();
        Self {
            net: LinearConfig::new(SIZE * SIZE, 2).init(&device),
            optimizer: AdamConfig::new().init(),
            steps: 0,
            device,
        }
    }
}

impl Family<B> for Scripted<B> {
    type Batch = ImageBatch<B>;
    fn num_params(&self) -> usize {
        self.net.num_params()
    }
    fn train_step(
        mut self,
        batch: ImageBatch<B>,
        ctx: &mut StepContext,
    ) -> Result<(Self, Metrics)> {
        let n = batch.len();
        let loss = self
            .net
            .forward(batch.images.reshape([n as i32, -1]))
            .powi_scalar(2)
            .mean();
        let grads = GradientsParams::from_grads(loss.backward(), &self.net);
        self.net = ctx.apply(&mut self.optimizer, self.net, grads)?;
        self.steps += 1;
        Ok((self, Metrics::new().with("loss", loss.into_scalar().elem())))
    }
    fn eval_batch(&self, _: ImageBatch<B>) -> Result<Metrics> {
        Ok(Metrics::new().with("loss", scripted_loss(self.steps)))
    }
    fn sample_images(&self, r: &SampleRequest) -> Result<Tensor<Flex, 4>> {
        Ok(Tensor::zeros([r.n, 1, SIZE, SIZE], &self.device))
    }
    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::write(dir.join("steps"), self.steps.to_string()).unwrap();
        save_module(&self.net, &dir.join("net"))?;
        save_optimizer(&self.optimizer, &self.net, &dir.join("optim"))
    }
    fn load(mut self, dir: &Path) -> Result<Self> {
        self.steps = std::fs::read_to_string(dir.join("steps"))
            .unwrap()
            .parse()
            .unwrap();
        self.net = load_module(self.net, &dir.join("net"))?;
        self.optimizer = load_optimizer(self.optimizer, &self.net, &dir.join("optim"))?;
        Ok(self)
    }
}

#[test]
fn the_best_held_out_checkpoint_is_kept_through_pruning_and_resume() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let config = TrainConfig {
        eval_every: 1,
        checkpoint_every: 1,
        keep_checkpoints: 1,
        keep_best: Some("test_loss".into()),
        ..train_config(8)
    };
    let best = || {
        let dir = tmp
            .path()
            .join("checkpoints")
            .join(genzoo::train::checkpoint::BEST);
        let steps: u64 = std::fs::read_to_string(dir.join("steps"))
            .unwrap()
            .parse()
            .unwrap();
        let manifest = genzoo::train::checkpoint::verify(
            &dir,
            &genzoo::train::CheckpointIdentity {
                model: "tiny-vae".into(),
                fingerprint: toml::to_string(&vae_config()).unwrap(),
            },
        )
        .unwrap();
        let record = manifest.best.unwrap();
        assert_eq!((record.metric.as_str(), record.step), ("test_loss", steps));
        (steps, record.value)
    };
    // Losses after steps 1..8: 5 6 2 7 3 4 1 8. Stop after 5 steps.
    trainer(tmp.path(), config.clone(), false)
        .stop_after(Some(5))
        .fit(Scripted::new(), &data(1), &device)
        .unwrap();
    assert_eq!(best(), (3, 2.0));
    // Resumed from step 5's checkpoint, which recorded step 3's 2.0: step
    // 6's 4.0 does not beat it, so the best stays (kept past pruning).
    trainer(tmp.path(), config.clone(), true)
        .stop_after(Some(1))
        .fit(Scripted::new(), &data(1), &device)
        .unwrap();
    assert_eq!(best(), (3, 2.0));
    assert_eq!(checkpoint_steps(tmp.path()), [6]);
    trainer(tmp.path(), config.clone(), true)
        .fit(Scripted::new(), &data(1), &device)
        .unwrap();
    assert_eq!(best(), (7, 1.0));

    // A metric the run does not log is refused before the first step.
    let other = tempfile::tempdir().unwrap();
    let err = trainer(
        other.path(),
        TrainConfig {
            keep_best: Some("val_loss".into()),
            ..config
        },
        false,
    )
    .fit(Scripted::new(), &data(1), &device)
    .err()
    .expect("must refuse");
    assert!(err.to_string().contains("it has test_loss"), "{err}");
    assert!(!other.path().join("checkpoints").exists());
}

#[test]
fn patience_stops_the_run_and_a_resumed_one_stays_stopped() {
    let _guard = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let device = CpuDevice::default();
    let config = TrainConfig {
        eval_every: 1,
        checkpoint_every: 1,
        keep_best: Some("test_loss".into()),
        patience: Some(3),
        ..train_config(12)
    };
    let steps_logged = || -> Vec<u64> {
        read_jsonl(&tmp.path().join("metrics.jsonl"))
            .unwrap()
            .iter()
            .filter(|r| r.contains_key("train_loss"))
            .filter_map(|r| r.get("step")?.as_u64())
            .collect()
    };
    // Losses after steps 1..: 5 6 2 7 3 4 1 8 9 5 6 2. Interrupted at step 5
    // (two evaluations since step 3's 2.0), the resumed run counts on: the
    // third, at step 6, stops it there.
    trainer(tmp.path(), config.clone(), false)
        .stop_after(Some(5))
        .fit(Scripted::new(), &data(1), &device)
        .unwrap();
    let out = trainer(tmp.path(), config.clone(), true)
        .fit(Scripted::new(), &data(1), &device)
        .unwrap();
    assert_eq!((out.step, out.steps_this_call), (6, 1));
    assert_eq!(out.family.steps, 6);
    assert_eq!(steps_logged().last(), Some(&6), "the last window is logged");
    assert!(tmp.path().join("samples/final.png").exists());
    let ckpts = list_checkpoints(&tmp.path().join("checkpoints")).unwrap();
    assert_eq!(ckpts.last().unwrap().0, 6);
    // Resumed as it is, it has finished; with more patience it goes on.
    let again = trainer(tmp.path(), config.clone(), true)
        .fit(Scripted::new(), &data(1), &device)
        .unwrap();
    assert_eq!((again.step, again.steps_this_call), (6, 0));
    let more = TrainConfig {
        patience: Some(5),
        ..config.clone()
    };
    let rest = trainer(tmp.path(), more, true)
        .fit(Scripted::new(), &data(1), &device)
        .unwrap();
    assert_eq!(rest.step, 12, "step 7's 1.0 restarted the count");

    // Patience counts a watched metric's evaluations, on one device.
    for (patience, keep_best, why) in [
        (0, Some("test_loss"), "patience must be at least 1"),
        (2, None, "set keep_best"),
    ] {
        let bad = TrainConfig {
            patience: Some(patience),
            keep_best: keep_best.map(Into::into),
            ..config.clone()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    }
}
