//! The traits a model family and its data implement to plug into the engine.
//!
//! A family owns its networks *and* its optimizers (a VAE has one, a GAN
//! two). The engine owns the loop: budget, schedule, seeding, evaluation,
//! logging, sample grids and checkpoints. Between the two sits
//! [`StepContext`]: a family computes gradients, then hands them to
//! [`StepContext::apply`], which is where a split step's micro-batch
//! gradients are summed, data-parallel replicas average theirs, and
//! clipping happens, for every family at once.

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::error::{Error, Result};
use crate::grad;
use crate::parallel::{self, Replica};

/// Named scalar metrics of one training step or one evaluation batch,
/// in the order they were added.
///
/// ```
/// use genzoo_core::Metrics;
/// let m = Metrics::new().with("loss", 0.5).with("kl", 0.1);
/// assert_eq!(m.get("kl"), Some(0.1));
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Metrics(pub Vec<(String, f64)>);

impl Metrics {
    /// No metrics.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a metric (builder style).
    pub fn with(mut self, name: impl Into<String>, value: f64) -> Self {
        self.push(name, value);
        self
    }
    /// Adds a metric.
    pub fn push(&mut self, name: impl Into<String>, value: f64) {
        self.0.push((name.into(), value));
    }
    /// The value of a metric, if present.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
    }
    /// Iterates over (name, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> {
        self.0.iter().map(|(n, v)| (n.as_str(), *v))
    }
    /// The first metric that is NaN or infinite.
    pub fn first_non_finite(&self) -> Option<(&str, f64)> {
        self.iter().find(|(_, v)| !v.is_finite())
    }
}

/// A batch of images and their class labels.
#[derive(Clone, Debug)]
pub struct ImageBatch<B: Backend> {
    /// Pixels, `[batch, channels, height, width]`, scaled as the data config says.
    pub images: Tensor<B, 4>,
    /// Class labels, `[batch]`.
    pub labels: Tensor<B, 1, Int>,
}

impl<B: Backend> ImageBatch<B> {
    /// Number of examples in the batch.
    pub fn len(&self) -> usize {
        self.images.dims()[0]
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A batch whose rows can be taken apart: a data-parallel replica's share,
/// or a micro-batch of a split step.
pub trait ShardBatch: Sized + Clone {
    /// Number of examples (rows) in the batch.
    fn rows(&self) -> usize;
    /// Rows `[start, end)` of the batch.
    fn shard(self, start: usize, end: usize) -> Self;
}

impl<B: Backend> ShardBatch for ImageBatch<B> {
    fn rows(&self) -> usize {
        self.len()
    }
    fn shard(self, start: usize, end: usize) -> Self {
        Self {
            images: self.images.narrow(0, start, end - start),
            labels: self.labels.narrow(0, start, end - start),
        }
    }
}

impl<B: Backend> ShardBatch for TokenBatch<B> {
    fn rows(&self) -> usize {
        self.inputs.dims()[0]
    }
    fn shard(self, start: usize, end: usize) -> Self {
        Self {
            inputs: self.inputs.narrow(0, start, end - start),
            targets: self.targets.narrow(0, start, end - start),
        }
    }
}

/// A batch of token sequences and their next-token targets.
#[derive(Clone, Debug)]
pub struct TokenBatch<B: Backend> {
    /// Input tokens, `[batch, t]`.
    pub inputs: Tensor<B, 2, Int>,
    /// The token following each input position, `[batch, t]`.
    pub targets: Tensor<B, 2, Int>,
}

/// Training and evaluation data with deterministic random access.
///
/// Batch `index` of `epoch` must depend only on the data, the seed, `epoch`
/// and `index`, never on what was drawn before: that is what makes a resumed
/// run see exactly the batches an uninterrupted one sees.
pub trait TrainData<B: Backend> {
    /// The batch type handed to [`Family::train_step`].
    type Batch;
    /// Number of training batches in one epoch (at least 1).
    fn batches_per_epoch(&self) -> usize;
    /// Training batch `index` (`< batches_per_epoch()`) of `epoch`.
    fn train_batch(&self, epoch: u64, index: usize, device: &B::Device) -> Self::Batch;
    /// A digest of the training examples (SHA-256, hex), recorded in each
    /// checkpoint: a resume whose data gives another one is refused, since
    /// it would go on from the same place in other examples. `None` (the
    /// default) records nothing and skips the check.
    fn fingerprint(&self) -> Option<String> {
        None
    }
    /// A digest of the held-out examples, recorded in each checkpoint: a
    /// resume whose held-out data gives another one is warned of (its
    /// figures are then on other examples than the log's), or refused when
    /// the run keeps its best checkpoint by them. `None` (the default)
    /// records nothing.
    fn held_out_fingerprint(&self) -> Option<String> {
        None
    }
    /// Number of held-out evaluation batches (0 when there is no held-out data).
    fn eval_batches(&self) -> usize;
    /// Evaluation batch `index` and the number of examples in it.
    fn eval_batch(&self, index: usize, device: &B::Device) -> (Self::Batch, usize);
    /// The name of the held-out split, used as the prefix of evaluation metrics.
    fn eval_split(&self) -> &'static str {
        "test"
    }
}

/// How an autoregressive model draws each token from its logits: a text
/// model's characters, gpt-pixel's pixel levels.
///
/// The default draws from the model's own distribution (temperature 1, no
/// truncation), the distribution whose likelihood it reports.
///
/// ```
/// use genzoo_core::TokenSampling;
/// let greedy = TokenSampling { temperature: 0.0, ..Default::default() };
/// assert!(greedy.use_cache && greedy.top_k.is_none());
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct TokenSampling {
    /// Softmax temperature (0: greedy).
    pub temperature: f64,
    /// Sample only among the k most likely tokens.
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities sum to p.
    pub top_p: Option<f64>,
    /// Use the key/value cache (the same tokens either way, only faster).
    pub use_cache: bool,
}

impl Default for TokenSampling {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            use_cache: true,
        }
    }
}

