//! Autoregressive generation: temperature, top-k and top-p (nucleus,
//! Holtzman et al. 2020) sampling on the host from a seeded RNG, with or
//! without the key/value cache.
//!
//! The cache is valid while the sequence fits in the block size (learned
//! absolute positions shift when the window slides); past that, each new
//! token is computed from the last `block_size` tokens, as nanoGPT does,
//! with only the last position taken through the final block and the head
//! (the only one whose logits are used).

use burn::prelude::*;
use genzoo_core::TokenSampling;
use genzoo_core::seed::host_rng;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::model::Gpt;

/// How to turn logits into a token.
#[derive(Clone, Debug, PartialEq)]
pub struct Sampling {
    /// Softmax temperature; 0 picks the most likely token.
    pub temperature: f64,
    /// Keep only the k most likely tokens.
    pub top_k: Option<usize>,
    /// Keep only the most likely tokens whose probabilities sum to at least p.
    pub top_p: Option<f64>,
    /// Only tokens below this id may be drawn (a pixel model never draws its start token).
    pub token_limit: Option<usize>,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            token_limit: None,
        }
    }
}

impl Sampling {
    /// The draw `request` asks for, limited to the ids below `token_limit`.
    pub fn new(request: &TokenSampling, token_limit: Option<usize>) -> Self {
        Self {
            temperature: request.temperature,
            top_k: request.top_k,
            top_p: request.top_p,
            token_limit,
        }
    }

    /// Draws a token from `logits` (one row).
    pub fn pick(&self, logits: &[f32], rng: &mut ChaCha8Rng) -> u32 {
        let logits = &logits[..self
            .token_limit
            .map_or(logits.len(), |l| l.min(logits.len()))];
        if self.temperature <= 0.0 {
            return argmax(logits);
        }
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if let Some(k) = self.top_k {
            order.truncate(k.max(1));
        }
        let max = logits[order[0]] as f64;
        let mut probs: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i] as f64 - max) / self.temperature).exp())
            .collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
        if let Some(p) = self.top_p {
            let mut cumulative = 0.0;
            let keep = probs.iter().position(|&q| {
                cumulative += q;
                cumulative >= p
            });
            let keep = keep.map_or(probs.len(), |i| i + 1);
            order.truncate(keep);
            probs.truncate(keep);
            let total: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|q| *q /= total);
        }
        let mut u: f64 = rng.random();
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                return order[i] as u32;
            }
            u -= p;
        }
        order[order.len() - 1] as u32
    }
}

