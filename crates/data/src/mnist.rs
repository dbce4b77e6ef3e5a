//! MNIST-format datasets (MNIST, Fashion-MNIST, any IDX directory) and
//! where to find them: a named one is looked for as [`crate::source`]
//! describes, and downloaded from the public mirrors into the cache, each
//! file checked against its published MD5.

use std::path::{Path, PathBuf};

use genzoo_core::{Error, Result};

use crate::dataset::ImageDataset;
use crate::download::download_from_mirrors;
use crate::idx::read_idx;
use crate::source::{Locator, Search};

/// The four files of an MNIST-format dataset, by their canonical names.
pub const FILES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];

/// A dataset genzoo knows how to download.
#[derive(Debug, PartialEq, Eq)]
pub struct KnownDataset {
    /// Its name (`mnist`, `fashion-mnist`).
    pub name: &'static str,
    /// Other accepted spellings.
    pub aliases: &'static [&'static str],
    /// Environment variable that overrides the mirror (a base URL).
    pub mirror_env: &'static str,
    /// Public mirrors, tried in order.
    pub mirrors: &'static [&'static str],
    /// Published MD5 of each gzipped file, in the order of [`FILES`].
    pub md5: [&'static str; 4],
    /// Class names.
    pub classes: &'static [&'static str],
}

/// The datasets genzoo can download.
pub static KNOWN: [KnownDataset; 2] = [
    KnownDataset {
        name: "mnist",
        aliases: &["MNIST"],
        mirror_env: "GENZOO_MNIST_MIRROR",
        mirrors: &[
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ],
        md5: [
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ],
        classes: &["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
    },
    KnownDataset {
        name: "fashion-mnist",
        aliases: &["fashion_mnist", "FashionMNIST"],
        mirror_env: "GENZOO_FASHION_MNIST_MIRROR",
        mirrors: &[
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ],
        md5: [
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ],
        classes: &[
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ],
    },
];

/// The four files of a dataset once found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetFiles {
    /// Train images, train labels, test images, test labels.
    pub paths: [PathBuf; 4],
    /// Where they were found, for messages ("--data-dir", "cache", ...).
    pub origin: &'static str,
}

/// Looks for the four files in `dir` under their canonical names, raw or
/// `.gz` (also the `t10k-images.idx3-ubyte` spelling some archives use).
/// Returns the files found and the names of those missing.
pub fn find_files(dir: &Path) -> (Vec<PathBuf>, Vec<&'static str>) {
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for name in FILES {
        let dotted = name.replacen("-idx", ".idx", 1);
        let candidates = [
            name.to_string(),
            format!("{name}.gz"),
            dotted.clone(),
            format!("{dotted}.gz"),
        ];
        match candidates.iter().map(|c| dir.join(c)).find(|p| p.is_file()) {
            Some(p) => found.push(p),
            None => missing.push(name),
        }
    }
    (found, missing)
}

fn complete(dir: &Path, origin: &'static str) -> Option<DatasetFiles> {
    let (found, missing) = find_files(dir);
    if missing.is_empty() {
        Some(DatasetFiles {
            paths: found.try_into().expect("four files"),
            origin,
        })
    } else {
        None
    }
}

/// The files of an MNIST-format directory given by path (`idx:<DIR>`).
pub fn resolve_dir(dir: &Path) -> Result<DatasetFiles> {
    let origin = "idx: directory";
    complete(dir, origin).ok_or_else(|| missing_error(dir, origin))
}

/// Finds (or downloads) the files of a known dataset following the order in
/// the module documentation.
pub fn resolve(known: &'static KnownDataset, locator: &Locator) -> Result<DatasetFiles> {
    if let Some(dir) = &locator.data_dir {
        return complete(dir, "--data-dir").ok_or_else(|| missing_error(dir, "--data-dir"));
    }
    let (cache, looked) = match locator.search(known.name, complete)? {
        Search::Found(files) => return Ok(files),
        Search::Missing { cache, looked } => (cache, looked),
    };
    if !locator.allow_download {
        return Err(offline_error(known, &cache, &looked, None));
    }
    download_into(known, &cache, &locator.mirrors(known.name, known.mirrors))
        .map_err(|e| offline_error(known, &cache, &looked, Some(e)))?;
    complete(&cache, "download").ok_or_else(|| missing_error(&cache, "download"))
}

fn download_into(known: &KnownDataset, cache: &Path, mirrors: &[String]) -> Result<()> {
    let (_, missing) = find_files(cache);
    for name in missing {
        let idx = FILES.iter().position(|f| *f == name).expect("known file");
        let file = format!("{name}.gz");
        download_from_mirrors(mirrors, &file, &cache.join(&file), known.md5[idx])?;
    }
    Ok(())
}

fn missing_error(dir: &Path, origin: &str) -> Error {
    if !dir.is_dir() {
        return Error::Data(format!(
            "{} ({origin}) is not a directory: an MNIST-format directory holds {} (raw or .gz)",
            dir.display(),
            FILES.join(", ")
        ));
    }
    let (_, missing) = find_files(dir);
    Error::Data(format!(
        "{} ({origin}) lacks {} (raw or .gz)",
        dir.display(),
        missing.join(", "),
    ))
}

fn offline_error(
    known: &KnownDataset,
    cache: &Path,
    looked: &[String],
    cause: Option<Error>,
) -> Error {
    let (_, missing) = find_files(cache);
    let why = match cause {
        Some(e) => format!("the download failed ({e})"),
        None => "downloads are disabled (GENZOO_OFFLINE)".to_string(),
    };
    Error::Data(format!(
        "{name}: files missing: {missing}; looked in {looked}; {why}. Provide them in one of these ways: \
         pass --data-dir DIR with the four files ({all}, raw or .gz); put them in $GENZOO_DATA_DIR/{name} or {cache}; \
         or set {env} to a mirror that serves them",
        name = known.name,
        missing = missing.join(", "),
        looked = looked.join(", "),
        all = FILES.join(", "),
        cache = cache.display(),
        env = known.mirror_env,
    ))
}

