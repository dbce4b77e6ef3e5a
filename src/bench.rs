//! `genzoo bench`: the reference models timed as the PyTorch peer times them
//! (see [`genzoo_train::bench`]), printed as a table or as JSON lines.

use burn::tensor::backend::AutodiffBackend;
use clap::Args;
use genzoo_core::backend::BackendTask;
use genzoo_core::{BackendKind, Error, Result};
use genzoo_train::bench::{BenchOptions, REFERENCE_MODELS, Record, bench_model};

/// Options of `genzoo bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A reference model (vae-mlp, dcgan-28, ddpm-unet, gpt-char, gpt-pixel),
    /// several separated by commas, or `all`.
    #[arg(long, default_value = "all")]
    model: String,
    /// Timed training steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed warm-up steps before them.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// CPU threads (default: all cores). Sets the thread pool the CPU backend uses.
    #[arg(long)]
    pub(crate) threads: Option<usize>,
    /// Override the reference batch size.
    #[arg(long)]
    batch: Option<usize>,
    /// Print one JSON object per measurement (the PyTorch peer's keys) instead of a table.
    #[arg(long)]
    json: bool,
    /// Skip the training-step measurements.
    #[arg(long)]
    no_train: bool,
    /// Skip sampling (ddpm-unet) and generation (gpt-char).
    #[arg(long)]
    no_sample: bool,
    /// Timed DDPM network calls.
    #[arg(long, default_value_t = 20)]
    sample_calls: usize,
    /// Skip the measured 50-step DDIM run.
    #[arg(long)]
    no_ddim_run: bool,
    /// Tokens per gpt-char generation.
    #[arg(long, default_value_t = 256)]
    gen_tokens: usize,
    /// Timed gpt-char generations.
    #[arg(long, default_value_t = 5)]
    gen_reps: usize,
    /// Seed of synthetic data, initialisation and sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
}

/// Runs `genzoo bench`.
pub fn bench(args: BenchArgs) -> Result<()> {
    let models: Vec<String> = if args.model == "all" {
        REFERENCE_MODELS.iter().map(|m| m.to_string()).collect()
    } else {
        args.model
            .split(',')
            .map(|m| m.trim().to_string())
            .collect()
    };
    for m in &models {
        if !REFERENCE_MODELS.contains(&m.as_str()) {
            return Err(Error::Config(format!(
                "bench: unknown model '{m}'; one of {}, or all",
                REFERENCE_MODELS.join(", ")
            )));
        }
    }
    let options = BenchOptions {
        steps: args.steps.max(1),
        warmup: args.warmup,
        batch: args.batch,
        train: !args.no_train,
        sample: !args.no_sample,
        sample_calls: args.sample_calls.max(1),
        ddim_run: !args.no_ddim_run,
        gen_tokens: args.gen_tokens.max(1),
        gen_reps: args.gen_reps.max(1),
        seed: args.seed,
        threads: rayon::current_num_threads(),
        backend: args.backend.to_string(),
        ..BenchOptions::default()
    };
    eprintln!(
        "[bench] genzoo {}, backend {}, {} threads",
        env!("CARGO_PKG_VERSION"),
        options.backend,
        options.threads
    );
    let suite = Suite {
        models,
        options,
        json: args.json,
    };
    crate::cli::with_backend_on_pool(args.backend, suite)
}

struct Suite {
    models: Vec<String>,
    options: BenchOptions,
    json: bool,
}

impl BackendTask for Suite {
    type Output = ();
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Result<()> {
        let json = self.json;
        let mut emit = |r: Record| {
            if json {
                println!("{}", serde_json::Value::Object(r));
            } else {
                println!("{}", human(&r));
            }
        };
        for m in &self.models {
            bench_model::<B>(m, &self.options, &device, &mut emit)?;
        }
        Ok(())
    }
}

/// One line a person reads.
fn human(r: &Record) -> String {
    let num = |k: &str| r.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
    let text = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
    let others = r
        .get("others_cpu_frac")
        .and_then(|v| v.as_f64())
        .map(|f| format!(" others={:.0}%", 100.0 * f))
        .unwrap_or_default();
    let memory = format!(" peak={:.0} MiB", num("max_rss_mb"));
    match text("task").as_str() {
        "train" => {
            let tokens = r
                .get("tokens_per_sec")
                .and_then(|v| v.as_f64())
                .map(|t| format!(" tokens/s={t:.0}"))
                .unwrap_or_default();
            format!(
                "{:<10} train    threads={} batch={:<4} median={:9.2} ms/step examples/s={:9.1}{tokens}{memory}{others}",
                text("model"),
                num("threads"),
                num("batch"),
                1e3 * num("sec_per_step_median"),
                num("examples_per_sec"),
            )
        }
        "sample" => format!(
            "{:<10} sample   threads={} batch=64   call={:8.2} ms  DDIM-50 measured={:.2} s (extrapolated {:.2} s){memory}{others}",
            text("model"),
            num("threads"),
            1e3 * num("sec_per_call_median"),
            num("ddim50_sec_measured"),
            num("ddim50_sec_extrapolated"),
        ),
        _ => format!(
            "{:<10} generate threads={} kv_cache={:<5} {} tokens in {:.3} s: {:.0} tokens/s{memory}{others}",
            text("model"),
            num("threads"),
            r.get("kv_cache").and_then(|v| v.as_bool()).unwrap_or(false),
            num("new_tokens"),
            num("sec_median"),
            num("tokens_per_sec"),
        ),
    }
}
