//! `genzoo sample`: images, or text, from a trained run.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use genzoo_core::backend::BackendTask;
use genzoo_core::family::SampleRequest;
use genzoo_core::image::{default_columns, save_grid, save_images};
use genzoo_core::latent;
use genzoo_core::{
    BackendKind, Error, Family, ImageBatch, Result, SamplerOptions, TextRequest, TokenBatch,
    TokenSampling,
};
use genzoo_data::{ImageDataset, Locator, Scaling, load_image_dataset};
use genzoo_models::gpt::family::prompt_tokens;
use genzoo_models::gpt::sample::cached_tokens;
use genzoo_models::presets::{FamilyTask, ModelConfig, with_family};
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
    /// Softmax temperature, 0 for greedy (gpt models) [default: 0.8 for text,
    /// 1 for images: the distribution whose bits/dim the model reports].
    #[arg(long)]
    temperature: Option<f64>,
    /// Sample among the k most likely tokens only (gpt models).
    #[arg(long)]
    top_k: Option<usize>,
    /// Sample among the most likely tokens whose probabilities sum to p (gpt models).
    #[arg(long)]
    top_p: Option<f64>,
    /// Generate without the key/value cache: the same tokens, slower (gpt models; for comparison).
    #[arg(long)]
    no_cache: bool,
    #[command(flatten)]
    diffusion: DiffusionSampling,
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
    /// Interpolate between random latent codes: --n rows (default 8) of K
    /// images, each row from one code to another along the great circle
    /// (VAEs, GANs; DDPMs from x_T through DDIM at η = 0).
    #[arg(long, value_name = "K")]
    interpolate: Option<usize>,
    /// Traverse the latent space around a test image's code (VAEs): a row
    /// per latent dimension, the most active first (--n of them, default up
    /// to 10), each set to K values from -R to R (--range).
    #[arg(long, value_name = "K")]
    traverse: Option<usize>,
    /// The traversal's range R [default: 3].
    #[arg(long, value_name = "R")]
    range: Option<f64>,
    /// The test image whose code is traversed [default: 0].
    #[arg(long, value_name = "I")]
    image: Option<usize>,
    /// Reconstruct the run's first --n test images from their codes (VAEs):
    /// the grid shows the originals above their reconstructions.
    #[arg(long)]
    reconstruct: bool,
    /// Write the --n samples as one PNG file each (000000.png, ...) into this
    /// new or empty directory instead of a grid, for tools outside genzoo
    /// (pytorch-fid, clean-fid). The same samples as the grid's for the same
    /// seed (both are drawn 500 at a time).
    #[arg(long, value_name = "DIR")]
    images_dir: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
}

/// How a diffusion model draws (`sample`, and `eval`'s sample metrics).
#[derive(Args, Debug, Default)]
pub(super) struct DiffusionSampling {
    /// Diffusion sampler: `ddim` (default of ddpm-unet, 50 steps),
    /// `dpm-solver` (DPM-Solver++(2M), 20 steps) or `ddpm` (all T steps).
    #[arg(long)]
    sampler: Option<String>,
    /// DDIM's or DPM-Solver's steps (network evaluations).
    #[arg(long)]
    steps: Option<usize>,
    /// DDIM stochasticity η in [0, 1] (0: deterministic).
    #[arg(long)]
    eta: Option<f64>,
    /// Classifier-free guidance weight w (class-conditional diffusion: cddpm-unet).
    #[arg(long)]
    guidance: Option<f64>,
}

impl DiffusionSampling {
    /// The flags as sampler options (the EMA weights, no progress bar).
    pub(super) fn options(&self) -> SamplerOptions {
        SamplerOptions {
            method: self.sampler.clone(),
            steps: self.steps,
            eta: self.eta,
            guidance: self.guidance,
            ..Default::default()
        }
    }