/// What text to generate and how to sample it.
#[derive(Clone, Debug, PartialEq)]
pub struct TextRequest {
    /// The text to continue.
    pub prompt: String,
    /// Tokens to generate.
    pub tokens: usize,
    /// How each token is drawn.
    pub sampling: TokenSampling,
    /// Seed of the sampling.
    pub seed: u64,
}

/// What to sample: how many, from which seed, optionally of which class.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SampleRequest {
    /// Number of samples.
    pub n: usize,
    /// Seed of the sampling noise: same seed, same weights, same samples.
    pub seed: u64,
    /// The class to sample, for class-conditional models.
    pub class: Option<usize>,
    /// How iterative samplers (diffusion) run; unset fields take the model's defaults.
    pub sampler: SamplerOptions,
    /// How autoregressive image models (gpt-pixel) draw each pixel; other
    /// families draw no tokens and leave it unread.
    pub token_sampling: TokenSampling,
}

/// Options of iterative samplers (the DDPM family's). Unset fields take the
/// model's configured defaults; families without an iterative sampler
/// reject any that is set.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SamplerOptions {
    /// The sampler's name (`ddim`, `dpm-solver` or `ddpm`).
    pub method: Option<String>,
    /// Network evaluations (DDIM, DPM-Solver).
    pub steps: Option<usize>,
    /// DDIM's stochasticity η ∈ [0, 1].
    pub eta: Option<f64>,
    /// Classifier-free guidance weight w (0: none).
    pub guidance: Option<f64>,
    /// Sample from the trained weights instead of their moving average.
    pub raw_weights: bool,
    /// Show a progress bar over the sampling steps.
    pub progress: bool,
}

impl SamplerOptions {
    /// Whether any sampler setting is given.
    pub fn is_set(&self) -> bool {
        self.method.is_some()
            || self.steps.is_some()
            || self.eta.is_some()
            || self.guidance.is_some()
    }
}

impl SampleRequest {
    /// This request split into requests of at most `size` samples each, in
    /// order, chunk k drawn with seed `seed_of(k)`: many samples in bounded
    /// memory.
    ///
    /// ```
    /// use genzoo_core::SampleRequest;
    /// let request = SampleRequest { n: 1200, seed: 7, ..Default::default() };
    /// let chunks = request.chunks(500, |k| 100 + k);
    /// let sizes: Vec<(usize, u64)> = chunks.iter().map(|c| (c.n, c.seed)).collect();
    /// assert_eq!(sizes, vec![(500, 100), (500, 101), (200, 102)]);
    /// ```
    pub fn chunks(&self, size: usize, seed_of: impl Fn(u64) -> u64) -> Vec<SampleRequest> {
        let size = size.max(1);
        (0..self.n.div_ceil(size))
            .map(|k| SampleRequest {
                n: size.min(self.n - k * size),
                seed: seed_of(k as u64),
                ..self.clone()
            })
            .collect()
    }

