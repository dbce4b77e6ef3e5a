//! The run directory: `config.toml`, `metrics.jsonl`, `metrics.csv`,
//! `curves.svg`, `samples/`, `checkpoints/`, and `.lock` while a process
//! trains it ([`RunLock`]).

use std::fs::{File, TryLockError};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use genzoo_core::{Error, Result};

use crate::checkpoint::MANIFEST;
use crate::config::RunConfig;

/// A run's directory and the paths inside it.
#[derive(Clone, Debug)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    /// Creates the run directory for a new run. An existing non-empty
    /// directory is refused (nothing is overwritten) unless `overwrite`,
    /// which deletes its contents first.
    pub fn create(path: impl Into<PathBuf>, overwrite: bool) -> Result<Self> {
        let root = path.into();
        if root.exists() && !is_empty_dir(&root)? {
            if !overwrite {
                return Err(Error::Config(format!(
                    "{} already exists and is not empty: pass --resume to continue that run, --overwrite to replace it, or choose another --out",
                    root.display()
                )));
            }
            // All but the lock: the process replacing the run holds it.
            remove_all_but_the_lock(&root)?;
        }
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        Ok(Self { root })
    }

    /// Opens an existing run directory (for resume, sample, info).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self> {
        let root = path.into();
        if !root.is_dir() {
            return Err(Error::Config(format!(
                "{} is not a run directory (it does not exist)",
                root.display()
            )));
        }
        Ok(Self { root })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `config.toml`.
    pub fn config_file(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    /// Reads `config.toml`, the run's settings. A directory without one is
    /// said not to be a run (rather than a bare "No such file").
    pub fn load_config(&self) -> Result<RunConfig> {
        let path = self.config_file();
        if !path.exists() {
            return Err(Error::Config(format!(
                "{} is not a run directory (it has no config.toml)",
                self.root.display()
            )));
        }
        RunConfig::load(&path)
    }
    /// `metrics.jsonl`.
    pub fn metrics_file(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }
    /// `metrics.csv` (long format: step, name, value).
    pub fn metrics_csv(&self) -> PathBuf {
        self.root.join("metrics.csv")
    }
    /// `curves.svg`: the losses so far (see [`crate::plot`]).
    pub fn curves_file(&self) -> PathBuf {
        self.root.join("curves.svg")
    }
    /// `samples/`.
    pub fn samples_dir(&self) -> PathBuf {
        self.root.join("samples")
    }
    /// `checkpoints/`.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// Deletes the periodic samples (`samples/step-N.png`, or `.txt` for
    /// text models) of the steps after `step`: a run resumed at `step`
    /// redoes them, so that, as in its log, no sample of a step it left
    /// behind (one killed after its last checkpoint, or later resumed with
    /// another `sample_every`) shows among the new ones in `progress.png`.
    pub fn remove_samples_after(&self, step: u64) -> Result<()> {
        let dir = self.samples_dir();
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(()); // no samples yet
        };
        for entry in entries {
            let path = entry.map_err(|e| Error::io(&dir, e))?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let sample_step = ["png", "txt"]
                .iter()
                .find_map(|ext| name.strip_prefix("step-")?.strip_suffix(&format!(".{ext}")))
                .and_then(|digits| digits.parse::<u64>().ok());
            if sample_step.is_some_and(|s| s > step) {
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
        }
        Ok(())
    }

    /// Every checkpoint's manifest (`checkpoints/*/manifest.json`) with
    /// its bytes, in path order. Two equal lists mean no checkpoint was
    /// written, replaced or pruned in between: a manifest names its step and
    /// every file's checksum.
    pub fn checkpoint_manifests(&self) -> Result<Vec<(PathBuf, Vec<u8>)>> {
        let dir = self.checkpoints_dir();
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let manifest = entry.map_err(|e| Error::io(&dir, e))?.path().join(MANIFEST);
            if let Ok(bytes) = std::fs::read(&manifest) {
                out.push((manifest, bytes));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Empties the directory of a new run that failed before it produced
    /// anything, so that the corrected command can use the same `--out`
    /// without `--overwrite`. Such a run holds its `config.toml` and at most
    /// empty files and folders; anything else (a logged metric, a sample, a
    /// checkpoint) keeps the whole directory as it is. Returns whether it was
    /// emptied.
    ///
    /// Only for a directory [`RunDir::create`] made or emptied in the same
    /// command: its `config.toml` is the one that command wrote.
    pub fn clear_if_unstarted(&self) -> Result<bool> {
        if !holds_nothing(&self.root, &["config.toml", LOCK])? {
            return Ok(false);
        }
        remove_all_but_the_lock(&self.root)?;
        Ok(true)
    }
}

/// `text` as a part of a file name: ASCII letters, digits and `-` kept,
/// anything else (a path's `/` and `:`, a host name's dots) as `_`.
pub(crate) fn file_name_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The lock file's name in a run directory.
const LOCK: &str = ".lock";

/// A process's exclusive hold on a run directory while it trains it:
/// a second process asking for the same directory (a `resume` started
/// twice, an `--overwrite` of a run under way) is refused instead of
/// writing checkpoints and logs over the first's. The operating system
/// releases the lock when the process ends, however it ends; a `.lock`
/// file left by a killed process is taken over.
///
/// ```
/// # use genzoo_train::run_dir::RunLock;
/// # let tmp = tempfile::tempdir().unwrap();
/// let held = RunLock::acquire(tmp.path()).unwrap();
/// assert!(RunLock::acquire(tmp.path()).is_err());
/// drop(held);
/// assert!(RunLock::acquire(tmp.path()).is_ok());
/// ```
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    file: Option<File>,
}

impl RunLock {
    /// Locks `dir` (created if missing) for this process, or says which
    /// process holds it. Where the file system cannot lock files, a
    /// warning says so and training goes on unguarded.
    pub fn acquire(dir: &Path) -> Result<Self> {
        if dir.exists() {
            refuse_a_file(dir)?;
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK);
        let mut file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!(" (pid {pid})"),
                    Err(_) => String::new(),
                };
                return Err(Error::Other(format!(
                    "{} is being trained by another genzoo process{holder}: wait for it to \
                     finish, or stop it (Ctrl-C checkpoints its step) and resume",
                    dir.display()
                )));
            }
            Err(TryLockError::Error(e)) => {
                eprintln!(
                    "warning: {} cannot be locked ({e}): nothing stops another process \
                     training this run at the same time",
                    path.display()
                );
                return Ok(Self { path, file: None });
            }
        }
        // Who holds it, for the message above.
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.write_all(pid.as_bytes()))
            .map_err(|e| Error::io(&path, e))?;
        Ok(Self {
            path,
            file: Some(file),
        })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Removed while still held: a process that opened it in
            // between finds it locked and gives up, rather than locking a
            // file a third could create again beside it.
            let _ = std::fs::remove_file(&self.path);
            drop(file);
        }
    }
}

