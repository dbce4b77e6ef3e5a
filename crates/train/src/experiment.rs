//! Experiments: several runs (preset + overrides) on one dataset with one
//! budget, one set of seeds and one evaluation, summarised in one table.
//! This module reads the experiment file and writes the report; the
//! `genzoo compare` command trains and evaluates the runs.
//!
//! ```toml
//! name = "mnist-families"
//! dataset = "mnist"
//! seeds = [0, 1]
//! [budget]
//! steps = 500          # or: epochs = 1, or: minutes = 10
//! [eval]
//! samples = 1000
//! metrics = ["fid", "kid", "is", "pr", "nll"]
//! checkpoint = "latest"  # or "best": each run's keep_best checkpoint
//! [[runs]]
//! name = "vae"
//! preset = "vae-mlp"
//! [[runs]]
//! name = "ddpm"
//! preset = "ddpm-unet"
//! overrides = { train = { batch_size = 64 } }
//! [[runs]]                # expanded into gan-lr=0.0002 and gan-lr=0.0001
//! name = "gan"
//! preset = "dcgan-28"
//! sweep = { "train.lr" = [2e-4, 1e-4] }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use genzoo_core::{Error, Result};
use image::{Rgb, RgbImage};
use serde::{Deserialize, Serialize};

/// An experiment file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Name (the output directory's default name).
    pub name: String,
    /// `mnist`, `fashion-mnist`, `cifar-10`, `idx:<DIR>` or `folder:<DIR>`, for
    /// every run; empty in a text experiment.
    #[serde(default)]
    pub dataset: String,
    /// A text file (UTF-8, or any file with `bytes`) every run (a text
    /// model) trains on, instead of a dataset; runs are evaluated by their
    /// loss over its whole validation split.
    #[serde(default)]
    pub text: Option<PathBuf>,
    /// Byte-level tokens instead of the text's characters, for every run
    /// (otherwise each run's own `data.bytes`, characters by default).
    #[serde(default)]
    pub bytes: bool,
    /// Directory with the dataset's files.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// A `folder:` dataset's images resized to this side.
    #[serde(default)]
    pub image_size: Option<usize>,
    /// Random horizontal flips of every run's training images (otherwise
    /// each run's own `data.hflip`, off by default): for photographs.
    #[serde(default)]
    pub hflip: bool,
    /// Use only the first N training and test images.
    #[serde(default)]
    pub limit: Option<usize>,
    /// Every run is trained once per seed.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// The budget every run gets.
    pub budget: Budget,
    /// The evaluation every run gets.
    #[serde(default)]
    pub eval: EvalSpec,
    /// The runs.
    pub runs: Vec<RunSpec>,
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// A training budget: exactly one of steps, epochs or minutes of training time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Optimizer steps.
    pub steps: Option<u64>,
    /// Epochs.
    pub epochs: Option<u64>,
    /// Minutes of training time (fetching batches and taking steps), the
    /// steps planned from a timing of the first ones: see `TrainConfig::minutes`.
    pub minutes: Option<f64>,
}

/// What every run is evaluated with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalSpec {
    /// Samples drawn per run for the sample metrics.
    pub samples: usize,
    /// Metrics: fid, kid, is, pr, nll.
    pub metrics: Vec<String>,
    /// Test images for nll.
    pub nll_images: usize,
    /// Effort of the likelihood bound where a model estimates it (DDPM: bound
    /// terms; VAE: importance samples per image).
    pub nll_terms: Option<usize>,
    /// Which checkpoint of each run is evaluated.
    pub checkpoint: EvalCheckpoint,
}

/// Which checkpoint of each run an experiment evaluates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalCheckpoint {
    /// The newest: every run where the budget ended.
    #[default]
    Latest,
    /// Each run's best held-out checkpoint by its own `keep_best` metric
    /// (under its overrides' `train`): the one early stopping would pick,
    /// and with `patience` the runs may stop before the budget ends.
    Best,
}