    /// The labels of the `n` samples for a model of `num_classes` classes
    /// (0: unconditional): the requested class for all, or else classes in
    /// turn (image i shows class i mod num_classes). A class the model does
    /// not know is an error; `conditional_presets` names where to look.
    pub fn labels<B: Backend>(
        &self,
        num_classes: usize,
        conditional_presets: &str,
        device: &B::Device,
    ) -> Result<Tensor<B, 1, Int>> {
        if let Some(c) = self.class
            && c >= num_classes.max(1)
        {
            return Err(crate::Error::Config(if num_classes == 0 {
                format!("this model is not class-conditional: --class needs {conditional_presets}")
            } else {
                format!(
                    "class {c} is out of range: the model knows classes 0..{}",
                    num_classes - 1
                )
            }));
        }
        let labels: Vec<i64> = (0..self.n)
            .map(|i| {
                self.class
                    .unwrap_or(if num_classes > 0 { i % num_classes } else { 0 })
                    as i64
            })
            .collect();
        Ok(Tensor::from_data(TensorData::new(labels, [self.n]), device))
    }
}

/// A trainable generative model family: its networks, its optimizers, one
/// training step, evaluation, sampling and checkpoint I/O.
///
/// The engine (`genzoo_train::Trainer`) drives any `Family`. A family from
/// outside genzoo plugs in the same way; see `examples/custom_model.rs`.
pub trait Family<B: AutodiffBackend>: Sized {
    /// The batch type this family trains on.
    type Batch;

    /// Number of trainable scalars.
    fn num_params(&self) -> usize;

    /// One optimisation step on `batch`: compute the loss(es), their
    /// gradients, and apply them through `ctx` (one call to
    /// [`StepContext::apply`] per optimizer). Returns the step's metrics;
    /// the first one is the loss the engine watches for NaN and shows in
    /// the progress bar.
    fn train_step(self, batch: Self::Batch, ctx: &mut StepContext) -> Result<(Self, Metrics)>;

    /// Whether a step may be split into micro-batches (`micro_batches` in
    /// the config): true for a family that makes one [`StepContext::apply`]
    /// call per step and changes nothing else with the weights unless
    /// [`StepContext::updates_weights`]. The engine refuses to split the
    /// steps of any other (a GAN updates two networks, the second against
    /// the first's new weights).
    fn supports_micro_batches(&self) -> bool {
        false
    }

    /// Metrics of one held-out batch, averaged over its examples; the engine
    /// weights them by batch size and prefixes them with `test_`.
    fn eval_batch(&self, batch: Self::Batch) -> Result<Metrics>;

    /// Draws samples as images in `[0, 1]`, `[n, channels, height, width]`.
    fn sample_images(&self, request: &SampleRequest) -> Result<Tensor<B::InnerBackend, 4>>;

    /// Completes images from their top `rows` rows (autoregressive image
    /// models only), drawing the rest as `sampling` says from `seed`.
    /// `images` are in `[0, 1]`, `[n, channels, height, width]`.
    fn complete_images(
        &self,
        _images: Tensor<B::InnerBackend, 4>,
        _rows: usize,
        _seed: u64,
        _sampling: &TokenSampling,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        Err(crate::Error::Config(
            "only autoregressive image models (gpt-pixel) complete partial images".into(),
        ))
    }

    /// The denoising trajectory of one sample: `frames` images of x_t from
    /// pure noise to the final sample, `[frames, channels, height, width]`
    /// in `[0, 1]` (diffusion models only).
    fn sample_trajectory(
        &self,
        _request: &SampleRequest,
        _frames: usize,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        Err(crate::Error::Config(
            "only diffusion models (ddpm-unet) have a denoising trajectory".into(),
        ))
    }

    /// Number of classes of a class-conditional model (0: unconditional).
    fn num_classes(&self) -> usize {
        0
    }

    /// Length of the latent code the model decodes images from, drawn from
    /// N(0, I) when sampling: a VAE's or GAN's z, a DDPM's x_T flattened.
    /// `None` for models without one (autoregressive models). See
    /// [`crate::latent`] for what is built on it.
    fn latent_dim(&self) -> Option<usize> {
        None
    }

