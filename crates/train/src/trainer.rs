//! The training loop: one straight loop for every family.
//!
//! Each step: re-seed the backend from (seed, step); fetch batch
//! (epoch, index); ask the family for one step through a [`StepContext`]
//! carrying the scheduled learning rate and clipping; stop on a non-finite
//! metric; then log, evaluate, draw samples and checkpoint when due.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use genzoo_core::family::SampleRequest;
use genzoo_core::image::{default_columns, save_grid};
use genzoo_core::parallel::{self, Replica};
use genzoo_core::seed::{derive, seed_step};
use genzoo_core::{
    Error, Family, Metrics, MicroBatch, Result, ShardBatch, StepContext, TextRequest,
    TokenSampling, TrainData, noise,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::checkpoint::{self, BestValue, CheckpointIdentity, Manifest};
use crate::config::TrainConfig;
use crate::evaluator::{Evaluator, SampleScore};
use crate::logger::MetricsLogger;
use crate::run_dir::RunDir;
use crate::tensorboard::EventWriter;

/// The fractions of a minutes budget at which its steps are planned again
/// from the pace since the last plan (when it is more than 2 % off).
const REPLAN_AT: [f64; 3] = [0.1, 0.3, 0.6];

/// What a finished (or stopped) training call returns.
pub struct TrainOutcome<F> {
    /// The trained family.
    pub family: F,
    /// Steps taken in total (including those before a resume).
    pub step: u64,
    /// The run's total steps.
    pub total_steps: u64,
    /// The last averaged training metrics written to the log.
    pub last_train: Metrics,
    /// The last evaluation metrics (without the `test_`/`val_` prefix).
    pub last_eval: Option<Metrics>,
    /// The step of [`TrainOutcome::last_eval`]: before [`TrainOutcome::step`]
    /// when the call ended between evaluations (interrupted, or a minutes
    /// budget's clock).
    pub last_eval_step: Option<u64>,
    /// Wall-clock seconds of this call's training steps (excluding evaluation and I/O).
    pub train_seconds: f64,
    /// The same over every call of the run: what its checkpoints record
    /// before this call, plus this call's. (A call stopped after its last
    /// checkpoint is left out past it; the run redid those steps.)
    pub total_train_seconds: f64,
    /// Steps taken in this call.
    pub steps_this_call: u64,
    /// The call ended before its planned steps because the flag given to
    /// [`Trainer::stop_when`] was set: its last step is checkpointed, and a
    /// later call with `resume` continues from it.
    pub interrupted: bool,
}

/// The engine. Configure it with the builder methods, then call [`Trainer::fit`].
pub struct Trainer {
    run: RunDir,
    config: TrainConfig,
    identity: CheckpointIdentity,
    config_text: Option<String>,
    resume: bool,
    stop_after: Option<u64>,
    stop_when: Option<Arc<AtomicBool>>,
    progress: bool,
    evaluator_dir: Option<PathBuf>,
}

impl Trainer {
    /// A trainer writing into `run` with `config`.
    pub fn new(run: RunDir, config: TrainConfig) -> Self {
        Self {
            run,
            config,
            identity: CheckpointIdentity {
                model: "model".into(),
                fingerprint: String::new(),
            },
            config_text: None,
            resume: false,
            stop_after: None,
            stop_when: None,
            progress: true,
            evaluator_dir: None,
        }
    }

    /// Names the model and its config; checkpoints of any other model or
    /// config are refused on resume.
    pub fn identity(mut self, model: impl Into<String>, fingerprint: impl Into<String>) -> Self {
        self.identity = CheckpointIdentity {
            model: model.into(),
            fingerprint: fingerprint.into(),
        };
        self
    }

    /// The run's resolved config, copied into every checkpoint.
    pub fn config_text(mut self, text: impl Into<String>) -> Self {
        self.config_text = Some(text.into());
        self
    }

    /// Continue from the newest good checkpoint, if there is one.
    pub fn resume(mut self, resume: bool) -> Self {
        self.resume = resume;
        self
    }

    /// Stop after this many steps in this call (the budget and schedule
    /// stay those of the whole run); a later call with `resume` continues.
    pub fn stop_after(mut self, steps: Option<u64>) -> Self {
        self.stop_after = steps;
        self
    }

    /// Stop after the step in progress once `flag` is set (by a signal
    /// handler, another thread, ...): that step is checkpointed, the outcome
    /// says [`TrainOutcome::interrupted`], and a later call with `resume`
    /// continues as if the run had not stopped. A data-parallel run stops
    /// all its replicas at the same step when any of them sees its flag set
    /// (one set during the leader's evaluation, at the step evaluated).
    ///
    /// ```
    /// # use std::sync::{Arc, atomic::AtomicBool};
    /// # use genzoo_train::{RunDir, TrainConfig, Trainer};
    /// # let tmp = tempfile::tempdir().unwrap();
    /// # let run = RunDir::create(tmp.path(), false).unwrap();
    /// let stop = Arc::new(AtomicBool::new(false));
    /// let trainer = Trainer::new(run, TrainConfig::default()).stop_when(stop.clone());
    /// // ... `stop.store(true, Ordering::Relaxed)` from elsewhere ends `trainer.fit(..)` early.
    /// ```
    pub fn stop_when(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stop_when = Some(flag);
        self
    }

    /// Whether the flag of [`Trainer::stop_when`] is set now.
    fn stop_asked(&self) -> bool {
        self.stop_when
            .as_ref()
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
    }

    /// The cached evaluator (a directory [`Evaluator::save`] wrote) whose
    /// features score the samples of [`TrainConfig::fid_samples`]; only the
    /// leader of a data-parallel run loads it.
    pub fn sample_quality(mut self, evaluator_dir: impl Into<PathBuf>) -> Self {
        self.evaluator_dir = Some(evaluator_dir.into());
        self
    }

    /// The scorer of [`TrainConfig::fid_samples`], where a run draws them.
    fn sample_score<B, F>(
        &self,
        family: &F,
        device: &B::Device,
    ) -> Result<Option<SampleScore<B::InnerBackend>>>
    where
        B: AutodiffBackend,
        F: Family<B>,
    {
        let n = self.config.fid_samples;
        if n == 0 {
            return Ok(None);
        }
        if !family.draws_images() {
            return Err(Error::Config(format!(
                "fid_samples = {n}: {} draws no images; its held-out metric is val_loss",
                self.identity.model
            )));
        }
        let dir = self.evaluator_dir.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "fid_samples = {n} needs the dataset's evaluator: give its directory to \
                 Trainer::sample_quality (the genzoo CLI trains and caches it)"
            ))
        })?;
        let evaluator = Evaluator::<B::InnerBackend>::load(dir, device)?;
        SampleScore::new(evaluator, n, self.config.seed).map(Some)
    }

    /// Show a progress bar (on by default; hidden anyway when stderr is not a terminal).
    pub fn progress(mut self, show: bool) -> Self {
        self.progress = show;
        self
    }

    /// The total steps of a `minutes` budget. A resumed run keeps the plan
    /// its checkpoint was made for while the budget is the same; a changed
    /// budget is planned again from the run's own seconds per step so far;
    /// a new run times a few steps first
    /// ([`Trainer::probe_seconds_per_step`]).
    #[allow(clippy::too_many_arguments)]
    fn plan_minutes<B, F, D>(
        &self,
        family: F,
        data: &D,
        device: &B::Device,
        minutes: f64,
        resumed: Option<&Manifest>,
        at: (u64, u64, usize),
        say: &dyn Fn(&str),
    ) -> Result<(u64, F)>
    where
        B: AutodiffBackend,
        F: Family<B>,
        F::Batch: ShardBatch,
        D: TrainData<B, Batch = F::Batch>,
    {
        if let Some(m) = resumed
            && m.planned_minutes == Some(minutes)
        {
            return Ok((m.total_steps, family));
        }
        let spent = resumed.map_or(0.0, |m| m.train_seconds);
        let (family, per_step, timed_on) = match resumed {
            Some(m) if m.step > 0 && m.train_seconds > 0.0 => (
                family,
                m.train_seconds / m.step as f64,
                "the run's steps so far",
            ),
            _ => {
                say(&format!(
                    "timing a few steps to plan {minutes} minutes of training"
                ));
                let (family, per_step) =
                    self.probe_seconds_per_step(family, data, device, at, minutes * 60.0)?;
                (family, per_step, "a timing of its first steps, undone")
            }
        };
        let total = (at.0 + steps_in(minutes * 60.0 - spent, per_step)).max(1);
        say(&format!(
            "{minutes} minutes of training: {total} steps planned at {:.1} ms per step ({timed_on})",
            per_step * 1e3
        ));
        Ok((total, family))
    }

    /// Seconds per training step (its batch's fetch included) of `family`
    /// on `data` from position `at`: the mean of timed steps after an
    /// untimed one, 2 to 200 of them over about 2 % of `budget` seconds (at
    /// most 30 s). The steps are then undone: the family is saved before
    /// them and reloaded after (what a resume from that point does), so the
    /// run goes on exactly as it would have without the probe. The budget is
    /// not charged for the probe's time.
    fn probe_seconds_per_step<B, F, D>(
        &self,
        family: F,
        data: &D,
        device: &B::Device,
        at: (u64, u64, usize),
        budget: f64,
    ) -> Result<(F, f64)>
    where
        B: AutodiffBackend,
        F: Family<B>,
        F::Batch: ShardBatch,
        D: TrainData<B, Batch = F::Batch>,
    {
        const MAX_TIMED: u32 = 200;
        let scratch = self.run.root().join("probe");
        if scratch.exists() {
            // Left by a call that died while probing; nothing else writes there.
            std::fs::remove_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
        }
        std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
        family.save(&scratch)?;
        let batches_per_epoch = data.batches_per_epoch().max(1);
        let window = (budget * 0.02).min(30.0);
        let (mut step, mut epoch, mut index) = at;
        let (mut family, mut timed, mut seconds) = (family, 0u32, 0.0);
        while timed < 2 || (timed < MAX_TIMED && seconds < window) {
            let t0 = Instant::now();
            let (next, _, _) = take_step(
                family,
                data,
                device,
                &self.config,
                (step, epoch, index),
                u64::MAX,
                None,
            )?;
            family = next;
            // The first step pays for lazy initialisation and allocation.
            if step > at.0 {
                seconds += t0.elapsed().as_secs_f64();
                timed += 1;
            }
            step += 1;
            index += 1;
            if index >= batches_per_epoch {
                (epoch, index) = (epoch + 1, 0);
            }
        }
        let family = family.load(&scratch)?;
        std::fs::remove_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
        Ok((family, seconds / timed as f64))
    }

    /// Trains `family` on `data` until the budget is spent (or `stop_after`).
    pub fn fit<B, F, D>(self, family: F, data: &D, device: &B::Device) -> Result<TrainOutcome<F>>
    where
        B: AutodiffBackend,
        F: Family<B>,
        F::Batch: ShardBatch,
        D: TrainData<B, Batch = F::Batch>,
    {
        self.run_loop(family, data, device, None)
    }

    /// Trains `family` as one replica of a data-parallel run: the calling
    /// thread must run a replica ([`genzoo_core::parallel::enter`]; the
    /// helpers in [`crate::data_parallel`] set that up). Every replica calls
    /// this with the same config and data: each takes its rows of every
    /// global batch, gradients are averaged before each update, and only the
    /// leader (rank 0) logs, evaluates, draws grids and writes checkpoints,
    /// in the format of a one-device run.
    pub fn fit_replica<B, F, D>(
        self,
        family: F,
        data: &D,
        device: &B::Device,
    ) -> Result<TrainOutcome<F>>
    where
        B: AutodiffBackend,
        F: Family<B>,
        F::Batch: ShardBatch,
        D: TrainData<B, Batch = F::Batch>,
    {
        let replica = parallel::current().ok_or_else(|| {
            Error::Parallel("fit_replica called on a thread that runs no replica".into())
        })?;
        if !parallel::supports_backend::<B>() {
            return Err(Error::Backend(format!(
                "data-parallel training is not available on backend {}",
                std::any::type_name::<B>()
            )));
        }
        self.run_loop(family, data, device, Some(replica))
    }

    /// The loop of [`Trainer::fit`] and [`Trainer::fit_replica`] (this
    /// thread's replica of a data-parallel run, if any).
    fn run_loop<B, F, D>(
        self,
        family: F,
        data: &D,
        device: &B::Device,
        replica: Option<Replica>,
    ) -> Result<TrainOutcome<F>>
    where
        B: AutodiffBackend,
        F: Family<B>,
        F::Batch: ShardBatch,
        D: TrainData<B, Batch = F::Batch>,
    {
        let cfg = &self.config;
        cfg.validate()?;
        if cfg.micro_batches > 1 && !family.supports_micro_batches() {
            return Err(Error::Config(format!(
                "{} cannot split its steps into micro-batches (micro_batches = {}): its step \
                 updates more than one network, or keeps state that moves with the weights; \
                 set micro_batches = 1",
                self.identity.model, cfg.micro_batches
            )));
        }
        if replica.is_some() && cfg.patience.is_some() {
            // Only the leader evaluates: the others could not stop with it.
            return Err(Error::Config(
                "early stopping (patience) runs on one device; give a data-parallel run steps \
                 or epochs, and keep_best to keep its best checkpoint"
                    .into(),
            ));
        }
        // Only the leader of a data-parallel run (or a one-device run) writes.
        let leader = replica.is_none_or(|r| r.is_leader());
        // Only the leader evaluates: the others need no evaluator.
        let sample_score = if leader {
            self.sample_score(&family, device)?
        } else {
            None
        };
        let batches_per_epoch = data.batches_per_epoch().max(1);
        let data_fingerprint = data.fingerprint();
        // Only the leader evaluates, and writes checkpoints.
        let held_out_fingerprint = if leader {
            data.held_out_fingerprint()
        } else {
            None
        };
        let logger = MetricsLogger::new(self.run.metrics_file(), self.run.metrics_csv());
        let mut events =
            RunEvents((leader && cfg.tensorboard).then(|| EventWriter::new(self.run.root())));
        let ckpt_dir = self.run.checkpoints_dir();

        let bar = if self.progress && leader {
            ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .expect("valid template"),
        );
        let say = |msg: &str| match (leader, bar.is_hidden()) {
            (false, _) => {}
            (true, true) => eprintln!("{msg}"),
            (true, false) => bar.println(msg),
        };

        // Where to start: step 0, or the newest good checkpoint.
        let mut family = family;
        let mut step: u64 = 0;
        let (mut epoch, mut index) = (0u64, 0usize);
        let mut resumed = None;
        if self.resume {
            match checkpoint::latest_good(&ckpt_dir, &self.identity, |w| say(w))? {
                Some((dir, manifest)) => {
                    same_data_position(
                        &dir,
                        &manifest,
                        cfg.batch_size,
                        batches_per_epoch,
                        data_fingerprint.as_deref(),
                    )?;
                    if leader
                        && let Some(warning) = same_held_out_data(
                            &dir,
                            &manifest,
                            held_out_fingerprint.as_deref(),
                            cfg.keep_best.as_deref(),
                        )?
                    {
                        say(&warning);
                    }
                    family = family.load(&dir)?;
                    step = manifest.step;
                    (epoch, index) = (manifest.epoch, manifest.batch_in_epoch);
                    resumed = Some((dir, manifest));
                }
                None => say(&format!(
                    "no checkpoint in {} yet: starting from step 0",
                    ckpt_dir.display()
                )),
            }
        } else if leader && !checkpoint::list_checkpoints(&ckpt_dir)?.is_empty() {
            return Err(Error::Config(format!(
                "{} already holds checkpoints: resume the run or start a new one elsewhere",
                ckpt_dir.display()
            )));
        }
        // A run starting from step 0 may start from another run's weights;
        // the other replicas of a data-parallel run get them from the
        // leader's broadcast below.
        if let (None, Some(source), true) = (&resumed, &cfg.init_from, leader) {
            let manifest = checkpoint::verify_source(source, &self.identity)?;
            family = family
                .load_weights(source)
                .map_err(|e| Error::Config(format!("init_from {}: {e}", source.display())))?;
            say(&format!(
                "starting from the weights of {} (step {} of its run), with a fresh optimizer",
                source.display(),
                manifest.step
            ));
        }
        // Training seconds spent by earlier calls: a minutes budget counts them.
        let manifest = resumed.as_ref().map(|(_, m)| m);
        let spent_before = manifest.map_or(0.0, |m| m.train_seconds);
        let mut total = match cfg.minutes {
            None => cfg.total_steps(batches_per_epoch)?,
            Some(minutes) => {
                if replica.is_some() {
                    return Err(Error::Config(
                        "a minutes budget is planned on one device; give a data-parallel run \
                         steps or epochs"
                            .into(),
                    ));
                }
                let (planned, trained) = self.plan_minutes(
                    family,
                    data,
                    device,
                    minutes,
                    manifest,
                    (step, epoch, index),
                    &say,
                )?;
                family = trained;
                planned
            }
        };
        if self.resume {
            budget_not_passed(&self.run, step, total, cfg)?;
            // The steps after the checkpoint (all of them when there was
            // none: a first one failed, or none is intact) are redone: their
            // log lines and grids go first, so that each is logged and drawn once.
            if leader {
                logger.truncate_after(step)?;
                self.run.remove_samples_after(step)?;
                events.restart_at(step + 1);
            }
        }
        bar.set_length(total);
        if let Some((dir, manifest)) = &resumed {
            say(&format!(
                "resuming from {} (step {step} of {total})",
                dir.display()
            ));
            if manifest.seed != cfg.seed {
                // Allowed (reseeding past a loss spike is a known remedy), but not silently.
                say(&format!(
                    "warning: the run was trained with seed {} and goes on with seed {}: the rest \
                     of epoch {epoch} is drawn in another order (some of its examples repeat, \
                     others are skipped), and its noise and sample grids change",
                    manifest.seed, cfg.seed
                ));
            }
        }
        if let Some(r) = &replica {
            // Every replica must start at the same step, from the leader's weights.
            let at = (step, total, batches_per_epoch);
            agree_on_start::<B>(r, at, data_fingerprint.as_deref(), device)?;
            family = family.broadcast_weights(r)?;
        }

        let params = family.num_params();
        say(&format!(
            "{} parameters; {total} steps ({batches_per_epoch} per epoch){}",
            params,
            replica.map_or(String::new(), |r| format!(
                "; data-parallel over {} replicas",
                r.world
            ))
        ));
        bar.set_position(step);
        let mut watched = match &cfg.keep_best {
            Some(metric) if leader => {
                let scored: &[&str] = if sample_score.is_some() {
                    &SampleScore::<B::InnerBackend>::METRICS
                } else {
                    &[]
                };
                check_watched_metric(&family, data, device, metric, scored)?;
                Some(WatchedMetric::new(metric, cfg.patience, manifest))
            }
            _ => None,
        };

        let start_step = step;
        // Where a resume would go on from if a checkpoint fails to be written.
        let mut newest_checkpoint = resumed.as_ref().map(|(_, m)| m.step);
        let mut space_warned = false;
        let stop_at = |total: u64| match self.stop_after {
            Some(n) => (start_step + n).min(total),
            None => total,
        };
        let mut end = stop_at(total);
        let (mut timed_out, mut stopped_early, mut interrupted) = (false, false, false);
        if let Some(w) = watched.as_ref().filter(|w| w.exhausted()) {
            // An early-stopped run, resumed: it has finished.
            say(&w.stop_message(step));
            end = step;
        }
        // Re-plans of a minutes budget made so far, and the (step, seconds)
        // the pace is measured from.
        let (mut replans, mut paced_from) = (0, (step, 0.0));
        let mut window = MetricWindow::default();
        let mut last_train = Metrics::new();
        let (mut last_eval, mut last_eval_step) = (None, None);
        let mut train_seconds = 0.0;
        let mut window_start = Instant::now();

        while step < end {
            let t0 = Instant::now();
            let (next, mut metrics, ctx) = take_step(
                family,
                data,
                device,
                cfg,
                (step, epoch, index),
                total,
                replica,
            )?;
            train_seconds += t0.elapsed().as_secs_f64();
            family = next;
            let lr = ctx.lr();
            if let Some((name, value)) = ctx.grad_norms.first().map(|n| ("grad_norm", *n)) {
                metrics.push(name, value);
            }
            let time_up = cfg
                .minutes
                .is_some_and(|m| spent_before + train_seconds >= m * 60.0);
            let stop_asked = self.stop_asked();
            let (time_up, stop_asked) = match &ctx.replica {
                // The metrics of the global batch, the leader's clock for
                // everyone, and a stop asked of any replica.
                Some(r) => {
                    let reduced = reduce_metrics::<B>(&metrics, time_up, stop_asked, r, device)?;
                    metrics = reduced.metrics;
                    (reduced.time_up, reduced.stop_asked)
                }
                None => (time_up, stop_asked),
            };
            if let Some((name, value)) = metrics.first_non_finite() {
                bar.abandon();
                return Err(Error::NonFinite {
                    step: step + 1,
                    name: format!("train_{name}"),
                    value,
                });
            }
            for warning in &ctx.warnings {
                say(&format!("warning at step {}: {warning}", step + 1));
            }
            step += 1;
            index += 1;
            parallel::heartbeat();
            if index >= batches_per_epoch {
                (epoch, index) = (epoch + 1, 0);
            }
            if time_up {
                end = step;
                timed_out = true;
            } else if stop_asked && step < end {
                // Ended here like a call's last step: logged and checkpointed.
                say(&format!("step {step}: stopping as asked"));
                end = step;
                interrupted = true;
            } else if let Some(minutes) = cfg.minutes
                && let Some(fraction) = REPLAN_AT.get(replans)
                && step - paced_from.0 >= 20
                && spent_before + train_seconds >= fraction * minutes * 60.0
            {
                // Planned again from the pace since the last plan: a CPU's
                // clock often drops after the first seconds under load,
                // which the timing of the first steps cannot see.
                replans += 1;
                let per_step = (train_seconds - paced_from.1) / (step - paced_from.0) as f64;
                paced_from = (step, train_seconds);
                let left = minutes * 60.0 - spent_before - train_seconds;
                let planned = step + steps_in(left, per_step);
                if planned.abs_diff(total) * 50 > total {
                    say(&format!(
                        "step {step}: {planned} steps planned instead of {total}, at {:.1} ms per step",
                        per_step * 1e3
                    ));
                    total = planned;
                    end = stop_at(total);
                    bar.set_length(total);
                }
            }
            window.add(&metrics, 1.0);
            bar.set_position(step);
            if let Some((name, value)) = metrics.0.first() {
                bar.set_message(format!("{name} {value:.4}"));
            }
            let epoch_end = index == 0;
            // A run ended by a minutes budget's clock is as finished as one
            // that took its planned steps: its last step is evaluated too.
            let eval_due = data.eval_batches() > 0
                && (timed_out
                    || if cfg.eval_every == 0 {
                        epoch_end || step == total
                    } else {
                        step.is_multiple_of(cfg.eval_every) || step == total
                    });
            if !leader {
                if eval_due && let Some(r) = &ctx.replica {
                    // The leader evaluates: see its call below.
                    if any_replica_asked_to_stop::<B>(self.stop_asked(), r, device)? && step < end {
                        (end, interrupted) = (step, true);
                    }
                }
                continue;
            }

            // This step's checkpoint manifest, with the best value so far.
            let manifest_now = |watched: &Option<WatchedMetric>| Manifest {
                format_version: checkpoint::FORMAT_VERSION,
                genzoo_version: env!("CARGO_PKG_VERSION").into(),
                identity: self.identity.clone(),
                step,
                epoch,
                batch_in_epoch: index,
                batch_size: Some(cfg.batch_size),
                batches_per_epoch: Some(batches_per_epoch),
                data_fingerprint: data_fingerprint.clone(),
                held_out_fingerprint: held_out_fingerprint.clone(),
                total_steps: total,
                seed: cfg.seed,
                lr,
                train_seconds: spent_before + train_seconds,
                planned_minutes: cfg.minutes,
                best: watched.as_ref().and_then(|w| w.best.clone()),
                evaluations_since_best: watched.as_ref().map_or(0, |w| w.stale),
                files: Vec::new(),
            };
            let save = |dir: &std::path::Path| -> Result<()> {
                family.save(dir)?;
                if let Some(text) = &self.config_text {
                    std::fs::write(dir.join("config.toml"), text).map_err(|e| Error::io(dir, e))?;
                }
                Ok(())
            };
            if eval_due {
                let mut eval = evaluate(&family, data, device, cfg, step)?;
                if let Some(score) = &sample_score {
                    for (name, value) in score.measure(&family)? {
                        eval.push(name, value);
                    }
                }
                let split = data.eval_split();
                let record: Vec<(String, f64)> = eval
                    .iter()
                    .map(|(k, v)| (format!("{split}_{k}"), v))
                    .collect();
                logger.log(step, &record)?;
                events.scalars(step, &record, &say);
                say(&format!(
                    "step {step}: {}",
                    record
                        .iter()
                        .map(|(k, v)| format!("{k} {v:.4}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                if let Some((name, value)) = eval.first_non_finite() {
                    bar.abandon();
                    return Err(Error::NonFinite {
                        step,
                        name: format!("{split}_{name}"),
                        value,
                    });
                }
                if let Some(w) = &mut watched
                    && w.observe(&record, step)
                {
                    checkpoint::write_checkpoint_as(
                        &ckpt_dir,
                        checkpoint::BEST,
                        manifest_now(&watched),
                        save,
                    )
                    .map_err(|e| checkpoint_not_written(e, step, newest_checkpoint))?;
                }
                if let Some(w) = watched.as_ref().filter(|w| w.exhausted())
                    && step < end
                {
                    say(&w.stop_message(step));
                    (end, stopped_early) = (step, true);
                }
                (last_eval, last_eval_step) = (Some(eval), Some(step));
                // A signal during the evaluation, which can take longer than
                // a step, ends the run at this step rather than after the
                // next; on every replica of a data-parallel run, which wait
                // for the leader's evaluation here, not in the next step.
                let stop_asked = match &ctx.replica {
                    Some(r) => any_replica_asked_to_stop::<B>(self.stop_asked(), r, device)?,
                    None => self.stop_asked(),
                };
                if stop_asked && step < end {
                    say(&format!("step {step}: stopping as asked"));
                    (end, interrupted) = (step, true);
                }
            }
            // After the evaluation, which may have ended the run here.
            let last = step == end;
            if step.is_multiple_of(cfg.log_every.max(1)) || last {
                let elapsed = window_start.elapsed().as_secs_f64().max(1e-9);
                last_train = window.mean();
                let mut record: Vec<(String, f64)> = last_train
                    .iter()
                    .map(|(k, v)| (format!("train_{k}"), v))
                    .collect();
                record.push(("lr".into(), lr));
                record.push((
                    "epoch".into(),
                    epoch as f64 + index as f64 / batches_per_epoch as f64,
                ));
                record.push(("steps_per_sec".into(), window.count as f64 / elapsed));
                logger.log(step, &record)?;
                events.scalars(step, &record, &say);
                window = MetricWindow::default();
                window_start = Instant::now();
            }
            if cfg.sample_every > 0 && step.is_multiple_of(cfg.sample_every) {
                let grid = write_grid(&family, &self.run, cfg, &format!("step-{step:08}.png"))?;
                events.sample(step, &grid, &say);
            }
            let ckpt_due = if cfg.checkpoint_every == 0 {
                epoch_end
            } else {
                step.is_multiple_of(cfg.checkpoint_every)
            };
            if ckpt_due || last {
                let written = checkpoint::write_checkpoint(&ckpt_dir, manifest_now(&watched), save)
                    .map_err(|e| checkpoint_not_written(e, step, newest_checkpoint))?;
                newest_checkpoint = Some(step);
                checkpoint::prune(&ckpt_dir, cfg.keep_checkpoints)?;
                // Said once a call, while there is time to make room.
                if !space_warned && !last {
                    let size = checkpoint::size_on_disk(&written)?;
                    let warning = checkpoint::available_bytes(&ckpt_dir)
                        .and_then(|free| checkpoint::space_warning(&ckpt_dir, free, size));
                    if let Some(warning) = warning {
                        say(&warning);
                        space_warned = true;
                    }
                }
                // A figure is not worth stopping a run for.
                if let Err(e) = crate::plot::write_run_curves(&self.run) {
                    say(&format!("warning: curves.svg not written: {e}"));
                }
            }
        }
        // The budget is spent: the planned steps are done, or a minutes
        // budget ran out on the clock.
        if leader && (step == total || timed_out || stopped_early) && step > start_step {
            let grid = write_grid(&family, &self.run, cfg, "final.png")?;
            // The same grid as a periodic one of this step: logged once.
            if cfg.sample_every == 0 || !step.is_multiple_of(cfg.sample_every) {
                events.sample(step, &grid, &say);
            }
            write_progress_strip(&self.run.samples_dir())?;
        }
        bar.finish_and_clear();
        Ok(TrainOutcome {
            family,
            step,
            total_steps: total,
            last_train,
            last_eval,
            last_eval_step,
            train_seconds,
            total_train_seconds: spent_before + train_seconds,
            steps_this_call: step - start_step,
            interrupted,
        })
    }
}

/// The whole steps that fit in `seconds` (none when it is not positive) at
/// `per_step` seconds each: the rule of every plan of a minutes budget.
fn steps_in(seconds: f64, per_step: f64) -> u64 {
    (seconds.max(0.0) / per_step).floor() as u64
}

/// The error of a checkpoint of `step` that could not be written (a full
/// disk, most often): training stops there rather than go on with nothing
/// saved, and the message says what the run keeps.
fn checkpoint_not_written(error: Error, step: u64, newest: Option<u64>) -> Error {
    let kept = match newest {
        Some(kept) => format!(
            "The run keeps its checkpoint of step {kept}, which a resume goes on from \
             (steps {} to {step} are not kept)",
            kept + 1
        ),
        None => "The run has no checkpoint yet: a resume starts it from step 0".into(),
    };
    Error::Other(format!(
        "training stopped at step {step}, whose checkpoint could not be written: {error}. \
         {kept}; free space (or fix the cause) first"
    ))
}

/// Refuses to resume from a checkpoint whose data position means another
/// place in this call's data: its steps and `batch_in_epoch` count batches
/// of the run's batch size, over epochs of its training set, so a resume
/// with another batch size or another amount of data would go on from the
/// wrong examples (or past an epoch's end), and an epochs budget would count
/// other steps. Other data of the same size (another dataset, or a file
/// changed on disk) is told by its fingerprint.
fn same_data_position(
    dir: &std::path::Path,
    manifest: &Manifest,
    batch_size: usize,
    batches_per_epoch: usize,
    data_fingerprint: Option<&str>,
) -> Result<()> {
    let why = if manifest.batch_size.is_some_and(|b| b != batch_size) {
        format!(
            "it was trained with batches of {} and this call asks for {batch_size}",
            manifest.batch_size.unwrap_or_default()
        )
    } else if manifest
        .batches_per_epoch
        .is_some_and(|n| n != batches_per_epoch)
    {
        format!(
            "its training data gave {} batches per epoch and this call's gives {batches_per_epoch} \
             (another dataset or --limit)",
            manifest.batches_per_epoch.unwrap_or_default()
        )
    } else if let (Some(then), Some(now)) = (&manifest.data_fingerprint, data_fingerprint)
        && then != now
    {
        format!(
            "its training examples are not this call's: as many batches, but another \
             fingerprint ({}… then, {}… now), from another dataset, --data-dir, --text or --limit",
            then.get(..12).unwrap_or(then),
            now.get(..12).unwrap_or(now)
        )
    } else if manifest.batch_in_epoch >= batches_per_epoch {
        // A checkpoint from before these were recorded.
        format!(
            "its place in the data, batch {} of epoch {}, is past the end of this data's epochs \
             of {batches_per_epoch} batches (another batch size or dataset)",
            manifest.batch_in_epoch, manifest.epoch
        )
    } else {
        return Ok(());
    };
    Err(Error::Config(format!(
        "{} cannot be resumed here: {why}. A run keeps its batch size and its training data, \
         which its steps, its learning-rate schedule and its place in the data count in: resume \
         with those (--micro-batches N splits a batch to save memory), or start a new run",
        dir.display()
    )))
}

/// Whether a resumed run evaluates on the held-out examples its checkpoint
/// was evaluated on. Other ones (a changed test split, the same training
/// data) are a warning, since the log's held-out figures are then on other
/// examples than the ones to come, and an error when the run keeps its best
/// checkpoint by a value measured on the old ones.
fn same_held_out_data(
    dir: &Path,
    manifest: &Manifest,
    now: Option<&str>,
    keep_best: Option<&str>,
) -> Result<Option<String>> {
    let (Some(then), Some(now)) = (manifest.held_out_fingerprint.as_deref(), now) else {
        return Ok(None);
    };
    if then == now {
        return Ok(None);
    }
    let digests = format!(
        "{}… then, {}… now",
        then.get(..12).unwrap_or(then),
        now.get(..12).unwrap_or(now)
    );
    match (&manifest.best, keep_best) {
        (Some(best), Some(_)) => Err(Error::Config(format!(
            "{} cannot be resumed here: its held-out examples are not this call's ({digests}), \
             and its best {} ({:.4} at step {}) was measured on the old ones, so the best \
             checkpoint would be picked across two held-out sets. Resume with the run's held-out \
             data, or start a new run",
            dir.display(),
            best.metric,
            best.value,
            best.step
        ))),
        _ => Ok(Some(format!(
            "warning: the held-out examples are not the ones {} was evaluated on ({digests}): \
             held-out figures from here on are on other examples than the log's",
            dir.display()
        ))),
    }
}

/// Refuses a budget of `total` steps that a resumed run at `step` has
/// passed (a steps or epochs budget; a minutes one is planned from the step
/// it is at): there is nothing to train, and "step 320 of 40" would read as
/// a bug.
fn budget_not_passed(run: &RunDir, step: u64, total: u64, cfg: &TrainConfig) -> Result<()> {
    if step <= total {
        return Ok(());
    }
    let budget = match (cfg.steps, cfg.epochs) {
        (None, Some(1)) => format!("1 epoch, {total} steps"),
        (None, Some(epochs)) => format!("{epochs} epochs, {total} steps"),
        _ => format!("{total} steps"),
    };
    Err(Error::Config(format!(
        "{} is at step {step} already, past this call's budget of {budget}: give a larger \
         budget to train it further",
        run.root().display()
    )))
}

/// One training step at `(step, epoch, index)` of a run of `total` steps:
/// seed, fetch the batch (this replica's rows of it in a data-parallel run)
/// and let the family step at the scheduled learning rate.
fn take_step<B, F, D>(
    family: F,
    data: &D,
    device: &B::Device,
    cfg: &TrainConfig,
    (step, epoch, index): (u64, u64, usize),
    total: u64,
    parallel: Option<Replica>,
) -> Result<(F, Metrics, StepContext)>
where
    B: AutodiffBackend,
    F: Family<B>,
    F::Batch: ShardBatch,
    D: TrainData<B, Batch = F::Batch>,
{
    if parallel.is_none_or(|r| r.is_leader()) {
        // Backend randomness is seeded by the leader only: burn's CPU
        // backend keeps one RNG per process, which replicas on threads
        // would race on. genzoo's families draw none in a step (their
        // noise and dropout masks come from the step's own stream
        // below); this seeds what a user's own family draws.
        seed_step::<B>(device, cfg.seed, step + 1);
    }
    let mut batch = data.train_batch(epoch, index, device);
    let rows = batch.rows();
    let mut replica = None;
    if let Some(r) = parallel {
        if rows < r.world {
            return Err(Error::Config(format!(
                "a batch of {rows} examples cannot be split over {} replicas: raise batch_size",
                r.world
            )));
        }
        let (start, end) = r.shard_range(rows);
        batch = batch.shard(start, end);
        parallel::set_batch(rows);
        replica = Some(Replica {
            batch: Some(rows),
            ..r
        });
    }
    let mut ctx = StepContext::new(step + 1, cfg.lr);
    ctx.lr_factor = cfg.schedule.factor(cfg.lr, step, total);
    ctx.clip_norm = cfg.clip_norm;
    ctx.replica = replica;
    let seed = derive(cfg.seed, "noise", step + 1);
    if cfg.micro_batches > 1 {
        let (family, metrics) = micro_batched_step(family, batch, rows, cfg, seed, &mut ctx)?;
        return Ok((family, metrics, ctx));
    }
    let _noise = match replica {
        Some(r) => noise::begin_sharded(seed, r),
        None => noise::begin(seed),
    };
    let (family, metrics) = family.train_step(batch, &mut ctx)?;
    Ok((family, metrics, ctx))
}

/// One step as `cfg.micro_batches` micro-batches (at most one a row) of
/// this replica's rows of a global batch of `rows`. Micro-batch k of
/// replica r takes the rows that replica r·n + k of a run n times as wide
/// would, and draws that replica's noise, so the summed gradient is the
/// whole batch's; the family adds the gradients up in `ctx` and the last
/// micro-batch updates. The metrics are the micro-batches' means weighted
/// by their rows.
fn micro_batched_step<B, F>(
    mut family: F,
    batch: F::Batch,
    rows: usize,
    cfg: &TrainConfig,
    seed: u64,
    ctx: &mut StepContext,
) -> Result<(F, Metrics)>
where
    B: AutodiffBackend,
    F: Family<B>,
    F::Batch: ShardBatch,
{
    let own = ctx.replica.unwrap_or(Replica::new(0, 1));
    let (first, last) = own.shard_range(rows);
    // A short last batch of an epoch may have fewer rows than micro-batches.
    let count = cfg.micro_batches.min(last - first);
    let mut metrics = MetricWindow::default();
    for index in 0..count {
        let part = Replica {
            rank: own.rank * count + index,
            world: own.world * count,
            batch: Some(rows),
        };
        let (start, end) = part.shard_range(rows);
        ctx.begin_micro_batch(MicroBatch {
            index,
            count,
            weight: (end - start) as f64 / (last - first) as f64,
        });
        let _noise = noise::begin_sharded(seed, part);
        let micro = batch.clone().shard(start - first, end - first);
        let (next, step_metrics) = family.train_step(micro, ctx)?;
        family = next;
        metrics.add(&step_metrics, (end - start) as f64);
    }
    Ok((family, metrics.mean()))
}

/// Checks before training that `metric` (`keep_best`) is one of the
/// run's held-out metrics, by evaluating one held-out batch: a misspelt
/// name must not surface at the first evaluation, hours in.
fn check_watched_metric<B, F, D>(
    family: &F,
    data: &D,
    device: &B::Device,
    metric: &str,
    scored: &[&str],
) -> Result<()>
where
    B: AutodiffBackend,
    F: Family<B>,
    D: TrainData<B, Batch = F::Batch>,
{
    if data.eval_batches() == 0 {
        return Err(Error::Config(format!(
            "keep_best = \"{metric}\", but the run has no held-out data to evaluate"
        )));
    }
    let _noise = noise::begin(0);
    let split = data.eval_split();
    let (batch, _) = data.eval_batch(0, device);
    let metrics = family.eval_batch(batch)?;
    let names: Vec<String> = (metrics.iter().map(|(name, _)| name))
        .chain(scored.iter().copied())
        .map(|name| format!("{split}_{name}"))
        .collect();
    if names.iter().any(|name| name == metric) {
        return Ok(());
    }
    Err(Error::Config(format!(
        "keep_best = \"{metric}\" is not a held-out metric of this run; it has {}",
        names.join(", ")
    )))
}

/// The held-out metric a run watches (`keep_best`): its lowest value so
/// far, the evaluations since it last improved, and how many of those end
/// the run (`patience`).
struct WatchedMetric {
    metric: String,
    best: Option<BestValue>,
    stale: u64,
    patience: Option<u64>,
}

impl WatchedMetric {
    /// Watching `metric`, from where the checkpoint a run resumes from left it.
    fn new(metric: &str, patience: Option<u64>, resumed: Option<&Manifest>) -> Self {
        let best = resumed
            .and_then(|m| m.best.clone())
            .filter(|b| b.metric == metric);
        let stale = match (&best, resumed) {
            (Some(_), Some(m)) => m.evaluations_since_best,
            _ => 0,
        };
        Self {
            metric: metric.into(),
            best,
            stale,
            patience,
        }
    }

    /// Takes the evaluation `record` of `step`; true when it is a new best.
    fn observe(&mut self, record: &[(String, f64)], step: u64) -> bool {
        let Some(&(_, value)) = record.iter().find(|(name, _)| *name == self.metric) else {
            return false;
        };
        if self.best.as_ref().is_some_and(|b| value >= b.value) {
            self.stale += 1;
            return false;
        }
        self.best = Some(BestValue {
            metric: self.metric.clone(),
            value,
            step,
        });
        self.stale = 0;
        true
    }

    /// Whether `patience` evaluations in a row have not improved on the best.
    fn exhausted(&self) -> bool {
        self.patience.is_some_and(|p| self.stale >= p)
    }

    fn stop_message(&self, step: u64) -> String {
        match &self.best {
            Some(b) => format!(
                "step {step}: {} evaluations without a lower {} than {:.4} (step {}): stopping \
                 early (`sample --checkpoint best` takes that one)",
                self.stale, b.metric, b.value, b.step
            ),
            None => format!("step {step}: stopping early"),
        }
    }
}

/// Checks that every replica starts at the same step of the same budget, on
/// the same data (a node without the checkpoint the others resume from, or
/// with other files or flags, would not).
fn agree_on_start<B: AutodiffBackend>(
    replica: &Replica,
    (step, total, batches_per_epoch): (u64, u64, usize),
    data_fingerprint: Option<&str>,
    device: &B::Device,
) -> Result<()> {
    // The fingerprint's first 32 bits tell other data apart but for a
    // chance in four billion.
    let data = data_fingerprint.map_or("none", |f| f.get(..8).unwrap_or(f));
    let data_bits = u64::from_str_radix(data, 16).unwrap_or(0);
    let own = [step, total, batches_per_epoch as u64, data_bits];
    if parallel::all_replicas_equal::<B::InnerBackend>(&own, replica, device)? {
        return Ok(());
    }
    Err(Error::Parallel(format!(
        "replicas disagree on where the run starts or on its data: replica {} starts at step \
         {step} of {total}, with {batches_per_epoch} batches per epoch of training examples \
         whose fingerprint begins {data}; give every node the same run directory and checkpoints \
         (resume all or none), the same settings and the same data",
        replica.rank
    )))
}

/// The step's metrics averaged over replicas (weighted by their shares of
/// the global batch, so per-example means become the global batch's),
/// whether the leader's time budget is spent, and whether any replica was
/// asked to stop: every replica then ends at the same step.
///
/// Replicas usually report the same metrics; where a family's metrics
/// depend on the rows drawn (the DDPM's loss per timestep quarter), only
/// the first (the loss) is averaged and the rest are this replica's own.
fn reduce_metrics<B: AutodiffBackend>(
    metrics: &Metrics,
    time_up: bool,
    stop_asked: bool,
    replica: &Replica,
    device: &B::Device,
) -> Result<ReducedStep> {
    // A signature of the metric names.
    let signature = metrics.iter().fold(17u32, |h, (k, _)| {
        k.bytes()
            .fold(h, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
    });
    let own = [metrics.0.len() as u64, u64::from(signature)];
    let same = parallel::all_replicas_equal::<B::InnerBackend>(&own, replica, device)?;
    let shared = if same {
        metrics.0.len()
    } else {
        1.min(metrics.0.len())
    };

    let weight = replica.weight();
    let mut values: Vec<f64> = metrics.iter().take(shared).map(|(_, v)| v).collect();
    values.push(replica_flag(replica.is_leader() && time_up, weight));
    values.push(replica_flag(stop_asked, weight));
    let reduced = parallel::all_reduce_values::<B::InnerBackend>(&values, weight, replica, device)?;
    let metrics = Metrics(
        metrics
            .iter()
            .enumerate()
            .map(|(i, (k, v))| (k.to_string(), if i < shared { reduced[i] } else { v }))
            .collect(),
    );
    Ok(ReducedStep {
        metrics,
        time_up: reduced[shared] > 0.0,
        stop_asked: reduced[shared + 1] > 0.0,
    })
}

/// Whether any replica has been asked to stop ([`Trainer::stop_when`]): every
/// replica calls it after the steps the leader evaluates.
fn any_replica_asked_to_stop<B: AutodiffBackend>(
    asked: bool,
    replica: &Replica,
    device: &B::Device,
) -> Result<bool> {
    let weight = replica.weight();
    let flag = replica_flag(asked, weight);
    let reduced = parallel::all_reduce_values::<B::InnerBackend>(&[flag], weight, replica, device)?;
    Ok(reduced[0] > 0.0)
}

/// A replica's yes/no for a weighted all-reduce (weight = its share of the
/// batch): scaled by 1/weight, so that the reduced mean is the number of
/// replicas that raised it / world, above 0 when any did.
fn replica_flag(raised: bool, weight: f64) -> f64 {
    if raised { 1.0 / weight } else { 0.0 }
}

/// What the replicas of a data-parallel step agree on after it.
struct ReducedStep {
    /// The metrics of the global batch.
    metrics: Metrics,
    /// The leader's minutes budget is spent.
    time_up: bool,
    /// Some replica was asked to stop ([`Trainer::stop_when`]).
    stop_asked: bool,
}

/// Averages a family's metrics over held-out batches, weighting by batch size.
pub fn evaluate<B, F, D>(
    family: &F,
    data: &D,
    device: &B::Device,
    cfg: &TrainConfig,
    step: u64,
) -> Result<Metrics>
where
    B: AutodiffBackend,
    F: Family<B>,
    D: TrainData<B, Batch = F::Batch>,
{
    // Evaluation noise is seeded too, so an evaluation is reproducible.
    B::seed(device, derive(cfg.seed, "eval", step));
    let _noise = noise::begin(derive(cfg.seed, "eval-noise", step));
    let batches = cfg
        .eval_batches
        .map_or(data.eval_batches(), |n| n.min(data.eval_batches()));
    let mut totals = MetricWindow::default();
    for i in 0..batches {
        let (batch, n) = data.eval_batch(i, device);
        totals.add(&family.eval_batch(batch)?, n as f64);
        genzoo_core::parallel::heartbeat();
    }
    Ok(totals.mean())
}

/// Writes the run's sample grid `name` into `samples/` (a text sample
/// instead, as `.txt`, for text models) and returns its path.
fn write_grid<B: AutodiffBackend, F: Family<B>>(
    family: &F,
    run: &RunDir,
    cfg: &TrainConfig,
    name: &str,
) -> Result<PathBuf> {
    // One fixed noise seed for every grid of a run, so grids show progress, not noise.
    let seed = derive(cfg.seed, "grid", 0);
    if !family.draws_images() {
        // Text models write a text sample instead of a grid.
        let request = TextRequest {
            prompt: String::new(),
            tokens: 300,
            sampling: TokenSampling {
                temperature: 0.8,
                ..TokenSampling::default()
            },
            seed,
        };
        let text = family.generate_bytes(&request)?;
        let path = run.samples_dir().join(name).with_extension("txt");
        std::fs::create_dir_all(run.samples_dir()).map_err(|e| Error::io(run.samples_dir(), e))?;
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))?;
        return Ok(path);
    }
    let request = SampleRequest {
        n: cfg.samples,
        seed,
        class: None,
        ..Default::default()
    };
    let images = family.sample_images(&request)?;
    let path = run.samples_dir().join(name);
    save_grid(images, default_columns(cfg.samples), &path)?;
    Ok(path)
}

/// The run's TensorBoard events (the leader's, unless `tensorboard` is
/// off), beside its metrics files. Unlike those, which resume and compare
/// read, they are not worth stopping a run for: a failed write is said
/// once and ends them.
struct RunEvents(Option<EventWriter>);

impl RunEvents {
    fn restart_at(&mut self, step: u64) {
        if let Some(writer) = &mut self.0 {
            writer.restart_at(step);
        }
    }

    /// A logged record, its split's prefix as TensorBoard's section
    /// (`train_loss` as `train/loss`, `val_loss` as `val/loss`).
    fn scalars(&mut self, step: u64, record: &[(String, f64)], say: &dyn Fn(&str)) {
        if let Some(writer) = &mut self.0 {
            let tagged: Vec<(String, f64)> = record
                .iter()
                .map(|(name, value)| {
                    let tag = ["train_", "test_", "val_"]
                        .iter()
                        .find_map(|split| {
                            let rest = name.strip_prefix(split)?;
                            Some(format!("{}/{rest}", &split[..split.len() - 1]))
                        })
                        .unwrap_or_else(|| name.clone());
                    (tag, *value)
                })
                .collect();
            let written = writer.scalars(step, &tagged);
            self.check(written, say);
        }
    }

    /// A sample grid (PNG) or text sample (`.txt`) that `write_grid` wrote.
    fn sample(&mut self, step: u64, path: &Path, say: &dyn Fn(&str)) {
        let Some(writer) = &mut self.0 else {
            return;
        };
        let written = std::fs::read(path)
            .map_err(|e| Error::io(path, e))
            .and_then(|bytes| match path.extension().and_then(|e| e.to_str()) {
                Some("txt") => writer.text(step, "samples", &String::from_utf8_lossy(&bytes)),
                _ => writer.png(step, "samples", &bytes),
            });
        self.check(written, say);
    }

    fn check(&mut self, written: Result<()>, say: &dyn Fn(&str)) {
        if let Err(e) = written {
            say(&format!(
                "warning: TensorBoard events no longer written ({e}); metrics.jsonl goes on"
            ));
            self.0 = None;
        }
    }
}

/// Lays up to 8 of the run's periodic grids (`step-*.png`, evenly spaced,
/// the last included) side by side in `progress.png`: training at a glance.
fn write_progress_strip(samples: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(samples) else {
        return Ok(());
    };
    let mut grids: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-") && n.ends_with(".png"))
        })
        .collect();
    grids.sort();
    if grids.len() < 2 {
        return Ok(());
    }
    let picks: Vec<&PathBuf> = if grids.len() <= 8 {
        grids.iter().collect()
    } else {
        (0..8).map(|i| &grids[i * (grids.len() - 1) / 7]).collect()
    };
    let images = picks
        .iter()
        .map(|p| {
            image::open(p)
                .map(|i| i.to_rgb8())
                .map_err(|e| Error::Other(format!("{}: {e}", p.display())))
        })
        .collect::<Result<Vec<_>>>()?;
    let (w, h) = (
        images.iter().map(|i| i.width()).sum::<u32>(),
        images.iter().map(|i| i.height()).max().unwrap_or(0),
    );
    let mut strip = image::RgbImage::new(w, h);
    let mut x = 0;
    for img in &images {
        image::imageops::replace(&mut strip, img, x as i64, 0);
        x += img.width();
    }
    let path = samples.join("progress.png");
    strip
        .save(&path)
        .map_err(|e| Error::Other(format!("{}: {e}", path.display())))
}

/// Weighted running sums of metrics: training steps between two log lines
/// (weight 1 each), or held-out batches (weighted by their size).
#[derive(Default)]
struct MetricWindow {
    sums: Vec<(String, f64)>,
    weight: f64,
    count: usize,
}

impl MetricWindow {
    fn add(&mut self, m: &Metrics, weight: f64) {
        for (k, v) in m.iter() {
            match self.sums.iter_mut().find(|(name, _)| name == k) {
                Some((_, s)) => *s += v * weight,
                None => self.sums.push((k.to_string(), v * weight)),
            }
        }
        self.weight += weight;
        self.count += 1;
    }

    /// The weighted mean of each metric.
    fn mean(&self) -> Metrics {
        let weight = if self.weight > 0.0 { self.weight } else { 1.0 };
        Metrics(
            self.sums
                .iter()
                .map(|(k, s)| (k.clone(), s / weight))
                .collect(),
        )
    }
}
