//! # genzoo-core
//!
//! The shared core of genzoo: backend choice, the traits every model family
//! implements ([`Family`], [`TrainData`]), the per-step context that applies
//! optimizer updates ([`StepContext`]), seeding, tensor↔image helpers,
//! record I/O with shape validation, and the error type.
//!
//! Nothing here names a concrete model: families live in `genzoo-models`,
//! the training loop in `genzoo-train`.

#![warn(missing_docs)]

pub mod backend;
pub mod ema;
pub mod error;
pub mod family;
pub mod fused;
pub mod grad;
pub mod image;
pub mod latent;
pub mod noise;
pub mod optim;
pub mod parallel;
pub mod record;
pub mod seed;
pub mod vocabulary;
pub mod weights;

pub use backend::{BackendKind, CpuBackend, CpuDevice};
pub use error::{Error, Result};
pub use family::{
    Family, ImageBatch, Metrics, MicroBatch, SampleRequest, SamplerOptions, ShardBatch,
    StepContext, TextRequest, TokenBatch, TokenSampling, TrainData,
};
