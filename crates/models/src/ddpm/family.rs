//! The DDPM's training step, sampling and likelihood: a U-Net trained with
//! Adam on the simple loss, an EMA of its weights that samples are drawn from,
//! classifier-free guidance for class-conditional models (Ho & Salimans 2022).

use std::path::Path;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use genzoo_core::ema::Ema;
use genzoo_core::family::{SampleRequest, SamplerOptions};
use genzoo_core::noise;
use genzoo_core::optim::FusedAdam;
use genzoo_core::parallel::{Replica, broadcast_autodiff, broadcast_module};
use genzoo_core::record::{
    load_module, load_optimizer, save_module, save_optimizer, trainable_params,
};
use genzoo_core::seed::{host_rng, normal_tensor};
use genzoo_core::weights::{NamedTensors, pytorch_layout};
use genzoo_core::{Error, Family, ImageBatch, Metrics, Result, StepContext};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use super::objective::{self, Prediction, q_sample};
use super::sampler::{Ddim, Ddpm, DdpmVariance, Denoised, DpmSolver, Sampler};
use super::schedule::{BetaSchedule, NoiseSchedule};
use super::unet::{UNet, UNetConfig};

/// Which sampler draws samples, and its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplerConfig {
    /// `ddim`, `dpm-solver` or `ddpm`.
    pub method: SamplerMethod,
    /// DDIM's or DPM-Solver's number of steps (a request that names
    /// another method than this one, without steps, takes that method's
    /// default: 50 for DDIM, 20 for DPM-Solver).
    pub steps: usize,
    /// DDIM's η.
    pub eta: f64,
    /// DDPM's reverse variance.
    pub variance: DdpmVariance,
    /// Classifier-free guidance weight w: ε̃ = (1 + w)·ε(x, y) − w·ε(x, ∅).
    pub guidance: f64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        Self {
            method: SamplerMethod::Ddim,
            steps: 50,
            eta: 0.0,
            variance: DdpmVariance::Posterior,
            guidance: 0.0,
        }
    }
}

/// The samplers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SamplerMethod {
    /// Ancestral sampling through all T steps.
    Ddpm,
    /// DDIM on a subsequence of the steps.
    Ddim,
    /// DPM-Solver++(2M) on the same subsequence.
    #[serde(rename = "dpm-solver")]
    DpmSolver,
}

impl SamplerMethod {
    /// The method named `name` (as `--sampler` and config files say it).
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "ddpm" => Ok(Self::Ddpm),
            "ddim" => Ok(Self::Ddim),
            "dpm-solver" => Ok(Self::DpmSolver),
            other => Err(Error::Config(format!(
                "unknown sampler '{other}': use ddim, dpm-solver or ddpm"
            ))),
        }
    }

    /// Steps when a request names this method but no steps.
    fn default_steps(self) -> usize {
        match self {
            Self::Ddim => 50,
            Self::DpmSolver => DpmSolver::DEFAULT_STEPS,
            Self::Ddpm => 0,
        }
    }
}

/// DDPM hyper-parameters. The defaults are the `ddpm-unet` reference model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DdpmConfig {
    /// The noise predictor.
    pub unet: UNetConfig,
    /// T, the number of diffusion steps.
    pub timesteps: usize,
    /// How β_t grows.
    pub beta_schedule: BetaSchedule,
    /// ε or v.
    pub prediction: Prediction,
    /// Condition on the class (with classifier-free guidance).
    pub conditional: bool,
    /// Probability of training on the "no class" label (conditional models).
    pub label_dropout: f64,
    /// EMA decay of the sampling weights.
    pub ema_decay: f64,
    /// Ramp the EMA decay up as min(decay, (1 + n)/(10 + n)) so short runs
    /// do not sample from weights dominated by the initialisation.
    pub ema_warmup: bool,
    /// Adam β₁, β₂.
    pub betas: (f32, f32),
    /// Adam ε (PyTorch's 1e-8).
    pub adam_eps: f32,
    /// The default sampler (progress grids, `genzoo sample` without options).
    pub sampler: SamplerConfig,
}

