//! Image folders (`folder:<DIR>`): a directory of PNG, JPEG or BMP files as
//! a dataset, as torchvision's `ImageFolder` reads one.
//!
//! - **Splits.** `DIR/train/` and `DIR/test/` when both exist; otherwise
//!   every image under `DIR`, of which about 10 % form the test split. Which
//!   ones is decided per file from a hash of its path relative to `DIR`, so
//!   the split is the same on every machine and adding images never moves
//!   an existing one to the other side.
//! - **Classes.** In a split, each subdirectory holding images is a class;
//!   labels follow the sorted class names, the training split's. Images
//!   lying in the split directory itself form one unnamed class, label 0.
//!   One directory cannot mix the two.
//! - **Pixels.** Grey (1 channel) when every image is grey, RGB (3) otherwise;
//!   alpha is dropped. All images must share one size, unless a size is
//!   given: then each is resized (antialiased bilinear) so that its shorter
//!   side has that size, and centre-cropped to a square.
//!
//! Files with other extensions are skipped; an image that cannot be decoded
//! is an error naming it.

use std::path::{Path, PathBuf};

use genzoo_core::{Error, Result};
use image::imageops::{self, FilterType};
use image::{ColorType, RgbImage};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::dataset::ImageDataset;

/// The file extensions read as images (compared case-insensitively).
pub const EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "bmp"];

/// The share of images held out for testing when `DIR` has no `test/`.
pub const TEST_FRACTION: f64 = 0.1;

/// An image file and its class name (`None`: it lies in the split's directory itself).
type Listed = (PathBuf, Option<String>);

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths = entries
        .map(|entry| entry.map(|e| e.path()).map_err(|e| Error::io(dir, e)))
        .collect::<Result<Vec<_>>>()?;
    paths.sort();
    Ok(paths)
}

/// The images of one split directory with their classes, in sorted order.
fn list(dir: &Path) -> Result<Vec<Listed>> {
    let entries = sorted_entries(dir)?;
    let loose: Vec<PathBuf> = entries
        .iter()
        .filter(|p| p.is_file() && is_image(p))
        .cloned()
        .collect();
    let mut in_classes = Vec::new();
    for sub in entries.iter().filter(|p| p.is_dir()) {
        let class = sub.file_name().and_then(|n| n.to_str()).map(str::to_string);
        for file in sorted_entries(sub)?
            .into_iter()
            .filter(|p| p.is_file() && is_image(p))
        {
            in_classes.push((file, class.clone()));
        }
    }
    match (loose.first(), in_classes.first()) {
        (Some(file), Some((_, class))) => Err(Error::Data(format!(
            "{} has images both in class folders ({}/) and directly in it ({}): move them into one or the other",
            dir.display(),
            class.as_deref().unwrap_or("?"),
            file.display()
        ))),
        (None, None) => Err(Error::Data(format!(
            "{}: no images ({}) in it or in its subdirectories",
            dir.display(),
            EXTENSIONS.join(", ")
        ))),
        (Some(_), None) => Ok(loose.into_iter().map(|p| (p, None)).collect()),
        (None, Some(_)) => Ok(in_classes),
    }
}

/// Whether the image at `relative` (its path under `DIR`) is held out.
fn held_out(relative: &Path) -> bool {
    let digest = Sha256::digest(relative.to_string_lossy().as_bytes());
    let h = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
    (h as f64) < TEST_FRACTION * u64::MAX as f64
}

/// The training and test images of `dir` (see the module documentation),
/// and the class names: the training split's when the splits are given,
/// else all of them (a class may then lie wholly on one side).
fn split(dir: &Path) -> Result<(Vec<Listed>, Vec<Listed>, Vec<String>)> {
    let class_names = |files: &[Listed]| {
        let mut names: Vec<String> = files.iter().filter_map(|(_, c)| c.clone()).collect();
        names.sort();
        names.dedup();
        names
    };
    let (train_dir, test_dir) = (dir.join("train"), dir.join("test"));
    if train_dir.is_dir() && test_dir.is_dir() {
        let train = list(&train_dir)?;
        let classes = class_names(&train);
        return Ok((train, list(&test_dir)?, classes));
    }
    let all = list(dir)?;
    let classes = class_names(&all);
    if all.len() < 2 {
        return Err(Error::Data(format!(
            "{}: one image cannot be split into training and test images (add images, or train/ and test/ folders)",
            dir.display()
        )));
    }
    let relative = |p: &Path| p.strip_prefix(dir).unwrap_or(p).to_path_buf();
    let (mut test, mut train): (Vec<Listed>, Vec<Listed>) =
        all.into_iter().partition(|(p, _)| held_out(&relative(p)));
    // A small folder may hash none into the test split, or all of them.
    if test.is_empty() {
        test.push(train.pop().expect("two or more images"));
    } else if train.is_empty() {
        train.push(test.pop().expect("two or more images"));
    }
    Ok((train, test, classes))
}