impl EvalCheckpoint {
    /// The name `genzoo eval --checkpoint` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::Latest => "latest",
            Self::Best => crate::checkpoint::BEST,
        }
    }
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self {
            samples: 1000,
            metrics: ["fid", "kid", "is", "pr", "nll"].map(String::from).to_vec(),
            nll_images: 256,
            nll_terms: Some(100),
            checkpoint: EvalCheckpoint::Latest,
        }
    }
}

/// One run of an experiment.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Name (unique in the experiment; the run directory's prefix).
    pub name: String,
    /// The preset.
    pub preset: String,
    /// Any keys of a run's `config.toml`, laid over the preset.
    #[serde(default)]
    pub overrides: toml::Table,
    /// Keys of a run's `config.toml` by their dotted paths (`train.lr`,
    /// `model.n_layer`), each with the values to try: [`Experiment::load`]
    /// makes one run of every combination, named after this run and the
    /// values (`gpt-lr=0.001-n_layer=4`; a table or array by its place in
    /// the list, from 1), with the values laid over `overrides`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sweep: BTreeMap<String, Vec<toml::Value>>,
}

impl RunSpec {
    /// This run, or the runs of its sweep: one per combination of the
    /// swept values, in the order of the sweep's keys (alphabetical), the
    /// last key's values varying fastest.
    ///
    /// ```
    /// use genzoo_train::experiment::RunSpec;
    /// let spec: RunSpec = toml::from_str(r#"
    ///     name = "gpt"
    ///     preset = "gpt-char"
    ///     sweep = { "train.lr" = [1e-3, 3e-4], "model.n_layer" = [2, 4] }
    /// "#).unwrap();
    /// let runs = spec.expand().unwrap();
    /// let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    /// assert_eq!(names, ["gpt-n_layer=2-lr=0.001", "gpt-n_layer=2-lr=0.0003",
    ///                    "gpt-n_layer=4-lr=0.001", "gpt-n_layer=4-lr=0.0003"]);
    /// assert_eq!(runs[3].overrides["train"]["lr"].as_float(), Some(3e-4));
    /// ```
    pub fn expand(&self) -> Result<Vec<RunSpec>> {
        let mut runs = vec![RunSpec {
            sweep: BTreeMap::new(),
            ..self.clone()
        }];
        for (key, values) in &self.sweep {
            let path: Vec<&str> = key.split('.').collect();
            if path.len() < 2 || path.iter().any(|p| p.is_empty()) {
                return Err(Error::Config(format!(
                    "run '{}': sweep key '{key}' is not a dotted path into the run's config \
                     (train.lr, model.n_layer)",
                    self.name
                )));
            }
            if values.is_empty() {
                return Err(Error::Config(format!(
                    "run '{}': sweep key '{key}' has no values",
                    self.name
                )));
            }
            // The key's last part names it, unless another swept key ends
            // the same way.
            let leaf = path[path.len() - 1];
            let shared = self
                .sweep
                .keys()
                .filter(|k| k.rsplit('.').next() == Some(leaf))
                .count()
                > 1;
            let label = if shared {
                key.replace('.', "_")
            } else {
                leaf.to_string()
            };
            let mut next = Vec::with_capacity(runs.len() * values.len());
            for run in &runs {
                for (i, value) in values.iter().enumerate() {
                    let mut overrides = run.overrides.clone();
                    set_dotted(&mut overrides, &path, value.clone()).map_err(|why| {
                        Error::Config(format!("run '{}': sweep key '{key}': {why}", self.name))
                    })?;
                    next.push(RunSpec {
                        name: format!("{}-{label}={}", run.name, value_label(value, i)),
                        overrides,
                        ..run.clone()
                    });
                }
            }
            runs = next;
        }
        Ok(runs)
    }
}

