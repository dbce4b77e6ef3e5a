//! `genzoo sample`: images, or text, from a trained run.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use genzoo_core::backend::BackendTask;
use genzoo_core::family::SampleRequest;
use genzoo_core::image::{default_columns, save_grid};
use genzoo_core::{
    BackendKind, Error, Family, ImageBatch, Result, SamplerOptions, TextRequest, TokenBatch,
};
use genzoo_data::{Locator, load_image_dataset};
use genzoo_models::presets::{FamilyTask, with_family};
use genzoo_train::RunConfig;

use super::{load_run, with_backend_on_pool};

#[derive(Args, Debug)]
pub(super) struct SampleArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// Which checkpoint: latest (the newest good one), best (a run trained
    /// with --keep-best), or a step number.
    #[arg(long, default_value = "latest")]
    checkpoint: String,
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

pub(super) fn sample(args: SampleArgs) -> Result<()> {
    let (_, config, checkpoint, _) = load_run(&args.run, &args.checkpoint)?;
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