/// A label for every image of `files`: its class's index in `classes`
/// (0 for all when there are no classes).
fn labels(files: &[Listed], classes: &[String], split_dir: &Path) -> Result<Vec<u8>> {
    files
        .iter()
        .map(|(path, class)| match (class, classes.is_empty()) {
            (None, true) => Ok(0),
            (Some(name), false) => classes
                .iter()
                .position(|c| c == name)
                .map(|i| i as u8)
                .ok_or_else(|| {
                    Error::Data(format!(
                        "{}: class '{name}' is not among the training classes ({})",
                        path.display(),
                        classes.join(", ")
                    ))
                }),
            _ => Err(Error::Data(format!(
                "{}: the training and test images of {} must both be in class folders, or both not",
                path.display(),
                split_dir.display()
            ))),
        })
        .collect()
}

/// Decodes an image as RGB at its own size, or resized and centre-cropped
/// to `size`×`size`; also says whether it was grey.
fn decode(path: &Path, size: Option<usize>) -> Result<(RgbImage, bool)> {
    let image = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .decode()
        .map_err(|e| Error::Data(format!("{}: cannot decode the image: {e}", path.display())))?;
    let grey = matches!(
        image.color(),
        ColorType::L8 | ColorType::La8 | ColorType::L16 | ColorType::La16
    );
    let rgb = image.to_rgb8();
    let Some(side) = size else {
        return Ok((rgb, grey));
    };
    let side = side as u32;
    let (w, h) = rgb.dimensions();
    let short = w.min(h).max(1) as f64;
    let scale = |x: u32| ((x as f64 * side as f64 / short).round() as u32).max(side);
    let resized = imageops::resize(&rgb, scale(w), scale(h), FilterType::Triangle);
    let (rw, rh) = resized.dimensions();
    let cropped =
        imageops::crop_imm(&resized, (rw - side) / 2, (rh - side) / 2, side, side).to_image();
    Ok((cropped, grey))
}

/// Decodes `files` (in parallel) and checks that every image has the size
/// of `reference` (the first image's; set here when `None`); also says
/// whether all of them were grey.
fn decode_all(
    files: &[Listed],
    size: Option<usize>,
    reference: &mut Option<(u32, u32, PathBuf)>,
) -> Result<(Vec<RgbImage>, bool)> {
    // Decoding dominates loading: every core takes a share of the files.
    let decoded: Vec<(RgbImage, bool)> = files
        .par_iter()
        .map(|(path, _)| decode(path, size))
        .collect::<Result<_>>()?;
    let mut images = Vec::with_capacity(files.len());
    let mut all_grey = true;
    for ((path, _), (image, grey)) in files.iter().zip(decoded) {
        let dims = image.dimensions();
        match reference {
            None => *reference = Some((dims.0, dims.1, path.clone())),
            Some((w, h, first)) if (*w, *h) != dims => {
                return Err(Error::Data(format!(
                    "{} is {}x{} but {} is {w}x{h}: the images of a folder must share one size, \
                     or be resized with --image-size N (image_size in a config's [data])",
                    path.display(),
                    dims.0,
                    dims.1,
                    first.display()
                )));
            }
            Some(_) => {}
        }
        all_grey &= grey;
        images.push(image);
    }
    Ok((images, all_grey))
}

fn to_dataset(
    images: Vec<RgbImage>,
    labels: Vec<u8>,
    grey: bool,
    classes: &[String],
) -> Result<ImageDataset> {
    let (w, h) = images.first().map_or((0, 0), |i| i.dimensions());
    let channels = if grey { 1 } else { 3 };
    let plane = (w * h) as usize;
    let mut pixels = Vec::with_capacity(images.len() * channels * plane);
    for image in &images {
        let raw = image.as_raw(); // interleaved RGB, row by row
        for c in 0..channels {
            pixels.extend(raw.iter().skip(c).step_by(3));
        }
    }
    ImageDataset::new(
        pixels,
        labels,
        (channels, h as usize, w as usize),
        classes.to_vec(),
    )
}

