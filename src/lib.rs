//! # genzoo
//!
//! Train and compare generative models in Rust, on burn. This library is a
//! thin re-export of the four crates (the `genzoo` command-line tool is the
//! package's binary, built on them):
//!
//! - [`core`]: backends, the [`core::Family`] trait, seeding, images, errors;
//! - [`data`]: MNIST-format datasets, download and cache, batching;
//! - [`models`]: the model families and their presets;
//! - [`train`]: the training engine, checkpoints and metrics.

#![warn(missing_docs)]

pub use genzoo_core as core;
pub use genzoo_data as data;
pub use genzoo_models as models;
pub use genzoo_train as train;
