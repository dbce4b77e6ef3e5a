//! Per-example training noise drawn on the host from a seeded stream.
//!
//! A family draws its training noise (a VAE's ε, a GAN's z, a DDPM's t and
//! ε) one row per example through [`normal_per_example`] and
//! [`uniform_per_example`]. The engine opens a stream for each step with
//! [`begin`] (or [`begin_sharded`] on a data-parallel replica); draw k of a step depends only on (run seed, step, k), so
//!
//! - a resumed run draws what an uninterrupted one draws, and
//! - a data-parallel replica draws the whole global batch's rows and keeps
//!   its own: replicas together see exactly the noise one device would, and
//!   no replica depends on the backend's random state, which burn's CPU
//!   backend keeps process-wide (threads as replicas would race on it).
//!
//! Outside a stream (a library user calling `train_step` directly) the
//! functions fall back to the backend's `Tensor::random`.

use std::cell::Cell;

use burn::prelude::*;
use burn::tensor::Distribution;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::parallel::Replica;
use crate::seed::{derive, standard_normal};

#[derive(Clone, Copy)]
struct Stream {
    seed: u64,
    draws: u64,
    /// The data-parallel replica whose rows of the global batch this thread draws.
    shard: Option<Replica>,
}

thread_local! {
    static STREAM: Cell<Option<Stream>> = const { Cell::new(None) };
}

/// Opens the calling thread's noise stream for `seed` (the engine derives
/// one per step) until the guard drops.
pub fn begin(seed: u64) -> StreamGuard {
    open(Stream {
        seed,
        draws: 0,
        shard: None,
    })
}

/// Opens a stream in which `replica` draws only its rows of every
/// per-example draw for the global batch of `replica.batch` examples.
pub fn begin_sharded(seed: u64, replica: Replica) -> StreamGuard {
    open(Stream {
        seed,
        draws: 0,
        shard: replica.batch.is_some().then_some(replica),
    })
}

fn open(stream: Stream) -> StreamGuard {
    let previous = STREAM.with(|s| s.replace(Some(stream)));
    StreamGuard { previous }
}

/// Closes the stream [`begin`] opened (restoring any outer one).
pub struct StreamGuard {
    previous: Option<Stream>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        STREAM.with(|s| s.set(self.previous));
    }
}

/// The next draw's RNG and the stream's replica, or `None` outside a stream.
fn next_rng() -> Option<(ChaCha8Rng, Option<Replica>)> {
    STREAM.with(|s| {
        let mut stream = s.get()?;
        let rng = ChaCha8Rng::seed_from_u64(derive(stream.seed, "draw", stream.draws));
        stream.draws += 1;
        s.set(Some(stream));
        Some((rng, stream.shard))
    })
}

/// The rows `[start, end)` of the global batch this thread's rows are, and
/// the global batch's size: the whole batch unless the stream is a
/// data-parallel replica's.
fn rows_of(local_rows: usize, shard: Option<Replica>) -> (usize, usize, usize) {
    match shard.and_then(|r| r.batch.map(|b| (r, b))) {
        Some((replica, batch)) => {
            let (start, end) = replica.shard_range(batch);
            assert_eq!(
                end - start,
                local_rows,
                "per-example noise for {local_rows} rows, but this replica's shard has {} rows",
                end - start
            );
            (start, end, batch)
        }
        None => (0, local_rows, local_rows),
    }
}

