//! The benchmark suite: the reference models of `shared/reference-models.md`
//! timed the way the PyTorch peer (`shared/peers/pytorch/bench.py`) times
//! them, with records under the same keys so one script can join the two.
//!
//! What one timed training step is, per model (the family's own
//! [`Family::train_step`], so exactly what `genzoo train` runs):
//! - `vae-mlp`: a fixed U(0, 1) batch of 128; forward with the
//!   reparameterisation noise, −ELBO, backward, Adam.
//! - `dcgan-28`: a fixed U(−1, 1) batch of 64; z drawn in the step; one D
//!   update on real and detached fake, one G update (non-saturating).
//! - `ddpm-unet`: a fixed U(−1, 1) batch of 128; t and ε drawn in the step;
//!   ε-MSE, backward, Adam, EMA update.
//! - `gpt-char` / `gpt-pixel`: fixed random tokens (12 × 64 of 65 symbols) or
//!   a fixed 12-image batch (784 pixel tokens + start token); cross-entropy,
//!   backward, global-norm clipping at 1.0, AdamW with nanoGPT's schedule.
//!
//! Sampling: `ddpm-unet` times one network call at batch 64 (a one-step DDIM
//! sample: the call plus the sampler's arithmetic) and one measured 50-step
//! DDIM run; `gpt-char` times 256 new tokens at batch 1 from one start token,
//! with and without the key/value cache.
//!
//! Steps are timed one by one after warm-up steps and the median is the
//! figure. Each record also carries the process's peak memory (`max_rss_mb`,
//! reset before each model, but memory the allocator kept from an earlier
//! model in the same process still counts: bench one model per process for
//! clean figures, as `scripts/compare-pytorch.sh` does) and how much CPU
//! other processes took during the timed window (a shared machine skews
//! timings; the peer reports the same).

use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::backend::AutodiffBackend;
use genzoo_core::family::{SampleRequest, SamplerOptions, TextRequest, TokenSampling};
use genzoo_core::{Error, Family, ImageBatch, Result, StepContext, TokenBatch};
use genzoo_models::presets::{FamilyTask, ModelConfig, Preset, preset, with_family};
use serde_json::{Map, Value, json};

use crate::schedule::Schedule;

/// The reference models, in the order the suite runs them.
pub const REFERENCE_MODELS: [&str; 5] =
    ["vae-mlp", "dcgan-28", "ddpm-unet", "gpt-char", "gpt-pixel"];

/// One measurement: a flat JSON object with the peer's keys (`framework`,
/// `version`, `model`, `task`, `threads`, `batch`, `steps`,
/// `sec_per_step_median`, `examples_per_sec`, `params`, ...).
pub type Record = Map<String, Value>;

/// What to measure and how long.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Timed training steps.
    pub steps: usize,
    /// Untimed training steps before them.
    pub warmup: usize,
    /// Override the reference batch size.
    pub batch: Option<usize>,
    /// Time training steps.
    pub train: bool,
    /// Time sampling (ddpm-unet) and generation (gpt-char).
    pub sample: bool,
    /// Timed network calls of the DDPM sampling benchmark.
    pub sample_calls: usize,
    /// Untimed calls before them.
    pub sample_warmup: usize,
    /// Also time a whole 50-step DDIM run of 64 images.
    pub ddim_run: bool,
    /// Tokens generated per gpt-char generation.
    pub gen_tokens: usize,
    /// Timed generations (after one untimed).
    pub gen_reps: usize,
    /// Seed of the synthetic data, initialisation and sampling.
    pub seed: u64,
    /// Threads the backend runs on (recorded, set by the caller).
    pub threads: usize,
    /// The backend's name (recorded).
    pub backend: String,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            steps: 20,
            warmup: 5,
            batch: None,
            train: true,
            sample: true,
            sample_calls: 20,
            sample_warmup: 3,
            ddim_run: true,
            gen_tokens: 256,
            gen_reps: 5,
            seed: 0,
            threads: 1,
            backend: "cpu".into(),
        }
    }
}

