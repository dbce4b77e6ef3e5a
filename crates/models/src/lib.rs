//! # genzoo-models
//!
//! The model families, one folder each: the network in one file that reads
//! like its paper, the objective beside it, the training step (the
//! [`genzoo_core::Family`] implementation) in `family.rs`, and named
//! configurations in [`presets`].
//!
//! Built so far: [`vae`] (MLP and convolutional, β-VAE, class-conditional).
//! GAN, DDPM and transformer families are planned.

pub mod presets;
pub mod vae;

pub use presets::{ModelConfig, Preset, preset, presets};
