//! A GPT: a decoder-only transformer (Radford et al. 2018, 2019), written
//! to read like nanoGPT's `model.py` (Karpathy): token and learned position
//! embeddings, pre-LayerNorm blocks of causal self-attention and a GELU MLP,
//! a final LayerNorm, and an output head optionally tied to the token
//! embedding (Press & Wolf 2017). Initialisation as GPT-2: N(0, 0.02), the
//! residual projections scaled by 1/√(2·n_layer).
//!
//! Besides the training forward pass it has a key/value cache: generating a
//! token then costs one position of work per layer instead of the whole prefix.
//! The cache is allocated once for the whole context and filled in place, so a
//! step reads the cached keys and values once and copies none of them.

use burn::module::{ModuleMapper, Param};
use burn::nn::{Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig};
use burn::prelude::*;
use genzoo_core::fused::{
    cached_attention, causal_attention, causal_self_attention, causal_self_attention_dropped, gelu,
};
use genzoo_core::noise::{dropout, dropout_mask_per_example, drops};
use genzoo_core::weights::{NamedTensors, pytorch_layout};
use genzoo_core::{Error, Result};

use crate::layers::{LayerNorm, linear_rows};
use serde::{Deserialize, Serialize};

/// Transformer hyper-parameters. The defaults are the `gpt-char` reference
/// model (nanoGPT's CPU configuration) on a 65-character vocabulary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GptConfig {
    /// Number of distinct tokens (set from the data).
    pub vocab_size: usize,
    /// Longest context, in tokens.
    pub block_size: usize,
    /// Transformer blocks.
    pub n_layer: usize,
    /// Attention heads per block.
    pub n_head: usize,
    /// Embedding width.
    pub n_embd: usize,
    /// Dropout probability (0 = off) on the embeddings, the attention
    /// weights and both residual branches, as nanoGPT; training only.
    pub dropout: f64,
    /// Biases in Linear and LayerNorm layers.
    pub bias: bool,
    /// Share the output head's weights with the token embedding.
    pub tie_weights: bool,
    /// AdamW β₁.
    pub beta1: f32,
    /// AdamW β₂.
    pub beta2: f32,
    /// AdamW ε (PyTorch's 1e-8).
    pub eps: f32,
    /// Decoupled weight decay, applied to the weight matrices of the linear
    /// layers (and the embeddings with `decay_embeddings`), never to norms or biases.
    pub weight_decay: f64,
    /// Whether the token and position embeddings are decayed too. nanoGPT
    /// has decayed every tensor of two or more dimensions since mid-2023;
    /// its original rule, the default here, leaves embeddings alone. A
    /// serialised config without this key (a run's `config.toml` from before
    /// the key existed) means `true`, what genzoo did then, so that older runs
    /// resume as they trained; `--config` files are laid over the preset and
    /// keep its `false`.
    #[serde(default = "embeddings_decayed_before_the_option")]
    pub decay_embeddings: bool,
    /// What the model reads: text (with its vocabulary) or pixels.
    pub input: super::family::GptInput,
}

fn embeddings_decayed_before_the_option() -> bool {
    true
}

impl Default for GptConfig {
    fn default() -> Self {
        Self {
            vocab_size: 65,
            block_size: 64,
            n_layer: 4,
            n_head: 4,
            n_embd: 128,
            dropout: 0.0,
            bias: false,
            tie_weights: true,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            decay_embeddings: false,
            input: super::family::GptInput::Text { vocabulary: None },
        }
    }
}

