//! The GPT training step: next-token cross-entropy, AdamW with decoupled
//! weight decay on parameters of two or more dimensions only (nanoGPT's
//! `configure_optimizers`), through the engine's schedule and clipping.

use std::marker::PhantomData;
use std::path::Path;

use burn::module::{AutodiffModule, ModuleMapper, Param};
use burn::optim::GradientsParams;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use genzoo_core::optim::FusedAdam;
use genzoo_core::parallel::{Replica, broadcast_autodiff};
use genzoo_core::record::{load_module, load_optimizer, save_module, save_optimizer};
use genzoo_core::vocabulary::Vocabulary;
use genzoo_core::weights::NamedTensors;
use genzoo_core::{
    Error, Family, ImageBatch, Metrics, Result, SampleRequest, StepContext, TextRequest,
    TokenBatch, TokenSampling,
};
use serde::{Deserialize, Serialize};

use super::model::{Gpt, GptConfig};
use super::sample::{Sampling, generate};

/// What the transformer reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum GptInput {
    /// Text: `vocabulary` holds the characters in token order, or is absent for bytes (256 tokens).
    Text {
        /// The characters of the vocabulary (set from the training text).
        vocabulary: Option<String>,
    },
    /// Images: each pixel quantised to `levels` levels, in raster order
    /// with a pixel's channels in turn (R, G, B, as PixelCNN orders them),
    /// after a start token.
    Pixels {
        /// Levels per channel value (the start token is `levels`).
        levels: usize,
        /// Image channels, height and width (set from the data).
        shape: (usize, usize, usize),
    },
}

impl GptInput {
    /// A text model's vocabulary: its characters, or bytes where it has
    /// none (`None` for images).
    pub fn text_vocabulary(&self) -> Option<Vocabulary> {
        match self {
            GptInput::Text { vocabulary } => Some(
                vocabulary
                    .as_deref()
                    .map_or(Vocabulary::Bytes, Vocabulary::from_chars),
            ),
            GptInput::Pixels { .. } => None,
        }
    }

    /// Whether the model has a likelihood of 8-bit images in bits/dim: a
    /// pixel model whose levels split the 256 byte values evenly.
    pub fn check_bits_per_dim(&self) -> Result<()> {
        match self {
            GptInput::Text { .. } => Err(Error::Config(
                "gpt: a text model's likelihood is its val_loss (nats per token), not bits/dim of images"
                    .into(),
            )),
            GptInput::Pixels { levels, .. } if !256usize.is_multiple_of(*levels) => {
                Err(Error::Config(format!(
                    "gpt: bits/dim on 8-bit data needs levels dividing 256, got {levels}"
                )))
            }
            GptInput::Pixels { .. } => Ok(()),
        }
    }
}

/// Decoupled weight decay θ ← θ·(1 − lr·λ) on parameters of rank ≥ 2 (as
/// PyTorch's AdamW applies it before the Adam update).
struct DecayMatrices<B> {
    factor: f64,
    _b: PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for DecayMatrices<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if D < 2 {
            return param;
        }
        let (id, value, mapper) = param.consume();
        // Detached: the decay is an update, not part of any graph.
        let decayed = Tensor::from_inner(value.inner() * self.factor).require_grad();
        Param::from_mapped_value(id, decayed, mapper)
    }
}

/// AdamW's decoupled weight decay for one step at learning rate `lr`: the
/// linear layers' weight matrices, and the embeddings if the config says so.
fn weight_decay<B: AutodiffBackend>(model: Gpt<B>, config: &GptConfig, lr: f64) -> Gpt<B> {
    if config.weight_decay == 0.0 {
        return model;
    }
    let mut decay = DecayMatrices {
        factor: 1.0 - lr * config.weight_decay,
        _b: PhantomData,
    };
    if config.decay_embeddings {
        model.map(&mut decay)
    } else {
        model.map_blocks_and_head(&mut decay)
    }
}

/// The network, its optimizer and the device: what text and pixel GPTs share.
struct GptCore<B: AutodiffBackend> {
    model: Gpt<B>,
    optimizer: OptimizerAdaptor<FusedAdam, Gpt<B>, B>,
    config: GptConfig,
    device: B::Device,
}

