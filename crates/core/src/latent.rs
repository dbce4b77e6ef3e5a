//! Walks through a model's latent space, the standard figures of VAE and
//! GAN papers: interpolations between random codes, traversals of one
//! latent dimension at a time around an image's code (β-VAE's
//! disentanglement figure), reconstructions, and which dimensions a VAE
//! actually uses.
//!
//! Any [`Family`] that reports a [`Family::latent_dim`] and decodes codes
//! ([`Family::decode_latents`]) can be walked: VAEs and GANs decode their z,
//! a DDPM its x_T through the deterministic DDIM sampler (Song et al. 2021,
//! §5.3). Traversals and reconstructions also need an encoder
//! ([`Family::encode_images`]: a VAE's posterior mean).
//!
//! Codes come from the prior N(0, I), whose mass lies near the sphere of
//! radius √d; the straight line between two codes passes through the
//! low-norm middle that a decoder rarely sees, so interpolations follow the
//! great circle instead ([`slerp`], White 2016).

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use crate::error::{Error, Result};
use crate::family::{Family, SampleRequest, SamplerOptions};
use crate::seed::{host_rng, standard_normal};

/// A dimension whose posterior mean varies across images by more than
/// this (variance) is *active* (Burda et al. 2016, "active units"); the
/// others carry no information about the image.
pub const ACTIVE_VARIANCE: f64 = 0.01;

/// Spherical interpolation from `a` (t = 0) to `b` (t = 1): along the great
/// circle between their directions, with the norm interpolated linearly
/// along with it. Linear where the two are (nearly) parallel.
///
/// ```
/// use genzoo_core::latent::slerp;
/// let (a, b) = ([1.0, 0.0], [0.0, 1.0]);
/// assert_eq!(slerp(&a, &b, 0.0), vec![1.0, 0.0]);
/// let mid = slerp(&a, &b, 0.5);
/// assert!((mid[0] - 0.5f32.sqrt()).abs() < 1e-6 && (mid[1] - 0.5f32.sqrt()).abs() < 1e-6);
/// ```
pub fn slerp(a: &[f32], b: &[f32], t: f64) -> Vec<f32> {
    assert_eq!(a.len(), b.len(), "slerp between codes of different lengths");
    let norm = |v: &[f32]| v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
    let (na, nb) = (norm(a), norm(b));
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let cos = (dot / (na * nb)).clamp(-1.0, 1.0);
    let omega = cos.acos();
    let (wa, wb) = if na == 0.0 || nb == 0.0 || omega.sin().abs() < 1e-6 {
        (1.0 - t, t)
    } else {
        let s = omega.sin();
        (((1.0 - t) * omega).sin() / s, (t * omega).sin() / s)
    };
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (wa * x as f64 + wb * y as f64) as f32)
        .collect()
}

/// `k` evenly spaced values from `low` to `high` (both included; `low` alone when `k` is 1).
pub fn linspace(low: f64, high: f64, k: usize) -> Vec<f64> {
    match k {
        0 => Vec::new(),
        1 => vec![low],
        _ => (0..k)
            .map(|i| low + (high - low) * i as f64 / (k - 1) as f64)
            .collect(),
    }
}

/// Codes of `rows` interpolations with `cols` points each (both ends
/// included), row-major `[rows · cols · dim]`: row r goes from one N(0, I)
/// code to another along [`slerp`]. The same seed gives the same codes.
pub fn interpolation_codes(rows: usize, cols: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = host_rng(seed, "latent-interpolation", 0);
    let mut draw = || -> Vec<f32> { (0..dim).map(|_| standard_normal(&mut rng) as f32).collect() };
    let mut codes = Vec::with_capacity(rows * cols * dim);
    for _ in 0..rows {
        let (a, b) = (draw(), draw());
        for t in linspace(0.0, 1.0, cols) {
            codes.extend(slerp(&a, &b, t));
        }
    }
    codes
}

/// Codes of a traversal, row-major `[dims.len() · values.len() · dim]`: row
/// r is `base` with dimension `dims[r]` set to each of `values` in turn,
/// every other dimension left as it is.
///
/// ```
/// use genzoo_core::latent::traversal_codes;
/// let codes = traversal_codes(&[0.5, 0.5], &[1], &[-1.0, 1.0]);
/// assert_eq!(codes, vec![0.5, -1.0, 0.5, 1.0]);
/// ```
pub fn traversal_codes(base: &[f32], dims: &[usize], values: &[f64]) -> Vec<f32> {
    let mut codes = Vec::with_capacity(dims.len() * values.len() * base.len());
    for &d in dims {
        for &v in values {
            let mut code = base.to_vec();
            code[d] = v as f32;
            codes.extend(code);
        }
    }
    codes
}