impl Default for DdpmConfig {
    fn default() -> Self {
        Self {
            unet: UNetConfig::default(),
            timesteps: 1000,
            beta_schedule: BetaSchedule::default(),
            prediction: Prediction::Epsilon,
            conditional: false,
            label_dropout: 0.1,
            ema_decay: 0.999,
            ema_warmup: true,
            betas: (0.9, 0.999),
            adam_eps: 1e-8,
            sampler: SamplerConfig::default(),
        }
    }
}

impl DdpmConfig {
    /// Rejects configurations no DDPM can be built or trained from.
    pub fn validate(&self) -> Result<()> {
        self.unet.validate()?;
        let bad = |m: String| Err(Error::Config(format!("ddpm: {m}")));
        if self.timesteps < 2 {
            return bad(format!(
                "timesteps must be at least 2, got {}",
                self.timesteps
            ));
        }
        if self.conditional != (self.unet.num_classes > 0) {
            return bad(
                "conditional = true needs unet.num_classes ≥ 2 (set from the data) and the reverse"
                    .into(),
            );
        }
        if self.conditional && self.unet.num_classes < 2 {
            return bad("a conditional DDPM needs at least 2 classes".into());
        }
        if !(0.0..1.0).contains(&self.label_dropout) {
            return bad(format!(
                "label_dropout must be in [0, 1), got {}",
                self.label_dropout
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad(format!(
                "ema_decay must be in [0, 1), got {}",
                self.ema_decay
            ));
        }
        let betas = self.beta_schedule.betas(self.timesteps);
        if betas.iter().any(|b| !(*b > 0.0 && *b < 1.0)) {
            return bad("every β_t must lie in (0, 1)".into());
        }
        Ok(())
    }

    /// The forward process.
    pub fn schedule(&self) -> NoiseSchedule {
        NoiseSchedule::new(self.beta_schedule, self.timesteps)
    }
}

type AdamOf<M, B> = OptimizerAdaptor<FusedAdam, M, B>;

/// A U-Net, its optimizer and its EMA: the `ddpm` family.
pub struct DdpmTrainer<B: AutodiffBackend> {
    /// The trained network.
    pub unet: UNet<B>,
    optimizer: AdamOf<UNet<B>, B>,
    ema: Ema<UNet<B::InnerBackend>>,
    schedule: NoiseSchedule,
    config: DdpmConfig,
    device: B::Device,
}

/// Quarters of the timestep range, from least to most noise, for the per-quarter losses.
const QUARTERS: [&str; 4] = ["loss_q1", "loss_q2", "loss_q3", "loss_q4"];

impl<B: AutodiffBackend> DdpmTrainer<B> {
    /// A freshly initialised DDPM (call `validate` on the config first).
    pub fn new(config: DdpmConfig, device: &B::Device) -> Self {
        let unet = UNet::new(&config.unet, device);
        genzoo_core::record::force_init(&unet);
        let optimizer = FusedAdam::new(config.betas.0, config.betas.1, config.adam_eps).init();
        let ema = Ema::new(&unet, config.ema_decay, config.ema_warmup);
        Self {
            unet,
            optimizer,
            ema,
            schedule: config.schedule(),
            config,
            device: device.clone(),
        }
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &DdpmConfig {
        &self.config
    }

    /// The forward process.
    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// The EMA weights samples are drawn from.
    pub fn ema_unet(&self) -> &UNet<B::InnerBackend> {
        &self.ema.module
    }

    /// The per-example MSE of `net` on noised `x0` at uniform random timesteps,
    /// with the timesteps (per-example draws from the step's noise stream).
    fn noised_loss<Bk: Backend>(
        &self,
        net: &UNet<Bk>,
        x0: Tensor<Bk, 4>,
        labels: Tensor<Bk, 1, Int>,
    ) -> (Tensor<Bk, 1>, Vec<usize>) {
        let [n, c, h, w] = x0.dims();
        let device = x0.device();
        let t_draw =
            noise::uniform_per_example::<Bk, 1>([n], 0.0, self.config.timesteps as f64, &device);
        let t: Vec<usize> = t_draw
            .into_data()
            .to_vec::<f32>()
            .expect("f32 timesteps")
            .into_iter()
            .map(|v| (v as usize).min(self.config.timesteps - 1))
            .collect();
        let noise = noise::normal_per_example::<Bk, 4>([n, c, h, w], &device);
        let x_t = q_sample(&self.schedule, x0.clone(), &t, noise.clone());
        let target = self.config.prediction.target(&self.schedule, x0, noise, &t);
        let t_in: Vec<f32> = t.iter().map(|&t| t as f32).collect();
        let output = net.forward(x_t, Tensor::from_floats(t_in.as_slice(), &device), labels);
        let per_example = (output - target)
            .square()
            .reshape([n, c * h * w])
            .mean_dim(1)
            .reshape([n]);
        (per_example, t)
    }

    /// The loss and its means per quarter of the timestep range.
    fn loss_metrics(&self, per_example: Vec<f32>, t: &[usize]) -> Metrics {
        let n = per_example.len().max(1) as f64;
        let mut metrics = Metrics::new().with(
            "loss",
            per_example.iter().map(|v| *v as f64).sum::<f64>() / n,
        );
        let mut sums = [(0.0f64, 0usize); 4];
        for (loss, &t) in per_example.iter().zip(t) {
            let q = (4 * t / self.config.timesteps).min(3);
            sums[q].0 += *loss as f64;
            sums[q].1 += 1;
        }
        for (name, (sum, count)) in QUARTERS.iter().zip(sums) {
            if count > 0 {
                metrics.push(*name, sum / count as f64);
            }
        }
        metrics
    }

    /// Labels as the network sees them: the class, or the "no class" label
    /// with probability `label_dropout` (conditional models; else all zero).
    fn training_labels(&self, labels: Tensor<B, 1, Int>) -> Tensor<B, 1, Int> {
        if !self.config.conditional {
            return labels.zeros_like();
        }
        let [n] = labels.dims();
        let drop = noise::uniform_per_example::<B, 1>([n], 0.0, 1.0, &self.device)
            .lower_elem(self.config.label_dropout);
        labels.mask_fill(drop, self.unet.null_class() as i64)
    }

    /// The sampler a request asks for (else the configured one), and the guidance weight.
    fn resolve_sampler(&self, request: &SampleRequest) -> Result<(SamplerConfig, f64)> {
        let mut s = self.config.sampler.clone();
        let o = &request.sampler;
        if let Some(method) = &o.method {
            let method = SamplerMethod::from_name(method)?;
            if method != s.method {
                // The configured steps are the configured method's.
                s.steps = method.default_steps();
            }
            s.method = method;
        }
        if s.method == SamplerMethod::Ddpm && (o.steps.is_some() || o.eta.is_some()) {
            return Err(Error::Config(
                "--steps and --eta are DDIM's (--steps DPM-Solver's too): the ddpm sampler always \
                 runs all T steps"
                    .into(),
            ));
        }
        if s.method == SamplerMethod::DpmSolver && o.eta.is_some() {
            return Err(Error::Config(
                "--eta is DDIM's: dpm-solver is deterministic (DDIM's η = 0 ODE)".into(),
            ));
        }
        if let Some(steps) = o.steps {
            s.steps = steps;
        }
        if let Some(eta) = o.eta {
            s.eta = eta;
        }
        let guidance = o.guidance.unwrap_or(s.guidance);
        if guidance != 0.0 && !self.config.conditional {
            return Err(Error::Config(
                "guidance needs a class-conditional model (cddpm-unet)".into(),
            ));
        }
        if !guidance.is_finite() || guidance < 0.0 {
            return Err(Error::Config(format!(
                "guidance must be ≥ 0, got {guidance}"
            )));
        }
        Ok((s, guidance))
    }

    /// Runs the reverse process from seeded noise on the EMA weights;
    /// `keep` is called with (0, x_T) before the first step and with
    /// (i, x) after step i (1-based), so the last call holds the sample.
    fn reverse_process(
        &self,
        request: &SampleRequest,
        mut keep: impl FnMut(usize, &Tensor<B::InnerBackend, 4>),
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        let (settings, guidance) = self.resolve_sampler(request)?;
        let labels =
            request.labels::<B::InnerBackend>(self.num_classes(), "cddpm-unet", &self.device)?;
        match settings.method {
            SamplerMethod::Ddpm => self.run_sampler(
                &Ddpm {
                    variance: settings.variance,
                },
                request,
                labels,
                guidance,
                None,
                &mut keep,
            ),
            SamplerMethod::Ddim => {
                let ddim = Ddim::new(settings.steps, settings.eta, &self.schedule)?;
                self.run_sampler(&ddim, request, labels, guidance, None, &mut keep)
            }
            SamplerMethod::DpmSolver => {
                let solver = DpmSolver::new(settings.steps, &self.schedule)?;
                self.run_sampler(&solver, request, labels, guidance, None, &mut keep)
            }
        }
    }

    fn run_sampler<S: Sampler>(
        &self,
        sampler: &S,
        request: &SampleRequest,
        labels: Tensor<B::InnerBackend, 1, Int>,
        guidance: f64,
        x_t: Option<Tensor<B::InnerBackend, 4>>,
        keep: &mut impl FnMut(usize, &Tensor<B::InnerBackend, 4>),
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        // The EMA weights by default; the trained ones on request.
        let raw;
        let net = if request.sampler.raw_weights {
            raw = self.unet.valid();
            &raw
        } else {
            &self.ema.module
        };
        let cfg = &self.config.unet;
        let shape = [request.n, cfg.channels, cfg.height, cfg.width];
        // Noise comes from a host RNG seeded by the request: same seed, same samples,
        // whatever else runs in the process.
        let mut rng = host_rng(request.seed, "ddpm-sample", 0);
        let mut normal = |shape: [usize; 4]| normal_tensor(&mut rng, shape, 0.0, 1.0, &self.device);
        let timesteps = sampler.timesteps(&self.schedule);
        let bar = if request.sampler.progress {
            let bar = ProgressBar::new(timesteps.len() as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} {bar:30} {pos}/{len} steps [{elapsed} < {eta}]",
                )
                .expect("a valid template"),
            );
            bar.set_message("sampling");
            bar
        } else {
            ProgressBar::hidden()
        };
        let null = Tensor::<B::InnerBackend, 1, Int>::full(
            [request.n],
            net.null_class() as i64,
            &self.device,
        );
        // x_T: the given one (a latent code), or else seeded noise.
        let mut x = x_t.unwrap_or_else(|| normal(shape));
        keep(0, &x);
        // The last timestep's x̂_0, for multistep samplers.
        let mut previous = None;
        for (i, &t) in timesteps.iter().enumerate() {
            let prev = timesteps.get(i + 1).copied();
            let t_all = vec![t; request.n];
            let t_in = Tensor::<B::InnerBackend, 1>::full([request.n], t as f32, &self.device);
            let output = if guidance > 0.0 {
                // One call on [conditional; unconditional], then ε̃ = (1 + w)·ε_y − w·ε_∅.
                let both = net.forward(
                    Tensor::cat(vec![x.clone(), x.clone()], 0),
                    Tensor::cat(vec![t_in.clone(), t_in], 0),
                    Tensor::cat(vec![labels.clone(), null.clone()], 0),
                );
                let mut halves = both.chunk(2, 0).into_iter();
                let (cond, uncond) = (
                    halves.next().expect("two halves"),
                    halves.next().expect("two halves"),
                );
                cond * (1.0 + guidance) - uncond * guidance
            } else {
                net.forward(x.clone(), t_in, labels.clone())
            };
            let (x0, _) =
                self.config
                    .prediction
                    .to_x0_and_eps(&self.schedule, x.clone(), output, &t_all);
            // Clip x̂_0 to the data range and take the ε consistent with it (as Ho et al.'s code does).
            let x0 = x0.clamp(-1.0, 1.0);
            let eps = objective::eps_from_x0(&self.schedule, x.clone(), x0.clone(), &t_all);
            let z = (sampler.noise_scale(&self.schedule, t, prev) > 0.0).then(|| normal(shape));
            let state = Denoised {
                x_t: x,
                x0: x0.clone(),
                eps,
                previous: previous.replace((t, x0)),
            };
            x = sampler.step(&self.schedule, t, prev, state, z);
            keep(i + 1, &x);
            bar.inc(1);
        }
        bar.finish_and_clear();
        Ok(x)
    }

    /// The variational bound −log p(x_0) ≤ L in bits/dim for each image
    /// (Ho et al. eq. 5: prior term, KL terms for t > 0, discretised decoder at t = 0),
    /// computed with the EMA weights.
    ///
    /// `images` are in `[0, 1]` as loaded (8-bit data). With `timesteps = None`
    /// every one of the T terms is evaluated (T network calls per image: the
    /// exact bound). With `Some(k)` the decoder term is exact and the sum of
    /// the T − 1 KL terms is estimated from k − 1 timesteps by the trapezoid
    /// rule (see [`kl_quadrature`]).
    pub fn variational_bound(
        &self,
        images: Tensor<B::InnerBackend, 4>,
        timesteps: Option<usize>,
        seed: u64,
    ) -> Result<Vec<f64>> {
        let t_max = self.config.timesteps;
        if self.config.conditional {
            return Err(Error::Config(
                "the likelihood bound is computed for unconditional DDPMs".into(),
            ));
        }
        let k = timesteps.unwrap_or(t_max).clamp(3, t_max);
        let kl_terms = kl_quadrature(t_max, k - 1);
        let [n, c, h, w] = images.dims();
        let x0 = images * 2.0 - 1.0;
        let mut rng = host_rng(seed, "ddpm-vlb", 0);
        let net = &self.ema.module;
        let labels = Tensor::<B::InnerBackend, 1, Int>::zeros([n], &self.device);
        let mut total = objective::prior_bits_per_dim(&self.schedule, x0.clone());
        for (t, weight) in std::iter::once((0usize, 1.0)).chain(kl_terms) {
            let noise = normal_tensor(&mut rng, [n, c, h, w], 0.0, 1.0, &self.device);
            let t_all = vec![t; n];
            let x_t = q_sample(&self.schedule, x0.clone(), &t_all, noise);
            let t_in = Tensor::<B::InnerBackend, 1>::full([n], t as f32, &self.device);
            let output = net.forward(x_t.clone(), t_in, labels.clone());
            let (x0_hat, _) =
                self.config
                    .prediction
                    .to_x0_and_eps(&self.schedule, x_t.clone(), output, &t_all);
            let term =
                objective::vlb_term(&self.schedule, x0.clone(), x_t, x0_hat.clamp(-1.0, 1.0), t);
            total = total + term * weight;
        }
        Ok(total
            .into_data()
            .to_vec::<f32>()
            .expect("f32 bound")
            .into_iter()
            .map(f64::from)
            .collect())
    }
}

/// Timesteps and weights that estimate Σ_{t=1}^{T−1} L_t from `points` terms
/// by the trapezoid rule. The points are spaced quadratically (dense at small
/// t, where the terms are large and change fast); with `points ≥ T − 1`
/// every t gets weight 1 and the sum is exact.
pub fn kl_quadrature(t_max: usize, points: usize) -> Vec<(usize, f64)> {
    let last = t_max - 1;
    let mut ts: Vec<usize> = if points >= last {
        (1..=last).collect()
    } else {
        let m = points.max(2);
        (0..m)
            .map(|i| 1 + ((last - 1) as f64 * (i as f64 / (m - 1) as f64).powi(2)).round() as usize)
            .collect()
    };
    ts.dedup();
    let m = ts.len();
    (0..m)
        .map(|i| {
            let left = if i == 0 {
                1.0
            } else {
                (ts[i] - ts[i - 1]) as f64
            };
            let right = if i + 1 == m {
                1.0
            } else {
                (ts[i + 1] - ts[i]) as f64
            };
            (ts[i], (left + right) / 2.0)
        })
        .collect()
}

impl<B: AutodiffBackend> Family<B> for DdpmTrainer<B> {
    type Batch = ImageBatch<B>;

