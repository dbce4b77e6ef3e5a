//! Data-parallel training on burn-collective, on the CPU backend: N
//! replicas compute the update one device computes on the whole batch;
//! checkpoints move between one and several devices; a stop asked of one
//! replica (also during the leader's evaluation) stops them all at one step; two processes train
//! together over loopback; a node that dies or never connects is named.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use genzoo::core::record::param_values;
use genzoo::core::{CpuDevice, Family, ImageBatch, TrainData};
use genzoo::data::synthetic::write_idx_dataset;
use genzoo::data::{ImageData, ImageDataset, Scaling, synthetic};
use genzoo::models::ModelConfig;
use genzoo::models::ddpm::DdpmTrainer;
use genzoo::models::gan::GanTrainer;
use genzoo::models::vae::{VaeConfig, VaeTrainer};
use genzoo::train::data_parallel::{ParallelConfig, run_replicas};
use genzoo::train::{RunConfig, RunDir, TrainConfig, Trainer};

use crate::support::{
    StopsDuringEvaluation, checkpoint_steps, max_diff, rng_lock, run_dir, tiny_ddpm,
};

type B = Autodiff<Flex>;

/// Replica threads initialise their models one at a time.
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn lock(m: &'static std::sync::Mutex<()>) -> std::sync::MutexGuard<'static, ()> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn data(size: usize, batch: usize) -> ImageData {
    let (x, y) = synthetic::images(64, size, 10, 1);
    let (tx, ty) = synthetic::images(16, size, 10, 2);
    let train = ImageDataset::new(x, y, (1, size, size), vec![]).unwrap();
    let test = ImageDataset::new(tx, ty, (1, size, size), vec![]).unwrap();
    ImageData::new(train, test, batch, Scaling::Signed, 3).unwrap()
}

fn config(steps: u64, batch: usize) -> TrainConfig {
    TrainConfig {
        steps: Some(steps),
        batch_size: batch,
        lr: 2e-3,
        seed: 5,
        checkpoint_every: 2,
        keep_checkpoints: 10,
        samples: 4,
        ..Default::default()
    }
}

/// `make(device)` with the backend seeded first, under `INIT_LOCK`: the
/// replicas, built on their threads at once, start from the same weights as
/// a one-device run.
fn seeded_family<F>(make: impl FnOnce(&CpuDevice) -> F, device: &CpuDevice) -> F {
    let _init = lock(&INIT_LOCK);
    <Flex as Backend>::seed(device, 11);
    make(device)
}

/// Trains `steps` (of a `total`-step run) on `devices` replicas, resuming
/// from `dir` when asked, and returns the leader's family.
fn train<F, M>(
    make: M,
    data: &ImageData,
    dir: &Path,
    cfg: &TrainConfig,
    devices: usize,
    stop_after: Option<u64>,
    resume: bool,
) -> F
where
    F: Family<B, Batch = ImageBatch<B>> + Send,
    M: Fn(&CpuDevice) -> F + Sync,
{
    let run = run_dir(dir, resume);
    let trainer = || {
        Trainer::new(run.clone(), cfg.clone())
            .progress(false)
            .resume(resume)
            .stop_after(stop_after)
    };
    let init = |device: &CpuDevice| seeded_family(&make, device);
    if devices == 1 {
        let device = CpuDevice::default();
        return trainer().fit(init(&device), data, &device).unwrap().family;
    }
    let parallel = ParallelConfig {
        devices,
        ..Default::default()
    };
    run_replicas::<B, _>(
        &parallel,
        vec![CpuDevice::default(); devices],
        |_, device| trainer().fit_replica(init(&device), data, &device),
    )
    .unwrap()
    .into_iter()
    .next()
    .unwrap()
    .family
}

/// A 12×12 VAE small enough to train a few steps in no time.
fn tiny_vae() -> VaeConfig {
    VaeConfig {
        height: 12,
        width: 12,
        hidden: 32,
        latent: 4,
        ..Default::default()
    }
}

fn preset_model(name: &str) -> ModelConfig {
    RunConfig::from_preset(name).unwrap().model
}

#[test]
fn two_replicas_take_the_one_device_step_of_vae_mlp_and_dcgan_28() {
    let _g = rng_lock();
    let tmp = tempfile::tempdir().unwrap();

    // vae-mlp exactly as its preset, one step on a global batch of 16.
    let ModelConfig::Vae(vae) = preset_model("vae-mlp") else {
        panic!("vae-mlp is a VAE")
    };
    let mut images = data(28, 16);
    let cfg = config(1, 16);
    let make = |d: &CpuDevice| VaeTrainer::<B>::new(vae.clone(), d);
    let start = param_values(&make(&CpuDevice::default()).model);
    let one = train(
        make,
        &images,
        &tmp.path().join("vae1"),
        &cfg,
        1,
        None,
        false,
    );
    let two = train(
        make,
        &images,
        &tmp.path().join("vae2"),
        &cfg,
        2,
        None,
        false,
    );
    let (one, two) = (param_values(&one.model), param_values(&two.model));
    assert!(max_diff(&one, &start) > 1e-4, "the step changed nothing");
    assert!(
        max_diff(&one, &two) < 1e-5,
        "vae-mlp: 2 replicas differ from 1 device by {}",
        max_diff(&one, &two)
    );

    // dcgan-28 (BatchNorm in both networks: synchronised over replicas).
    // Adam's ε is raised for this comparison only: its first step moves
    // every weight by ±lr whatever the gradient's size, and the biases just
    // before a BatchNorm have an exact gradient of zero (the normalisation
    // cancels them), so float noise of 1e-10 would decide their sign on one
    // device and on two alike. With ε = 1 the step is proportional to the
    // gradient, which is what must agree.
    let ModelConfig::Gan(mut gan) = preset_model("dcgan-28") else {
        panic!("dcgan-28 is a GAN")
    };
    gan.adam_eps = 1.0;
    // With random flips, as a GAN on photographs trains: each replica takes
    // its rows of the one flipped global batch.
    images.hflip = true;
    let make = |d: &CpuDevice| GanTrainer::<B>::new(gan.clone(), d);
    let one = train(
        make,
        &images,
        &tmp.path().join("gan1"),
        &cfg,
        1,
        None,
        false,
    );
    let two = train(
        make,
        &images,
        &tmp.path().join("gan2"),
        &cfg,
        2,
        None,
        false,
    );
    for (name, a, b) in [
        (
            "generator",
            param_values(&one.generator),
            param_values(&two.generator),
        ),
        (
            "discriminator",
            param_values(&one.discriminator),
            param_values(&two.discriminator),
        ),
    ] {
        assert!(
            max_diff(&a, &b) < 1e-5,
            "dcgan-28 {name}: 2 replicas differ from 1 device by {}",
            max_diff(&a, &b)
        );
    }
    // Only the leader wrote checkpoints, in the one-device format.
    assert!(tmp.path().join("gan2/checkpoints").is_dir());
}

#[test]
fn two_replicas_drop_and_noise_as_one_device_does() {
    // A class-conditional DDPM with dropout in its U-Net: timesteps, noise,
    // label dropout and dropout masks are all per-example draws of the step's
    // stream, so two replicas must take exactly the one-device steps.
    let _g = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut ddpm = tiny_ddpm(10);
    ddpm.unet.dropout = 0.3;
    // As for dcgan-28 above: a step proportional to the gradient.
    ddpm.adam_eps = 1.0;
    let images = data(8, 16);
    let cfg = config(2, 16);
    let make = |d: &CpuDevice| DdpmTrainer::<B>::new(ddpm.clone(), d);
    let start = param_values(&make(&CpuDevice::default()).unet);
    let [one, two] = [1, 2].map(|devices| {
        let dir = tmp.path().join(format!("ddpm{devices}"));
        param_values(&train(make, &images, &dir, &cfg, devices, None, false).unet)
    });
    assert!(max_diff(&one, &start) > 1e-4, "the steps changed nothing");
    assert!(
        max_diff(&one, &two) < 1e-5,
        "ddpm with dropout: 2 replicas differ from 1 device by {}",
        max_diff(&one, &two)
    );
}

#[test]
fn micro_batches_take_the_whole_batch_step_alone_and_on_replicas() {
    // Gradient accumulation: a step split into micro-batches is the step on
    // the whole batch, noise, label dropout, dropout masks and EMA included,
    // on one device (uneven micro-batches of 5, 5 and 6) and inside each of
    // two replicas (micro-batches of 4 in shards of 8).
    let _g = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let mut ddpm = tiny_ddpm(10);
    ddpm.unet.dropout = 0.3;
    // A step proportional to the gradient, so that a wrongly scaled sum of
    // the micro-batches' gradients shows (Adam's ε = 1e-8 would hide it).
    ddpm.adam_eps = 1.0;
    let images = data(8, 16);
    let make = |d: &CpuDevice| DdpmTrainer::<B>::new(ddpm.clone(), d);
    let start = param_values(&make(&CpuDevice::default()).unet);
    let run = |name: &str, devices: usize, micro_batches: usize| {
        let cfg = TrainConfig {
            micro_batches,
            ..config(3, 16)
        };
        let family = train(
            make,
            &images,
            &tmp.path().join(name),
            &cfg,
            devices,
            None,
            false,
        );
        (param_values(&family.unet), param_values(family.ema_unet()))
    };
    let whole = run("whole", 1, 1);
    assert!(
        max_diff(&whole.0, &start) > 1e-4,
        "the steps changed nothing"
    );
    for (name, devices, micro_batches) in [("three", 1, 3), ("two-by-two", 2, 2)] {
        let split = run(name, devices, micro_batches);
        assert!(
            max_diff(&whole.0, &split.0) < 1e-6,
            "{name}: weights differ from the whole batch's by {}",
            max_diff(&whole.0, &split.0)
        );
        assert!(
            max_diff(&whole.1, &split.1) < 1e-6,
            "{name}: EMA weights differ by {} (an EMA update per micro-batch?)",
            max_diff(&whole.1, &split.1)
        );
    }
}

#[test]
fn uneven_shards_and_checkpoints_move_between_one_and_several_devices() {
    let _g = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let vae = tiny_vae();
    let make = |d: &CpuDevice| VaeTrainer::<B>::new(vae.clone(), d);
    // A global batch of 10 over 3 replicas: shards of 3, 3 and 4.
    let images = data(12, 10);
    let cfg = config(4, 10);
    let reference =
        param_values(&train(make, &images, &tmp.path().join("one"), &cfg, 1, None, false).model);
    // 3 replicas for 2 steps, then one device to the end.
    let a = tmp.path().join("three-then-one");
    train(make, &images, &a, &cfg, 3, Some(2), false);
    let a = param_values(&train(make, &images, &a, &cfg, 1, None, true).model);
    // One device for 2 steps, then 2 replicas to the end.
    let b = tmp.path().join("one-then-two");
    train(make, &images, &b, &cfg, 1, Some(2), false);
    let b = param_values(&train(make, &images, &b, &cfg, 2, None, true).model);
    assert!(
        max_diff(&reference, &a) < 1e-5,
        "{}",
        max_diff(&reference, &a)
    );
    assert!(
        max_diff(&reference, &b) < 1e-5,
        "{}",
        max_diff(&reference, &b)
    );
}

/// Trains a new run in `dir` on two replicas, replica `rank` stopping when
/// `flag(rank)` is set, and returns each replica's (step, interrupted).
fn two_replicas_with_stop_flags<D, F, M>(
    dir: &Path,
    cfg: &TrainConfig,
    data: &D,
    make: M,
    flag: impl Fn(usize) -> Arc<AtomicBool> + Sync,
) -> Vec<(u64, bool)>
where
    D: TrainData<B, Batch = ImageBatch<B>> + Sync,
    F: Family<B, Batch = ImageBatch<B>> + Send,
    M: Fn(&CpuDevice) -> F + Sync,
{
    let run = run_dir(dir, false);
    let parallel = ParallelConfig {
        devices: 2,
        ..Default::default()
    };
    run_replicas::<B, _>(&parallel, vec![CpuDevice::default(); 2], |r, d| {
        let family = seeded_family(&make, &d);
        Trainer::new(run.clone(), cfg.clone())
            .progress(false)
            .stop_when(flag(r.rank))
            .fit_replica(family, data, &d)
            .map(|o| (o.step, o.interrupted))
    })
    .unwrap()
}

#[test]
fn replicas_that_disagree_on_the_budget_or_the_data_are_refused_at_the_start() {
    let _g = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let vae = tiny_vae();
    let images = data(12, 10);
    // As many other images: the same batches per epoch, another fingerprint.
    let (x, y) = synthetic::images(64, 12, 10, 5);
    let train = ImageDataset::new(x, y, (1, 12, 12), vec![]).unwrap();
    let others = ImageData::new(train, data(12, 10).test, 10, Scaling::Signed, 3).unwrap();
    let parallel = ParallelConfig {
        devices: 2,
        ..Default::default()
    };
    // Replica 1's budget is one step longer (a variance of 0.25 over the
    // two), or its data differs.
    for (steps_1, data_1, expected) in [
        (6, &images, "starts at step 0 of"),
        (
            5,
            &others,
            "with 7 batches per epoch of training examples whose fingerprint begins",
        ),
    ] {
        let run = run_dir(&tmp.path().join(format!("r{steps_1}")), false);
        let err = run_replicas::<B, _>(&parallel, vec![CpuDevice::default(); 2], |r, d| {
            let family = seeded_family(|d| VaeTrainer::<B>::new(vae.clone(), d), &d);
            let (steps, data) = if r.rank == 1 {
                (steps_1, data_1)
            } else {
                (5, &images)
            };
            Trainer::new(run.clone(), config(steps, 10))
                .progress(false)
                .fit_replica(family, data, &d)
                .map(|o| o.step)
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("replicas disagree on where the run starts or on its data"),
            "{err}"
        );
        assert!(err.contains(expected), "{err}");
        assert!(checkpoint_steps(run.root()).is_empty());
    }
}

#[test]
fn a_stop_asked_of_one_replica_stops_all_at_one_checkpointed_step() {
    let _g = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let vae = tiny_vae();
    let make = |d: &CpuDevice| VaeTrainer::<B>::new(vae.clone(), d);
    let images = data(12, 10);
    let cfg = config(5, 10);
    let reference =
        param_values(&train(make, &images, &tmp.path().join("one"), &cfg, 1, None, false).model);

    // Only replica 1 is asked (as a signal reaching one node would): had
    // the leader gone on alone, its next all-reduce would wait forever.
    let dir = tmp.path().join("stopped");
    let outcomes = two_replicas_with_stop_flags(&dir, &cfg, &images, make, |rank| {
        Arc::new(AtomicBool::new(rank == 1))
    });
    assert_eq!(outcomes, [(1, true), (1, true)]);
    // Step 1 is no multiple of checkpoint_every (2): checkpointed for the stop.
    assert_eq!(checkpoint_steps(&dir), [1]);
    let resumed = param_values(&train(make, &images, &dir, &cfg, 2, None, true).model);
    assert!(
        max_diff(&reference, &resumed) < 1e-5,
        "{}",
        max_diff(&reference, &resumed)
    );
}

#[test]
fn a_stop_asked_during_the_leaders_evaluation_stops_all_at_that_step() {
    let _g = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let vae = tiny_vae();
    let make = |d: &CpuDevice| VaeTrainer::<B>::new(vae.clone(), d);
    // Only the leader evaluates, and its evaluation asks it (alone) to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let images = StopsDuringEvaluation {
        data: data(12, 10),
        stop: stop.clone(),
    };
    let cfg = TrainConfig {
        eval_every: 2,
        ..config(5, 10)
    };
    let dir = tmp.path().join("run");
    let outcomes = two_replicas_with_stop_flags(&dir, &cfg, &images, make, |rank| {
        if rank == 0 {
            stop.clone()
        } else {
            Arc::new(AtomicBool::new(false))
        }
    });
    // The first evaluation is after step 2: every replica ends there,
    // not after step 3.
    assert_eq!(outcomes, [(2, true), (2, true)]);
    assert_eq!(checkpoint_steps(&dir), [2]);
}

#[test]
fn early_stopping_is_refused_on_replicas() {
    // Only the leader evaluates, so the others could not stop with it.
    let _g = rng_lock();
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path(), false).unwrap();
    let cfg = TrainConfig {
        keep_best: Some("test_neg_elbo".into()),
        patience: Some(2),
        ..config(2, 8)
    };
    let vae = VaeConfig {
        height: 12,
        width: 12,
        hidden: 8,
        latent: 2,
        ..Default::default()
    };
    let images = data(12, 8);
    let parallel = ParallelConfig {
        devices: 2,
        ..Default::default()
    };
    let err = run_replicas::<B, _>(&parallel, vec![CpuDevice::default(); 2], |_, d| {
        let family = {
            let _init = lock(&INIT_LOCK);
            VaeTrainer::<B>::new(vae.clone(), &d)
        };
        Trainer::new(run.clone(), cfg.clone())
            .progress(false)
            .fit_replica(family, &images, &d)
    })
    .err()
    .expect("must refuse");
    assert!(
        err.to_string()
            .contains("early stopping (patience) runs on one device"),
        "{err}"
    );
}

