//! In-memory image datasets and deterministic batching.

use std::path::Path;
use std::sync::Mutex;

use burn::prelude::*;
use genzoo_core::seed::{derive, host_rng};
use genzoo_core::{Error, ImageBatch, Result, TrainData};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::download::hex;
use crate::idx::IdxArray;

/// How 8-bit pixels become floats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scaling {
    /// `[0, 1]`: `p / 255`.
    #[default]
    Unit,
    /// `[-1, 1]`: `p / 127.5 - 1` (GANs, diffusion).
    Signed,
    /// `{0, 1}`: 1 where `p / 255 > 0.5` (fixed, not stochastic, binarisation).
    Binarized,
}

impl Scaling {
    /// Scales one pixel.
    pub fn apply(self, p: u8) -> f32 {
        match self {
            Scaling::Unit => p as f32 / 255.0,
            Scaling::Signed => p as f32 / 127.5 - 1.0,
            Scaling::Binarized => {
                if p > 127 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }

    /// Maps scaled values back to `[0, 1]` for display.
    pub fn to_unit<B: Backend>(self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        match self {
            Scaling::Signed => (x + 1.0) / 2.0,
            Scaling::Unit | Scaling::Binarized => x,
        }
    }
}

/// Images (8-bit, `[n, channels, height, width]`) with class labels, in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageDataset {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    channels: usize,
    height: usize,
    width: usize,
    /// Class names, when known (empty for an anonymous IDX directory).
    pub class_names: Vec<String>,
}

impl ImageDataset {
    /// A dataset from raw parts. `pixels.len()` must be `labels.len() * c * h * w`.
    pub fn new(
        pixels: Vec<u8>,
        labels: Vec<u8>,
        dims: (usize, usize, usize),
        class_names: Vec<String>,
    ) -> Result<Self> {
        let (channels, height, width) = dims;
        let per = channels * height * width;
        if per == 0 || pixels.len() != labels.len() * per {
            return Err(Error::Data(format!(
                "{} pixels do not make {} images of {channels}x{height}x{width}",
                pixels.len(),
                labels.len()
            )));
        }
        Ok(Self {
            pixels,
            labels,
            channels,
            height,
            width,
            class_names,
        })
    }

    /// A dataset from an IDX image array (`[n, h, w]` or `[n, c, h, w]`) and
    /// an IDX label array (`[n]`); the paths are for error messages.
    pub fn from_idx(
        images: &IdxArray,
        labels: &IdxArray,
        images_path: &Path,
        labels_path: &Path,
        class_names: Vec<String>,
    ) -> Result<Self> {
        let dims = match images.dims.as_slice() {
            &[_, h, w] => (1, h, w),
            &[_, c, h, w] => (c, h, w),
            other => {
                return Err(Error::Data(format!(
                    "{}: image files have 3 or 4 dimensions ([n, h, w] or [n, c, h, w]), this one has {other:?}",
                    images_path.display()
                )));
            }
        };
        if labels.dims.len() != 1 {
            return Err(Error::Data(format!(
                "{}: a label file has one dimension, this one has {:?}",
                labels_path.display(),
                labels.dims
            )));
        }
        if labels.dims[0] != images.dims[0] {
            return Err(Error::Data(format!(
                "{} holds {} images but {} holds {} labels",
                images_path.display(),
                images.dims[0],
                labels_path.display(),
                labels.dims[0]
            )));
        }
        Self::new(images.data.clone(), labels.data.clone(), dims, class_names)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// `(channels, height, width)`.
    pub fn dims(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }
    /// Number of classes: the class names, or the largest label + 1.
    pub fn num_classes(&self) -> usize {
        let from_labels = self
            .labels
            .iter()
            .copied()
            .max()
            .map_or(0, |m| m as usize + 1);
        self.class_names.len().max(from_labels)
    }
    /// The label of image `i`.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }
    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.channels * self.height * self.width;
        &self.pixels[i * per..(i + 1) * per]
    }

    /// SHA-256 (hex) of the images' shape, pixels and labels, in order:
    /// what tells two datasets apart (class names aside). The evaluator's
    /// cache is keyed by it, and a checkpoint records its training data's
    /// so that a resume on other data is refused.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        let (c, h, w) = self.dims();
        hash.update(format!("{c}x{h}x{w}:{}", self.len()).as_bytes());
        for i in 0..self.len() {
            hash.update(self.image(i));
            hash.update([self.label(i)]);
        }
        hex(&hash.finalize())
    }

