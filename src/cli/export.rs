//! `genzoo export`: what code outside genzoo reads. `export images` writes
//! a dataset's images as one PNG file each (the reference folder that FID
//! tools compare `sample --images-dir` with); `export weights` writes a
//! run's weights in PyTorch's layout as safetensors.

use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use clap::{Args, Subcommand, ValueEnum};
use genzoo_core::backend::{CpuAutodiff, CpuDevice};
use genzoo_core::image::{image_file_name, save_pixels};
use genzoo_core::weights::{NamedTensors, write_safetensors};
use genzoo_core::{Error, Family, ImageBatch, Result, TokenBatch};
use genzoo_data::{Locator, load_image_dataset};
use genzoo_models::presets::{FamilyTask, with_family};
use genzoo_train::{DataConfig, RunDir};

use super::sample::check_new_or_empty;
use super::train::check_data_dir_flag;

#[derive(Subcommand, Debug)]
pub(super) enum ExportCommand {
    /// A dataset's images (a run's, or a named one), one PNG file each.
    Images(ImagesArgs),
    /// A run's weights in PyTorch's layout, as a safetensors file (a GPT's
    /// under nanoGPT's names).
    Weights(WeightsArgs),
}

pub(super) fn export(command: ExportCommand) -> Result<()> {
    match command {
        ExportCommand::Images(args) => export_images(args),
        ExportCommand::Weights(args) => export_weights(args),
    }
}

#[derive(Args, Debug)]
pub(super) struct ImagesArgs {
    /// Take the dataset (and its image size and data directory) from this run.
    #[arg(long, conflicts_with_all = ["dataset", "data_dir", "image_size"])]
    run: Option<PathBuf>,
    /// The dataset: mnist, fashion-mnist, cifar-10, idx:<DIR> or folder:<DIR>.
    #[arg(long, required_unless_present = "run")]
    dataset: Option<String>,
    /// Directory with the dataset's files.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Resize a folder dataset's images to N×N, as `train --image-size`.
    #[arg(long)]
    image_size: Option<usize>,
    /// Which split.
    #[arg(long, value_enum, default_value_t = Split::Test)]
    split: Split,
    /// Export only the first N images.
    #[arg(long)]
    n: Option<usize>,
    /// A new or empty directory for the files (000000.png, ...).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Split {
    Train,
    Test,
}

fn export_images(args: ImagesArgs) -> Result<()> {
    let data = match &args.run {
        Some(run) => {
            let config = RunDir::open(run)?.load_config()?;
            if config.model.reads_text() {
                return Err(Error::Config(format!(
                    "{} trains on text; export images writes an image dataset's images",
                    run.display()
                )));
            }
            config.data
        }
        None => DataConfig {
            dataset: args.dataset.clone().unwrap_or_default(),
            data_dir: args.data_dir.clone(),
            image_size: args.image_size,
            ..Default::default()
        },
    };
    let source = data.image_source()?;
    if args.data_dir.is_some() {
        check_data_dir_flag(&source)?;
    }
    if args.n == Some(0) {
        return Err(Error::Config("--n must be at least 1".into()));
    }
    check_new_or_empty(&args.out)?;
    let started = Instant::now();
    let (train, test) = load_image_dataset(&source, &Locator::from_env(data.data_dir.clone()))?;
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let images = match args.split {
        Split::Train => train,
        Split::Test => test,
    };
    let images = images.take(args.n.unwrap_or(usize::MAX));
    for i in 0..images.len() {
        save_pixels(
            images.image(i),
            images.dims(),
            &args.out.join(image_file_name(i)),
        )?;
    }
    println!(
        "wrote {} {} images of {} into {} in {:.2} s",
        images.len(),
        match args.split {
            Split::Train => "training",
            Split::Test => "test",
        },
        source.name(),
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Args, Debug)]
pub(super) struct WeightsArgs {
    /// The run directory.
    #[arg(long)]
    run: PathBuf,
    /// Which checkpoint: latest (the newest good one), best, or a step number.
    #[arg(long, default_value = "latest")]
    checkpoint: String,
    /// The file to write (`.safetensors`).
    #[arg(long)]
    out: PathBuf,
}

fn export_weights(args: WeightsArgs) -> Result<()> {
    super::check_output_extension(&args.out, "safetensors", "the weights file")?;
    if args.out.exists() {
        return Err(Error::Config(format!(
            "{} exists: export weights writes a new file",
            args.out.display()
        )));
    }
    let (_, config, checkpoint, manifest) = super::load_run(&args.run, &args.checkpoint)?;
    // Straight on the CPU backend, not through `with_backend`, which would
    // compile the loading for every backend of the build too.
    let tensors = with_family::<CpuAutodiff, _>(
        &config.model,
        &CpuDevice::default(),
        LoadWeights { checkpoint },
    )?;
    // What rebuilding the model outside genzoo needs: the model section of
    // the run's config (a text GPT's vocabulary included) and where it came from.
    let model = toml::to_string(&config.model).map_err(|e| Error::Config(e.to_string()))?;
    let metadata = [
        ("format", "pt".to_string()),
        ("genzoo_version", env!("CARGO_PKG_VERSION").to_string()),
        ("preset", config.preset.clone()),
        ("family", config.model.family().to_string()),
        ("step", manifest.step.to_string()),
        ("model_config", model),
    ];
    write_safetensors(&args.out, &tensors, &metadata)?;
    let scalars: usize = tensors.iter().map(|(_, t)| t.num_elements()).sum();
    println!(
        "wrote {} tensors ({scalars} values) of {} at step {} to {}",
        tensors.len(),
        config.preset,
        manifest.step,
        args.out.display()
    );
    Ok(())
}

/// Loads a checkpoint into its family and takes its weights.
struct LoadWeights {
    checkpoint: PathBuf,
}

impl<B: AutodiffBackend> FamilyTask<B> for LoadWeights {
    type Output = NamedTensors;
    fn run<F: Family<B, Batch = ImageBatch<B>>>(self, family: F) -> Result<NamedTensors> {
        family.load(&self.checkpoint)?.pytorch_weights()
    }
    fn run_text<F: Family<B, Batch = TokenBatch<B>>>(self, family: F) -> Result<NamedTensors> {
        family.load(&self.checkpoint)?.pytorch_weights()
    }
}
