//! The noise-predicting U-Net of a DDPM (Ho et al. 2020, after PixelCNN++'s
//! backbone), small enough for a CPU: residual blocks that receive the time
//! embedding, self-attention at chosen resolutions, skips from each level of
//! the contracting path into the expanding one. It knows nothing of noise
//! schedules: it maps (x_t, t, class) to a tensor shaped like x_t.
//!
//! With the default [`UNetConfig`] it is the `ddpm-unet` reference network
//! of `shared/reference-models.md`:
//!
//! ```text
//! Conv3×3(1,32) → ResBlock(32,32) [skip s1, 28×28] → Down → ResBlock(32,64) [skip s2, 14×14] → Down
//!   → ResBlock(64,64) → Attention(64) → ResBlock(64,64)                                     [7×7]
//!   → Up → concat s2 → ResBlock(128,64) → Up → concat s1 → ResBlock(96,32)
//!   → GroupNorm(8,32) → SiLU → Conv3×3(32,1)
//! ```

use burn::module::{Initializer, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use genzoo_core::fused::{self, silu};
use genzoo_core::noise::dropout;

use crate::layers::conv2d;
use genzoo_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// The U-Net's shape. The defaults are the `ddpm-unet` reference network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UNetConfig {
    /// Image channels (set from the data).
    pub channels: usize,
    /// Image height (set from the data); divisible by 2^(levels).
    pub height: usize,
    /// Image width (set from the data); divisible by 2^(levels).
    pub width: usize,
    /// Channels of the first level.
    pub base_channels: usize,
    /// Channels of each level as multiples of `base_channels`; every level
    /// ends with a stride-2 downsampling, the middle runs at the lowest resolution.
    pub channel_mults: Vec<usize>,
    /// Residual blocks per level (each leaves a skip for the expanding path).
    pub res_blocks: usize,
    /// Resolutions (height) at which the levels' blocks are followed by self-attention.
    pub attention_resolutions: Vec<usize>,
    /// Self-attention between the two middle blocks.
    pub middle_attention: bool,
    /// Dropout inside the residual blocks (before their second convolution).
    pub dropout: f64,
    /// GroupNorm groups (divides every channel count).
    pub groups: usize,
    /// Width of the sinusoidal time features.
    pub time_features: usize,
    /// Width of the time embedding the blocks receive.
    pub time_embedding: usize,
    /// Number of classes for class conditioning (0: unconditional). A further
    /// "no class" embedding serves classifier-free guidance.
    pub num_classes: usize,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            channels: 1,
            height: 28,
            width: 28,
            base_channels: 32,
            channel_mults: vec![1, 2],
            res_blocks: 1,
            attention_resolutions: Vec::new(),
            middle_attention: true,
            dropout: 0.0,
            groups: 8,
            time_features: 32,
            time_embedding: 128,
            num_classes: 0,
        }
    }
}

