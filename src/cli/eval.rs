//! `genzoo eval` and `genzoo evaluator`: sample metrics on the evaluator's
//! features and likelihoods in bits/dim, written to a run's eval.json.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use genzoo_core::backend::BackendTask;
use genzoo_core::family::{SampleRequest, SamplerOptions};
use genzoo_core::{BackendKind, Error, Family, ImageBatch, Result, TokenBatch};
use genzoo_data::{DatasetSource, Locator, TextCorpus, load_image_dataset};
use genzoo_models::ModelConfig;
use genzoo_models::presets::{FamilyTask, with_family};
use genzoo_train::RunConfig;
use genzoo_train::checkpoint::Manifest;
use genzoo_train::evaluator::Evaluator;

use super::sample::DiffusionSampling;
use super::train::check_data_dir_flag;
use super::{load_run, with_backend_on_pool};

#[derive(Args, Debug)]
pub(super) struct EvalArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// Which checkpoint: latest (the newest good one), best (a run trained
    /// with --keep-best), or a step number.
    #[arg(long, default_value = "latest")]
    checkpoint: String,
    /// Samples to draw for the sample metrics; test images for nll; for a
    /// text model, validation windows (default: all of them) [default: 10000].
    #[arg(long)]
    n: Option<usize>,
    /// Comma-separated: fid, kid, is (with class coverage), pr (precision/recall),
    /// nll (bits/dim; a text model's loss over its whole validation split)
    /// [default: fid,kid,is,pr; nll for text models].
    #[arg(long)]
    metrics: Option<String>,
    /// Effort of the likelihood bound where the model estimates it. DDPM: the
    /// number of bound terms (default all T, the exact bound; fewer is faster,
    /// by the trapezoid rule). VAE: importance samples per image (default 128).
    #[arg(long)]
    terms: Option<usize>,
    /// Seed of sampling and of the metrics' randomness [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// How a diffusion model draws the samples of the sample metrics.
    #[command(flatten)]
    diffusion: DiffusionSampling,
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
}