impl<B: AutodiffBackend> GptCore<B> {
    fn new(config: GptConfig, device: &B::Device) -> Self {
        let model = config.init::<B>(device);
        let optimizer = FusedAdam::new(config.beta1, config.beta2, config.eps).init();
        Self {
            model,
            optimizer,
            config,
            device: device.clone(),
        }
    }

    /// One AdamW step on next-token cross-entropy; returns the loss in nats per token.
    fn step(
        mut self,
        inputs: Tensor<B, 2, Int>,
        targets: Tensor<B, 2, Int>,
        ctx: &mut StepContext,
    ) -> Result<(Self, f64)> {
        let loss = cross_entropy(self.model.forward(inputs), targets);
        let grads = GradientsParams::from_grads(loss.backward(), &self.model);
        if ctx.updates_weights() {
            self.model = weight_decay(self.model, &self.config, ctx.lr());
        }
        self.model = ctx.apply(&mut self.optimizer, self.model, grads)?;
        Ok((self, loss.into_scalar().elem()))
    }

    fn eval(
        &self,
        inputs: Tensor<B::InnerBackend, 2, Int>,
        targets: Tensor<B::InnerBackend, 2, Int>,
    ) -> f64 {
        cross_entropy(self.model.valid().forward(inputs), targets)
            .into_scalar()
            .elem()
    }

    fn broadcast_weights(mut self, replica: &Replica) -> Result<Self> {
        self.model = broadcast_autodiff(self.model, replica)?;
        Ok(self)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        save_module(&self.model, &dir.join("model"))?;
        save_optimizer(&self.optimizer, &self.model, &dir.join("optimizer"))
    }

    fn load(mut self, dir: &Path) -> Result<Self> {
        self = self.load_weights(dir)?;
        self.optimizer = load_optimizer(self.optimizer, &self.model, &dir.join("optimizer"))?;
        Ok(self)
    }

    /// The weights of what [`GptCore::save`] wrote, not the optimizer's state.
    fn load_weights(mut self, dir: &Path) -> Result<Self> {
        self.model = load_module(self.model, &dir.join("model"))?;
        Ok(self)
    }
}

/// Mean next-token cross-entropy in nats.
///
/// # Shapes
/// - logits: `[batch, t, vocab]`, targets: `[batch, t]` → `[1]`
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 3>, targets: Tensor<B, 2, Int>) -> Tensor<B, 1> {
    let [b, t, v] = logits.dims();
    let log_probs = log_softmax(logits.reshape([b * t, v]), 1);
    log_probs
        .gather(1, targets.reshape([b * t, 1]))
        .mean()
        .neg()
}

/// A loss's metrics: nats per token, perplexity, and bits (`per`): the
/// loss in bits plus `extra_bits` per token that the tokens leave out.
fn loss_metrics(loss: f64, per: &str, extra_bits: f64) -> Metrics {
    Metrics::new()
        .with("loss", loss)
        .with("perplexity", loss.exp())
        .with(per, loss / std::f64::consts::LN_2 + extra_bits)
}

/// A GPT over text: the `gpt-char` family.
pub struct GptText<B: AutodiffBackend> {
    core: GptCore<B>,
    vocabulary: Vocabulary,
}

impl<B: AutodiffBackend> GptText<B> {
    /// The loss in bits per token, named for what a token is.
    fn bits_metric(&self) -> &'static str {
        match self.vocabulary {
            Vocabulary::Chars(_) => "bits_per_char",
            Vocabulary::Bytes => "bits_per_byte",
        }
    }

    /// A fresh model for the vocabulary in `input` (characters, or bytes when absent).
    pub fn new(config: GptConfig, input: &GptInput, device: &B::Device) -> Result<Self> {
        let Some(vocabulary) = input.text_vocabulary() else {
            return Err(Error::Config("GptText needs a text input".into()));
        };
        Ok(Self {
            core: GptCore::new(config, device),
            vocabulary,
        })
    }

    /// The network.
    pub fn model(&self) -> &Gpt<B> {
        &self.core.model
    }

    /// The tokens generated after the request's prompt.
    fn generate_tokens(&self, request: &TextRequest) -> Result<Vec<u32>> {
        let prompt = prompt_tokens(&self.vocabulary, &request.prompt)?;
        let mut out = generate(
            &self.core.model.valid(),
            &[prompt],
            request.tokens,
            &Sampling::new(&request.sampling, None),
            request.seed,
            request.sampling.use_cache,
            &self.core.device,
        );
        Ok(out.swap_remove(0))
    }
}

