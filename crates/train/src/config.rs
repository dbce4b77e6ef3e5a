//! Run configuration: plain serde structs with defaults, written resolved
//! to `config.toml` in every run directory.
//!
//! A config file may hold any subset of the resolved file's keys; they are
//! laid over the preset's values, and command-line flags over both.
//!
//! ```toml
//! preset = "vae-mlp"
//! [model]
//! beta = 2.0
//! [data]
//! dataset = "fashion-mnist"
//! [train]
//! epochs = 5
//! ```

use std::path::{Path, PathBuf};

use genzoo_core::{Error, Result};
use genzoo_data::{DatasetSource, Scaling};
use genzoo_models::{ModelConfig, preset};
use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointIdentity;
use crate::data_parallel::ParallelConfig;
use crate::schedule::Schedule;

/// The training loop's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Budget in optimizer steps (takes precedence over `epochs`).
    pub steps: Option<u64>,
    /// Budget in epochs (used when `steps` is not set; 1 when neither is).
    pub epochs: Option<u64>,
    /// Budget in minutes of training time (fetching batches and taking
    /// steps; evaluation, sample grids and checkpoints do not count). Takes
    /// precedence over `steps` and `epochs`: the engine times a few steps,
    /// plans the run's steps from them, so that the learning-rate schedule
    /// runs its course within the budget, plans again from the run's pace
    /// at 10, 30 and 60 % of it, and stops on the clock in any case.
    pub minutes: Option<f64>,
    /// Examples per step.
    pub batch_size: usize,
    /// Split each step's batch into this many micro-batches, each with its
    /// own forward and backward pass, and update once with their summed
    /// gradients: the update of `batch_size` examples in the memory of a
    /// micro-batch. The same run up to float rounding (the noise of each
    /// example is the same); families with several networks per step
    /// (GANs) need 1.
    pub micro_batches: usize,
    /// Base learning rate.
    pub lr: f64,
    /// Learning-rate schedule.
    pub schedule: Schedule,
    /// Clip the global gradient norm to this value (PyTorch's `clip_grad_norm_`).
    pub clip_norm: Option<f64>,
    /// Seed of everything random: initialisation, data order, noise.
    pub seed: u64,
    /// Start from the weights of this checkpoint directory (one of another
    /// run's `checkpoints/…`, of the same model and config) instead of a
    /// fresh initialisation: fine-tuning. The optimizer, the schedule and
    /// the step count start anew; a resumed run goes on from its own
    /// checkpoints.
    pub init_from: Option<PathBuf>,
    /// Write averaged training metrics every N steps.
    pub log_every: u64,
    /// Evaluate on held-out data every N steps (0: at the end of every epoch).
    pub eval_every: u64,
    /// Evaluate on at most this many held-out batches (all when unset).
    pub eval_batches: Option<usize>,
    /// Write a sample grid every N steps (0: only at the end).
    pub sample_every: u64,
    /// Images in a sample grid.
    pub samples: usize,
    /// Write a checkpoint every N steps (0: at the end of every epoch). One is always written at the end.
    pub checkpoint_every: u64,
    /// How many checkpoints to keep (the newest).
    pub keep_checkpoints: usize,
    /// Also keep the checkpoint with the lowest value of this held-out
    /// metric (`val_loss`, `test_neg_elbo`: a name in `metrics.jsonl`) in
    /// `checkpoints/best`, written at each evaluation that improves on it
    /// (as nanoGPT keeps its best validation loss).
    pub keep_best: Option<String>,
    /// Stop early once this many evaluations in a row have not improved on
    /// the best value of `keep_best`'s metric (its checkpoint is the one to
    /// use); a resumed run that has stopped stays stopped.
    pub patience: Option<u64>,
    /// At each evaluation, also draw this many samples (the same noise each
    /// time) and log their FID and KID against the held-out split's
    /// features as `test_fid` and `test_kid` (0: none): sample quality as
    /// training goes, and a `keep_best` for GANs, whose losses do not track
    /// it. Needs the dataset's evaluator ([`crate::Trainer::sample_quality`];
    /// the CLI trains and caches it). FID is biased upwards by few samples:
    /// compare values of one count, and use `genzoo eval` (10,000) for
    /// the figure to report.
    pub fid_samples: usize,
    /// Also write TensorBoard event files into the run directory (the
    /// logged metrics, sample grids and text samples):
    /// `tensorboard --logdir runs` shows every run in `runs/`.
    pub tensorboard: bool,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: None,
            epochs: None,
            minutes: None,
            batch_size: 128,
            micro_batches: 1,
            lr: 1e-3,
            schedule: Schedule::Constant,
            clip_norm: None,
            seed: 0,
            init_from: None,
            log_every: 50,
            eval_every: 0,
            eval_batches: None,
            sample_every: 0,
            samples: 64,
            checkpoint_every: 0,
            keep_checkpoints: 3,
            keep_best: None,
            patience: None,
            fid_samples: 0,
            tensorboard: true,
        }
    }
}

