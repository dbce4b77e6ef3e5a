//! # genzoo-data
//!
//! Data for genzoo's families: MNIST-format (IDX) files, raw or gzipped, and
//! CIFAR-10, found locally or downloaded with checksums into a cache; folders
//! of image files; text corpora; in-memory image datasets; and
//! deterministic, seeded batching with random access by (epoch, batch
//! index), which is what makes exact resume possible.
//!
//! ```no_run
//! use genzoo_data::{DatasetSource, Locator, load_image_dataset};
//! let source: DatasetSource = "fashion-mnist".parse().unwrap();
//! let (train, test) = load_image_dataset(&source, &Locator::from_env(None)).unwrap();
//! assert_eq!(train.dims(), (1, 28, 28));
//! ```

#![warn(missing_docs)]

pub mod cifar;
pub mod dataset;
pub mod download;
pub mod folder;
pub mod idx;
pub mod mnist;
pub mod source;
pub mod synthetic;
pub mod text;

pub use dataset::{ImageData, ImageDataset, Scaling};
pub use source::{DatasetSource, Locator, load_image_dataset};
pub use text::{TextCorpus, TextData, Vocabulary};
