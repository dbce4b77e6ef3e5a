//! Where a dataset comes from (`mnist`, `fashion-mnist`, `cifar-10`,
//! `idx:<DIR>`, `folder:<DIR>`), where its files are looked for, and loading
//! its train and test splits.
//!
//! A named dataset is looked for, in order: in `--data-dir` (only there,
//! when given); in `$GENZOO_DATA_DIR/<name>`; in the cache
//! `$XDG_CACHE_HOME/genzoo/<name>` (`~/.cache/genzoo/<name>`); in the system
//! location `/usr/share/datasets/<name>` (Debian's `dataset-fashion-mnist`
//! package); and finally downloaded from the public mirrors into the cache,
//! checked against the published MD5.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use genzoo_core::{Error, Result};

use crate::dataset::ImageDataset;
use crate::mnist::{self, KnownDataset};
use crate::{cifar, folder};

/// Where a dataset comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatasetSource {
    /// An MNIST-format dataset known by name, with mirrors and checksums.
    Named(&'static KnownDataset),
    /// Any directory of MNIST-format files (`idx:<DIR>`).
    IdxDir(PathBuf),
    /// CIFAR-10 (`cifar-10`), 32×32 colour images in 10 classes.
    Cifar10,
    /// A directory of image files (`folder:<DIR>`), see [`folder`].
    Folder {
        /// The directory.
        dir: PathBuf,
        /// The side every image is resized (and centre-cropped) to; `None`:
        /// the images must all have one size.
        image_size: Option<usize>,
    },
}

impl DatasetSource {
    /// The name used for run directories and messages.
    pub fn name(&self) -> String {
        match self {
            DatasetSource::Named(k) => k.name.to_string(),
            DatasetSource::IdxDir(p) => format!("idx:{}", p.display()),
            DatasetSource::Cifar10 => cifar::NAME.to_string(),
            DatasetSource::Folder { dir, .. } => format!("folder:{}", dir.display()),
        }
    }

    /// Whether `--data-dir` says where this dataset's files are: it does
    /// for datasets known by name; `idx:` and `folder:` name their own.
    pub fn reads_data_dir(&self) -> bool {
        matches!(self, DatasetSource::Named(_) | DatasetSource::Cifar10)
    }

    /// The same source with its images resized to `size`×`size`: only image
    /// folders take a size (the other datasets' images have theirs).
    pub fn with_image_size(self, size: Option<usize>) -> Result<Self> {
        match (self, size) {
            (source, None) => Ok(source),
            (DatasetSource::Folder { dir, .. }, Some(size)) => {
                if size == 0 {
                    return Err(Error::Config("image_size must be at least 1".into()));
                }
                Ok(DatasetSource::Folder {
                    dir,
                    image_size: Some(size),
                })
            }
            (source, Some(_)) => Err(Error::Config(format!(
                "image_size resizes the images of a folder:<DIR> dataset; {}'s images have a fixed size",
                source.name()
            ))),
        }
    }
}

impl FromStr for DatasetSource {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Some(dir) = s.strip_prefix("idx:") {
            return Ok(DatasetSource::IdxDir(PathBuf::from(dir)));
        }
        if let Some(dir) = s.strip_prefix("folder:") {
            return Ok(DatasetSource::Folder {
                dir: PathBuf::from(dir),
                image_size: None,
            });
        }
        if s == cifar::NAME || cifar::ALIASES.contains(&s) {
            return Ok(DatasetSource::Cifar10);
        }
        mnist::KNOWN
            .iter()
            .find(|k| k.name == s || k.aliases.contains(&s))
            .map(DatasetSource::Named)
            .ok_or_else(|| {
                let names: Vec<&str> = mnist::KNOWN.iter().map(|k| k.name).collect();
                Error::Config(format!(
                    "unknown dataset '{s}': expected one of {}, {}, idx:<DIR> (a directory of MNIST-format files) \
                     or folder:<DIR> (a directory of images)",
                    names.join(", "),
                    cifar::NAME
                ))
            })
    }
}

/// Where to look for data, and whether downloading is allowed. Built from
/// the environment by [`Locator::from_env`]; tests build it by hand.
#[derive(Clone, Debug)]
pub struct Locator {
    /// `--data-dir`: a directory holding the dataset's files. When given, it is the only place looked at.
    pub data_dir: Option<PathBuf>,
    /// `$GENZOO_DATA_DIR`: a directory with one subdirectory per dataset.
    pub data_root: Option<PathBuf>,
    /// The cache root (`$XDG_CACHE_HOME/genzoo` or `~/.cache/genzoo`).
    pub cache_root: Option<PathBuf>,
    /// System-wide dataset roots (`/usr/share/datasets`).
    pub system_roots: Vec<PathBuf>,
    /// Mirror overrides (a base URL), by dataset name.
    pub mirror_overrides: Vec<(String, String)>,
    /// Whether to download missing files.
    pub allow_download: bool,
}