/// The variance across images of each dimension's value, for codes given
/// row-major `[n · dim]`: applied to posterior means, how much each latent
/// dimension says about the image (0 for a collapsed dimension, ≈ 1 for one
/// the encoder uses fully).
pub fn activity(codes: &[f32], dim: usize) -> Vec<f64> {
    let n = codes.len() / dim.max(1);
    let mut mean = vec![0.0f64; dim];
    for row in codes.chunks_exact(dim) {
        for (m, &x) in mean.iter_mut().zip(row) {
            *m += x as f64 / n as f64;
        }
    }
    let mut var = vec![0.0f64; dim];
    for row in codes.chunks_exact(dim) {
        for ((v, &m), &x) in var.iter_mut().zip(&mean).zip(row) {
            *v += (x as f64 - m).powi(2) / n as f64;
        }
    }
    var
}

/// Dimension indices from most to least active (ties in index order).
pub fn by_activity(activity: &[f64]) -> Vec<usize> {
    let mut dims: Vec<usize> = (0..activity.len()).collect();
    dims.sort_by(|&a, &b| activity[b].total_cmp(&activity[a]));
    dims
}

/// The latent length of `family`, or an error naming what can be walked.
fn latent_dim<B: AutodiffBackend, F: Family<B>>(family: &F) -> Result<usize> {
    family.latent_dim().ok_or_else(|| {
        Error::Config(
            "this model has no latent code to walk (VAEs, GANs and DDPMs have one; \
             gpt-pixel completes images instead: --complete-rows)"
                .into(),
        )
    })
}

/// One label per row, each repeated `cols` times: the requested class, or
/// else row r shows class r mod (the model's classes).
fn row_labels<B: AutodiffBackend, F: Family<B>>(
    family: &F,
    rows: usize,
    cols: usize,
    class: Option<usize>,
    device: &B::Device,
) -> Result<Tensor<B::InnerBackend, 1, Int>> {
    let per_row = SampleRequest {
        n: rows,
        class,
        ..Default::default()
    }
    .labels::<B::InnerBackend>(
        family.num_classes(),
        "a class-conditional preset (cvae-mlp, cvae-conv, cdcgan-28, cddpm-unet)",
        device,
    )?;
    Ok(per_row
        .reshape([rows, 1])
        .repeat_dim(1, cols)
        .reshape([rows * cols]))
}

/// `rows` interpolations of `cols` images each between random codes (see
/// [`interpolation_codes`]), row-major `[rows · cols, c, h, w]` in `[0, 1]`.
/// A class-conditional model keeps one class per row: `class`, or else
/// row r's class is r mod the number of classes.
pub fn interpolate<B: AutodiffBackend, F: Family<B>>(
    family: &F,
    rows: usize,
    cols: usize,
    class: Option<usize>,
    seed: u64,
    sampler: &SamplerOptions,
    device: &B::Device,
) -> Result<Tensor<B::InnerBackend, 4>> {
    if rows == 0 || cols < 2 {
        return Err(Error::Config(format!(
            "an interpolation needs at least one row and two images per row, got {rows} × {cols}"
        )));
    }
    let dim = latent_dim(family)?;
    let codes = interpolation_codes(rows, cols, dim, seed);
    let codes = Tensor::from_data(TensorData::new(codes, [rows * cols, dim]), device);
    let labels = row_labels(family, rows, cols, class, device)?;
    family.decode_latents(codes, labels, sampler)
}

/// Traversals around one image's code: row r decodes the image's code with
/// dimension `dims[r]` set to each of `values`, `[dims.len() · values.len(),
/// c, h, w]` in `[0, 1]`. `image` is `[1, c, h, w]` in `[0, 1]` with its label.
pub fn traverse<B: AutodiffBackend, F: Family<B>>(
    family: &F,
    image: Tensor<B::InnerBackend, 4>,
    label: Tensor<B::InnerBackend, 1, Int>,
    dims: &[usize],
    values: &[f64],
    sampler: &SamplerOptions,
) -> Result<Tensor<B::InnerBackend, 4>> {
    let dim = latent_dim(family)?;
    if let Some(&d) = dims.iter().find(|&&d| d >= dim) {
        return Err(Error::Config(format!(
            "latent dimension {d} is out of range: the model's code has {dim}"
        )));
    }
    if dims.is_empty() || values.is_empty() {
        return Err(Error::Config(
            "a traversal needs at least one dimension and one value".into(),
        ));
    }
    let base = family.encode_images(image, label.clone())?;
    let base: Vec<f32> = base
        .into_data()
        .to_vec()
        .map_err(|e| Error::Other(format!("cannot read a latent code: {e:?}")))?;
    let n = dims.len() * values.len();
    let codes = traversal_codes(&base, dims, values);
    let device = label.device();
    let codes = Tensor::from_data(TensorData::new(codes, [n, dim]), &device);
    family.decode_latents(codes, label.repeat_dim(0, n), sampler)
}

/// Images a reconstruction encodes and decodes at a time: any number of
/// them (a whole test set) in the memory of this many.
const RECONSTRUCT_CHUNK: usize = 500;

