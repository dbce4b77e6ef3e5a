//! CIFAR-10 (Krizhevsky 2009): 50,000 training and 10,000 test images,
//! 32×32 in colour, in 10 classes, from the dataset's binary version.
//!
//! Each batch file holds records of one label byte followed by 3,072 pixel
//! bytes: the red, green and blue planes of 32×32, row by row, which is
//! already the `[channels, height, width]` order an [`ImageDataset`] keeps.
//!
//! The files are looked for like the MNIST-format datasets' (see
//! [`crate::source`]) under the name `cifar-10`, in each directory itself or
//! in its `cifar-10-batches-bin/` (where the archive unpacks). Missing
//! everywhere, the archive is downloaded into the cache, checked against its
//! published MD5, and its six batch files unpacked beside it; the archive is
//! then deleted.

use std::io::Read;
use std::path::{Path, PathBuf};

use genzoo_core::{Error, Result};

use crate::dataset::ImageDataset;
use crate::download::download_from_mirrors;
use crate::source::{Locator, Search};

/// The dataset's name in `--dataset` and in the cache.
pub const NAME: &str = "cifar-10";
/// Other accepted spellings.
pub const ALIASES: &[&str] = &["cifar10", "CIFAR-10", "CIFAR10"];
/// Environment variable that replaces the mirror (a base URL).
pub const MIRROR_ENV: &str = "GENZOO_CIFAR10_MIRROR";
/// Where the archive is published.
pub const MIRRORS: &[&str] = &["https://www.cs.toronto.edu/~kriz/"];
/// The archive's file name.
pub const ARCHIVE: &str = "cifar-10-binary.tar.gz";
/// The archive's published MD5.
pub const ARCHIVE_MD5: &str = "c32a1d4ab5d03f1284b67883e8d87530";
/// The subdirectory the archive unpacks into.
pub const SUBDIR: &str = "cifar-10-batches-bin";
/// The training batches, in order.
pub const TRAIN_FILES: [&str; 5] = [
    "data_batch_1.bin",
    "data_batch_2.bin",
    "data_batch_3.bin",
    "data_batch_4.bin",
    "data_batch_5.bin",
];
/// The test batch.
pub const TEST_FILE: &str = "test_batch.bin";
/// Class names, by label.
pub const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

const SIDE: usize = 32;
const PIXELS: usize = 3 * SIDE * SIDE;
const RECORD: usize = 1 + PIXELS;

fn all_files() -> impl Iterator<Item = &'static str> {
    TRAIN_FILES.into_iter().chain([TEST_FILE])
}

/// The directory holding all six batch files: `dir` or its [`SUBDIR`].
fn batch_dir(dir: &Path) -> Option<PathBuf> {
    [dir.to_path_buf(), dir.join(SUBDIR)]
        .into_iter()
        .find(|d| all_files().all(|f| d.join(f).is_file()))
}

/// Finds the directory of the batch files (or downloads them), returning it
/// with where it was found.
pub fn resolve(locator: &Locator) -> Result<(PathBuf, &'static str)> {
    if let Some(dir) = &locator.data_dir {
        return batch_dir(dir)
            .map(|d| (d, "--data-dir"))
            .ok_or_else(|| missing_error(dir, "--data-dir"));
    }
    let found = locator.search(NAME, |dir, origin| batch_dir(dir).map(|d| (d, origin)))?;
    let (cache, looked) = match found {
        Search::Found(found) => return Ok(found),
        Search::Missing { cache, looked } => (cache, looked),
    };
    let why = if locator.allow_download {
        match download_into(&cache, &locator.mirrors(NAME, MIRRORS), ARCHIVE_MD5) {
            Ok(()) => return Ok((cache.join(SUBDIR), "download")),
            Err(e) => format!("the download failed ({e})"),
        }
    } else {
        "downloads are disabled (GENZOO_OFFLINE)".to_string()
    };
    Err(Error::Data(format!(
        "{NAME}: not found; looked in {}; {why}. Provide it in one of these ways: pass --data-dir DIR \
         with the binary version's batch files ({}), or put them in $GENZOO_DATA_DIR/{NAME} or {}; \
         or set {MIRROR_ENV} to a mirror that serves {ARCHIVE}",
        looked.join(", "),
        all_files().collect::<Vec<_>>().join(", "),
        cache.display(),
    )))
}

fn missing_error(dir: &Path, origin: &str) -> Error {
    if !dir.is_dir() {
        return Error::Data(format!(
            "{} ({origin}) is not a directory: CIFAR-10's binary version is six batch files, \
             data_batch_1.bin … data_batch_5.bin and test_batch.bin",
            dir.display()
        ));
    }
    let missing: Vec<&str> = all_files()
        .filter(|f| !dir.join(f).is_file() && !dir.join(SUBDIR).join(f).is_file())
        .collect();
    Error::Data(format!(
        "{} ({origin}) lacks CIFAR-10's {} (the binary version's batch files, in the directory or its {SUBDIR}/)",
        dir.display(),
        missing.join(", ")
    ))
}

