//! # genzoo
//!
//! Train and compare generative models in Rust, on burn. This crate is the
//! `genzoo` command-line tool and a thin re-export of the library crates:
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

pub mod bench;
pub mod cli;
pub mod compare;
