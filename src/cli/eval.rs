//! `genzoo eval` and `genzoo evaluator`: sample metrics on the evaluator's
//! features and likelihoods in bits/dim, written to a run's eval.json.

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand};
use genzoo_core::backend::BackendTask;
use genzoo_core::family::SampleRequest;
use genzoo_core::{BackendKind, Error, Family, ImageBatch, Result};
use genzoo_data::{DatasetSource, Locator, load_image_dataset};
use genzoo_models::presets::{FamilyTask, with_family};
use genzoo_train::RunConfig;
use genzoo_train::evaluator::Evaluator;

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

pub(super) fn eval(args: EvalArgs) -> Result<()> {
    let metrics: Vec<String> = args
        .metrics
        .split(',')
        .map(|m| m.trim().to_lowercase())
        .filter(|m| !m.is_empty())
        .collect();
    let evaluation = evaluate_run(
        &args.run,
        &args.checkpoint,
        &metrics,
        args.n,
        args.terms,
        args.seed,
        args.backend,
    )?;
    write_eval_json(&args.run, Some(&evaluation), &evaluation.figures)
}

/// What [`evaluate_run`] evaluated, and found.
pub(crate) struct Evaluation {
    /// The checkpoint's directory.
    pub checkpoint: PathBuf,
    /// The step it was written at.
    pub step: u64,
    /// (metric, value) pairs.
    pub figures: Vec<(String, f64)>,
}

/// Evaluates a run's checkpoint `which` (`latest`, `best` or a step) with
/// `metrics` (the names of [`EVAL_METRICS`]) on `n` samples (and `n` test images for nll),
/// prints a table, and returns the checkpoint, its step and the figures
/// (for [`write_eval_json`]).
pub(crate) fn evaluate_run(
    run_path: &Path,
    which: &str,
    metrics: &[String],
    n: usize,
    terms: Option<usize>,
    seed: u64,
    backend: BackendKind,
) -> Result<Evaluation> {
    let (_, config, checkpoint, manifest) = load_run(run_path, which)?;
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
    .map(|figures| Evaluation {
        checkpoint,
        step: manifest.step,
        figures,
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