/// Loads the images of `dir` as training and test datasets, resized to
/// `size`×`size` when a size is given.
///
/// ```no_run
/// let (train, test) = genzoo_data::folder::load("photos".as_ref(), Some(32)).unwrap();
/// assert_eq!(train.dims().1, 32);
/// ```
pub fn load(dir: &Path, size: Option<usize>) -> Result<(ImageDataset, ImageDataset)> {
    if !dir.is_dir() {
        return Err(Error::Data(format!("{} is not a directory", dir.display())));
    }
    let (train_files, test_files, classes) = split(dir)?;
    if classes.len() > 256 {
        return Err(Error::Data(format!(
            "{}: {} class folders; genzoo's labels hold at most 256 classes",
            dir.display(),
            classes.len()
        )));
    }
    let train_labels = labels(&train_files, &classes, dir)?;
    let test_labels = labels(&test_files, &classes, dir)?;
    let mut reference = None;
    let (train, train_grey) = decode_all(&train_files, size, &mut reference)?;
    let (test, test_grey) = decode_all(&test_files, size, &mut reference)?;
    let grey = train_grey && test_grey;
    Ok((
        to_dataset(train, train_labels, grey, &classes)?,
        to_dataset(test, test_labels, grey, &classes)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb};

    fn rgb(path: &Path, w: u32, h: u32, colour: [u8; 3]) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        RgbImage::from_pixel(w, h, Rgb(colour)).save(path).unwrap();
    }

    fn grey(path: &Path, w: u32, h: u32, value: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        GrayImage::from_pixel(w, h, Luma([value]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn class_folders_in_train_and_test_splits() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        rgb(&d.join("train/cats/a.png"), 4, 2, [10, 20, 30]);
        rgb(&d.join("train/cats/b.png"), 4, 2, [11, 21, 31]);
        rgb(&d.join("train/dogs/c.png"), 4, 2, [12, 22, 32]);
        rgb(&d.join("test/dogs/d.png"), 4, 2, [13, 23, 33]);
        std::fs::write(d.join("train/dogs/notes.txt"), "skipped").unwrap();
        let (train, test) = load(d, None).unwrap();
        assert_eq!((train.len(), test.len()), (3, 1));
        assert_eq!(train.dims(), (3, 2, 4));
        assert_eq!(train.class_names, ["cats", "dogs"]);
        assert_eq!((train.label(0), train.label(2), test.label(0)), (0, 1, 1));
        // Channel planes: 8 red values, then 8 green, then 8 blue.
        let image = train.image(1);
        assert_eq!((image[0], image[7], image[8], image[16]), (11, 11, 21, 31));

        // A test class the training split lacks is an error naming the file.
        rgb(&d.join("test/birds/e.png"), 4, 2, [0, 0, 0]);
        let err = load(d, None).unwrap_err().to_string();
        assert!(err.contains("e.png") && err.contains("'birds'"), "{err}");
    }

    #[test]
    fn a_flat_folder_is_split_by_file_and_grey_stays_one_channel() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        for i in 0..60 {
            grey(&d.join(format!("img{i:03}.png")), 3, 3, i as u8);
        }
        let (train, test) = load(d, None).unwrap();
        assert_eq!(train.len() + test.len(), 60);
        assert!((2..=14).contains(&test.len()), "{} held out", test.len());
        assert_eq!(
            (train.dims(), train.num_classes(), train.class_names.len()),
            ((1, 3, 3), 1, 0)
        );
        // Adding images leaves the old ones where they were.
        let held: Vec<u8> = (0..test.len()).map(|i| test.image(i)[0]).collect();
        for i in 60..90 {
            grey(&d.join(format!("img{i:03}.png")), 3, 3, i as u8);
        }
        let (_, test) = load(d, None).unwrap();
        let now: Vec<u8> = (0..test.len()).map(|i| test.image(i)[0]).collect();
        assert!(held.iter().all(|v| now.contains(v)), "{held:?} vs {now:?}");
        // One colour image makes the whole dataset RGB.
        rgb(&d.join("img999.png"), 3, 3, [1, 2, 3]);
        assert_eq!(load(d, None).unwrap().0.dims().0, 3);
    }

    #[test]
    fn sizes_must_match_unless_resized_to_a_centred_square() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        rgb(&d.join("a/wide.png"), 12, 6, [200, 0, 0]);
        rgb(&d.join("b/small.png"), 5, 5, [0, 200, 0]);
        let err = load(d, None).unwrap_err().to_string();
        assert!(
            err.contains("small.png is 5x5") && err.contains("--image-size"),
            "{err}"
        );
        let (train, test) = load(d, Some(4)).unwrap();
        assert_eq!(train.dims(), (3, 4, 4));
        let all: Vec<&[u8]> = (0..train.len())
            .map(|i| train.image(i))
            .chain((0..test.len()).map(|i| test.image(i)))
            .collect();
        // Uniform images stay uniform through the resize and crop.
        assert!(all.iter().any(|im| im[0] == 200 && im[16] == 0));
        assert!(all.iter().any(|im| im[0] == 0 && im[16] == 200));

        // A centre crop keeps the middle of a wide image.
        let mut striped = RgbImage::from_pixel(12, 4, Rgb([0, 0, 0]));
        for y in 0..4 {
            for x in 4..8 {
                striped.put_pixel(x, y, Rgb([255, 255, 255]));
            }
        }
        let path = d.join("striped.png");
        striped.save(&path).unwrap();
        let (cropped, _) = decode(&path, Some(4)).unwrap();
        assert!(cropped.pixels().all(|p| p.0 == [255, 255, 255]));
    }

    #[test]
    fn unreadable_and_mixed_folders_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        assert!(load(d, None).unwrap_err().to_string().contains("no images"));
        rgb(&d.join("cls/a.png"), 2, 2, [0; 3]);
        rgb(&d.join("loose.png"), 2, 2, [0; 3]);
        let err = load(d, None).unwrap_err().to_string();
        assert!(
            err.contains("both in class folders") && err.contains("loose.png"),
            "{err}"
        );
        std::fs::remove_file(d.join("loose.png")).unwrap();
        std::fs::write(d.join("cls/broken.png"), b"not a png").unwrap();
        let err = load(d, None).unwrap_err().to_string();
        assert!(
            err.contains("broken.png") && err.contains("cannot decode"),
            "{err}"
        );
        assert!(
            load(&d.join("absent"), None)
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
    }
}
