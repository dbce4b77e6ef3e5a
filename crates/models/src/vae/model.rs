//! The VAE network: an encoder that maps an image (and optionally its class)
//! to the mean and log-variance of a diagonal Gaussian q(z|x), and a decoder
//! that maps a latent z (and optionally a class) to the parameters of p(x|z):
//! Bernoulli logits, or the mean and log-scale of a discretised logistic per
//! pixel (a likelihood of the 8-bit images themselves, see [`PixelLikelihood`]).
//!
//! The MLP variant is the classic MNIST VAE of Kingma & Welling (2014) as
//! in PyTorch's example: 784 → 400 → (μ, log σ²) ∈ R^20 → 400 → 784. The
//! convolutional variant replaces the first encoder layer by two stride-2
//! convolutions and the last decoder layer by two transposed convolutions.

use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};
use genzoo_core::noise;
use genzoo_core::{Error, Result};

use crate::layers::{conv_transpose2d, conv2d};
use serde::{Deserialize, Serialize};

/// Which network maps pixels to features and back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaeArchitecture {
    /// Dense layers on the flattened image.
    #[default]
    Mlp,
    /// Two stride-2 convolutions (32, 64 channels) before the dense layer, mirrored in the decoder.
    Conv,
}

/// The distribution p(x|z) the decoder parameterises per pixel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PixelLikelihood {
    /// Bernoulli with the pixel intensity in [0, 1] as target: the classic
    /// MNIST VAE. Its −ELBO is not a likelihood of 8-bit images, so it has no
    /// bits/dim comparable with other families'.
    #[default]
    Bernoulli,
    /// Discretised logistic over the 256 values k/255 (Salimans et al. 2017,
    /// PixelCNN++ without the mixture): the decoder gives a mean and a
    /// log-scale per pixel, the probability of a value is the logistic mass of
    /// its bin, and the edge bins take the tails. A proper likelihood of 8-bit
    /// images, so its bound is in bits/dim on the scale DDPM and gpt-pixel use.
    DiscretizedLogistic,
}

impl PixelLikelihood {
    /// Decoder output channels per image channel (Bernoulli: logits;
    /// discretised logistic: mean and log-scale).
    pub fn params_per_channel(self) -> usize {
        match self {
            PixelLikelihood::Bernoulli => 1,
            PixelLikelihood::DiscretizedLogistic => 2,
        }
    }
}

/// VAE hyper-parameters. The defaults are the `vae-mlp` reference model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VaeConfig {
    /// MLP or convolutional.
    pub architecture: VaeArchitecture,
    /// Image channels (set from the data).
    pub channels: usize,
    /// Image height (set from the data; a multiple of 4 for `conv`).
    pub height: usize,
    /// Image width (set from the data; a multiple of 4 for `conv`).
    pub width: usize,
    /// Width of the dense hidden layer.
    pub hidden: usize,
    /// Latent dimensions.
    pub latent: usize,
    /// Weight of the KL term (1 = the ELBO; β > 1 = β-VAE).
    pub beta: f64,
    /// The decoder's distribution over pixel values.
    pub likelihood: PixelLikelihood,
    /// Condition encoder and decoder on the class label.
    pub conditional: bool,
    /// Number of classes (set from the data when `conditional`).
    pub num_classes: usize,
    /// Adam β₁.
    pub adam_beta1: f32,
    /// Adam β₂.
    pub adam_beta2: f32,
    /// Adam ε (PyTorch's 1e-8; burn's default is 1e-5).
    pub adam_eps: f32,
}

impl VaeConfig {
    /// The `vae-mlp` reference configuration (also `Default`).
    pub const REFERENCE: VaeConfig = VaeConfig {
        architecture: VaeArchitecture::Mlp,
        channels: 1,
        height: 28,
        width: 28,
        hidden: 400,
        latent: 20,
        beta: 1.0,
        likelihood: PixelLikelihood::Bernoulli,
        conditional: false,
        num_classes: 0,
        adam_beta1: 0.9,
        adam_beta2: 0.999,
        adam_eps: 1e-8,
    };
}

impl Default for VaeConfig {
    fn default() -> Self {
        Self::REFERENCE
    }
}

/// Channels of the two convolutions of the `conv` architecture.
const CONV_CHANNELS: [usize; 2] = [32, 64];