    /// Decodes latent codes `[n, latent_dim]` into images in `[0, 1]`,
    /// `[n, channels, height, width]`; image i has class `labels[i]` (read by
    /// class-conditional models only). `sampler` applies to diffusion
    /// models, which need a deterministic sampler for a code to mean one image.
    fn decode_latents(
        &self,
        _codes: Tensor<B::InnerBackend, 2>,
        _labels: Tensor<B::InnerBackend, 1, Int>,
        _sampler: &SamplerOptions,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        Err(crate::Error::Config(
            "this model does not decode latent codes (VAEs, GANs and DDPMs do)".into(),
        ))
    }

    /// The latent codes of images in `[0, 1]` (`[n, channels, height,
    /// width]`, with their labels), `[n, latent_dim]`: a VAE's posterior means.
    fn encode_images(
        &self,
        _images: Tensor<B::InnerBackend, 4>,
        _labels: Tensor<B::InnerBackend, 1, Int>,
    ) -> Result<Tensor<B::InnerBackend, 2>> {
        Err(crate::Error::Config(
            "this model has no encoder: traversals and reconstructions need a VAE \
             (interpolations between random codes work for GANs and DDPMs too)"
                .into(),
        ))
    }

    /// A bound on (or the exact) negative log-likelihood of each image in
    /// bits per dimension, for 8-bit images given in `[0, 1]`,
    /// `[n, channels, height, width]`. `effort` trades accuracy for time where
    /// the family computes an estimate (DDPM: the number of bound terms).
    fn bits_per_dim(
        &self,
        _images: Tensor<B::InnerBackend, 4>,
        _effort: Option<usize>,
        _seed: u64,
    ) -> Result<Vec<f64>> {
        Err(crate::Error::Config(
            "this model has no likelihood in bits/dim yet".into(),
        ))
    }

    /// Whether [`Family::sample_images`] draws images (`false` for text models,
    /// whose progress samples are text instead).
    fn draws_images(&self) -> bool {
        true
    }

    /// Generates text after a prompt (language models only).
    fn generate_text(&self, _request: &TextRequest) -> Result<String> {
        Err(crate::Error::Config(
            "this model generates images, not text: use --out grid.png".into(),
        ))
    }

    /// The same continuation as [`Family::generate_text`], as the bytes the
    /// model emits: a byte-level model's need not be UTF-8, which
    /// `generate_text` can only show replaced. The default is
    /// `generate_text`'s UTF-8.
    fn generate_bytes(&self, request: &TextRequest) -> Result<Vec<u8>> {
        self.generate_text(request).map(String::into_bytes)
    }

    /// Every network's weights in PyTorch's layout, named for code outside
    /// genzoo (see [`crate::weights`]): a GPT's under nanoGPT's names, so
    /// that its `GPT.load_state_dict` takes them; other families' under
    /// their networks' paths in genzoo, prefixed by the network.
    fn pytorch_weights(&self) -> Result<crate::weights::NamedTensors> {
        Err(crate::Error::Config(
            "this model family does not export its weights".into(),
        ))
    }

    /// Replaces every network's weights with the leader's (replica 0's) at
    /// the start of a data-parallel run. Optimizer states need no broadcast:
    /// they start empty, or from the same checkpoint on every replica.
    fn broadcast_weights(self, _replica: &Replica) -> Result<Self> {
        Err(crate::Error::Config(
            "this model family does not support data-parallel training".into(),
        ))
    }

    /// Writes the networks and optimizer states into `dir` (which exists).
    fn save(&self, dir: &Path) -> Result<()>;

    /// Loads what [`Family::save`] wrote, checking every tensor's shape.
    fn load(self, dir: &Path) -> Result<Self>;

    /// Loads only the networks' weights (their moving averages included)
    /// of what [`Family::save`] wrote, keeping this family's optimizer
    /// states and training state: the start of a run that goes on from
    /// another run's weights with a fresh optimizer (fine-tuning; the
    /// engine's `init_from`). Families that cannot say which of their files
    /// are weights refuse.
    fn load_weights(self, _dir: &Path) -> Result<Self> {
        Err(crate::Error::Config(
            "this model family cannot start from another run's weights".into(),
        ))
    }
}