/// Downloads the archive into `cache`, checks it against `md5` and unpacks
/// the batches into `cache/`[`SUBDIR`].
fn download_into(cache: &Path, mirrors: &[String], md5: &str) -> Result<()> {
    let archive = cache.join(ARCHIVE);
    download_from_mirrors(mirrors, ARCHIVE, &archive, md5)?;
    let unpacked = unpack(&archive, &cache.join(SUBDIR));
    let _ = std::fs::remove_file(&archive);
    unpacked
}

/// Writes the archive's batch files (and nothing else: only the six names,
/// only from [`SUBDIR`]) into `dest`, each through a temporary file renamed
/// into place when complete.
pub fn unpack(archive: &Path, dest: &Path) -> Result<()> {
    let file = std::fs::File::open(archive).map_err(|e| Error::io(archive, e))?;
    let mut entries = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let bad =
        |e: std::io::Error| Error::Data(format!("{}: not a valid archive: {e}", archive.display()));
    std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    let mut written = Vec::new();
    for entry in entries.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let wanted = all_files().find(|f| *f == name);
        let in_subdir = path.parent() == Some(Path::new(SUBDIR));
        let (Some(name), true, true) = (wanted, in_subdir, entry.header().entry_type().is_file())
        else {
            continue;
        };
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).map_err(bad)?;
        let target = dest.join(name);
        let tmp = dest.join(format!(".{name}.part-{}", std::process::id()));
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, &target))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                Error::io(&target, e)
            })?;
        written.push(name);
    }
    let missing: Vec<&str> = all_files().filter(|f| !written.contains(f)).collect();
    if !missing.is_empty() {
        return Err(Error::Data(format!(
            "{}: the archive lacks {}",
            archive.display(),
            missing.join(", ")
        )));
    }
    Ok(())
}

/// Reads batch files into one dataset, in the order given.
pub fn read_batches(paths: &[PathBuf]) -> Result<ImageDataset> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for path in paths {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        parse_records(&bytes, &mut pixels, &mut labels)
            .map_err(|why| Error::Data(format!("{}: {why}", path.display())))?;
    }
    let names = CLASSES.iter().map(|s| s.to_string()).collect();
    ImageDataset::new(pixels, labels, (3, SIDE, SIDE), names)
}

/// Appends the records of one batch file's bytes; says what is wrong with
/// them otherwise (a length that is not a whole number of records, a label
/// outside 0..10).
pub fn parse_records(
    bytes: &[u8],
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(format!(
            "{} bytes are not a whole number of {RECORD}-byte CIFAR-10 records (truncated or not a CIFAR-10 batch)",
            bytes.len()
        ));
    }
    for (i, record) in bytes.chunks_exact(RECORD).enumerate() {
        let label = record[0];
        if label as usize >= CLASSES.len() {
            return Err(format!(
                "record {i} has label {label}; CIFAR-10's are 0 to 9"
            ));
        }
        labels.push(label);
        pixels.extend_from_slice(&record[1..]);
    }
    Ok(())
}

