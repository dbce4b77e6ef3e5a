//! Named configurations. A preset is a model config plus the training
//! defaults of its reference recipe (batch size, learning rate, pixel
//! scaling), nothing more. The reference presets are built exactly as
//! `shared/reference-models.md` writes them.

use burn::tensor::backend::AutodiffBackend;
use genzoo_core::vocabulary::Vocabulary;
use genzoo_core::{Error, Family, ImageBatch, Result, TokenBatch};
use serde::{Deserialize, Serialize};

use crate::ddpm::{DdpmConfig, DdpmTrainer, UNetConfig};
use crate::gan::{DiscriminatorKind, GanConfig, GanLoss, GanTrainer};
use crate::gpt::{GptConfig, GptInput, GptPixel, GptText};
use crate::vae::{PixelLikelihood, VaeArchitecture, VaeConfig, VaeTrainer};

/// The configuration of any family's model, tagged by family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum ModelConfig {
    /// A variational autoencoder.
    Vae(VaeConfig),
    /// A generative adversarial network.
    Gan(GanConfig),
    /// A denoising diffusion model.
    Ddpm(DdpmConfig),
    /// A GPT over text or pixels.
    Gpt(GptConfig),
}

impl ModelConfig {
    /// The family's name.
    pub fn family(&self) -> &'static str {
        match self {
            ModelConfig::Vae(_) => "vae",
            ModelConfig::Gan(_) => "gan",
            ModelConfig::Ddpm(_) => "ddpm",
            ModelConfig::Gpt(_) => "gpt",
        }
    }

    /// Whether the model reads text (and trains on a text corpus) rather than images.
    pub fn reads_text(&self) -> bool {
        matches!(
            self,
            ModelConfig::Gpt(GptConfig {
                input: GptInput::Text { .. },
                ..
            })
        )
    }

    /// A text model's vocabulary (see [`GptInput::text_vocabulary`]); `None`
    /// for models of images.
    pub fn text_vocabulary(&self) -> Option<Vocabulary> {
        match self {
            ModelConfig::Gpt(c) => c.input.text_vocabulary(),
            _ => None,
        }
    }

    /// Sets a text model's vocabulary (characters in token order, or `None` for bytes).
    pub fn adapt_to_text(&mut self, vocabulary: Option<String>, vocab_size: usize) {
        if let ModelConfig::Gpt(c) = self {
            c.vocab_size = vocab_size;
            c.input = GptInput::Text { vocabulary };
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
            ModelConfig::Ddpm(c) => {
                c.unet.channels = channels;
                c.unet.height = height;
                c.unet.width = width;
                if c.conditional {
                    c.unet.num_classes = num_classes;
                }
            }
            ModelConfig::Gpt(c) => {
                if let GptInput::Pixels { levels, shape } = &mut c.input {
                    *shape = (channels, height, width);
                    c.vocab_size = *levels + 1;
                    c.block_size = channels * height * width + 1;
                }
            }
        }
    }

    /// Whether the model has a likelihood of 8-bit images in bits/dim
    /// (`eval --metrics nll`); the error says why not. Checked before any
    /// evaluation work starts.
    pub fn check_bits_per_dim(&self) -> Result<()> {
        match self {
            ModelConfig::Vae(c) => c.check_bits_per_dim(),
            ModelConfig::Gan(_) => Err(Error::Config(
                "gan: a GAN has no likelihood: its samples are scored by fid, kid, is and pr"
                    .into(),
            )),
            ModelConfig::Ddpm(_) => Ok(()),
            ModelConfig::Gpt(c) => c.input.check_bits_per_dim(),
        }
    }

    /// Whether the model's steps can be split into `micro_batches`
    /// (gradient accumulation); the error says why not. Checked before
    /// anything is written (the engine checks the family again).
    pub fn check_micro_batches(&self, micro_batches: usize) -> Result<()> {
        match self {
            ModelConfig::Gan(_) if micro_batches > 1 => Err(Error::Config(format!(
                "gan: micro_batches = {micro_batches}, but a GAN step updates the discriminator \
                 and then the generator against the new discriminator, which micro-batches \
                 cannot split: set micro_batches = 1 (a smaller batch_size saves memory)"
            ))),
            _ => Ok(()),
        }
    }

    /// Checks the config for values no model can be built from.
    pub fn validate(&self) -> Result<()> {
        match self {
            ModelConfig::Vae(c) => c.validate(),
            ModelConfig::Gan(c) => c.validate(),
            ModelConfig::Ddpm(c) => c.validate(),
            ModelConfig::Gpt(c) => c.validate(),
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
    /// Cosine decay to this learning rate after `warmup_steps` (constant rate when unset).
    pub min_lr: Option<f64>,
    /// Linear warm-up steps of the cosine schedule.
    pub warmup_steps: u64,
    /// Global gradient-norm clipping.
    pub clip_norm: Option<f64>,
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
            ..Preset::BASE
        },
        Preset {
            name: "vae-mlp-dl",
            description: "vae-mlp with a discretised-logistic decoder (mean and log-scale per pixel): a likelihood of the 8-bit images, so it reports bits/dim beside ddpm-unet and gpt-pixel (967,208 params)",
            model: ModelConfig::Vae(VaeConfig {
                likelihood: PixelLikelihood::DiscretizedLogistic,
                ..vae.clone()
            }),
            batch_size: 128,
            lr: 1e-3,
            scaling: "unit",
            ..Preset::BASE
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
            ..Preset::BASE
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
            ..Preset::BASE
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
            ..Preset::BASE
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
            ..Preset::BASE
        },
        Preset {
            name: "dcgan-28",
            description: "reference InfoGAN-style MNIST DCGAN, BCE loss, Adam 2e-4 (G 778,305 + D 138,817 params)",
            model: ModelConfig::Gan(gan.clone()),
            batch_size: 64,
            lr: 2e-4,
            scaling: "signed",
            ..Preset::BASE
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
            ..Preset::BASE
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
            ..Preset::BASE
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
            ..Preset::BASE
        },
        Preset {
            name: "ddpm-unet",
            description: "reference DDPM: 583,713-param U-Net, T = 1000 linear schedule, ε-prediction, EMA 0.999; DDIM-50 samples",
            model: ModelConfig::Ddpm(DdpmConfig::default()),
            batch_size: 128,
            lr: 2e-4,
            scaling: "signed",
            ..Preset::BASE
        },
        Preset {
            name: "cddpm-unet",
            description: "class-conditional DDPM: label embedding, 10% label dropout, classifier-free guidance",
            model: ModelConfig::Ddpm(DdpmConfig {
                conditional: true,
                unet: UNetConfig {
                    num_classes: 10,
                    ..UNetConfig::default()
                },
                ..DdpmConfig::default()
            }),
            batch_size: 128,
            lr: 2e-4,
            scaling: "signed",
            ..Preset::BASE
        },
        Preset {
            name: "gpt-char",
            description: "reference character-level GPT (nanoGPT's CPU config: 4 layers, 4 heads, 128 wide; 804,096 params on 65 chars)",
            model: ModelConfig::Gpt(GptConfig::default()),
            batch_size: 12,
            lr: 1e-3,
            scaling: "unit",
            min_lr: Some(1e-4),
            warmup_steps: 100,
            clip_norm: Some(1.0),
        },
        Preset {
            name: "gpt-pixel",
            description: "the same transformer over 16-level pixels in raster order (890,240 params on 28x28)",
            model: ModelConfig::Gpt(GptConfig {
                vocab_size: 17,
                block_size: 785,
                input: GptInput::Pixels {
                    levels: 16,
                    shape: (1, 28, 28),
                },
                ..GptConfig::default()
            }),
            batch_size: 12,
            lr: 1e-3,
            scaling: "unit",
            min_lr: Some(1e-4),
            warmup_steps: 100,
            clip_norm: Some(1.0),
        },
    ]
}