/// Loads the train and test splits as the four files define them.
pub fn load(
    files: &DatasetFiles,
    class_names: Vec<String>,
) -> Result<(ImageDataset, ImageDataset)> {
    let [train_x, train_y, test_x, test_y] = &files.paths;
    let train = ImageDataset::from_idx(
        &read_idx(train_x)?,
        &read_idx(train_y)?,
        train_x,
        train_y,
        class_names.clone(),
    )?;
    let test = ImageDataset::from_idx(
        &read_idx(test_x)?,
        &read_idx(test_y)?,
        test_x,
        test_y,
        class_names,
    )?;
    if train.dims() != test.dims() {
        return Err(Error::Data(format!(
            "train images are {:?} but test images are {:?} ({})",
            train.dims(),
            test.dims(),
            test_x.display()
        )));
    }
    Ok((train, test))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::idx::encode_idx;

    fn write_dataset(dir: &Path, n: usize) {
        std::fs::create_dir_all(dir).unwrap();
        for (name, dims) in FILES
            .iter()
            .zip([vec![n, 4, 4], vec![n], vec![n, 4, 4], vec![n]])
        {
            let len: usize = dims.iter().product();
            std::fs::write(dir.join(name), encode_idx(&dims, &vec![1u8; len])).unwrap();
        }
    }

    fn locator(root: &Path) -> Locator {
        Locator {
            data_dir: None,
            data_root: Some(root.join("env")),
            cache_root: Some(root.join("cache")),
            system_roots: vec![root.join("system")],
            mirror_overrides: vec![],
            allow_download: false,
        }
    }

    #[test]
    fn resolution_order_is_data_dir_env_cache_system() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mnist = &KNOWN[0];
        let mut loc = locator(root);

        write_dataset(&root.join("system/mnist"), 1);
        assert_eq!(resolve(mnist, &loc).unwrap().origin, "system");
        write_dataset(&root.join("cache/mnist"), 1);
        assert_eq!(resolve(mnist, &loc).unwrap().origin, "cache");
        write_dataset(&root.join("env/mnist"), 1);
        assert_eq!(resolve(mnist, &loc).unwrap().origin, "$GENZOO_DATA_DIR");
        write_dataset(&root.join("explicit"), 1);
        loc.data_dir = Some(root.join("explicit"));
        let files = resolve(mnist, &loc).unwrap();
        assert_eq!(files.origin, "--data-dir");
        assert!(files.paths[0].starts_with(root.join("explicit")));

        // An explicit --data-dir that lacks files is an error, not a silent fallback.
        loc.data_dir = Some(root.join("empty"));
        let err = resolve(mnist, &loc).unwrap_err().to_string();
        assert!(
            err.contains("is not a directory") && err.contains("t10k-labels-idx1-ubyte"),
            "{err}"
        );
        // A directory missing one file names that file alone.
        std::fs::remove_file(root.join("explicit/t10k-labels-idx1-ubyte")).unwrap();
        loc.data_dir = Some(root.join("explicit"));
        let err = resolve(mnist, &loc).unwrap_err().to_string();
        assert!(
            err.contains("lacks t10k-labels-idx1-ubyte (raw or .gz)")
                && !err.contains("train-images"),
            "{err}"
        );
    }

    #[test]
    fn offline_error_lists_missing_files_and_remedies() {
        let tmp = tempfile::tempdir().unwrap();
        let err = resolve(&KNOWN[1], &locator(tmp.path()))
            .unwrap_err()
            .to_string();
        for needle in [
            "train-images-idx3-ubyte",
            "--data-dir",
            "GENZOO_FASHION_MNIST_MIRROR",
            "GENZOO_OFFLINE",
        ] {
            assert!(err.contains(needle), "missing '{needle}' in: {err}");
        }
    }

    #[test]
    fn downloads_from_a_mirror_into_the_cache_with_checksums() {
        // A fake known dataset whose checksums match files served on loopback.
        let n = 3;
        let bodies: Vec<Vec<u8>> = [vec![n, 4, 4], vec![n], vec![n, 4, 4], vec![n]]
            .iter()
            .map(|d| encode_idx(d, &vec![7u8; d.iter().product()]))
            .collect();
        let md5: Vec<String> = bodies.iter().map(|b| crate::download::md5_hex(b)).collect();
        let md5: [&'static str; 4] =
            std::array::from_fn(|i| &*Box::leak(md5[i].clone().into_boxed_str()));
        let known: &'static KnownDataset = Box::leak(Box::new(KnownDataset {
            name: "tiny",
            aliases: &[],
            mirror_env: "GENZOO_TINY_MIRROR",
            mirrors: &[],
            md5,
            classes: &[],
        }));
        let served = FILES
            .iter()
            .zip(&bodies)
            .map(|(f, b)| (format!("/d/{f}.gz"), b.clone()))
            .collect();
        let base = crate::download::tests::serve(served, 8);
        let tmp = tempfile::tempdir().unwrap();
        let mut loc = locator(tmp.path());
        loc.allow_download = true;
        loc.mirror_overrides = vec![("tiny".into(), format!("{base}/d/"))];
        let files = resolve(known, &loc).unwrap();
        assert_eq!(files.origin, "download");
        assert!(files.paths[0].starts_with(tmp.path().join("cache/tiny")));
        // A second resolve finds the cache (the server has stopped serving by then).
        assert_eq!(resolve(known, &loc).unwrap().origin, "cache");
    }
}