fn argmax(xs: &[f32]) -> u32 {
    xs.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// How many of `new_tokens` after a prompt of `prompt_len` tokens come from
/// the key/value cache: those whose context (the prompt and the tokens before
/// them) fits in the block. The others, and all of them without the cache,
/// recompute the last `block_size` tokens each.
///
/// ```
/// use genzoo_models::gpt::sample::cached_tokens;
/// // A 6-token prompt in a 64-token block: contexts of 6 to 64 tokens.
/// assert_eq!(cached_tokens(6, 300, 64, true), 59);
/// assert_eq!(cached_tokens(6, 20, 64, true), 20);
/// assert_eq!(cached_tokens(6, 20, 64, false), 0);
/// ```
pub fn cached_tokens(
    prompt_len: usize,
    new_tokens: usize,
    block_size: usize,
    use_cache: bool,
) -> usize {
    if use_cache && prompt_len < block_size {
        new_tokens.min(block_size - prompt_len + 1)
    } else {
        0
    }
}

/// Rows generated together: the key/value cache of a chunk of 785-token
/// gpt-pixel sequences is ~0.4 GB, and any number of rows fits in memory.
pub const GENERATE_CHUNK: usize = 128;

/// Continues each of `prompts` (all of one length, at least 1) by `new_tokens`.
/// Row `i` samples from its own RNG stream of `seed`, so a row's tokens do not
/// depend on the other rows (nor on the chunks of [`GENERATE_CHUNK`] rows
/// they are generated in).
pub fn generate<B: Backend>(
    model: &Gpt<B>,
    prompts: &[Vec<u32>],
    new_tokens: usize,
    sampling: &Sampling,
    seed: u64,
    use_cache: bool,
    device: &B::Device,
) -> Vec<Vec<u32>> {
    prompts
        .chunks(GENERATE_CHUNK)
        .enumerate()
        .flat_map(|(k, chunk)| {
            let rngs = (0..chunk.len())
                .map(|i| host_rng(seed, "generate", (k * GENERATE_CHUNK + i) as u64))
                .collect();
            generate_chunk(model, chunk, new_tokens, sampling, rngs, use_cache, device)
        })
        .collect()
}

/// [`generate`] for rows drawn from `rngs`, all at once.
fn generate_chunk<B: Backend>(
    model: &Gpt<B>,
    prompts: &[Vec<u32>],
    new_tokens: usize,
    sampling: &Sampling,
    mut rngs: Vec<ChaCha8Rng>,
    use_cache: bool,
    device: &B::Device,
) -> Vec<Vec<u32>> {
    let n = prompts.len();
    let block = model.block_size();
    let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
    let to_tensor = |rows: Vec<&[u32]>| {
        let t = rows[0].len();
        let flat: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.iter().map(|&x| x as i64))
            .collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [rows.len(), t]), device)
    };
    let host = |logits: Tensor<B, 2>| -> Vec<f32> {
        logits
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 logits")
    };
    let cached = cached_tokens(prompts[0].len(), new_tokens, block, use_cache);
    let mut cache = model.empty_cache();
    for k in 0..new_tokens {
        let logits = if k < cached {
            // The whole prompt first, then the newest token: the cache holds the rest.
            let fed = if k == 0 { prompts[0].len() } else { 1 };
            let rows = seqs.iter().map(|s| &s[s.len() - fed..]).collect();
            let logits = model.forward_cached(to_tensor(rows), &mut cache);
            let [b, t, v] = logits.dims();
            host(logits.narrow(1, t - 1, 1).reshape([b, v]))
        } else {
            let start = seqs[0].len().saturating_sub(block);
            host(model.forward_last(to_tensor(seqs.iter().map(|s| &s[start..]).collect())))
        };
        let v = logits.len() / n;
        for (i, seq) in seqs.iter_mut().enumerate() {
            seq.push(sampling.pick(&logits[i * v..(i + 1) * v], &mut rngs[i]));
        }
    }
    seqs.into_iter()
        .zip(prompts)
        .map(|(s, p)| s[p.len()..].to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::GptConfig;
    use genzoo_core::{CpuBackend, CpuDevice};
    use rand::SeedableRng;

    #[test]
    fn cached_and_uncached_generation_agree() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let gpt = GptConfig {
            vocab_size: 13,
            block_size: 32,
            n_embd: 32,
            ..Default::default()
        }
        .init::<CpuBackend>(&dev);
        let prompts = vec![vec![1, 2, 3], vec![4, 5, 6]];
        let s = Sampling {
            temperature: 1.0,
            top_k: Some(8),
            top_p: Some(0.95),
            token_limit: None,
        };
        // 40 new tokens: the cache serves the first 30 (contexts of 3 to 32
        // tokens), the sliding window the rest.
        let a = generate(&gpt, &prompts, 40, &s, 7, true, &dev);
        let b = generate(&gpt, &prompts, 40, &s, 7, false, &dev);
        assert_eq!(a, b);
        assert_eq!(a[0].len(), 40);
        assert_ne!(
            a,
            generate(&gpt, &prompts, 40, &s, 8, true, &dev),
            "another seed, other tokens"
        );
    }

    #[test]
    fn rows_past_one_chunk_are_drawn_as_in_one_call() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let gpt = GptConfig {
            vocab_size: 7,
            block_size: 8,
            n_embd: 8,
            n_head: 2,
            n_layer: 1,
            ..Default::default()
        }
        .init::<CpuBackend>(&dev);
        let n = GENERATE_CHUNK + 3;
        let prompts: Vec<Vec<u32>> = (0..n).map(|i| vec![(i % 7) as u32]).collect();
        let s = Sampling::default();
        let chunked = generate(&gpt, &prompts, 5, &s, 3, true, &dev);
        let rngs = (0..n as u64).map(|i| host_rng(3, "generate", i)).collect();
        let at_once = generate_chunk(&gpt, &prompts, 5, &s, rngs, true, &dev);
        assert_eq!(chunked.len(), n);
        assert_eq!(chunked, at_once);
    }

    #[test]
    fn top_k_and_top_p_restrict_the_choice() {
        let logits = [0.0f32, 5.0, 4.9, -3.0, 1.0];
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let top2 = Sampling {
            temperature: 1.0,
            top_k: Some(2),
            top_p: None,
            token_limit: None,
        };
        for _ in 0..200 {
            assert!(matches!(top2.pick(&logits, &mut rng), 1 | 2));
        }
        let nucleus = Sampling {
            temperature: 1.0,
            top_k: None,
            top_p: Some(0.3),
            token_limit: None,
        };
        for _ in 0..200 {
            assert_eq!(
                nucleus.pick(&logits, &mut rng),
                1,
                "the top token alone holds over 30%"
            );
        }
        assert_eq!(
            Sampling {
                temperature: 0.0,
                ..Default::default()
            }
            .pick(&logits, &mut rng),
            1
        );
        let limited = Sampling {
            token_limit: Some(1),
            ..Default::default()
        };
        assert_eq!(
            limited.pick(&logits, &mut rng),
            0,
            "only token 0 is allowed"
        );
    }
}