/// Runs the suite for one reference model and hands each record to `emit`
/// as soon as it is measured.
pub fn bench_model<B: AutodiffBackend>(
    name: &str,
    options: &BenchOptions,
    device: &B::Device,
    emit: &mut dyn FnMut(Record),
) -> Result<()> {
    if !REFERENCE_MODELS.contains(&name) {
        return Err(Error::Config(format!(
            "bench: unknown model '{name}'; one of {}, or all",
            REFERENCE_MODELS.join(", ")
        )));
    }
    let preset = preset(name).expect("every reference model is a preset");
    let mut config = preset.model.clone();
    if config.reads_text() {
        // nanoGPT's Shakespeare vocabulary has 65 characters; any 65 will do.
        let vocabulary: String = (0..65u8).map(|i| (b'!' + i) as char).collect();
        config.adapt_to_text(Some(vocabulary), 65);
    } else {
        config.adapt_to_data(1, 28, 28, 10);
    }
    reset_peak_memory();
    B::seed(device, options.seed);
    let task = BenchTask::<B> {
        preset: &preset,
        config: &config,
        options,
        device: device.clone(),
        emit,
    };
    with_family::<B, _>(&config, device, task)
}

struct BenchTask<'a, B: AutodiffBackend> {
    preset: &'a Preset,
    config: &'a ModelConfig,
    options: &'a BenchOptions,
    device: B::Device,
    emit: &'a mut dyn FnMut(Record),
}

