//! `genzoo train` and `genzoo resume`: the flags, the data, and the
//! training job on one device or as data-parallel replicas.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::tensor::backend::{AutodiffBackend, Backend};
use clap::Args;
use genzoo_core::backend::{BackendTask, with_backend};
use genzoo_core::error::panic_message;
use genzoo_core::vocabulary::Vocabulary;
use genzoo_core::{BackendKind, Error, Family, ImageBatch, Result, TokenBatch};
use genzoo_data::{
    DatasetSource, ImageData, ImageDataset, Locator, TextCorpus, TextData, load_image_dataset,
};
use genzoo_models::ModelConfig;
use genzoo_models::presets::{FamilyTask, with_family};
use genzoo_train::checkpoint::{self, find_checkpoint};
use genzoo_train::data_parallel::run_replicas;
use genzoo_train::{RunConfig, RunDir, RunLock, TrainOutcome, Trainer};

use super::eval::cached_evaluator;
use super::{interrupt, with_backend_on_pool};

#[derive(Args, Debug)]
pub(super) struct TrainArgs {
    /// The preset to train (`vae-mlp`, `vae-conv`, `beta-vae`, `cvae-mlp`, ...).
    preset: String,
    /// Run directory (default: runs/<preset>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A TOML file with any of config.toml's keys, laid over the preset.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Continue the run in --out from its newest good checkpoint.
    #[arg(long)]
    resume: bool,
    /// Replace the contents of a non-empty --out.
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Start from the weights of another run of this preset (its newest
    /// good checkpoint, or the one given: RUN/checkpoints/best,
    /// RUN/checkpoints/step-N) with a fresh optimizer and schedule:
    /// fine-tuning, on other data or with another recipe. The model and its
    /// config (a text model's vocabulary too) are that run's.
    #[arg(long, value_name = "RUN", conflicts_with = "resume")]
    init_from: Option<PathBuf>,
    #[command(flatten)]
    overrides: Overrides,
}

/// Flags that override the config (and the preset's recipe).
#[derive(Args, Debug, Default)]
pub(super) struct Overrides {
    /// `mnist`, `fashion-mnist`, `cifar-10`, `idx:<DIR>` (MNIST-format
    /// files) or `folder:<DIR>` (PNG/JPEG/BMP images, class subfolders optional).
    #[arg(long)]
    dataset: Option<String>,
    /// Directory with the dataset's files (IDX raw or .gz; CIFAR-10's batches).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Resize a folder dataset's images (shorter side, then a centre crop) to N×N.
    #[arg(long)]
    image_size: Option<usize>,
    /// Flip each training image left to right with probability 1/2: the
    /// usual augmentation for photographs (CIFAR-10, image folders), not for
    /// digits.
    #[arg(long)]
    hflip: bool,
    /// Examples per optimizer step (the global batch of a data-parallel run).
    #[arg(long)]
    batch_size: Option<usize>,
    /// Split each step's batch into N micro-batches (one forward and backward
    /// pass each, one update with their summed gradients): the same training
    /// in the memory of a smaller batch. Not for GANs.
    #[arg(long, value_name = "N")]
    micro_batches: Option<usize>,
    /// Also keep the checkpoint with the lowest value of this held-out
    /// metric (val_loss, test_neg_elbo, ...) in checkpoints/best; `sample`
    /// and `eval` take it with --checkpoint best.
    #[arg(long, value_name = "METRIC")]
    keep_best: Option<String>,
    /// Stop early after N evaluations in a row without a better --keep-best
    /// metric.
    #[arg(long, value_name = "N")]
    patience: Option<u64>,
    /// Base learning rate (the peak of a warm-up/cosine schedule).
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of initialisation, data order and noise.
    #[arg(long)]
    seed: Option<u64>,
    /// Budget in optimizer steps (replaces --epochs and --minutes).
    #[arg(long, conflicts_with_all = ["epochs", "minutes"])]
    steps: Option<u64>,
    /// Budget in epochs (replaces --steps and --minutes).
    #[arg(long, conflicts_with = "minutes")]
    epochs: Option<u64>,
    /// Budget in minutes of training time: the steps are planned from a
    /// timing of the first ones, so the learning-rate schedule completes
    /// (replaces --steps and --epochs).
    #[arg(long)]
    minutes: Option<f64>,
    /// Use only the first N training and test images.
    #[arg(long)]
    limit: Option<usize>,
    /// A text file to train a language model (gpt-char) on: UTF-8, or any
    /// file with --bytes.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Byte-level tokens (256) instead of the text's characters: any file,
    /// UTF-8 or not, and samples are written as the bytes the model emits.
    #[arg(long)]
    bytes: bool,
    /// Checkpoint every N steps (0: every epoch).
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Sample grid every N steps (0: at the end only).
    #[arg(long)]
    sample_every: Option<u64>,
    /// Evaluate on the test split every N steps (0: every epoch).
    #[arg(long)]
    eval_every: Option<u64>,
    /// Evaluate on at most N held-out batches (text models: 200 random
    /// windows by default, nanoGPT's eval_iters; images: the whole split).
    #[arg(long)]
    eval_batches: Option<usize>,
    /// Write training metrics every N steps.
    #[arg(long)]
    log_every: Option<u64>,
    /// At each evaluation, also log the FID and KID of N samples (the same
    /// noise each time) as test_fid and test_kid: the dataset's evaluator
    /// is trained and cached first if needed. Fewer samples than `eval`'s
    /// 10,000 give a higher FID; `--keep-best test_fid` keeps the best.
    #[arg(long, value_name = "N")]
    fid_samples: Option<usize>,
    /// Write no TensorBoard event files (by default the run directory gets
    /// its metrics, sample grids and text samples as TensorBoard shows them).
    #[arg(long)]
    no_tensorboard: bool,
    /// cpu (default), wgpu or cuda (the latter two need the cargo features of the same names).
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// Data-parallel replicas on this machine: GPUs 0..N (wgpu, cuda), or N
    /// peers sharing the CPU device. The batch size stays the global batch.
    #[arg(long)]
    devices: Option<usize>,
    /// Machines taking part (each runs --devices replicas).
    #[arg(long)]
    nodes: Option<usize>,
    /// This machine's rank among --nodes (0 coordinates and writes the run).
    #[arg(long)]
    node_rank: Option<usize>,
    /// HOST:PORT of node 0 (burn's orchestrator on PORT; PORT+1 and PORT+2+rank used too).
    #[arg(long)]
    coordinator: Option<String>,
    /// The address the other nodes reach this one at (default: the coordinator's, if loopback).
    #[arg(long)]
    node_host: Option<String>,
    /// Seconds without progress or a node's connection before the run stops with an error.
    #[arg(long)]
    peer_timeout: Option<u64>,
}

impl Overrides {
    fn apply(&self, c: &mut RunConfig) {
        if let Some(v) = &self.dataset {
            c.data.dataset = v.clone();
        }
        if let Some(v) = &self.data_dir {
            c.data.data_dir = Some(v.clone());
        }
        if let Some(v) = self.limit {
            c.data.limit = Some(v);
        }
        if let Some(v) = self.image_size {
            c.data.image_size = Some(v);
        }
        if self.hflip {
            c.data.hflip = true;
        }
        if let Some(v) = &self.text {
            c.data.text = Some(v.clone());
        }
        if self.bytes {
            c.data.bytes = true;
        }
        let t = &mut c.train;
        if let Some(v) = self.batch_size {
            t.batch_size = v;
        }
        if let Some(v) = self.micro_batches {
            t.micro_batches = v;
        }
        if let Some(v) = &self.keep_best {
            t.keep_best = Some(v.clone());
        }
        if let Some(v) = self.patience {
            t.patience = Some(v);
        }
        if let Some(v) = self.lr {
            t.lr = v;
        }
        if let Some(v) = self.seed {
            t.seed = v;
        }
        if let Some(v) = self.steps {
            (t.steps, t.epochs, t.minutes) = (Some(v), None, None);
        }
        if let Some(v) = self.epochs {
            (t.steps, t.epochs, t.minutes) = (None, Some(v), None);
        }
        if let Some(v) = self.minutes {
            (t.steps, t.epochs, t.minutes) = (None, None, Some(v));
        }
        if let Some(v) = self.checkpoint_every {
            t.checkpoint_every = v;
        }
        if let Some(v) = self.sample_every {
            t.sample_every = v;
        }
        if let Some(v) = self.eval_every {
            t.eval_every = v;
        }
        if let Some(v) = self.eval_batches {
            t.eval_batches = Some(v);
        }
        if let Some(v) = self.log_every {
            t.log_every = v;
        }
        if let Some(v) = self.fid_samples {
            t.fid_samples = v;
        }
        if self.no_tensorboard {
            t.tensorboard = false;
        }
        let p = &mut c.parallel;
        if let Some(v) = self.devices {
            p.devices = v;
        }
        if let Some(v) = self.nodes {
            p.nodes = v;
        }
        if let Some(v) = self.node_rank {
            p.node_rank = v;
        }
        if let Some(v) = &self.coordinator {
            p.coordinator = Some(v.clone());
        }
        if let Some(v) = &self.node_host {
            p.node_host = Some(v.clone());
        }
        if let Some(v) = self.peer_timeout {
            p.peer_timeout_s = v;
        }
    }
}

/// `genzoo resume RUN`: `train` of the run's preset into RUN, resuming.
pub(super) fn resume(run: PathBuf, overrides: Overrides) -> Result<()> {
    let config = RunDir::open(&run)?.load_config()?;
    train(TrainArgs {
        preset: config.preset,
        out: Some(run),
        config: None,
        resume: true,
        overwrite: false,
        init_from: None,
        overrides,
    })
}

pub(super) fn train(args: TrainArgs) -> Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&args.preset));
    let existing = out.join("config.toml");
    let mut config = if args.resume && existing.exists() {
        let mut c = RunConfig::load(&existing)?;
        // Devices and machines are chosen per call: a run trained on several
        // resumes on one unless the flags (or --config) say otherwise.
        c.parallel = Default::default();
        if c.preset != args.preset {
            return Err(Error::Config(format!(
                "{} is a run of '{}', not '{}'",
                out.display(),
                c.preset,
                args.preset
            )));
        }
        match &args.config {
            Some(path) => c.merge_toml(
                &std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?,
                &path.display().to_string(),
            )?,
            None => c,
        }
    } else {
        match &args.config {
            Some(path) => RunConfig::from_file(path, Some(&args.preset))?,
            None => RunConfig::from_preset(&args.preset)?,
        }
    };
    args.overrides.apply(&mut config);
    if let Some(source) = &args.init_from {
        config.train.init_from = Some(source.clone());
    }
    if args.overrides.data_dir.is_some() {
        if config.model.reads_text() {
            return Err(Error::Config(
                "--data-dir says where an image dataset's files are; a text model reads --text FILE"
                    .into(),
            ));
        }
        check_data_dir_flag(&config.data.image_source()?)?;
    }
    start_training(
        config,
        &out,
        args.resume,
        args.overwrite,
        args.overrides.backend,
    )
    .map(|_| ())
}

