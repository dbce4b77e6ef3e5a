//! The `genzoo` binary end to end on a generated MNIST-format directory:
//! train, sample, info, resume, and the errors a user meets first.

use std::path::Path;
use std::process::{Command, Output};

use genzoo::data::synthetic::write_idx_dataset;
use genzoo::train::logger::read_jsonl;

use crate::support::{genzoo, output_text, read_json, tensorboard_files, train_losses};

fn ok(out: &Output) -> String {
    let text = output_text(out);
    assert!(out.status.success(), "genzoo failed:\n{text}");
    text
}

fn fails(out: &Output) -> String {
    let text = output_text(out);
    assert!(!out.status.success(), "genzoo should have failed:\n{text}");
    text
}

#[test]
fn train_sample_info_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 64, 32, 28, 10).unwrap();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "vae-mlp",
            "--dataset",
            "idx:digits",
            "--out",
            "runs/vae",
            "--batch-size",
            "16",
            "--steps",
            "6",
        ];
        args.extend_from_slice(extra);
        genzoo(&args, dir)
    };
    let text = ok(&train(&["--checkpoint-every", "3", "--sample-every", "3"]));
    assert!(text.contains("652824 parameters"), "{text}");
    assert!(text.contains("test: neg_elbo"), "{text}");
    let run = dir.join("runs/vae");
    for f in [
        "config.toml",
        "metrics.jsonl",
        "metrics.csv",
        "samples/step-00000003.png",
        "samples/final.png",
        "checkpoints/step-00000006/manifest.json",
        "curves.svg",
    ] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    // TensorBoard's events, unless asked for none (which the run keeps).
    assert_eq!(tensorboard_files(&run).len(), 1);
    ok(&genzoo(
        &[
            "train",
            "vae-mlp",
            "--dataset",
            "idx:digits",
            "--out",
            "runs/quiet",
            "--steps",
            "2",
            "--no-tensorboard",
        ],
        dir,
    ));
    assert!(tensorboard_files(&dir.join("runs/quiet")).is_empty());
    let quiet = std::fs::read_to_string(dir.join("runs/quiet/config.toml")).unwrap();
    assert!(quiet.contains("tensorboard = false"), "{quiet}");
    // The loss curves (β = 1: the loss is the −ELBO, one panel), training
    // and test lines; `plot` overlays runs into --out and asks for it.
    let curves = std::fs::read_to_string(run.join("curves.svg")).unwrap();
    assert!(
        curves.contains("neg_elbo") && curves.contains("test"),
        "{curves}"
    );
    ok(&genzoo(
        &["plot", "runs/vae", "runs/vae", "--out", "both.svg"],
        dir,
    ));
    let both = std::fs::read_to_string(dir.join("both.svg")).unwrap();
    assert!(both.contains("runs/vae train"), "{both}");
    let err = fails(&genzoo(&["plot", "runs/vae", "runs/vae"], dir));
    assert!(err.contains("--out"), "{err}");
    ok(&genzoo(
        &[
            "plot",
            "runs/vae",
            "--metrics",
            "kl,reconstruction",
            "--out",
            "kl.svg",
        ],
        dir,
    ));
    let kl = std::fs::read_to_string(dir.join("kl.svg")).unwrap();
    assert!(
        kl.contains("reconstruction") && !kl.contains("neg_elbo"),
        "{kl}"
    );
    let err = fails(&genzoo(
        &["plot", "runs/vae", "--metrics", "fid", "--out", "x.svg"],
        dir,
    ));
    assert!(
        err.contains("no run logged 'fid'") && err.contains("kl"),
        "{err}"
    );

    // Same seed and checkpoint: byte-identical grids; another seed: another grid.
    ok(&genzoo(
        &[
            "sample", "--run", "runs/vae", "--n", "16", "--seed", "3", "--out", "a.png",
        ],
        dir,
    ));
    ok(&genzoo(
        &[
            "sample", "--run", "runs/vae", "--n", "16", "--seed", "3", "--out", "b.png",
        ],
        dir,
    ));
    ok(&genzoo(
        &[
            "sample", "--run", "runs/vae", "--n", "16", "--seed", "4", "--out", "c.png",
        ],
        dir,
    ));
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    assert_eq!(read("a.png"), read("b.png"));
    assert_ne!(read("a.png"), read("c.png"));
    // An output name of another format is refused, not written as the wrong one.
    for (args, needle) in [
        (
            &["sample", "--run", "runs/vae", "--out", "grid.jpg"][..],
            "grid.jpg: a sample grid is a .png file",
        ),
        (
            &["plot", "runs/vae", "--out", "curves.png"],
            "curves.png: a plot is a .svg file",
        ),
        (
            &["export", "weights", "--run", "runs/vae", "--out", "w.pt"],
            "w.pt: the weights file is a .safetensors file",
        ),
    ] {
        let err = fails(&genzoo(args, dir));
        assert!(err.contains(needle), "{err}");
    }
    for refused in ["grid.jpg", "curves.png", "w.pt"] {
        assert!(!dir.join(refused).exists(), "{refused}");
    }
    let img = image::open(dir.join("a.png")).unwrap();
    assert_eq!((img.width(), img.height()), (4 * 30 + 2, 4 * 30 + 2));

    let info = ok(&genzoo(&["info", "--run", "runs/vae"], dir));
    for needle in [
        "vae-mlp",
        "652824",
        "step 6 of 6",
        "test_neg_elbo",
        "train_loss",
    ] {
        assert!(info.contains(needle), "info lacks '{needle}':\n{info}");
    }

    // A second run into the same directory is refused and deletes nothing.
    let err = fails(&train(&[]));
    assert!(
        err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    assert!(run.join("checkpoints/step-00000006").exists());

    // Extend the budget and resume.
    let text = ok(&genzoo(&["resume", "runs/vae", "--steps", "9"], dir));
    assert!(
        text.contains("resuming from") && text.contains("step 6 of 9"),
        "{text}"
    );
    assert!(!text.contains("warning"), "{text}");
    // Another seed is allowed, with a warning.
    let text = ok(&genzoo(
        &["resume", "runs/vae", "--steps", "10", "--seed", "99"],
        dir,
    ));
    assert!(
        text.contains("warning: the run was trained with seed")
            && text.contains("goes on with seed 99"),
        "{text}"
    );
    assert!(run.join("checkpoints/step-00000009").exists());

    // A minutes budget: planned from the run's pace so far, then trained.
    let text = ok(&genzoo(&["resume", "runs/vae", "--minutes", "0.005"], dir));
    assert!(
        text.contains("0.005 minutes of training:") && text.contains("(the run's steps so far)"),
        "{text}"
    );
    let err = fails(&genzoo(
        &["resume", "runs/vae", "--steps", "5", "--minutes", "1"],
        dir,
    ));
    assert!(err.contains("cannot be used with"), "{err}");

    // Sampling a class from an unconditional model is a clear error.
    let err = fails(&genzoo(
        &[
            "sample", "--run", "runs/vae", "--class", "3", "--out", "d.png",
        ],
        dir,
    ));
    assert!(err.contains("not class-conditional"), "{err}");

    // A directory that is not a run (here its parent) is said to be one,
    // by every command that reads a run.
    for command in [
        &["resume", "runs"][..],
        &["info", "--run", "runs"],
        &["sample", "--run", "runs"],
        &["eval", "--run", "runs"],
        &[
            "export",
            "weights",
            "--run",
            "runs",
            "--out",
            "w.safetensors",
        ],
    ] {
        let err = fails(&genzoo(command, dir));
        assert!(
            err.contains("runs is not a run directory (it has no config.toml)"),
            "{command:?}: {err}"
        );
    }
    let err = fails(&genzoo(&["info", "--run", "runs/none"], dir));
    assert!(err.contains("(it does not exist)"), "{err}");
}

#[test]
fn a_failed_resume_keeps_the_runs_config_and_info_still_shows_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 64, 32, 28, 10).unwrap();
    ok(&genzoo(
        &[
            "train",
            "vae-mlp",
            "--dataset",
            "idx:digits",
            "--out",
            "runs/v",
            "--batch-size",
            "16",
            "--steps",
            "4",
        ],
        dir,
    ));
    let run = dir.join("runs/v");
    let config = std::fs::read(run.join("config.toml")).unwrap();
    // The checkpoint as an older genzoo wrote it (format 1).
    let manifest = run.join("checkpoints/step-00000004/manifest.json");
    let written = std::fs::read_to_string(&manifest).unwrap();
    let current = format!(
        "\"format_version\": {}",
        genzoo::train::checkpoint::FORMAT_VERSION
    );
    std::fs::write(
        &manifest,
        written.replace(&current, "\"format_version\": 1"),
    )
    .unwrap();

    let err = fails(&genzoo(
        &["resume", "runs/v", "--steps", "8", "--lr", "0.5"],
        dir,
    ));
    assert!(
        err.contains("format 1") && err.contains("keeps the config.toml it had"),
        "{err}"
    );
    assert_eq!(std::fs::read(run.join("config.toml")).unwrap(), config);
    let info = ok(&genzoo(&["info", "--run", "runs/v"], dir));
    assert!(
        info.contains("checkpoint: unusable") && info.contains("format 1"),
        "{info}"
    );
    assert!(
        info.contains("test_neg_elbo"),
        "the metrics are still shown:\n{info}"
    );

    // A resume that trains keeps its settings.
    std::fs::write(&manifest, written).unwrap();
    ok(&genzoo(&["resume", "runs/v", "--steps", "8"], dir));
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("steps = 8"), "{config}");

    // So does one that checkpointed before it failed: those checkpoints
    // were trained with its settings, which a plain resume must go on with.
    let err = fails(&genzoo(
        &[
            "resume",
            "runs/v",
            "--steps",
            "40",
            "--lr",
            "1000000",
            "--checkpoint-every",
            "1",
        ],
        dir,
    ));
    assert!(
        err.contains("train_loss is") && !err.contains("keeps the config.toml it had"),
        "{err}"
    );
    assert!(
        run.join("checkpoints/step-00000009").exists(),
        "the diverging resume checkpointed no step before it failed:\n{err}"
    );
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        config.contains("lr = 1000000.0") && config.contains("steps = 40"),
        "{config}"
    );
}

/// Runs genzoo with `args` in `dir`, calls `meanwhile` with its process id
/// once `metrics` (a run's metrics.jsonl) logs a training step, then sends
/// it SIGINT, and returns what it printed and the step it says it stopped at.
#[cfg(unix)]
fn interrupt_after_a_step(
    args: &[&str],
    dir: &Path,
    metrics: &Path,
    meanwhile: impl FnOnce(u32),
) -> (Output, u64) {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let mut child = Command::new(env!("CARGO_BIN_EXE_genzoo"))
        .args(args)
        .current_dir(dir)
        .env("GENZOO_OFFLINE", "1")
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let trained_a_step =
        || std::fs::read_to_string(metrics).is_ok_and(|t| t.contains("train_loss"));
    while !trained_a_step() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "genzoo ended before its first step"
        );
        assert!(Instant::now() < deadline, "no step logged in 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    meanwhile(child.id());
    // SAFETY: signals the child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("genzoo did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let text = output_text(&out);
    assert_eq!(
        out.status.code(),
        Some(130),
        "the shell's status for SIGINT:\n{text}"
    );
    let step = text
        .split("interrupted at step ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no step named:\n{text}"));
    (out, step)
}