    /// Which of the flags are given, by name.
    fn given(&self) -> [(&'static str, bool); 4] {
        [
            ("--sampler", self.sampler.is_some()),
            ("--steps", self.steps.is_some()),
            ("--eta", self.eta.is_some()),
            ("--guidance", self.guidance.is_some()),
        ]
    }
}

pub(super) fn sample(args: SampleArgs) -> Result<()> {
    let (_, config, checkpoint, _) = load_run(&args.run, &args.checkpoint)?;
    check_sample_flags(&args, &config)?;
    let sampler = SamplerOptions {
        raw_weights: args.raw_weights,
        progress: true,
        ..args.diffusion.options()
    };
    let default_n = if args.interpolate.is_some() {
        8
    } else if args.traverse.is_some() {
        TRAVERSED_DIMS
    } else {
        64
    };
    let token_sampling = |default_temperature: f64| TokenSampling {
        temperature: args.temperature.unwrap_or(default_temperature),
        top_k: args.top_k,
        top_p: args.top_p,
        use_cache: !args.no_cache,
    };
    let request = SampleRequest {
        n: args.n.unwrap_or(default_n),
        seed: args.seed,
        class: args.class,
        sampler,
        token_sampling: token_sampling(1.0),
    };
    let text = TextRequest {
        prompt: args.prompt.unwrap_or_default(),
        tokens: args.tokens.unwrap_or(500),
        sampling: token_sampling(0.8),
        seed: args.seed,
    };
    let test_images = || -> Result<ImageDataset> {
        let source = config.data.image_source()?;
        let (_, test) =
            load_image_dataset(&source, &Locator::from_env(config.data.data_dir.clone()))?;
        Ok(test)
    };
    let grid = if let Some(rows) = args.complete_rows {
        Grid::Completions {
            originals: test_images()?.take(request.n),
            rows,
        }
    } else if let Some(cols) = args.interpolate {
        Grid::Interpolations { cols }
    } else if let Some(cols) = args.traverse {
        let test = test_images()?;
        let image = args.image.unwrap_or(0);
        if image >= test.len() {
            return Err(Error::Config(format!(
                "--image {image} is out of range: the test split has {} images",
                test.len()
            )));
        }
        let range = args.range.unwrap_or(3.0);
        Grid::Traversals {
            test,
            image,
            values: genzoo_core::latent::linspace(-range, range, cols),
        }
    } else if args.reconstruct {
        Grid::Reconstructions {
            originals: test_images()?.take(request.n),
        }
    } else if let Some(dir) = args.images_dir {
        check_new_or_empty(&dir)?;
        Grid::Files { dir }
    } else {
        Grid::Samples
    };
    with_backend_on_pool(
        args.backend,
        SampleJob {
            config,
            checkpoint,
            request,
            text,
            grid,
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
        // "of images" too: gpt-pixel is a gpt model, and draws no text.
        Err(Error::Config(format!(
            "{} {} for {kind}; {} is a {} model of {}",
            flags.join(", "),
            if flags.len() == 1 { "is" } else { "are" },
            config.preset,
            config.model.family(),
            if config.model.reads_text() {
                "text"
            } else {
                "images"
            }
        )))
    };
    let [sampler, steps, eta, guidance] = args.diffusion.given();
    let diffusion = given(&[
        sampler,
        steps,
        eta,
        guidance,
        ("--raw-weights", args.raw_weights),
        ("--trajectory", args.trajectory),
    ]);
    if config.model.family() != "ddpm" {
        misplaced(diffusion, "diffusion models")?;
    }
    let token_sampling = given(&[
        ("--temperature", args.temperature.is_some()),
        ("--top-k", args.top_k.is_some()),
        ("--top-p", args.top_p.is_some()),
        ("--no-cache", args.no_cache),
    ]);
    if config.model.family() != "gpt" {
        misplaced(
            token_sampling,
            "models that draw tokens (gpt-char, gpt-pixel)",
        )?;
    }
    let text = given(&[
        ("--prompt", args.prompt.is_some()),
        ("--tokens", args.tokens.is_some()),
    ]);
    // The image modes other than plain samples: each makes its own output.
    let modes = [
        ("--complete-rows", args.complete_rows.is_some()),
        ("--interpolate", args.interpolate.is_some()),
        ("--traverse", args.traverse.is_some()),
        ("--reconstruct", args.reconstruct),
        ("--images-dir", args.images_dir.is_some()),
    ];
    let image = given(
        &[
            &[
                ("--n", args.n.is_some()),
                ("--class", args.class.is_some()),
                ("--out", args.out.is_some()),
            ][..],
            &modes,
        ]
        .concat(),
    );
    let grids = given(&[&modes[..], &[("--trajectory", args.trajectory)]].concat());
    if grids.len() > 1 {
        return Err(Error::Config(format!(
            "{} each make their own grid: give one of them",
            grids.join(" and ")
        )));
    }
    let traversal_only = given(&[
        ("--range", args.range.is_some()),
        ("--image", args.image.is_some()),
    ]);
    if args.traverse.is_none() && !traversal_only.is_empty() {
        return Err(Error::Config(format!(
            "{} {} to traversals only: give --traverse K too",
            traversal_only.join(" and "),
            if traversal_only.len() == 1 {
                "applies"
            } else {
                "apply"
            }
        )));
    }
    if let Some(out) = &args.out {
        super::check_output_extension(out, "png", "a sample grid")?;
    }
    if args.images_dir.is_some() && args.out.is_some() {
        return Err(Error::Config(
            "--images-dir writes one file per sample instead of --out's grid: give one of them"
                .into(),
        ));
    }
    if (args.traverse.is_some() || args.reconstruct) && args.class.is_some() {
        return Err(Error::Config(
            "--class is for drawn samples and interpolations; traversals and reconstructions \
             decode test images with their own labels"
                .into(),
        ));
    }
    if let Some(k) = args.interpolate
        && k < 2
    {
        return Err(Error::Config(format!(
            "--interpolate K needs K ≥ 2 images per row (both ends), got {k}"
        )));
    }
    if args.traverse == Some(0) {
        return Err(Error::Config("--traverse K needs K ≥ 1 values".into()));
    }
    if let Some(r) = args.range
        && !(r.is_finite() && r > 0.0)
    {
        return Err(Error::Config(format!("--range must be positive, got {r}")));
    }
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

/// Latent dimensions a traversal shows by default (the most active ones).
const TRAVERSED_DIMS: usize = 10;

/// Test images whose posterior means rank a VAE's latent dimensions.
const ACTIVITY_IMAGES: usize = 1000;

/// What an image model's grid shows.
enum Grid {
    /// Samples drawn from the model.
    Samples,
    /// Test images above their completions from their top `rows` rows.
    Completions {
        originals: ImageDataset,
        rows: usize,
    },
    /// `--n` rows of `cols` images between two random latent codes.
    Interpolations { cols: usize },
    /// A test image's code with one dimension at a time set to each value.
    Traversals {
        test: ImageDataset,
        image: usize,
        values: Vec<f64>,
    },
    /// Test images above their reconstructions.
    Reconstructions { originals: ImageDataset },
    /// No grid: one PNG file per sample in `dir`.
    Files { dir: PathBuf },
}

/// Samples drawn per call, for a grid or files: bounded memory for any --n.
const FILE_CHUNK: usize = 500;

/// Refuses a directory for image files that exists and holds anything:
/// images written among other files could not be told from them. (Checked
/// before the work; the directory is created when the first files are.)
pub(super) fn check_new_or_empty(dir: &Path) -> Result<()> {
    if dir.exists() {
        let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        if entries.next().is_some() {
            return Err(Error::Config(format!(
                "{} is not empty: image files go into a new or empty directory, so that \
                 nothing else is taken for one of them",
                dir.display()
            )));
        }
    }
    Ok(())
}

/// How a text model generated `request`'s tokens, for the line after them:
/// the key/value cache serves only those whose context fits in the block.
fn generation_method(model: &ModelConfig, request: &TextRequest) -> Result<String> {
    if !request.sampling.use_cache {
        return Ok("without the key/value cache".to_string());
    }
    let gpt_text = match model {
        ModelConfig::Gpt(gpt) => gpt.input.text_vocabulary().map(|v| (gpt.block_size, v)),
        _ => None,
    };
    let Some((block, vocabulary)) = gpt_text else {
        return Ok("with the key/value cache".to_string()); // only a gpt generates text
    };
    let prompt = prompt_tokens(&vocabulary, &request.prompt)?.len();
    Ok(match cached_tokens(prompt, request.tokens, block, true) {
        // Before the `0` arm: zero tokens to generate need no context at all.
        n if n == request.tokens => "with the key/value cache".to_string(),
        0 => format!("each recomputing the full {block}-token context, which the prompt fills"),
        n => format!(
            "the first {n} with the key/value cache, the other {} each recomputing the full \
             {block}-token context",
            request.tokens - n
        ),
    })
}

struct SampleJob {
    config: RunConfig,
    checkpoint: PathBuf,
    request: SampleRequest,
    text: TextRequest,
    grid: Grid,
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
        let request = &self.job.request;
        let device = &self.device;
        let (images, columns, what) = match &self.job.grid {
            Grid::Files { dir } => return self.write_files(&family, dir),
            Grid::Samples => (
                self.draw_samples(&family)?,
                default_columns(request.n),
                format!("{} samples", request.n),
            ),
            Grid::Completions { originals, rows } => {
                let originals =
                    originals.batch::<B::InnerBackend>(&all(originals), Scaling::Unit, device);
                let completed = family.complete_images(
                    originals.images.clone(),
                    *rows,
                    request.seed,
                    &request.token_sampling,
                )?;
                above(originals.images, completed, "completions")
            }
            Grid::Interpolations { cols } => (
                latent::interpolate(
                    &family,
                    request.n,
                    *cols,
                    request.class,
                    request.seed,
                    &request.sampler,
                    device,
                )?,
                *cols,
                format!("{} interpolations of {cols} images", request.n),
            ),
            Grid::Traversals {
                test,
                image,
                values,
            } => {
                let dims = self.most_active_dims(&family, test)?;
                let one = test.batch::<B::InnerBackend>(&[*image], Scaling::Unit, device);
                let images = latent::traverse(
                    &family,
                    one.images,
                    one.labels,
                    &dims,
                    values,
                    &request.sampler,
                )?;
                let rows = dims.len();
                (
                    images,
                    values.len(),
                    format!(
                        "traversals of test image {image} ({rows} dimensions × {} values from {} to {})",
                        values.len(),
                        values[0],
                        values[values.len() - 1]
                    ),
                )
            }
            Grid::Reconstructions { originals } => {
                let originals =
                    originals.batch::<B::InnerBackend>(&all(originals), Scaling::Unit, device);
                let rebuilt = latent::reconstruct(
                    &family,
                    originals.images.clone(),
                    originals.labels,
                    &request.sampler,
                )?;
                let n = rebuilt.dims()[0];
                let error: f64 = (rebuilt.clone() - originals.images.clone())
                    .square()
                    .mean()
                    .into_scalar()
                    .elem();
                println!(
                    "mean squared error of the {n} reconstructions: {error:.5} (pixels in [0, 1])"
                );
                above(originals.images, rebuilt, "reconstructions")
            }
        };
        save_grid(images, columns, &self.job.out)?;
        println!(
            "wrote {what} from {} to {} in {:.2} s",
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
        // Bytes as the model emits them: a byte-level model's need not be UTF-8.
        let text = family.generate_bytes(&self.job.text)?;
        let secs = started.elapsed().as_secs_f64();
        let mut stdout = std::io::stdout().lock();
        [self.job.text.prompt.as_bytes(), &text, b"\n"]
            .iter()
            .try_for_each(|part| stdout.write_all(part))
            .and_then(|()| stdout.flush())
            .map_err(|e| Error::io("standard output", e))?;
        let request = &self.job.text;
        eprintln!(
            "generated {} tokens in {secs:.2} s ({:.0} tokens/s, {})",
            request.tokens,
            request.tokens as f64 / secs.max(1e-9),
            generation_method(&self.job.config.model, request)?
        );
        Ok(())
    }
}

impl<B: AutodiffBackend> SampleRun<B> {
    /// Draws the request's samples [`FILE_CHUNK`] at a time, in bounded
    /// memory for any `--n` (the first chunk with the request's seed, the
    /// others with seeds derived from it), handing each chunk to `each`
    /// with the number of samples before it. More than one chunk show one
    /// progress bar over the samples instead of each chunk's own.
    fn draw_in_chunks<F: Family<B>>(
        &self,
        family: &F,
        mut each: impl FnMut(Tensor<B::InnerBackend, 4>, usize) -> Result<()>,
    ) -> Result<()> {
        let request = &self.job.request;
        let chunked = request.n > FILE_CHUNK;
        let quiet = SampleRequest {
            sampler: SamplerOptions {
                progress: request.sampler.progress && !chunked,
                ..request.sampler.clone()
            },
            ..request.clone()
        };
        let bar = if chunked {
            indicatif::ProgressBar::new(request.n as u64)
        } else {
            indicatif::ProgressBar::hidden()
        };
        let mut done = 0;
        for chunk in quiet.chunks(FILE_CHUNK, |k| match k {
            0 => request.seed,
            k => genzoo_core::seed::derive(request.seed, "sample-files", k),
        }) {
            each(family.sample_images(&chunk)?, done)?;
            done += chunk.n;
            bar.set_position(done as u64);
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Draws the request's samples as one grid's images: those that
    /// `--images-dir` writes for the same seed.
    fn draw_samples<F: Family<B>>(&self, family: &F) -> Result<Tensor<B::InnerBackend, 4>> {
        let mut chunks = Vec::new();
        self.draw_in_chunks(family, |images, _| {
            chunks.push(images);
            Ok(())
        })?;
        Ok(Tensor::cat(chunks, 0))
    }

    /// Writes the request's samples as one PNG file each into `dir`.
    fn write_files<F: Family<B>>(&self, family: &F, dir: &Path) -> Result<()> {
        let started = Instant::now();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        self.draw_in_chunks(family, |images, done| save_images(images, dir, done))?;
        println!(
            "wrote {} samples from {} as PNG files into {} in {:.2} s",
            self.job.request.n,
            self.job.checkpoint.display(),
            dir.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// The request's number of latent dimensions, the most active first
    /// (variance of the posterior means over the first test images; see
    /// [`latent::activity`]), printed with their activity.
    fn most_active_dims<F: Family<B>>(
        &self,
        family: &F,
        test: &ImageDataset,
    ) -> Result<Vec<usize>> {
        let dim = family.latent_dim().unwrap_or(0);
        let images = test.take(ACTIVITY_IMAGES);
        let mut codes = Vec::with_capacity(images.len() * dim);
        let indices = all(&images);
        for chunk in indices.chunks(250) {
            let batch = images.batch::<B::InnerBackend>(chunk, Scaling::Unit, &self.device);
            let means = family.encode_images(batch.images, batch.labels)?;
            codes.extend(
                means
                    .into_data()
                    .to_vec::<f32>()
                    .map_err(|e| Error::Other(format!("cannot read latent codes: {e:?}")))?,
            );
        }
        let activity = latent::activity(&codes, dim);
        let order = latent::by_activity(&activity);
        let active = activity
            .iter()
            .filter(|&&v| v > latent::ACTIVE_VARIANCE)
            .count();
        let shown: Vec<usize> = order.into_iter().take(self.job.request.n).collect();
        println!(
            "{active} of {dim} latent dimensions are active (variance of the posterior mean over {} \
             test images > {}); rows: {}",
            images.len(),
            latent::ACTIVE_VARIANCE,
            shown
                .iter()
                .map(|&d| format!("dim {d} ({:.3})", activity[d]))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(shown)
    }
}

/// A grid of images above what the model made of them (in the same
/// layout, so each result sits in its original's place one half down), its
/// column count and what it shows.
fn above<Bk: Backend>(
    originals: Tensor<Bk, 4>,
    results: Tensor<Bk, 4>,
    what: &str,
) -> (Tensor<Bk, 4>, usize, String) {
    let n = results.dims()[0];
    (
        Tensor::cat(vec![originals, results], 0),
        default_columns(n),
        format!("{n} {what} below their originals"),
    )
}

/// Every index of `images`.
fn all(images: &ImageDataset) -> Vec<usize> {
    (0..images.len()).collect()
}