/// Refuses `--data-dir` for a dataset that would ignore it (one that names
/// its own directory), rather than leave the user believing it was read.
pub(super) fn check_data_dir_flag(source: &DatasetSource) -> Result<()> {
    if source.reads_data_dir() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "--data-dir says where mnist, fashion-mnist or cifar-10 are; {} names its own directory",
        source.name()
    )))
}

/// What a training call did.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TrainSummary {
    /// Steps taken by this call.
    pub steps_this_call: u64,
    /// The run's step after the call.
    pub step: u64,
    /// The run's planned steps.
    pub total_steps: u64,
    /// Seconds spent in training steps by this call.
    pub train_seconds: f64,
    /// Seconds spent in training steps over every call of the run.
    pub total_train_seconds: f64,
    /// Trainable parameters.
    pub params: usize,
    /// The last evaluation: the split's name, its step and its metrics.
    pub last_eval: Option<(&'static str, u64, genzoo_core::Metrics)>,
    /// Training batches per epoch.
    pub per_epoch: usize,
    /// The call stopped early on a signal, after checkpointing its last step.
    pub interrupted: bool,
}

impl TrainSummary {
    /// What the engine's `outcome` says of a call that trained a model of
    /// `params` parameters on `data`.
    fn new<B: Backend, F>(
        outcome: TrainOutcome<F>,
        params: usize,
        data: &impl genzoo_core::TrainData<B>,
    ) -> Self {
        Self {
            steps_this_call: outcome.steps_this_call,
            step: outcome.step,
            total_steps: outcome.total_steps,
            train_seconds: outcome.train_seconds,
            total_train_seconds: outcome.total_train_seconds,
            params,
            last_eval: outcome
                .last_eval
                .zip(outcome.last_eval_step)
                .map(|(m, at)| (data.eval_split(), at, m)),
            per_epoch: data.batches_per_epoch(),
            interrupted: outcome.interrupted,
        }
    }
}

