//! The `genzoo` command line: `train`, `resume`, `sample`, `eval`, `info`, `list`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Parser, Subcommand};
use genzoo_core::backend::{BackendTask, with_backend};
use genzoo_core::family::SampleRequest;
use genzoo_core::image::{default_columns, save_grid};
use genzoo_core::{
    BackendKind, Error, Family, ImageBatch, Result, SamplerOptions, TextRequest, TokenBatch,
};
use genzoo_data::{DatasetSource, ImageData, Locator, TextCorpus, TextData, load_image_dataset};
use genzoo_models::ModelConfig;
use genzoo_models::presets;
use genzoo_models::presets::{FamilyTask, with_family};
use genzoo_train::checkpoint::latest_good;
use genzoo_train::data_parallel::run_replicas;
use genzoo_train::evaluator::Evaluator;
use genzoo_train::plot;
use genzoo_train::{RunConfig, RunDir, Trainer};

/// Train and compare generative models (VAE, GAN, DDPM, GPT) on burn.
#[derive(Parser, Debug)]
#[command(name = "genzoo", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a preset (see `genzoo list`).
    Train(TrainArgs),
    /// Continue an interrupted run from its newest good checkpoint.
    Resume {
        /// The run directory.
        run: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Draw samples from a trained run into a PNG grid.
    Sample(SampleArgs),
    /// Evaluate a trained run: FID, KID, IS, precision/recall on the evaluator's
    /// features, and the likelihood in bits/dim; writes eval.json into the run.
    Eval(EvalArgs),
    /// Train and evaluate every run of an experiment file and write report.md, report.png and report.svg.
    Compare {
        /// The experiment file (see experiments/mnist-families.toml).
        file: PathBuf,
        /// Output directory (default: runs/<experiment name>).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = "cpu")]
        backend: BackendKind,
    },
    /// The per-dataset classifier whose features the sample metrics use.
    #[command(subcommand)]
    Evaluator(EvaluatorCommand),
    /// Time training steps, sampling and generation of the reference models
    /// (the PyTorch peer's benchmark, same keys with --json).
    Bench(crate::bench::BenchArgs),
    /// Show a run's model, parameters, progress and last metrics.
    Info {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
    },
    /// Plot the losses of one run (into its curves.svg) or of several runs
    /// overlaid (into --out): a panel per loss, training and held-out lines.
    Plot {
        /// Run directories.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The SVG file to write (default for one run: RUN/curves.svg).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The quantities to plot, by name without the split prefix
        /// (`kl,bits_per_dim`); default: the losses.
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
    },
    /// List the model families and presets.
    List,
}

#[derive(Args, Debug)]
struct TrainArgs {
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
    #[command(flatten)]
    overrides: Overrides,
}

