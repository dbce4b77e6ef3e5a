//! The run directory: `config.toml`, `metrics.jsonl`, `metrics.csv`,
//! `curves.svg`, `samples/`, `checkpoints/`.

use std::path::{Path, PathBuf};

use genzoo_core::{Error, Result};

use crate::checkpoint::MANIFEST;

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
            std::fs::remove_dir_all(&root).map_err(|e| Error::io(&root, e))?;
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
        if !holds_nothing(&self.root, &["config.toml"])? {
            return Ok(false);
        }
        for entry in std::fs::read_dir(&self.root).map_err(|e| Error::io(&self.root, e))? {
            let path = entry.map_err(|e| Error::io(&self.root, e))?.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| Error::io(&path, e))?;
        }
        Ok(true)
    }
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

fn is_empty_dir(path: &Path) -> Result<bool> {
    if !path.is_dir() {
        return Err(Error::Config(format!(
            "{} exists and is not a directory",
            path.display()
        )));
    }
    Ok(std::fs::read_dir(path)
        .map_err(|e| Error::io(path, e))?
        .next()
        .is_none())
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