/// Loads the data `config` names, writes the run's config and trains
/// (resuming when asked).
pub(crate) fn start_training(
    mut config: RunConfig,
    out: &Path,
    resume: bool,
    overwrite: bool,
    backend: BackendKind,
) -> Result<TrainSummary> {
    if resume {
        keep_source_model(&mut config, out)?;
    } else {
        take_source_model(&mut config, out)?;
    }
    config.train.validate()?;
    config
        .model
        .check_micro_batches(config.train.micro_batches)?;
    config.parallel.validate()?;

    // Fail before anything is written when the backend cannot run.
    genzoo_core::backend::check_available(backend)?;
    let (data, scoring) = if config.model.reads_text() {
        if config.train.fid_samples > 0 {
            return Err(Error::Config(format!(
                "fid_samples scores images; {} reads text (its held-out metric is val_loss)",
                config.preset
            )));
        }
        (load_text(&mut config)?, None)
    } else {
        load_images(&mut config)?
    };
    config.model.validate()?;
    if let (false, Some(source)) = (resume, &config.train.init_from) {
        // The model as this data shapes it must be the checkpoint's: say
        // so before anything is written (the engine checks again).
        checkpoint::verify_source(source, &config.identity()?)?;
    }
    // After every check, since training an evaluator takes minutes; before
    // anything is written.
    let evaluator = scoring
        .map(|d| cached_evaluator(&d.name, &d.train, &d.test))
        .transpose()?;

    // Node 0 owns the run directory; the other nodes of a multi-node run
    // only read it (their checkpoints to resume from), and may share it.
    let owner = config.parallel.node_rank == 0;
    // Held until training ends: another process training this directory
    // meanwhile (or replacing it with --overwrite) is refused.
    let _lock = owner.then(|| RunLock::acquire(out)).transpose()?;
    let run = if resume || !owner {
        RunDir::open(out)
            .or_else(|_| RunDir::create(out, false))
            .or_else(|_| RunDir::open(out))?
    } else {
        RunDir::create(out, overwrite)?
    };
    let text = config.to_toml()?;
    // What a resume finds, to put back if it fails before it checkpoints:
    // its settings then reached no checkpoint, and a later plain resume
    // must not take them up unsaid.
    let before = match (resume && owner, std::fs::read(run.config_file())) {
        (true, Ok(previous)) if previous != text.as_bytes() => {
            Some((previous, run.checkpoint_manifests()?))
        }
        _ => None,
    };
    if owner {
        std::fs::write(run.config_file(), &text).map_err(|e| Error::io(run.config_file(), e))?;
    }
    // From here a signal stops training after a checkpointed step.
    let (armed, stop) = interrupt::arm();
    let job = TrainJob {
        config,
        run: run.clone(),
        data,
        resume,
        text,
        stop: stop.clone(),
        evaluator,
    };
    // A panic (a bug, or a backend's internal failure) ends training as an
    // error does, so that the run directory is put right below.
    let trained = catch_unwind(AssertUnwindSafe(|| {
        if job.config.parallel.is_parallel() {
            // Replicas run on their own threads while this one waits for them:
            // it must not hold a thread of the pool their kernels need.
            with_backend(backend, job)
        } else {
            with_backend_on_pool(backend, job)
        }
    }))
    .unwrap_or_else(|panic| {
        Err(Error::Other(format!(
            "training stopped on an internal error, a bug in genzoo or its backend (where it \
             happened is printed above): {}",
            panic_message(&panic)
        )))
    });
    drop(armed);
    // Stopped by a signal here or (on another node) there; or finished in
    // the step the signal came in, after which a compare must not go on
    // to its next run.
    let trained = trained.and_then(|summary| {
        if summary.interrupted || stop.load(Ordering::SeqCst) {
            Err(Error::Interrupted {
                step: summary.step,
                total: summary.total_steps,
                resume: format!("genzoo resume {}", out.display()),
            })
        } else {
            Ok(summary)
        }
    });
    // A new run refused by the engine (a metric it does not log, a family
    // that cannot split its steps) or failing at its first step leaves only
    // the config.toml written above: clear it, so that the corrected
    // command needs no --overwrite. The training error is the one reported
    // whatever the clearing does.
    if let (Err(_), Some((previous, manifests))) = (&trained, before) {
        let unchanged = run.checkpoint_manifests().is_ok_and(|now| now == manifests);
        if unchanged {
            match std::fs::write(run.config_file(), &previous) {
                Ok(()) => eprintln!(
                    "{} keeps the config.toml it had: this call's settings reached no checkpoint",
                    out.display()
                ),
                Err(e) => eprintln!(
                    "warning: {} holds this failed call's settings ({e}): edit it back or pass the flags again",
                    run.config_file().display()
                ),
            }
        }
    }
    if trained.is_err() && owner && !resume {
        match run.clear_if_unstarted() {
            Ok(true) => eprintln!(
                "{} is left empty: the run stopped before its first checkpoint, so none of its steps were kept",
                out.display()
            ),
            // It logged steps (then failed its first checkpoint, or hit a
            // NaN) and keeps that log: say how to start it again.
            Ok(false) if run.checkpoint_manifests().is_ok_and(|m| m.is_empty()) => eprintln!(
                "{} keeps what this run logged but no checkpoint: `genzoo resume {}` trains it again from step 0 (with a fresh log), --overwrite replaces it",
                out.display(),
                out.display()
            ),
            Ok(false) => {}
            Err(e) => eprintln!("warning: {} was not cleared: {e}", out.display()),
        }
    }
    trained
}

