//! Variational autoencoders (Kingma & Welling 2014), with β-VAE (Higgins et
//! al. 2017) and class conditioning (Sohn et al. 2015).
//!
//! - [`model`]: encoder q(z | x, y) and decoder p(x | z, y) (y only when class-conditional), MLP or convolutional.
//! - [`objective`]: the negative ELBO (Bernoulli or discretised-logistic NLL
//!   + β·KL) and the importance-weighted bound (Burda et al. 2016).
//! - [`family`]: the training step with Adam.

pub mod family;
pub mod model;
pub mod objective;

pub use family::VaeTrainer;
pub use model::{PixelLikelihood, Vae, VaeArchitecture, VaeConfig};
