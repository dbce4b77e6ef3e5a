//! # genzoo-train
//!
//! The training engine every family plugs into: one straight loop
//! ([`Trainer`]) with a step or epoch budget, learning-rate schedules,
//! global-norm clipping, per-step seeding, evaluation on held-out data
//! (with the FID and KID of samples, [`TrainConfig::fid_samples`]),
//! `metrics.jsonl`/`metrics.csv` and TensorBoard event files, sample
//! grids, and atomic, checksummed checkpoints with exact resume; a run
//! may start from another run's
//! weights ([`TrainConfig::init_from`]: fine-tuning).
//!
//! ```no_run
//! use genzoo_core::CpuDevice;
//! use genzoo_data::{ImageData, Locator, Scaling, load_image_dataset};
//! use genzoo_models::vae::{VaeConfig, VaeTrainer};
//! use genzoo_train::{RunDir, TrainConfig, Trainer};
//! type B = burn::backend::Autodiff<burn::backend::Flex>;
//!
//! let (train, test) = load_image_dataset(&"mnist".parse().unwrap(), &Locator::from_env(None)).unwrap();
//! let data = ImageData::new(train, test, 128, Scaling::Unit, 0).unwrap();
//! let device = CpuDevice::default();
//! let vae = VaeTrainer::<B>::new(VaeConfig::default(), &device);
//! let config = TrainConfig { epochs: Some(1), lr: 1e-3, ..Default::default() };
//! let run = RunDir::create("runs/vae", false).unwrap();
//! let outcome = Trainer::new(run, config).fit(vae, &data, &device).unwrap();
//! println!("trained {} steps", outcome.step);
//! ```

#![warn(missing_docs)]

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data_parallel;
pub mod evaluator;
pub mod experiment;
pub mod logger;
pub mod metrics;
pub mod plot;
pub mod run_dir;
pub mod schedule;
pub mod tensorboard;
pub mod trainer;

pub use checkpoint::{CheckpointIdentity, Manifest};
pub use config::{DataConfig, RunConfig, TrainConfig};
pub use run_dir::{RunDir, RunLock};
pub use schedule::Schedule;
pub use trainer::{TrainOutcome, Trainer};