/// A new run starting from another run's weights (`train.init_from`)
/// takes that run's model config in place of the preset's, and its
/// `init_from` becomes the absolute path of the checkpoint it names (a run
/// directory names its newest good one): what a resume with no checkpoint
/// of its own starts from again.
fn take_source_model(config: &mut RunConfig, out: &Path) -> Result<()> {
    let Some(given) = config.train.init_from.clone() else {
        return Ok(());
    };
    let checkpoint = source_checkpoint(&given)?;
    let source_file = checkpoint.join("config.toml");
    if !source_file.is_file() {
        return Err(Error::checkpoint(
            &checkpoint,
            "it holds no config.toml, so its model's config is unknown",
        ));
    }
    let source = RunConfig::load(&source_file)?;
    if source.preset != config.preset {
        return Err(Error::Config(format!(
            "--init-from {}: a checkpoint of '{}', not '{}': train {} to start from it",
            given.display(),
            source.preset,
            config.preset,
            source.preset
        )));
    }
    // Model keys set for this run would be dropped: refuse them instead.
    let preset_model = RunConfig::from_preset(&config.preset)?.model;
    if config.model != preset_model && config.model != source.model {
        return Err(Error::Config(format!(
            "--init-from {}: a run started from another's weights has that run's model; leave \
             the [model] keys out of the config",
            given.display()
        )));
    }
    if let Some(vocabulary) = source.model.text_vocabulary() {
        let reads_bytes = vocabulary == Vocabulary::Bytes;
        if config.data.bytes && !reads_bytes {
            return Err(Error::Config(format!(
                "--init-from {}: its model reads characters, not bytes: leave out --bytes",
                given.display()
            )));
        }
        config.data.bytes = reads_bytes;
    }
    let checkpoint = checkpoint
        .canonicalize()
        .map_err(|e| Error::io(&checkpoint, e))?;
    let out_path = match out.canonicalize() {
        Ok(path) => path,
        Err(_) => std::path::absolute(out).map_err(|e| Error::io(out, e))?,
    };
    if checkpoint.starts_with(&out_path) {
        // --overwrite would delete the weights before they are read.
        return Err(Error::Config(format!(
            "--init-from {} lies in --out {}: start the new run in another directory",
            given.display(),
            out.display()
        )));
    }
    config.model = source.model;
    config.train.init_from = Some(checkpoint);
    Ok(())
}