/// Ctrl-C mid-run: the step in progress is checkpointed, the exit status
/// is the shell's for SIGINT, and `resume` continues from that step. While
/// it trains, another process may neither train nor replace the run.
#[cfg(unix)]
#[test]
fn an_interrupted_run_checkpoints_its_step_and_resumes_from_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 64, 32, 28, 10).unwrap();
    let run = dir.join("runs/v");
    // A budget it cannot finish before the signal, and no checkpoint due.
    let train = [
        "train",
        "vae-mlp",
        "--dataset",
        "idx:digits",
        "--out",
        "runs/v",
        "--batch-size",
        "16",
        "--steps",
        "10000000",
        "--checkpoint-every",
        "10000000",
        "--eval-every",
        "3",
        "--log-every",
        "1",
    ];
    let (out, step) = interrupt_after_a_step(&train, dir, &run.join("metrics.jsonl"), |pid| {
        let config = std::fs::read(run.join("config.toml")).unwrap();
        let held = format!("runs/v is being trained by another genzoo process (pid {pid})");
        let err = fails(&genzoo(&["resume", "runs/v", "--lr", "0.5"], dir));
        assert!(err.contains(&held), "{err}");
        let mut overwrite = train.to_vec();
        overwrite.push("--overwrite");
        let err = fails(&genzoo(&overwrite, dir));
        assert!(err.contains(&held), "{err}");
        assert_eq!(std::fs::read(run.join("config.toml")).unwrap(), config);
        assert!(run.join("metrics.jsonl").exists());
    });
    let text = output_text(&out);
    assert!(
        text.contains(&format!("interrupted at step {step} of 10000000"))
            && text.contains("`genzoo resume runs/v` continues"),
        "{text}"
    );
    // Its held-out figures are said to be from the last evaluation's step
    // when that is not the step it stopped at.
    let evaluated = step / 3 * 3;
    if evaluated == step {
        assert!(text.contains("\ntest: neg_elbo"), "{text}");
    } else if evaluated > 0 {
        let line = format!("\ntest (at step {evaluated}, the last evaluation): neg_elbo");
        assert!(text.contains(&line), "{text}");
    }
    let manifest = run.join(format!("checkpoints/step-{step:08}/manifest.json"));
    assert!(
        manifest.exists(),
        "step {step} is not checkpointed:\n{text}"
    );
    assert!(
        !run.join(".lock").exists(),
        "the lock goes with the process"
    );
    let records = genzoo::train::logger::read_jsonl(&run.join("metrics.jsonl")).unwrap();
    let last_step = records.last().and_then(|r| r.get("step")?.as_u64());
    assert_eq!(last_step, Some(step), "the log ends at the stopped step");

    let more = (step + 2).to_string();
    let text = ok(&genzoo(&["resume", "runs/v", "--steps", &more], dir));
    assert!(
        text.contains(&format!("(step {step} of {more})")) && text.contains("trained 2 steps"),
        "{text}"
    );
}

/// An interrupted comparison stops at the run it was training (the next
/// does not start) and names the command that goes on with it.
#[cfg(unix)]
#[test]
fn an_interrupted_compare_stops_and_goes_on_where_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("poem.txt"),
        "The quick brown fox jumps over the lazy dog.\n".repeat(30),
    )
    .unwrap();
    let experiment = |steps: u64| {
        format!(
            r#"
name = "words"
text = "poem.txt"
seeds = [0]
[budget]
steps = {steps}
[[runs]]
name = "first"
preset = "gpt-char"
overrides = {{ train = {{ eval_batches = 2, eval_every = {steps}, log_every = 1 }} }}
[[runs]]
name = "second"
preset = "gpt-char"
overrides = {{ train = {{ eval_batches = 2 }} }}
"#
        )
    };
    std::fs::write(dir.join("exp.toml"), experiment(10_000_000)).unwrap();
    let (out, step) = interrupt_after_a_step(
        &["compare", "exp.toml", "--out", "cmp"],
        dir,
        &dir.join("cmp/first-seed0/metrics.jsonl"),
        |_| {},
    );
    let text = output_text(&out);
    assert!(
        text.contains("`genzoo compare exp.toml --out cmp` continues"),
        "{text}"
    );
    assert!(
        dir.join(format!("cmp/first-seed0/checkpoints/step-{step:08}"))
            .exists()
    );
    assert!(!dir.join("cmp/second-seed0").exists(), "{text}");

    // With a budget it can finish: the first run resumes, the second trains.
    std::fs::write(dir.join("exp.toml"), experiment(step + 2)).unwrap();
    let text = ok(&genzoo(&["compare", "exp.toml", "--out", "cmp"], dir));
    assert!(
        text.contains("first seed 0: resuming") && text.contains("second seed 0: training"),
        "{text}"
    );
    assert!(dir.join("cmp/report.md").exists());
}

/// A run that logged steps and then failed before its first checkpoint
/// (here an infinite loss; a full disk ends the same way) keeps its log and
/// says so; `resume` trains it again from step 0 and logs each step once.
#[test]
fn a_run_that_failed_before_its_first_checkpoint_resumes_from_zero_with_a_fresh_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 32, 16, 28, 10).unwrap();
    let err = fails(&genzoo(
        &[
            "train",
            "vae-mlp",
            "--dataset",
            "idx:digits",
            "--steps",
            "6",
            "--batch-size",
            "16",
            "--log-every",
            "1",
            "--lr",
            "1e30",
            "--out",
            "runs/v",
        ],
        dir,
    ));
    assert!(
        err.contains("train_loss is") && err.contains("at step 2"),
        "{err}"
    );
    assert!(
        err.contains("runs/v keeps what this run logged but no checkpoint: `genzoo resume runs/v` trains it again from step 0"),
        "{err}"
    );
    assert!(
        !read_jsonl(&dir.join("runs/v/metrics.jsonl"))
            .unwrap()
            .is_empty()
    );

    let text = ok(&genzoo(&["resume", "runs/v", "--lr", "1e-3"], dir));
    assert!(text.contains("starting from step 0"), "{text}");
    let steps: Vec<u64> = read_jsonl(&dir.join("runs/v/metrics.jsonl"))
        .unwrap()
        .iter()
        .filter(|m| m.contains_key("train_loss"))
        .map(|m| m["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<_>>());
}

#[test]
fn resume_without_checkpoint_starts_at_zero_and_conditional_sampling_works() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 32, 16, 28, 10).unwrap();
    let text = ok(&genzoo(
        &[
            "train",
            "cvae-mlp",
            "--dataset",
            "idx:digits",
            "--out",
            "runs/c",
            "--steps",
            "2",
            "--batch-size",
            "16",
            "--resume",
        ],
        dir,
    ));
    assert!(
        text.contains("no checkpoint") && text.contains("starting from step 0"),
        "{text}"
    );
    ok(&genzoo(
        &[
            "sample",
            "--run",
            "runs/c",
            "--n",
            "8",
            "--class",
            "7",
            "--out",
            "seven.png",
        ],
        dir,
    ));
    let err = fails(&genzoo(
        &[
            "sample", "--run", "runs/c", "--n", "8", "--class", "10", "--out", "x.png",
        ],
        dir,
    ));
    assert!(err.contains("out of range"), "{err}");
}

#[test]
fn data_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Missing files: the message names them.
    let err = fails(&genzoo(
        &[
            "train",
            "vae-mlp",
            "--dataset",
            "idx:nowhere",
            "--steps",
            "1",
        ],
        dir,
    ));
    assert!(err.contains("train-images-idx3-ubyte"), "{err}");
    // Offline with no data: the message says how to provide it.
    let err = fails(&genzoo(
        &["train", "vae-mlp", "--dataset", "mnist", "--steps", "1"],
        dir,
    ));
    assert!(
        err.contains("--data-dir") && err.contains("GENZOO_MNIST_MIRROR"),
        "{err}"
    );
    // A truncated image file: named, never silently fewer images.
    write_idx_dataset(&dir.join("bad"), 32, 16, 28, 10).unwrap();
    let f = dir.join("bad/t10k-images-idx3-ubyte");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let err = fails(&genzoo(
        &["train", "vae-mlp", "--dataset", "idx:bad", "--steps", "1"],
        dir,
    ));
    assert!(
        err.contains("t10k-images-idx3-ubyte") && err.contains("truncated"),
        "{err}"
    );
    // --data-dir where the dataset names its own directory would be ignored: refused.
    let err = fails(&genzoo(
        &[
            "train",
            "vae-mlp",
            "--dataset",
            "idx:bad",
            "--data-dir",
            "other",
            "--steps",
            "1",
        ],
        dir,
    ));
    assert!(
        err.contains("--data-dir") && err.contains("idx:bad names its own directory"),
        "{err}"
    );
    std::fs::write(dir.join("t.txt"), "some text ".repeat(100)).unwrap();
    let err = fails(&genzoo(
        &[
            "train",
            "gpt-char",
            "--text",
            "t.txt",
            "--data-dir",
            "other",
            "--steps",
            "1",
        ],
        dir,
    ));
    assert!(err.contains("a text model reads --text FILE"), "{err}");
    // An unknown preset.
    assert!(fails(&genzoo(&["train", "vae-xl"], dir)).contains("genzoo list"));
}

#[test]
fn micro_batches_are_a_flag_and_gans_refuse_them_before_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 64, 16, 28, 10).unwrap();
    let train = |preset: &str, out: &str, micro: &str| {
        genzoo(
            &[
                "train",
                preset,
                "--dataset",
                "idx:digits",
                "--batch-size",
                "16",
                "--micro-batches",
                micro,
                "--steps",
                "2",
                "--out",
                out,
            ],
            dir,
        )
    };
    ok(&train("vae-mlp", "vae", "4"));
    let config = std::fs::read_to_string(dir.join("vae/config.toml")).unwrap();
    assert!(config.contains("micro_batches = 4"), "{config}");
    let err = fails(&train("dcgan-28", "gan", "2"));
    assert!(err.contains("micro_batches = 1"), "{err}");
    assert!(!dir.join("gan").exists(), "a refused run writes nothing");
    let err = fails(&train("vae-mlp", "zero", "0"));
    assert!(err.contains("micro_batches must be at least 1"), "{err}");
    let err = fails(&train("vae-mlp", "many", "17"));
    assert!(err.contains("below one example each"), "{err}");
}