impl TrainConfig {
    /// Total steps of the run for an epoch of `batches_per_epoch` batches
    /// (a `minutes` budget is planned by the engine instead).
    pub fn total_steps(&self, batches_per_epoch: usize) -> Result<u64> {
        let total = match (self.steps, self.epochs) {
            (Some(s), _) => s,
            (None, Some(e)) => e * batches_per_epoch as u64,
            (None, None) => batches_per_epoch as u64,
        };
        if total == 0 {
            return Err(Error::Config(
                "the budget is zero steps: set steps or epochs to at least 1".into(),
            ));
        }
        Ok(total)
    }

    /// Rejects settings no run can use.
    pub fn validate(&self) -> Result<()> {
        // Refused here, before a run directory is made, rather than when
        // the engine plans the run.
        for (name, budget) in [("steps", self.steps), ("epochs", self.epochs)] {
            if budget == Some(0) {
                return Err(Error::Config(format!(
                    "{name} must be at least 1: a budget of zero trains nothing"
                )));
            }
        }
        if self.batch_size == 0 {
            return Err(Error::Config("batch_size must be at least 1".into()));
        }
        if self.micro_batches == 0 {
            return Err(Error::Config("micro_batches must be at least 1".into()));
        }
        if self.micro_batches > self.batch_size {
            return Err(Error::Config(format!(
                "micro_batches = {} splits a batch of {} below one example each",
                self.micro_batches, self.batch_size
            )));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return Err(Error::Config(format!(
                "lr must be a positive number, got {}",
                self.lr
            )));
        }
        self.schedule.validate(self.lr)?;
        if let Some(c) = self.clip_norm
            && c.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        {
            return Err(Error::Config(format!(
                "clip_norm must be positive, got {c}"
            )));
        }
        if self.fid_samples == 1 {
            return Err(Error::Config(
                "fid_samples must be 0 (off) or at least 2: FID needs a spread of samples".into(),
            ));
        }
        if self.eval_batches == Some(0) {
            return Err(Error::Config(
                "eval_batches must be at least 1 (leave it unset for the whole held-out split)"
                    .into(),
            ));
        }
        if let Some(m) = self.minutes
            && !(m > 0.0 && m.is_finite())
        {
            return Err(Error::Config(format!(
                "minutes must be a positive number, got {m}"
            )));
        }
        match (self.patience, &self.keep_best) {
            (Some(0), _) => return Err(Error::Config("patience must be at least 1".into())),
            (Some(_), None) => {
                return Err(Error::Config(
                    "patience counts evaluations without a better keep_best metric: set keep_best \
                     (--keep-best val_loss, for example)"
                        .into(),
                ));
            }
            _ => {}
        }
        if self.keep_checkpoints == 0 {
            return Err(Error::Config("keep_checkpoints must be at least 1".into()));
        }
        Ok(())
    }
}

/// Where the data comes from and how it is prepared.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// `mnist`, `fashion-mnist`, `cifar-10`, `idx:<DIR>` (MNIST-format
    /// files) or `folder:<DIR>` (image files).
    pub dataset: String,
    /// A directory holding the dataset's files (overrides the search).
    pub data_dir: Option<PathBuf>,
    /// Use only the first N training (and test) images, for quick runs.
    pub limit: Option<usize>,
    /// Pixel scaling.
    pub scaling: Scaling,
    /// A text file, for language models (UTF-8, or any file with `bytes`).
    pub text: Option<PathBuf>,
    /// Byte-level tokens (256) instead of the text's characters: the file
    /// need not be UTF-8.
    pub bytes: bool,
    /// A `folder:` dataset's images resized and centre-cropped to this
    /// side; without it they must all have one size.
    pub image_size: Option<usize>,
    /// Random horizontal flips of the training images (see
    /// [`genzoo_data::ImageData::hflip`]): for photographs, not digits.
    pub hflip: bool,
}