    fn num_params(&self) -> usize {
        trainable_params(&self.unet)
    }

    fn supports_micro_batches(&self) -> bool {
        // The EMA moves only with the update (`train_step`).
        true
    }

    fn train_step(
        mut self,
        batch: ImageBatch<B>,
        ctx: &mut StepContext,
    ) -> Result<(Self, Metrics)> {
        let labels = self.training_labels(batch.labels);
        let (per_example, t) = self.noised_loss(&self.unet, batch.images, labels);
        let loss = per_example.clone().mean();
        let grads = GradientsParams::from_grads(loss.backward(), &self.unet);
        self.unet = ctx.apply(&mut self.optimizer, self.unet.clone(), grads)?;
        // The EMA update is part of the step (the reference model's recipe).
        if ctx.updates_weights() {
            self.ema.update(&self.unet, ctx.step);
        }
        let values = per_example
            .inner()
            .into_data()
            .to_vec::<f32>()
            .expect("f32 losses");
        let metrics = self.loss_metrics(values, &t);
        Ok((self, metrics))
    }

    fn eval_batch(&self, batch: ImageBatch<B>) -> Result<Metrics> {
        // The held-out loss of the EMA weights, the ones samples come from.
        let labels = if self.config.conditional {
            batch.labels.inner()
        } else {
            batch.labels.inner().zeros_like()
        };
        let (per_example, t) = self.noised_loss(&self.ema.module, batch.images.inner(), labels);
        let values = per_example.into_data().to_vec::<f32>().expect("f32 losses");
        Ok(self.loss_metrics(values, &t))
    }