#[test]
fn a_run_logs_the_same_figures_on_any_number_of_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 96, 32, 28, 10).unwrap();
    // The convolutional VAE: its weight gradients sum over the batch, in
    // parts that must not follow the thread count.
    let figures = |threads: &str| {
        let run = format!("runs/t{threads}");
        let out = Command::new(env!("CARGO_BIN_EXE_genzoo"))
            .args([
                "train",
                "vae-conv",
                "--dataset",
                "idx:digits",
                "--batch-size",
                "48",
            ])
            .args(["--steps", "4", "--log-every", "1", "--out", &run])
            .current_dir(dir)
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        ok(&out);
        let mut records =
            genzoo::train::logger::read_jsonl(&dir.join(run).join("metrics.jsonl")).unwrap();
        for record in &mut records {
            record.remove("steps_per_sec");
        }
        records
    };
    let one = figures("1");
    assert_eq!(
        one.len(),
        6,
        "4 training records and 2 evaluations: {one:?}"
    );
    assert_eq!(figures("2"), one);
    assert_eq!(figures("3"), one);
}

#[test]
fn hflip_augments_the_training_images_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 64, 16, 28, 10).unwrap();
    let train = |out: &str, steps: &str, extra: &[&str]| {
        let args = [
            &[
                "train",
                "vae-mlp",
                "--dataset",
                "idx:digits",
                "--batch-size",
                "16",
                "--log-every",
                "1",
                "--steps",
                steps,
                "--out",
                out,
            ][..],
            extra,
        ]
        .concat();
        ok(&genzoo(&args, dir));
    };
    let losses = |out: &str| -> Vec<f64> {
        genzoo::train::logger::read_jsonl(&dir.join(out).join("metrics.jsonl"))
            .unwrap()
            .iter()
            .filter_map(|r| r.get("train_neg_elbo")?.as_f64())
            .collect()
    };
    train("plain", "4", &[]);
    train("flipped", "4", &["--hflip"]);
    let config = std::fs::read_to_string(dir.join("flipped/config.toml")).unwrap();
    assert!(config.contains("hflip = true"), "{config}");
    // The first step's weights are the same; from its batch on, flips differ.
    let (plain, flipped) = (losses("plain"), losses("flipped"));
    assert_eq!(flipped.len(), 4);
    assert_ne!(plain, flipped);
    // Two steps, then two more on resume: the flips an unbroken run draws.
    train("halves", "2", &["--hflip"]);
    ok(&genzoo(&["resume", "halves", "--steps", "4"], dir));
    assert_eq!(losses("halves"), flipped);
    let err = fails(&genzoo(
        &[
            "train",
            "gpt-char",
            "--text",
            "digits/t10k-labels-idx1-ubyte",
            "--bytes",
            "--hflip",
            "--out",
            "text",
        ],
        dir,
    ));
    assert!(err.contains("hflip flips training images"), "{err}");
}

#[test]
fn a_run_keeps_its_best_checkpoint_and_sample_takes_the_one_asked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 64, 16, 28, 10).unwrap();
    let train = |metric: &str, out: &str| {
        genzoo(
            &[
                "train",
                "vae-mlp",
                "--dataset",
                "idx:digits",
                "--batch-size",
                "16",
                "--steps",
                "4",
                "--eval-every",
                "1",
                "--checkpoint-every",
                "2",
                "--keep-best",
                metric,
                "--out",
                out,
            ],
            dir,
        )
    };
    ok(&train("test_neg_elbo", "vae"));
    assert!(dir.join("vae/checkpoints/best/manifest.json").exists());
    let info = ok(&genzoo(&["info", "--run", "vae"], dir));
    assert!(info.contains("best:       test_neg_elbo"), "{info}");
    let sample = |which: &str| {
        genzoo(
            &[
                "sample",
                "--run",
                "vae",
                "--checkpoint",
                which,
                "--n",
                "4",
                "--out",
                "s.png",
            ],
            dir,
        )
    };
    assert!(ok(&sample("best")).contains("checkpoints/best"));
    assert!(ok(&sample("2")).contains("step-00000002"));
    let err = fails(&sample("3"));
    assert!(err.contains("there are: 2, 4, best"), "{err}");
    // A damaged best checkpoint: info says so and still reports the rest;
    // sampling from it is refused with the reason.
    let manifest = dir.join("vae/checkpoints/best/manifest.json");
    let good = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, b"{ truncated").unwrap();
    let info = ok(&genzoo(&["info", "--run", "vae"], dir));
    assert!(
        info.contains("best:       unreadable")
            && info.contains("checkpoint: step 4 of 4")
            && info.contains("last metrics:"),
        "{info}"
    );
    assert!(fails(&sample("best")).contains("manifest"));
    std::fs::write(&manifest, good).unwrap();
    let err = fails(&train("test_elbo", "misspelt"));
    assert!(
        err.contains("keep_best = \"test_elbo\" is not a held-out metric")
            && err.contains("test_neg_elbo"),
        "{err}"
    );
    // The refused run wrote nothing to keep: the corrected command may
    // take the same --out without --overwrite.
    assert!(
        err.contains("misspelt is left empty: the run stopped before its first checkpoint"),
        "{err}"
    );
    ok(&train("test_neg_elbo", "misspelt"));
    assert!(dir.join("misspelt/checkpoints/best/manifest.json").exists());
}

/// Writes `n` colour PNGs in two class folders, in two sizes: red squares
/// and blue ones on grey.
fn write_colour_folder(dir: &Path, n: u32) {
    for i in 0..n {
        let (class, colour) = if i % 2 == 0 {
            ("red", [220, 30, 30])
        } else {
            ("blue", [30, 30, 220])
        };
        let (w, h) = if i % 3 == 0 { (24, 16) } else { (16, 16) };
        let mut img = image::RgbImage::from_pixel(w, h, image::Rgb([128, 128, 128]));
        for y in 4..12 {
            for x in (w / 2 - 4)..(w / 2 + 4) {
                img.put_pixel(x, y, image::Rgb(colour));
            }
        }
        let path = dir.join(class).join(format!("{i}.png"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        img.save(path).unwrap();
    }
}

#[test]
fn a_folder_of_colour_images_trains_at_the_size_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_colour_folder(&dir.join("shapes"), 40);
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "cvae-conv",
            "--dataset",
            "folder:shapes",
            "--out",
            "runs/f",
            "--steps",
            "3",
            "--batch-size",
            "8",
        ];
        args.extend_from_slice(extra);
        genzoo(&args, dir)
    };
    // Two sizes and no --image-size: refused, naming an odd file and the flag.
    let err = fails(&train(&[]));
    assert!(
        err.contains("must share one size") && err.contains("--image-size"),
        "{err}"
    );
    // A size the model cannot take: the model's reason, and the flag.
    let err = fails(&train(&["--image-size", "6"]));
    assert!(err.contains("6x6") && err.contains("--image-size"), "{err}");

    let text = ok(&train(&["--image-size", "8"]));
    assert!(text.contains("images of 3x8x8"), "{text}");
    let config = std::fs::read_to_string(dir.join("runs/f/config.toml")).unwrap();
    assert!(config.contains("image_size = 8"), "{config}");
    // Resuming reads the size back from the run's config.
    ok(&genzoo(&["resume", "runs/f", "--steps", "4"], dir));
    // Classes are the folders in sorted order: blue 0, red 1.
    ok(&genzoo(
        &[
            "sample", "--run", "runs/f", "--n", "4", "--class", "1", "--out", "red.png",
        ],
        dir,
    ));
    let grid = image::open(dir.join("red.png")).unwrap();
    assert_eq!(
        (grid.width(), grid.height()),
        (2 * (8 + 2) + 2, 2 * (8 + 2) + 2)
    );
    let err = fails(&genzoo(
        &[
            "sample", "--run", "runs/f", "--n", "4", "--class", "2", "--out", "x.png",
        ],
        dir,
    ));
    assert!(err.contains("out of range"), "{err}");
    // MNIST-format data has its size: --image-size is refused, not ignored.
    let err = fails(&genzoo(
        &[
            "train",
            "vae-mlp",
            "--dataset",
            "mnist",
            "--image-size",
            "32",
            "--steps",
            "1",
        ],
        dir,
    ));
    assert!(err.contains("folder:<DIR>"), "{err}");
}

#[test]
fn a_backend_that_is_not_compiled_in_names_its_feature() {
    let tmp = tempfile::tempdir().unwrap();
    write_idx_dataset(&tmp.path().join("digits"), 32, 16, 28, 10).unwrap();
    for (backend, compiled) in [
        ("wgpu", cfg!(feature = "wgpu")),
        ("cuda", cfg!(feature = "cuda")),
    ] {
        if compiled {
            continue;
        }
        let err = fails(&genzoo(
            &[
                "train",
                "vae-mlp",
                "--dataset",
                "idx:digits",
                "--steps",
                "1",
                "--backend",
                backend,
                "--out",
                backend,
            ],
            tmp.path(),
        ));
        assert!(err.contains(&format!("--features {backend}")), "{err}");
        assert!(
            !tmp.path().join(backend).exists(),
            "a failed start must not leave a run directory"
        );
    }
}

#[test]
#[cfg(unix)]
fn output_into_a_closed_pipe_ends_quietly() {
    // `genzoo list | head -0`: the reader is gone before genzoo writes.
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_genzoo"))
        .arg("list")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run genzoo");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for genzoo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "a panic's exit status");
}

#[test]
fn list_shows_every_family() {
    let tmp = tempfile::tempdir().unwrap();
    let text = ok(&genzoo(&["list"], tmp.path()));
    for needle in [
        "vae-mlp",
        "vae-conv",
        "beta-vae",
        "cvae-mlp",
        "dcgan-28 ",
        "ddpm-unet",
        "gpt-char",
    ] {
        assert!(text.contains(needle), "list lacks '{needle}':\n{text}");
    }
}

