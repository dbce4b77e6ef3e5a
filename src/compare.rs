//! `genzoo compare`: train every run of an experiment file with the same
//! data, budget and seeds (skipping finished runs, resuming interrupted
//! ones), evaluate each the same way, and write `report.md`, `report.png`
//! and `report.svg`.

use std::path::{Path, PathBuf};

use genzoo_core::{BackendKind, Error, Result};
use genzoo_train::RunConfig;
use genzoo_train::experiment::{
    EvalCheckpoint, Experiment, RunResult, report_image, report_markdown,
};
use genzoo_train::logger::read_jsonl;
use genzoo_train::plot::{Panel, Record, curve_panels, metric_points, write_svg};
use serde::{Deserialize, Serialize};

use crate::cli::{
    EvalTarget, Evaluation, evaluate_run, evaluate_text_run, start_training, write_eval_json,
};

/// What `compare` remembers about a (run, seed) between calls.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct CompareState {
    /// Training is complete (the budget is spent).
    done: bool,
    /// Seconds in training steps over every call (the run's checkpoints'
    /// record, so a call killed after a checkpoint counts too).
    train_seconds: f64,
    /// The run's step.
    steps: u64,
    /// Trainable parameters.
    params: usize,
    /// The run's step when eval.json was written (None: not evaluated).
    evaluated_step: Option<u64>,
    /// Which of its checkpoints eval.json describes (absent from the
    /// records of earlier versions, which evaluated the latest).
    evaluated_checkpoint: EvalCheckpoint,
    /// That checkpoint's step.
    evaluated_checkpoint_step: Option<u64>,
}