impl<B: AutodiffBackend> BenchTask<'_, B> {
    fn batch_size(&self) -> usize {
        self.options.batch.unwrap_or(self.preset.batch_size)
    }

    fn record(&self, task: &str) -> Record {
        let mut r = Record::new();
        r.insert("framework".into(), json!("genzoo"));
        r.insert(
            "version".into(),
            json!(format!("{} (burn 0.21)", env!("CARGO_PKG_VERSION"))),
        );
        r.insert("model".into(), json!(self.preset.name));
        r.insert("task".into(), json!(task));
        r.insert("threads".into(), json!(self.options.threads));
        r.insert("backend".into(), json!(self.options.backend));
        r
    }

    /// Times `warmup + steps` training steps of `family` on one fixed batch.
    fn train<F: Family<B>>(&mut self, mut family: F, batch: F::Batch, per_step: Extra) -> Result<F>
    where
        F::Batch: Clone,
    {
        let o = self.options;
        let total = (o.warmup + o.steps) as u64;
        let schedule = match self.preset.min_lr {
            Some(min_lr) => Schedule::Cosine {
                warmup_steps: self.preset.warmup_steps,
                min_lr,
            },
            None => Schedule::Constant,
        };
        let params = family.num_params();
        let mut times = Vec::with_capacity(o.steps);
        let started = Instant::now();
        let mut window = None;
        for i in 0..total {
            if i == o.warmup as u64 {
                window = Some(CpuWindow::start());
            }
            let mut ctx = StepContext::new(i + 1, self.preset.lr);
            ctx.lr_factor = schedule.factor(self.preset.lr, i, total);
            ctx.clip_norm = self.preset.clip_norm;
            let t0 = Instant::now();
            let (next, metrics) = family.train_step(batch.clone(), &mut ctx)?;
            let elapsed = t0.elapsed().as_secs_f64();
            family = next;
            if let Some((name, value)) = metrics.first_non_finite() {
                return Err(Error::Config(format!(
                    "bench {}: {name} = {value} at step {}",
                    self.preset.name,
                    i + 1
                )));
            }
            if i >= o.warmup as u64 {
                times.push(elapsed);
            }
        }
        let batch_size = self.batch_size();
        let mut r = self.record("train");
        r.insert("batch".into(), json!(batch_size));
        r.insert("steps".into(), json!(o.steps));
        r.insert("warmup".into(), json!(o.warmup));
        summarize(&times, &mut r);
        let median = times_median(&times);
        r.insert("examples_per_sec".into(), json!(batch_size as f64 / median));
        if let Extra::Tokens(per_example) = per_step {
            r.insert("seq_len".into(), json!(per_example));
            r.insert(
                "tokens_per_sec".into(),
                json!((batch_size * per_example) as f64 / median),
            );
        }
        r.insert("params".into(), json!(params));
        r.insert("wall_sec".into(), json!(started.elapsed().as_secs_f64()));
        if let Some(w) = window {
            w.finish(&mut r);
        }
        r.insert("max_rss_mb".into(), json!(peak_memory_mb()));
        (self.emit)(r);
        Ok(family)
    }

    fn sample_ddpm<F: Family<B>>(&mut self, family: &F) -> Result<()> {
        let o = self.options;
        let request = |steps: usize, seed: u64| SampleRequest {
            n: 64,
            seed,
            sampler: SamplerOptions {
                method: Some("ddim".into()),
                steps: Some(steps),
                ..Default::default()
            },
            ..Default::default()
        };
        for i in 0..o.sample_warmup {
            family.sample_images(&request(1, i as u64))?;
        }
        let window = CpuWindow::start();
        let mut times = Vec::with_capacity(o.sample_calls);
        for i in 0..o.sample_calls.max(1) {
            let t0 = Instant::now();
            family.sample_images(&request(1, o.seed + i as u64))?;
            times.push(t0.elapsed().as_secs_f64());
        }
        let measured = if o.ddim_run {
            let t0 = Instant::now();
            let images = family.sample_images(&request(50, o.seed))?;
            let has_nan: bool = images.is_nan().any().into_scalar().elem::<bool>();
            if has_nan {
                return Err(Error::Config("bench ddpm-unet: DDIM produced NaN".into()));
            }
            Some(t0.elapsed().as_secs_f64())
        } else {
            None
        };
        let median = times_median(&times);
        let mut r = self.record("sample");
        r.insert("batch".into(), json!(64));
        r.insert("calls".into(), json!(times.len()));
        r.insert("warmup".into(), json!(o.sample_warmup));
        r.insert("sec_per_call_median".into(), json!(median));
        r.insert(
            "sec_per_call_min".into(),
            json!(times.iter().cloned().fold(f64::INFINITY, f64::min)),
        );
        r.insert("ddim50_sec_extrapolated".into(), json!(50.0 * median));
        r.insert("ddim50_sec_measured".into(), json!(measured));
        r.insert("ddpm1000_sec_extrapolated".into(), json!(1000.0 * median));
        r.insert(
            "images_per_sec_ddim50".into(),
            json!(64.0 / measured.unwrap_or(50.0 * median)),
        );
        r.insert("params".into(), json!(family.num_params()));
        r.insert(
            "method".into(),
            json!(
                "EMA weights on the inner (non-autodiff) backend; a call = a one-step DDIM \
                 sample at batch 64 (network + sampler arithmetic); DDIM eta=0, 50 steps, \
                 x0 clipped"
            ),
        );
        window.finish(&mut r);
        r.insert("max_rss_mb".into(), json!(peak_memory_mb()));
        (self.emit)(r);
        Ok(())
    }

    fn generate_gpt<F: Family<B>>(&mut self, family: &F) -> Result<()> {
        let o = self.options;
        for use_cache in [true, false] {
            let request = |seed: u64| TextRequest {
                prompt: "!".into(),
                tokens: o.gen_tokens,
                sampling: TokenSampling {
                    use_cache,
                    ..TokenSampling::default()
                },
                seed,
            };
            family.generate_text(&request(o.seed))?; // warm-up
            let window = CpuWindow::start();
            let mut times = Vec::with_capacity(o.gen_reps);
            for i in 0..o.gen_reps.max(1) {
                let t0 = Instant::now();
                let text = family.generate_text(&request(o.seed + i as u64))?;
                times.push(t0.elapsed().as_secs_f64());
                // The new tokens only, one ASCII character each here.
                debug_assert_eq!(text.chars().count(), o.gen_tokens);
            }
            let median = times_median(&times);
            let mut r = self.record("generate");
            r.insert("batch".into(), json!(1));
            r.insert("new_tokens".into(), json!(o.gen_tokens));
            r.insert("reps".into(), json!(times.len()));
            r.insert("sec_median".into(), json!(median));
            r.insert("tokens_per_sec".into(), json!(o.gen_tokens as f64 / median));
            r.insert("kv_cache".into(), json!(use_cache));
            r.insert("params".into(), json!(family.num_params()));
            r.insert(
                "method".into(),
                json!(if use_cache {
                    "key/value cache: one new token per forward inside the 64-token block; past it \
                     the window slides and the last 64 tokens are recomputed (learned absolute \
                     positions), the last block and the head on the newest position only; \
                     temperature 1, multinomial; starts from one token"
                } else {
                    "no cache: each new token re-runs the forward on the last <= 64 tokens, the \
                     last block and the head on the newest position only; temperature 1, \
                     multinomial; starts from one token"
                }),
            );
            window.finish(&mut r);
            r.insert("max_rss_mb".into(), json!(peak_memory_mb()));
            (self.emit)(r);
        }
        Ok(())
    }

    fn uniform(&self, shape: [usize; 4], low: f64, high: f64) -> Tensor<B, 4> {
        Tensor::random(shape, Distribution::Uniform(low, high), &self.device)
    }
}

/// What a training example is made of beyond "one example".
enum Extra {
    None,
    /// Tokens per example.
    Tokens(usize),
}