#[test]
fn gpt_char_trains_on_a_text_file_and_continues_a_prompt() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("poem.txt"),
        "The quick brown fox jumps over the lazy dog.\n".repeat(30),
    )
    .unwrap();
    let err = fails(&genzoo(
        &[
            "train",
            "gpt-char",
            "--text",
            "poem.txt",
            "--eval-batches",
            "0",
            "--out",
            "runs/g",
        ],
        dir,
    ));
    assert!(err.contains("eval_batches must be at least 1"), "{err}");
    // A negative number is the flag's value, refused by the setting's own
    // check (not read by clap as an unknown flag `-1`).
    let err = fails(&genzoo(
        &[
            "train", "gpt-char", "--text", "poem.txt", "--lr", "-1", "--out", "runs/g",
        ],
        dir,
    ));
    assert!(
        err.contains("lr must be a positive number, got -1"),
        "{err}"
    );
    // A zero budget is refused before the run directory is made.
    for budget in ["--steps", "--epochs"] {
        let err = fails(&genzoo(
            &[
                "train", "gpt-char", "--text", "poem.txt", budget, "0", "--out", "runs/g",
            ],
            dir,
        ));
        let name = budget.trim_start_matches('-');
        assert!(err.contains(&format!("{name} must be at least 1")), "{err}");
        assert!(!err.contains("left empty"), "{err}");
        assert!(
            !dir.join("runs/g").exists(),
            "{budget} 0 made a run directory"
        );
    }
    // 4 held-out batches per evaluation instead of the preset's 200.
    let text = ok(&genzoo(
        &[
            "train",
            "gpt-char",
            "--text",
            "poem.txt",
            "--steps",
            "4",
            "--eval-batches",
            "4",
            "--out",
            "runs/g",
        ],
        dir,
    ));
    assert!(
        text.contains("vocabulary of 30") && text.contains("val: loss"),
        "{text}"
    );
    let config = std::fs::read_to_string(dir.join("runs/g/config.toml")).unwrap();
    assert!(
        config.contains("vocabulary = ")
            && config.contains("vocab_size = 30")
            && config.contains("eval_batches = 4"),
        "{config}"
    );
    let info = ok(&genzoo(&["info", "--run", "runs/g"], dir));
    assert!(
        info.contains("text:       poem.txt (character tokens)") && !info.contains("mnist"),
        "{info}"
    );
    let out = genzoo(
        &[
            "sample", "--run", "runs/g", "--prompt", "The ", "--tokens", "20", "--seed", "2",
        ],
        dir,
    );
    let printed = String::from_utf8_lossy(&ok_out(&out)).into_owned();
    assert!(
        printed.starts_with("The ") && printed.trim_end().chars().count() >= 4,
        "{printed}"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("tokens/s, with the key/value cache)"),
        "{said}"
    );
    // Past the preset's 64-token block the cache serves the tokens whose
    // context fits (4 prompt tokens: the first 61), and the line says so.
    let out = genzoo(
        &[
            "sample", "--run", "runs/g", "--prompt", "The ", "--tokens", "70",
        ],
        dir,
    );
    let printed = String::from_utf8_lossy(&ok_out(&out)).into_owned();
    // The prompt, 70 tokens, and the line's end.
    assert_eq!(printed.chars().count(), 4 + 70 + 1, "{printed}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(
            "the first 61 with the key/value cache, the other 9 each recomputing the full \
             64-token context"
        ),
        "{said}"
    );
    let err = fails(&genzoo(
        &[
            "sample", "--run", "runs/g", "--prompt", "Zebra", "--tokens", "5",
        ],
        dir,
    ));
    assert!(err.contains("'Z'") && err.contains("vocabulary"), "{err}");
    // Image flags on a text model are refused by name, not ignored.
    let err = fails(&genzoo(
        &["sample", "--run", "runs/g", "--n", "4", "--out", "x.png"],
        dir,
    ));
    assert!(
        err.contains("--n, --out are for image models")
            && err.contains("; gpt-char is a gpt model of text"),
        "{err}"
    );
    for (flag, value, expected) in [
        ("--top-p", "1.5", "--top-p must be in (0, 1]"),
        ("--top-k", "0", "--top-k must be at least 1"),
        (
            "--temperature",
            "inf",
            "--temperature must be 0 (greedy) or positive",
        ),
        (
            "--temperature",
            "-1",
            "--temperature must be 0 (greedy) or positive, got -1",
        ),
        ("--top-p", "-0.5", "--top-p must be in (0, 1], got -0.5"),
    ] {
        let err = fails(&genzoo(&["sample", "--run", "runs/g", flag, value], dir));
        assert!(err.contains(expected), "{flag} {value}: {err}");
    }
    let err = fails(&genzoo(
        &["train", "gpt-char", "--steps", "1", "--out", "runs/none"],
        dir,
    ));
    assert!(err.contains("--text"), "{err}");

    // The exact held-out loss: the last 135 of the 1350 characters, every
    // one after the first predicted once (windows of 64 + 1: 64, 64, 6).
    let figures = |args: &[&str]| -> serde_json::Value {
        ok(&genzoo(
            &[&["eval", "--run", "runs/g"][..], args].concat(),
            dir,
        ));
        serde_json::from_str(&std::fs::read_to_string(dir.join("runs/g/eval.json")).unwrap())
            .unwrap()
    };
    let all = figures(&[]);
    assert_eq!(all["val_tokens"], 134.0, "{all}");
    let loss = all["val_loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{all}");
    let perplexity = all["val_perplexity"].as_f64().unwrap();
    assert!((perplexity - loss.exp()).abs() < 1e-9 * perplexity, "{all}");
    assert_eq!(figures(&["--n", "2"])["val_tokens"], 128.0);
    for (args, expected) in [
        (&["--metrics", "fid"][..], "--metrics nll"),
        (&["--seed", "1"][..], "draws nothing"),
    ] {
        let err = fails(&genzoo(
            &[&["eval", "--run", "runs/g"][..], args].concat(),
            dir,
        ));
        assert!(err.contains(expected), "{args:?}: {err}");
    }

    // The weights under nanoGPT's names, in PyTorch's layout, with the model config.
    ok(&genzoo(
        &[
            "export",
            "weights",
            "--run",
            "runs/g",
            "--out",
            "g.safetensors",
        ],
        dir,
    ));
    let genzoo::core::weights::StoredWeights { tensors, metadata } =
        genzoo::core::weights::read_safetensors(&dir.join("g.safetensors")).unwrap();
    let mut expected: Vec<String> = ["lm_head.weight", "transformer.ln_f.weight"]
        .into_iter()
        .chain(["transformer.wpe.weight", "transformer.wte.weight"])
        .map(String::from)
        .collect();
    for layer in 0..4 {
        for part in [
            "attn.c_attn",
            "attn.c_proj",
            "ln_1",
            "ln_2",
            "mlp.c_fc",
            "mlp.c_proj",
        ] {
            expected.push(format!("transformer.h.{layer}.{part}.weight"));
        }
    }
    expected.sort();
    let names: Vec<&String> = tensors.iter().map(|(n, ..)| n).collect();
    assert_eq!(names, expected.iter().collect::<Vec<_>>());
    let get = |name: &str| tensors.iter().find(|(n, ..)| n == name).unwrap();
    assert_eq!(get("transformer.h.0.attn.c_attn.weight").1, vec![384, 128]);
    assert_eq!(get("transformer.h.2.mlp.c_proj.weight").1, vec![128, 512]);
    assert_eq!(get("transformer.wte.weight").1, vec![30, 128]);
    // The tied head is the token embedding.
    assert_eq!(get("lm_head.weight").2, get("transformer.wte.weight").2);
    let model = &metadata
        .iter()
        .find(|(k, _)| k == "model_config")
        .unwrap()
        .1;
    assert!(
        model.contains("n_layer = 4") && model.contains("vocabulary = "),
        "{model}"
    );
    let err = fails(&genzoo(
        &[
            "export",
            "weights",
            "--run",
            "runs/g",
            "--out",
            "g.safetensors",
        ],
        dir,
    ));
    assert!(err.contains("g.safetensors exists"), "{err}");

    // The same characters in another order, as many: a resume on them is
    // refused, and the run's config is left as it was.
    std::fs::write(
        dir.join("poem.txt"),
        "The lazy dog jumps over the quick brown fox.\n".repeat(30),
    )
    .unwrap();
    let config = std::fs::read(dir.join("runs/g/config.toml")).unwrap();
    let err = fails(&genzoo(&["resume", "runs/g", "--steps", "8"], dir));
    assert!(
        err.contains("its training examples are not this call's"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.join("runs/g/config.toml")).unwrap(),
        config
    );
}