fn read_state(dir: &Path) -> CompareState {
    std::fs::read_to_string(dir.join("compare.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn write_state(dir: &Path, state: &CompareState) -> Result<()> {
    let path = dir.join("compare.json");
    let text = serde_json::to_string_pretty(state).map_err(|e| Error::Config(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
}

/// The run's config: preset, overrides, then the experiment's dataset, seed and budget.
fn run_config(experiment: &Experiment, index: usize, seed: u64) -> Result<RunConfig> {
    let spec = &experiment.runs[index];
    let mut config = RunConfig::from_preset(&spec.preset)?;
    if !spec.overrides.is_empty() {
        let text = toml::to_string(&spec.overrides).map_err(|e| Error::Config(e.to_string()))?;
        config = config.merge_toml(&text, &format!("run '{}' overrides", spec.name))?;
    }
    match &experiment.text {
        Some(text) => {
            config.data.text = Some(text.clone());
            // Byte-level for every run, or else as each run's overrides say.
            config.data.bytes |= experiment.bytes;
        }
        None => {
            config.data.dataset = experiment.dataset.clone();
            config.data.data_dir = experiment.data_dir.clone();
            config.data.limit = experiment.limit;
            config.data.image_size = experiment.image_size;
            config.data.hflip |= experiment.hflip;
        }
    }
    // What this function sets for every run is what set_by_the_experiment
    // refuses in a run's overrides: the two lists go together.
    config.train.seed = seed;
    let b = &experiment.budget;
    let t = &mut config.train;
    (t.steps, t.epochs, t.minutes) = (b.steps, b.epochs, b.minutes);
    Ok(config)
}

/// Builds every run's config before anything trains, so that a misspelt
/// preset or override in the last run does not surface hours in.
fn check_runs(experiment: &Experiment) -> Result<()> {
    for (index, spec) in experiment.runs.iter().enumerate() {
        if let Some((key, owner)) = set_by_the_experiment(&spec.overrides) {
            return Err(Error::Config(format!(
                "run '{}': its overrides (or sweep) set {key}, which the experiment sets for \
                 every run ({owner}) and would replace: give it there, or in an experiment of its own",
                spec.name
            )));
        }
        let config = run_config(experiment, index, experiment.seeds[0])
            .map_err(|e| Error::Config(format!("run '{}': {e}", spec.name)))?;
        config.train.validate()?;
        config
            .model
            .check_micro_batches(config.train.micro_batches)?;
        if experiment.eval.checkpoint == EvalCheckpoint::Best && config.train.keep_best.is_none() {
            return Err(Error::Config(format!(
                "run '{}': [eval] checkpoint = \"best\" evaluates each run's best checkpoint by its \
                 held-out metric, and this one keeps none: add keep_best to its overrides \
                 (overrides = {{ train = {{ keep_best = \"test_loss\" }} }}, a held-out metric in its metrics.jsonl)",
                spec.name
            )));
        }
        let wrong = match (config.model.reads_text(), &experiment.text) {
            (false, None) => {
                config.data.image_source()?;
                None
            }
            (true, Some(_)) if config.data.hflip => {
                Some("a text model, and hflip (in its overrides) flips images")
            }
            (true, Some(_)) => None,
            (true, None) => Some(
                "a text model and this experiment gives a dataset (a text experiment gives \
                 text = \"FILE\")",
            ),
            (false, Some(_)) => Some("an image model and this experiment gives text"),
        };
        if let Some(why) = wrong {
            return Err(Error::Config(format!(
                "run '{}': {} is {why}",
                spec.name, spec.preset
            )));
        }
    }
    Ok(())
}

/// The first key of `overrides` that [`run_config`] replaces with the
/// experiment's own value, with where the experiment sets it.
fn set_by_the_experiment(overrides: &toml::Table) -> Option<(String, &'static str)> {
    const OWNED: [(&str, &str, &str); 9] = [
        ("train", "seed", "seeds"),
        ("train", "steps", "[budget]"),
        ("train", "epochs", "[budget]"),
        ("train", "minutes", "[budget]"),
        ("data", "dataset", "dataset"),
        ("data", "data_dir", "data_dir"),
        ("data", "limit", "limit"),
        ("data", "image_size", "image_size"),
        ("data", "text", "text"),
    ];
    OWNED.iter().find_map(|(section, key, owner)| {
        overrides
            .get(*section)
            .and_then(|t| t.as_table())
            .is_some_and(|t| t.contains_key(*key))
            .then(|| (format!("{section}.{key}"), *owner))
    })
}

/// The training-loss series of a run (its family's main loss).
fn loss_curve(dir: &Path) -> Vec<f64> {
    let Ok(records) = read_jsonl(&dir.join("metrics.jsonl")) else {
        return Vec::new();
    };
    let key = ["train_loss", "train_neg_elbo", "train_g_loss"]
        .into_iter()
        .find(|k| records.iter().any(|r| r.contains_key(*k)));
    match key {
        Some(k) => metric_points(&records, k)
            .into_iter()
            .map(|(_, v)| v)
            .collect(),
        None => Vec::new(),
    }
}

/// Runs the experiment in `path`, writing into `out` (default `runs/<name>`).
pub fn compare(path: &Path, out: Option<PathBuf>, backend: BackendKind) -> Result<()> {
    let experiment = Experiment::load(path)?;
    check_runs(&experiment).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let out = out.unwrap_or_else(|| PathBuf::from("runs").join(&experiment.name));
    std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
    let mut results = Vec::new();
    for (index, spec) in experiment.runs.iter().enumerate() {
        for &seed in &experiment.seeds {
            let dir = Experiment::run_dir(&out, &spec.name, seed);
            let mut state = read_state(&dir);
            let config = run_config(&experiment, index, seed)?;
            let batch_size = config.train.batch_size;
            let has_likelihood = config.model.check_bits_per_dim();
            if state.done {
                eprintln!(
                    "{} seed {seed}: trained ({} steps), skipping",
                    spec.name, state.steps
                );
            } else {
                let resume = dir.join("checkpoints").is_dir();
                eprintln!(
                    "{} seed {seed}: {} {}",
                    spec.name,
                    if resume { "resuming" } else { "training" },
                    spec.preset
                );
                // Without a checkpoint there is nothing to keep: a directory left by a
                // call that died before its first checkpoint is started afresh.
                let summary = start_training(config, &dir, resume, !resume, backend).map_err(
                    |e| match e {
                        // The experiment goes on from this run, not the run alone.
                        Error::Interrupted { step, total, .. } => Error::Interrupted {
                            step,
                            total,
                            resume: continue_command(path, &out, backend),
                        },
                        e => e,
                    },
                )?;
                state.train_seconds = summary.total_train_seconds;
                state.steps = summary.step;
                state.params = summary.params;
                state.done = true;
                write_state(&dir, &state)?;
            }
            let which = experiment.eval.checkpoint;
            let up_to_date = state.evaluated_step == Some(state.steps)
                && state.evaluated_checkpoint == which
                && dir.join("eval.json").exists();
            let metrics = if up_to_date {
                let text = std::fs::read_to_string(dir.join("eval.json"))
                    .map_err(|e| Error::io(&dir, e))?;
                let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
                    Error::Config(format!("{}: {e}", dir.join("eval.json").display()))
                })?;
                value
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                // Found and verified once for every evaluation of this run.
                let target = EvalTarget::load(&dir, which.name())?;
                let (evaluated, figures) = if experiment.text.is_some() {
                    let found = evaluate_text_run(&target, None, backend)?;
                    let figures = found.figures.clone();
                    (Some(found), figures)
                } else {
                    let mut figures = Vec::new();
                    let mut evaluated: Option<Evaluation> = None;
                    let mut evaluate = |metrics: &[String], n, terms| -> Result<()> {
                        let sampler = Default::default();
                        let found =
                            evaluate_run(&target, metrics, n, terms, seed, &sampler, backend)?;
                        figures.extend(found.figures.iter().cloned());
                        evaluated = Some(found);
                        Ok(())
                    };
                    let sample_metrics: Vec<String> = experiment
                        .eval
                        .metrics
                        .iter()
                        .filter(|m| *m != "nll")
                        .cloned()
                        .collect();
                    if !sample_metrics.is_empty() {
                        evaluate(&sample_metrics, experiment.eval.samples, None)?;
                    }
                    if experiment.eval.metrics.iter().any(|m| m == "nll") {
                        // Not every family has a likelihood (GANs have none): the cell stays empty.
                        match &has_likelihood {
                            Ok(()) => evaluate(
                                &["nll".to_string()],
                                experiment.eval.nll_images,
                                experiment.eval.nll_terms,
                            )?,
                            Err(e) => eprintln!("{} seed {seed}: no bits/dim ({e})", spec.name),
                        }
                    }
                    (evaluated, figures)
                };
                // One eval.json with every evaluation's figures.
                write_eval_json(&dir, evaluated.as_ref(), &figures)?;
                state.evaluated_step = Some(state.steps);
                state.evaluated_checkpoint = which;
                state.evaluated_checkpoint_step = evaluated.map(|e| e.step);
                write_state(&dir, &state)?;
                figures.into_iter().collect()
            };
            results.push(RunResult {
                run: spec.name.clone(),
                preset: spec.preset.clone(),
                seed,
                params: state.params,
                steps: state.steps,
                checkpoint_step: state.evaluated_checkpoint_step.unwrap_or(state.steps),
                train_seconds: state.train_seconds,
                examples_per_sec: state.steps as f64 * batch_size as f64
                    / state.train_seconds.max(1e-9),
                metrics,
                dir,
            });
        }
    }
    let report = report_markdown(&experiment, &results);
    let md = out.join("report.md");
    std::fs::write(&md, &report).map_err(|e| Error::io(&md, e))?;
    let mut wrote = vec![md];
    // Text runs have no sample grids to lay out.
    if experiment.text.is_none() {
        let first_seed = experiment.seeds[0];
        let panels: Vec<(PathBuf, Vec<f64>)> = experiment
            .runs
            .iter()
            .map(|r| {
                let dir = Experiment::run_dir(&out, &r.name, first_seed);
                (dir.join("samples/final.png"), loss_curve(&dir))
            })
            .collect();
        report_image(&panels, &out.join("report.png"))?;
        wrote.push(out.join("report.png"));
    }
    // Runs that logged no loss leave nothing to plot (and report.md stands).
    let curves = report_curves(&experiment, &out);
    if !curves.is_empty() {
        wrote.push(out.join("report.svg"));
        write_svg(&curves, &out.join("report.svg"))?;
    }
    println!("{report}");
    let wrote: Vec<String> = wrote.iter().map(|p| p.display().to_string()).collect();
    println!("wrote {}", wrote.join(", "));
    Ok(())
}

/// The command that goes on with an interrupted comparison.
fn continue_command(file: &Path, out: &Path, backend: BackendKind) -> String {
    let mut command = format!("genzoo compare {} --out {}", file.display(), out.display());
    if backend != BackendKind::Cpu {
        command += &format!(" --backend {backend}");
    }
    command
}

/// `report.svg`'s panels: each run's losses (`<run>: <loss>`), a training
/// and a held-out line per seed.
fn report_curves(experiment: &Experiment, out: &Path) -> Vec<Panel> {
    let mut panels = Vec::new();
    for spec in &experiment.runs {
        let seeds: Vec<(String, Vec<Record>)> = experiment
            .seeds
            .iter()
            .filter_map(|&seed| {
                let dir = Experiment::run_dir(out, &spec.name, seed);
                let records = read_jsonl(&dir.join("metrics.jsonl")).ok()?;
                Some((format!("seed {seed}"), records))
            })
            .collect();
        panels.extend(curve_panels(&seeds).into_iter().map(|panel| Panel {
            title: format!("{}: {}", spec.name, panel.title),
            ..panel
        }));
    }
    panels
}

#[cfg(test)]
mod tests {
    use super::*;
    use genzoo_train::experiment::RunSpec;

    #[test]
    fn the_shipped_experiments_and_their_runs_build() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
        let mut files = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let experiment = Experiment::load(&path).unwrap();
                check_runs(&experiment).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                files += 1;
            }
        }
        assert!(files >= 2, "{files} experiment files in {}", dir.display());
    }

    #[test]
    fn a_bad_run_anywhere_is_found_before_training() {
        let experiment: Experiment = toml::from_str(
            r#"
            name = "t"
            dataset = "mnist"
            seeds = [0]
            [budget]
            steps = 3
            [[runs]]
            name = "vae"
            preset = "vae-mlp"
            [[runs]]
            name = "gan"
            preset = "dcgan-82"
            "#,
        )
        .unwrap();
        let err = check_runs(&experiment).unwrap_err().to_string();
        assert!(
            err.contains("run 'gan'") && err.contains("dcgan-82"),
            "{err}"
        );
        let mut typo = experiment.clone();
        typo.runs[1].preset = "dcgan-28".into();
        typo.runs[1].overrides = toml::from_str("train = { batch_sise = 8 }").unwrap();
        let err = check_runs(&typo).unwrap_err().to_string();
        assert!(err.contains("batch_sise"), "{err}");
        typo.runs[1].overrides = toml::Table::new();
        check_runs(&typo).unwrap();
        typo.dataset = "mnsit".into();
        assert!(check_runs(&typo).unwrap_err().to_string().contains("mnsit"));
    }

    #[test]
    fn overrides_of_what_the_experiment_sets_for_every_run_are_refused() {
        let mut experiment: Experiment = toml::from_str(
            r#"
            name = "t"
            dataset = "mnist"
            [budget]
            steps = 3
            [[runs]]
            name = "vae"
            preset = "vae-mlp"
            overrides = { train = { steps = 50 } }
            "#,
        )
        .unwrap();
        let err = check_runs(&experiment).unwrap_err().to_string();
        assert!(
            err.contains("run 'vae'") && err.contains("train.steps") && err.contains("[budget]"),
            "{err}"
        );
        // A swept seed, which the experiment's seeds would replace.
        let swept = RunSpec {
            overrides: toml::Table::new(),
            sweep: [("train.seed".to_string(), vec![toml::Value::Integer(1)])].into(),
            ..experiment.runs[0].clone()
        };
        experiment.runs = swept.expand().unwrap();
        let err = check_runs(&experiment).unwrap_err().to_string();
        assert!(err.contains("train.seed") && err.contains("seeds"), "{err}");
        experiment.runs[0].overrides = toml::from_str("train = { lr = 0.01 }").unwrap();
        check_runs(&experiment).unwrap();
    }

    #[test]
    fn text_and_image_runs_stay_in_their_own_experiments() {
        let mut experiment: Experiment = toml::from_str(
            r#"
            name = "t"
            text = "poem.txt"
            [budget]
            steps = 3
            [[runs]]
            name = "gpt"
            preset = "gpt-char"
            [[runs]]
            name = "vae"
            preset = "vae-mlp"
            "#,
        )
        .unwrap();
        let err = check_runs(&experiment).unwrap_err().to_string();
        assert!(
            err.contains("run 'vae'") && err.contains("an image model"),
            "{err}"
        );
        experiment.runs.pop();
        check_runs(&experiment).unwrap();
        let config = run_config(&experiment, 0, 4).unwrap();
        assert_eq!(config.data.text, Some(PathBuf::from("poem.txt")));
        assert_eq!((config.train.seed, config.train.steps), (4, Some(3)));
        experiment.text = None;
        experiment.dataset = "mnist".into();
        let err = check_runs(&experiment).unwrap_err().to_string();
        assert!(
            err.contains("a text model") && err.contains("text = "),
            "{err}"
        );
    }

    #[test]
    fn evaluating_best_checkpoints_needs_every_run_to_keep_one() {
        let mut experiment: Experiment = toml::from_str(
            r#"
            name = "t"
            dataset = "mnist"
            [budget]
            steps = 3
            [eval]
            checkpoint = "best"
            [[runs]]
            name = "vae"
            preset = "vae-mlp"
            overrides = { train = { keep_best = "test_neg_elbo" } }
            [[runs]]
            name = "ddpm"
            preset = "ddpm-unet"
            "#,
        )
        .unwrap();
        let err = check_runs(&experiment).unwrap_err().to_string();
        assert!(
            err.contains("run 'ddpm'") && err.contains("keep_best"),
            "{err}"
        );
        experiment.runs[1].overrides =
            toml::from_str("train = { keep_best = \"test_loss\" }").unwrap();
        check_runs(&experiment).unwrap();
        experiment.eval.checkpoint = EvalCheckpoint::Latest;
        experiment.runs[1].overrides = toml::Table::new();
        check_runs(&experiment).unwrap();
    }
}