impl Locator {
    /// The locator for this process: `data_dir` from the command line, the
    /// rest from the environment (`GENZOO_DATA_DIR`, `XDG_CACHE_HOME`,
    /// `HOME`, the mirror variables; `GENZOO_OFFLINE=1` disables downloads).
    pub fn from_env(data_dir: Option<PathBuf>) -> Self {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let cache_root = env("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("genzoo"));
        let mirror_vars = mnist::KNOWN
            .iter()
            .map(|k| (k.name, k.mirror_env))
            .chain([(cifar::NAME, cifar::MIRROR_ENV)]);
        let mirror_overrides = mirror_vars
            .filter_map(|(name, var)| {
                std::env::var(var)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(|v| (name.to_string(), v))
            })
            .collect();
        Locator {
            data_dir,
            data_root: env("GENZOO_DATA_DIR").map(PathBuf::from),
            cache_root,
            system_roots: vec![PathBuf::from("/usr/share/datasets")],
            mirror_overrides,
            allow_download: env("GENZOO_OFFLINE").is_none_or(|v| v == "0"),
        }
    }

    /// The mirrors (base URLs) to download dataset `name` from: its
    /// override when one is set, else `defaults`.
    pub fn mirrors(&self, name: &str, defaults: &[&str]) -> Vec<String> {
        match self.mirror_overrides.iter().find(|(n, _)| n == name) {
            Some((_, url)) => vec![url.clone()],
            None => defaults.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The directories a named dataset is looked for in after `--data-dir`,
    /// in order, each with its origin for messages: `$GENZOO_DATA_DIR/<name>`,
    /// the cache, the system roots.
    pub fn search_dirs(&self, name: &str) -> Vec<(PathBuf, &'static str)> {
        let mut dirs = Vec::new();
        if let Some(root) = &self.data_root {
            dirs.push((root.join(name), "$GENZOO_DATA_DIR"));
        }
        if let Some(root) = &self.cache_root {
            dirs.push((root.join(name), "cache"));
        }
        for root in &self.system_roots {
            dirs.push((root.join(name), "system"));
        }
        dirs
    }

    /// Probes the [search directories](Self::search_dirs) of dataset `name`
    /// in order and returns the first hit, or, when none has it, the cache
    /// directory to download it into. An error when there is no cache
    /// directory either.
    pub fn search<T>(
        &self,
        name: &str,
        probe: impl Fn(&Path, &'static str) -> Option<T>,
    ) -> Result<Search<T>> {
        let mut looked = Vec::new();
        for (dir, origin) in self.search_dirs(name) {
            if let Some(found) = probe(&dir, origin) {
                return Ok(Search::Found(found));
            }
            looked.push(dir.display().to_string());
        }
        let Some(cache) = self.cache_root.as_ref().map(|r| r.join(name)) else {
            return Err(Error::Data(format!(
                "{name} not found (looked in: {}) and there is no cache directory to download into \
                 (set HOME or XDG_CACHE_HOME, or pass --data-dir)",
                looked.join(", ")
            )));
        };
        Ok(Search::Missing { cache, looked })
    }
}

/// What [`Locator::search`] found.
pub enum Search<T> {
    /// The probe's answer for the first directory that has the dataset.
    Found(T),
    /// No search directory has it.
    Missing {
        /// The cache directory to download it into.
        cache: PathBuf,
        /// The directories looked in, for messages.
        looked: Vec<String>,
    },
}

/// Finds and loads a dataset's train and test splits.
///
/// ```no_run
/// use genzoo_data::{DatasetSource, Locator, load_image_dataset};
/// let source: DatasetSource = "cifar-10".parse().unwrap();
/// let (train, test) = load_image_dataset(&source, &Locator::from_env(None)).unwrap();
/// assert_eq!((train.len(), test.len(), train.dims()), (50_000, 10_000, (3, 32, 32)));
/// ```
pub fn load_image_dataset(
    source: &DatasetSource,
    locator: &Locator,
) -> Result<(ImageDataset, ImageDataset)> {
    match source {
        DatasetSource::Named(known) => {
            let classes = known.classes.iter().map(|s| s.to_string()).collect();
            mnist::load(&mnist::resolve(known, locator)?, classes)
        }
        DatasetSource::IdxDir(dir) => mnist::load(&mnist::resolve_dir(dir)?, Vec::new()),
        DatasetSource::Cifar10 => cifar::load(locator),
        DatasetSource::Folder { dir, image_size } => folder::load(dir, *image_size),
    }
}