#[test]
fn a_run_starts_from_another_runs_weights_and_refuses_what_does_not_fit_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let verse =
        "Shall I compare thee to a summer's day?\nThou art more lovely and more temperate.\n";
    std::fs::write(dir.join("sonnet.txt"), verse.repeat(40)).unwrap();
    // Fewer characters than the source's text: read in its vocabulary.
    std::fs::write(dir.join("line.txt"), "Thou art more lovely\n".repeat(60)).unwrap();
    std::fs::write(dir.join("accent.txt"), "Thou art más lovely\n".repeat(60)).unwrap();
    let train = |out: &str, text: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "gpt-char",
            "--text",
            text,
            "--out",
            out,
            "--log-every",
            "1",
            "--eval-batches",
            "2",
        ];
        args.extend_from_slice(extra);
        if !extra.contains(&"--steps") {
            args.extend_from_slice(&["--steps", "8"]);
        }
        genzoo(&args, dir)
    };
    ok(&train("runs/source", "sonnet.txt", &["--steps", "40"]));
    let source = dir.join("runs/source/checkpoints/step-00000040");

    let text = ok(&train(
        "runs/tuned",
        "line.txt",
        &["--init-from", "runs/source"],
    ));
    let absolute = source.canonicalize().unwrap();
    assert!(
        text.contains(&format!(
            "starting from the weights of {}",
            absolute.display()
        )),
        "{text}"
    );
    // The run names its checkpoint by absolute path, and has the source's model.
    let config = |run: &str| -> toml::Table {
        toml::from_str(&std::fs::read_to_string(dir.join(run).join("config.toml")).unwrap())
            .unwrap()
    };
    let tuned = config("runs/tuned");
    assert_eq!(
        tuned["train"]["init_from"].as_str(),
        Some(absolute.to_str().unwrap())
    );
    assert_eq!(tuned["model"], config("runs/source")["model"]);
    let first_loss =
        |run: &str| train_losses(&read_jsonl(&dir.join(run).join("metrics.jsonl")).unwrap())[0];
    // Its first step is taken by the trained weights: well below a fresh start's.
    ok(&train("runs/scratch", "line.txt", &[]));
    assert!(
        first_loss("runs/tuned") < first_loss("runs/scratch") - 0.5,
        "{} vs {}",
        first_loss("runs/tuned"),
        first_loss("runs/scratch")
    );
    // A checkpoint named, and two replicas (the leader's weights broadcast),
    // take the same first step.
    ok(&train(
        "runs/named",
        "line.txt",
        &["--init-from", "runs/source/checkpoints/step-00000040"],
    ));
    assert_eq!(first_loss("runs/named"), first_loss("runs/tuned"));
    ok(&train(
        "runs/replicas",
        "line.txt",
        &["--init-from", "runs/source", "--devices", "2"],
    ));
    assert!((first_loss("runs/replicas") - first_loss("runs/tuned")).abs() < 1e-4);
    // It resumes from its own checkpoints, and samples in the source's characters.
    let text = ok(&genzoo(&["resume", "runs/tuned", "--steps", "10"], dir));
    assert!(text.contains("(10/10 in total)"), "{text}");
    let sample = ok_out(&genzoo(
        &[
            "sample",
            "--run",
            "runs/tuned",
            "--prompt",
            "Thou",
            "--tokens",
            "20",
        ],
        dir,
    ));
    assert!(String::from_utf8(sample).unwrap().starts_with("Thou"));
    // Its text, with fewer characters than the model's vocabulary, is
    // evaluated in the model's token ids; info names where it started.
    let text = ok(&genzoo(&["eval", "--run", "runs/tuned"], dir));
    assert!(text.contains("val_loss"), "{text}");
    let text = ok(&genzoo(&["info", "--run", "runs/tuned"], dir));
    assert!(
        text.contains(&format!("init from:  {}", absolute.display())),
        "{text}"
    );

    // Refused before a run directory is made, saying why.
    std::fs::write(dir.join("model.toml"), "[model]\nn_layer = 2\n").unwrap();
    for (out, text, extra, why) in [
        (
            "runs/r1",
            "accent.txt",
            &["--init-from", "runs/source"][..],
            "character 'á' is not in the model's vocabulary",
        ),
        (
            "runs/r2",
            "line.txt",
            &["--init-from", "runs/source", "--bytes"][..],
            "its model reads characters, not bytes",
        ),
        (
            "runs/r3",
            "line.txt",
            &["--init-from", "runs/source", "--config", "model.toml"][..],
            "leave the [model] keys out of the config",
        ),
        (
            "runs/r4",
            "line.txt",
            &["--init-from", "runs/nowhere"][..],
            "neither a run directory nor one of its checkpoints",
        ),
        (
            "runs/source",
            "line.txt",
            &["--init-from", "runs/source", "--overwrite"][..],
            "lies in --out runs/source",
        ),
    ] {
        let err = fails(&train(out, text, extra));
        assert!(err.contains(why), "{extra:?}: {err}");
        if out != "runs/source" {
            assert!(!dir.join(out).exists(), "{extra:?} made {out}");
        }
    }
    assert!(source.join("manifest.json").is_file(), "the source is kept");

    // An experiment compares fine-tuning with training from scratch.
    std::fs::write(
        dir.join("exp.toml"),
        r#"
name = "tune"
text = "line.txt"
seeds = [0]
[budget]
steps = 4
[[runs]]
name = "scratch"
preset = "gpt-char"
overrides = { train = { eval_batches = 2 } }
[[runs]]
name = "tuned"
preset = "gpt-char"
overrides = { train = { eval_batches = 2, init_from = "runs/source" } }
"#,
    )
    .unwrap();
    ok(&genzoo(&["compare", "exp.toml", "--out", "cmp"], dir));
    let val_loss = |run: &str| {
        read_json(&dir.join(format!("cmp/{run}-seed0/eval.json")))["val_loss"]
            .as_f64()
            .unwrap()
    };
    assert!(
        val_loss("tuned") < val_loss("scratch") - 0.5,
        "{} vs {}",
        val_loss("tuned"),
        val_loss("scratch")
    );
    // A later compare that resumes the run (its state lost, its checkpoint
    // kept) builds its config from the preset again: the run keeps the
    // source's model.
    std::fs::remove_file(dir.join("cmp/tuned-seed0/compare.json")).unwrap();
    let text = ok(&genzoo(&["compare", "exp.toml", "--out", "cmp"], dir));
    assert!(text.contains("tuned seed 0: resuming"), "{text}");
    let err = fails(&genzoo(
        &[
            "train",
            "gpt-pixel",
            "--dataset",
            "idx:nowhere",
            "--out",
            "runs/r5",
            "--init-from",
            "runs/source",
        ],
        dir,
    ));
    assert!(
        err.contains("a checkpoint of 'gpt-char', not 'gpt-pixel'"),
        "{err}"
    );
    let err = fails(&train(
        "runs/tuned",
        "line.txt",
        &["--init-from", "runs/source", "--resume"],
    ));
    assert!(err.contains("cannot be used with"), "{err}");

    // An image model: data of another shape is refused before writing,
    // with the key that differs.
    write_idx_dataset(&dir.join("digits"), 32, 16, 28, 10).unwrap();
    write_idx_dataset(&dir.join("small"), 32, 16, 12, 10).unwrap();
    let vae = |data: &str, out: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "vae-mlp",
            "--dataset",
            data,
            "--out",
            out,
            "--batch-size",
            "16",
            "--steps",
            "2",
        ];
        args.extend_from_slice(extra);
        genzoo(&args, dir)
    };
    ok(&vae("idx:digits", "runs/vae", &[]));
    let err = fails(&vae(
        "idx:small",
        "runs/vae-small",
        &["--init-from", "runs/vae"],
    ));
    assert!(
        err.contains("height = 28 in the checkpoint, 12 in this run"),
        "{err}"
    );
    assert!(!dir.join("runs/vae-small").exists());
    ok(&vae(
        "idx:digits",
        "runs/vae-more",
        &["--init-from", "runs/vae"],
    ));
}

#[test]
fn a_resume_on_other_held_out_data_is_warned_of_or_refused_when_it_picks_the_best() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 64, 32, 28, 10).unwrap();
    let train = |out: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "vae-mlp",
            "--dataset",
            "idx:digits",
            "--out",
            out,
            "--batch-size",
            "16",
            "--steps",
            "4",
            "--eval-every",
            "2",
        ];
        args.extend_from_slice(extra);
        genzoo(&args, dir)
    };
    ok(&train("runs/plain", &[]));
    ok(&train("runs/best", &["--keep-best", "test_neg_elbo"]));
    // The same training images, fewer test images.
    write_idx_dataset(&dir.join("digits"), 64, 24, 28, 10).unwrap();
    let resume = |run: &str| genzoo(&["resume", run, "--steps", "6"], dir);
    let text = ok(&resume("runs/plain"));
    assert!(
        text.contains("warning: the held-out examples are not the ones")
            && text.contains("(6/6 in total)"),
        "{text}"
    );
    let err = fails(&resume("runs/best"));
    assert!(
        err.contains("its held-out examples are not this call's")
            && err.contains("its best test_neg_elbo"),
        "{err}"
    );
    // With its own held-out images back, it resumes without a word of them.
    write_idx_dataset(&dir.join("digits"), 64, 32, 28, 10).unwrap();
    let text = ok(&resume("runs/best"));
    assert!(!text.contains("held-out examples"), "{text}");
}

#[test]
fn a_byte_level_gpt_trains_on_any_file_and_emits_its_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Latin-1 text: 0xE9 and 0xFC are not UTF-8 on their own.
    std::fs::write(dir.join("latin1.txt"), b"caf\xE9 m\xFCde\n".repeat(120)).unwrap();
    let err = fails(&genzoo(
        &[
            "train",
            "gpt-char",
            "--text",
            "latin1.txt",
            "--steps",
            "2",
            "--out",
            "runs/c",
        ],
        dir,
    ));
    assert!(
        err.contains("not UTF-8") && err.contains("--bytes"),
        "{err}"
    );
    let text = ok(&genzoo(
        &[
            "train",
            "gpt-char",
            "--text",
            "latin1.txt",
            "--bytes",
            "--steps",
            "3",
            "--eval-batches",
            "4",
            "--out",
            "runs/b",
        ],
        dir,
    ));
    // Its loss in bits is per byte, not per character.
    assert!(
        text.contains("vocabulary of 256")
            && text.contains("val_bits_per_byte")
            && !text.contains("bits_per_char"),
        "{text}"
    );
    // The end-of-run sample is the model's 300 bytes, none replaced.
    let sample = std::fs::read(dir.join("runs/b/samples/final.txt")).unwrap();
    assert_eq!(sample.len(), 300);
    assert!(
        sample.iter().any(|&b| b >= 0x80),
        "an untrained model emits high bytes too"
    );
    let printed = ok_out(&genzoo(
        &[
            "sample", "--run", "runs/b", "--prompt", "caf", "--tokens", "40", "--seed", "1",
        ],
        dir,
    ));
    // The prompt, 40 bytes as generated, a newline: no UTF-8 replacement
    // (which would lengthen every invalid byte to three).
    assert_eq!(printed.len(), 3 + 40 + 1);
    assert!(printed.starts_with(b"caf") && printed.ends_with(b"\n"));
    assert!(printed[3..43].iter().any(|&b| b >= 0x80), "{printed:?}");
    let evaluated = ok(&genzoo(&["eval", "--run", "runs/b"], dir));
    assert!(evaluated.contains("val"), "{evaluated}");
}

fn ok_out(out: &Output) -> Vec<u8> {
    ok(out);
    out.stdout.clone()
}

