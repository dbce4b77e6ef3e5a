//! The run directory: `config.toml`, `metrics.jsonl`, `metrics.csv`,
//! `curves.svg`, `samples/`, `checkpoints/`.

use std::path::{Path, PathBuf};

use genzoo_core::{Error, Result};

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
}
