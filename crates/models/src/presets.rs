//! Named configurations. A preset is a model config plus the training
//! defaults of its reference recipe (batch size, learning rate, pixel
//! scaling), nothing more. The reference presets are built exactly as
//! `shared/reference-models.md` writes them.

use burn::tensor::backend::AutodiffBackend;
use genzoo_core::{Family, ImageBatch, Result};
use serde::{Deserialize, Serialize};

use crate::gan::{DiscriminatorKind, GanConfig, GanLoss, GanTrainer};
use crate::vae::{VaeArchitecture, VaeConfig, VaeTrainer};

/// The configuration of any family's model, tagged by family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum ModelConfig {
    /// A variational autoencoder.
    Vae(VaeConfig),
    /// A generative adversarial network.
    Gan(GanConfig),
}

impl ModelConfig {
    /// The family's name.
    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Vae(_) => "vae",
            ModelConfig::Gan(_) => "gan",
        }
    }

    /// Sets the image shape and number of classes from the data.
    pub fn adapt_to_data(
        &mut self,
        channels: usize,
        height: usize,
        width: usize,
        num_classes: usize,
    ) {
        match self {
            ModelConfig::Vae(c) => {
                c.channels = channels;
                c.height = height;
                c.width = width;
                if c.conditional {
                    c.num_classes = num_classes;
                }
            }
            ModelConfig::Gan(c) => {
                c.channels = channels;
                c.height = height;
                c.width = width;
                if c.conditional {
                    c.num_classes = num_classes;
                }
            }
        }
    }

    /// Checks the config for values no model can be built from.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Vae(c) => c.validate(),
            ModelConfig::Gan(c) => c.validate(),
        }
    }
}

/// A named model configuration with its reference training recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    /// The name users type (`vae-mlp`).
    pub name: &'static str,
    /// One line for `genzoo list`.
    pub description: &'static str,
    /// The model.
    pub model: ModelConfig,
    /// Examples per optimizer step.
    pub batch_size: usize,
    /// Learning rate.
    pub lr: f64,
    /// Pixel scaling the model expects (`unit` or `signed`).
    pub scaling: &'static str,
}

/// Every preset, in the order `genzoo list` shows them.
pub fn presets() -> Vec<Preset> {
    let vae = VaeConfig::default();
    let gan = GanConfig::default();
    vec![
        Preset {
            name: "vae-mlp",
            description: "reference MNIST VAE: 784-400-20 MLP encoder/decoder, Bernoulli likelihood (652,824 params)",
            model: ModelConfig::Vae(vae.clone()),
            batch_size: 128,
            lr: 1e-3,
            scaling: "unit",
        },
        Preset {
            name: "vae-conv",
            description: "convolutional VAE: two stride-2 convs, 400-unit dense layer, 20-d latent",
            model: ModelConfig::Vae(VaeConfig {
                architecture: VaeArchitecture::Conv,
                ..vae.clone()
            }),
            batch_size: 128,
            lr: 1e-3,
            scaling: "unit",
        },
        Preset {
            name: "beta-vae",
            description: "β-VAE (β = 4) on the MLP architecture: a more factorised latent at the cost of sharpness",
            model: ModelConfig::Vae(VaeConfig {
                beta: 4.0,
                ..vae.clone()
            }),
            batch_size: 128,
            lr: 1e-3,
            scaling: "unit",
        },
        Preset {
            name: "cvae-mlp",
            description: "class-conditional VAE: the label one-hot enters encoder and decoder; sample any class",
            model: ModelConfig::Vae(VaeConfig {
                conditional: true,
                num_classes: 10,
                ..vae.clone()
            }),
            batch_size: 128,
            lr: 1e-3,
            scaling: "unit",
        },
        Preset {
            name: "cvae-conv",
            description: "class-conditional convolutional VAE",
            model: ModelConfig::Vae(VaeConfig {
                architecture: VaeArchitecture::Conv,
                conditional: true,
                num_classes: 10,
                ..vae
            }),
            batch_size: 128,
            lr: 1e-3,
            scaling: "unit",
        },
        Preset {
            name: "dcgan-28",
            description: "reference InfoGAN-style MNIST DCGAN, BCE loss, Adam 2e-4 (G 778,305 + D 138,817 params)",
            model: ModelConfig::Gan(gan.clone()),
            batch_size: 64,
            lr: 2e-4,
            scaling: "signed",
        },
        Preset {
            name: "cdcgan-28",
            description: "class-conditional DCGAN: label embedding into G, projection discriminator",
            model: ModelConfig::Gan(GanConfig {
                conditional: true,
                num_classes: 10,
                ..gan.clone()
            }),
            batch_size: 64,
            lr: 2e-4,
            scaling: "signed",
        },
        Preset {
            name: "sngan-28",
            description: "stable variant: spectral normalisation on every D weight, hinge loss",
            model: ModelConfig::Gan(GanConfig {
                discriminator: DiscriminatorKind::Spectral,
                loss: GanLoss::Hinge,
                ..gan.clone()
            }),
            batch_size: 64,
            lr: 2e-4,
            scaling: "signed",
        },
        Preset {
            name: "wgan-gp-28",
            description: "WGAN-GP: Wasserstein critic (no BatchNorm), gradient penalty 10, 5 critic steps per G step",
            model: ModelConfig::Gan(GanConfig {
                discriminator: DiscriminatorKind::Plain,
                loss: GanLoss::Wasserstein,
                gradient_penalty: 10.0,
                n_critic: 5,
                g_betas: (0.0, 0.9),
                d_betas: (0.0, 0.9),
                ..gan
            }),
            batch_size: 64,
            lr: 1e-4,
            scaling: "signed",
        },
    ]
}

/// Presets of families that are designed but not built yet (for `genzoo list`).
pub const PLANNED: [(&str, &str); 3] = [
    (
        "ddpm-unet",
        "DDPM: small U-Net, DDPM and DDIM samplers, EMA (planned)",
    ),
    (
        "gpt-char",
        "transformer: nanoGPT's character-level CPU config (planned)",
    ),
    (
        "gpt-pixel",
        "transformer: GPT over 16-level pixels (planned)",
    ),
];

/// The preset called `name`.
pub fn preset(name: &str) -> Option<Preset> {
    presets().into_iter().find(|p| p.name == name)
}

/// Code that runs on whichever family a [`ModelConfig`] names.
pub trait FamilyTask<B: AutodiffBackend> {
    /// What the task returns.
    type Output;
    /// Runs the task with the built family.
    fn run<F: Family<B, Batch = ImageBatch<B>>>(self, family: F) -> Result<Self::Output>;
}

/// Builds the family `config` describes (freshly initialised) and runs `task` with it.
pub fn with_family<B: AutodiffBackend, T: FamilyTask<B>>(
    config: &ModelConfig,
    device: &B::Device,
    task: T,
) -> Result<T::Output> {
    config.validate()?;
    match config {
        ModelConfig::Vae(c) => task.run(VaeTrainer::<B>::new(c.clone(), device)),
        ModelConfig::Gan(c) => task.run(GanTrainer::<B>::new(c.clone(), device)),
    }
}