    /// The first `n` images (all of them if there are fewer).
    pub fn take(&self, n: usize) -> Self {
        let n = n.min(self.len());
        let per = self.channels * self.height * self.width;
        Self {
            pixels: self.pixels[..n * per].to_vec(),
            labels: self.labels[..n].to_vec(),
            ..self.clone()
        }
    }

    /// The images at `indices` as a batch on `device`.
    pub fn batch<B: Backend>(
        &self,
        indices: &[usize],
        scaling: Scaling,
        device: &B::Device,
    ) -> ImageBatch<B> {
        self.batch_mirrored(indices, &[], scaling, device)
    }

    /// The images at `indices` as a batch on `device`, the `k`-th flipped
    /// left to right where `mirror[k]` is set (missing entries: not flipped).
    ///
    /// ```
    /// use genzoo_core::{CpuBackend, CpuDevice};
    /// use genzoo_data::{ImageDataset, Scaling};
    /// let one_row = ImageDataset::new(vec![0, 1, 2], vec![0], (1, 1, 3), vec![]).unwrap();
    /// let batch = one_row.batch_mirrored::<CpuBackend>(&[0], &[true], Scaling::Unit, &CpuDevice::default());
    /// let pixels = batch.images.into_data().to_vec::<f32>().unwrap();
    /// assert_eq!(pixels, [2.0 / 255.0, 1.0 / 255.0, 0.0]);
    /// ```
    pub fn batch_mirrored<B: Backend>(
        &self,
        indices: &[usize],
        mirror: &[bool],
        scaling: Scaling,
        device: &B::Device,
    ) -> ImageBatch<B> {
        let per = self.channels * self.height * self.width;
        let mut xs = Vec::with_capacity(indices.len() * per);
        let mut ys = Vec::with_capacity(indices.len());
        for (k, &i) in indices.iter().enumerate() {
            let image = self.image(i);
            if mirror.get(k) == Some(&true) {
                for row in image.chunks_exact(self.width) {
                    xs.extend(row.iter().rev().map(|&p| scaling.apply(p)));
                }
            } else {
                xs.extend(image.iter().map(|&p| scaling.apply(p)));
            }
            ys.push(self.labels[i] as i64);
        }
        let n = indices.len();
        ImageBatch {
            images: Tensor::from_data(
                TensorData::new(xs, [n, self.channels, self.height, self.width]),
                device,
            ),
            labels: Tensor::from_data(TensorData::new(ys, [n]), device),
        }
    }
}

/// Train and test images with a batch size, a scaling and a seed: the data
/// side of an image family's training run.
///
/// Epoch `e` visits the training images in a permutation drawn from
/// (seed, e) alone, so batch `(e, i)` is the same in any run with the same
/// seed, interrupted or not. The last, smaller batch of an epoch is kept
/// unless `drop_last` is set. With `hflip`, each training image is flipped
/// left to right with probability 1/2, drawn from (seed, epoch, place in the
/// epoch), so a resumed run sees the same flips.
#[derive(Debug)]
pub struct ImageData {
    /// Training images.
    pub train: ImageDataset,
    /// Held-out images (the files' test split).
    pub test: ImageDataset,
    /// Examples per batch.
    pub batch_size: usize,
    /// Pixel scaling.
    pub scaling: Scaling,
    /// Seed of the data order.
    pub seed: u64,
    /// Drop the last batch of an epoch when it is smaller than `batch_size`.
    pub drop_last: bool,
    /// Random horizontal flips of the training images (p = 1/2), the usual
    /// augmentation for photographs (CIFAR-10: Ho et al. 2020 train their
    /// DDPM so); wrong for digits and text, whose mirror images are not
    /// examples. Held-out batches are never flipped.
    pub hflip: bool,
    permutation: Mutex<Option<(u64, Vec<u32>)>>,
}