impl Preset {
    /// Field defaults for the presets above: constant rate, no clipping.
    const BASE: Preset = Preset {
        name: "",
        description: "",
        model: ModelConfig::Vae(VaeConfig::REFERENCE),
        batch_size: 128,
        lr: 1e-3,
        scaling: "unit",
        min_lr: None,
        warmup_steps: 0,
        clip_norm: None,
    };
}

/// The preset called `name`.
pub fn preset(name: &str) -> Option<Preset> {
    presets().into_iter().find(|p| p.name == name)
}

/// Code that runs on whichever family a [`ModelConfig`] names.
pub trait FamilyTask<B: AutodiffBackend>: Sized {
    /// What the task returns.
    type Output;
    /// Runs the task with a family that trains on images.
    fn run<F: Family<B, Batch = ImageBatch<B>>>(self, family: F) -> Result<Self::Output>;
    /// Runs the task with a family that trains on text.
    fn run_text<F: Family<B, Batch = TokenBatch<B>>>(self, _family: F) -> Result<Self::Output> {
        Err(Error::Config(
            "this command does not handle text models".into(),
        ))
    }
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
        ModelConfig::Ddpm(c) => task.run(DdpmTrainer::<B>::new(c.clone(), device)),
        ModelConfig::Gpt(c) => match &c.input {
            GptInput::Text { .. } => task.run_text(GptText::<B>::new(c.clone(), &c.input, device)?),
            GptInput::Pixels { .. } => task.run(GptPixel::<B>::new(c.clone(), &c.input, device)?),
        },
    }
}