impl GptConfig {
    /// Rejects configurations no transformer can be built from.
    pub fn validate(&self) -> Result<()> {
        if self.vocab_size == 0 || self.block_size == 0 || self.n_layer == 0 || self.n_head == 0 {
            return Err(Error::Config(
                "gpt: vocab_size, block_size, n_layer and n_head must be positive".into(),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::Config(format!(
                "gpt: dropout must be in [0, 1), got {}",
                self.dropout
            )));
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return Err(Error::Config(format!(
                "gpt: n_embd ({}) must be divisible by n_head ({})",
                self.n_embd, self.n_head
            )));
        }
        Ok(())
    }

    /// Builds the network with GPT-2's initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Gpt<B> {
        let normal = Initializer::Normal {
            mean: 0.0,
            std: 0.02,
        };
        let residual = Initializer::Normal {
            mean: 0.0,
            std: 0.02 / (2.0 * self.n_layer as f64).sqrt(),
        };
        let linear = |d_in, d_out, init: &Initializer| {
            LinearConfig::new(d_in, d_out)
                .with_bias(self.bias)
                .with_initializer(init.clone())
                .init(device)
        };
        let norm = || LayerNorm::new(self.n_embd, self.bias, device);
        let c = self.n_embd;
        let blocks = (0..self.n_layer)
            .map(|_| Block {
                ln_1: norm(),
                attn: CausalSelfAttention {
                    c_attn: linear(c, 3 * c, &normal),
                    c_proj: linear(c, c, &residual),
                    n_head: self.n_head,
                    dropout: self.dropout,
                },
                ln_2: norm(),
                mlp: Mlp {
                    c_fc: linear(c, 4 * c, &normal),
                    c_proj: linear(4 * c, c, &residual),
                    dropout: self.dropout,
                },
            })
            .collect();
        let gpt = Gpt {
            wte: EmbeddingConfig::new(self.vocab_size, c)
                .with_initializer(normal.clone())
                .init(device),
            wpe: EmbeddingConfig::new(self.block_size, c)
                .with_initializer(normal.clone())
                .init(device),
            blocks,
            ln_f: norm(),
            lm_head: (!self.tie_weights).then(|| linear(c, self.vocab_size, &normal)),
            block_size: self.block_size,
            dropout: self.dropout,
        };
        genzoo_core::record::force_init(&gpt);
        gpt
    }
}

/// Multi-head causal self-attention with one fused q/k/v projection.
#[derive(Module, Debug)]
pub struct CausalSelfAttention<B: Backend> {
    c_attn: Linear<B>,
    c_proj: Linear<B>,
    n_head: usize,
    dropout: f64,
}

/// The cached keys and values of one attention layer: `[batch, n_head,
/// capacity, head_size]` buffers, allocated at the first call, whose first
/// `len` positions are filled.
#[derive(Clone, Debug)]
pub struct LayerCache<B: Backend> {
    buffers: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    len: usize,
    capacity: usize,
}

impl<B: Backend> LayerCache<B> {
    /// An empty cache with room for `capacity` positions.
    pub fn new(capacity: usize) -> Self {
        Self {
            buffers: None,
            len: 0,
            capacity,
        }
    }
}

impl<B: Backend> CausalSelfAttention<B> {
    /// # Shapes
    /// - x: `[batch, t, n_embd]` → `[batch, t, n_embd]`
    ///
    /// With `cache`, `x` holds only the new positions: they attend to the
    /// cached ones and to each other (causally), and are appended to the cache.
    pub fn forward(&self, x: Tensor<B, 3>, cache: Option<&mut LayerCache<B>>) -> Tensor<B, 3> {
        let [b, t, c] = x.dims();
        let qkv = linear_rows(&self.c_attn, x); // (B, T, 3C)
        let Some(cache) = cache else {
            // Training and uncached generation: causal attention over the
            // packed q, k, v, heads split and re-assembled inside (genzoo's
            // fused kernel on the CPU backend), in training with dropout on
            // the attention weights (a mask per example, query and key).
            let device = qkv.device();
            let y = if drops::<B>(self.dropout, &device) {
                let shape = [b, self.n_head, t, t];
                let keep = dropout_mask_per_example::<B, 4>(shape, self.dropout, &device);
                causal_self_attention_dropped(qkv, keep, self.n_head)
            } else {
                causal_self_attention(qkv, self.n_head)
            };
            return dropout(linear_rows(&self.c_proj, y), self.dropout);
        };
        let (q, k, v) = split_heads(qkv, self.n_head); // (B, nh, T, hs) each
        let (past, seen, head_size) = (cache.len, cache.len + t, c / self.n_head);
        assert!(
            seen <= cache.capacity,
            "{seen} positions exceed the cache's {}",
            cache.capacity
        );
        let (key, value) = cache.buffers.take().unwrap_or_else(|| {
            let shape = [b, self.n_head, cache.capacity, head_size];
            (
                Tensor::zeros(shape, &q.device()),
                Tensor::zeros(shape, &q.device()),
            )
        });
        assert_eq!(key.dims()[0], b, "a cache serves one batch size");
        // Written in place: the cache alone holds its buffers.
        let new = [0..b, 0..self.n_head, past..seen, 0..head_size];
        let key = key.slice_assign(new.clone(), k.clone());
        let value = value.slice_assign(new, v.clone());
        let y = if past == 0 {
            causal_attention(q, k, v) // a fresh cache: causal over the prompt
        } else {
            cached_attention(q, key.clone(), value.clone(), seen) // (B, nh, T, hs)
        };
        cache.buffers = Some((key, value));
        cache.len = seen;
        let y = y.swap_dims(1, 2).reshape([b, t, c]); // re-assemble the heads: (B, T, C)
        dropout(linear_rows(&self.c_proj, y), self.dropout)
    }

