//! Helpers shared by the integration tests (each test binary compiles this
//! module and uses what it needs).

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use genzoo::core::CpuDevice;
use std::sync::atomic::{AtomicBool, Ordering};

/// Runs `f` while another thread keeps drawing from burn's process-wide CPU
/// RNG, as another model or test in the same process would. Hold the test
/// binary's RNG lock around it: the draws would disturb seeded tests.
#[allow(dead_code)]
pub fn while_the_backend_rng_is_busy<T>(f: impl FnOnce() -> T) -> T {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ =
                    Tensor::<Flex, 1>::random([64], Distribution::Default, &CpuDevice::default());
            }
        });
        let out = f();
        stop.store(true, Ordering::Relaxed);
        out
    })
}
