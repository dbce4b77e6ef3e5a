//! Denoising diffusion probabilistic models (Ho et al. 2020) with DDIM
//! sampling (Song et al. 2021), DPM-Solver++ (Lu et al. 2022), the cosine
//! schedule (Nichol & Dhariwal 2021),
//! v-prediction (Salimans & Ho 2022) and classifier-free guidance
//! (Ho & Salimans 2022).
//!
//! - [`schedule`]: the forward process q(x_t | x_0) and its tables;
//! - [`unet`]: the noise predictor (it knows nothing of schedules);
//! - [`objective`]: targets, conversions, the loss and the variational bound;
//! - [`sampler`]: DDPM, DDIM and DPM-Solver++(2M) reverse steps, independent of the network;
//! - [`family`]: training with EMA weights, sampling, bits/dim.

pub mod family;
pub mod objective;
pub mod sampler;
pub mod schedule;
pub mod unet;

pub use family::{DdpmConfig, DdpmTrainer, SamplerConfig, SamplerMethod};
pub use objective::Prediction;
pub use sampler::{Ddim, Ddpm, DdpmVariance, Denoised, DpmSolver, Sampler};
pub use schedule::{BetaSchedule, NoiseSchedule};
pub use unet::{UNet, UNetConfig};