/// Each image decoded from its own code, `[n, c, h, w]` in `[0, 1]`: a VAE's
/// reconstructions from the posterior means.
pub fn reconstruct<B: AutodiffBackend, F: Family<B>>(
    family: &F,
    images: Tensor<B::InnerBackend, 4>,
    labels: Tensor<B::InnerBackend, 1, Int>,
    sampler: &SamplerOptions,
) -> Result<Tensor<B::InnerBackend, 4>> {
    latent_dim(family)?;
    let n = images.dims()[0];
    if n == 0 {
        return Err(Error::Config("no images to reconstruct".into()));
    }
    let chunks = (0..n)
        .step_by(RECONSTRUCT_CHUNK)
        .map(|start| {
            let end = (start + RECONSTRUCT_CHUNK).min(n);
            let labels = labels.clone().slice(start..end);
            let codes = family.encode_images(images.clone().slice(start..end), labels.clone())?;
            family.decode_latents(codes, labels, sampler)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(chunks, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(v: &[f32]) -> f64 {
        v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt()
    }

    #[test]
    fn slerp_keeps_its_ends_and_follows_the_great_circle() {
        let mut rng = host_rng(3, "test", 0);
        let draw =
            |rng: &mut _| -> Vec<f32> { (0..64).map(|_| standard_normal(rng) as f32).collect() };
        let (a, b) = (draw(&mut rng), draw(&mut rng));
        assert_eq!(slerp(&a, &b, 0.0), a);
        assert_eq!(slerp(&a, &b, 1.0), b);
        // Between codes of equal norm, every point keeps that norm; the
        // straight line's midpoint of two near-orthogonal codes is ~0.71 of it.
        let bn: Vec<f32> = b
            .iter()
            .map(|&x| (x as f64 * norm(&a) / norm(&b)) as f32)
            .collect();
        for t in [0.25, 0.5, 0.75] {
            let p = slerp(&a, &bn, t);
            assert!((norm(&p) / norm(&a) - 1.0).abs() < 1e-5, "t = {t}");
        }
        let line: Vec<f32> = a.iter().zip(&bn).map(|(x, y)| (x + y) / 2.0).collect();
        assert!(norm(&line) / norm(&a) < 0.85);
        // Equal angles to both ends at t = 1/2.
        let mid = slerp(&a, &bn, 0.5);
        let cos = |u: &[f32], v: &[f32]| {
            u.iter()
                .zip(v)
                .map(|(&x, &y)| x as f64 * y as f64)
                .sum::<f64>()
                / (norm(u) * norm(v))
        };
        assert!((cos(&mid, &a) - cos(&mid, &bn)).abs() < 1e-6);
        // Parallel codes interpolate linearly instead of dividing by sin 0.
        let twice: Vec<f32> = a.iter().map(|x| 2.0 * x).collect();
        let p = slerp(&a, &twice, 0.5);
        assert!(p.iter().zip(&a).all(|(p, a)| (p - 1.5 * a).abs() < 1e-5));
    }

    #[test]
    fn interpolation_rows_run_between_two_seeded_codes() {
        let (rows, cols, dim) = (3, 5, 8);
        let codes = interpolation_codes(rows, cols, dim, 7);
        assert_eq!(codes.len(), rows * cols * dim);
        assert_eq!(codes, interpolation_codes(rows, cols, dim, 7));
        assert_ne!(codes, interpolation_codes(rows, cols, dim, 8));
        let row = |r: usize| &codes[r * cols * dim..(r + 1) * cols * dim];
        // Each row's points are slerps between its first and last.
        for r in 0..rows {
            let (a, b) = (&row(r)[..dim], &row(r)[(cols - 1) * dim..]);
            for (c, t) in linspace(0.0, 1.0, cols).into_iter().enumerate() {
                assert_eq!(&row(r)[c * dim..(c + 1) * dim], slerp(a, b, t).as_slice());
            }
        }
        // Rows start from different codes.
        assert_ne!(&row(0)[..dim], &row(1)[..dim]);
    }

    #[test]
    fn traversal_moves_one_dimension_per_row() {
        let base = [0.1f32, 0.2, 0.3, 0.4];
        let values = linspace(-3.0, 3.0, 3);
        assert_eq!(values, vec![-3.0, 0.0, 3.0]);
        let codes = traversal_codes(&base, &[2, 0], &values);
        assert_eq!(codes.len(), 2 * 3 * 4);
        for (i, code) in codes.chunks(4).enumerate() {
            let (d, v) = ([2, 0][i / 3], values[i % 3] as f32);
            for (j, (&x, &b)) in code.iter().zip(&base).enumerate() {
                assert_eq!(x, if j == d { v } else { b }, "code {i}, dim {j}");
            }
        }
    }

    #[test]
    fn activity_is_each_dimensions_variance_and_orders_them() {
        // dim 0 constant (collapsed), dim 1 ±1 (variance 1), dim 2 ±0.5 (0.25).
        let codes = [
            0.3f32, 1.0, 0.5, 0.3, -1.0, -0.5, 0.3, 1.0, -0.5, 0.3, -1.0, 0.5,
        ];
        let a = activity(&codes, 3);
        assert!(a[0].abs() < 1e-12 && (a[1] - 1.0).abs() < 1e-12 && (a[2] - 0.25).abs() < 1e-12);
        assert_eq!(by_activity(&a), vec![1, 2, 0]);
        assert_eq!(a.iter().filter(|&&v| v > ACTIVE_VARIANCE).count(), 2);
    }
}
