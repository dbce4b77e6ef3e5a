//! The `genzoo` command line: `train` and `resume` (in `train.rs`),
//! `sample` (`sample.rs`), `export` (`export.rs`), `eval` and `evaluator` (`eval.rs`), `compare`
//! and `bench` (their own files), `info`, `plot` and `list` (here).

use std::path::{Path, PathBuf};

use burn::tensor::backend::AutodiffBackend;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use genzoo_core::backend::{BackendTask, CpuAutodiff, CpuDevice, with_backend};
use genzoo_core::{BackendKind, Error, Family, ImageBatch, Result, TokenBatch};
use genzoo_models::presets;
use genzoo_models::presets::{FamilyTask, with_family};
use genzoo_train::checkpoint::{Manifest, find_checkpoint, latest_good};
use genzoo_train::plot;
use genzoo_train::{RunConfig, RunDir};

mod eval;
mod export;
mod interrupt;
mod sample;
mod train;

use eval::{EvalArgs, EvaluatorCommand};
pub(crate) use eval::{EvalTarget, Evaluation, evaluate_run, evaluate_text_run, write_eval_json};
use sample::SampleArgs;
pub(crate) use train::start_training;
use train::{Overrides, TrainArgs};

/// Train and compare generative models (VAE, GAN, DDPM, GPT) on burn.
#[derive(Parser, Debug)]
#[command(name = "genzoo", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train a preset (see `genzoo list`).
    Train(TrainArgs),
    /// Continue an interrupted run from its newest good checkpoint.
    Resume {
        /// The run directory.
        run: PathBuf,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Draw samples from a trained run into a PNG grid (or files: --images-dir).
    Sample(SampleArgs),
    /// Write what code outside genzoo reads: a dataset's images as PNG
    /// files (for FID tools, beside `sample --images-dir`), or a run's
    /// weights as safetensors in PyTorch's layout.
    #[command(subcommand)]
    Export(export::ExportCommand),
    /// Evaluate a trained run: FID, KID, IS, precision/recall on the evaluator's
    /// features, and the likelihood in bits/dim (a text model: its loss over
    /// the whole validation split); writes eval.json into the run.
    Eval(EvalArgs),
    /// Train and evaluate every run of an experiment file and write report.md, report.png and report.svg.
    Compare {
        /// The experiment file (see experiments/mnist-families.toml).
        file: PathBuf,
        /// Output directory (default: runs/<experiment name>).
        #[arg(long)]
        out: Option<PathBuf>,
        #[arg(long, default_value = "cpu")]
        backend: BackendKind,
    },
    /// The per-dataset classifier whose features the sample metrics use.
    #[command(subcommand)]
    Evaluator(EvaluatorCommand),
    /// Time training steps, sampling and generation of the reference models
    /// (the PyTorch peer's benchmark, same keys with --json).
    Bench(crate::bench::BenchArgs),
    /// Show a run's model, parameters, progress and last metrics.
    Info {
        /// The run directory.
        #[arg(long)]
        run: PathBuf,
    },
    /// Plot the losses of one run (into its curves.svg) or of several runs
    /// overlaid (into --out): a panel per loss, training and held-out lines.
    Plot {
        /// Run directories.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// The SVG file to write (default for one run: RUN/curves.svg).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The quantities to plot, by name without the split prefix
        /// (`kl,bits_per_dim`); default: the losses.
        #[arg(long, value_delimiter = ',')]
        metrics: Vec<String>,
    },
    /// List the model families and presets.
    List,
}

impl Cli {
    /// Parses the process's arguments, as `Cli::parse` does except that an
    /// option's value may be a negative number (`--lr -1`, `--steps -3`):
    /// clap would otherwise read it as an unknown flag `-1` and advise
    /// `-- -1`, which makes it a positional argument. The value goes to the
    /// option's own check instead, which says what is allowed.
    pub fn parse_arguments() -> Cli {
        let matches = with_negative_values(Cli::command()).get_matches();
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
    }
}

fn with_negative_values(command: clap::Command) -> clap::Command {
    command
        .mut_args(|arg| arg.allow_negative_numbers(true))
        .mut_subcommands(with_negative_values)
}