/// The checkpoint `--init-from` names: itself, or a run directory's newest
/// good one.
fn source_checkpoint(given: &Path) -> Result<PathBuf> {
    if given.join("manifest.json").is_file() {
        return Ok(given.to_path_buf());
    }
    if !(given.join("config.toml").is_file() && given.join("checkpoints").is_dir()) {
        return Err(Error::Config(format!(
            "--init-from {}: neither a run directory nor one of its checkpoints",
            given.display()
        )));
    }
    let run = RunDir::open(given)?;
    let identity = run.load_config()?.identity()?;
    let (checkpoint, _) = find_checkpoint(&run.checkpoints_dir(), &identity, "latest", |w| {
        eprintln!("{w}")
    })?;
    Ok(checkpoint)
}

/// A resumed run that started from another run's weights keeps the model it
/// took then, as its config.toml records it, where the config given is the
/// preset's (a `compare` builds each run's config again from the
/// experiment): the source need not be there any more.
fn keep_source_model(config: &mut RunConfig, out: &Path) -> Result<()> {
    let file = out.join("config.toml");
    if config.train.init_from.is_none() || !file.is_file() {
        return Ok(());
    }
    let own = RunConfig::load(&file)?;
    if own.preset == config.preset
        && own.train.init_from.is_some()
        && config.model == RunConfig::from_preset(&config.preset)?.model
    {
        config.model = own.model;
        config.data.bytes = own.data.bytes;
        config.train.init_from = own.train.init_from;
    }
    Ok(())
}