impl UNetConfig {
    /// Rejects shapes no U-Net can be built from.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("ddpm unet: {m}")));
        let levels = self.channel_mults.len();
        if levels == 0 || self.res_blocks == 0 || self.base_channels == 0 || self.channels == 0 {
            return bad(
                "channel_mults, res_blocks, base_channels and channels must be non-empty/positive"
                    .into(),
            );
        }
        let factor = 1usize << levels;
        if self.height == 0
            || self.width == 0
            || !self.height.is_multiple_of(factor)
            || !self.width.is_multiple_of(factor)
        {
            return bad(format!(
                "{} levels halve the image {levels} times: height and width must be multiples of {factor}, got {}x{}",
                levels, self.height, self.width
            ));
        }
        if self.groups == 0
            || self
                .channel_mults
                .iter()
                .any(|m| *m == 0 || !(self.base_channels * m).is_multiple_of(self.groups))
        {
            return bad(format!(
                "groups ({}) must divide every level's channels (base {} × {:?})",
                self.groups, self.base_channels, self.channel_mults
            ));
        }
        if self.time_features < 2 || !self.time_features.is_multiple_of(2) {
            return bad("time_features must be even and at least 2".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    fn level_channels(&self, level: usize) -> usize {
        self.base_channels * self.channel_mults[level]
    }
}

/// Sinusoidal features of the timestep (Vaswani et al. 2017, as in Ho et al.'s
/// code): half sines, half cosines at geometric frequencies 1 .. 1/10000.
///
/// # Shapes
/// - t: `[batch]` (timesteps as floats) → `[batch, width]`
pub fn timestep_features<B: Backend>(t: Tensor<B, 1>, width: usize) -> Tensor<B, 2> {
    let half = width / 2;
    let device = t.device();
    let step = (10_000f64).ln() / (half.max(2) - 1) as f64;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (-(i as f64) * step).exp() as f32)
        .collect();
    let freqs = Tensor::<B, 1>::from_floats(freqs.as_slice(), &device).unsqueeze_dim::<2>(0); // [1, half]
    let angles = t.unsqueeze_dim::<2>(1) * freqs; // [batch, half]
    Tensor::cat(vec![angles.clone().sin(), angles.cos()], 1)
}

/// Group normalisation (Wu & He 2018) with a per-channel affine map.
///
/// Same maths and parameters as burn's `GroupNorm`, computed by
/// [`fused::group_norm`]: on the CPU backend one pass per sample for
/// statistics, normalisation, affine map and (in [`GroupNorm::forward_silu`])
/// the SiLU that follows it in every residual block, where burn's module
/// makes a `[1, C, 1, 1]` broadcast that misses Flex's fast paths (47 → 16 ms
/// on 128×64×14×14 as rows, shared/notes/cpu-op-gap.md) and the SiLU another
/// pass.
#[derive(Module, Debug)]
pub struct GroupNorm<B: Backend> {
    /// Scale γ, `[channels]`.
    pub gamma: Param<Tensor<B, 1>>,
    /// Shift β, `[channels]`.
    pub beta: Param<Tensor<B, 1>>,
    groups: usize,
}

impl<B: Backend> GroupNorm<B> {
    /// γ = 1, β = 0.
    pub fn new(groups: usize, channels: usize, device: &B::Device) -> Self {
        Self {
            gamma: Initializer::Ones.init([channels], device),
            beta: Initializer::Zeros.init([channels], device),
            groups,
        }
    }

    /// # Shapes
    /// - x: `[batch, channels, height, width]` → same
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.normalise(x, false)
    }

    /// `silu(self.forward(x))`, fused.
    pub fn forward_silu(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.normalise(x, true)
    }

    fn normalise(&self, x: Tensor<B, 4>, silu: bool) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let spec = fused::GroupNormSpec {
            groups: self.groups,
            eps: 1e-5,
            silu,
        };
        fused::group_norm(
            x.reshape([n, c, h * w]),
            self.gamma.val(),
            self.beta.val(),
            spec,
        )
        .reshape([n, c, h, w])
    }
}

/// A 1×1 convolution computed as one batched matrix product
/// (2.3× faster than burn's conv2d on the CPU backend, same parameters:
/// weight `[out, in]` and bias `[out]`).
#[derive(Module, Debug)]
pub struct PointwiseConv<B: Backend> {
    /// Weight, `[out, in]`.
    pub weight: Param<Tensor<B, 2>>,
    /// Bias, `[out]`.
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> PointwiseConv<B> {
    /// PyTorch's default initialisation: U(±1/√in) for weight and bias.
    pub fn new(d_in: usize, d_out: usize, device: &B::Device) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        let init = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        Self {
            weight: init.init_with([d_out, d_in], Some(d_in), Some(d_out), device),
            bias: init.init_with([d_out], Some(d_in), Some(d_out), device),
        }
    }

    /// # Shapes
    /// - x: `[batch, in, height, width]` → `[batch, out, height, width]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let out = self.weight.dims()[0];
        let y = self
            .weight
            .val()
            .unsqueeze_dim::<3>(0)
            .matmul(x.reshape([n, c, h * w])); // [n, out, h·w]
        add_per_channel(y, self.bias.val()).reshape([n, out, h, w])
    }
}