    fn sample_images(&self, request: &SampleRequest) -> Result<Tensor<B::InnerBackend, 4>> {
        let x0 = self.reverse_process(request, |_, _| {})?;
        Ok(((x0 + 1.0) / 2.0).clamp(0.0, 1.0))
    }

    fn sample_trajectory(
        &self,
        request: &SampleRequest,
        frames: usize,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        let one = SampleRequest {
            n: 1,
            ..request.clone()
        };
        let (settings, _) = self.resolve_sampler(&one)?;
        let iterations = match settings.method {
            SamplerMethod::Ddpm => self.config.timesteps,
            SamplerMethod::Ddim | SamplerMethod::DpmSolver => settings.steps,
        };
        let frames = frames.clamp(2, iterations + 1);
        // Frame 0 is x_T; the others evenly spaced over the iterations, the last one x_0.
        let wanted: Vec<usize> = (0..frames).map(|f| f * iterations / (frames - 1)).collect();
        let mut kept = Vec::new();
        self.reverse_process(&one, |i, x| {
            if wanted.contains(&i) {
                kept.push(x.clone());
            }
        })?;
        Ok(((Tensor::cat(kept, 0) + 1.0) / 2.0).clamp(0.0, 1.0))
    }

    fn num_classes(&self) -> usize {
        if self.config.conditional {
            self.config.unet.num_classes
        } else {
            0
        }
    }