/// The exit status for a failed command: 128 + the signal's number for a
/// run a signal interrupted (what a shell reports of a process the signal
/// ended, so scripts see the same), 1 otherwise.
pub fn exit_code(error: &Error) -> i32 {
    match (error, interrupt::received()) {
        (Error::Interrupted { .. }, Some(signal)) => 128 + signal,
        _ => 1,
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let threads = match &cli.command {
        Command::Bench(args) => args.threads,
        _ => None,
    };
    // Before any tensor work: the pool's size (bench --threads) and its
    // threads' handling of subnormal floats.
    genzoo_core::backend::prepare_cpu(threads)?;
    match cli.command {
        Command::Train(args) => train::train(args),
        Command::Resume { run, overrides } => train::resume(run, overrides),
        Command::Sample(args) => sample::sample(args),
        Command::Export(command) => export::export(command),
        Command::Eval(args) => eval::eval(args),
        Command::Compare { file, out, backend } => crate::compare::compare(&file, out, backend),
        Command::Evaluator(command) => eval::evaluator(command),
        Command::Bench(args) => crate::bench::bench(args),
        Command::Info { run } => info(&run),
        Command::Plot { runs, out, metrics } => plot(&runs, out, &metrics),
        Command::List => {
            list();
            Ok(())
        }
    }
}

/// [`with_backend`], run on a thread of the CPU backend's pool when
/// `backend` is the CPU one ([`genzoo_core::backend::on_cpu_pool`]: the
/// kernels then start where they are asked for instead of being handed to
/// the pool, twice as fast for batch-1 generation). Only for tasks that
/// never wait on other threads doing tensor work.
pub(crate) fn with_backend_on_pool<T>(backend: BackendKind, task: T) -> Result<T::Output>
where
    T: BackendTask + Send,
    T::Output: Send,
{
    match backend {
        BackendKind::Cpu => genzoo_core::backend::on_cpu_pool(|| with_backend(backend, task)),
        _ => with_backend(backend, task),
    }
}

/// A run's directory, config, and its checkpoint `which` (`latest`, `best`
/// or a step; see [`find_checkpoint`]).
fn load_run(run_path: &Path, which: &str) -> Result<(RunDir, RunConfig, PathBuf, Manifest)> {
    let run = RunDir::open(run_path)?;
    let config = run.load_config()?;
    let identity = config.identity()?;
    let (dir, manifest) = find_checkpoint(&run.checkpoints_dir(), &identity, which, |w| {
        eprintln!("{w}")
    })?;
    Ok((run, config, dir, manifest))
}

fn info(run_path: &Path) -> Result<()> {
    let run = RunDir::open(run_path)?;
    let config = run.load_config()?;
    struct Count;
    impl<B: AutodiffBackend> FamilyTask<B> for Count {
        type Output = usize;
        fn run<F: Family<B, Batch = ImageBatch<B>>>(self, family: F) -> Result<usize> {
            Ok(family.num_params())
        }
        fn run_text<F: Family<B, Batch = TokenBatch<B>>>(self, family: F) -> Result<usize> {
            Ok(family.num_params())
        }
    }
    // Straight on the CPU backend, not through `with_backend`: that would
    // compile this for every backend of the build too.
    let params = with_family::<CpuAutodiff, _>(&config.model, &CpuDevice::default(), Count)?;
    println!("run:        {}", run.root().display());
    println!(
        "preset:     {} ({} family)",
        config.preset,
        config.model.family()
    );
    println!("parameters: {params}");
    match (&config.data.text, config.model.reads_text()) {
        (Some(text), true) => println!(
            "text:       {} ({} tokens)",
            text.display(),
            if config.data.bytes {
                "byte"
            } else {
                "character"
            }
        ),
        _ => println!("dataset:    {}", config.data.dataset),
    }
    if let Some(source) = &config.train.init_from {
        println!("init from:  {}", source.display());
    }
    let identity = config.identity()?;
    // A checkpoint this genzoo cannot use (another format, a changed
    // config) is a finding too: the rest of the run is still shown.
    match latest_good(&run.checkpoints_dir(), &identity, |w| eprintln!("{w}")) {
        Ok(Some((dir, m))) => println!(
            "checkpoint: step {} of {} ({})",
            m.step,
            m.total_steps,
            dir.display()
        ),
        Ok(None) => println!("checkpoint: none yet"),
        Err(e) => println!("checkpoint: unusable: {e}"),
    }
    let best = run.checkpoints_dir().join(genzoo_train::checkpoint::BEST);
    if best.is_dir() {
        // info reports what it finds: a damaged best checkpoint is one more finding.
        match find_checkpoint(&run.checkpoints_dir(), &identity, "best", |_| {}) {
            Ok((_, m)) => {
                if let Some(b) = m.best {
                    println!(
                        "best:       {} {:.4} at step {} ({})",
                        b.metric,
                        b.value,
                        b.step,
                        best.display()
                    );
                }
            }
            Err(e) => println!("best:       unreadable: {e}"),
        }
    }
    if run.metrics_file().exists() {
        let records = genzoo_train::logger::read_jsonl(&run.metrics_file())?;
        let mut last: Vec<(String, String)> = Vec::new();
        for r in &records {
            for (k, v) in r {
                if k == "step" {
                    continue;
                }
                let step = r.get("step").and_then(|s| s.as_u64()).unwrap_or(0);
                let text = format!(
                    "{} (step {step})",
                    v.as_f64().map_or(v.to_string(), |f| format!("{f:.4}"))
                );
                match last.iter_mut().find(|(n, _)| n == k) {
                    Some((_, t)) => *t = text,
                    None => last.push((k.clone(), text)),
                }
            }
        }
        println!("last metrics:");
        for (k, v) in last {
            println!("  {k:<24} {v}");
        }
    }
    Ok(())
}

/// Refuses an output name whose extension names another format than the
/// one written (`grid.jpg` for a PNG file): a file whose name and contents
/// disagree opens in some programs and not in others. A name without an
/// extension is written as given.
///
/// ```text
/// check_output_extension(Path::new("grid.jpg"), "png", "a sample grid")
///   → "grid.jpg: a sample grid is a .png file: give --out a name ending in .png"
/// ```
fn check_output_extension(path: &Path, extension: &str, what: &str) -> Result<()> {
    match path.extension().and_then(|e| e.to_str()) {
        Some(given) if !given.eq_ignore_ascii_case(extension) => Err(Error::Config(format!(
            "{}: {what} is a .{extension} file: give --out a name ending in .{extension}",
            path.display()
        ))),
        _ => Ok(()),
    }
}

fn plot(runs: &[PathBuf], out: Option<PathBuf>, metrics: &[String]) -> Result<()> {
    let out = match (out, runs) {
        (Some(out), _) => {
            check_output_extension(&out, "svg", "a plot")?;
            out
        }
        (None, [run]) if metrics.is_empty() => RunDir::open(run)?.curves_file(),
        (None, [_]) => {
            return Err(Error::Config(
                "plotting chosen --metrics needs --out FILE.svg (the run's curves.svg holds its losses)".into(),
            ));
        }
        (None, _) => {
            return Err(Error::Config(
                "plotting several runs needs --out FILE.svg".into(),
            ));
        }
    };
    let mut curves = Vec::new();
    for run in runs {
        let metrics = RunDir::open(run)?.metrics_file();
        if !metrics.exists() {
            return Err(Error::Config(format!(
                "{}: no metrics.jsonl (has the run logged a step?)",
                run.display()
            )));
        }
        let label = if runs.len() == 1 {
            String::new()
        } else {
            run.display().to_string()
        };
        curves.push((label, genzoo_train::logger::read_jsonl(&metrics)?));
    }
    let panels = if metrics.is_empty() {
        plot::curve_panels(&curves)
    } else {
        plot::metric_panels(&curves, metrics)
    };
    if let Some(missing) = panels.iter().find(|p| p.series.is_empty()) {
        let mut logged: Vec<String> = curves
            .iter()
            .flat_map(|(_, records)| plot::logged_names(records, &["train", "test", "val"]))
            .collect();
        logged.sort();
        logged.dedup();
        return Err(Error::Config(format!(
            "no run logged '{}' (logged: {})",
            missing.title,
            logged.join(", ")
        )));
    }
    plot::write_svg(&panels, &out)?;
    println!("wrote {}", out.display());
    Ok(())
}

fn list() {
    println!("{:<12} {:<8} description", "preset", "family");
    for p in presets() {
        println!("{:<12} {:<8} {}", p.name, p.model.family(), p.description);
    }
}