fn conv3x3<B: Backend>(d_in: usize, d_out: usize, stride: usize, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([d_in, d_out], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

/// GroupNorm → SiLU → Conv3×3, plus the time embedding, twice; a residual connection.
#[derive(Module, Debug)]
pub struct ResBlock<B: Backend> {
    norm1: GroupNorm<B>,
    conv1: Conv2d<B>,
    time: Linear<B>,
    norm2: GroupNorm<B>,
    /// Dropout probability before `conv2` (masks from the step's noise stream).
    dropout: f64,
    conv2: Conv2d<B>,
    shortcut: Option<PointwiseConv<B>>,
}

impl<B: Backend> ResBlock<B> {
    fn new(d_in: usize, d_out: usize, config: &UNetConfig, device: &B::Device) -> Self {
        Self {
            norm1: GroupNorm::new(config.groups, d_in, device),
            conv1: conv3x3(d_in, d_out, 1, device),
            time: LinearConfig::new(config.time_embedding, d_out).init(device),
            norm2: GroupNorm::new(config.groups, d_out, device),
            dropout: config.dropout,
            conv2: conv3x3(d_out, d_out, 1, device),
            shortcut: (d_in != d_out).then(|| PointwiseConv::new(d_in, d_out, device)),
        }
    }

    /// # Shapes
    /// - x: `[batch, in, h, w]`, temb_act: `[batch, time_embedding]` (already through SiLU)
    /// - output: `[batch, out, h, w]`
    fn forward(&self, x: Tensor<B, 4>, temb_act: Tensor<B, 2>) -> Tensor<B, 4> {
        let h = conv2d(&self.conv1, self.norm1.forward_silu(x.clone()));
        let [n, c, height, width] = h.dims();
        // The time embedding as per-row scalars of an `[N·C, H·W]` view (the fast path).
        let t = self.time.forward(temb_act).reshape([n * c, 1]);
        let h = (h.reshape([n * c, height * width]) + t).reshape([n, c, height, width]);
        let h = conv2d(
            &self.conv2,
            dropout(self.norm2.forward_silu(h), self.dropout),
        );
        let skip = match &self.shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        h + skip
    }
}

/// Single-head self-attention over all positions, with a residual connection.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    norm: GroupNorm<B>,
    query: Linear<B>,
    key: Linear<B>,
    value: Linear<B>,
    out: Linear<B>,
}

impl<B: Backend> Attention<B> {
    fn new(channels: usize, groups: usize, device: &B::Device) -> Self {
        // The 1×1 q, k, v and output convolutions as Linear layers over the
        // positions: the same parameters, one matrix product each.
        let linear = || LinearConfig::new(channels, channels).init(device);
        Self {
            norm: GroupNorm::new(groups, channels, device),
            query: linear(),
            key: linear(),
            value: linear(),
            out: linear(),
        }
    }

    /// # Shapes
    /// - x: `[batch, c, h, w]` → same
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let tokens = self
            .norm
            .forward(x.clone())
            .reshape([n, c, h * w])
            .swap_dims(1, 2); // [n, hw, c]
        let q = self.query.forward(tokens.clone());
        let k = self.key.forward(tokens.clone());
        let v = self.value.forward(tokens);
        let scores = q.matmul(k.swap_dims(1, 2)) / (c as f64).sqrt(); // [n, hw, hw]
        let weights = softmax(scores, 2);
        // (P·v)ᵀ and its output projection computed channels-first, so the
        // residual sum adds two contiguous `[n, c, h, w]` tensors (a
        // channels-last view sends it down the CPU backend's scalar path).
        let attended = v.swap_dims(1, 2).matmul(weights.swap_dims(1, 2)); // [n, c, hw]
        let projected = linear_channels_first(&self.out, attended).reshape([n, c, h, w]);
        x + projected
    }
}

/// `linear.forward` applied at every position of a channels-first
/// `[n, c_in, s]` tensor: `[n, c_out, s]`.
fn linear_channels_first<B: Backend>(linear: &Linear<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
    let y = linear
        .weight
        .val() // [c_in, c_out]
        .transpose()
        .unsqueeze_dim::<3>(0)
        .matmul(x);
    match &linear.bias {
        Some(bias) => add_per_channel(y, bias.val()),
        None => y,
    }
}

/// `y + bias` with the bias along dimension 1 of `[n, c, s]`, as per-row
/// scalars of an `[n·c, s]` view (the CPU backend's fast path; a
/// `[1, c, 1]` broadcast falls back to its scalar strided loop).
fn add_per_channel<B: Backend>(y: Tensor<B, 3>, bias: Tensor<B, 1>) -> Tensor<B, 3> {
    let [n, c, s] = y.dims();
    let per_row = bias
        .unsqueeze_dim::<2>(0)
        .repeat_dim(0, n)
        .reshape([n * c, 1]);
    (y.reshape([n * c, s]) + per_row).reshape([n, c, s])
}

