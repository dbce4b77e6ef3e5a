//! Spectral normalisation (Miyato et al. 2018): each weight is divided by
//! an estimate of its largest singular value σ(W), so every layer is
//! 1-Lipschitz and the discriminator cannot sharpen without bound.
//!
//! σ(W) is estimated by power iteration on W reshaped to `[out, in·k·k]`,
//! one iteration per forward pass in training (Algorithm 1 of the paper).
//! The left singular vector estimate `u` is non-trainable state, kept in
//! a [`RunningState`] so that it is saved in checkpoints and restored on
//! resume.

use burn::module::{Param, RunningState};
use burn::nn::Initializer;
use burn::prelude::*;
use burn::tensor::Distribution;
use genzoo_core::fused::{self, ConvGeometry};

const EPS: f64 = 1e-12;

/// A weight matrix `[rows, cols]` with its power-iteration vector `u` `[rows]`.
#[derive(Module, Debug)]
pub struct SpectralWeight<B: Backend> {
    /// The unnormalised weight, any shape whose first dimension is `rows`.
    pub weight: Param<Tensor<B, 2>>,
    /// The current estimate of the first left singular vector (not trained).
    pub running_u: RunningState<Tensor<B, 1>>,
}

impl<B: Backend> SpectralWeight<B> {
    /// Wraps a `[rows, cols]` weight, starting `u` at a random unit vector.
    pub fn new(weight: Param<Tensor<B, 2>>, device: &B::Device) -> Self {
        let rows = weight.dims()[0];
        let u = Tensor::<B, 1>::random([rows], Distribution::Normal(0.0, 1.0), device);
        let u = normalize(u);
        Self {
            weight,
            running_u: RunningState::new(u),
        }
    }

    /// σ(W) after `iterations` power iterations from the stored `u`; the new
    /// `u` is stored (detached) when `update` is set.
    ///
    /// One iteration: v = Wᵀu / ‖Wᵀu‖, u = Wv / ‖Wv‖, σ = uᵀWv.
    pub fn sigma(&self, iterations: usize, update: bool) -> Tensor<B, 1> {
        let w = self.weight.val();
        let wd = w.clone().detach();
        let mut u = self.running_u.value();
        let mut v = normalize(
            wd.clone()
                .transpose()
                .matmul(u.clone().unsqueeze_dim(1))
                .squeeze_dim(1),
        );
        for i in 0..iterations.max(1) {
            if i > 0 {
                v = normalize(
                    wd.clone()
                        .transpose()
                        .matmul(u.clone().unsqueeze_dim(1))
                        .squeeze_dim(1),
                );
            }
            u = normalize(wd.clone().matmul(v.clone().unsqueeze_dim(1)).squeeze_dim(1));
        }
        if update {
            self.running_u.update(u.clone().detach());
        }
        // σ keeps its gradient through W (u and v are constants, as in the paper).
        let wv = w.matmul(v.detach().unsqueeze_dim(1)).squeeze_dim(1); // [rows]
        (u.detach() * wv).sum()
    }

    /// W / σ(W), with one power iteration (updating `u` when `update`).
    pub fn normalized(&self, update: bool) -> Tensor<B, 2> {
        let sigma = self.sigma(1, update);
        self.weight.val() / sigma.unsqueeze_dim(0)
    }
}

fn normalize<B: Backend>(x: Tensor<B, 1>) -> Tensor<B, 1> {
    let norm = x.clone().powi_scalar(2).sum().sqrt().clamp_min(EPS);
    x / norm
}

/// A spectrally normalised 2-D convolution (bias not normalised).
#[derive(Module, Debug)]
pub struct SnConv2d<B: Backend> {
    weight: SpectralWeight<B>,
    bias: Param<Tensor<B, 1>>,
    shape: [usize; 4],
    stride: [usize; 2],
    padding: [usize; 2],
}

impl<B: Backend> SnConv2d<B> {
    /// A `k×k` convolution `cin → cout` with stride and symmetric padding,
    /// initialised as burn's `Conv2d`.
    pub fn new(
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        device: &B::Device,
    ) -> Self {
        // burn's Conv2d default: Kaiming-uniform with gain 1/√3, i.e. U(±1/√fan_in), bias alike.
        let bound = 1.0 / ((cin * k * k) as f64).sqrt();
        let init = Initializer::Uniform {
            min: -bound,
            max: bound,
        };
        Self {
            weight: SpectralWeight::new(init.init::<B, 2, _>([cout, cin * k * k], device), device),
            bias: init.init::<B, 1, _>([cout], device),
            shape: [cout, cin, k, k],
            stride: [stride, stride],
            padding: [padding, padding],
        }
    }