#[test]
fn a_replica_that_fails_stops_the_others_with_its_error() {
    let _g = rng_lock();
    let parallel = ParallelConfig {
        devices: 2,
        ..Default::default()
    };
    let started = Instant::now();
    let err = run_replicas::<B, _>(&parallel, vec![CpuDevice::default(); 2], |replica, d| {
        let _ = genzoo::core::parallel::all_reduce_values::<Flex>(&[1.0], 1.0, &replica, &d)?;
        if replica.rank == 1 {
            return Err(genzoo::core::Error::Data(
                "replica 1 ran out of data".into(),
            ));
        }
        // Rank 0 waits in the next collective for a peer that has left.
        genzoo::core::parallel::all_reduce_values::<Flex>(&[1.0], 1.0, &replica, &d)
    })
    .map(|_| ())
    .unwrap_err();
    assert!(
        err.to_string().contains("replica 1 ran out of data"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // The collective is clean again for the next run.
    let sums = run_replicas::<B, _>(&parallel, vec![CpuDevice::default(); 2], |replica, d| {
        genzoo::core::parallel::all_reduce_values::<Flex>(&[replica.rank as f64], 1.0, &replica, &d)
    })
    .unwrap();
    assert_eq!(sums, vec![vec![0.5], vec![0.5]]);
}

// ---- Two processes over loopback -------------------------------------

fn free_port() -> u16 {
    // Four consecutive free ports: the orchestrator, the liveness link and
    // one data port per node.
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if p < 60000 && (1..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            return p;
        }
    }
}

/// A `genzoo` process that is killed if the test ends (or fails) first.
struct Node(Option<Child>);

impl Node {
    fn kill(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn node(dir: &Path, rank: usize, port: u16, extra: &[&str]) -> Node {
    let port = format!("127.0.0.1:{port}");
    let rank = rank.to_string();
    let mut args = vec![
        "train",
        "vae-mlp",
        "--dataset",
        "idx:digits",
        "--batch-size",
        "16",
        "--nodes",
        "2",
        "--node-rank",
        &rank,
        "--coordinator",
        &port,
    ];
    args.extend_from_slice(extra);
    Node(Some(
        Command::new(env!("CARGO_BIN_EXE_genzoo"))
            .args(&args)
            .current_dir(dir)
            .env("GENZOO_OFFLINE", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start genzoo"),
    ))
}

/// Waits for the node at most `limit`, killing it past that.
fn finish(mut node: Node, limit: Duration) -> Output {
    let mut child = node.0.take().expect("a running node");
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "genzoo ran past {limit:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn test_line(out: &Output) -> String {
    text(out)
        .lines()
        .find(|l| l.starts_with("test: "))
        .unwrap_or_else(|| panic!("no test line in:\n{}", text(out)))
        .to_string()
}

#[test]
fn two_nodes_over_loopback_train_as_one_device_and_a_lost_node_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 64, 16, 28, 10).unwrap();
    let limit = Duration::from_secs(120);

    // One device, for reference.
    let one = Command::new(env!("CARGO_BIN_EXE_genzoo"))
        .args([
            "train",
            "vae-mlp",
            "--dataset",
            "idx:digits",
            "--batch-size",
            "16",
            "--steps",
            "6",
            "--out",
            "one",
        ])
        .current_dir(dir)
        .env("GENZOO_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(one.status.success(), "{}", text(&one));

    // Two nodes sharing the run directory (as on a shared file system).
    let port = free_port();
    let steps = ["--steps", "6", "--out", "two", "--peer-timeout", "60"];
    let leader = node(dir, 0, port, &steps);
    let follower = node(dir, 1, port, &steps);
    let (leader, follower) = (finish(leader, limit), finish(follower, limit));
    assert!(leader.status.success(), "node 0:\n{}", text(&leader));
    assert!(follower.status.success(), "node 1:\n{}", text(&follower));
    assert_eq!(test_line(&leader), test_line(&one));
    assert!(dir.join("two/checkpoints").is_dir());

    // Node 1 never comes: node 0 names it after the timeout.
    let port = free_port();
    let started = Instant::now();
    let alone = finish(
        node(
            dir,
            0,
            port,
            &["--steps", "6", "--out", "alone", "--peer-timeout", "3"],
        ),
        limit,
    );
    assert!(!alone.status.success());
    assert!(
        text(&alone).contains("node(s) 1 did not connect"),
        "{}",
        text(&alone)
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    // Node 1 dies mid-run: node 0 stops with an error naming it, and the
    // run's last checkpoint resumes on one device.
    let port = free_port();
    let long = [
        "--steps",
        "100000",
        "--out",
        "lost",
        "--checkpoint-every",
        "5",
        "--peer-timeout",
        "20",
    ];
    let leader = node(dir, 0, port, &long);
    let mut follower = node(dir, 1, port, &long);
    let checkpoints = dir.join("lost/checkpoints");
    let started = Instant::now();
    while !std::fs::read_dir(&checkpoints).is_ok_and(|mut d| d.next().is_some()) {
        assert!(started.elapsed() < limit, "no checkpoint was written");
        std::thread::sleep(Duration::from_millis(50));
    }
    follower.kill();
    let killed = Instant::now();
    let leader = finish(leader, limit);
    assert!(!leader.status.success());
    assert!(
        text(&leader).contains("node 1 disconnected"),
        "{}",
        text(&leader)
    );
    // burn's network log, written to a pipe (a job's log file), in plain
    // text; the panics of its network layer, each with a backtrace before
    // the error, summed up in a line after it.
    let said = text(&leader);
    assert!(
        said.contains("ERROR burn_") && !said.contains('\x1b'),
        "{said:?}"
    );
    let panics = ["burn-collective", "burn-communication"].map(|name| {
        said.lines()
            .filter(|l| l.contains("panicked at") && l.contains(name))
            .count()
    });
    assert_eq!(panics, [0, 0], "{said}");
    assert!(killed.elapsed() < Duration::from_secs(40));
    let resumed = Command::new(env!("CARGO_BIN_EXE_genzoo"))
        .args([
            "train",
            "vae-mlp",
            "--dataset",
            "idx:digits",
            "--batch-size",
            "16",
            "--steps",
            "300",
            "--out",
            "lost",
            "--resume",
        ])
        .current_dir(dir)
        .env("GENZOO_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(
        text(&resumed).contains("resuming from"),
        "{}",
        text(&resumed)
    );
}