/// A residual block optionally followed by self-attention.
#[derive(Module, Debug)]
pub struct Stage<B: Backend> {
    block: ResBlock<B>,
    attention: Option<Attention<B>>,
}

impl<B: Backend> Stage<B> {
    fn new(
        d_in: usize,
        d_out: usize,
        attention: bool,
        config: &UNetConfig,
        device: &B::Device,
    ) -> Self {
        Self {
            block: ResBlock::new(d_in, d_out, config, device),
            attention: attention.then(|| Attention::new(d_out, config.groups, device)),
        }
    }

    fn forward(&self, x: Tensor<B, 4>, temb_act: Tensor<B, 2>) -> Tensor<B, 4> {
        let h = self.block.forward(x, temb_act);
        match &self.attention {
            Some(attention) => attention.forward(h),
            None => h,
        }
    }
}

/// Nearest-neighbour ×2 upsampling, then a 3×3 convolution.
#[derive(Module, Debug)]
pub struct Upsample<B: Backend> {
    conv: Conv2d<B>,
}

impl<B: Backend> Upsample<B> {
    /// # Shapes
    /// - x: `[batch, c, h, w]` → `[batch, c, 2h, 2w]`
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv2d(&self.conv, fused::upsample_nearest2(x))
    }
}

/// The noise predictor ε_θ(x_t, t, y).
#[derive(Module, Debug)]
pub struct UNet<B: Backend> {
    time_in: Linear<B>,
    time_out: Linear<B>,
    class_embedding: Option<Embedding<B>>,
    conv_in: Conv2d<B>,
    down: Vec<Stage<B>>,
    downsample: Vec<Conv2d<B>>,
    middle_in: ResBlock<B>,
    middle_attention: Option<Attention<B>>,
    middle_out: ResBlock<B>,
    upsample: Vec<Upsample<B>>,
    up: Vec<Stage<B>>,
    norm_out: GroupNorm<B>,
    conv_out: Conv2d<B>,
    #[module(skip)]
    config: UNetConfig,
}

