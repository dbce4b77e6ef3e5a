//! Small synthetic MNIST-format datasets, for tests and smoke runs that
//! must not download anything.
//!
//! Image `i` of class `c = i % classes` is a dark background with a bright
//! square whose position depends on the class, plus a little deterministic
//! texture: easy to learn, different per class, the same on every machine.

use std::path::Path;

use genzoo_core::{Error, Result};

use crate::idx::encode_idx;
use crate::mnist::FILES;

/// Pixels and labels of `n` synthetic `size`×`size` images.
pub fn images(n: usize, size: usize, classes: usize, salt: u64) -> (Vec<u8>, Vec<u8>) {
    let classes = classes.max(1);
    let mut pixels = Vec::with_capacity(n * size * size);
    let mut labels = Vec::with_capacity(n);
    let side = (size / 3).max(1);
    for i in 0..n {
        let c = i % classes;
        let (cx, cy) = (
            (c * 7) % (size - side + 1),
            (c * 3 + c / 3) % (size - side + 1),
        );
        for y in 0..size {
            for x in 0..size {
                let inside = x >= cx && x < cx + side && y >= cy && y < cy + side;
                let h = crate::synthetic::hash(salt ^ ((i * size * size + y * size + x) as u64));
                let v = if inside {
                    200 + (h % 56) as u8
                } else {
                    (h % 24) as u8
                };
                pixels.push(v);
            }
        }
        labels.push(c as u8);
    }
    (pixels, labels)
}

fn hash(x: u64) -> u64 {
    genzoo_core::seed::mix64(x)
}

/// Writes the four files of an MNIST-format dataset into `dir` (raw IDX):
/// `n_train` and `n_test` images of `size`×`size` pixels in `classes` classes.
pub fn write_idx_dataset(
    dir: &Path,
    n_train: usize,
    n_test: usize,
    size: usize,
    classes: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let (train_x, train_y) = images(n_train, size, classes, 1);
    let (test_x, test_y) = images(n_test, size, classes, 2);
    let files = [
        encode_idx(&[n_train, size, size], &train_x),
        encode_idx(&[n_train], &train_y),
        encode_idx(&[n_test, size, size], &test_x),
        encode_idx(&[n_test], &test_y),
    ];
    for (name, bytes) in FILES.iter().zip(files) {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
    }
    Ok(())
}