#[test]
fn ddpm_trains_and_samples_with_each_sampler_and_a_trajectory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 16, 8, 28, 10).unwrap();
    // T = 100 instead of 1000, as the ancestral sampler below takes every
    // step, and an end-of-run grid of 4 samples instead of 64.
    std::fs::write(
        dir.join("short.toml"),
        "[model]\ntimesteps = 100\n[train]\nsamples = 4\n",
    )
    .unwrap();
    let text = ok(&genzoo(
        &[
            "train",
            "ddpm-unet",
            "--dataset",
            "idx:digits",
            "--config",
            "short.toml",
            "--out",
            "runs/ddpm",
            "--batch-size",
            "4",
            "--steps",
            "2",
        ],
        dir,
    ));
    assert!(text.contains("583713 parameters"), "{text}");
    let text = ok(&genzoo(
        &[
            "sample",
            "--run",
            "runs/ddpm",
            "--n",
            "4",
            "--sampler",
            "ddim",
            "--steps",
            "5",
            "--eta",
            "0",
            "--trajectory",
            "--out",
            "grid.png",
        ],
        dir,
    ));
    assert!(text.contains("trajectory"), "{text}");
    let strip = image::open(dir.join("grid-trajectory.png")).unwrap();
    assert!(
        strip.width() > 5 * strip.height(),
        "a strip of 10 frames: {}x{}",
        strip.width(),
        strip.height()
    );
    // Same seed, deterministic DDIM: the same file byte for byte.
    ok(&genzoo(
        &[
            "sample",
            "--run",
            "runs/ddpm",
            "--n",
            "4",
            "--steps",
            "5",
            "--out",
            "again.png",
        ],
        dir,
    ));
    assert_eq!(
        std::fs::read(dir.join("grid.png")).unwrap(),
        std::fs::read(dir.join("again.png")).unwrap()
    );
    ok(&genzoo(
        &[
            "sample",
            "--run",
            "runs/ddpm",
            "--n",
            "1",
            "--sampler",
            "ddpm",
            "--out",
            "ddpm.png",
        ],
        dir,
    ));
    assert!(dir.join("ddpm.png").exists());
    // DPM-Solver++(2M): deterministic too, with its own steps; η is DDIM's.
    for out in ["dpm.png", "dpm-again.png"] {
        ok(&genzoo(
            &[
                "sample",
                "--run",
                "runs/ddpm",
                "--n",
                "4",
                "--sampler",
                "dpm-solver",
                "--steps",
                "5",
                "--out",
                out,
            ],
            dir,
        ));
    }
    let dpm = std::fs::read(dir.join("dpm.png")).unwrap();
    assert_eq!(dpm, std::fs::read(dir.join("dpm-again.png")).unwrap());
    assert_ne!(dpm, std::fs::read(dir.join("grid.png")).unwrap());
    for (args, expected) in [
        (
            &["--sampler", "dpm-solver", "--eta", "0.5"][..],
            "--eta is DDIM's",
        ),
        (&["--sampler", "euler"][..], "use ddim, dpm-solver or ddpm"),
        (
            &["--sampler", "dpm-solver", "--steps", "101"][..],
            "steps must be in 1..=100",
        ),
    ] {
        let err = fails(&genzoo(
            &[&["sample", "--run", "runs/ddpm", "--n", "1"][..], args].concat(),
            dir,
        ));
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    // Interpolations between x_T's through deterministic DDIM; the ancestral
    // sampler cannot decode one.
    let text = ok(&genzoo(
        &[
            "sample",
            "--run",
            "runs/ddpm",
            "--interpolate",
            "3",
            "--n",
            "1",
            "--steps",
            "2",
            "--out",
            "walk.png",
        ],
        dir,
    ));
    assert!(text.contains("1 interpolations of 3 images"), "{text}");
    let walk = image::open(dir.join("walk.png")).unwrap();
    assert_eq!((walk.width(), walk.height()), (3 * 30 + 2, 30 + 2));
    let err = fails(&genzoo(
        &[
            "sample",
            "--run",
            "runs/ddpm",
            "--interpolate",
            "3",
            "--sampler",
            "ddpm",
        ],
        dir,
    ));
    assert!(err.contains("deterministic sampler"), "{err}");
    // Options that do not fit the model are refused with the reason.
    let err = fails(&genzoo(
        &["sample", "--run", "runs/ddpm", "--guidance", "2"],
        dir,
    ));
    assert!(err.contains("class-conditional"), "{err}");
    let err = fails(&genzoo(
        &[
            "sample",
            "--run",
            "runs/ddpm",
            "--sampler",
            "ddpm",
            "--steps",
            "10",
        ],
        dir,
    ));
    assert!(err.contains("DDIM"), "{err}");
    ok(&genzoo(
        &[
            "train",
            "vae-mlp",
            "--dataset",
            "idx:digits",
            "--out",
            "runs/vae",
            "--steps",
            "1",
        ],
        dir,
    ));
    let err = fails(&genzoo(
        &["sample", "--run", "runs/vae", "--sampler", "ddim"],
        dir,
    ));
    assert!(err.contains("diffusion"), "{err}");
    let err = fails(&genzoo(
        &[
            "sample", "--run", "runs/vae", "--prompt", "hi", "--tokens", "5",
        ],
        dir,
    ));
    assert!(
        err.contains("--prompt, --tokens are for text models; vae-mlp is a vae model of images"),
        "{err}"
    );
    let err = fails(&genzoo(&["sample", "--run", "runs/vae", "--n", "0"], dir));
    assert!(err.contains("--n must be at least 1"), "{err}");
    // eval refuses what it cannot do before any evaluator trains.
    for (args, expected) in [
        (&["--metrics", ""][..], "no metric asked for"),
        (
            &["--metrics", "fid", "--n", "1"][..],
            "--n must be at least 2",
        ),
        (&["--metrics", "fid,nll"][..], "Bernoulli decoder"),
    ] {
        let err = fails(&genzoo(
            &[&["eval", "--run", "runs/vae"][..], args].concat(),
            dir,
        ));
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert!(!dir.join("runs/vae/eval.json").exists());
    assert!(!dir.join("cache/genzoo/evaluators").exists());
}

#[test]
fn latent_walks_write_their_grids_and_refuse_what_a_model_cannot_do() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 32, 24, 28, 10).unwrap();
    for (preset, out) in [("vae-mlp", "runs/vae"), ("dcgan-28", "runs/gan")] {
        ok(&genzoo(
            &[
                "train",
                preset,
                "--dataset",
                "idx:digits",
                "--out",
                out,
                "--batch-size",
                "8",
                "--steps",
                "2",
            ],
            dir,
        ));
    }
    let sample = |args: &[&str]| genzoo(&[&["sample"][..], args].concat(), dir);
    let size = |f: &str| {
        let img = image::open(dir.join(f)).unwrap();
        (img.width(), img.height())
    };
    // A tile is 28 pixels and a 2-pixel border.
    let tiles = |cols: u32, rows: u32| (cols * 30 + 2, rows * 30 + 2);

    let text = ok(&sample(&[
        "--run",
        "runs/vae",
        "--interpolate",
        "5",
        "--n",
        "3",
        "--out",
        "i.png",
    ]));
    assert!(text.contains("3 interpolations of 5 images"), "{text}");
    assert_eq!(size("i.png"), tiles(5, 3));
    // Without --n: 8 rows.
    ok(&sample(&[
        "--run",
        "runs/gan",
        "--interpolate",
        "4",
        "--out",
        "g.png",
    ]));
    assert_eq!(size("g.png"), tiles(4, 8));

    // Traversals: the most active dimensions of 20, ranked over the 24 test images.
    for out in ["t.png", "t2.png"] {
        let text = ok(&sample(&[
            "--run",
            "runs/vae",
            "--traverse",
            "7",
            "--n",
            "4",
            "--image",
            "5",
            "--out",
            out,
        ]));
        assert!(
            text.contains("of 20 latent dimensions are active")
                && text.contains("over 24 test images")
                && text.contains("4 dimensions × 7 values from -3 to 3"),
            "{text}"
        );
    }
    assert_eq!(size("t.png"), tiles(7, 4));
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    assert_eq!(read("t.png"), read("t2.png"));
    ok(&sample(&[
        "--run",
        "runs/vae",
        "--traverse",
        "3",
        "--range",
        "1.5",
        "--out",
        "t3.png",
    ]));
    assert_eq!(size("t3.png"), tiles(3, 10));

    let text = ok(&sample(&[
        "--run",
        "runs/vae",
        "--reconstruct",
        "--n",
        "6",
        "--out",
        "r.png",
    ]));
    assert!(
        text.contains("mean squared error of the 6 reconstructions"),
        "{text}"
    );
    assert_eq!(size("r.png"), tiles(3, 4));

    // A GAN's weights: both networks, each under its prefix.
    ok(&genzoo(
        &[
            "export",
            "weights",
            "--run",
            "runs/gan",
            "--out",
            "gan.safetensors",
        ],
        dir,
    ));
    let tensors = genzoo::core::weights::read_safetensors(&dir.join("gan.safetensors"))
        .unwrap()
        .tensors;
    let count = |prefix: &str| -> usize {
        tensors
            .iter()
            .filter(|(n, ..)| n.starts_with(prefix))
            .map(|(_, _, v)| v.len())
            .sum()
    };
    // Trainable parameters plus BatchNorm's running statistics (2 per channel).
    assert!(count("generator.") > 778_305 && count("discriminator.") > 138_817);
    assert_eq!(count("generator.") + count("discriminator."), count(""));

    for (args, expected) in [
        (&["--run", "runs/gan", "--traverse", "3"][..], "no encoder"),
        (&["--run", "runs/gan", "--reconstruct"][..], "no encoder"),
        (&["--run", "runs/vae", "--interpolate", "1"][..], "K ≥ 2"),
        (
            &["--run", "runs/vae", "--range", "2"][..],
            "give --traverse K too",
        ),
        (
            &["--run", "runs/vae", "--interpolate", "3", "--reconstruct"][..],
            "give one of them",
        ),
        (
            &["--run", "runs/vae", "--traverse", "3", "--image", "24"][..],
            "the test split has 24 images",
        ),
        (
            &["--run", "runs/vae", "--traverse", "3", "--class", "1"][..],
            "their own labels",
        ),
        (
            &["--run", "runs/vae", "--traverse", "3", "--range", "0"][..],
            "--range must be positive",
        ),
        (
            &["--run", "runs/vae", "--traverse", "3", "--range", "-2"][..],
            "--range must be positive, got -2",
        ),
    ] {
        let err = fails(&sample(args));
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

#[test]
fn samples_and_dataset_images_are_written_one_png_each() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 32, 12, 28, 10).unwrap();
    ok(&genzoo(
        &[
            "train",
            "vae-mlp",
            "--dataset",
            "idx:digits",
            "--out",
            "runs/vae",
            "--steps",
            "2",
        ],
        dir,
    ));
    let sample =
        |args: &[&str]| genzoo(&[&["sample", "--run", "runs/vae"][..], args].concat(), dir);
    let grey = |path: &Path| image::open(path).unwrap().to_luma8();
    let files = |d: &str| std::fs::read_dir(dir.join(d)).unwrap().count();

    // Five files, each one of the grid's tiles for the same seed.
    let text = ok(&sample(&[
        "--n",
        "5",
        "--seed",
        "3",
        "--images-dir",
        "five",
    ]));
    assert!(text.contains("wrote 5 samples"), "{text}");
    assert_eq!(files("five"), 5);
    ok(&sample(&["--n", "5", "--seed", "3", "--out", "grid.png"]));
    // Whether file `d/i` is tile i of a grid of `columns` columns.
    let is_tile = |grid: &image::GrayImage, columns: u32, d: &str, i: u32| {
        let file = grey(&dir.join(format!("{d}/{i:06}.png")));
        assert_eq!((file.width(), file.height()), (28, 28));
        // A tile is 28 pixels after a 2-pixel border.
        let (x0, y0) = (2 + (i % columns) * 30, 2 + (i / columns) * 30);
        file.enumerate_pixels()
            .all(|(x, y, p)| p.0 == grid.get_pixel(x0 + x, y0 + y).0)
    };
    let grid = grey(&dir.join("grid.png"));
    for i in 0..5u32 {
        assert!(is_tile(&grid, 3, "five", i), "image {i}");
    }
    // Past one chunk of 500: the first 500 are those of --n 500, the rest new.
    ok(&sample(&["--n", "501", "--images-dir", "many"]));
    ok(&sample(&["--n", "500", "--images-dir", "chunk"]));
    assert_eq!((files("many"), files("chunk")), (501, 500));
    let read = |f: String| std::fs::read(dir.join(f)).unwrap();
    for i in [0, 250, 499] {
        assert_eq!(
            read(format!("many/{i:06}.png")),
            read(format!("chunk/{i:06}.png"))
        );
    }
    assert_ne!(
        read("many/000500.png".into()),
        read("many/000000.png".into())
    );
    // A grid that large is drawn in the same chunks: its 23 columns hold
    // the same 501 images.
    ok(&sample(&["--n", "501", "--out", "large.png"]));
    let large = grey(&dir.join("large.png"));
    for i in [0, 499, 500] {
        assert!(is_tile(&large, 23, "many", i), "image {i}");
    }
    // Never among other files, and not with --out.
    let err = fails(&sample(&["--n", "2", "--images-dir", "five"]));
    assert!(err.contains("five is not empty"), "{err}");
    let err = fails(&sample(&["--images-dir", "x", "--out", "x.png"]));
    assert!(err.contains("give one of them"), "{err}");
    assert!(!dir.join("x").exists());

    // The run's test images, the reference folder for an outside FID.
    let text = ok(&genzoo(
        &[
            "export", "images", "--run", "runs/vae", "--n", "7", "--out", "real",
        ],
        dir,
    ));
    assert!(text.contains("wrote 7 test images of idx:digits"), "{text}");
    assert_eq!(files("real"), 7);
    let (_, test) = genzoo::data::load_image_dataset(
        &format!("idx:{}", dir.join("digits").display())
            .parse()
            .unwrap(),
        &genzoo::data::Locator::from_env(None),
    )
    .unwrap();
    assert_eq!(grey(&dir.join("real/000003.png")).into_raw(), test.image(3));
    ok(&genzoo(
        &[
            "export",
            "images",
            "--dataset",
            "idx:digits",
            "--split",
            "train",
            "--out",
            "train",
        ],
        dir,
    ));
    assert_eq!(files("train"), 32);
    let err = fails(&genzoo(
        &["export", "images", "--run", "runs/vae", "--out", "real"],
        dir,
    ));
    assert!(err.contains("real is not empty"), "{err}");

    // A VAE's weights: genzoo's names, linear weights as PyTorch's [out, in].
    ok(&genzoo(
        &[
            "export",
            "weights",
            "--run",
            "runs/vae",
            "--out",
            "vae.safetensors",
        ],
        dir,
    ));
    let tensors = genzoo::core::weights::read_safetensors(&dir.join("vae.safetensors"))
        .unwrap()
        .tensors;
    let shape = |name: &str| &tensors.iter().find(|(n, ..)| n == name).unwrap().1;
    assert_eq!(shape("encoder.hidden.weight"), &vec![400, 784]);
    assert_eq!(shape("decoder.output.weight"), &vec![784, 400]);
    let values: usize = tensors.iter().map(|(_, _, v)| v.len()).sum();
    assert_eq!(values, 652_824);
}