    /// The spectral-norm state (for tests and inspection).
    pub fn spectral(&self) -> &SpectralWeight<B> {
        &self.weight
    }

    /// # Shapes
    /// - input: `[batch, cin, h, w]` → `[batch, cout, h', w']`
    pub fn forward(&self, input: Tensor<B, 4>, update: bool) -> Tensor<B, 4> {
        let w = self.weight.normalized(update).reshape(self.shape);
        let geometry = ConvGeometry {
            stride: self.stride,
            padding: self.padding,
        };
        fused::conv2d(input, w, Some(self.bias.val()), geometry)
    }
}

/// A spectrally normalised dense layer `x·Wᵀ + b` with W `[out, in]`.
#[derive(Module, Debug)]
pub struct SnLinear<B: Backend> {
    weight: SpectralWeight<B>,
    bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> SnLinear<B> {
    /// A dense layer `d_in → d_out` with Kaiming-uniform weights (as burn's `Linear`).
    pub fn new(d_in: usize, d_out: usize, device: &B::Device) -> Self {
        let bound = 1.0 / (d_in as f64).sqrt();
        let w = Initializer::Uniform {
            min: -bound,
            max: bound,
        }
        .init::<B, 2, _>([d_out, d_in], device);
        let b = Initializer::Uniform {
            min: -bound,
            max: bound,
        }
        .init::<B, 1, _>([d_out], device);
        Self {
            weight: SpectralWeight::new(w, device),
            bias: b,
        }
    }

    /// # Shapes
    /// - input: `[batch, d_in]` → `[batch, d_out]`
    pub fn forward(&self, input: Tensor<B, 2>, update: bool) -> Tensor<B, 2> {
        input.matmul(self.weight.normalized(update).transpose()) + self.bias.val().unsqueeze_dim(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genzoo_core::seed::{host_rng, normal_tensor};
    use genzoo_core::{CpuBackend, CpuDevice};

    /// The largest singular value by a long power iteration in f64 on the host.
    fn sigma_max(w: &[f32], rows: usize, cols: usize) -> f64 {
        let w: Vec<f64> = w.iter().map(|&x| x as f64).collect();
        let mut v = vec![1.0f64; cols];
        let mut s = 0.0;
        for _ in 0..2000 {
            let u: Vec<f64> = (0..rows)
                .map(|r| (0..cols).map(|c| w[r * cols + c] * v[c]).sum())
                .collect();
            let wt_u: Vec<f64> = (0..cols)
                .map(|c| (0..rows).map(|r| w[r * cols + c] * u[r]).sum())
                .collect();
            let n = wt_u.iter().map(|x| x * x).sum::<f64>().sqrt();
            v = wt_u.iter().map(|x| x / n).collect();
            s = n.sqrt();
        }
        s
    }

    #[test]
    fn normalised_weight_has_unit_spectral_norm() {
        let _guard = crate::rng_lock();
        let dev = CpuDevice::default();
        let mut rng = host_rng(1, "test", 0);
        CpuBackend::seed(&dev, 5);
        let (rows, cols) = (16, 40);
        // Noise plus a rank-one spike: a clear gap between the top two
        // singular values, so 50 power iterations converge whatever the draw
        // (a pure Gaussian matrix's top two can be within a few percent).
        let noise = normal_tensor::<CpuBackend, 2>(&mut rng, [rows, cols], 0.0, 1.0, &dev);
        let u = normal_tensor::<CpuBackend, 2>(&mut rng, [rows, 1], 0.0, 1.0, &dev);
        let v = normal_tensor::<CpuBackend, 2>(&mut rng, [1, cols], 0.0, 1.0, &dev);
        let w = noise + u.matmul(v);
        let sn = SpectralWeight::new(Param::from_tensor(w.clone()), &dev);
        let direct = sigma_max(&w.into_data().to_vec::<f32>().unwrap(), rows, cols);
        // Training forwards, each one power iteration, as in training.
        for _ in 0..50 {
            let _ = sn.normalized(true);
        }
        let estimate = sn.sigma(1, false).into_scalar() as f64;
        assert!(
            (estimate - direct).abs() / direct < 1e-2,
            "σ estimate {estimate} vs direct {direct}"
        );
        let normalised = sn.normalized(false).into_data().to_vec::<f32>().unwrap();
        let s = sigma_max(&normalised, rows, cols);
        assert!((s - 1.0).abs() < 1e-2, "σ(W/σ) = {s}");
    }
}