impl DataConfig {
    /// The image dataset this config names, with its image size.
    ///
    /// ```
    /// use genzoo_train::config::DataConfig;
    /// let data = DataConfig { dataset: "folder:photos".into(), image_size: Some(32), ..Default::default() };
    /// assert_eq!(data.image_source().unwrap().name(), "folder:photos");
    /// let data = DataConfig { dataset: "mnist".into(), image_size: Some(32), ..Default::default() };
    /// assert!(data.image_source().is_err()); // MNIST's images have their size
    /// ```
    pub fn image_source(&self) -> Result<DatasetSource> {
        self.dataset
            .parse::<DatasetSource>()?
            .with_image_size(self.image_size)
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            dataset: "mnist".into(),
            data_dir: None,
            limit: None,
            scaling: Scaling::Unit,
            text: None,
            bytes: false,
            image_size: None,
            hflip: false,
        }
    }
}

/// Everything that defines a run; `config.toml` in the run directory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// The preset the run started from.
    pub preset: String,
    /// The model (the preset's, with overrides).
    pub model: ModelConfig,
    /// The data.
    #[serde(default)]
    pub data: DataConfig,
    /// The loop.
    #[serde(default)]
    pub train: TrainConfig,
    /// Devices and machines the run spreads over (data parallelism).
    #[serde(default)]
    pub parallel: ParallelConfig,
}

impl RunConfig {
    /// The resolved config of preset `name` with its reference recipe.
    pub fn from_preset(name: &str) -> Result<Self> {
        let p = preset(name).ok_or_else(|| {
            Error::Config(format!(
                "unknown preset '{name}'; `genzoo list` shows the presets"
            ))
        })?;
        let scaling = match p.scaling {
            "signed" => Scaling::Signed,
            _ => Scaling::Unit,
        };
        let schedule = match p.min_lr {
            Some(min_lr) => Schedule::Cosine {
                warmup_steps: p.warmup_steps,
                min_lr,
            },
            None => Schedule::Constant,
        };
        // Language models evaluate on a fixed number of random windows every
        // 250 steps (nanoGPT: eval_iters 200, eval_interval 250).
        let eval_batches = p.model.reads_text().then_some(200);
        let eval_every = if p.model.reads_text() { 250 } else { 0 };
        Ok(Self {
            preset: p.name.to_string(),
            model: p.model,
            data: DataConfig {
                scaling,
                ..Default::default()
            },
            train: TrainConfig {
                batch_size: p.batch_size,
                lr: p.lr,
                schedule,
                clip_norm: p.clip_norm,
                eval_batches,
                eval_every,
                ..Default::default()
            },
            parallel: ParallelConfig::default(),
        })
    }

    /// Lays the TOML text `overrides` (any subset of the keys) over this config.
    pub fn merge_toml(&self, overrides: &str, origin: &str) -> Result<Self> {
        let patch: toml::Table =
            toml::from_str(overrides).map_err(|e| Error::Config(format!("{origin}: {e}")))?;
        let mut base = toml::Table::try_from(self).map_err(|e| Error::Config(e.to_string()))?;
        merge(&mut base, patch);
        toml::Value::Table(base)
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config(format!("{origin}: {e}")))
    }

    /// Reads a config file: its `preset` (or `default_preset`) resolved, then its keys laid over it.
    pub fn from_file(path: &Path, default_preset: Option<&str>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let table: toml::Table =
            toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let name = match (default_preset, table.get("preset").and_then(|v| v.as_str())) {
            (Some(cli), Some(file)) if cli != file => {
                return Err(Error::Config(format!(
                    "{} is for preset '{file}' but the command names '{cli}'",
                    path.display()
                )));
            }
            (_, Some(file)) => file.to_string(),
            (Some(cli), None) => cli.to_string(),
            (None, None) => {
                return Err(Error::Config(format!(
                    "{} names no preset (add `preset = \"vae-mlp\"`)",
                    path.display()
                )));
            }
        };
        Self::from_preset(&name)?.merge_toml(&text, &path.display().to_string())
    }

    /// The config as TOML text.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| Error::Config(e.to_string()))
    }

    /// Reads a resolved `config.toml`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// The model config as TOML: what a checkpoint must match to be loaded.
    pub fn model_fingerprint(&self) -> Result<String> {
        toml::to_string(&self.model).map_err(|e| Error::Config(e.to_string()))
    }

    /// What this run's checkpoints must match: the preset and the model config.
    pub fn identity(&self) -> Result<CheckpointIdentity> {
        Ok(CheckpointIdentity {
            model: self.preset.clone(),
            fingerprint: self.model_fingerprint()?,
        })
    }
}