    /// x_T, flattened: with DDIM at η = 0 each x_T maps to one image.
    fn latent_dim(&self) -> Option<usize> {
        let u = &self.config.unet;
        Some(u.channels * u.height * u.width)
    }

    /// Runs the deterministic DDIM sampler (η = 0; `--steps` and guidance
    /// apply) from each code as x_T.
    fn decode_latents(
        &self,
        codes: Tensor<B::InnerBackend, 2>,
        labels: Tensor<B::InnerBackend, 1, Int>,
        sampler: &SamplerOptions,
    ) -> Result<Tensor<B::InnerBackend, 4>> {
        let n = codes.dims()[0];
        let request = SampleRequest {
            n,
            sampler: sampler.clone(),
            ..Default::default()
        };
        let (settings, guidance) = self.resolve_sampler(&request)?;
        if settings.method != SamplerMethod::Ddim || settings.eta != 0.0 {
            return Err(Error::Config(format!(
                "decoding a diffusion model's x_T needs the deterministic sampler, DDIM with η = 0 \
                 (the ancestral one adds new noise at every step); got {}",
                match settings.method {
                    SamplerMethod::Ddpm => "--sampler ddpm".to_string(),
                    SamplerMethod::DpmSolver => "--sampler dpm-solver".to_string(),
                    SamplerMethod::Ddim => format!("η = {}", settings.eta),
                }
            )));
        }
        let u = &self.config.unet;
        let x_t = codes.reshape([n, u.channels, u.height, u.width]);
        let ddim = Ddim::new(settings.steps, 0.0, &self.schedule)?;
        let x0 = self.run_sampler(&ddim, &request, labels, guidance, Some(x_t), &mut |_, _| {})?;
        Ok(((x0 + 1.0) / 2.0).clamp(0.0, 1.0))
    }