impl<B: AutodiffBackend> FamilyTask<B> for BenchTask<'_, B> {
    type Output = ();

    fn run<F: Family<B, Batch = ImageBatch<B>>>(mut self, family: F) -> Result<()> {
        let n = self.batch_size();
        let (low, high) = if self.preset.scaling == "signed" {
            (-1.0, 1.0)
        } else {
            (0.0, 1.0)
        };
        let batch = ImageBatch {
            images: self.uniform([n, 1, 28, 28], low, high),
            labels: Tensor::zeros([n], &self.device),
        };
        let pixel_model = matches!(self.config, ModelConfig::Gpt(_));
        let family = if self.options.train {
            let extra = if pixel_model {
                Extra::Tokens(28 * 28)
            } else {
                Extra::None
            };
            self.train(family, batch, extra)?
        } else {
            family
        };
        if self.options.sample && matches!(self.config, ModelConfig::Ddpm(_)) {
            self.sample_ddpm(&family)?;
        }
        Ok(())
    }

    fn run_text<F: Family<B, Batch = TokenBatch<B>>>(mut self, family: F) -> Result<()> {
        let n = self.batch_size();
        let block = match self.config {
            ModelConfig::Gpt(c) => c.block_size,
            _ => unreachable!("only GPTs read text"),
        };
        let vocab = match self.config {
            ModelConfig::Gpt(c) => c.vocab_size,
            _ => unreachable!(),
        };
        let tokens = |device: &B::Device| {
            Tensor::<B, 2>::random([n, block], Distribution::Uniform(0.0, vocab as f64), device)
                .floor()
                .clamp(0.0, (vocab - 1) as f64)
                .int()
        };
        let batch = TokenBatch {
            inputs: tokens(&self.device),
            targets: tokens(&self.device),
        };
        let family = if self.options.train {
            self.train(family, batch, Extra::Tokens(block))?
        } else {
            family
        };
        if self.options.sample {
            self.generate_gpt(&family)?;
        }
        Ok(())
    }
}

fn times_median(times: &[f64]) -> f64 {
    let mut s = times.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// The peer's summary keys: median, mean, min, 10th and 90th percentile.
fn summarize(times: &[f64], r: &mut Record) {
    let mut s = times.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len().max(1);
    let at = |i: usize| s.get(i.min(n - 1)).copied().unwrap_or(f64::NAN);
    r.insert("sec_per_step_median".into(), json!(times_median(times)));
    r.insert(
        "sec_per_step_mean".into(),
        json!(s.iter().sum::<f64>() / n as f64),
    );
    r.insert("sec_per_step_min".into(), json!(at(0)));
    r.insert(
        "sec_per_step_p10".into(),
        json!(at((0.1 * (n - 1) as f64) as usize)),
    );
    r.insert(
        "sec_per_step_p90".into(),
        json!(at((0.9 * (n - 1) as f64).ceil() as usize)),
    );
}

/// CPU accounting over a timed window, from `/proc` (Linux; elsewhere the
/// keys are left out): this process's utilisation in cores, and the share of
/// the machine's CPU time other processes took.
struct CpuWindow {
    started: Instant,
    own: Option<f64>,
    busy: Option<f64>,
}

impl CpuWindow {
    fn start() -> Self {
        Self {
            started: Instant::now(),
            own: own_cpu_seconds(),
            busy: machine_busy_seconds(),
        }
    }

    fn finish(self, r: &mut Record) {
        let wall = self.started.elapsed().as_secs_f64();
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        if let (Some(own0), Some(busy0), Some(own1), Some(busy1)) = (
            self.own,
            self.busy,
            own_cpu_seconds(),
            machine_busy_seconds(),
        ) {
            let own = own1 - own0;
            let others = ((busy1 - busy0) - own).max(0.0);
            r.insert("own_cpu_util".into(), json!(own / wall));
            r.insert("others_cpu_frac".into(), json!(others / (wall * cores)));
        }
    }
}

/// Clock ticks per second of `/proc` figures (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

fn own_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
}

fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = cpu
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: busy = all but idle and iowait.
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0.0);
    Some((total - idle) / TICKS)
}

/// Resets the kernel's peak-RSS mark so each model's figure is its own
/// (`/proc/self/clear_refs`, Linux ≥ 4.0; ignored where unavailable).
fn reset_peak_memory() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's peak resident memory in MiB (`VmHWM`), if the OS says.
fn peak_memory_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_percentiles() {
        assert_eq!(times_median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(times_median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        let mut r = Record::new();
        summarize(&[5.0, 1.0, 4.0, 2.0, 3.0], &mut r);
        assert_eq!(r["sec_per_step_min"], json!(1.0));
        assert_eq!(r["sec_per_step_mean"], json!(3.0));
        assert_eq!(r["sec_per_step_p90"], json!(5.0));
        assert_eq!(r["sec_per_step_p10"], json!(1.0));
    }
}