/// The tokens a text model continues from: `prompt`'s, or a newline (token
/// 0 where the vocabulary has none) for an empty prompt.
///
/// ```
/// use genzoo_core::vocabulary::Vocabulary;
/// use genzoo_models::gpt::family::prompt_tokens;
/// let chars = Vocabulary::from_chars("\nab");
/// assert_eq!(prompt_tokens(&chars, "ba").unwrap(), vec![2, 1]);
/// assert_eq!(prompt_tokens(&chars, "").unwrap(), vec![0]);
/// assert_eq!(prompt_tokens(&Vocabulary::Bytes, "").unwrap(), vec![10]);
/// assert!(prompt_tokens(&chars, "c").is_err());
/// ```
pub fn prompt_tokens(vocabulary: &Vocabulary, prompt: &str) -> Result<Vec<u32>> {
    let tokens = vocabulary.encode(prompt)?;
    if !tokens.is_empty() {
        return Ok(tokens);
    }
    let newline = vocabulary
        .encode("\n")
        .ok()
        .and_then(|t| t.first().copied());
    Ok(vec![newline.unwrap_or(0)])
}

impl<B: AutodiffBackend> Family<B> for GptText<B> {
    type Batch = TokenBatch<B>;

    fn num_params(&self) -> usize {
        self.core.model.num_params()
    }

    fn supports_micro_batches(&self) -> bool {
        // Weight decay moves only with the update (`GptCore::step`).
        true
    }

    fn train_step(
        mut self,
        batch: TokenBatch<B>,
        ctx: &mut StepContext,
    ) -> Result<(Self, Metrics)> {
        let (core, loss) = self.core.step(batch.inputs, batch.targets, ctx)?;
        self.core = core;
        let bits = self.bits_metric();
        Ok((self, loss_metrics(loss, bits, 0.0)))
    }

    fn eval_batch(&self, batch: TokenBatch<B>) -> Result<Metrics> {
        Ok(loss_metrics(
            self.core.eval(batch.inputs.inner(), batch.targets.inner()),
            self.bits_metric(),
            0.0,
        ))
    }

    fn sample_images(&self, _request: &SampleRequest) -> Result<Tensor<B::InnerBackend, 4>> {
        Err(Error::Config(
            "this model generates text: use --prompt and --tokens instead of --out".into(),
        ))
    }

    fn draws_images(&self) -> bool {
        false
    }

    fn generate_text(&self, request: &TextRequest) -> Result<String> {
        Ok(self.vocabulary.decode(&self.generate_tokens(request)?))
    }

    fn generate_bytes(&self, request: &TextRequest) -> Result<Vec<u8>> {
        Ok(self
            .vocabulary
            .decode_bytes(&self.generate_tokens(request)?))
    }

    /// nanoGPT's names: `GPT.load_state_dict` takes the file.
    fn pytorch_weights(&self) -> Result<NamedTensors> {
        self.core.model.nanogpt_weights()
    }

    fn broadcast_weights(mut self, replica: &Replica) -> Result<Self> {
        self.core = self.core.broadcast_weights(replica)?;
        Ok(self)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.core.save(dir)
    }

    fn load(mut self, dir: &Path) -> Result<Self> {
        self.core = self.core.load(dir)?;
        Ok(self)
    }

    fn load_weights(mut self, dir: &Path) -> Result<Self> {
        self.core = self.core.load_weights(dir)?;
        Ok(self)
    }
}

/// A GPT over images as pixel sequences: the `gpt-pixel` family.
pub struct GptPixel<B: AutodiffBackend> {
    core: GptCore<B>,
    levels: usize,
    shape: (usize, usize, usize),
}

impl<B: AutodiffBackend> GptPixel<B> {
    /// The network.
    pub fn model(&self) -> &Gpt<B> {
        &self.core.model
    }

    /// Bits per pixel for the choice of a byte within its level, uniform:
    /// log₂(256/levels). An error where the levels do not split the 256
    /// byte values evenly ([`GptInput::check_bits_per_dim`]).
    fn bits_within_level(&self) -> Result<f64> {
        GptInput::Pixels {
            levels: self.levels,
            shape: self.shape,
        }
        .check_bits_per_dim()?;
        Ok((256.0 / self.levels as f64).log2())
    }