    /// The output at the last position only, attending to every position of `x`.
    ///
    /// # Shapes
    /// - x: `[batch, t, n_embd]` → `[batch, 1, n_embd]`
    pub fn forward_last(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let t = x.dims()[1];
        // Attention itself is a small part of a block's work (t² · n_embd
        // against t · 12 · n_embd²), so it runs at every position on the packed
        // q, k, v, which needs no head split; the projection after it runs at
        // the last position alone.
        let y = causal_self_attention(linear_rows(&self.c_attn, x), self.n_head);
        dropout(
            linear_rows(&self.c_proj, y.narrow(1, t - 1, 1)),
            self.dropout,
        )
    }
}

/// The queries, keys and values of packed `[batch, t, 3·n_embd]`
/// projections, `[batch, n_head, t, head_size]` each.
fn split_heads<B: Backend>(
    qkv: Tensor<B, 3>,
    n_head: usize,
) -> (Tensor<B, 4>, Tensor<B, 4>, Tensor<B, 4>) {
    let [b, t, c3] = qkv.dims();
    let c = c3 / 3;
    let split = |i: usize| {
        qkv.clone()
            .narrow(2, i * c, c)
            .reshape([b, t, n_head, c / n_head])
            .swap_dims(1, 2)
    };
    (split(0), split(1), split(2))
}

/// The position-wise feed-forward network: Linear → GELU → Linear.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    c_fc: Linear<B>,
    c_proj: Linear<B>,
    dropout: f64,
}

impl<B: Backend> Mlp<B> {
    /// `[batch, t, n_embd]` → `[batch, t, n_embd]`
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let x = linear_rows(&self.c_proj, gelu(linear_rows(&self.c_fc, x)));
        dropout(x, self.dropout)
    }
}

/// A pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    ln_1: LayerNorm<B>,
    attn: CausalSelfAttention<B>,
    ln_2: LayerNorm<B>,
    mlp: Mlp<B>,
}

impl<B: Backend> Block<B> {
    /// `[batch, t, n_embd]` → `[batch, t, n_embd]`
    pub fn forward(&self, x: Tensor<B, 3>, cache: Option<&mut LayerCache<B>>) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(self.ln_1.forward(x), cache);
        x.clone() + self.mlp.forward(self.ln_2.forward(x))
    }

    /// The block's output at the last position only: `[batch, t, n_embd]` →
    /// `[batch, 1, n_embd]`. Every position still gives its key and value.
    pub fn forward_last(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let t = x.dims()[1];
        let last = x.clone().narrow(1, t - 1, 1);
        let x = last + self.attn.forward_last(self.ln_1.forward(x));
        x.clone() + self.mlp.forward(self.ln_2.forward(x))
    }
}

/// The key/value cache of a whole model, one entry per block.
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend> {
    layers: Vec<LayerCache<B>>,
}

impl<B: Backend> KvCache<B> {
    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |l| l.len)
    }
    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The GPT language model.
