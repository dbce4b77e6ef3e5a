//! Seeding. genzoo never relies on a global RNG's hidden state: every step
//! re-seeds the backend from (run seed, step), and data order comes from a
//! host RNG seeded by (run seed, epoch). Resuming at step k therefore draws
//! exactly the numbers an uninterrupted run draws at step k, with nothing
//! to save but the seed.

use burn::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// SplitMix64's finaliser: mixes a 64-bit value into a well-spread one.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Derives a stream seed from a run seed, a purpose tag and an index
/// (a step, an epoch, a replica rank...).
pub fn derive(seed: u64, purpose: &str, index: u64) -> u64 {
    let tag = purpose.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    mix64(mix64(seed ^ tag).wrapping_add(index))
}

/// Seeds backend `B`'s random ops for one step of one run.
pub fn seed_step<B: Backend>(device: &B::Device, seed: u64, step: u64) {
    B::seed(device, derive(seed, "step", step));
}

/// A host RNG for a purpose and index (for example data order of an epoch).
pub fn host_rng(seed: u64, purpose: &str, index: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive(seed, purpose, index))
}

/// A standard normal draw from a host RNG (Box–Muller; the first uniform
/// lies in (0, 1] so that its logarithm is finite).
pub fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// A tensor of N(mean, std²) draws from a host RNG.
///
/// Unlike `Tensor::random`, whose state burn's CPU backend keeps
/// process-wide (so any thread's draws shift it), the values depend only on
/// the RNG: tests that compare kernels on random inputs fail, when they
/// fail, on the same inputs every run.
///
/// ```
/// use genzoo_core::{CpuBackend, CpuDevice, seed};
/// let dev = CpuDevice::default();
/// let a = seed::normal_tensor::<CpuBackend, 2>(&mut seed::host_rng(1, "x", 0), [2, 3], 0.0, 1.0, &dev);
/// let b = seed::normal_tensor::<CpuBackend, 2>(&mut seed::host_rng(1, "x", 0), [2, 3], 0.0, 1.0, &dev);
/// assert_eq!(a.into_data(), b.into_data());
/// ```
pub fn normal_tensor<B: Backend, const D: usize>(
    rng: &mut impl Rng,
    shape: [usize; D],
    mean: f64,
    std: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    host_tensor(shape, device, || mean + std * standard_normal(rng))
}

/// A tensor of uniform draws in `[low, high)` from a host RNG (see
/// [`normal_tensor`]).
pub fn uniform_tensor<B: Backend, const D: usize>(
    rng: &mut impl Rng,
    shape: [usize; D],
    low: f64,
    high: f64,
    device: &B::Device,
) -> Tensor<B, D> {
    host_tensor(shape, device, || low + (high - low) * rng.random::<f64>())
}

fn host_tensor<B: Backend, const D: usize>(
    shape: [usize; D],
    device: &B::Device,
    mut draw: impl FnMut() -> f64,
) -> Tensor<B, D> {
    let len = shape.iter().product::<usize>();
    let values: Vec<f32> = (0..len).map(|_| draw() as f32).collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CpuBackend, CpuDevice};

    #[test]
    fn host_tensors_follow_their_rng_and_distribution() {
        let dev = CpuDevice::default();
        let draw = |seed| {
            let mut rng = host_rng(seed, "test", 0);
            normal_tensor::<CpuBackend, 2>(&mut rng, [200, 50], 2.0, 3.0, &dev)
        };
        let a = draw(1);
        assert_eq!(a.clone().into_data(), draw(1).into_data());
        assert_ne!(a.clone().into_data(), draw(2).into_data());
        // 10,000 draws: mean 2 ± 0.1, std 3 ± 0.1 (each > 3 standard errors).
        let mean = a.clone().mean().into_scalar();
        let std = (a - mean).powi_scalar(2).mean().into_scalar().sqrt();
        assert!(
            (mean - 2.0).abs() < 0.1 && (std - 3.0).abs() < 0.1,
            "{mean} {std}"
        );
        let u =
            uniform_tensor::<CpuBackend, 1>(&mut host_rng(1, "test", 0), [10_000], -1.0, 3.0, &dev);
        let (low, high) = (u.clone().min().into_scalar(), u.clone().max().into_scalar());
        assert!(
            (-1.0..-0.99).contains(&low) && (2.99..3.0).contains(&high),
            "{low} {high}"
        );
        assert!((u.mean().into_scalar() - 1.0).abs() < 0.05);
    }

    #[test]
    fn derived_seeds_differ_by_purpose_and_index() {
        assert_ne!(derive(1, "step", 0), derive(1, "step", 1));
        assert_ne!(derive(1, "step", 0), derive(1, "epoch", 0));
        assert_eq!(derive(7, "step", 3), derive(7, "step", 3));
    }
}