    /// A loss's metrics. Its bits are the exact NLL of 8-bit images,
    /// `bits_per_dim` (on the scale of the VAE's and the DDPM's bounds, and
    /// of `eval --metrics nll`); with levels that do not divide 256, only
    /// the cross-entropy over the levels, `bits_per_token`.
    fn loss_metrics(&self, loss: f64) -> Metrics {
        match self.bits_within_level() {
            Ok(within) => loss_metrics(loss, "bits_per_dim", within),
            Err(_) => loss_metrics(loss, "bits_per_token", 0.0),
        }
    }

    /// A fresh model for images of `shape` quantised to `levels`.
    pub fn new(config: GptConfig, input: &GptInput, device: &B::Device) -> Result<Self> {
        let GptInput::Pixels { levels, shape } = input else {
            return Err(Error::Config("GptPixel needs a pixel input".into()));
        };
        Ok(Self {
            core: GptCore::new(config, device),
            levels: *levels,
            shape: *shape,
        })
    }

    /// Images in `[0, 1]` as token sequences: a start token, then each
    /// pixel's levels, row by row, a pixel's channels in turn.
    ///
    /// # Shapes
    /// - images: `[batch, c, h, w]` → inputs `[batch, h·w·c]` (start + all but the last value), targets `[batch, h·w·c]`
    pub fn tokens<Bk: Backend>(
        &self,
        images: Tensor<Bk, 4>,
    ) -> (Tensor<Bk, 2, Int>, Tensor<Bk, 2, Int>) {
        let n = images.dims()[0];
        let levels = self.levels as f64;
        let raster = images.permute([0, 2, 3, 1]); // [N, H, W, C]
        let pixels = (raster.reshape([n as i32, -1]) * levels)
            .floor()
            .clamp(0.0, levels - 1.0)
            .int(); // [N, D]
        let d = pixels.dims()[1];
        let start = Tensor::<Bk, 2, Int>::full([n, 1], self.levels as i64, &pixels.device());
        let inputs = Tensor::cat(vec![start, pixels.clone().narrow(1, 0, d - 1)], 1);
        (inputs, pixels)
    }
}

impl<B: AutodiffBackend> GptPixel<B> {
    /// Completes images from their top `rows` rows: the given rows are
    /// kept (quantised), the rest is sampled pixel by pixel (channel by
    /// channel within a pixel) as `sampling` says.
    ///
    /// # Shapes
    /// - images: `[n, c, h, w]` in `[0, 1]` → `[n, c, h, w]` in `[0, 1]`
    pub fn complete(
        &self,
        images: Tensor<B::InnerBackend, 4>,
        rows: usize,
        seed: u64,
        sampling: &TokenSampling,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        let (c, h, w) = self.shape;
        let [n, ic, ih, iw] = images.dims();
        if (ic, ih, iw) != (c, h, w) {
            return Err(Error::Config(format!(
                "the model draws {c}x{h}x{w} images, these are {ic}x{ih}x{iw}"
            )));
        }
        if rows >= h {
            return Err(Error::Config(format!(
                "{rows} given rows leave nothing to complete in images of {h} rows: give 0 to {}",
                h - 1
            )));
        }
        let (inputs, _) = self.tokens(images);
        let given = 1 + rows * w * c; // the start token and the given rows
        let data = inputs
            .narrow(1, 0, given)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .map_err(|e| Error::Other(format!("{e:?}")))?;
        let prompts: Vec<Vec<u32>> = data
            .chunks(given)
            .map(|r| r.iter().map(|&t| t as u32).collect())
            .collect();
        let completed = generate(
            &self.core.model.valid(),
            &prompts,
            (h - rows) * w * c,
            &Sampling::new(sampling, Some(self.levels)),
            seed,
            sampling.use_cache,
            &self.core.device,
        );
        let tokens: Vec<u32> = prompts
            .iter()
            .zip(completed)
            .flat_map(|(p, rest)| p[1..].iter().copied().chain(rest).collect::<Vec<_>>())
            .collect();
        Ok(self.images_from_tokens(&tokens, n))
    }