impl VaeConfig {
    /// Pixels per image.
    pub fn pixels(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Width of the one-hot label input (0 when unconditional).
    pub fn label_width(&self) -> usize {
        if self.conditional {
            self.num_classes
        } else {
            0
        }
    }

    /// Rejects configurations no network can be built from.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("vae: {m}")));
        if self.pixels() == 0 || self.hidden == 0 || self.latent == 0 {
            return bad("channels, height, width, hidden and latent must be positive".into());
        }
        if self.architecture == VaeArchitecture::Conv
            && (!self.height.is_multiple_of(4) || !self.width.is_multiple_of(4))
        {
            return bad(format!(
                "the conv architecture needs height and width divisible by 4, got {}x{}",
                self.height, self.width
            ));
        }
        if self.conditional && self.num_classes < 2 {
            return bad("a conditional VAE needs at least 2 classes".into());
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return bad(format!(
                "beta must be a non-negative number, got {}",
                self.beta
            ));
        }
        Ok(())
    }

    /// Whether the model has a likelihood of 8-bit images in bits/dim: only
    /// the unconditional discretised-logistic decoder does.
    pub fn check_bits_per_dim(&self) -> Result<()> {
        if self.likelihood != PixelLikelihood::DiscretizedLogistic {
            return Err(Error::Config(
                "vae: a Bernoulli decoder models intensities, not 8-bit values, so it has no \
                 bits/dim on the scale of the other families; train with \
                 likelihood = \"discretized-logistic\" (preset vae-mlp-dl)"
                    .into(),
            ));
        }
        if self.conditional {
            return Err(Error::Config(
                "vae: a class-conditional model gives p(x|y), not p(x); its bits/dim would not \
                 compare with unconditional models'"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Builds the network with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Vae<B> {
        let y = self.label_width();
        let k = self.likelihood.params_per_channel();
        let [c1, c2] = CONV_CHANNELS;
        let (h4, w4) = (self.height / 4, self.width / 4);
        let conv = |cin: usize, cout: usize| {
            Conv2dConfig::new([cin, cout], [4, 4])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let deconv = |cin: usize, cout: usize| {
            ConvTranspose2dConfig::new([cin, cout], [4, 4])
                .with_stride([2, 2])
                .with_padding([1, 1])
                .init(device)
        };
        let (features, flat) = match self.architecture {
            VaeArchitecture::Mlp => (None, self.pixels()),
            VaeArchitecture::Conv => (
                Some(ConvFeatures {
                    conv1: conv(self.channels, c1),
                    conv2: conv(c1, c2),
                }),
                c2 * h4 * w4,
            ),
        };
        let encoder = Encoder {
            features,
            hidden: LinearConfig::new(flat + y, self.hidden).init(device),
            mu: LinearConfig::new(self.hidden, self.latent).init(device),
            log_var: LinearConfig::new(self.hidden, self.latent).init(device),
        };
        let (upsample, out) = match self.architecture {
            VaeArchitecture::Mlp => (None, k * self.pixels()),
            VaeArchitecture::Conv => (
                Some(ConvUpsample {
                    deconv1: deconv(c2, c1),
                    deconv2: deconv(c1, k * self.channels),
                }),
                c2 * h4 * w4,
            ),
        };
        let decoder = Decoder {
            hidden: LinearConfig::new(self.latent + y, self.hidden).init(device),
            output: LinearConfig::new(self.hidden, out).init(device),
            upsample,
        };
        let vae = Vae {
            encoder,
            decoder,
            channels: self.channels,
            height: self.height,
            width: self.width,
            latent: self.latent,
            num_classes: self.label_width(),
            likelihood: self.likelihood,
        };
        // Materialise the lazy weights now, so clones (valid(), EMA, saving) share them.
        genzoo_core::record::force_init(&vae);
        vae
    }
}

/// Two stride-2 convolutions: `[N, C, H, W]` → `[N, 64, H/4, W/4]`.
#[derive(Module, Debug)]
pub struct ConvFeatures<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
}

/// q(z | x, y): features → dense hidden layer → (μ, log σ²).
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    features: Option<ConvFeatures<B>>,
    hidden: Linear<B>,
    mu: Linear<B>,
    log_var: Linear<B>,
}

/// Two stride-2 transposed convolutions: `[N, 64, H/4, W/4]` → `[N, C, H, W]`.
#[derive(Module, Debug)]
pub struct ConvUpsample<B: Backend> {
    deconv1: ConvTranspose2d<B>,
    deconv2: ConvTranspose2d<B>,
}

/// p(x | z, y): dense hidden layer → dense output (→ transposed convs) → the
/// likelihood's parameters.
#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    hidden: Linear<B>,
    output: Linear<B>,
    upsample: Option<ConvUpsample<B>>,
}

/// A variational autoencoder. Build it with [`VaeConfig::init`].
#[derive(Module, Debug)]
pub struct Vae<B: Backend> {
    encoder: Encoder<B>,
    decoder: Decoder<B>,
    channels: usize,
    height: usize,
    width: usize,
    latent: usize,
    num_classes: usize,
    #[module(skip)]
    likelihood: PixelLikelihood,
}

impl<B: Backend> Vae<B> {
    /// The decoder's distribution over pixel values.
    pub fn likelihood(&self) -> PixelLikelihood {
        self.likelihood
    }

    /// Latent dimensions.
    pub fn latent(&self) -> usize {
        self.latent
    }

    /// Number of classes it is conditioned on (0 when unconditional).
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// One-hot labels for a conditional model, `None` otherwise.
    ///
    /// # Shapes
    /// - labels: `[batch]` → `[batch, num_classes]`
    pub fn condition(&self, labels: Tensor<B, 1, Int>) -> Option<Tensor<B, 2>> {
        (self.num_classes > 0).then(|| labels.one_hot::<2>(self.num_classes).float())
    }

    /// The parameters of q(z|x,y).
    ///
    /// # Shapes
    /// - images: `[batch, channels, height, width]`
    /// - condition: `[batch, num_classes]`
    /// - returns (μ, log σ²): `[batch, latent]` each
    pub fn encode(
        &self,
        images: Tensor<B, 4>,
        condition: Option<Tensor<B, 2>>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let n = images.dims()[0];
        let flat = match &self.encoder.features {
            None => images.reshape([n as i32, -1]),
            Some(f) => {
                let h = relu(conv2d(&f.conv1, images)); // [N, 32, H/2, W/2]
                let h = relu(conv2d(&f.conv2, h)); // [N, 64, H/4, W/4]
                h.reshape([n as i32, -1])
            }
        };
        let input = with_condition(flat, condition);
        let h = relu(self.encoder.hidden.forward(input)); // [N, hidden]
        (
            self.encoder.mu.forward(h.clone()),
            self.encoder.log_var.forward(h),
        )
    }

    /// The parameters of p(x|z,y): Bernoulli logits, or for the discretised
    /// logistic the means (first `channels` channels) and log-scales (the next).
    ///
    /// # Shapes
    /// - z: `[batch, latent]`
    /// - condition: `[batch, num_classes]`
    /// - returns: `[batch, k·channels, height, width]`, k = [`PixelLikelihood::params_per_channel`]
    pub fn decode(&self, z: Tensor<B, 2>, condition: Option<Tensor<B, 2>>) -> Tensor<B, 4> {
        let n = z.dims()[0];
        let k = self.likelihood.params_per_channel();
        let h = relu(self.decoder.hidden.forward(with_condition(z, condition))); // [N, hidden]
        let out = self.decoder.output.forward(h);
        match &self.decoder.upsample {
            None => out.reshape([n, k * self.channels, self.height, self.width]),
            Some(u) => {
                let h = relu(out).reshape([n, 64, self.height / 4, self.width / 4]);
                let h = relu(conv_transpose2d(&u.deconv1, h)); // [N, 32, H/2, W/2]
                conv_transpose2d(&u.deconv2, h) // [N, k·C, H, W]
            }
        }
    }

    /// The mean image of p(x|z,y) given the decoder's parameters, in `[0, 1]`
    /// (Bernoulli: the probabilities; discretised logistic: the clamped means).
    pub fn mean_image(&self, params: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.likelihood {
            PixelLikelihood::Bernoulli => sigmoid(params),
            PixelLikelihood::DiscretizedLogistic => {
                let [n, _, h, w] = params.dims();
                params
                    .slice([0..n, 0..self.channels, 0..h, 0..w])
                    .clamp(0.0, 1.0)
            }
        }
    }

    /// The reparameterisation trick: z = μ + σ·ε with ε ~ N(0, I), one row
    /// per example from the step's noise stream ([`genzoo_core::noise`]).
    pub fn reparameterize(mu: Tensor<B, 2>, log_var: Tensor<B, 2>) -> Tensor<B, 2> {
        let eps = noise::normal_per_example(mu.dims(), &mu.device());
        mu + (log_var * 0.5).exp() * eps
    }

    /// Images drawn from the prior: z ~ N(0, I) (one row per image from the
    /// open noise stream, [`genzoo_core::noise`]), shown as the decoder's
    /// means (see [`Vae::mean_image`]).
    ///
    /// # Shapes
    /// - labels: `[n]` (ignored by an unconditional model)
    /// - returns: `[n, channels, height, width]`
    pub fn sample(&self, labels: Tensor<B, 1, Int>, device: &B::Device) -> Tensor<B, 4> {
        let n = labels.dims()[0];
        let z = noise::normal_per_example([n, self.latent], device);
        self.mean_image(self.decode(z, self.condition(labels)))
    }

    /// Reconstructions: decode the posterior mean of each image's code.
    pub fn reconstruct(&self, images: Tensor<B, 4>, labels: Tensor<B, 1, Int>) -> Tensor<B, 4> {
        let condition = self.condition(labels);
        let (mu, _) = self.encode(images, condition.clone());
        self.mean_image(self.decode(mu, condition))
    }
}

/// Concatenates the one-hot condition to the features, when there is one.
fn with_condition<B: Backend>(x: Tensor<B, 2>, condition: Option<Tensor<B, 2>>) -> Tensor<B, 2> {
    match condition {
        Some(c) => Tensor::cat(vec![x, c], 1),
        None => x,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genzoo_core::{CpuBackend, CpuDevice};

    #[test]
    fn vae_mlp_has_the_reference_parameter_count() {
        let _guard = crate::rng_lock();
        // Linear(784,400) + 2×Linear(400,20) + Linear(20,400) + Linear(400,784), weights and biases:
        // 314,000 + 2×8,020 + 8,400 + 314,384 = 652,824
        let model: Vae<CpuBackend> = VaeConfig::default().init(&CpuDevice::default());
        assert_eq!(model.num_params(), 652_824);
        // The discretised logistic doubles the output layer: + 400×784 + 784.
        let logistic: Vae<CpuBackend> = VaeConfig {
            likelihood: PixelLikelihood::DiscretizedLogistic,
            ..Default::default()
        }
        .init(&CpuDevice::default());
        assert_eq!(logistic.num_params(), 652_824 + 314_384);
    }

    #[test]
    fn shapes_for_every_variant() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        for architecture in [VaeArchitecture::Mlp, VaeArchitecture::Conv] {
            for (c, h, w) in [(1, 28, 28), (3, 32, 32)] {
                for (conditional, likelihood) in [
                    (false, PixelLikelihood::Bernoulli),
                    (true, PixelLikelihood::Bernoulli),
                    (false, PixelLikelihood::DiscretizedLogistic),
                ] {
                    let k = likelihood.params_per_channel();
                    let cfg = VaeConfig {
                        architecture,
                        channels: c,
                        height: h,
                        width: w,
                        likelihood,
                        conditional,
                        num_classes: if conditional { 10 } else { 0 },
                        ..Default::default()
                    };
                    let model: Vae<CpuBackend> = cfg.init(&dev);
                    let x = Tensor::<CpuBackend, 4>::ones([3, c, h, w], &dev);
                    let labels = Tensor::<CpuBackend, 1, Int>::from_ints([1, 2, 3], &dev);
                    let cond = model.condition(labels.clone());
                    let (mu, lv) = model.encode(x, cond.clone());
                    assert_eq!(mu.dims(), [3, 20]);
                    assert_eq!(lv.dims(), [3, 20]);
                    assert_eq!(model.decode(mu, cond).dims(), [3, k * c, h, w]);
                    let s = model.sample(labels, &dev);
                    assert_eq!(s.dims(), [3, c, h, w]);
                    let (lo, hi) = (s.clone().min().into_scalar(), s.max().into_scalar());
                    assert!((0.0..=1.0).contains(&lo) && (0.0..=1.0).contains(&hi));
                }
            }
        }
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let _guard = crate::rng_lock();
        let conv_odd = VaeConfig {
            architecture: VaeArchitecture::Conv,
            height: 30,
            ..Default::default()
        };
        assert!(
            conv_odd
                .validate()
                .unwrap_err()
                .to_string()
                .contains("divisible by 4")
        );
        let cond = VaeConfig {
            conditional: true,
            num_classes: 0,
            ..Default::default()
        };
        assert!(cond.validate().is_err());
    }
}
