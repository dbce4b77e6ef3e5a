//! # genzoo-models
//!
//! The model families, one folder each: the network in one file that reads
//! like its paper, the objective beside it, the training step (the
//! [`genzoo_core::Family`] implementation) in `family.rs`, and named
//! configurations in [`presets`](mod@presets).
//!
//! The families: [`vae`] (MLP and convolutional, β-VAE, class-conditional),
//! [`gan`] (DCGAN, class-conditional DCGAN, SNGAN, WGAN-GP), [`ddpm`]
//! (U-Net, DDPM and DDIM samplers, EMA, classifier-free guidance) and
//! [`gpt`] (over text and over pixels).

#![warn(missing_docs)]

pub mod ddpm;
pub mod gan;
pub mod gpt;
pub mod layers;
pub mod presets;
pub mod vae;

pub use presets::{ModelConfig, Preset, preset, presets};

/// burn's CPU RNG is one per process: unit tests that seed it and expect
/// exact draws hold this lock so that parallel tests do not interleave.
#[cfg(test)]
pub(crate) fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