#[test]
fn evaluator_and_sample_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 128, 64, 28, 10).unwrap();
    let text = ok(&genzoo(
        &[
            "evaluator",
            "train",
            "--dataset",
            "idx:digits",
            "--epochs",
            "1",
        ],
        dir,
    ));
    assert!(text.contains("test accuracy"), "{text}");
    // Without a terminal for its progress bar, a line an epoch.
    assert!(text.contains("evaluator epoch 1/1: loss "), "{text}");
    // The second call finds it in the cache.
    let text = ok(&genzoo(
        &["evaluator", "train", "--dataset", "idx:digits"],
        dir,
    ));
    assert!(text.contains("cached evaluator"), "{text}");
    ok(&genzoo(
        &[
            "train",
            "vae-mlp",
            "--dataset",
            "idx:digits",
            "--out",
            "runs/vae",
            "--steps",
            "2",
        ],
        dir,
    ));
    let text = ok(&genzoo(
        &[
            "eval",
            "--run",
            "runs/vae",
            "--n",
            "64",
            "--metrics",
            "fid,kid,is,pr",
        ],
        dir,
    ));
    assert!(text.contains("fid") && text.contains("precision"), "{text}");
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("runs/vae/eval.json")).unwrap()).unwrap();
    for key in ["fid", "kid", "is", "class_entropy", "precision", "recall"] {
        let v = eval[key].as_f64().unwrap_or(f64::NAN);
        assert!(v.is_finite(), "{key} = {v} in {eval}");
    }
    assert!(eval["fid"].as_f64().unwrap() > 0.0);
    let err = fails(&genzoo(
        &["eval", "--run", "runs/vae", "--metrics", "fid,bleu"],
        dir,
    ));
    assert!(err.contains("unknown metric 'bleu'"), "{err}");

    // A GAN scored as it trains, by the cached evaluator; its best FID's
    // checkpoint is kept, and `eval` of it with the run's seed and count
    // gives the logged figures.
    let text = ok(&genzoo(
        &[
            "train",
            "dcgan-28",
            "--dataset",
            "idx:digits",
            "--out",
            "runs/gan",
            "--batch-size",
            "16",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--fid-samples",
            "40",
            "--keep-best",
            "test_fid",
            "--seed",
            "3",
        ],
        dir,
    ));
    assert!(
        !text.contains("training the"),
        "the cached evaluator: {text}"
    );
    let records = read_jsonl(&dir.join("runs/gan/metrics.jsonl")).unwrap();
    let scored: Vec<_> = records
        .iter()
        .filter(|r| r.contains_key("test_fid"))
        .collect();
    assert_eq!(scored.len(), 2, "{records:?}");
    let manifest = read_json(&dir.join("runs/gan/checkpoints/best/manifest.json"));
    let best_step = manifest["best"]["step"].as_u64().unwrap();
    let best = scored
        .iter()
        .find(|r| r["step"].as_u64() == Some(best_step))
        .unwrap();
    let config = std::fs::read_to_string(dir.join("runs/gan/config.toml")).unwrap();
    assert!(config.contains("fid_samples = 40"), "{config}");
    ok(&genzoo(
        &[
            "eval",
            "--run",
            "runs/gan",
            "--checkpoint",
            "best",
            "--n",
            "40",
            "--seed",
            "3",
            "--metrics",
            "fid,kid",
        ],
        dir,
    ));
    let eval = read_json(&dir.join("runs/gan/eval.json"));
    assert_eq!(eval["fid"].as_f64(), best["test_fid"].as_f64(), "{eval}");
    assert_eq!(eval["kid"].as_f64(), best["test_kid"].as_f64(), "{eval}");

    // Refused before anything is written: a text model, and one sample.
    std::fs::write(dir.join("t.txt"), "to be or not to be, ".repeat(40)).unwrap();
    let err = fails(&genzoo(
        &[
            "train",
            "gpt-char",
            "--text",
            "t.txt",
            "--out",
            "runs/text",
            "--fid-samples",
            "40",
        ],
        dir,
    ));
    assert!(err.contains("fid_samples scores images"), "{err}");
    let err = fails(&genzoo(
        &[
            "train",
            "dcgan-28",
            "--dataset",
            "idx:digits",
            "--out",
            "runs/one",
            "--fid-samples",
            "1",
        ],
        dir,
    ));
    assert!(
        err.contains("fid_samples must be 0 (off) or at least 2"),
        "{err}"
    );
    for run in ["runs/text", "runs/one"] {
        assert!(!dir.join(run).join("config.toml").exists(), "{run}");
    }

    // A diffusion model's sample metrics with another sampler, recorded in
    // eval.json; refused where nothing is sampled by one.
    std::fs::write(dir.join("short.toml"), "[model]\ntimesteps = 100\n").unwrap();
    ok(&genzoo(
        &[
            "train",
            "ddpm-unet",
            "--dataset",
            "idx:digits",
            "--config",
            "short.toml",
            "--out",
            "runs/ddpm",
            "--batch-size",
            "4",
            "--steps",
            "1",
        ],
        dir,
    ));
    let fid = |sampler: &[&str]| -> (f64, serde_json::Value) {
        let base = ["eval", "--run", "runs/ddpm", "--n", "8", "--metrics", "fid"];
        ok(&genzoo(&[&base[..], sampler].concat(), dir));
        let eval = read_json(&dir.join("runs/ddpm/eval.json"));
        (eval["fid"].as_f64().unwrap(), eval["sampler"].clone())
    };
    let (ddim, recorded) = fid(&[]);
    assert!(recorded.is_null(), "{recorded}");
    let (dpm, recorded) = fid(&["--sampler", "dpm-solver", "--steps", "3"]);
    assert_ne!(ddim, dpm);
    assert_eq!(recorded["method"], "dpm-solver");
    assert_eq!(recorded["steps"], 3);
    for (run, args, expected) in [
        (
            "runs/gan",
            &["--sampler", "ddim"][..],
            "are for diffusion models",
        ),
        (
            "runs/ddpm",
            &["--metrics", "nll", "--steps", "3"][..],
            "nll draws nothing",
        ),
    ] {
        let err = fails(&genzoo(&[&["eval", "--run", run][..], args].concat(), dir));
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

#[test]
fn compare_trains_evaluates_skips_and_reports_every_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 96, 64, 28, 10).unwrap();
    std::fs::write(
        dir.join("exp.toml"),
        r#"
name = "tiny"
dataset = "idx:digits"
seeds = [0, 1]
[budget]
steps = 2
[eval]
samples = 48
metrics = ["fid", "is", "pr", "nll"]
nll_images = 4
nll_terms = 4
[[runs]]
name = "vae"
preset = "vae-mlp"
overrides = { train = { batch_size = 16 } }
[[runs]]
name = "vae-dl"
preset = "vae-mlp-dl"
overrides = { train = { batch_size = 16 } }
[[runs]]
name = "gan"
preset = "dcgan-28"
overrides = { train = { batch_size = 8 } }
"#,
    )
    .unwrap();
    ok(&genzoo(
        &[
            "evaluator",
            "train",
            "--dataset",
            "idx:digits",
            "--epochs",
            "1",
        ],
        dir,
    ));
    let text = ok(&genzoo(&["compare", "exp.toml", "--out", "cmp"], dir));
    let report = std::fs::read_to_string(dir.join("cmp/report.md")).unwrap();
    assert!(report.contains("| vae | vae-mlp | 652824 |"), "{report}");
    assert!(report.contains("| gan | dcgan-28 |"), "{report}");
    // bits/dim (the last column) for the likelihood models only.
    let row = |name: &str| {
        report
            .lines()
            .find(|l| l.starts_with(&format!("| {name} |")))
            .unwrap_or_else(|| panic!("no row {name}:\n{report}"))
            .to_string()
    };
    assert!(
        row("vae-dl").contains("| vae-mlp-dl | 967208 |"),
        "{report}"
    );
    assert!(!row("vae-dl").ends_with("| – |"), "{report}");
    assert!(row("vae").ends_with("| – |"), "{report}");
    assert!(
        report.contains(" ± "),
        "two seeds give mean ± std:\n{report}"
    );
    assert!(dir.join("cmp/report.png").exists());
    let curves = std::fs::read_to_string(dir.join("cmp/report.svg")).unwrap();
    for panel in [
        "vae: neg_elbo",
        "vae-dl: neg_elbo",
        "gan: d_loss",
        "gan: g_loss",
    ] {
        assert!(curves.contains(panel), "no panel {panel}");
    }
    assert!(curves.contains("seed 1 train"), "{curves}");
    assert!(dir.join("cmp/gan-seed1/eval.json").exists(), "{text}");
    // One eval.json holds both evaluations and names the checkpoint.
    let eval: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("cmp/vae-dl-seed0/eval.json")).unwrap())
            .unwrap();
    for key in ["fid", "nll_bits_per_dim", "checkpoint"] {
        assert!(eval.get(key).is_some(), "no {key} in {eval}");
    }
    assert_eq!(text.matches("wrote ").count(), 3 * 2 + 1, "{text}");
    // Finished runs are skipped; one whose record was lost is resumed.
    std::fs::remove_file(dir.join("cmp/vae-seed0/compare.json")).unwrap();
    let text = ok(&genzoo(&["compare", "exp.toml", "--out", "cmp"], dir));
    assert!(
        text.contains("gan seed 0: trained (2 steps), skipping"),
        "{text}"
    );
    assert!(text.contains("vae seed 0: resuming"), "{text}");
    // Its training time is the run's, as its checkpoint records it, not the
    // resuming call's (which had no step left to take).
    let json = |path: &str| read_json(&dir.join(path));
    let state = json("cmp/vae-seed0/compare.json");
    let manifest = json("cmp/vae-seed0/checkpoints/step-00000002/manifest.json");
    let recorded = manifest["train_seconds"].as_f64().unwrap();
    assert!(recorded > 0.0, "{manifest}");
    assert_eq!(state["train_seconds"].as_f64(), Some(recorded), "{state}");
}