/// Flags that override the config (and the preset's recipe).
#[derive(Args, Debug, Default)]
struct Overrides {
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
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    lr: Option<f64>,
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
    /// A UTF-8 text file to train a language model (gpt-char) on.
    #[arg(long)]
    text: Option<PathBuf>,
    /// Byte-level tokens (256) instead of the text's characters.
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
    /// Write training metrics every N steps.
    #[arg(long)]
    log_every: Option<u64>,
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
        if let Some(v) = self.log_every {
            t.log_every = v;
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

#[derive(Args, Debug)]
struct EvalArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// Samples to draw for the sample metrics; test images for nll.
    #[arg(long, default_value_t = 10_000)]
    n: usize,
    /// Comma-separated: fid, kid, is (with class coverage), pr (precision/recall), nll (bits/dim).
    #[arg(long, default_value = "fid,kid,is,pr")]
    metrics: String,
    /// Effort of the likelihood bound where the model estimates it. DDPM: the
    /// number of bound terms (default all T, the exact bound; fewer is faster,
    /// by the trapezoid rule). VAE: importance samples per image (default 128).
    #[arg(long)]
    terms: Option<usize>,
    /// Seed of sampling and of the metrics' randomness.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
}

#[derive(Subcommand, Debug)]
enum EvaluatorCommand {
    /// Train (or retrain) the evaluator of a dataset and cache it.
    Train {
        /// `mnist`, `fashion-mnist`, `cifar-10`, `idx:<DIR>` or `folder:<DIR>`.
        #[arg(long, default_value = "mnist")]
        dataset: String,
        /// Directory with the dataset's files.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Resize a folder dataset's images to N×N (as its runs did).
        #[arg(long)]
        image_size: Option<usize>,
        /// Training epochs.
        #[arg(long, default_value_t = EVALUATOR_EPOCHS)]
        epochs: u64,
        /// Retrain even if a cached evaluator exists.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
struct SampleArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// Number of samples (image models) [default: 64].
    #[arg(long)]
    n: Option<usize>,
    /// Seed of the sampling noise (same seed and checkpoint: the same image, byte for byte).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Sample this class (class-conditional presets: cvae-mlp, cvae-conv, cdcgan-28, cddpm-unet).
    #[arg(long)]
    class: Option<usize>,
    /// Output PNG (image models) [default: samples.png].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Text to continue (text models).
    #[arg(long)]
    prompt: Option<String>,
    /// Tokens to generate (text models) [default: 500].
    #[arg(long)]
    tokens: Option<usize>,
    /// Softmax temperature, 0 for greedy (text models) [default: 0.8].
    #[arg(long)]
    temperature: Option<f64>,
    /// Sample among the k most likely tokens only (text models).
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities sum to p (text models).
    #[arg(long)]
    top_p: Option<f64>,
    /// Generate without the key/value cache (for comparison).
    #[arg(long)]
    no_cache: bool,
    /// Diffusion sampler: `ddim` (default of ddpm-unet, 50 steps) or `ddpm` (all T steps).
    #[arg(long)]
    sampler: Option<String>,
    /// DDIM steps (network evaluations).
    #[arg(long)]
    steps: Option<usize>,
    /// DDIM stochasticity η in [0, 1] (0: deterministic).
    #[arg(long)]
    eta: Option<f64>,
    /// Classifier-free guidance weight w (class-conditional diffusion: cddpm-unet).
    #[arg(long)]
    guidance: Option<f64>,
    /// Sample from the trained weights instead of their EMA (diffusion models).
    #[arg(long)]
    raw_weights: bool,
    /// Also save the denoising trajectory of the first sample (x_t from noise
    /// to image, 10 frames) as <out>-trajectory.png (diffusion models).
    #[arg(long)]
    trajectory: bool,
    /// Complete the run's first --n test images from their top R rows (gpt-pixel):
    /// the grid shows the originals above their completions.
    #[arg(long)]
    complete_rows: Option<usize>,
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let threads = match &cli.command {
        Command::Bench(args) => args.threads,
        _ => None,
    };
    // Before any tensor work: the pool's size (bench --threads) and its
    // threads' handling of subnormal floats.
    genzoo_core::backend::prepare_cpu(threads)?;
    match cli.command {
        Command::Train(args) => train(args),
        Command::Resume { run, overrides } => {
            let config = RunConfig::load(&run.join("config.toml"))?;
            train(TrainArgs {
                preset: config.preset,
                out: Some(run),
                config: None,
                resume: true,
                overwrite: false,
                overrides,
            })
        }
        Command::Sample(args) => sample(args),
        Command::Eval(args) => eval(args),
        Command::Compare { file, out, backend } => crate::compare::compare(&file, out, backend),
        Command::Evaluator(EvaluatorCommand::Train {
            dataset,
            data_dir,
            image_size,
            epochs,
            force,
        }) => {
            let source = dataset
                .parse::<DatasetSource>()?
                .with_image_size(image_size)?;
            if data_dir.is_some() {
                check_data_dir_flag(&source)?;
            }
            let (train, test) = load_image_dataset(&source, &Locator::from_env(data_dir.clone()))?;
            let dir = evaluator_dir(&source.name(), &train)?;
            if dir.join("evaluator.json").exists() && !force {
                let e = Evaluator::<genzoo_core::CpuBackend>::load(&dir, &Default::default())?;
                println!(
                    "cached evaluator for {}: test accuracy {:.2}% ({}); --force retrains",
                    e.info.dataset,
                    100.0 * e.info.test_accuracy,
                    dir.display()
                );
                return Ok(());
            }
            let e = train_and_cache_evaluator(&source.name(), &train, &test, epochs, &dir)?;
            println!(
                "evaluator for {}: test accuracy {:.2}% after {epochs} epochs ({})",
                e.info.dataset,
                100.0 * e.info.test_accuracy,
                dir.display()
            );
            Ok(())
        }
        Command::Bench(args) => crate::bench::bench(args),
        Command::Info { run } => info(&run),
        Command::Plot { runs, out, metrics } => plot(&runs, out, &metrics),
        Command::List => {
            list();
            Ok(())
        }
    }
}

fn train(args: TrainArgs) -> Result<()> {
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
fn check_data_dir_flag(source: &DatasetSource) -> Result<()> {
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
    /// The last evaluation: the split's name and its metrics.
    pub last_eval: Option<(&'static str, genzoo_core::Metrics)>,
    /// Training batches per epoch.
    pub per_epoch: usize,
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
    config.train.validate()?;
    config.parallel.validate()?;

    // Fail before anything is written when the backend cannot run.
    genzoo_core::backend::check_available(backend)?;
    let data = if config.model.reads_text() {
        load_text(&mut config)?
    } else {
        load_images(&mut config)?
    };
    config.model.validate()?;

    // Node 0 owns the run directory; the other nodes of a multi-node run
    // only read it (their checkpoints to resume from), and may share it.
    let owner = config.parallel.node_rank == 0;
    let run = if resume || !owner {
        RunDir::open(out)
            .or_else(|_| RunDir::create(out, false))
            .or_else(|_| RunDir::open(out))?
    } else {
        RunDir::create(out, overwrite)?
    };
    let text = config.to_toml()?;
    if owner {
        std::fs::write(run.config_file(), &text).map_err(|e| Error::io(run.config_file(), e))?;
    }
    let job = TrainJob {
        config,
        run,
        data,
        resume,
        text,
    };
    if job.config.parallel.is_parallel() {
        // Replicas run on their own threads while this one waits for them:
        // it must not hold a thread of the pool their kernels need.
        with_backend(backend, job)
    } else {
        with_backend_on_pool(backend, job)
    }
}

/// [`with_backend`], run on a thread of the CPU backend's pool when
/// `backend` is the CPU one ([`genzoo_core::backend::on_cpu_pool`]: the
/// kernels then start where they are asked for instead of being handed to
/// the pool, twice as fast for batch-1 generation). Only for tasks that
/// never wait on other threads doing tensor work.
pub(crate) fn with_backend_on_pool<T>(backend: BackendKind, task: T) -> Result<T::Output>
where
    T: BackendTask + Send,
    T::Output: Send,
{
    match backend {
        BackendKind::Cpu => genzoo_core::backend::on_cpu_pool(|| with_backend(backend, task)),
        _ => with_backend(backend, task),
    }
}

/// The data of a run: images or a text corpus, as the model reads.
enum JobData {
    Images(ImageData),
    Text(TextData),
}

fn load_images(config: &mut RunConfig) -> Result<JobData> {
    let source = config.data.image_source()?;
    let (mut train_set, mut test_set) =
        load_image_dataset(&source, &Locator::from_env(config.data.data_dir.clone()))?;
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
    Ok(JobData::Images(ImageData::new(
        train_set,
        test_set,
        config.train.batch_size,
        config.data.scaling,
        config.train.seed,
    )?))
}

fn load_text(config: &mut RunConfig) -> Result<JobData> {
    let path = config.data.text.clone().ok_or_else(|| {
        Error::Config(format!(
            "{} trains on text: pass --text FILE (a UTF-8 file)",
            config.preset
        ))
    })?;
    let corpus = TextCorpus::from_file(&path, config.data.bytes)?;
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
        } = self;
        (
            TrainJob {
                config,
                run,
                data: (),
                resume,
                text,
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
        let trainer = Trainer::new(job.run.clone(), job.config.train.clone())
            .identity(job.config.preset.clone(), job.config.model_fingerprint()?)
            .config_text(job.text.clone())
            .resume(job.resume)
            .progress(self.replica.is_leader());
        let outcome = trainer.fit_replica(family, data, &self.device)?;
        Ok(TrainSummary {
            steps_this_call: outcome.steps_this_call,
            step: outcome.step,
            total_steps: outcome.total_steps,
            train_seconds: outcome.train_seconds,
            total_train_seconds: outcome.total_train_seconds,
            params,
            last_eval: outcome.last_eval.map(|m| (data.eval_split(), m)),
            per_epoch: data.batches_per_epoch(),
        })
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
    D: genzoo_core::TrainData<B, Batch = F::Batch>,
{
    let TrainJob {
        config,
        run,
        resume,
        text,
        ..
    } = job;
    let started = Instant::now();
    let params = family.num_params();
    let trainer = Trainer::new(run.clone(), config.train.clone())
        .identity(config.preset.clone(), config.model_fingerprint()?)
        .config_text(text)
        .resume(resume);
    let outcome = trainer.fit(family, data, device)?;
    let summary = TrainSummary {
        steps_this_call: outcome.steps_this_call,
        step: outcome.step,
        total_steps: outcome.total_steps,
        train_seconds: outcome.train_seconds,
        total_train_seconds: outcome.total_train_seconds,
        params,
        last_eval: outcome.last_eval.map(|m| (data.eval_split(), m)),
        per_epoch: data.batches_per_epoch(),
    };
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
    if let Some((split, eval)) = &summary.last_eval {
        println!(
            "{split}: {}",
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

fn load_run(run_path: &Path) -> Result<(RunDir, RunConfig, PathBuf)> {
    let run = RunDir::open(run_path)?;
    let config = RunConfig::load(&run.config_file())?;
    let identity = config.identity()?;
    let (dir, _) = latest_good(&run.checkpoints_dir(), &identity, |w| eprintln!("{w}"))?
        .ok_or_else(|| {
            Error::Config(format!(
                "{} has no checkpoint yet: train it first",
                run.root().display()
            ))
        })?;
    Ok((run, config, dir))
}

fn sample(args: SampleArgs) -> Result<()> {
    let (_, config, checkpoint) = load_run(&args.run)?;
    check_sample_flags(&args, &config)?;
    let sampler = SamplerOptions {
        method: args.sampler,
        steps: args.steps,
        eta: args.eta,
        guidance: args.guidance,
        raw_weights: args.raw_weights,
        progress: true,
    };
    let request = SampleRequest {
        n: args.n.unwrap_or(64),
        seed: args.seed,
        class: args.class,
        sampler,
    };
    let text = TextRequest {
        prompt: args.prompt.unwrap_or_default(),
        tokens: args.tokens.unwrap_or(500),
        temperature: args.temperature.unwrap_or(0.8),
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        use_cache: !args.no_cache,
    };
    let complete = match args.complete_rows {
        Some(rows) => {
            let source = config.data.image_source()?;
            let (_, test) =
                load_image_dataset(&source, &Locator::from_env(config.data.data_dir.clone()))?;
            Some((test.take(request.n), rows))
        }
        None => None,
    };
    with_backend_on_pool(
        args.backend,
        SampleJob {
            config,
            checkpoint,
            request,
            text,
            complete,
            trajectory: args.trajectory,
            out: args.out.unwrap_or_else(|| PathBuf::from("samples.png")),
        },
    )
}

/// Refuses sampling flags the run's model would ignore (an image model's
/// `--n` on a text model, a text model's `--prompt` on an image model, a
/// diffusion sampler's on anything else) and values no sampler can use:
/// a flag that silently does nothing is a wrong result the user cannot see.
fn check_sample_flags(args: &SampleArgs, config: &RunConfig) -> Result<()> {
    let given = |flags: &[(&'static str, bool)]| -> Vec<&'static str> {
        flags
            .iter()
            .filter(|(_, set)| *set)
            .map(|(f, _)| *f)
            .collect()
    };
    let misplaced = |flags: Vec<&str>, kind: &str| -> Result<()> {
        if flags.is_empty() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "{} {} for {kind}; {} is a {} model",
            flags.join(", "),
            if flags.len() == 1 { "is" } else { "are" },
            config.preset,
            config.model.family()
        )))
    };
    let diffusion = given(&[
        ("--sampler", args.sampler.is_some()),
        ("--steps", args.steps.is_some()),
        ("--eta", args.eta.is_some()),
        ("--guidance", args.guidance.is_some()),
        ("--raw-weights", args.raw_weights),
        ("--trajectory", args.trajectory),
    ]);
    if config.model.family() != "ddpm" {
        misplaced(diffusion, "diffusion models")?;
    }
    let text = given(&[
        ("--prompt", args.prompt.is_some()),
        ("--tokens", args.tokens.is_some()),
        ("--temperature", args.temperature.is_some()),
        ("--top-k", args.top_k.is_some()),
        ("--top-p", args.top_p.is_some()),
        ("--no-cache", args.no_cache),
    ]);
    let image = given(&[
        ("--n", args.n.is_some()),
        ("--class", args.class.is_some()),
        ("--out", args.out.is_some()),
        ("--complete-rows", args.complete_rows.is_some()),
    ]);
    if config.model.reads_text() {
        misplaced(image, "image models (a text model prints its text)")?;
    } else {
        misplaced(text, "text models")?;
    }
    if args.n == Some(0) {
        return Err(Error::Config("--n must be at least 1".into()));
    }
    if args.top_k == Some(0) {
        return Err(Error::Config("--top-k must be at least 1".into()));
    }
    if let Some(p) = args.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(Error::Config(format!("--top-p must be in (0, 1], got {p}")));
    }
    if let Some(t) = args.temperature
        && !(t.is_finite() && t >= 0.0)
    {
        return Err(Error::Config(format!(
            "--temperature must be 0 (greedy) or positive, got {t}"
        )));
    }
    Ok(())
}

struct SampleJob {
    config: RunConfig,
    checkpoint: PathBuf,
    request: SampleRequest,
    text: TextRequest,
    complete: Option<(genzoo_data::ImageDataset, usize)>,
    trajectory: bool,
    out: PathBuf,
}

impl BackendTask for SampleJob {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let model = self.config.model.clone();
        with_family::<B, _>(
            &model,
            &device,
            SampleRun::<B> {
                job: self,
                device: device.clone(),
            },
        )
    }
}

struct SampleRun<B: AutodiffBackend> {
    job: SampleJob,
    device: B::Device,
}

impl<B: AutodiffBackend> FamilyTask<B> for SampleRun<B> {
    type Output = ();
    fn run<F: Family<B, Batch = ImageBatch<B>>>(self, family: F) -> Result<()> {
        let family = family.load(&self.job.checkpoint)?;
        let started = Instant::now();
        let images = match &self.job.complete {
            Some((test, rows)) => {
                let indices: Vec<usize> = (0..test.len()).collect();
                let originals = test
                    .batch::<B::InnerBackend>(&indices, genzoo_data::Scaling::Unit, &self.device)
                    .images;
                let completed =
                    family.complete_images(originals.clone(), *rows, self.job.request.seed)?;
                burn::tensor::Tensor::cat(vec![originals, completed], 0)
            }
            None => family.sample_images(&self.job.request)?,
        };
        save_grid(images, default_columns(self.job.request.n), &self.job.out)?;
        println!(
            "wrote {} samples from {} to {} in {:.2} s",
            self.job.request.n,
            self.job.checkpoint.display(),
            self.job.out.display(),
            started.elapsed().as_secs_f64()
        );
        if self.job.trajectory {
            const FRAMES: usize = 10;
            let frames = family.sample_trajectory(&self.job.request, FRAMES)?;
            let stem = self.job.out.with_extension("");
            let path = PathBuf::from(format!("{}-trajectory.png", stem.display()));
            let n = frames.dims()[0];
            save_grid(frames, n, &path)?;
            println!(
                "wrote the trajectory of the first sample ({n} frames, x_T to x_0) to {}",
                path.display()
            );
        }
        Ok(())
    }

    fn run_text<F: Family<B, Batch = TokenBatch<B>>>(self, family: F) -> Result<()> {
        let family = family.load(&self.job.checkpoint)?;
        let started = Instant::now();
        let text = family.generate_text(&self.job.text)?;
        let secs = started.elapsed().as_secs_f64();
        println!("{}{text}", self.job.text.prompt);
        eprintln!(
            "generated {} tokens in {secs:.2} s ({:.0} tokens/s, {} key/value cache)",
            self.job.text.tokens,
            self.job.text.tokens as f64 / secs.max(1e-9),
            if self.job.text.use_cache {
                "with the"
            } else {
                "without the"
            }
        );
        Ok(())
    }
}

/// The cache directory of a dataset's evaluator.
fn evaluator_dir(dataset: &str, train: &genzoo_data::ImageDataset) -> Result<PathBuf> {
    let root = Locator::from_env(None)
        .cache_root
        .ok_or_else(|| Error::Config("no cache directory: set XDG_CACHE_HOME or HOME".into()))?;
    Ok(genzoo_train::evaluator::cache_dir(
        &root,
        dataset,
        &genzoo_train::evaluator::fingerprint(train),
    ))
}

/// Trains the evaluator on the CPU backend with a progress bar and caches it.
fn train_and_cache_evaluator(
    dataset: &str,
    train: &genzoo_data::ImageDataset,
    test: &genzoo_data::ImageDataset,
    epochs: u64,
    dir: &Path,
) -> Result<Evaluator<genzoo_core::CpuBackend>> {
    eprintln!("training the {dataset} evaluator ({epochs} epochs; once per dataset, then cached)");
    let per_epoch = train.len().div_ceil(128);
    let bar = indicatif::ProgressBar::new(epochs * per_epoch as u64);
    let evaluator = genzoo_train::evaluator::train_evaluator::<
        burn::backend::Autodiff<genzoo_core::CpuBackend>,
    >(
        dataset,
        train,
        test,
        epochs,
        0,
        &Default::default(),
        |epoch, _, loss| {
            bar.inc(1);
            bar.set_message(format!("epoch {} loss {loss:.4}", epoch + 1));
        },
    )?;
    bar.finish_and_clear();
    evaluator.save(dir)?;
    Ok(evaluator)
}

/// Epochs of an evaluator's training (≥ 90% on Fashion-MNIST, ≥ 99% on MNIST).
const EVALUATOR_EPOCHS: u64 = 6;

/// The metrics `eval` knows.
const EVAL_METRICS: [&str; 5] = ["fid", "kid", "is", "pr", "nll"];

fn eval(args: EvalArgs) -> Result<()> {
    let metrics: Vec<String> = args
        .metrics
        .split(',')
        .map(|m| m.trim().to_lowercase())
        .filter(|m| !m.is_empty())
        .collect();
    let (checkpoint, figures) = evaluate_run(
        &args.run,
        &metrics,
        args.n,
        args.terms,
        args.seed,
        args.backend,
    )?;
    write_eval_json(&args.run, Some(&checkpoint), &figures)
}

/// Evaluates the newest good checkpoint of a run with `metrics` (the names
/// of [`EVAL_METRICS`]) on `n` samples (and `n` test images for nll),
/// prints a table, and returns the checkpoint and the figures (for
/// [`write_eval_json`]).
pub(crate) fn evaluate_run(
    run_path: &Path,
    metrics: &[String],
    n: usize,
    terms: Option<usize>,
    seed: u64,
    backend: BackendKind,
) -> Result<(PathBuf, Vec<(String, f64)>)> {
    let (_, config, checkpoint) = load_run(run_path)?;
    if config.model.reads_text() {
        return Err(Error::Config(
            "text models report val_loss (nats/token) during training; eval works on image models"
                .into(),
        ));
    }
    let metrics: Vec<String> = metrics.to_vec();
    if let Some(bad) = metrics.iter().find(|m| !EVAL_METRICS.contains(&m.as_str())) {
        return Err(Error::Config(format!(
            "unknown metric '{bad}': choose from {}",
            EVAL_METRICS.join(", ")
        )));
    }
    if metrics.is_empty() {
        return Err(Error::Config(format!(
            "no metric asked for: choose from {}",
            EVAL_METRICS.join(", ")
        )));
    }
    let wants_samples = metrics.iter().any(|m| m != "nll");
    // FID and precision/recall need a spread of samples; nll needs an image.
    let least = if wants_samples { 2 } else { 1 };
    if n < least {
        return Err(Error::Config(format!(
            "--n must be at least {least}, got {n}"
        )));
    }
    // Before the evaluator trains and the samples are drawn, which take minutes.
    if metrics.iter().any(|m| m == "nll") {
        config.model.check_bits_per_dim()?;
    }
    let source = config.data.image_source()?;
    let (train, test) =
        load_image_dataset(&source, &Locator::from_env(config.data.data_dir.clone()))?;
    let evaluator_dir = if wants_samples {
        let dir = evaluator_dir(&source.name(), &train)?;
        if !dir.join("evaluator.json").exists() {
            train_and_cache_evaluator(&source.name(), &train, &test, EVALUATOR_EPOCHS, &dir)?;
        }
        Some(dir)
    } else {
        None
    };
    with_backend_on_pool(
        backend,
        EvalJob {
            checkpoint: checkpoint.clone(),
            config,
            test,
            evaluator_dir,
            metrics,
            n,
            terms,
            seed,
        },
    )
    .map(|figures| (checkpoint, figures))
}

struct EvalJob {
    checkpoint: PathBuf,
    config: RunConfig,
    test: genzoo_data::ImageDataset,
    evaluator_dir: Option<PathBuf>,
    metrics: Vec<String>,
    n: usize,
    terms: Option<usize>,
    seed: u64,
}

impl BackendTask for EvalJob {
    type Output = Vec<(String, f64)>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Vec<(String, f64)>> {
        let model = self.config.model.clone();
        with_family::<B, _>(
            &model,
            &device,
            EvalRun::<B> {
                job: self,
                device: device.clone(),
            },
        )
    }
}

struct EvalRun<B: AutodiffBackend> {
    job: EvalJob,
    device: B::Device,
}

impl<B: AutodiffBackend> EvalRun<B> {
    /// Draws `n` samples in chunks (seeded per chunk) and embeds them.
    fn sample_features<F: Family<B>>(
        &self,
        family: &F,
        evaluator: &Evaluator<B::InnerBackend>,
    ) -> Result<(genzoo_train::metrics::Features, Vec<Vec<f64>>, f64)> {
        let n = self.job.n;
        let bar = indicatif::ProgressBar::new(n as u64);
        bar.set_message("sampling");
        let started = Instant::now();
        let mut values = Vec::new();
        let mut probs = Vec::new();
        let mut done = 0;
        let mut chunk_index = 0;
        while done < n {
            let count = 500.min(n - done);
            let request = SampleRequest {
                n: count,
                seed: genzoo_core::seed::derive(self.job.seed, "eval-samples", chunk_index),
                ..Default::default()
            };
            let images = family.sample_images(&request)?;
            let (f, p) = evaluator.embed(images)?;
            values.extend(f.to_values());
            probs.extend(p);
            done += count;
            chunk_index += 1;
            bar.inc(count as u64);
        }
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        Ok((
            genzoo_train::metrics::Features::new(values, genzoo_train::evaluator::FEATURES)?,
            probs,
            secs,
        ))
    }
}

impl<B: AutodiffBackend> FamilyTask<B> for EvalRun<B> {
    type Output = Vec<(String, f64)>;
    fn run<F: Family<B, Batch = ImageBatch<B>>>(self, family: F) -> Result<Vec<(String, f64)>> {
        let family = family.load(&self.job.checkpoint)?;
        let wants = |m: &str| self.job.metrics.iter().any(|x| x == m);
        let mut results: Vec<(String, f64)> = Vec::new();
        if let Some(dir) = &self.job.evaluator_dir {
            let evaluator = Evaluator::<B::InnerBackend>::load(dir, &self.device)?;
            let (generated, probs, secs) = self.sample_features(&family, &evaluator)?;
            results.push(("samples".into(), generated.len() as f64));
            results.push((
                "sample_seconds_per_64".into(),
                secs * 64.0 / generated.len() as f64,
            ));
            let options = genzoo_train::metrics::QualityOptions {
                fid: wants("fid"),
                kid: wants("kid"),
                is: wants("is"),
                pr: wants("pr"),
                seed: self.job.seed,
                ..Default::default()
            };
            results.extend(genzoo_train::metrics::sample_quality(
                &evaluator.reference,
                &generated,
                &probs,
                &options,
            ));
            results.push((
                "evaluator_test_accuracy".into(),
                evaluator.info.test_accuracy,
            ));
        }
        if wants("nll") {
            let test = self.job.test.take(self.job.n);
            let count = test.len();
            let mut bits = Vec::with_capacity(count);
            let indices: Vec<usize> = (0..count).collect();
            for (i, chunk) in indices.chunks(64).enumerate() {
                let images = test
                    .batch::<B::InnerBackend>(chunk, genzoo_data::Scaling::Unit, &self.device)
                    .images;
                let seed = genzoo_core::seed::derive(self.job.seed, "eval-nll", i as u64);
                bits.extend(family.bits_per_dim(images, self.job.terms, seed)?);
                eprintln!("  nll: {} / {count} test images", bits.len());
            }
            let n = bits.len() as f64;
            let mean = bits.iter().sum::<f64>() / n;
            let sd =
                (bits.iter().map(|b| (b - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt();
            results.push(("nll_bits_per_dim".into(), mean));
            results.push(("nll_bits_per_dim_sem".into(), sd / n.sqrt()));
            results.push(("nll_images".into(), n));
        }
        println!("{:<26} value", "metric");
        for (name, value) in &results {
            println!("{name:<26} {value:.6}");
        }
        Ok(results)
    }
}

/// Writes `eval.json` into the run: the checkpoint evaluated (when one
/// was) and the figures.
pub(crate) fn write_eval_json(
    run: &Path,
    checkpoint: Option<&Path>,
    figures: &[(String, f64)],
) -> Result<()> {
    let mut record = serde_json::Map::new();
    if let Some(checkpoint) = checkpoint {
        let name = checkpoint.display().to_string();
        record.insert("checkpoint".into(), serde_json::Value::String(name));
    }
    for (name, value) in figures {
        record.insert(name.clone(), serde_json::json!(value));
    }
    let path = run.join("eval.json");
    let text = serde_json::to_string_pretty(&record).map_err(|e| Error::Config(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
    println!("wrote {}", path.display());
    Ok(())
}

fn info(run_path: &Path) -> Result<()> {
    let run = RunDir::open(run_path)?;
    let config = RunConfig::load(&run.config_file())?;
    struct Count;
    impl<B: AutodiffBackend> FamilyTask<B> for Count {
        type Output = usize;
        fn run<F: Family<B, Batch = ImageBatch<B>>>(self, family: F) -> Result<usize> {
            Ok(family.num_params())
        }
        fn run_text<F: Family<B, Batch = TokenBatch<B>>>(self, family: F) -> Result<usize> {
            Ok(family.num_params())
        }
    }
    struct CountOnCpu(genzoo_models::ModelConfig);
    impl BackendTask for CountOnCpu {
        type Output = usize;
        fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<usize> {
            with_family::<B, _>(&self.0, &device, Count)
        }
    }
    let params = with_backend(BackendKind::Cpu, CountOnCpu(config.model.clone()))?;
    println!("run:        {}", run.root().display());
    println!(
        "preset:     {} ({} family)",
        config.preset,
        config.model.family()
    );
    println!("parameters: {params}");
    match (&config.data.text, config.model.reads_text()) {
        (Some(text), true) => println!(
            "text:       {} ({} tokens)",
            text.display(),
            if config.data.bytes {
                "byte"
            } else {
                "character"
            }
        ),
        _ => println!("dataset:    {}", config.data.dataset),
    }
    let identity = config.identity()?;
    match latest_good(&run.checkpoints_dir(), &identity, |w| eprintln!("{w}"))? {
        Some((dir, m)) => println!(
            "checkpoint: step {} of {} ({})",
            m.step,
            m.total_steps,
            dir.display()
        ),
        None => println!("checkpoint: none yet"),
    }
    if run.metrics_file().exists() {
        let records = genzoo_train::logger::read_jsonl(&run.metrics_file())?;
        let mut last: Vec<(String, String)> = Vec::new();
        for r in &records {
            for (k, v) in r {
                if k == "step" {
                    continue;
                }
                let step = r.get("step").and_then(|s| s.as_u64()).unwrap_or(0);
                let text = format!(
                    "{} (step {step})",
                    v.as_f64().map_or(v.to_string(), |f| format!("{f:.4}"))
                );
                match last.iter_mut().find(|(n, _)| n == k) {
                    Some((_, t)) => *t = text,
                    None => last.push((k.clone(), text)),
                }
            }
        }
        println!("last metrics:");
        for (k, v) in last {
            println!("  {k:<24} {v}");
        }
    }
    Ok(())
}

fn plot(runs: &[PathBuf], out: Option<PathBuf>, metrics: &[String]) -> Result<()> {
    let out = match (out, runs) {
        (Some(out), _) => out,
        (None, [run]) if metrics.is_empty() => RunDir::open(run)?.curves_file(),
        (None, [_]) => {
            return Err(Error::Config(
                "plotting chosen --metrics needs --out FILE.svg (the run's curves.svg holds its losses)".into(),
            ));
        }
        (None, _) => {
            return Err(Error::Config(
                "plotting several runs needs --out FILE.svg".into(),
            ));
        }
    };
    let mut curves = Vec::new();
    for run in runs {
        let metrics = RunDir::open(run)?.metrics_file();
        if !metrics.exists() {
            return Err(Error::Config(format!(
                "{}: no metrics.jsonl (has the run logged a step?)",
                run.display()
            )));
        }
        let label = if runs.len() == 1 {
            String::new()
        } else {
            run.display().to_string()
        };
        curves.push((label, genzoo_train::logger::read_jsonl(&metrics)?));
    }
    let panels = if metrics.is_empty() {
        plot::curve_panels(&curves)
    } else {
        plot::metric_panels(&curves, metrics)
    };
    if let Some(missing) = panels.iter().find(|p| p.series.is_empty()) {
        let mut logged: Vec<String> = curves
            .iter()
            .flat_map(|(_, records)| plot::logged_names(records, &["train", "test", "val"]))
            .collect();
        logged.sort();
        logged.dedup();
        return Err(Error::Config(format!(
            "no run logged '{}' (logged: {})",
            missing.title,
            logged.join(", ")
        )));
    }
    plot::write_svg(&panels, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}

fn list() {
    println!("{:<12} {:<8} description", "preset", "family");
    for p in presets() {
        println!("{:<12} {:<8} {}", p.name, p.model.family(), p.description);
    }
}