/// One micro-batch of a step whose batch is split to save memory: each
/// micro-batch has its own forward and backward pass, their gradients are
/// added up (weighted by their shares of the batch), and the last one
/// updates the weights with the gradient of the whole batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MicroBatch {
    /// This micro-batch's place in the step, from 0.
    pub index: usize,
    /// Micro-batches in the step.
    pub count: usize,
    /// Its rows over the step's rows (this replica's, in a data-parallel run).
    pub weight: f64,
}

impl MicroBatch {
    /// Whether this is the step's last micro-batch, the one that updates.
    pub fn is_last(&self) -> bool {
        self.index + 1 == self.count
    }
}

/// The engine's side of one training step: learning rate, clipping, and the
/// point where gradients are applied.
#[derive(Debug)]
pub struct StepContext {
    /// The step being taken, starting at 1.
    pub step: u64,
    /// The configured base learning rate.
    pub base_lr: f64,
    /// The schedule's multiplier for this step (1.0 for a constant schedule).
    pub lr_factor: f64,
    /// Clip the global gradient norm of each update to this value.
    pub clip_norm: Option<f64>,
    /// Global gradient norm (before clipping) of each `apply` of this step, in call order.
    pub grad_norms: Vec<f64>,
    /// Warnings raised during the step; the engine prints them with the step number.
    pub warnings: Vec<String>,
    /// The data-parallel replica taking this step, if any: gradients are
    /// averaged over replicas in [`StepContext::apply`].
    pub replica: Option<Replica>,
    /// The micro-batch this call of [`Family::train_step`] takes, when the
    /// engine splits the step's batch (`micro_batches` in the config); set
    /// through [`StepContext::begin_micro_batch`].
    micro_batch: Option<MicroBatch>,
    /// The gradients of this step's earlier micro-batches, weighted and summed.
    accumulated: Option<GradientsParams>,
    /// Calls of [`StepContext::apply`] in this micro-batch.
    applies: usize,
}

impl StepContext {
    /// A context for `step` with a constant learning rate and no clipping.
    pub fn new(step: u64, base_lr: f64) -> Self {
        Self {
            step,
            base_lr,
            lr_factor: 1.0,
            clip_norm: None,
            grad_norms: Vec::new(),
            warnings: Vec::new(),
            replica: None,
            micro_batch: None,
            accumulated: None,
            applies: 0,
        }
    }

    /// Starts micro-batch `micro` of an accumulated step (the engine calls
    /// this before each call of [`Family::train_step`] of the step).
    pub fn begin_micro_batch(&mut self, micro: MicroBatch) {
        self.micro_batch = Some(micro);
        self.applies = 0;
    }

    /// The micro-batch being taken, if the step is split into several.
    pub fn micro_batch(&self) -> Option<MicroBatch> {
        self.micro_batch
    }

    /// Whether [`StepContext::apply`] in this call updates the weights:
    /// always, except on the micro-batches before the last of a split step,
    /// where it only adds the gradients up. Whatever a family changes along
    /// with the weights (an EMA of them, decoupled weight decay) it changes
    /// only when this is true.
    pub fn updates_weights(&self) -> bool {
        self.micro_batch.is_none_or(|m| m.is_last())
    }

    /// Raises a warning (a family noticing trouble it should not hide).
    pub fn warn(&mut self, message: impl Into<String>) {
        self.warnings.push(message.into());
    }

    /// The scheduled learning rate for `base` (families with several
    /// optimizers scale each base rate by the same schedule).
    pub fn scheduled(&self, base: f64) -> f64 {
        base * self.lr_factor
    }

    /// The scheduled learning rate of the engine's base rate.
    pub fn lr(&self) -> f64 {
        self.scheduled(self.base_lr)
    }

    /// Applies `grads` to `module` with `optimizer` at the engine's learning rate.
    pub fn apply<B, M, O>(
        &mut self,
        optimizer: &mut O,
        module: M,
        grads: GradientsParams,
    ) -> Result<M>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
        O: Optimizer<M, B>,
    {
        let lr = self.lr();
        self.apply_with_lr(optimizer, module, grads, lr)
    }