/// The data of a run: images or a text corpus, as the model reads.
enum JobData {
    Images(ImageData),
    Text(TextData),
}

/// The dataset whose evaluator scores a run's `fid_samples`: all of it,
/// whatever the limit, so that the evaluator is the one `eval` uses.
struct ScoringData {
    name: String,
    train: ImageDataset,
    test: ImageDataset,
}

/// The run's images, and what its `fid_samples` are scored on (node 0
/// only: its leader evaluates).
fn load_images(config: &mut RunConfig) -> Result<(JobData, Option<ScoringData>)> {
    let source = config.data.image_source()?;
    let (mut train_set, mut test_set) =
        load_image_dataset(&source, &Locator::from_env(config.data.data_dir.clone()))?;
    let scoring =
        (config.train.fid_samples > 0 && config.parallel.node_rank == 0).then(|| ScoringData {
            name: source.name(),
            train: train_set.clone(),
            test: test_set.clone(),
        });
    if let Some(n) = config.data.limit {
        (train_set, test_set) = (train_set.take(n), test_set.take(n));
    }
    let (c, h, w) = train_set.dims();
    config.model.adapt_to_data(c, h, w, train_set.num_classes());
    eprintln!(
        "{}: {} training and {} test images of {c}x{h}x{w}",
        source.name(),
        train_set.len(),
        test_set.len()
    );
    if let (Err(Error::Config(why)), DatasetSource::Folder { .. }) =
        (config.model.validate(), &source)
    {
        // The usual cause: the folder's image size does not suit the model.
        return Err(Error::Config(format!(
            "{why} (the images are {h}x{w}: --image-size N resizes them to N×N)"
        )));
    }
    let mut data = ImageData::new(
        train_set,
        test_set,
        config.train.batch_size,
        config.data.scaling,
        config.train.seed,
    )?;
    data.hflip = config.data.hflip;
    Ok((JobData::Images(data), scoring))
}

