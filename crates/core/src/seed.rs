//! Seeding. genzoo never relies on a global RNG's hidden state: every step
//! re-seeds the backend from (run seed, step), and data order comes from a
//! host RNG seeded by (run seed, epoch). Resuming at step k therefore draws
//! exactly the numbers an uninterrupted run draws at step k, with nothing
//! to save but the seed.

use burn::tensor::backend::Backend;
use rand::SeedableRng;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_seeds_differ_by_purpose_and_index() {
        assert_ne!(derive(1, "step", 0), derive(1, "step", 1));
        assert_ne!(derive(1, "step", 0), derive(1, "epoch", 0));
        assert_eq!(derive(7, "step", 3), derive(7, "step", 3));
    }
}
