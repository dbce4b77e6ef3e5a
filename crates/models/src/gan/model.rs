//! GAN networks for 28×28 images (any size divisible by 4 works).
//!
//! The DCGAN pair follows the InfoGAN MNIST architecture (Chen et al. 2016,
//! appendix C.1) as in `shared/reference-models.md`:
//!
//! - generator: z → Linear → BN → ReLU → reshape (128, H/4, W/4) →
//!   ConvT(128→64, 4, s2, p1) → BN → ReLU → ConvT(64→C, 4, s2, p1) → tanh;
//! - discriminator: Conv(C→64, 4, s2, p1) → LeakyReLU(0.2) →
//!   Conv(64→128, 4, s2, p1) → BN → LeakyReLU(0.2) → flatten → Linear → logit.
//!
//! Variants: class conditioning (a label embedding concatenated to z; a
//! projection discriminator, Miyato & Koyama 2018), spectral normalisation
//! of every discriminator weight (Miyato et al. 2018), and a critic without
//! BatchNorm whose dense layer is a plain matmul, so that it can be
//! differentiated twice for the WGAN-GP penalty (Gulrajani et al. 2017).

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{
    BatchNorm, BatchNormConfig, Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig,
    PaddingConfig2d,
};
use burn::prelude::*;
use burn::tensor::activation::{relu, tanh};
use genzoo_core::fused::leaky_relu;

use super::spectral::{SnConv2d, SnLinear};
use crate::layers::{batch_norm, conv_transpose2d, conv2d};

/// How the discriminator is built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DiscriminatorKind {
    /// Conv → LReLU → Conv → BN → LReLU → Linear (DCGAN).
    #[default]
    BatchNorm,
    /// Every weight spectrally normalised, no BatchNorm (SNGAN).
    Spectral,
    /// No normalisation, dense layer as a matmul: twice differentiable (WGAN-GP critic).
    Plain,
}

/// The generator G(z, y).
#[derive(Module, Debug)]
pub struct Generator<B: Backend> {
    label_embedding: Option<Embedding<B>>,
    project: Linear<B>,
    bn0: BatchNorm<B>,
    deconv1: ConvTranspose2d<B>,
    bn1: BatchNorm<B>,
    deconv2: ConvTranspose2d<B>,
    latent: usize,
    h4: usize,
    w4: usize,
}

/// Generator shape: `latent` noise dims, `channels × height × width` images, optional classes.
#[derive(Clone, Debug, PartialEq)]
pub struct GeneratorShape {
    /// Noise dimensions.
    pub latent: usize,
    /// Image channels.
    pub channels: usize,
    /// Image height (divisible by 4).
    pub height: usize,
    /// Image width (divisible by 4).
    pub width: usize,
    /// Classes to condition on (0: unconditional).
    pub num_classes: usize,
    /// Width of the label embedding concatenated to z.
    pub embedding: usize,
}

impl<B: Backend> Generator<B> {
    /// A freshly initialised generator.
    pub fn new(s: &GeneratorShape, device: &B::Device) -> Self {
        let (h4, w4) = (s.height / 4, s.width / 4);
        let conditional = s.num_classes > 0;
        let z_in = s.latent + if conditional { s.embedding } else { 0 };
        let deconv = |cin, cout| {
            ConvTranspose2dConfig::new([cin, cout], [4, 4])
                .with_stride([2, 2])
                .with_padding([1, 1])
                .init(device)
        };
        let g = Self {
            label_embedding: conditional
                .then(|| EmbeddingConfig::new(s.num_classes, s.embedding).init(device)),
            project: LinearConfig::new(z_in, 128 * h4 * w4).init(device),
            bn0: BatchNormConfig::new(128 * h4 * w4).init(device),
            deconv1: deconv(128, 64),
            bn1: BatchNormConfig::new(64).init(device),
            deconv2: deconv(64, s.channels),
            latent: s.latent,
            h4,
            w4,
        };
        // Materialise lazy weights so clones (EMA, valid(), nested autodiff) share them.
        genzoo_core::record::force_init(&g);
        g
    }

    /// Noise dimensions.
    pub fn latent(&self) -> usize {
        self.latent
    }

    /// Images in `[-1, 1]`.
    ///
    /// # Shapes
    /// - z: `[batch, latent]`, labels: `[batch]` (ignored when unconditional)
    /// - returns: `[batch, channels, height, width]`
    pub fn forward(&self, z: Tensor<B, 2>, labels: Tensor<B, 1, Int>) -> Tensor<B, 4> {
        let n = z.dims()[0];
        let input = match &self.label_embedding {
            Some(e) => {
                let y = e.forward(labels.unsqueeze_dim::<2>(1)).squeeze_dim::<2>(1); // [N, embedding]
                Tensor::cat(vec![z, y], 1)
            }
            None => z,
        };
        let h = relu(batch_norm(&self.bn0, self.project.forward(input))); // [N, 128·H/4·W/4]
        let h = h.reshape([n, 128, self.h4, self.w4]);
        let h = relu(batch_norm(&self.bn1, conv_transpose2d(&self.deconv1, h))); // [N, 64, H/2, W/2]
        tanh(conv_transpose2d(&self.deconv2, h)) // [N, C, H, W]
    }
}