fn load_text(config: &mut RunConfig) -> Result<JobData> {
    if config.data.hflip {
        return Err(Error::Config(format!(
            "hflip flips training images; {} reads text",
            config.preset
        )));
    }
    let path = config.data.text.clone().ok_or_else(|| {
        Error::Config(format!(
            "{} trains on text: pass --text FILE (UTF-8 text, or any file with --bytes)",
            config.preset
        ))
    })?;
    let corpus = match (&config.train.init_from, config.model.text_vocabulary()) {
        // The model's own tokens: it goes on from weights that learned them.
        (Some(source), Some(vocabulary)) => {
            TextCorpus::from_file_in(&path, vocabulary).map_err(|e| {
                Error::Data(format!(
                    "{e} (the run starts from the weights of {}, which read its characters only)",
                    source.display()
                ))
            })?
        }
        _ => TextCorpus::from_file(&path, config.data.bytes)?,
    };
    config
        .model
        .adapt_to_text(corpus.vocabulary.chars_string(), corpus.vocabulary.len());
    let ModelConfig::Gpt(gpt) = &config.model else {
        unreachable!("only GPTs read text")
    };
    eprintln!(
        "{}: {} training and {} validation tokens, vocabulary of {}",
        path.display(),
        corpus.train.len(),
        corpus.val.len(),
        corpus.vocabulary.len()
    );
    let eval_batches = config.train.eval_batches.unwrap_or(200);
    Ok(JobData::Text(TextData::new(
        corpus,
        gpt.block_size,
        config.train.batch_size,
        config.train.seed,
        eval_batches,
    )?))
}

struct TrainJob<D = JobData> {
    config: RunConfig,
    run: RunDir,
    data: D,
    resume: bool,
    text: String,
    /// Set by a signal: stop after the step in progress ([`Trainer::stop_when`]).
    stop: Arc<AtomicBool>,
    /// The cached evaluator of `fid_samples` ([`Trainer::sample_quality`]).
    evaluator: Option<PathBuf>,
}

impl TrainJob {
    /// The job without its data, and the data.
    fn split(self) -> (TrainJob<()>, JobData) {
        let TrainJob {
            config,
            run,
            data,
            resume,
            text,
            stop,
            evaluator,
        } = self;
        (
            TrainJob {
                config,
                run,
                data: (),
                resume,
                text,
                stop,
                evaluator,
            },
            data,
        )
    }
}

impl BackendTask for TrainJob {
    type Output = TrainSummary;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<TrainSummary> {
        let model = self.config.model.clone();
        // A seeded initialisation: the same seed, the same starting weights.
        B::seed(
            &device,
            genzoo_core::seed::derive(self.config.train.seed, "init", 0),
        );
        with_family::<B, _>(
            &model,
            &device,
            FitJob {
                job: self,
                device: device.clone(),
            },
        )
    }

    fn devices(&self) -> Option<usize> {
        self.config
            .parallel
            .is_parallel()
            .then_some(self.config.parallel.devices)
    }

    fn run_on_devices<B: AutodiffBackend>(self, devices: Vec<B::Device>) -> Result<TrainSummary> {
        let (job, data) = self.split();
        let parallel = job.config.parallel.clone();
        let started = Instant::now();
        let summaries = run_replicas::<B, _>(&parallel, devices, |replica, device| {
            // Initialise one replica at a time: burn's CPU backend has one
            // RNG per process, and the leader's seeded weights (broadcast to
            // all) must be the ones a one-device run starts from.
            let init = INIT_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            B::seed(
                &device,
                genzoo_core::seed::derive(job.config.train.seed, "init", 0),
            );
            with_family::<B, _>(
                &job.config.model,
                &device,
                ReplicaFit {
                    job: &job,
                    data: &data,
                    device: device.clone(),
                    replica,
                    init: Some(init),
                },
            )
        })?;
        let summary = summaries
            .into_iter()
            .next()
            .ok_or_else(|| Error::Parallel("no replica ran".into()))?;
        if job.config.parallel.node_rank == 0 {
            print_summary(&summary, started, &job.run);
        }
        Ok(summary)
    }
}

/// Serialises model initialisation across replica threads.
static INIT_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One replica's part of a data-parallel training job.
struct ReplicaFit<'a, B: AutodiffBackend> {
    job: &'a TrainJob<()>,
    data: &'a JobData,
    device: B::Device,
    replica: genzoo_core::parallel::Replica,
    init: Option<std::sync::MutexGuard<'static, ()>>,
}

impl<B: AutodiffBackend> ReplicaFit<'_, B> {
    fn fit<F, D>(mut self, family: F, data: &D) -> Result<TrainSummary>
    where
        F: Family<B>,
        F::Batch: genzoo_core::ShardBatch,
        D: genzoo_core::TrainData<B, Batch = F::Batch>,
    {
        drop(self.init.take());
        let job = self.job;
        let params = family.num_params();
        let mut trainer = Trainer::new(job.run.clone(), job.config.train.clone())
            .identity(job.config.preset.clone(), job.config.model_fingerprint()?)
            .config_text(job.text.clone())
            .resume(job.resume)
            .stop_when(job.stop.clone())
            .progress(self.replica.is_leader());
        if let Some(dir) = &job.evaluator {
            trainer = trainer.sample_quality(dir);
        }
        let outcome = trainer.fit_replica(family, data, &self.device)?;
        Ok(TrainSummary::new(outcome, params, data))
    }
}