#[derive(Subcommand, Debug)]
pub(super) enum EvaluatorCommand {
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

/// `genzoo evaluator train`: trains a dataset's evaluator and caches it
/// (a cached one is kept unless `--force`).
pub(super) fn evaluator(command: EvaluatorCommand) -> Result<()> {
    let EvaluatorCommand::Train {
        dataset,
        data_dir,
        image_size,
        epochs,
        force,
    } = command;
    let source = dataset
        .parse::<DatasetSource>()?
        .with_image_size(image_size)?;
    if data_dir.is_some() {
        check_data_dir_flag(&source)?;
    }
    let (train, test) = load_image_dataset(&source, &Locator::from_env(data_dir.clone()))?;
    let dir = evaluator_dir(&source.name(), &train)?;
    if genzoo_train::evaluator::is_cached(&dir) && !force {
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

/// The cache directory of a dataset's evaluator.
fn evaluator_dir(dataset: &str, train: &genzoo_data::ImageDataset) -> Result<PathBuf> {
    let root = Locator::from_env(None)
        .cache_root
        .ok_or_else(|| Error::Config("no cache directory: set XDG_CACHE_HOME or HOME".into()))?;
    Ok(genzoo_train::evaluator::cache_dir(
        &root,
        dataset,
        &train.fingerprint(),
    ))
}

/// The directory of `dataset`'s evaluator, trained (for the default epochs)
/// and cached first if there is none: what `eval` and a run's
/// `fid_samples` score samples with.
pub(super) fn cached_evaluator(
    dataset: &str,
    train: &genzoo_data::ImageDataset,
    test: &genzoo_data::ImageDataset,
) -> Result<PathBuf> {
    let dir = evaluator_dir(dataset, train)?;
    if !genzoo_train::evaluator::is_cached(&dir) {
        train_and_cache_evaluator(dataset, train, test, EVALUATOR_EPOCHS, &dir)?;
    }
    Ok(dir)
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
    let bar = indicatif::ProgressBar::new(0); // its length comes with the first step
    // Without a terminal (a log file, CI) the bar is hidden: a line an epoch.
    let (start, mut epoch_loss) = (Instant::now(), 0.0);
    // On a thread of the kernels' pool, as training is (see `on_cpu_pool`).
    let evaluator = genzoo_core::backend::on_cpu_pool(|| {
        genzoo_train::evaluator::train_evaluator::<burn::backend::Autodiff<genzoo_core::CpuBackend>>(
            dataset,
            train,
            test,
            epochs,
            0,
            &Default::default(),
            |epoch, index, per_epoch, loss| {
                bar.set_length(epochs * per_epoch as u64);
                bar.inc(1);
                bar.set_message(format!("epoch {} loss {loss:.4}", epoch + 1));
                epoch_loss += loss;
                if index + 1 == per_epoch {
                    if bar.is_hidden() {
                        eprintln!(
                            "evaluator epoch {}/{epochs}: loss {:.4}, {:.0} s",
                            epoch + 1,
                            epoch_loss / per_epoch as f64,
                            start.elapsed().as_secs_f64()
                        );
                    }
                    epoch_loss = 0.0;
                }
            },
        )
    })?;
    bar.finish_and_clear();
    evaluator.save(dir)?;
    Ok(evaluator)
}

/// Epochs of an evaluator's training (≥ 90% on Fashion-MNIST, ≥ 99% on MNIST).
const EVALUATOR_EPOCHS: u64 = 6;

/// The metrics `eval` knows.
const EVAL_METRICS: [&str; 5] = ["fid", "kid", "is", "pr", "nll"];

pub(super) fn eval(args: EvalArgs) -> Result<()> {
    let target = EvalTarget::load(&args.run, &args.checkpoint)?;
    let text = target.config.model.reads_text();
    let sampler = args.diffusion.options();
    if sampler.is_set() && target.config.model.family() != "ddpm" {
        return Err(Error::Config(format!(
            "--sampler, --steps, --eta and --guidance are for diffusion models; {} is a {} model",
            target.config.preset,
            target.config.model.family()
        )));
    }
    let metrics = args
        .metrics
        .as_deref()
        .unwrap_or(if text { "nll" } else { "fid,kid,is,pr" });
    let metrics: Vec<String> = metrics
        .split(',')
        .map(|m| m.trim().to_lowercase())
        .filter(|m| !m.is_empty())
        .collect();
    let evaluation = if text {
        check_text_flags(&args, &metrics)?;
        evaluate_text_run(&target, args.n, args.backend)?
    } else {
        evaluate_run(
            &target,
            &metrics,
            args.n.unwrap_or(10_000),
            args.terms,
            args.seed.unwrap_or(0),
            &sampler,
            args.backend,
        )?
    };
    write_eval_json(&args.run, Some(&evaluation), &evaluation.figures)
}

/// Refuses what a text model's evaluation cannot take.
fn check_text_flags(args: &EvalArgs, metrics: &[String]) -> Result<()> {
    if metrics != ["nll"] {
        return Err(Error::Config(format!(
            "a text model is evaluated by its loss on the validation split: --metrics nll \
             (got {})",
            metrics.join(",")
        )));
    }
    if args.terms.is_some() || args.seed.is_some() {
        return Err(Error::Config(
            "--terms and --seed are for image models; a text model's evaluation draws nothing"
                .into(),
        ));
    }
    if args.n == Some(0) {
        return Err(Error::Config("--n must be at least 1".into()));
    }
    Ok(())
}

/// What an evaluation reads: a run's config and the checkpoint asked for.
pub(crate) struct EvalTarget<'a> {
    /// The run directory.
    pub run: &'a Path,
    /// Its config.toml.
    pub config: RunConfig,
    /// The checkpoint's directory.
    pub checkpoint: PathBuf,
    /// The checkpoint's manifest.
    pub manifest: Manifest,
}

impl<'a> EvalTarget<'a> {
    /// The run at `run` with its checkpoint `which` (`latest`, `best` or a step).
    pub(crate) fn load(run: &'a Path, which: &str) -> Result<Self> {
        let (_, config, checkpoint, manifest) = load_run(run, which)?;
        Ok(Self {
            run,
            config,
            checkpoint,
            manifest,
        })
    }
}

/// A text model's loss over its whole validation split (the last 10 % of
/// the text, as in training; the first `windows` only when given) in
/// consecutive windows of its context, each token predicted once: the exact
/// held-out figure that training estimates from random windows.
pub(crate) fn evaluate_text_run(
    target: &EvalTarget,
    windows: Option<usize>,
    backend: BackendKind,
) -> Result<Evaluation> {
    let EvalTarget {
        run: run_path,
        config,
        checkpoint,
        manifest,
    } = target;
    let path = config
        .data
        .text
        .clone()
        .ok_or_else(|| Error::Config(format!("{} names no text file", run_path.display())))?;
    // Read in the model's own vocabulary, so that the text gives the run's
    // token ids (also where it has fewer characters: a run started from
    // another's weights reads that run's vocabulary).
    let vocabulary = config
        .model
        .text_vocabulary()
        .ok_or_else(|| Error::Config(format!("{} is no text model", run_path.display())))?;
    let corpus = TextCorpus::from_file_in(&path, vocabulary).map_err(|e| match e {
        Error::Data(why) => Error::Data(format!(
            "{why} (the text has changed since the run trained on it)"
        )),
        other => other,
    })?;
    let figures = with_backend_on_pool(
        backend,
        TextEvalJob {
            config: config.clone(),
            checkpoint: checkpoint.clone(),
            tokens: corpus.val,
            windows,
        },
    )?;
    Ok(Evaluation {
        checkpoint: checkpoint.clone(),
        step: manifest.step,
        figures,
        sampler: None,
    })
}

/// Windows of a validation split scored per batch of this many.
const TEXT_EVAL_BATCH: usize = 32;

struct TextEvalJob {
    config: RunConfig,
    checkpoint: PathBuf,
    tokens: Vec<u32>,
    windows: Option<usize>,
}

impl BackendTask for TextEvalJob {
    type Output = Vec<(String, f64)>;
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<Vec<(String, f64)>> {
        let model = self.config.model.clone();
        with_family::<B, _>(
            &model,
            &device,
            TextEval::<B> {
                job: self,
                device: device.clone(),
            },
        )
    }
}

struct TextEval<B: AutodiffBackend> {
    job: TextEvalJob,
    device: B::Device,
}

impl<B: AutodiffBackend> FamilyTask<B> for TextEval<B> {
    type Output = Vec<(String, f64)>;
    fn run<F: Family<B, Batch = ImageBatch<B>>>(self, _family: F) -> Result<Self::Output> {
        Err(Error::Config(
            "an image model has no text to evaluate".into(),
        ))
    }

    fn run_text<F: Family<B, Batch = TokenBatch<B>>>(self, family: F) -> Result<Self::Output> {
        let family = family.load(&self.job.checkpoint)?;
        let ModelConfig::Gpt(gpt) = &self.job.config.model else {
            unreachable!("only GPTs read text")
        };
        let windows = genzoo_data::text::consecutive_windows(&self.job.tokens, gpt.block_size);
        let windows = &windows[..self.job.windows.unwrap_or(usize::MAX).min(windows.len())];
        let bar = indicatif::ProgressBar::new(windows.len() as u64);
        let (mut nats, mut tokens) = (0.0, 0usize);
        // Full windows in batches; a shorter last one alone.
        for group in windows.chunk_by(|a, b| a.len() == b.len()) {
            for batch in group.chunks(TEXT_EVAL_BATCH) {
                let len = batch[0].len();
                let inputs: Vec<i64> = batch
                    .iter()
                    .flat_map(|w| w[..len - 1].iter().map(|&t| t as i64))
                    .collect();
                let targets: Vec<i64> = batch
                    .iter()
                    .flat_map(|w| w[1..].iter().map(|&t| t as i64))
                    .collect();
                let shape = [batch.len(), len - 1];
                let batch_tokens = TokenBatch::<B> {
                    inputs: Tensor::from_data(TensorData::new(inputs, shape), &self.device),
                    targets: Tensor::from_data(TensorData::new(targets, shape), &self.device),
                };
                let loss = family
                    .eval_batch(batch_tokens)?
                    .get("loss")
                    .ok_or_else(|| {
                        Error::Other("the model's evaluation reported no loss".into())
                    })?;
                nats += loss * (shape[0] * shape[1]) as f64;
                tokens += shape[0] * shape[1];
                bar.inc(shape[0] as u64);
            }
        }
        bar.finish_and_clear();
        let loss = nats / tokens as f64;
        let results = vec![
            ("val_loss".to_string(), loss),
            ("val_perplexity".to_string(), loss.exp()),
            (
                "val_bits_per_token".to_string(),
                loss / std::f64::consts::LN_2,
            ),
            ("val_tokens".to_string(), tokens as f64),
        ];
        println!("{:<26} value", "metric");
        for (name, value) in &results {
            println!("{name:<26} {value:.6}");
        }
        Ok(results)
    }
}

/// What [`evaluate_run`] evaluated, and found.
pub(crate) struct Evaluation {
    /// The checkpoint's directory.
    pub checkpoint: PathBuf,
    /// The step it was written at.
    pub step: u64,
    /// (metric, value) pairs.
    pub figures: Vec<(String, f64)>,
    /// The sampler settings asked for (a diffusion model's), if any.
    pub sampler: Option<serde_json::Value>,
}

/// Evaluates a run's checkpoint with `metrics` (the names of
/// [`EVAL_METRICS`]) on `n` samples drawn as `sampler` says (and `n` test
/// images for nll), prints a table, and returns the checkpoint, its step
/// and the figures (for [`write_eval_json`]).
pub(crate) fn evaluate_run(
    target: &EvalTarget,
    metrics: &[String],
    n: usize,
    terms: Option<usize>,
    seed: u64,
    sampler: &SamplerOptions,
    backend: BackendKind,
) -> Result<Evaluation> {
    let EvalTarget {
        config,
        checkpoint,
        manifest,
        ..
    } = target;
    if config.model.reads_text() {
        return Err(Error::Config(
            "a text model is evaluated by its validation loss: `genzoo eval --run RUN` \
             computes it over the whole split"
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
    if sampler.is_set() && !wants_samples {
        return Err(Error::Config(
            "the sampler flags set how the sample metrics (fid, kid, is, pr) draw; nll draws nothing"
                .into(),
        ));
    }
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
        Some(cached_evaluator(&source.name(), &train, &test)?)
    } else {
        None
    };
    with_backend_on_pool(
        backend,
        EvalJob {
            checkpoint: checkpoint.clone(),
            config: config.clone(),
            test,
            evaluator_dir,
            metrics,
            n,
            terms,
            seed,
            sampler: sampler.clone(),
        },
    )
    .map(|figures| Evaluation {
        checkpoint: checkpoint.clone(),
        step: manifest.step,
        figures,
        sampler: sampler.is_set().then(|| {
            serde_json::json!({
                "method": sampler.method,
                "steps": sampler.steps,
                "eta": sampler.eta,
                "guidance": sampler.guidance,
            })
        }),
    })
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
    sampler: SamplerOptions,
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
        let request = SampleRequest {
            n,
            seed: self.job.seed,
            sampler: self.job.sampler.clone(),
            ..Default::default()
        };
        let (features, probs) =
            evaluator.embed_samples(family, &request, |drawn| bar.set_position(drawn as u64))?;
        bar.finish_and_clear();
        Ok((features, probs, started.elapsed().as_secs_f64()))
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

/// Writes `eval.json` into the run: the checkpoint evaluated and its step
/// (when one was) and the figures.
pub(crate) fn write_eval_json(
    run: &Path,
    evaluated: Option<&Evaluation>,
    figures: &[(String, f64)],
) -> Result<()> {
    let mut record = serde_json::Map::new();
    if let Some(evaluated) = evaluated {
        let name = evaluated.checkpoint.display().to_string();
        record.insert("checkpoint".into(), serde_json::Value::String(name));
        record.insert("checkpoint_step".into(), serde_json::json!(evaluated.step));
        if let Some(sampler) = &evaluated.sampler {
            record.insert("sampler".into(), sampler.clone());
        }
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