/// Lays `patch` over `base`: tables recursively, everything else replaced.
/// A table that names another `kind` (a schedule, a U-Net's noise
/// schedule: a tagged enum's variant) replaces the base's instead: the
/// other variant's keys are not its own.
fn merge(base: &mut toml::Table, patch: toml::Table) {
    for (k, v) in patch {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(p))
                if p.get("kind").is_none_or(|kind| b.get("kind") == Some(kind)) =>
            {
                merge(b, p)
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_of_another_kind_replaces_the_presets_and_one_of_the_same_merges() {
        let gpt = RunConfig::from_preset("gpt-char").unwrap();
        let constant = gpt
            .merge_toml("[train]\nschedule = { kind = \"constant\" }", "test")
            .unwrap();
        assert_eq!(constant.train.schedule, Schedule::Constant);
        let step = gpt
            .merge_toml(
                "[train.schedule]\nkind = \"step\"\nmilestones = [1000]",
                "test",
            )
            .unwrap();
        assert_eq!(
            step.train.schedule,
            Schedule::Step {
                milestones: vec![1000],
                gamma: 0.1
            }
        );
        // The same kind keeps the preset's other keys.
        let longer = gpt
            .merge_toml("[train.schedule]\nwarmup_steps = 200", "test")
            .unwrap();
        assert_eq!(
            longer.train.schedule,
            Schedule::Cosine {
                warmup_steps: 200,
                min_lr: 1e-4
            }
        );
        let ddpm = RunConfig::from_preset("ddpm-unet").unwrap();
        let cosine = ddpm.merge_toml(
            "[model]\nbeta_schedule = { kind = \"cosine\", offset = 0.008 }",
            "test",
        );
        assert!(cosine.is_ok(), "{cosine:?}");
    }

    #[test]
    fn preset_round_trips_through_toml() {
        let c = RunConfig::from_preset("vae-mlp").unwrap();
        let text = c.to_toml().unwrap();
        let back: RunConfig = toml::from_str(&text).unwrap();
        assert_eq!(c, back);
    }

    #[test]
    fn overrides_merge_and_typos_are_rejected() {
        let c = RunConfig::from_preset("vae-mlp").unwrap();
        let m = c
            .merge_toml("[model]\nbeta = 2.5\n[train]\nepochs = 3\n", "test")
            .unwrap();
        let ModelConfig::Vae(v) = &m.model else {
            panic!("vae-mlp is a VAE")
        };
        assert_eq!(v.beta, 2.5);
        assert_eq!(v.hidden, 400);
        assert_eq!(m.train.epochs, Some(3));
        assert_eq!(m.train.batch_size, 128);
        let err = c
            .merge_toml("[train]\nepoch = 3\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("epoch") && err.contains("f.toml"), "{err}");
        assert!(
            RunConfig::from_preset("ddpm-xl")
                .unwrap_err()
                .to_string()
                .contains("genzoo list")
        );
        // The DDPM preset's recipe: signed pixels, Adam 2e-4, batch 128.
        let ddpm = RunConfig::from_preset("ddpm-unet").unwrap();
        assert_eq!(ddpm.data.scaling, Scaling::Signed);
        assert_eq!((ddpm.train.lr, ddpm.train.batch_size), (2e-4, 128));
    }
}
