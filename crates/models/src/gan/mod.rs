//! Generative adversarial networks: DCGAN (Radford et al. 2016) in the
//! InfoGAN MNIST layout, a class-conditional DCGAN with a projection
//! discriminator (Miyato & Koyama 2018), SNGAN (spectral normalisation and
//! the hinge loss, Miyato et al. 2018) and WGAN-GP (Gulrajani et al. 2017).
//!
//! - [`model`]: generator and discriminator;
//! - [`spectral`]: spectral normalisation with persistent power-iteration state;
//! - [`loss`]: non-saturating, hinge and Wasserstein losses, the gradient penalty;
//! - [`family`]: the two-optimizer training step.

pub mod family;
pub mod loss;
pub mod model;
pub mod spectral;

pub use family::{GanConfig, GanTrainer};
pub use loss::GanLoss;
pub use model::{Discriminator, DiscriminatorKind, Generator};