    /// Applies `grads` to `module` with `optimizer` at learning rate `lr`.
    ///
    /// This is the one place where gradients turn into updates: on the
    /// micro-batches of a split step they are added up here (only the last
    /// one updates, with the sum), in a data-parallel run they are averaged
    /// over replicas here, and then global-norm clipping (as PyTorch's
    /// `clip_grad_norm_`) applies to the gradient of the whole batch.
    pub fn apply_with_lr<B, M, O>(
        &mut self,
        optimizer: &mut O,
        module: M,
        mut grads: GradientsParams,
        lr: f64,
    ) -> Result<M>
    where
        B: AutodiffBackend,
        M: AutodiffModule<B>,
        O: Optimizer<M, B>,
    {
        if let Some(micro) = self.micro_batch {
            self.applies += 1;
            if self.applies > 1 {
                return Err(Error::Config(
                    "micro_batches > 1 needs one update per step, and this model updated a second \
                     network in the same step (a GAN's discriminator and generator): set \
                     micro_batches = 1"
                        .into(),
                ));
            }
            let sum = self.accumulated.take().unwrap_or_default();
            let sum = grad::add_scaled::<B, M>(&module, sum, grads, micro.weight);
            if !micro.is_last() {
                self.accumulated = Some(sum);
                return Ok(module);
            }
            grads = sum;
        }
        if let Some(replica) = &self.replica {
            grads = parallel::all_reduce_grads::<B, M>(&module, grads, replica)?;
        }
        if let Some(max_norm) = self.clip_norm {
            let norm = grad::clip_global_norm::<B, M>(&module, &mut grads, max_norm);
            self.grad_norms.push(norm);
        }
        Ok(optimizer.step(lr, module, grads))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{CpuAutodiff, CpuDevice};
    use crate::record::param_values;
    use crate::seed::{host_rng, normal_tensor};
    use burn::module::AutodiffModule;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::SgdConfig;

    type A = CpuAutodiff;

    /// The gradient of the mean squared output of `layer` over `x`'s rows.
    fn grads(layer: &Linear<A>, x: Tensor<A, 2>) -> GradientsParams {
        let loss = layer.forward(x).square().mean();
        GradientsParams::from_grads(loss.backward(), layer)
    }

    #[test]
    fn micro_batches_add_up_to_the_whole_batch_update() {
        let device = CpuDevice::default();
        let layer: Linear<A> = LinearConfig::new(3, 2).init(&device);
        let _ = layer.num_params(); // lazy initialisation, before any clone
        let x = normal_tensor::<A, 2>(&mut host_rng(1, "x", 0), [5, 3], 0.0, 1.0, &device);
        // Plain SGD: the update is the gradient itself, scale and all.
        let mut sgd = SgdConfig::new().init();
        let mut ctx = StepContext::new(1, 0.1);
        let whole = ctx
            .apply(&mut sgd, layer.clone(), grads(&layer, x.clone()))
            .unwrap();

        let mut sgd = SgdConfig::new().init();
        let mut ctx = StepContext::new(1, 0.1);
        let mut split = layer.clone();
        for (index, (start, end)) in [(0, 2), (2, 5)].into_iter().enumerate() {
            ctx.begin_micro_batch(MicroBatch {
                index,
                count: 2,
                weight: (end - start) as f64 / 5.0,
            });
            assert_eq!(ctx.updates_weights(), index == 1);
            let g = grads(&split, x.clone().narrow(0, start, end - start));
            split = ctx.apply(&mut sgd, split, g).unwrap();
            if index == 0 {
                // Only added up: the weights have not moved.
                assert_eq!(param_values(&split.valid()), param_values(&layer.valid()));
            }
        }
        let (a, b) = (param_values(&whole.valid()), param_values(&split.valid()));
        assert_ne!(a, param_values(&layer.valid()));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn a_second_update_in_a_micro_batch_is_an_error() {
        let device = CpuDevice::default();
        let layer: Linear<A> = LinearConfig::new(3, 2).init(&device);
        let x = normal_tensor::<A, 2>(&mut host_rng(2, "x", 0), [4, 3], 0.0, 1.0, &device);
        let mut sgd = SgdConfig::new().init();
        let mut ctx = StepContext::new(1, 0.1);
        ctx.begin_micro_batch(MicroBatch {
            index: 0,
            count: 2,
            weight: 0.5,
        });
        let layer = ctx
            .apply(&mut sgd, layer.clone(), grads(&layer, x.clone()))
            .unwrap();
        let err = ctx
            .apply(&mut sgd, layer.clone(), grads(&layer, x))
            .unwrap_err();
        assert!(err.to_string().contains("one update per step"), "{err}");
    }
}