    /// Images `[n, c, h, w]` from `n` token sequences in [`tokens`](Self::tokens)'
    /// order, each level drawn as the centre of its bin.
    fn images_from_tokens(&self, tokens: &[u32], n: usize) -> Tensor<B::InnerBackend, 4> {
        let (c, h, w) = self.shape;
        let values: Vec<f32> = tokens
            .iter()
            .map(|&t| (t as f32 + 0.5) / self.levels as f32)
            .collect();
        Tensor::from_data(TensorData::new(values, [n, h, w, c]), &self.core.device)
            .permute([0, 3, 1, 2])
    }
}

impl<B: AutodiffBackend> Family<B> for GptPixel<B> {
    type Batch = ImageBatch<B>;

    fn num_params(&self) -> usize {
        self.core.model.num_params()
    }

    fn supports_micro_batches(&self) -> bool {
        // Weight decay moves only with the update (`GptCore::step`).
        true
    }

    fn train_step(
        mut self,
        batch: ImageBatch<B>,
        ctx: &mut StepContext,
    ) -> Result<(Self, Metrics)> {
        let (inputs, targets) = self.tokens(batch.images);
        let (core, loss) = self.core.step(inputs, targets, ctx)?;
        self.core = core;
        let metrics = self.loss_metrics(loss);
        Ok((self, metrics))
    }

    fn eval_batch(&self, batch: ImageBatch<B>) -> Result<Metrics> {
        let (inputs, targets) = self.tokens(batch.images.inner());
        Ok(self.loss_metrics(self.core.eval(inputs, targets)))
    }

    fn complete_images(
        &self,
        images: Tensor<B::InnerBackend, 4>,
        rows: usize,
        seed: u64,
        sampling: &TokenSampling,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        self.complete(images, rows, seed, sampling)
    }

    /// The exact negative log-likelihood of 8-bit images: the model's
    /// cross-entropy over the quantised levels plus log₂(256/levels) bits per
    /// pixel for a uniform choice of the byte within its level (each level
    /// holds exactly 256/levels byte values). Comparable with the DDPM's bound.
    fn bits_per_dim(
        &self,
        images: Tensor<B::InnerBackend, 4>,
        _effort: Option<usize>,
        _seed: u64,
    ) -> Result<Vec<f64>> {
        let within_level = self.bits_within_level()?;
        let (inputs, targets) = self.tokens(images);
        let [n, t] = targets.dims();
        let logits = self.core.model.valid().forward(inputs); // [n, t, vocab]
        let picked = burn::tensor::activation::log_softmax(logits, 2)
            .gather(2, targets.unsqueeze_dim::<3>(2))
            .reshape([n, t])
            .mean_dim(1)
            .reshape([n]); // mean log-probability per pixel, nats
        let values = picked
            .into_data()
            .to_vec::<f32>()
            .map_err(|e| genzoo_core::Error::Config(format!("{e:?}")))?;
        Ok(values
            .into_iter()
            .map(|lp| -(lp as f64) / std::f64::consts::LN_2 + within_level)
            .collect())
    }

    fn sample_images(&self, request: &SampleRequest) -> Result<Tensor<B::InnerBackend, 4>> {
        if request.class.is_some() {
            return Err(Error::Config("gpt-pixel is not class-conditional".into()));
        }
        let (c, h, w) = self.shape;
        let prompts = vec![vec![self.levels as u32]; request.n];
        let rows = generate(
            &self.core.model.valid(),
            &prompts,
            c * h * w,
            &Sampling::new(&request.token_sampling, Some(self.levels)),
            request.seed,
            request.token_sampling.use_cache,
            &self.core.device,
        );
        let tokens: Vec<u32> = rows.into_iter().flatten().collect();
        Ok(self.images_from_tokens(&tokens, request.n))
    }

    /// nanoGPT's names: `GPT.load_state_dict` takes the file.
    fn pytorch_weights(&self) -> Result<NamedTensors> {
        self.core.model.nanogpt_weights()
    }

    fn broadcast_weights(mut self, replica: &Replica) -> Result<Self> {
        self.core = self.core.broadcast_weights(replica)?;
        Ok(self)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        self.core.save(dir)
    }

    fn load(mut self, dir: &Path) -> Result<Self> {
        self.core = self.core.load(dir)?;
        Ok(self)
    }