impl<B: AutodiffBackend> FamilyTask<B> for ReplicaFit<'_, B> {
    type Output = TrainSummary;
    fn run<F: Family<B, Batch = ImageBatch<B>>>(self, family: F) -> Result<TrainSummary> {
        match self.data {
            JobData::Images(data) => self.fit(family, data),
            JobData::Text(_) => Err(Error::Config(
                "an image model was given a text corpus".into(),
            )),
        }
    }
    fn run_text<F: Family<B, Batch = TokenBatch<B>>>(self, family: F) -> Result<TrainSummary> {
        match self.data {
            JobData::Text(data) => self.fit(family, data),
            JobData::Images(_) => Err(Error::Config(
                "a text model was given images: pass --text FILE".into(),
            )),
        }
    }
}

struct FitJob<B: AutodiffBackend> {
    job: TrainJob,
    device: B::Device,
}

/// Trains `family` on `data` as the job says, and prints the figures.
fn fit<B, F, D>(job: TrainJob<()>, device: &B::Device, family: F, data: &D) -> Result<TrainSummary>
where
    B: AutodiffBackend,
    F: Family<B>,
    F::Batch: genzoo_core::ShardBatch,
    D: genzoo_core::TrainData<B, Batch = F::Batch>,
{
    let TrainJob {
        config,
        run,
        resume,
        text,
        stop,
        evaluator,
        ..
    } = job;
    let started = Instant::now();
    let params = family.num_params();
    let mut trainer = Trainer::new(run.clone(), config.train.clone())
        .identity(config.preset.clone(), config.model_fingerprint()?)
        .config_text(text)
        .resume(resume)
        .stop_when(stop);
    if let Some(dir) = evaluator {
        trainer = trainer.sample_quality(dir);
    }
    let outcome = trainer.fit(family, data, device)?;
    let summary = TrainSummary::new(outcome, params, data);
    print_summary(&summary, started, &run);
    Ok(summary)
}

/// Prints what a training call did.
fn print_summary(summary: &TrainSummary, started: Instant, run: &RunDir) {
    let secs = summary.train_seconds;
    let steps = summary.steps_this_call.max(1) as f64;
    println!(
        "trained {} steps this call ({}/{} in total) in {:.1} s wall, {:.1} s in steps: {:.1} ms/step, {:.1} s/epoch",
        summary.steps_this_call,
        summary.step,
        summary.total_steps,
        started.elapsed().as_secs_f64(),
        secs,
        1000.0 * secs / steps,
        secs / steps * summary.per_epoch as f64
    );
    if let Some((split, at, eval)) = &summary.last_eval {
        // An evaluation before the run's last step says so: it is not
        // the figure of the weights the run ended with.
        let when = if *at == summary.step {
            String::new()
        } else {
            format!(" (at step {at}, the last evaluation)")
        };
        println!(
            "{split}{when}: {}",
            eval.iter()
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!("run directory: {}", run.root().display());
}

impl<B: AutodiffBackend> FamilyTask<B> for FitJob<B> {
    type Output = TrainSummary;
    fn run<F: Family<B, Batch = ImageBatch<B>>>(self, family: F) -> Result<TrainSummary> {
        let (job, data) = self.job.split();
        match data {
            JobData::Images(data) => fit(job, &self.device, family, &data),
            JobData::Text(_) => Err(Error::Config(
                "an image model was given a text corpus".into(),
            )),
        }
    }
    fn run_text<F: Family<B, Batch = TokenBatch<B>>>(self, family: F) -> Result<TrainSummary> {
        let (job, data) = self.job.split();
        match data {
            JobData::Text(data) => fit(job, &self.device, family, &data),
            JobData::Images(_) => Err(Error::Config(
                "a text model was given images: pass --text FILE".into(),
            )),
        }
    }
}