impl ImageData {
    /// Training data over `train`, evaluation over `test`.
    pub fn new(
        train: ImageDataset,
        test: ImageDataset,
        batch_size: usize,
        scaling: Scaling,
        seed: u64,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        if train.is_empty() {
            return Err(Error::Data("the training set is empty".into()));
        }
        Ok(Self {
            train,
            test,
            batch_size,
            scaling,
            seed,
            drop_last: false,
            hflip: false,
            permutation: Mutex::new(None),
        })
    }

    /// The order in which epoch `epoch` visits the training images.
    pub fn epoch_order(&self, epoch: u64) -> Vec<u32> {
        let mut cached = self.permutation.lock().expect("permutation lock");
        if let Some((e, p)) = cached.as_ref()
            && *e == epoch
        {
            return p.clone();
        }
        let mut order: Vec<u32> = (0..self.train.len() as u32).collect();
        let mut rng = host_rng(self.seed, "epoch", epoch);
        // Fisher–Yates, written out so the order depends on nothing but the RNG stream.
        for i in (1..order.len()).rev() {
            let j = rng.random_range(0..=i);
            order.swap(i, j);
        }
        *cached = Some((epoch, order.clone()));
        order
    }
}

impl<B: Backend> TrainData<B> for ImageData {
    type Batch = ImageBatch<B>;