#[derive(Module, Debug)]
pub struct Gpt<B: Backend> {
    wte: Embedding<B>,
    wpe: Embedding<B>,
    blocks: Vec<Block<B>>,
    ln_f: LayerNorm<B>,
    lm_head: Option<Linear<B>>,
    block_size: usize,
    dropout: f64,
}

impl<B: Backend> Gpt<B> {
    /// Longest context.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// The weights under nanoGPT's names and in PyTorch's layout
    /// (`transformer.h.0.attn.c_attn.weight`, ...), as its
    /// `GPT.state_dict()` holds them: a tied output head appears as
    /// `lm_head.weight` too, a copy of the token embedding.
    pub fn nanogpt_weights(&self) -> Result<NamedTensors> {
        let mut tensors: NamedTensors = pytorch_layout(self, "")?
            .into_iter()
            .map(|(name, data)| {
                let name = match name.split_once('.') {
                    Some(("blocks", rest)) => format!("transformer.h.{rest}"),
                    Some(("wte" | "wpe" | "ln_f", _)) => format!("transformer.{name}"),
                    _ => name,
                };
                (name, data)
            })
            .collect();
        if self.lm_head.is_none() {
            let wte = self.wte.weight.val().into_data().convert::<f32>();
            tensors.push(("lm_head.weight".to_string(), wte));
        }
        Ok(tensors)
    }

    /// An empty key/value cache for this model, with room for the whole
    /// context (allocated at its first use, for that call's batch size).
    pub fn empty_cache(&self) -> KvCache<B> {
        KvCache {
            layers: vec![LayerCache::new(self.block_size); self.blocks.len()],
        }
    }

    /// Next-token logits at every position.
    ///
    /// # Shapes
    /// - tokens: `[batch, t]` with t ≤ block_size → `[batch, t, vocab_size]`
    pub fn forward(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_from(tokens, 0, None)
    }

    /// Logits for `tokens` placed after the `cache.len()` cached positions,
    /// which they extend.
    ///
    /// # Shapes
    /// - tokens: `[batch, t]` with cache.len() + t ≤ block_size → `[batch, t, vocab_size]`
    pub fn forward_cached(
        &self,
        tokens: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let past = cache.len();
        self.forward_from(tokens, past, Some(cache))
    }

    /// Next-token logits at the last position only, as generation needs
    /// them from a window it recomputes. The same as the last position of
    /// [`Gpt::forward`] (up to rounding) for less work: the last block gives
    /// every position's key and value but computes the rest (the attention's
    /// projection, the MLP, the head) at the last position alone, which for
    /// gpt-char's 4 blocks saves about a fifth of the multiply-adds.
    ///
    /// # Shapes
    /// - tokens: `[batch, t]` with 1 ≤ t ≤ block_size → `[batch, vocab_size]`
    pub fn forward_last(&self, tokens: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [b, t] = tokens.dims();
        assert!(t > 0, "no tokens to continue");
        let mut x = self.embed(tokens, 0);
        let x = match self.blocks.split_last() {
            Some((last, blocks)) => {
                for block in blocks {
                    x = block.forward(x, None);
                }
                last.forward_last(x)
            }
            None => x.narrow(1, t - 1, 1),
        };
        let logits = self.head(x); // (B, 1, V)
        let v = logits.dims()[2];
        logits.reshape([b, v])
    }