/// Finds (or downloads) CIFAR-10 and loads its training and test splits.
pub fn load(locator: &Locator) -> Result<(ImageDataset, ImageDataset)> {
    let (dir, _) = resolve(locator)?;
    let train: Vec<PathBuf> = TRAIN_FILES.iter().map(|f| dir.join(f)).collect();
    Ok((read_batches(&train)?, read_batches(&[dir.join(TEST_FILE)])?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` records whose label is `i % 10` and whose pixels are `i + channel`.
    fn records(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| {
                let mut r = vec![(i % 10) as u8];
                for c in 0..3 {
                    r.extend(std::iter::repeat_n((i + c) as u8, SIDE * SIDE));
                }
                r
            })
            .collect()
    }

    fn write_batches(dir: &Path) {
        std::fs::create_dir_all(dir).unwrap();
        for (k, f) in all_files().enumerate() {
            std::fs::write(dir.join(f), records(k + 1)).unwrap();
        }
    }

    fn locator(root: &Path) -> Locator {
        Locator {
            data_dir: None,
            data_root: None,
            cache_root: Some(root.join("cache")),
            system_roots: vec![root.join("system")],
            mirror_overrides: vec![],
            allow_download: false,
        }
    }

    #[test]
    fn reads_records_as_channel_planes_with_labels() {
        let tmp = tempfile::tempdir().unwrap();
        write_batches(tmp.path());
        let mut loc = locator(tmp.path());
        loc.data_dir = Some(tmp.path().to_path_buf());
        let (train, test) = load(&loc).unwrap();
        // Batches of 1..=5 records, then a test batch of 6.
        assert_eq!((train.len(), test.len()), (15, 6));
        assert_eq!(train.dims(), (3, 32, 32));
        assert_eq!(train.num_classes(), 10);
        assert_eq!(train.class_names[3], "cat");
        // Record 1 of the second batch (the 3rd image): label 1, planes 1, 2, 3.
        assert_eq!(train.label(2), 1);
        let image = train.image(2);
        assert_eq!(
            (image[0], image[1024], image[2048], image[3071]),
            (1, 2, 3, 3)
        );
        assert_eq!(test.label(5), 5);
    }

    #[test]
    fn bad_batches_are_errors_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("data_batch_1.bin");
        let mut bytes = records(2);
        bytes.pop();
        std::fs::write(&path, &bytes).unwrap();
        let err = read_batches(std::slice::from_ref(&path))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("data_batch_1.bin") && err.contains("truncated"),
            "{err}"
        );
        let mut bytes = records(2);
        bytes[RECORD] = 10;
        std::fs::write(&path, &bytes).unwrap();
        let err = read_batches(&[path]).unwrap_err().to_string();
        assert!(err.contains("record 1 has label 10"), "{err}");
    }

    #[test]
    fn found_in_the_search_dirs_and_their_subdir() {
        let tmp = tempfile::tempdir().unwrap();
        let loc = locator(tmp.path());
        let err = resolve(&loc).unwrap_err().to_string();
        assert!(
            err.contains("--data-dir") && err.contains(MIRROR_ENV),
            "{err}"
        );
        write_batches(&tmp.path().join("system/cifar-10").join(SUBDIR));
        let (dir, origin) = resolve(&loc).unwrap();
        assert_eq!(
            (dir, origin),
            (tmp.path().join("system/cifar-10").join(SUBDIR), "system")
        );
        write_batches(&tmp.path().join("cache/cifar-10"));
        assert_eq!(resolve(&loc).unwrap().1, "cache");

        // --data-dir alone is searched; what it lacks is named.
        let mut loc = loc;
        loc.data_dir = Some(tmp.path().join("nowhere"));
        let err = resolve(&loc).unwrap_err().to_string();
        assert!(
            err.contains("nowhere (--data-dir) is not a directory"),
            "{err}"
        );
        std::fs::remove_file(tmp.path().join("cache/cifar-10/test_batch.bin")).unwrap();
        loc.data_dir = Some(tmp.path().join("cache/cifar-10"));
        let err = resolve(&loc).unwrap_err().to_string();
        assert!(
            err.contains("lacks CIFAR-10's test_batch.bin (") && !err.contains("data_batch_1"),
            "{err}"
        );
    }

    #[test]
    fn downloads_the_archive_checks_it_and_unpacks_only_the_batches() {
        // An archive as published (the batches under SUBDIR/), plus a file
        // that must not be written.
        let mut tar = tar::Builder::new(Vec::new());
        let mut add = |path: &str, body: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, path, body).unwrap();
        };
        for (k, f) in all_files().enumerate() {
            add(&format!("{SUBDIR}/{f}"), &records(k + 1));
        }
        add(&format!("{SUBDIR}/readme.html"), b"<html>");
        let raw = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &raw).unwrap();
        let archive = gz.finish().unwrap();

        let base =
            crate::download::tests::serve(vec![(format!("/m/{ARCHIVE}"), archive.clone())], 4);
        let tmp = tempfile::tempdir().unwrap();
        let mut loc = locator(tmp.path());
        loc.allow_download = true;
        loc.mirror_overrides = vec![(NAME.into(), format!("{base}/m/"))];
        // The published checksum does not match this archive: refused, nothing kept.
        let err = resolve(&loc).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        let cache = tmp.path().join("cache/cifar-10");
        assert!(!cache.join(SUBDIR).exists() && !cache.join(ARCHIVE).exists());

        // With its own checksum it is unpacked: the six batches, nothing else,
        // and the archive is gone.
        let mirrors = loc.mirrors(NAME, MIRRORS);
        download_into(&cache, &mirrors, &crate::download::md5_hex(&archive)).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .chain(std::fs::read_dir(cache.join(SUBDIR)).unwrap())
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut expected: Vec<String> = all_files().chain([SUBDIR]).map(String::from).collect();
        expected.sort();
        assert_eq!(names, expected);
        assert_eq!(resolve(&loc).unwrap().1, "cache");
        assert_eq!(load(&loc).unwrap().0.len(), 15);

        // An archive without the batches is an error that names what it lacks.
        let empty = tmp.path().join("empty.tar.gz");
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.finish().unwrap();
        std::fs::write(&empty, tar.into_inner().unwrap().finish().unwrap()).unwrap();
        let err = unpack(&empty, &tmp.path().join("out"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lacks data_batch_1.bin"), "{err}");
    }
}