impl<B: Backend> UNet<B> {
    /// A freshly initialised network (call `validate` on the config first).
    pub fn new(config: &UNetConfig, device: &B::Device) -> Self {
        let levels = config.channel_mults.len();
        let attend = |level: usize| {
            config
                .attention_resolutions
                .contains(&(config.height >> level))
        };
        let mut down = Vec::new();
        let mut downsample = Vec::new();
        let mut skip_channels = Vec::new();
        let mut ch = config.base_channels;
        for level in 0..levels {
            let out = config.level_channels(level);
            for _ in 0..config.res_blocks {
                down.push(Stage::new(ch, out, attend(level), config, device));
                ch = out;
                skip_channels.push(ch);
            }
            downsample.push(conv3x3(ch, ch, 2, device));
        }
        let middle_in = ResBlock::new(ch, ch, config, device);
        let middle_attention = config
            .middle_attention
            .then(|| Attention::new(ch, config.groups, device));
        let middle_out = ResBlock::new(ch, ch, config, device);
        let mut upsample = Vec::new();
        let mut up = Vec::new();
        for level in (0..levels).rev() {
            upsample.push(Upsample {
                conv: conv3x3(ch, ch, 1, device),
            });
            let out = config.level_channels(level);
            for _ in 0..config.res_blocks {
                let skip = skip_channels.pop().expect("one skip per down block");
                up.push(Stage::new(ch + skip, out, attend(level), config, device));
                ch = out;
            }
        }
        Self {
            time_in: LinearConfig::new(config.time_features, config.time_embedding).init(device),
            time_out: LinearConfig::new(config.time_embedding, config.time_embedding).init(device),
            class_embedding: (config.num_classes > 0).then(|| {
                EmbeddingConfig::new(config.num_classes + 1, config.time_embedding).init(device)
            }),
            conv_in: conv3x3(config.channels, config.base_channels, 1, device),
            down,
            downsample,
            middle_in,
            middle_attention,
            middle_out,
            upsample,
            up,
            norm_out: GroupNorm::new(config.groups, ch, device),
            conv_out: conv3x3(ch, config.channels, 1, device),
            config: config.clone(),
        }
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The label that means "no class" (classifier-free guidance's unconditional branch).
    pub fn null_class(&self) -> usize {
        self.config.num_classes
    }

    /// Predicts the network's target (ε or v) for noisy images at timesteps `t`.
    ///
    /// # Shapes
    /// - x: `[batch, channels, height, width]`; t: `[batch]` (timesteps as floats);
    ///   labels: `[batch]` (class or [`UNet::null_class`]; ignored when unconditional)
    /// - output: `[batch, channels, height, width]`
    pub fn forward(
        &self,
        x: Tensor<B, 4>,
        t: Tensor<B, 1>,
        labels: Tensor<B, 1, Int>,
    ) -> Tensor<B, 4> {
        // Time (and class) embedding, shared by every residual block.
        let mut temb = self.time_out.forward(silu(
            self.time_in
                .forward(timestep_features(t, self.config.time_features)),
        ));
        if let Some(embedding) = &self.class_embedding {
            let [n] = labels.dims();
            temb = temb
                + embedding
                    .forward(labels.reshape([n, 1]))
                    .reshape([n, self.config.time_embedding]);
        }
        let temb_act = silu(temb);

        // Contracting path: each block leaves a skip, each level halves the resolution.
        let mut h = conv2d(&self.conv_in, x);
        let mut skips = Vec::with_capacity(self.down.len());
        let per_level = self.config.res_blocks;
        for (i, stage) in self.down.iter().enumerate() {
            h = stage.forward(h, temb_act.clone());
            skips.push(h.clone());
            if (i + 1) % per_level == 0 {
                h = conv2d(&self.downsample[i / per_level], h);
            }
        }

        // Middle, at the lowest resolution.
        h = self.middle_in.forward(h, temb_act.clone());
        if let Some(attention) = &self.middle_attention {
            h = attention.forward(h);
        }
        h = self.middle_out.forward(h, temb_act.clone());

        // Expanding path: double the resolution, then take the skips of the same level.
        for (i, stage) in self.up.iter().enumerate() {
            if i % per_level == 0 {
                h = self.upsample[i / per_level].forward(h);
            }
            let skip = skips.pop().expect("one skip per up block");
            h = stage.forward(fused::cat_channels(h, skip), temb_act.clone());
        }
        conv2d(&self.conv_out, self.norm_out.forward_silu(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Autodiff;
    use burn::backend::Flex;
    use burn::nn::{GroupNorm as BurnGroupNorm, GroupNormConfig};
    use genzoo_core::CpuDevice;
    use genzoo_core::record::{force_init, trainable_params};
    use genzoo_core::seed::{host_rng, normal_tensor};

    type AB = Autodiff<Flex>;

    #[test]
    fn ddpm_unet_has_the_reference_parameter_count() {
        let _guard = crate::rng_lock();
        // temb:  Linear(32,128) 4,224 + Linear(128,128) 16,512                          =  20,736
        // ResBlock(i,o) = GN(i) 2i + Conv3×3(i,o) 9io+o + Linear(128,o) 128o+o
        //               + GN(o) 2o + Conv3×3(o,o) 9o²+o + [i≠o: Conv1×1 io+o]
        //   (32,32)   = 64 + 9,248 + 4,128 + 64 + 9,248                                  =  22,752
        //   (32,64)   = 64 + 18,496 + 8,256 + 128 + 36,928 + 2,112                       =  65,984
        //   (64,64)   = 128 + 36,928 + 8,256 + 128 + 36,928                  (×2 middle) = 164,736
        //   (128,64)  = 256 + 73,792 + 8,256 + 128 + 36,928 + 8,256                      = 127,616
        //   (96,32)   = 192 + 27,680 + 4,128 + 64 + 9,248 + 3,104                        =  44,416
        // Attention(64) = GN 128 + 4 × (64·64 + 64)                                      =  16,768
        // conv_in 3×3(1,32) 320; Down 2 × 3×3(32,32) 9,248 + (64,64) 36,928 = 46,176
        // Up 3×3(64,64) 2 × 36,928 = 73,856; GN(32) 64; conv_out 3×3(32,1) 289
        // Total = 20,736 + 22,752 + 65,984 + 164,736 + 127,616 + 44,416 + 16,768
        //       + 320 + 46,176 + 73,856 + 64 + 289                                       = 583,713
        let net = UNet::<AB>::new(&UNetConfig::default(), &CpuDevice::default());
        force_init(&net);
        assert_eq!(trainable_params(&net), 583_713);
    }

    #[test]
    fn shapes_for_28_and_32_pixels_one_and_three_channels() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        for (c, hw, classes) in [(1, 28, 0), (3, 32, 0), (1, 32, 10), (3, 28, 10)] {
            let config = UNetConfig {
                channels: c,
                height: hw,
                width: hw,
                base_channels: 16,
                attention_resolutions: vec![hw / 2],
                num_classes: classes,
                ..Default::default()
            };
            config.validate().unwrap();
            let net = UNet::<Flex>::new(&config, &dev);
            let x = normal_tensor::<Flex, 4>(&mut rng, [2, c, hw, hw], 0.0, 1.0, &dev);
            let t = Tensor::<Flex, 1>::from_floats([0.0, 999.0], &dev);
            let y = Tensor::<Flex, 1, Int>::from_ints([1, 0], &dev);
            assert_eq!(net.forward(x, t, y).dims(), [2, c, hw, hw]);
        }
        let odd = UNetConfig {
            height: 30,
            width: 30,
            ..Default::default()
        };
        assert!(
            odd.validate()
                .unwrap_err()
                .to_string()
                .contains("multiples of 4")
        );
    }

    #[test]
    fn group_norm_matches_burns_values_and_gradients() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        let x = normal_tensor::<AB, 4>(&mut rng, [3, 8, 5, 4], 1.0, 2.0, &dev).require_grad();
        let ours = GroupNorm::<AB>::new(4, 8, &dev);
        let theirs: BurnGroupNorm<AB> = GroupNormConfig::new(4, 8).init(&dev);
        // Same non-trivial affine parameters in both.
        let gamma = normal_tensor::<AB, 1>(&mut rng, [8], 1.0, 0.5, &dev);
        let beta = normal_tensor::<AB, 1>(&mut rng, [8], 0.0, 0.5, &dev);
        let ours = GroupNorm {
            gamma: Param::from_tensor(gamma.clone()),
            beta: Param::from_tensor(beta.clone()),
            ..ours
        };
        let theirs = BurnGroupNorm {
            gamma: Some(Param::from_tensor(gamma)),
            beta: Some(Param::from_tensor(beta)),
            ..theirs
        };
        let weights = normal_tensor::<AB, 4>(&mut rng, [3, 8, 5, 4], 0.0, 1.0, &dev);
        let y1 = ours.forward(x.clone());
        let y2 = theirs.forward(x.clone());
        y1.clone().into_data().assert_approx_eq::<f32>(
            &y2.clone().into_data(),
            burn::tensor::Tolerance::absolute(1e-4),
        );
        // The fused SiLU variant is SiLU after the module.
        ours.forward_silu(x.clone())
            .into_data()
            .assert_approx_eq::<f32>(
                &silu(y2.clone()).into_data(),
                burn::tensor::Tolerance::absolute(1e-4),
            );
        let g1 = (y1 * weights.clone()).sum().backward();
        let g2 = (y2 * weights).sum().backward();
        x.grad(&g1).unwrap().into_data().assert_approx_eq::<f32>(
            &x.grad(&g2).unwrap().into_data(),
            burn::tensor::Tolerance::absolute(1e-4),
        );
        ours.gamma
            .grad(&g1)
            .unwrap()
            .into_data()
            .assert_approx_eq::<f32>(
                &theirs
                    .gamma
                    .as_ref()
                    .unwrap()
                    .grad(&g2)
                    .unwrap()
                    .into_data(),
                burn::tensor::Tolerance::absolute(1e-3),
            );
    }

    #[test]
    fn pointwise_conv_is_a_1x1_convolution() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        let ours = PointwiseConv::<Flex>::new(6, 4, &dev);
        let mut conv: Conv2d<Flex> = Conv2dConfig::new([6, 4], [1, 1]).init(&dev);
        conv.weight = Param::from_tensor(ours.weight.val().reshape([4, 6, 1, 1]));
        conv.bias = Some(Param::from_tensor(ours.bias.val()));
        let x = normal_tensor::<Flex, 4>(&mut rng, [2, 6, 3, 5], 0.0, 1.0, &dev);
        ours.forward(x.clone()).into_data().assert_approx_eq::<f32>(
            &conv.forward(x).into_data(),
            burn::tensor::Tolerance::absolute(1e-5),
        );
    }
}