/// Sets `path` in `table` to `value`, making the tables on the way; a key
/// the overrides set already is refused (which of the two would count?).
fn set_dotted(
    table: &mut toml::Table,
    path: &[&str],
    value: toml::Value,
) -> std::result::Result<(), String> {
    let (last, parents) = path.split_last().expect("two parts or more");
    let mut at = table;
    for part in parents {
        let next = at
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        at = next
            .as_table_mut()
            .ok_or_else(|| format!("the overrides set '{part}' to a value, not a table"))?;
    }
    if at.contains_key(*last) {
        return Err("the overrides set it too: give it in one place".into());
    }
    at.insert(last.to_string(), value);
    Ok(())
}

/// A swept value as it appears in a run's name: numbers, booleans and
/// strings as written (other characters than a run name's as `_`), tables
/// and arrays by their place in the list, from 1.
fn value_label(value: &toml::Value, index: usize) -> String {
    let text = match value {
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::String(s) => s.clone(),
        _ => return (index + 1).to_string(),
    };
    text.chars()
        .map(|c| if is_name_char(c) { c } else { '_' })
        .collect()
}

/// The characters of a run's name (its directory's).
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=')
}

impl Experiment {
    /// Reads and checks an experiment file, each run's sweep expanded
    /// into its runs ([`RunSpec::expand`]).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut experiment: Experiment =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        experiment.runs = experiment
            .runs
            .iter()
            .map(RunSpec::expand)
            .collect::<Result<Vec<_>>>()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            .into_iter()
            .flatten()
            .collect();
        experiment
            .validate()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(experiment)
    }

    /// Rejects experiments that cannot run.
    pub fn validate(&self) -> Result<()> {
        let b = &self.budget;
        let set = [b.steps.is_some(), b.epochs.is_some(), b.minutes.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if set != 1 {
            return Err(Error::Config(
                "budget: give exactly one of steps, epochs or minutes".into(),
            ));
        }
        if b.minutes.is_some_and(|m| m.is_nan() || m <= 0.0)
            || b.steps == Some(0)
            || b.epochs == Some(0)
        {
            return Err(Error::Config("budget: must be positive".into()));
        }
        if self.dataset.is_empty() == self.text.is_none() {
            return Err(Error::Config(
                "give exactly one of dataset (image models) or text (text models)".into(),
            ));
        }
        if self.hflip && self.text.is_some() {
            return Err(Error::Config(
                "hflip flips training images; a text experiment has none".into(),
            ));
        }
        if self.runs.is_empty() || self.seeds.is_empty() {
            return Err(Error::Config(
                "an experiment needs at least one run and one seed".into(),
            ));
        }
        let mut names: Vec<&str> = self.runs.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::Config(format!("run name '{}' appears twice", w[0])));
        }
        if let Some(r) = self.runs.iter().find(|r| {
            r.name.is_empty() || r.name.starts_with('.') || !r.name.chars().all(is_name_char)
        }) {
            return Err(Error::Config(format!(
                "run name '{}': use letters, digits, '-', '_', '=' and '.' (not first)",
                r.name
            )));
        }
        if let Some(r) = self.runs.iter().find(|r| !r.sweep.is_empty()) {
            return Err(Error::Config(format!(
                "run '{}' has a sweep to expand first (RunSpec::expand; Experiment::load does)",
                r.name
            )));
        }
        Ok(())
    }

    /// The directory of run `run` with seed `seed` under `out`.
    pub fn run_dir(out: &Path, run: &str, seed: u64) -> PathBuf {
        out.join(format!("{run}-seed{seed}"))
    }
}

/// What one (run, seed) produced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    /// The run's name.
    pub run: String,
    /// The preset.
    pub preset: String,
    /// The seed.
    pub seed: u64,
    /// Trainable parameters.
    pub params: usize,
    /// Steps trained.
    pub steps: u64,
    /// The step of the checkpoint evaluated (`steps` unless the experiment
    /// evaluates each run's best checkpoint).
    pub checkpoint_step: u64,
    /// Seconds in training steps, over every call (resumes included).
    pub train_seconds: f64,
    /// Training examples per second.
    pub examples_per_sec: f64,
    /// Evaluation figures (eval.json's).
    pub metrics: BTreeMap<String, f64>,
    /// The run's directory.
    pub dir: PathBuf,
}