/// The discriminator (or critic) D(x, y), returning one logit per image.
#[derive(Module, Debug)]
pub struct Discriminator<B: Backend> {
    pub(crate) conv1: Option<Conv2d<B>>,
    pub(crate) conv2: Option<Conv2d<B>>,
    pub(crate) bn2: Option<BatchNorm<B>>,
    pub(crate) head: Option<Linear<B>>,
    pub(crate) sn_conv1: Option<SnConv2d<B>>,
    pub(crate) sn_conv2: Option<SnConv2d<B>>,
    pub(crate) sn_head: Option<SnLinear<B>>,
    pub(crate) head_weight: Option<Param<Tensor<B, 2>>>,
    pub(crate) head_bias: Option<Param<Tensor<B, 1>>>,
    /// Projection discriminator: ⟨embed(y), φ(x)⟩ added to the logit.
    pub(crate) projection: Option<Embedding<B>>,
}

impl<B: Backend> Discriminator<B> {
    /// A freshly initialised discriminator of `kind` for `channels × height × width` images.
    pub fn new(
        kind: DiscriminatorKind,
        channels: usize,
        height: usize,
        width: usize,
        num_classes: usize,
        device: &B::Device,
    ) -> Self {
        let features = 128 * (height / 4) * (width / 4);
        let conv = |cin, cout| {
            Conv2dConfig::new([cin, cout], [4, 4])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        let mut d = Self {
            conv1: None,
            conv2: None,
            bn2: None,
            head: None,
            sn_conv1: None,
            sn_conv2: None,
            sn_head: None,
            head_weight: None,
            head_bias: None,
            projection: (num_classes > 0).then(|| {
                EmbeddingConfig::new(num_classes, features)
                    .with_initializer(Initializer::Normal {
                        mean: 0.0,
                        std: 0.02,
                    })
                    .init(device)
            }),
        };
        match kind {
            DiscriminatorKind::BatchNorm => {
                d.conv1 = Some(conv(channels, 64));
                d.conv2 = Some(conv(64, 128));
                d.bn2 = Some(BatchNormConfig::new(128).init(device));
                d.head = Some(LinearConfig::new(features, 1).init(device));
            }
            DiscriminatorKind::Spectral => {
                d.sn_conv1 = Some(SnConv2d::new(channels, 64, 4, 2, 1, device));
                d.sn_conv2 = Some(SnConv2d::new(64, 128, 4, 2, 1, device));
                d.sn_head = Some(SnLinear::new(features, 1, device));
            }
            DiscriminatorKind::Plain => {
                d.conv1 = Some(conv(channels, 64));
                d.conv2 = Some(conv(64, 128));
                let bound = 1.0 / (features as f64).sqrt();
                let init = Initializer::Uniform {
                    min: -bound,
                    max: bound,
                };
                d.head_weight = Some(init.init::<B, 2, _>([features, 1], device));
                d.head_bias = Some(init.init::<B, 1, _>([1], device));
            }
        }
        genzoo_core::record::force_init(&d);
        d
    }

    /// One logit per image. `update_sn` advances the spectral-norm power
    /// iteration (on in training steps of D, off elsewhere).
    ///
    /// # Shapes
    /// - images: `[batch, channels, height, width]`, labels: `[batch]`
    /// - returns: `[batch]`
    pub fn forward(
        &self,
        images: Tensor<B, 4>,
        labels: Tensor<B, 1, Int>,
        update_sn: bool,
    ) -> Tensor<B, 1> {
        let n = images.dims()[0];
        let h = match (&self.conv1, &self.sn_conv1) {
            (Some(c), _) => conv2d(c, images),
            (None, Some(c)) => c.forward(images, update_sn),
            _ => unreachable!("one first layer is always built"),
        };
        let h = leaky_relu(h, 0.2); // [N, 64, H/2, W/2]
        let h = match (&self.conv2, &self.sn_conv2) {
            (Some(c), _) => conv2d(c, h),
            (None, Some(c)) => c.forward(h, update_sn),
            _ => unreachable!("one second layer is always built"),
        };
        let h = match &self.bn2 {
            Some(bn) => batch_norm(bn, h),
            None => h,
        };
        let features = leaky_relu(h, 0.2).reshape([n as i32, -1]); // [N, 128·H/4·W/4]
        let logit = if let Some(head) = &self.head {
            head.forward(features.clone())
        } else if let Some(head) = &self.sn_head {
            head.forward(features.clone(), update_sn)
        } else {
            let (w, b) = (
                self.head_weight.as_ref().expect("plain head"),
                self.head_bias.as_ref().expect("plain head"),
            );
            features.clone().matmul(w.val()) + b.val().unsqueeze_dim(0)
        }; // [N, 1]
        let logit = logit.reshape([n]);
        match &self.projection {
            Some(e) => {
                let y = e.forward(labels.unsqueeze_dim::<2>(1)).squeeze_dim::<2>(1); // [N, features]
                logit + (y * features).sum_dim(1).reshape([n])
            }
            None => logit,
        }
    }
}