    /// The variational bound ([`DdpmTrainer::variational_bound`]); `effort` is its number of terms.
    fn bits_per_dim(
        &self,
        images: Tensor<B::InnerBackend, 4>,
        effort: Option<usize>,
        seed: u64,
    ) -> Result<Vec<f64>> {
        self.variational_bound(images, effort, seed)
    }

    /// `unet.*` (trained) and `unet_ema.*` (the weights samples come from).
    fn pytorch_weights(&self) -> Result<NamedTensors> {
        let mut tensors = pytorch_layout(&self.unet, "unet.")?;
        tensors.extend(pytorch_layout(&self.ema.module, "unet_ema.")?);
        Ok(tensors)
    }

    fn broadcast_weights(mut self, replica: &Replica) -> Result<Self> {
        self.unet = broadcast_autodiff(self.unet, replica)?;
        self.ema.module = broadcast_module(self.ema.module.clone(), replica)?;
        Ok(self)
    }

    fn save(&self, dir: &Path) -> Result<()> {
        save_module(&self.unet, &dir.join("unet"))?;
        save_module(&self.ema.module, &dir.join("unet_ema"))?;
        save_optimizer(&self.optimizer, &self.unet, &dir.join("optimizer"))
    }

    fn load(mut self, dir: &Path) -> Result<Self> {
        self = self.load_weights(dir)?;
        self.optimizer = load_optimizer(self.optimizer, &self.unet, &dir.join("optimizer"))?;
        Ok(self)
    }