/// A column's finite values over a run's seeds.
fn column_values(results: &[&RunResult], get: impl Fn(&RunResult) -> Option<f64>) -> Vec<f64> {
    results
        .iter()
        .filter_map(|r| get(r))
        .filter(|v| v.is_finite())
        .collect()
}

/// The mean of a column over a run's seeds, if any has a value.
fn column_mean(results: &[&RunResult], get: impl Fn(&RunResult) -> Option<f64>) -> Option<f64> {
    let values = column_values(results, get);
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// Whether lower is better in a quality column (`None`: a column of
/// cost or size, where no run is best).
fn lower_is_better(column: &str) -> Option<bool> {
    match column {
        "val loss" | "perplexity" | "bits/token" | "FID" | "KID" | "bits/dim" => Some(true),
        "precision" | "recall" | "IS" => Some(false),
        _ => None,
    }
}

/// Mean ± standard deviation of a column over seeds, formatted; "–" when absent.
fn cell(results: &[&RunResult], get: impl Fn(&RunResult) -> Option<f64>, digits: usize) -> String {
    let values = column_values(results, get);
    match values.len() {
        0 => "–".into(),
        1 => format!("{:.*}", digits, values[0]),
        n => {
            let mean = values.iter().sum::<f64>() / n as f64;
            let sd =
                (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt();
            format!("{mean:.digits$} ± {sd:.digits$}")
        }
    }
}

/// The report's table: one row per run (mean ± std over its seeds).
pub fn report_markdown(experiment: &Experiment, results: &[RunResult]) -> String {
    let budget = match (
        &experiment.budget.steps,
        &experiment.budget.epochs,
        &experiment.budget.minutes,
    ) {
        (Some(s), _, _) => format!("{s} steps"),
        (_, Some(e), _) => format!("{e} epochs"),
        (_, _, Some(m)) => format!("{m} minutes"),
        _ => "?".into(),
    };
    let evaluated = match experiment.eval.checkpoint {
        EvalCheckpoint::Latest => "",
        EvalCheckpoint::Best => {
            " Each run is evaluated at its best checkpoint by its own `keep_best` metric (`best step`)."
        }
    };
    let mut out = match &experiment.text {
        Some(text) => format!(
            "# {}\n\nText `{}`, budget {budget} per run, seeds {:?}; each run evaluated by its loss \
             over the whole validation split (the last 10 % of the text, every token predicted once).\
             {evaluated}\n\n",
            experiment.name,
            text.display(),
            experiment.seeds,
        ),
        None => format!(
            "# {}\n\nDataset `{}`, budget {budget} per run, seeds {:?}; {} samples per run for the sample metrics \
             (evaluator features vs the test set), bits/dim on {} test images.{evaluated}\n\n",
            experiment.name,
            experiment.dataset,
            experiment.seeds,
            experiment.eval.samples,
            experiment.eval.nll_images
        ),
    };
    // Each column: its header, the figure of one (run, seed), and the
    // digits shown of its mean ± std over seeds.
    type Column = (&'static str, fn(&RunResult) -> Option<f64>, usize);
    let mut columns: Vec<Column> = vec![
        ("steps", |r| Some(r.steps as f64), 0),
        ("train s", |r| Some(r.train_seconds), 1),
        ("examples/s", |r| Some(r.examples_per_sec), 1),
    ];
    if experiment.text.is_some() {
        columns.extend([
            (
                "val loss",
                (|r| r.metrics.get("val_loss").copied()) as fn(&RunResult) -> _,
                4,
            ),
            (
                "perplexity",
                |r| r.metrics.get("val_perplexity").copied(),
                3,
            ),
            (
                "bits/token",
                |r| r.metrics.get("val_bits_per_token").copied(),
                4,
            ),
        ]);
    } else {
        columns.extend([
            (
                "s per 64 samples",
                (|r| r.metrics.get("sample_seconds_per_64").copied()) as fn(&RunResult) -> _,
                2,
            ),
            ("FID", |r| r.metrics.get("fid").copied(), 2),
            ("KID", |r| r.metrics.get("kid").copied(), 4),
            ("precision", |r| r.metrics.get("precision").copied(), 3),
            ("recall", |r| r.metrics.get("recall").copied(), 3),
            ("IS", |r| r.metrics.get("is").copied(), 2),
            (
                "bits/dim",
                |r| r.metrics.get("nll_bits_per_dim").copied(),
                3,
            ),
        ]);
    }
    if experiment.eval.checkpoint == EvalCheckpoint::Best {
        columns.insert(1, ("best step", |r| Some(r.checkpoint_step as f64), 0));
    }
    let names: Vec<&str> = columns.iter().map(|(name, _, _)| *name).collect();
    out.push_str(&format!(
        "| run | preset | params | {} |\n",
        names.join(" | ")
    ));
    out.push_str(&format!(
        "|---|---|---:|{}\n",
        "---:|".repeat(columns.len())
    ));
    let runs: Vec<(&RunSpec, Vec<&RunResult>)> = experiment
        .runs
        .iter()
        .map(|spec| {
            (
                spec,
                results.iter().filter(|r| r.run == spec.name).collect(),
            )
        })
        .filter(|(_, rows): &(_, Vec<_>)| !rows.is_empty())
        .collect();
    // Each run's mean of each column, and the best mean of each quality
    // column, where two runs or more have one.
    let means: Vec<Vec<Option<f64>>> = runs
        .iter()
        .map(|(_, rows)| {
            columns
                .iter()
                .map(|(_, figure, _)| column_mean(rows, figure))
                .collect()
        })
        .collect();
    let best: Vec<Option<f64>> = (0..columns.len())
        .map(|c| {
            let lower = lower_is_better(columns[c].0)?;
            let column: Vec<f64> = means.iter().filter_map(|run| run[c]).collect();
            let pick = |a: f64, b: f64| if (a < b) == lower { a } else { b };
            (column.len() > 1).then(|| column.iter().copied().reduce(pick))?
        })
        .collect();
    for ((spec, rows), run_means) in runs.iter().zip(&means) {
        let cells: Vec<String> = columns
            .iter()
            .zip(run_means.iter().zip(&best))
            .map(|((_, figure, digits), (mean, best))| {
                let text = cell(rows, figure, *digits);
                match (mean, best) {
                    (Some(mean), Some(best)) if mean == best => format!("**{text}**"),
                    _ => text,
                }
            })
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            spec.name,
            spec.preset,
            rows[0].params,
            cells.join(" | ")
        ));
    }
    if best.iter().any(|b| b.is_some()) {
        out.push_str(
            "\nIn **bold**: the best run of each quality column (by its mean over seeds).\n",
        );
    }
    if experiment.text.is_some() {
        out.push_str("\n`report.svg`: each run's losses against the step, with axes, a training and a held-out line per seed; each run's generated text is its `samples/final.txt`.\n");
    } else {
        out.push_str("\n`report.png`: each run's final sample grid (first seed), left to right in table order, with its training-loss curve below it. `report.svg`: each run's losses against the step, with axes, a training and a held-out line per seed.\n");
    }
    out
}

/// Lays the runs' sample grids side by side with their training-loss curves
/// (one panel per run, in table order) into `path`.
pub fn report_image(panels: &[(PathBuf, Vec<f64>)], path: &Path) -> Result<()> {
    const CURVE_HEIGHT: u32 = 120;
    const GAP: u32 = 8;
    let grids: Vec<RgbImage> = panels
        .iter()
        .map(|(p, _)| {
            image::open(p)
                .map(|i| i.to_rgb8())
                .unwrap_or_else(|_| RgbImage::new(240, 240))
        })
        .collect();
    let width = grids.iter().map(|g| g.width() + GAP).sum::<u32>().max(1);
    let grid_height = grids.iter().map(|g| g.height()).max().unwrap_or(0);
    let mut canvas = RgbImage::from_pixel(
        width,
        grid_height + GAP + CURVE_HEIGHT,
        Rgb([255, 255, 255]),
    );
    let mut x0 = 0;
    for (grid, (_, losses)) in grids.iter().zip(panels) {
        image::imageops::overlay(&mut canvas, grid, x0 as i64, 0);
        draw_curve(
            &mut canvas,
            losses,
            x0,
            grid_height + GAP,
            grid.width(),
            CURVE_HEIGHT,
        );
        x0 += grid.width() + GAP;
    }
    canvas
        .save(path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
}

/// A polyline of `values` scaled to its own min..max inside the box.
fn draw_curve(canvas: &mut RgbImage, values: &[f64], x0: u32, y0: u32, w: u32, h: u32) {
    // Frame.
    for x in x0..x0 + w {
        canvas.put_pixel(x, y0, Rgb([200, 200, 200]));
        canvas.put_pixel(x, y0 + h - 1, Rgb([200, 200, 200]));
    }
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.len() < 2 || w < 2 {
        return;
    }
    let (lo, hi) = finite
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    let span = (hi - lo).max(1e-12);
    let point = |i: usize| -> (f64, f64) {
        let x = x0 as f64 + i as f64 / (finite.len() - 1) as f64 * (w - 1) as f64;
        let y = y0 as f64 + 2.0 + (hi - finite[i]) / span * (h - 5) as f64;
        (x, y)
    };
    for i in 1..finite.len() {
        let (a, b) = (point(i - 1), point(i));
        let steps = ((b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil() as usize).max(1);
        for s in 0..=steps {
            let t = s as f64 / steps as f64;
            let (x, y) = (a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t);
            if (x as u32) < canvas.width() && (y as u32) < canvas.height() {
                canvas.put_pixel(x as u32, y as u32, Rgb([200, 40, 40]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn experiment() -> Experiment {
        toml::from_str(
            r#"
            name = "t"
            dataset = "idx:digits"
            seeds = [0, 1]
            [budget]
            steps = 3
            [[runs]]
            name = "vae"
            preset = "vae-mlp"
            [[runs]]
            name = "gan"
            preset = "dcgan-28"
            overrides = { train = { batch_size = 8 } }
            "#,
        )
        .unwrap()
    }

    #[test]
    fn parses_validates_and_reports_every_run_with_mean_and_std() {
        let e = experiment();
        e.validate().unwrap();
        assert_eq!(
            e.runs[1].overrides["train"]["batch_size"].as_integer(),
            Some(8)
        );
        let mut bad = e.clone();
        bad.budget.epochs = Some(1);
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("exactly one")
        );
        let mut dup = e.clone();
        dup.runs[1].name = "vae".into();
        assert!(dup.validate().is_err());
        let result = |run: &str, seed: u64, fid: f64| RunResult {
            run: run.into(),
            preset: "p".into(),
            seed,
            params: 10,
            steps: 3,
            checkpoint_step: 1 + 2 * seed,
            train_seconds: 1.0,
            examples_per_sec: 100.0,
            metrics: [("fid".to_string(), fid)].into_iter().collect(),
            dir: PathBuf::new(),
        };
        let results = [
            result("vae", 0, 10.0),
            result("vae", 1, 12.0),
            result("gan", 0, 30.0),
        ];
        let table = report_markdown(&e, &results);
        assert!(
            table.contains("| vae | vae-mlp | 10 | 3 ± 0 | 1.0 ± 0.0 |"),
            "{table}"
        );
        assert!(table.contains("11.00 ± 1.41"), "{table}");
        // The lower FID is the better, marked as the best.
        assert!(table.contains("| **11.00 ± 1.41** |"), "{table}");
        assert!(
            table.contains("| 30.00 |") && table.contains("In **bold**"),
            "{table}"
        );
        assert!(table.contains("| gan | dcgan-28 |"), "{table}");
        assert!(!table.contains("best step"), "{table}");
        // Every row has the header's columns.
        let rows_have_bars = |table: &str, bars: usize| {
            table
                .lines()
                .filter(|l| l.starts_with('|'))
                .all(|l| l.matches('|').count() == bars)
        };
        assert!(rows_have_bars(&table, 14), "{table}");

        // Evaluated at their best checkpoints: the steps of those, per run.
        let best = Experiment {
            eval: EvalSpec {
                checkpoint: EvalCheckpoint::Best,
                ..e.eval.clone()
            },
            ..e
        };
        let table = report_markdown(&best, &results);
        assert!(
            table.contains("| run | preset | params | steps | best step | train s |"),
            "{table}"
        );
        assert!(
            table.contains("| vae | vae-mlp | 10 | 3 ± 0 | 2 ± 1 | 1.0 ± 0.0 |"),
            "{table}"
        );
        assert!(
            table.contains("| gan | dcgan-28 | 10 | 3 | 1 | 1.0 |"),
            "{table}"
        );
        assert!(
            table.contains("best checkpoint by its own `keep_best`"),
            "{table}"
        );
        assert!(rows_have_bars(&table, 15), "{table}");
    }

    #[test]
    fn a_sweep_becomes_a_run_per_combination_over_the_overrides() {
        let path = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            path.path(),
            r#"
            name = "sweep"
            text = "t.txt"
            [budget]
            steps = 3
            [[runs]]
            name = "base"
            preset = "gpt-char"
            [[runs]]
            name = "gpt"
            preset = "gpt-char"
            overrides = { train = { batch_size = 4 } }
            [runs.sweep]
            "train.lr" = [1e-3, 3e-4]
            "model.n_layer" = [2]
            "train.schedule" = [{ kind = "constant" }, { kind = "linear" }]
            "data.bytes" = [true]
            "#,
        )
        .unwrap();
        let e = Experiment::load(path.path()).unwrap();
        let names: Vec<&str> = e.runs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "base",
                "gpt-bytes=true-n_layer=2-lr=0.001-schedule=1",
                "gpt-bytes=true-n_layer=2-lr=0.001-schedule=2",
                "gpt-bytes=true-n_layer=2-lr=0.0003-schedule=1",
                "gpt-bytes=true-n_layer=2-lr=0.0003-schedule=2",
            ]
        );
        let last = &e.runs[4].overrides;
        assert_eq!(last["train"]["batch_size"].as_integer(), Some(4));
        assert_eq!(last["train"]["lr"].as_float(), Some(3e-4));
        assert_eq!(last["train"]["schedule"]["kind"].as_str(), Some("linear"));
        assert_eq!(last["model"]["n_layer"].as_integer(), Some(2));
        assert_eq!(last["data"]["bytes"].as_bool(), Some(true));
        assert!(e.runs.iter().all(|r| r.sweep.is_empty()));

        let refused = |sweep: &str, overrides: &str| -> String {
            let spec: RunSpec = toml::from_str(&format!(
                "name = \"r\"\npreset = \"vae-mlp\"\noverrides = {overrides}\nsweep = {sweep}"
            ))
            .unwrap();
            spec.expand().unwrap_err().to_string()
        };
        let no_dot = refused(r#"{ lr = [1e-3] }"#, "{}");
        assert!(no_dot.contains("not a dotted path"), "{no_dot}");
        let empty = refused(r#"{ "train.lr" = [] }"#, "{}");
        assert!(empty.contains("no values"), "{empty}");
        let twice = refused(r#"{ "train.lr" = [1e-3] }"#, "{ train = { lr = 1e-4 } }");
        assert!(twice.contains("give it in one place"), "{twice}");
        let not_a_table = refused(r#"{ "train.lr.x" = [1] }"#, "{ train = { lr = 1e-4 } }");
        assert!(not_a_table.contains("not a table"), "{not_a_table}");
        // Two keys ending alike are told apart by their whole paths.
        let spec: RunSpec = toml::from_str(
            r#"
            name = "r"
            preset = "ddpm-unet"
            sweep = { "model.unet.dropout" = [0.1], "model.dropout" = [0.0] }
            "#,
        )
        .unwrap();
        let names: Vec<String> = spec.expand().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["r-model_dropout=0-model_unet_dropout=0.1"]);
    }

    #[test]
    fn a_text_experiment_reports_the_validation_loss() {
        let mut e: Experiment = toml::from_str(
            r#"
            name = "words"
            text = "poem.txt"
            seeds = [0, 1]
            [budget]
            steps = 3
            [[runs]]
            name = "gpt"
            preset = "gpt-char"
            "#,
        )
        .unwrap();
        e.validate().unwrap();
        let result = |seed: u64, loss: f64| RunResult {
            run: "gpt".into(),
            preset: "gpt-char".into(),
            seed,
            params: 10,
            steps: 3,
            checkpoint_step: 3,
            train_seconds: 1.0,
            examples_per_sec: 100.0,
            metrics: [
                ("val_loss".to_string(), loss),
                ("val_perplexity".to_string(), loss.exp()),
            ]
            .into_iter()
            .collect(),
            dir: PathBuf::new(),
        };
        let table = report_markdown(&e, &[result(0, 2.0), result(1, 2.2)]);
        assert!(
            table.contains("Text `poem.txt`")
                && table.contains("| val loss | perplexity | bits/token |")
                && table.contains("| 2.1000 ± 0.1414 |")
                && !table.contains("FID"),
            "{table}"
        );
        // Flips of a text's images: refused.
        e.hflip = true;
        assert!(
            e.validate()
                .unwrap_err()
                .to_string()
                .contains("a text experiment has none")
        );
        e.hflip = false;
        // A dataset and a text, or neither: refused.
        e.dataset = "mnist".into();
        assert!(
            e.validate()
                .unwrap_err()
                .to_string()
                .contains("exactly one of dataset")
        );
        e.dataset.clear();
        e.text = None;
        assert!(e.validate().is_err());
    }

    #[test]
    fn the_checkpoint_to_evaluate_is_latest_unless_best_is_asked_for() {
        assert_eq!(experiment().eval.checkpoint, EvalCheckpoint::Latest);
        let with = |line: &str| {
            toml::from_str::<Experiment>(&format!(
                "name = \"t\"\ndataset = \"mnist\"\n[budget]\nsteps = 1\n[eval]\n{line}\n[[runs]]\nname = \"v\"\npreset = \"vae-mlp\""
            ))
        };
        assert_eq!(
            with("checkpoint = \"best\"").unwrap().eval.checkpoint,
            EvalCheckpoint::Best
        );
        assert_eq!(EvalCheckpoint::Best.name(), "best");
        let err = with("checkpoint = \"newest\"").unwrap_err().to_string();
        assert!(err.contains("latest") && err.contains("best"), "{err}");
    }

    #[test]
    fn report_image_lays_panels_side_by_side() {
        let tmp = tempfile::tempdir().unwrap();
        let grid = tmp.path().join("g.png");
        RgbImage::from_pixel(30, 20, Rgb([0, 0, 0]))
            .save(&grid)
            .unwrap();
        let out = tmp.path().join("report.png");
        report_image(
            &[(grid.clone(), vec![3.0, 2.0, 1.5]), (grid, vec![1.0, 0.5])],
            &out,
        )
        .unwrap();
        let img = image::open(&out).unwrap();
        assert_eq!((img.width(), img.height()), (2 * (30 + 8), 20 + 8 + 120));
    }
}