    fn batches_per_epoch(&self) -> usize {
        let n = self.train.len();
        if self.drop_last && n >= self.batch_size {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    fn train_batch(&self, epoch: u64, index: usize, device: &B::Device) -> ImageBatch<B> {
        let order = self.epoch_order(epoch);
        let start = index * self.batch_size;
        let end = (start + self.batch_size).min(order.len());
        let indices: Vec<usize> = order[start..end].iter().map(|&i| i as usize).collect();
        let mirror: Vec<bool> = if self.hflip {
            // One coin per place in the epoch, hashed from (seed, epoch,
            // place): the same flips however the epoch is reached.
            let epoch_seed = derive(self.seed, "hflip", epoch);
            (start..end)
                .map(|place| derive(epoch_seed, "hflip", place as u64) >> 63 == 1)
                .collect()
        } else {
            Vec::new()
        };
        self.train
            .batch_mirrored(&indices, &mirror, self.scaling, device)
    }

    fn fingerprint(&self) -> Option<String> {
        Some(self.train.fingerprint())
    }

    fn held_out_fingerprint(&self) -> Option<String> {
        Some(self.test.fingerprint())
    }

    fn eval_batches(&self) -> usize {
        self.test.len().div_ceil(self.batch_size)
    }

    fn eval_batch(&self, index: usize, device: &B::Device) -> (ImageBatch<B>, usize) {
        let start = index * self.batch_size;
        let end = (start + self.batch_size).min(self.test.len());
        let indices: Vec<usize> = (start..end).collect();
        (self.test.batch(&indices, self.scaling, device), end - start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genzoo_core::{CpuBackend, CpuDevice};

    fn tiny(n: usize) -> ImageDataset {
        let pixels: Vec<u8> = (0..n * 4).map(|i| (i % 256) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        ImageDataset::new(pixels, labels, (1, 2, 2), vec![]).unwrap()
    }

    #[test]
    fn shuffling_is_deterministic_per_seed_and_epoch() {
        let a = ImageData::new(tiny(100), tiny(10), 8, Scaling::Unit, 42).unwrap();
        let b = ImageData::new(tiny(100), tiny(10), 8, Scaling::Unit, 42).unwrap();
        let c = ImageData::new(tiny(100), tiny(10), 8, Scaling::Unit, 43).unwrap();
        assert_eq!(a.epoch_order(0), b.epoch_order(0));
        assert_eq!(a.epoch_order(3), b.epoch_order(3));
        assert_ne!(a.epoch_order(0), a.epoch_order(1));
        assert_ne!(a.epoch_order(0), c.epoch_order(0));
        // A permutation: every image exactly once.
        let mut sorted = a.epoch_order(5);
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<u32>>());
        // Pinned values: the order must not change across machines or releases
        // (resuming on another machine relies on it).
        assert_eq!(&a.epoch_order(0)[..6], &PINNED_ORDER);
    }

    const PINNED_ORDER: [u32; 6] = [97, 53, 84, 15, 57, 17];

    #[test]
    fn batches_cover_the_epoch_and_keep_the_last_partial_batch() {
        let data = ImageData::new(tiny(10), tiny(3), 4, Scaling::Unit, 1).unwrap();
        let dev = CpuDevice::default();
        assert_eq!(
            <ImageData as TrainData<CpuBackend>>::batches_per_epoch(&data),
            3
        );
        let sizes: Vec<usize> = (0..3)
            .map(|i| TrainData::<CpuBackend>::train_batch(&data, 0, i, &dev).len())
            .collect();
        assert_eq!(sizes, vec![4, 4, 2]);
        let (b, n) = TrainData::<CpuBackend>::eval_batch(&data, 0, &dev);
        assert_eq!((b.len(), n), (3, 3));
        assert_eq!(
            b.labels
                .into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .unwrap(),
            vec![0, 1, 2]
        );
    }

    #[test]
    fn horizontal_flips_mirror_about_half_the_training_images_reproducibly() {
        // 3 channels of 2×3, every pixel distinct.
        let n = 200;
        let pixels: Vec<u8> = (0..n * 18).map(|i| (i % 251) as u8).collect();
        let set = || ImageDataset::new(pixels.clone(), vec![0; n], (3, 2, 3), vec![]).unwrap();
        let mut data = ImageData::new(set(), set(), 50, Scaling::Unit, 7).unwrap();
        let dev = CpuDevice::default();
        let pixels_of = |b: ImageBatch<CpuBackend>| b.images.into_data().to_vec::<f32>().unwrap();
        let plain = pixels_of(TrainData::<CpuBackend>::train_batch(&data, 1, 2, &dev));
        data.hflip = true;
        let flipped = pixels_of(TrainData::<CpuBackend>::train_batch(&data, 1, 2, &dev));
        let mut mirrored = 0;
        for (a, b) in plain.chunks(18).zip(flipped.chunks(18)) {
            let mirror: Vec<f32> = a
                .chunks(3)
                .flat_map(|row| row.iter().rev().copied())
                .collect();
            if b == a {
                continue;
            }
            assert_eq!(b, mirror, "an image is either kept or mirrored row by row");
            mirrored += 1;
        }
        assert!((15..=35).contains(&mirrored), "{mirrored} of 50 mirrored");
        // The same batch again, after other batches and epochs: the same flips.
        for (epoch, index) in [(0, 0), (1, 3), (2, 2)] {
            TrainData::<CpuBackend>::train_batch(&data, epoch, index, &dev);
        }
        assert_eq!(
            pixels_of(TrainData::<CpuBackend>::train_batch(&data, 1, 2, &dev)),
            flipped
        );
        // Every epoch flips some images; held-out batches are never flipped.
        data.hflip = false;
        let plain_next = pixels_of(TrainData::<CpuBackend>::train_batch(&data, 3, 2, &dev));
        data.hflip = true;
        assert_ne!(
            pixels_of(TrainData::<CpuBackend>::train_batch(&data, 3, 2, &dev)),
            plain_next
        );
        let (held_out, _) = TrainData::<CpuBackend>::eval_batch(&data, 1, &dev);
        let expected: Vec<f32> = pixels[50 * 18..100 * 18]
            .iter()
            .map(|&p| Scaling::Unit.apply(p))
            .collect();
        assert_eq!(pixels_of(held_out), expected);
    }

    #[test]
    fn scalings() {
        assert_eq!(Scaling::Unit.apply(255), 1.0);
        assert_eq!(Scaling::Signed.apply(0), -1.0);
        assert_eq!(Scaling::Signed.apply(255), 1.0);
        assert_eq!(Scaling::Binarized.apply(128), 1.0);
        assert_eq!(Scaling::Binarized.apply(127), 0.0);
    }

    #[test]
    fn mismatched_counts_are_errors() {
        let images = crate::idx::IdxArray {
            dims: vec![2, 2, 2],
            data: vec![0; 8],
        };
        let labels = crate::idx::IdxArray {
            dims: vec![3],
            data: vec![0; 3],
        };
        let err = ImageDataset::from_idx(&images, &labels, Path::new("x"), Path::new("y"), vec![])
            .unwrap_err();
        assert!(err.to_string().contains("2 images") && err.to_string().contains("3 labels"));
    }
}