    fn load_weights(mut self, dir: &Path) -> Result<Self> {
        self.core = self.core.load_weights(dir)?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use genzoo_core::CpuDevice;

    type AB = Autodiff<Flex>;

    #[test]
    fn decay_touches_linear_weights_and_embeddings_only_if_asked() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        for (tie_weights, decay_embeddings) in [(true, false), (false, false), (true, true)] {
            let config = GptConfig {
                vocab_size: 5,
                block_size: 4,
                n_embd: 8,
                n_head: 2,
                n_layer: 2,
                bias: true,
                tie_weights,
                weight_decay: 0.5,
                decay_embeddings,
                ..Default::default()
            };
            let model = config.init::<AB>(&dev);
            let before = genzoo_core::record::param_shapes(&model);
            let values = genzoo_core::record::param_values(&model);
            // One step at lr 1: θ·(1 − 1·0.5).
            let after = genzoo_core::record::param_values(&weight_decay(model, &config, 1.0));
            let mut offset = 0;
            let mut decayed = Vec::new();
            for (name, shape) in before {
                let len: usize = shape.iter().product();
                let embedding = name.starts_with("wte") || name.starts_with("wpe");
                let ratio = if shape.len() >= 2 && (decay_embeddings || !embedding) {
                    decayed.push(name.clone());
                    0.5
                } else {
                    1.0
                };
                assert!(
                    (offset..offset + len).all(|i| after[i] == values[i] * ratio),
                    "{name} {shape:?} should be scaled by {ratio} (decay_embeddings {decay_embeddings})"
                );
                offset += len;
            }
            // 4 linear weights per block, the untied head, and both embeddings when asked.
            let count = 4 * 2 + usize::from(!tie_weights) + 2 * usize::from(decay_embeddings);
            assert_eq!(decayed.len(), count, "{decayed:?}");
        }
    }

    /// A one-layer GPT over images of `shape` quantised to `levels`.
    fn tiny_pixel_gpt(levels: usize, shape: (usize, usize, usize)) -> GptPixel<AB> {
        let input = GptInput::Pixels { levels, shape };
        let config = GptConfig {
            vocab_size: levels + 1,
            block_size: shape.0 * shape.1 * shape.2 + 1,
            n_embd: 8,
            n_head: 2,
            n_layer: 1,
            ..Default::default()
        };
        GptPixel::new(config, &input, &CpuDevice::default()).unwrap()
    }