#[test]
fn compare_trains_and_reports_text_models_by_their_validation_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(
        dir.join("poem.txt"),
        "The quick brown fox jumps over the lazy dog.\n".repeat(30),
    )
    .unwrap();
    std::fs::write(
        dir.join("exp.toml"),
        r#"
name = "words"
text = "poem.txt"
seeds = [0]
[budget]
steps = 3
[[runs]]
name = "gpt"
preset = "gpt-char"
overrides = { train = { eval_batches = 4 } }
[[runs]]
name = "bytes"
preset = "gpt-char"
overrides = { data = { bytes = true }, train = { eval_batches = 4 } }
sweep = { "train.lr" = [1e-3, 3e-3] }
"#,
    )
    .unwrap();
    let text = ok(&genzoo(&["compare", "exp.toml", "--out", "cmp"], dir));
    let report = std::fs::read_to_string(dir.join("cmp/report.md")).unwrap();
    assert!(
        report.contains("| val loss | perplexity | bits/token |"),
        "{report}"
    );
    // The sweep's runs: the overrides and each its own learning rate.
    for (run, lr) in [
        ("bytes-lr=0.001", "lr = 0.001"),
        ("bytes-lr=0.003", "lr = 0.003"),
    ] {
        let config = std::fs::read_to_string(dir.join(format!("cmp/{run}-seed0/config.toml")))
            .unwrap_or_else(|e| panic!("{run}: {e}"));
        assert!(
            config.contains(lr) && config.contains("bytes = true"),
            "{config}"
        );
    }
    for run in ["gpt", "bytes-lr=0.001", "bytes-lr=0.003"] {
        let eval = read_json(&dir.join(format!("cmp/{run}-seed0/eval.json")));
        // The whole split of 135 characters: 134 predictions.
        assert_eq!(eval["val_tokens"], 134.0, "{run}: {eval}");
        let loss = format!("{:.4}", eval["val_loss"].as_f64().unwrap());
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {run} |")))
            .unwrap_or_else(|| panic!("no row {run}:\n{report}"));
        assert!(row.contains(&loss), "{row} lacks {loss}");
    }
    assert!(!dir.join("cmp/report.png").exists() && dir.join("cmp/report.svg").exists());
    assert!(text.contains("report.svg"), "{text}");
    // Finished and evaluated: a second call trains and evaluates nothing.
    let again = ok(&genzoo(&["compare", "exp.toml", "--out", "cmp"], dir));
    assert!(
        again.contains("gpt seed 0: trained (3 steps), skipping"),
        "{again}"
    );
}

#[test]
fn compare_evaluates_each_runs_best_checkpoint_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 64, 32, 28, 10).unwrap();
    let experiment = |checkpoint: &str| {
        format!(
            r#"
name = "best"
dataset = "idx:digits"
[budget]
steps = 6
[eval]
metrics = ["nll"]
nll_images = 4
nll_terms = 4
checkpoint = "{checkpoint}"
[[runs]]
name = "vae-dl"
preset = "vae-mlp-dl"
overrides = {{ train = {{ batch_size = 16, lr = 0.01, eval_every = 1, eval_batches = 1, keep_best = "test_neg_elbo" }} }}
"#
        )
    };
    std::fs::write(dir.join("exp.toml"), experiment("best")).unwrap();
    let text = ok(&genzoo(&["compare", "exp.toml", "--out", "cmp"], dir));
    let json = |path: &str| read_json(&dir.join(path));
    let best = json("cmp/vae-dl-seed0/checkpoints/best/manifest.json")["best"]["step"]
        .as_u64()
        .unwrap();
    // The learning rate makes the held-out bound jump about: the best is
    // not the last.
    assert!(best < 6, "best step {best}");
    let eval = json("cmp/vae-dl-seed0/eval.json");
    assert!(
        eval["checkpoint"].as_str().unwrap().ends_with("best"),
        "{eval}"
    );
    assert_eq!(eval["checkpoint_step"].as_u64(), Some(best), "{eval}");
    let report = std::fs::read_to_string(dir.join("cmp/report.md")).unwrap();
    assert!(
        report.contains("| steps | best step |")
            && report.contains(&format!("| vae-dl | vae-mlp-dl | 967208 | 6 | {best} |")),
        "{report}"
    );
    assert!(text.contains("eval.json"), "{text}");
    // Evaluated once: a second call reads eval.json; asking for the latest
    // checkpoint instead evaluates again.
    let text = ok(&genzoo(&["compare", "exp.toml", "--out", "cmp"], dir));
    assert!(!text.contains("eval.json"), "{text}");
    std::fs::write(dir.join("exp.toml"), experiment("latest")).unwrap();
    let text = ok(&genzoo(&["compare", "exp.toml", "--out", "cmp"], dir));
    assert!(text.contains("eval.json"), "{text}");
    assert_eq!(
        json("cmp/vae-dl-seed0/eval.json")["checkpoint_step"].as_u64(),
        Some(6)
    );
    let report = std::fs::read_to_string(dir.join("cmp/report.md")).unwrap();
    assert!(!report.contains("best step"), "{report}");
}

#[test]
fn bench_reports_training_and_generation_under_the_peers_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let out = genzoo(
        &[
            "bench",
            "--model",
            "vae-mlp,gpt-char",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--threads",
            "1",
            "--gen-tokens",
            "16",
            "--gen-reps",
            "1",
            "--json",
        ],
        tmp.path(),
    );
    ok(&out);
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let find = |model: &str, task: &str| -> Vec<&serde_json::Value> {
        records
            .iter()
            .filter(|r| r["model"] == model && r["task"] == task)
            .collect()
    };
    let vae = find("vae-mlp", "train");
    assert_eq!(vae.len(), 1, "{records:?}");
    let vae = vae[0];
    assert_eq!(vae["framework"], "genzoo");
    assert_eq!(vae["params"], 652_824);
    assert_eq!(vae["batch"], 128);
    assert_eq!(vae["steps"], 2);
    assert_eq!(vae["threads"], 1);
    let median = vae["sec_per_step_median"].as_f64().unwrap();
    assert!(median > 0.0);
    let rate = vae["examples_per_sec"].as_f64().unwrap();
    assert!((rate - 128.0 / median).abs() < 1e-6 * rate);
    assert!(vae["sec_per_step_min"].as_f64().unwrap() <= median);

    let gpt = find("gpt-char", "train");
    assert_eq!(gpt[0]["params"], 804_096);
    assert_eq!(gpt[0]["seq_len"], 64);
    assert!(gpt[0]["tokens_per_sec"].as_f64().unwrap() > 0.0);
    let generate = find("gpt-char", "generate");
    let caches: Vec<bool> = generate
        .iter()
        .map(|r| r["kv_cache"].as_bool().unwrap())
        .collect();
    assert_eq!(caches, [true, false]);
    for r in generate {
        assert_eq!(r["new_tokens"], 16);
        assert!(r["tokens_per_sec"].as_f64().unwrap() > 0.0);
    }

    let err = fails(&genzoo(&["bench", "--model", "vae-xl"], tmp.path()));
    assert!(err.contains("unknown model 'vae-xl'"), "{err}");
}

/// gpt-pixel draws its pixels as a text model draws characters: `sample`
/// takes the same --temperature, --top-k, --top-p and --no-cache, for
/// samples and for completions; models that draw no tokens refuse them.
#[test]
fn gpt_pixel_sampling_takes_the_token_sampling_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_idx_dataset(&dir.join("digits"), 16, 8, 28, 10).unwrap();
    std::fs::write(
        dir.join("small.toml"),
        "[model]\nn_layer = 1\nn_head = 2\nn_embd = 16\n[train]\nsamples = 4\n",
    )
    .unwrap();
    ok(&genzoo(
        &[
            "train",
            "gpt-pixel",
            "--dataset",
            "idx:digits",
            "--config",
            "small.toml",
            "--steps",
            "2",
            "--batch-size",
            "8",
            "--out",
            "runs/p",
        ],
        dir,
    ));
    let sample = |name: &str, extra: &[&str]| -> Vec<u8> {
        let out = format!("{name}.png");
        ok(&genzoo(
            &[
                &["sample", "--run", "runs/p", "--n", "4", "--out", &out][..],
                extra,
            ]
            .concat(),
            dir,
        ));
        std::fs::read(dir.join(&out)).unwrap()
    };
    // At temperature 1 (the default) the seed decides; the cache does not.
    let drawn = sample("drawn", &["--seed", "1"]);
    assert_ne!(drawn, sample("other-seed", &["--seed", "2"]));
    assert_eq!(drawn, sample("no-cache", &["--seed", "1", "--no-cache"]));
    // Greedy decoding ignores the seed, and top-1 sampling is greedy.
    let greedy = sample("greedy", &["--seed", "1", "--temperature", "0"]);
    assert_ne!(greedy, drawn);
    assert_eq!(
        greedy,
        sample("greedy-2", &["--seed", "2", "--temperature", "0"])
    );
    assert_eq!(greedy, sample("top-1", &["--seed", "3", "--top-k", "1"]));
    // Completions of test images take the same flags.
    let completed = |name: &str, seed: &str| {
        sample(
            name,
            &[
                "--complete-rows",
                "14",
                "--temperature",
                "0",
                "--seed",
                seed,
            ],
        )
    };
    assert_eq!(completed("complete-1", "1"), completed("complete-2", "2"));
    // The flags are still checked, and refused where no tokens are drawn.
    let err = fails(&genzoo(&["sample", "--run", "runs/p", "--top-p", "0"], dir));
    assert!(err.contains("--top-p must be in (0, 1]"), "{err}");
    let err = fails(&genzoo(
        &["sample", "--run", "runs/p", "--prompt", "hi"],
        dir,
    ));
    assert!(
        err.contains("--prompt is for text models; gpt-pixel is a gpt model of images"),
        "{err}"
    );
    ok(&genzoo(
        &[
            "train",
            "vae-mlp",
            "--dataset",
            "idx:digits",
            "--steps",
            "1",
            "--out",
            "runs/v",
        ],
        dir,
    ));
    let err = fails(&genzoo(
        &[
            "sample",
            "--run",
            "runs/v",
            "--temperature",
            "0.5",
            "--no-cache",
        ],
        dir,
    ));
    assert!(
        err.contains(
            "--temperature, --no-cache are for models that draw tokens (gpt-char, gpt-pixel); \
             vae-mlp is a vae model of images"
        ),
        "{err}"
    );
}