    fn load_weights(mut self, dir: &Path) -> Result<Self> {
        self.unet = load_module(self.unet, &dir.join("unet"))?;
        self.ema.module = load_module(self.ema.module.clone(), &dir.join("unet_ema"))?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::kl_quadrature;

    #[test]
    fn kl_quadrature_weights_sum_to_the_number_of_terms() {
        // Exact with every point: weight 1 each.
        assert_eq!(
            kl_quadrature(10, 9),
            (1..10).map(|t| (t, 1.0)).collect::<Vec<_>>()
        );
        for (t_max, points) in [(1000, 50), (1000, 200), (100, 10)] {
            let q = kl_quadrature(t_max, points);
            let total: f64 = q.iter().map(|(_, w)| w).sum();
            assert!(
                (total - (t_max - 1) as f64).abs() < 1e-9,
                "{t_max}/{points}: {total}"
            );
            assert_eq!(q.first().unwrap().0, 1);
            assert_eq!(q.last().unwrap().0, t_max - 1);
            // Integrates a linear function exactly: Σ_{t=1}^{T−1} t.
            let sum: f64 = q.iter().map(|(t, w)| *t as f64 * w).sum();
            let exact = ((t_max - 1) * t_max / 2) as f64;
            assert!((sum - exact).abs() < 1e-6 * exact, "{sum} vs {exact}");
        }
    }
}