    #[test]
    fn completion_keeps_the_given_rows() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let gpt = tiny_pixel_gpt(16, (1, 4, 3));
        let images = Tensor::<Flex, 4>::from_floats(
            [[[[0.0, 0.5, 1.0], [0.25, 0.75, 0.1], [0.0; 3], [0.0; 3]]]],
            &dev,
        );
        let done = gpt
            .complete(images, 2, 3, &TokenSampling::default())
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let centre = |level: f32| (level + 0.5) / 16.0;
        assert_eq!(
            &done[..6],
            &[
                centre(0.0),
                centre(8.0),
                centre(15.0),
                centre(4.0),
                centre(12.0),
                centre(1.0)
            ]
        );
        assert_eq!(done.len(), 12);
        // All 4 rows given, or more, leave nothing to complete.
        for rows in [4, 9] {
            let err = gpt
                .complete(
                    Tensor::zeros([1, 1, 4, 3], &dev),
                    rows,
                    0,
                    &TokenSampling::default(),
                )
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("leave nothing to complete in images of 4 rows: give 0 to 3"),
                "{err}"
            );
        }
    }

    #[test]
    fn colour_pixels_are_tokens_channel_by_channel_and_complete_by_rows() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let gpt = tiny_pixel_gpt(4, (3, 2, 2));
        // Channel c of pixel (y, x) holds level (c + 2y + x) % 4.
        let level = |c: usize, y: usize, x: usize| ((c + 2 * y + x) % 4) as f32;
        let planes: Vec<f32> = (0..3)
            .flat_map(|c| (0..2).flat_map(move |y| (0..2).map(move |x| (c, y, x))))
            .map(|(c, y, x)| (level(c, y, x) + 0.5) / 4.0)
            .collect();
        let images =
            Tensor::<Flex, 4>::from_data(TensorData::new(planes.clone(), [1, 3, 2, 2]), &dev);
        let (_, targets) = gpt.tokens(images.clone());
        let tokens = targets
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap();
        // Pixel (0,0) R G B, pixel (0,1) R G B, then the second row.
        assert_eq!(tokens, vec![0, 1, 2, 1, 2, 3, 2, 3, 0, 3, 0, 1]);
        // Completing from the first row keeps all three channels of it.
        let done = gpt
            .complete(images, 1, 7, &TokenSampling::default())
            .unwrap();
        assert_eq!(done.dims(), [1, 3, 2, 2]);
        let done = done.into_data().to_vec::<f32>().unwrap();
        for c in 0..3 {
            for x in 0..2 {
                let i = c * 4 + x; // (c, y = 0, x) in [c, h, w]
                assert_eq!(done[i], planes[i], "channel {c}, pixel (0, {x})");
            }
        }
        // And sampled images come back in [c, h, w].
        let sampled = gpt
            .sample_images(&SampleRequest {
                n: 2,
                seed: 1,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(sampled.dims(), [2, 3, 2, 2]);
    }

    #[test]
    fn pixel_bits_are_the_8_bit_likelihood_where_the_levels_divide_256() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let batch = || ImageBatch::<AB> {
            images: Tensor::full([2, 1, 2, 2], 0.3, &dev),
            labels: Tensor::zeros([2], &dev),
        };
        let metrics = tiny_pixel_gpt(16, (1, 2, 2)).eval_batch(batch()).unwrap();
        let nats = metrics.get("loss").unwrap();
        let bits = metrics.get("bits_per_dim").unwrap();
        assert!((bits - (nats / std::f64::consts::LN_2 + 4.0)).abs() < 1e-12);
        // 10 levels hold 25 or 26 byte values each: no exact likelihood.
        let metrics = tiny_pixel_gpt(10, (1, 2, 2)).eval_batch(batch()).unwrap();
        assert_eq!(metrics.get("bits_per_dim"), None);
        let nats = metrics.get("loss").unwrap();
        let bits = metrics.get("bits_per_token").unwrap();
        assert!((bits - nats / std::f64::consts::LN_2).abs() < 1e-12);
    }

    #[test]
    fn pixel_sampling_follows_the_requested_token_sampling() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let gpt = tiny_pixel_gpt(4, (1, 3, 3));
        let values = |sampling: TokenSampling, seed: u64| -> Vec<f32> {
            gpt.sample_images(&SampleRequest {
                n: 3,
                seed,
                token_sampling: sampling,
                ..Default::default()
            })
            .unwrap()
            .into_data()
            .to_vec::<f32>()
            .unwrap()
        };
        let with = |temperature: f64, top_k: Option<usize>, use_cache: bool| TokenSampling {
            temperature,
            top_k,
            top_p: None,
            use_cache,
        };
        // Drawn at temperature 1, the seed matters; the cache does not.
        let drawn = values(with(1.0, None, true), 1);
        assert_ne!(drawn, values(with(1.0, None, true), 2));
        assert_eq!(drawn, values(with(1.0, None, false), 1));
        // Greedy decoding is the same for every seed and every row, and is
        // what top-1 sampling draws.
        let greedy = values(with(0.0, None, true), 1);
        assert_eq!(greedy, values(with(0.0, None, true), 2));
        assert_eq!(greedy[..9], greedy[9..18]);
        assert_eq!(greedy, values(with(1.0, Some(1), true), 5));
        // Completions take the same options.
        let image = Tensor::<Flex, 4>::zeros([1, 1, 3, 3], &dev);
        let complete = |sampling: TokenSampling, seed: u64| -> Vec<f32> {
            gpt.complete(image.clone(), 1, seed, &sampling)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        let greedy = complete(with(0.0, None, true), 1);
        assert_eq!(greedy, complete(with(0.0, None, false), 9));
        assert_eq!(greedy, complete(with(1.0, Some(1), true), 3));
    }

    #[test]
    fn pixel_tokens_shift_by_one_after_the_start_token() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let gpt = tiny_pixel_gpt(16, (1, 2, 2));
        let images = Tensor::<Flex, 4>::from_floats([[[[0.0, 0.5], [0.99, 1.0]]]], &dev);
        let (x, y) = gpt.tokens(images);
        assert_eq!(
            x.into_data().convert::<i64>().to_vec::<i64>().unwrap(),
            vec![16, 0, 8, 15]
        );
        assert_eq!(
            y.into_data().convert::<i64>().to_vec::<i64>().unwrap(),
            vec![0, 8, 15, 15]
        );
    }
}