/// Draws `sample` for every element of the global batch from the stream's
/// next RNG and keeps this thread's rows; outside a stream, `fallback`.
fn draw<B: Backend, const D: usize>(
    shape: [usize; D],
    device: &B::Device,
    fallback: impl FnOnce() -> Tensor<B, D>,
    sample: impl Fn(&mut ChaCha8Rng) -> f64,
) -> Tensor<B, D> {
    let Some((mut rng, shard)) = next_rng() else {
        return fallback();
    };
    let per_row: usize = shape[1..].iter().product();
    let (start, end, total) = rows_of(shape[0], shard);
    // Draw every row of the global batch, keep this replica's.
    let values: Vec<f32> = (0..total * per_row)
        .map(|_| sample(&mut rng) as f32)
        .skip(start * per_row)
        .take((end - start) * per_row)
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

/// Standard normal noise, one row (`shape[0]`) per example.
///
/// ```
/// use burn::prelude::*;
/// use genzoo_core::{CpuBackend, CpuDevice, noise};
/// let dev = CpuDevice::default();
/// let a = { let _s = noise::begin(7); noise::normal_per_example::<CpuBackend, 2>([4, 3], &dev) };
/// let b = { let _s = noise::begin(7); noise::normal_per_example::<CpuBackend, 2>([4, 3], &dev) };
/// assert_eq!(a.into_data(), b.into_data());
/// ```
pub fn normal_per_example<B: Backend, const D: usize>(
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let fallback = || Tensor::random(shape, Distribution::Normal(0.0, 1.0), device);
    draw(shape, device, fallback, standard_normal)
}

/// Uniform noise in `[low, high)`, one row (`shape[0]`) per example.
pub fn uniform_per_example<B: Backend, const D: usize>(
    shape: [usize; D],
    low: f64,
    high: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    let fallback = || Tensor::random(shape, Distribution::Uniform(low, high), device);
    draw(shape, device, fallback, |rng| {
        low + (high - low) * rng.random::<f64>()
    })
}

/// A dropout mask, one row (`shape[0]`) per example: 0 with probability
/// `prob`, else 1/(1 − prob), so that multiplying by it is dropout.
pub fn dropout_mask_per_example<B: Backend, const D: usize>(
    shape: [usize; D],
    prob: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    let keep = 1.0 - prob;
    let scale = 1.0 / keep;
    let fallback = || Tensor::random(shape, Distribution::Bernoulli(keep), device) * scale;
    // Compare 32 random bits with keep·2³² (cheaper than a float per element).
    let threshold = (keep.clamp(0.0, 1.0) * 4_294_967_296.0) as u64;
    draw(shape, device, fallback, |rng| {
        if u64::from(rng.next_u32()) < threshold {
            scale
        } else {
            0.0
        }
    })
}

/// Whether [`dropout`] with `prob` drops anything on `device`: a positive
/// probability on an autodiff backend (training).
pub fn drops<B: Backend>(prob: f64, device: &B::Device) -> bool {
    prob > 0.0 && B::ad_enabled(device)
}

/// Dropout (Srivastava et al. 2014): zeroes each element with probability
/// `prob` and scales the rest by 1/(1 − prob), on autodiff backends
/// (training) only; elsewhere it returns `x` unchanged.
///
/// Unlike burn's `Dropout`, the masks are per-example draws of the step's
/// noise stream: a resumed run drops what an uninterrupted one drops, and
/// data-parallel replicas drop what one device would.
///
/// ```
/// use burn::backend::Autodiff;
/// use burn::prelude::*;
/// use genzoo_core::{CpuBackend, CpuDevice, noise};
/// let dev = CpuDevice::default();
/// let x = Tensor::<Autodiff<CpuBackend>, 2>::ones([4, 1000], &dev);
/// let y = { let _s = noise::begin(1); noise::dropout(x.clone(), 0.25) };
/// let kept = y.clone().greater_elem(0.0).int().sum().into_scalar() as f64 / 4000.0;
/// assert!((kept - 0.75).abs() < 0.03);
/// assert!((y.max().into_scalar() - 1.0 / 0.75).abs() < 1e-6); // survivors are scaled
/// ```
pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, prob: f64) -> Tensor<B, D> {
    assert!(
        prob < 1.0,
        "dropout probability must be below 1, got {prob}"
    );
    let device = x.device();
    if !drops::<B>(prob, &device) {
        return x;
    }
    let mask = dropout_mask_per_example::<B, D>(x.dims(), prob, &device);
    x * mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CpuBackend, CpuDevice};

    #[test]
    fn replicas_draw_their_rows_of_the_global_draw() {
        let dev = CpuDevice::default();
        let whole = {
            let _s = begin(3);
            normal_per_example::<CpuBackend, 2>([5, 4], &dev)
        };
        let mut parts = Vec::new();
        for rank in 0..2 {
            let mut replica = Replica::new(rank, 2);
            replica.batch = Some(5);
            let _s = begin_sharded(3, replica);
            let (start, end) = replica.shard_range(5);
            parts.push(normal_per_example::<CpuBackend, 2>([end - start, 4], &dev));
        }
        let joined = Tensor::cat(parts, 0);
        assert_eq!(whole.into_data(), joined.into_data());
    }

    #[test]
    fn draws_in_a_stream_differ_and_look_normal() {
        let dev = CpuDevice::default();
        let _s = begin(11);
        let a = normal_per_example::<CpuBackend, 1>([20_000], &dev);
        let b = normal_per_example::<CpuBackend, 1>([20_000], &dev);
        assert_ne!(a.clone().into_data(), b.into_data());
        let mean = a.clone().mean().into_scalar();
        let var = a.var(0).into_scalar();
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "variance {var}");
        let u = uniform_per_example::<CpuBackend, 1>([20_000], 2.0, 4.0, &dev);
        assert!(u.clone().min().into_scalar() >= 2.0 && u.clone().max().into_scalar() < 4.0);
        assert!((u.mean().into_scalar() - 3.0).abs() < 0.03);
    }

    #[test]
    fn dropout_masks_follow_the_stream_and_only_train() {
        use burn::backend::Autodiff;
        type Ad = Autodiff<CpuBackend>;
        let dev = CpuDevice::default();
        let x = Tensor::<Ad, 3>::ones([6, 50, 40], &dev);
        let drop = |seed| {
            let _s = begin(seed);
            dropout(x.clone(), 0.3).into_data()
        };
        assert_eq!(drop(1), drop(1));
        assert_ne!(drop(1), drop(2));
        let values = drop(1).to_vec::<f32>().unwrap();
        let kept = values.iter().filter(|&&v| v != 0.0).count() as f64 / values.len() as f64;
        assert!((kept - 0.7).abs() < 0.02, "kept {kept}");
        assert!(
            values
                .iter()
                .all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-6)
        );
        // Inference (no autodiff) and p = 0 leave the input alone.
        let plain = Tensor::<CpuBackend, 3>::ones([2, 3, 4], &dev);
        assert_eq!(dropout(plain.clone(), 0.5).into_data(), plain.into_data());
        assert_eq!(dropout(x.clone(), 0.0).into_data(), x.into_data());
        // Replicas draw their rows of the global batch's masks.
        let whole = {
            let _s = begin(3);
            dropout_mask_per_example::<CpuBackend, 2>([5, 64], 0.5, &dev)
        };
        let parts: Vec<_> = (0..2)
            .map(|rank| {
                let mut replica = Replica::new(rank, 2);
                replica.batch = Some(5);
                let _s = begin_sharded(3, replica);
                let (start, end) = replica.shard_range(5);
                dropout_mask_per_example::<CpuBackend, 2>([end - start, 64], 0.5, &dev)
            })
            .collect();
        assert_eq!(whole.into_data(), Tensor::cat(parts, 0).into_data());
    }
}
