//! Sample-quality metrics on feature vectors (the evaluator's penultimate
//! layer) and class probabilities. Plain f64 arithmetic on the host; each
//! function cites its paper.
//!
//! ```
//! use genzoo_train::metrics::{Features, frechet_distance};
//! let a = Features::new(vec![0.0, 1.0, 1.0, 0.0, 1.0, 1.0], 2).unwrap();
//! assert!(frechet_distance(&a.gaussian(), &a.gaussian()).abs() < 1e-9);
//! ```

use genzoo_core::{Error, Result};
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use rayon::prelude::*;

/// n feature vectors of one dimension, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Features {
    rows: DMatrix<f64>,
}

impl Features {
    /// Features from row-major values (`dim` per row).
    pub fn new(values: Vec<f32>, dim: usize) -> Result<Self> {
        if dim == 0 || values.is_empty() || !values.len().is_multiple_of(dim) {
            return Err(Error::Config(format!(
                "features: {} values do not form rows of {dim}",
                values.len()
            )));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::Config("features contain NaN or infinity".into()));
        }
        let n = values.len() / dim;
        Ok(Self {
            rows: DMatrix::from_row_iterator(n, dim, values.into_iter().map(f64::from)),
        })
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.rows.nrows()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Dimensions per vector.
    pub fn dim(&self) -> usize {
        self.rows.ncols()
    }

    /// The first `n` vectors.
    pub fn take(&self, n: usize) -> Self {
        Self {
            rows: self.rows.rows(0, n.min(self.len())).into_owned(),
        }
    }

    /// Mean and (unbiased) covariance of the vectors.
    pub fn gaussian(&self) -> Gaussian {
        let n = self.len() as f64;
        let mean: DVector<f64> = self.rows.row_mean().transpose();
        let centered = DMatrix::from_fn(self.len(), self.dim(), |i, j| self.rows[(i, j)] - mean[j]);
        let cov = centered.transpose() * &centered / (n - 1.0).max(1.0);
        Gaussian { mean, cov }
    }

    /// Row-major f32 values (for caching).
    pub fn to_values(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len() * self.dim());
        for i in 0..self.len() {
            out.extend(self.rows.row(i).iter().map(|v| *v as f32));
        }
        out
    }
}

/// A Gaussian fitted to features: what FID compares.
#[derive(Clone, Debug, PartialEq)]
pub struct Gaussian {
    /// Mean, `[dim]`.
    pub mean: DVector<f64>,
    /// Covariance, `[dim, dim]`.
    pub cov: DMatrix<f64>,
}

/// The square root of a symmetric positive semi-definite matrix through its
/// eigen-decomposition (negative eigenvalues from rounding are set to 0).
fn sqrtm_psd(m: &DMatrix<f64>) -> DMatrix<f64> {
    let symmetric = (m + m.transpose()) * 0.5;
    let eig = SymmetricEigen::new(symmetric);
    let roots = eig.eigenvalues.map(|v| v.max(0.0).sqrt());
    &eig.eigenvectors * DMatrix::from_diagonal(&roots) * eig.eigenvectors.transpose()
}

/// The Fréchet distance between two Gaussians (Dowson & Landau 1982), the
/// quantity behind FID (Heusel et al. 2017):
/// d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2·(Σ₁^½ Σ₂ Σ₁^½)^½).
///
/// Σ₁^½ Σ₂ Σ₁^½ is symmetric, so both square roots come from symmetric
/// eigen-decompositions in f64, with no approximate iteration.
pub fn frechet_distance(a: &Gaussian, b: &Gaussian) -> f64 {
    let diff = &a.mean - &b.mean;
    let root_a = sqrtm_psd(&a.cov);
    let inner = &root_a * &b.cov * &root_a;
    let inner = (&inner + inner.transpose()) * 0.5;
    let trace_root: f64 = SymmetricEigen::new(inner)
        .eigenvalues
        .iter()
        .map(|v| v.max(0.0).sqrt())
        .sum();
    (diff.dot(&diff) + a.cov.trace() + b.cov.trace() - 2.0 * trace_root).max(0.0)
}

/// The kernel of KID: k(x, y) = (x·y/d + 1)³.
fn polynomial_kernel(x: &DMatrix<f64>, y: &DMatrix<f64>) -> DMatrix<f64> {
    let d = x.ncols() as f64;
    (x * y.transpose()).map(|v| (v / d + 1.0).powi(3))
}

/// The unbiased estimate of MMD² between two samples with the cubic
/// polynomial kernel (Bińkowski et al. 2018, "Demystifying MMD GANs", eq. 3).
fn mmd2_unbiased(x: &DMatrix<f64>, y: &DMatrix<f64>) -> f64 {
    let (m, n) = (x.nrows() as f64, y.nrows() as f64);
    let off_diagonal_mean =
        |k: DMatrix<f64>, size: f64| (k.sum() - k.trace()) / (size * (size - 1.0));
    off_diagonal_mean(polynomial_kernel(x, x), m) + off_diagonal_mean(polynomial_kernel(y, y), n)
        - 2.0 * polynomial_kernel(x, y).sum() / (m * n)
}

/// Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD²
/// averaged over `subsets` random subsets of `subset_size` vectors of each
/// set (as their code and torch-fidelity do). Returns (mean, std over subsets).
/// Unbiased: about 0 for two samples of one distribution, and can be slightly negative.
pub fn kernel_distance(
    a: &Features,
    b: &Features,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> (f64, f64) {
    use rand::seq::index::sample;
    let size = subset_size.min(a.len()).min(b.len()).max(2);
    let mut rng = genzoo_core::seed::host_rng(seed, "kid", 0);
    // The subsets are drawn in order from one stream, then scored in
    // parallel: the same values whatever the thread count.
    let mut pick = |f: &Features| sample(&mut rng, f.len(), size.min(f.len())).into_vec();
    let picks: Vec<(Vec<usize>, Vec<usize>)> =
        (0..subsets.max(1)).map(|_| (pick(a), pick(b))).collect();
    let values: Vec<f64> = picks
        .par_iter()
        .map(|(ia, ib)| mmd2_unbiased(&a.rows.select_rows(ia), &b.rows.select_rows(ib)))
        .collect();
    mean_std(&values)
}

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The Inception Score (Salimans et al. 2016) on the evaluator's class
/// probabilities: exp(E_x KL(p(y|x) ‖ p(y))), computed on `splits` equal
/// parts as is customary; returns (mean, std over splits). Between 1 and the
/// number of classes; higher means confident and diverse predictions.
///
/// `probs` holds one row of class probabilities per sample.
pub fn inception_score(probs: &[Vec<f64>], splits: usize) -> (f64, f64) {
    let splits = splits.clamp(1, probs.len().max(1));
    let part = probs.len() / splits;
    let scores: Vec<f64> = (0..splits)
        .map(|s| {
            let rows = &probs[s * part..(s + 1) * part];
            let classes = rows[0].len();
            let marginal: Vec<f64> = (0..classes)
                .map(|c| rows.iter().map(|r| r[c]).sum::<f64>() / rows.len() as f64)
                .collect();
            let kl: f64 = rows
                .iter()
                .map(|r| {
                    r.iter()
                        .zip(&marginal)
                        .filter(|(p, _)| **p > 0.0)
                        .map(|(p, q)| p * (p.ln() - q.max(1e-300).ln()))
                        .sum::<f64>()
                })
                .sum::<f64>()
                / rows.len() as f64;
            kl.exp()
        })
        .collect();
    mean_std(&scores)
}

/// Class coverage: the share of samples per predicted class and the
/// entropy of that distribution in nats (ln K when every class is equally
/// common; 0 when all samples fall in one class, a sign of mode collapse).
pub fn class_coverage(probs: &[Vec<f64>]) -> (Vec<f64>, f64) {
    let classes = probs.first().map_or(0, Vec::len);
    let mut counts = vec![0usize; classes];
    for row in probs {
        let best = row
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map_or(0, |(i, _)| i);
        counts[best] += 1;
    }
    let n = probs.len().max(1) as f64;
    let shares: Vec<f64> = counts.iter().map(|c| *c as f64 / n).collect();
    let entropy = -shares
        .iter()
        .filter(|s| **s > 0.0)
        .map(|s| s * s.ln())
        .sum::<f64>();
    (shares, entropy)
}

/// Squared Euclidean distances between the rows of `x` and of `y`.
fn squared_distances(x: &DMatrix<f64>, y: &DMatrix<f64>) -> DMatrix<f64> {
    let xn: Vec<f64> = x.row_iter().map(|r| r.norm_squared()).collect();
    let yn: Vec<f64> = y.row_iter().map(|r| r.norm_squared()).collect();
    let dots = x * y.transpose();
    DMatrix::from_fn(x.nrows(), y.nrows(), |i, j| {
        (xn[i] + yn[j] - 2.0 * dots[(i, j)]).max(0.0)
    })
}

/// The squared distance of each vector to its k-th nearest neighbour in its own set.
fn knn_radii(f: &Features, k: usize) -> Vec<f64> {
    let d = squared_distances(&f.rows, &f.rows);
    d.row_iter()
        .map(|row| {
            let mut v: Vec<f64> = row.iter().copied().collect();
            // v[0] is the point itself (distance 0); the k-th neighbour is v[k].
            let k = k.min(v.len() - 1);
            v.select_nth_unstable_by(k, f64::total_cmp);
            v[k]
        })
        .collect()
}

/// Share of `queries` inside the union of the k-NN balls of `support`.
fn coverage_of(support: &Features, radii: &[f64], queries: &Features) -> f64 {
    let d = squared_distances(&queries.rows, &support.rows);
    let inside = d
        .row_iter()
        .filter(|row| row.iter().zip(radii).any(|(dist, r)| dist <= r))
        .count();
    inside as f64 / queries.len().max(1) as f64
}

/// Improved precision and recall (Kynkäänniemi et al. 2019): each set's
/// manifold is the union of balls reaching every vector's k-th nearest
/// neighbour; precision is the share of generated vectors inside the real
/// manifold (fidelity), recall the share of real vectors inside the
/// generated one (diversity). k = 3 in the paper. Returns (precision, recall).
pub fn precision_recall(real: &Features, generated: &Features, k: usize) -> (f64, f64) {
    let (real_radii, fake_radii) = rayon::join(|| knn_radii(real, k), || knn_radii(generated, k));
    rayon::join(
        || coverage_of(real, &real_radii, generated),
        || coverage_of(generated, &fake_radii, real),
    )
}

/// Which sample-quality metrics to compute, and their settings.
#[derive(Clone, Debug, PartialEq)]
pub struct QualityOptions {
    /// Fréchet distance of the features (FID).
    pub fid: bool,
    /// Kernel distance (KID), over `kid_subsets` subsets of `kid_subset_size`.
    pub kid: bool,
    /// Inception-Score analogue and class coverage.
    pub is: bool,
    /// Improved precision and recall with `k` neighbours on at most `pr_max` vectors of each set.
    pub pr: bool,
    /// KID subsets.
    pub kid_subsets: usize,
    /// KID subset size.
    pub kid_subset_size: usize,
    /// Neighbours of precision/recall.
    pub k: usize,
    /// Vectors per set for precision/recall (its cost grows with the square).
    pub pr_max: usize,
    /// Seed of KID's subsets.
    pub seed: u64,
}

impl Default for QualityOptions {
    fn default() -> Self {
        Self {
            fid: true,
            kid: true,
            is: true,
            pr: true,
            kid_subsets: 50,
            kid_subset_size: 1000,
            k: 3,
            pr_max: 5000,
            seed: 0,
        }
    }
}

/// The requested metrics of generated samples against the reference (test)
/// features, as (name, value) pairs: `fid`, `kid`, `kid_std`, `is`, `is_std`,
/// `class_entropy`, `precision`, `recall`.
pub fn sample_quality(
    reference: &Features,
    generated: &Features,
    probs: &[Vec<f64>],
    options: &QualityOptions,
) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    if options.fid {
        out.push((
            "fid".into(),
            frechet_distance(&generated.gaussian(), &reference.gaussian()),
        ));
    }
    if options.kid {
        let (mean, std) = kernel_distance(
            generated,
            reference,
            options.kid_subsets,
            options.kid_subset_size,
            options.seed,
        );
        out.push(("kid".into(), mean));
        out.push(("kid_std".into(), std));
    }
    if options.is && !probs.is_empty() {
        let (mean, std) = inception_score(probs, 10);
        out.push(("is".into(), mean));
        out.push(("is_std".into(), std));
        out.push(("class_entropy".into(), class_coverage(probs).1));
    }
    if options.pr {
        let (p, r) = precision_recall(
            &reference.take(options.pr_max),
            &generated.take(options.pr_max),
            options.k,
        );
        out.push(("precision".into(), p));
        out.push(("recall".into(), r));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// n draws of N(mean, diag(std²)) in `dim` dimensions.
    fn gaussian_features(n: usize, dim: usize, mean: f64, std: f64, seed: u64) -> Features {
        let mut rng = genzoo_core::seed::host_rng(seed, "test", 0);
        let values = (0..n * dim)
            .map(|_| (mean + std * genzoo_core::seed::standard_normal(&mut rng)) as f32)
            .collect();
        Features::new(values, dim).unwrap()
    }

    #[test]
    fn frechet_distance_is_zero_symmetric_and_matches_the_closed_form() {
        let a = gaussian_features(500, 4, 0.0, 1.0, 1);
        let b = gaussian_features(500, 4, 0.5, 2.0, 2);
        let (ga, gb) = (a.gaussian(), b.gaussian());
        assert!(frechet_distance(&ga, &ga).abs() < 1e-8);
        assert!((frechet_distance(&ga, &gb) - frechet_distance(&gb, &ga)).abs() < 1e-8);
        // Two known Gaussians: N(μ₁, diag(σ₁²)) vs N(μ₂, diag(σ₂²)) in d dims:
        // d² = Σ(μ₁ − μ₂)² + Σ(σ₁ − σ₂)².
        let d = 3;
        let g = |mu: f64, var: [f64; 3]| Gaussian {
            mean: DVector::from_element(d, mu),
            cov: DMatrix::from_diagonal(&DVector::from_row_slice(&var)),
        };
        let (p, q) = (g(1.0, [1.0, 4.0, 9.0]), g(-1.0, [4.0, 4.0, 1.0]));
        let expected = 3.0 * 4.0 + (1.0f64 + 0.0 + 4.0);
        assert!(
            (frechet_distance(&p, &q) - expected).abs() < 1e-9,
            "{}",
            frechet_distance(&p, &q)
        );
        // And a non-diagonal case against the 1-D formula after rotation: rotating both
        // Gaussians by the same orthogonal matrix leaves the distance unchanged.
        let r = DMatrix::from_row_slice(3, 3, &[0.6, -0.8, 0.0, 0.8, 0.6, 0.0, 0.0, 0.0, 1.0]);
        let rot = |x: &Gaussian| Gaussian {
            mean: &r * &x.mean,
            cov: &r * &x.cov * r.transpose(),
        };
        assert!((frechet_distance(&rot(&p), &rot(&q)) - expected).abs() < 1e-9);
    }

    #[test]
    fn fid_rises_with_the_strength_of_added_noise() {
        let real = gaussian_features(800, 8, 0.0, 1.0, 3);
        let reference = real.gaussian();
        let noise = gaussian_features(800, 8, 0.0, 1.0, 4);
        let mut last = -1.0;
        for strength in [0.0, 0.25, 0.5, 1.0, 2.0] {
            let noisy = Features {
                rows: &real.rows + &noise.rows * strength,
            };
            let fid = frechet_distance(&noisy.gaussian(), &reference);
            assert!(fid > last, "strength {strength}: {fid} after {last}");
            last = fid;
        }
    }

    #[test]
    fn kid_is_about_zero_for_one_distribution_and_positive_for_two() {
        let a = gaussian_features(600, 8, 0.0, 1.0, 5);
        let b = gaussian_features(600, 8, 0.0, 1.0, 6);
        let c = gaussian_features(600, 8, 0.7, 1.0, 7);
        let (same, same_sd) = kernel_distance(&a, &b, 20, 200, 0);
        let (diff, _) = kernel_distance(&a, &c, 20, 200, 0);
        assert!(
            same.abs() < 3.0 * same_sd.max(1e-3),
            "same distribution: {same} ± {same_sd}"
        );
        assert!(
            diff > 10.0 * same.abs().max(1e-3),
            "shifted: {diff} vs {same}"
        );
        // Subsets are scored in parallel: one thread gives the same bits,
        // and another seed other subsets.
        let one_thread = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let serial = one_thread.install(|| kernel_distance(&a, &c, 20, 200, 0));
        assert_eq!(serial, kernel_distance(&a, &c, 20, 200, 0));
        assert_ne!(serial, kernel_distance(&a, &c, 20, 200, 1));
    }

    #[test]
    fn precision_and_recall_are_one_for_identical_sets_and_drop_when_disjoint() {
        let a = gaussian_features(300, 4, 0.0, 1.0, 8);
        assert_eq!(precision_recall(&a, &a, 3), (1.0, 1.0));
        let far = gaussian_features(300, 4, 50.0, 1.0, 9);
        let (p, r) = precision_recall(&a, &far, 3);
        assert!(p < 0.01 && r < 0.01, "{p} {r}");
        // A generator that covers only a part of the real data: high precision, low recall.
        let half = Features {
            rows: a.rows.select_rows(
                (0..300)
                    .filter(|i| a.rows[(*i, 0)] > 0.5)
                    .collect::<Vec<_>>()
                    .iter(),
            ),
        };
        let (p, r) = precision_recall(&a, &half, 3);
        assert!(p > 0.9 && r < 0.6, "precision {p}, recall {r}");
    }

    #[test]
    fn inception_score_and_coverage_bounds() {
        // Confident and uniform over 4 classes: IS = 4, entropy ln 4.
        let sharp: Vec<Vec<f64>> = (0..400)
            .map(|i| (0..4).map(|c| if c == i % 4 { 1.0 } else { 0.0 }).collect())
            .collect();
        let (is, _) = inception_score(&sharp, 1);
        assert!((is - 4.0).abs() < 1e-9);
        let (shares, entropy) = class_coverage(&sharp);
        assert_eq!(shares, vec![0.25; 4]);
        assert!((entropy - 4f64.ln()).abs() < 1e-12);
        // All in one class: IS 1 and entropy 0 (collapse).
        let collapsed: Vec<Vec<f64>> = (0..100).map(|_| vec![1.0, 0.0, 0.0, 0.0]).collect();
        assert!((inception_score(&collapsed, 2).0 - 1.0).abs() < 1e-9);
        assert_eq!(class_coverage(&collapsed).1, 0.0);
    }
}
