//! `genzoo export`: a dataset's images as one PNG file each, the reference
//! folder that FID tools outside genzoo compare `sample --images-dir` with.

use std::path::PathBuf;
use std::time::Instant;

use clap::{Args, ValueEnum};
use genzoo_core::image::save_images;
use genzoo_core::{CpuBackend, CpuDevice, Error, Result};
use genzoo_data::{Locator, Scaling, load_image_dataset};
use genzoo_train::{DataConfig, RunConfig, RunDir};

use super::sample::check_new_or_empty;
use super::train::check_data_dir_flag;

#[derive(Args, Debug)]
pub(super) struct ExportArgs {
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

/// Images written per tensor: bounded memory for any split.
const CHUNK: usize = 1000;

pub(super) fn export(args: ExportArgs) -> Result<()> {
    let data = match &args.run {
        Some(run) => {
            let config = RunConfig::load(&RunDir::open(run)?.config_file())?;
            if config.model.reads_text() {
                return Err(Error::Config(format!(
                    "{} trains on text; export writes an image dataset's images",
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
    let device = CpuDevice::default();
    let indices: Vec<usize> = (0..images.len()).collect();
    for (i, chunk) in indices.chunks(CHUNK).enumerate() {
        let batch = images.batch::<CpuBackend>(chunk, Scaling::Unit, &device);
        save_images(batch.images, &args.out, i * CHUNK)?;
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