/// Deletes everything in `dir` except the [`RunLock`] file.
fn remove_all_but_the_lock(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        if entry.file_name() == LOCK {
            continue;
        }
        let path = entry.path();
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

/// Whether `dir` holds only empty files and folders, besides the files
/// named in `except` directly inside it.
fn holds_nothing(dir: &Path, except: &[&str]) -> Result<bool> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let meta = entry.metadata().map_err(|e| Error::io(&path, e))?;
        let empty = if meta.is_dir() {
            holds_nothing(&path, &[])?
        } else {
            meta.len() == 0 || except.iter().any(|name| entry.file_name() == *name)
        };
        if !empty {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Refuses an existing `path` that is not a directory.
fn refuse_a_file(path: &Path) -> Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{} exists and is not a directory",
        path.display()
    )))
}

fn is_empty_dir(path: &Path) -> Result<bool> {
    refuse_a_file(path)?;
    // A lock file alone (this process's, or a killed one's) is no content.
    Ok(std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .filter_map(|e| e.ok())
        .all(|e| e.file_name() == LOCK))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_non_empty_directory_unless_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        RunDir::create(&dir, false).unwrap();
        std::fs::write(dir.join("keep.txt"), "data").unwrap();
        let err = RunDir::create(&dir, false).unwrap_err().to_string();
        assert!(
            err.contains("--resume") && err.contains("--overwrite"),
            "{err}"
        );
        assert!(
            dir.join("keep.txt").exists(),
            "nothing may be deleted without --overwrite"
        );
        RunDir::create(&dir, true).unwrap();
        assert!(!dir.join("keep.txt").exists());
    }

    #[test]
    fn a_locked_run_is_refused_to_others_and_its_lock_survives_an_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let held = RunLock::acquire(&dir).unwrap();
        // A lock file alone is no content: the new run starts there.
        let run = RunDir::create(&dir, false).unwrap();
        std::fs::write(run.config_file(), "[model]").unwrap();
        // Another open of the file (another process, as far as the lock goes).
        let err = RunLock::acquire(&dir).unwrap_err().to_string();
        assert!(
            err.contains("being trained by another genzoo process")
                && err.contains(&format!("(pid {})", std::process::id())),
            "{err}"
        );
        assert!(run.config_file().exists(), "a refusal deletes nothing");
        // The holder replacing its run keeps its lock.
        RunDir::create(&dir, true).unwrap();
        assert!(!run.config_file().exists() && dir.join(LOCK).exists());
        assert!(RunLock::acquire(&dir).is_err());
        std::fs::write(run.config_file(), "[model]").unwrap();
        assert!(run.clear_if_unstarted().unwrap());
        assert!(dir.join(LOCK).exists() && is_empty_dir(&dir).unwrap());
        drop(held);
        assert!(!dir.join(LOCK).exists(), "released and removed");
        // A lock file left by a process that was killed is taken over.
        std::fs::write(dir.join(LOCK), "4000000").unwrap();
        let again = RunLock::acquire(&dir).unwrap();
        let holder = std::fs::read_to_string(dir.join(LOCK)).unwrap();
        assert_eq!(holder, std::process::id().to_string());
        drop(again);
        let file = tmp.path().join("file");
        std::fs::write(&file, "x").unwrap();
        let err = RunLock::acquire(&file).unwrap_err().to_string();
        assert!(err.contains("is not a directory"), "{err}");
    }

    #[test]
    fn samples_after_a_step_are_removed_and_the_rest_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path().join("run"), false).unwrap();
        assert!(run.remove_samples_after(0).is_ok(), "no samples/ yet");
        std::fs::create_dir_all(run.samples_dir()).unwrap();
        let names = [
            "step-00000100.png",
            "step-00000200.png",
            "step-00000300.txt",
            "step-00000050.txt",
            "final.png",
            "progress.png",
            "step-notes.png",
        ];
        for name in names {
            std::fs::write(run.samples_dir().join(name), "x").unwrap();
        }
        run.remove_samples_after(100).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(run.samples_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "final.png",
                "progress.png",
                "step-00000050.txt",
                "step-00000100.png",
                "step-notes.png"
            ]
        );
    }

    #[test]
    fn a_run_that_produced_nothing_is_cleared_and_any_other_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path().join("run"), false).unwrap();
        std::fs::write(run.config_file(), "[model]").unwrap();
        std::fs::write(run.metrics_file(), "").unwrap();
        std::fs::create_dir_all(run.checkpoints_dir().join("empty")).unwrap();
        // A metric logged, a sample, or a config.toml deeper down: kept.
        for kept in [
            run.metrics_file(),
            run.samples_dir().join("step-1.png"),
            run.checkpoints_dir().join("config.toml"),
        ] {
            std::fs::create_dir_all(kept.parent().unwrap()).unwrap();
            std::fs::write(&kept, "data").unwrap();
            assert!(!run.clear_if_unstarted().unwrap(), "{}", kept.display());
            assert!(kept.exists() && run.config_file().exists());
            std::fs::write(&kept, "").unwrap();
        }
        assert!(run.clear_if_unstarted().unwrap());
        assert!(run.root().is_dir() && is_empty_dir(run.root()).unwrap());
        RunDir::create(run.root(), false).unwrap();
    }

    #[test]
    fn checkpoint_manifests_change_with_any_checkpoint_written_or_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path().join("run"), false).unwrap();
        assert!(run.checkpoint_manifests().unwrap().is_empty());
        let write = |name: &str, text: &str| {
            let dir = run.checkpoints_dir().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(MANIFEST), text).unwrap();
        };
        write("step-00000002", "{\"step\": 2}");
        write("best", "{\"step\": 2}");
        let first = run.checkpoint_manifests().unwrap();
        assert_eq!(first.len(), 2);
        assert_eq!(run.checkpoint_manifests().unwrap(), first);
        // The best checkpoint rewritten in place, a new one, one pruned.
        write("best", "{\"step\": 4}");
        let second = run.checkpoint_manifests().unwrap();
        assert_ne!(second, first);
        write("step-00000004", "{\"step\": 4}");
        assert_ne!(run.checkpoint_manifests().unwrap(), second);
        std::fs::remove_dir_all(run.checkpoints_dir().join("step-00000004")).unwrap();
        assert_eq!(run.checkpoint_manifests().unwrap(), second);
    }
}