    fn forward_from(
        &self,
        tokens: Tensor<B, 2, Int>,
        past: usize,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let mut x = self.embed(tokens, past);
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x, cache.as_deref_mut().map(|c| &mut c.layers[i]));
        }
        self.head(x)
    }

    /// Token plus position embeddings of `tokens` placed at positions
    /// `past..past + t`: `[batch, t]` → `[batch, t, n_embd]`.
    fn embed(&self, tokens: Tensor<B, 2, Int>, past: usize) -> Tensor<B, 3> {
        let [b, t] = tokens.dims();
        assert!(
            past + t <= self.block_size,
            "sequence of {} tokens exceeds the block size {}",
            past + t,
            self.block_size
        );
        let device = tokens.device();
        let positions = Tensor::<B, 1, Int>::arange(past as i64..(past + t) as i64, &device)
            .unsqueeze::<2>()
            .expand([b, t]);
        let x = self.wte.forward(tokens) + self.wpe.forward(positions); // (B, T, C)
        dropout(x, self.dropout)
    }

    /// The final norm and the output head: `[batch, t, n_embd]` → `[batch, t, vocab_size]`.
    fn head(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, t, _] = x.dims();
        let x = self.ln_f.forward(x);
        match &self.lm_head {
            Some(head) => linear_rows(head, x),
            None => {
                // Tied head: logits = x · Eᵀ with E the token embedding (V, C).
                let [_, _, c] = x.dims();
                let e = self.wte.weight.val(); // (V, C)
                let v = e.dims()[0];
                x.reshape([b * t, c])
                    .matmul(e.transpose())
                    .reshape([b, t, v])
            }
        }
    }

    /// The token embedding matrix, `[vocab_size, n_embd]`.
    pub fn token_embedding(&self) -> &Param<Tensor<B, 2>> {
        &self.wte.weight
    }

    /// Maps the parameters of the blocks and of an untied output head
    /// through `mapper`, leaving the embeddings and the final norm as they are.
    pub fn map_blocks_and_head<M: ModuleMapper<B>>(mut self, mapper: &mut M) -> Self {
        self.blocks = self.blocks.into_iter().map(|b| b.map(mapper)).collect();
        self.lm_head = self.lm_head.map(|head| head.map(mapper));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genzoo_core::{CpuBackend, CpuDevice};

    #[test]
    fn reference_parameter_counts() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        // gpt-char, V = 65: wte 8,320 + wpe 8,192 + 4 × (ln 128 + qkv 49,152 + proj 16,384 + ln 128
        //   + fc 65,536 + proj 65,536 = 196,864) + ln_f 128 = 804,096
        assert_eq!(
            GptConfig::default().init::<CpuBackend>(&dev).num_params(),
            804_096
        );
        // gpt-pixel, V = 17, T = 785: wte 2,176 + wpe 100,480 + 787,456 + 128 = 890,240
        let pixel = GptConfig {
            vocab_size: 17,
            block_size: 785,
            ..Default::default()
        };
        assert_eq!(pixel.init::<CpuBackend>(&dev).num_params(), 890_240);
    }

    #[test]
    fn changing_a_future_token_never_changes_earlier_logits() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let gpt = GptConfig {
            vocab_size: 11,
            block_size: 16,
            n_embd: 32,
            ..Default::default()
        }
        .init::<CpuBackend>(&dev);
        let a = Tensor::<CpuBackend, 2, Int>::from_ints([[1, 2, 3, 4, 5, 6, 7, 8]], &dev);
        let b = Tensor::<CpuBackend, 2, Int>::from_ints([[1, 2, 3, 4, 5, 9, 10, 0]], &dev);
        let la = gpt.forward(a).narrow(1, 0, 5);
        let lb = gpt.forward(b).narrow(1, 0, 5);
        let diff: f32 = (la - lb).abs().max().into_scalar();
        assert_eq!(
            diff, 0.0,
            "logits before the changed position must not move"
        );
    }

    #[test]
    fn cached_forward_matches_the_full_forward() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let gpt = GptConfig {
            vocab_size: 11,
            block_size: 16,
            n_embd: 32,
            ..Default::default()
        }
        .init::<CpuBackend>(&dev);
        let tokens = Tensor::<CpuBackend, 2, Int>::from_ints(
            [[1, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1]],
            &dev,
        );
        let full = gpt.forward(tokens.clone());
        let mut cache = gpt.empty_cache();
        let prefix = gpt.forward_cached(tokens.clone().narrow(1, 0, 3), &mut cache); // 3 at once
        // Where the first layer's cached keys live: the cache is filled in
        // place, never copied to a new buffer.
        let address = |cache: &KvCache<CpuBackend>| {
            let (key, _) = cache.layers[0].buffers.clone().expect("allocated");
            key.into_primitive()
                .tensor()
                .as_slice::<f32>()
                .unwrap()
                .as_ptr() as usize
        };
        let allocated = address(&cache);
        let mut parts = vec![prefix];
        parts.push(gpt.forward_cached(tokens.clone().narrow(1, 3, 2), &mut cache)); // 2 after a prefix
        for i in 5..7 {
            parts.push(gpt.forward_cached(tokens.clone().narrow(1, i, 1), &mut cache)); // then one by one
        }
        assert_eq!(cache.len(), 7);
        assert_eq!(address(&cache), allocated, "filled in place");
        let cached = Tensor::cat(parts, 1);
        let diff: f32 = (full - cached).abs().max().into_scalar();
        assert!(diff < 1e-4, "max difference {diff}");
    }

    #[test]
    fn last_position_forward_matches_the_full_forward() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        for tie_weights in [true, false] {
            let gpt = GptConfig {
                vocab_size: 11,
                block_size: 8,
                n_layer: 2,
                n_embd: 32,
                tie_weights,
                ..Default::default()
            }
            .init::<CpuBackend>(&dev);
            // A short window, a full one, and a single token.
            for tokens in [
                [[1, 2, 3], [3, 2, 1]].concat(),
                [[1, 2, 3, 4, 5, 6, 7, 8], [8, 7, 6, 5, 4, 3, 2, 1]].concat(),
                vec![5, 6],
            ] {
                let t = tokens.len() / 2;
                let tokens = Tensor::<CpuBackend, 2, Int>::from_data(
                    TensorData::new(tokens.iter().map(|&x| x as i64).collect(), [2, t]),
                    &dev,
                );
                let full = gpt
                    .forward(tokens.clone())
                    .narrow(1, t - 1, 1)
                    .reshape([2, 11]);
                let last = gpt.forward_last(tokens);
                assert_eq!(last.dims(), [2, 11]);
                let diff: f32 = (full - last).abs().max().into_scalar();
                assert!(
                    diff < 1e-5,
                    "t = {t}, tied {tie_weights}: max difference {diff}"
                );
            }
        }
    }

    #[test]
    fn dropout_acts_in_training_only_follows_the_noise_stream_and_stays_causal() {
        use burn::backend::Autodiff;
        use burn::module::AutodiffModule;
        use genzoo_core::noise;
        type Ad = Autodiff<CpuBackend>;
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let config = |dropout| GptConfig {
            vocab_size: 11,
            block_size: 16,
            n_embd: 32,
            dropout,
            ..Default::default()
        };
        // The same seed, the same weights: the models differ in dropout only.
        CpuBackend::seed(&dev, 4);
        let plain = config(0.0).init::<Ad>(&dev);
        CpuBackend::seed(&dev, 4);
        let dropped = config(0.2).init::<Ad>(&dev);
        let a = Tensor::<Ad, 2, Int>::from_ints([[1, 2, 3, 4, 5, 6, 7, 8]], &dev);
        let b = Tensor::<Ad, 2, Int>::from_ints([[1, 2, 3, 4, 5, 9, 10, 0]], &dev);
        let train = |tokens: &Tensor<Ad, 2, Int>, seed| {
            let _s = noise::begin(seed);
            dropped.forward(tokens.clone()).inner()
        };
        let max_diff = |x: Tensor<CpuBackend, 3>, y: Tensor<CpuBackend, 3>| -> f32 {
            (x - y).abs().max().into_scalar()
        };
        let reference = plain.forward(a.clone()).inner();
        // Training: masks from the stream, the same for the same seed.
        assert_eq!(train(&a, 1).into_data(), train(&a, 1).into_data());
        assert!(max_diff(train(&a, 1), train(&a, 2)) > 1e-3);
        assert!(max_diff(train(&a, 1), reference.clone()) > 1e-3);
        // Under the same masks, a future token never moves earlier logits.
        let diff = max_diff(train(&a, 1).narrow(1, 0, 5), train(&b, 1).narrow(1, 0, 5));
        assert_eq!(diff, 0.0, "dropout broke causality");
        // Inference drops nothing.
        let inference = dropped.valid().forward(a.clone().inner());
        assert!(max_diff(inference, reference) < 1e-6);
    }
}
