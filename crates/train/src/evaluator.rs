//! The evaluator: a small CNN classifier trained once per dataset whose
//! 128-wide penultimate layer is the feature space of FID, KID and
//! precision/recall, and whose class probabilities give the Inception-Score
//! analogue and class coverage. Inception weights cannot be downloaded here
//! and suit 28×28 digits poorly; a classifier trained on the dataset itself
//! is the usual substitute for MNIST-like data.
//!
//! It is cached under `<cache>/genzoo/evaluators/<dataset>-<fingerprint>/`
//! (the fingerprint is a SHA-256 of the training images and labels), with
//! the test set's features beside it as the reference.

use std::io::Write;
use std::path::{Path, PathBuf};

use burn::module::AutodiffModule;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::optim::{GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::activation::{relu, softmax};
use burn::tensor::backend::AutodiffBackend;
use genzoo_core::family::SampleRequest;
use genzoo_core::optim::FusedAdam;
use genzoo_core::record::{load_module, record_file, save_module};
use genzoo_core::seed::derive;
use genzoo_core::{Error, Family, Result, TrainData};
use genzoo_data::{ImageData, ImageDataset, Scaling};
use genzoo_models::layers::conv2d;
use serde::{Deserialize, Serialize};

use crate::metrics::{Features, QualityOptions, sample_quality};

/// Width of the feature layer.
pub const FEATURES: usize = 128;

/// LeNet-like: two 5×5 conv + max-pool stages, a 128-wide dense layer (the
/// features), dropout, and the class logits.
#[derive(Module, Debug)]
pub struct Classifier<B: Backend> {
    conv1: Conv2d<B>,
    conv2: Conv2d<B>,
    pool: MaxPool2d,
    dense: Linear<B>,
    dropout: Dropout,
    head: Linear<B>,
}

impl<B: Backend> Classifier<B> {
    /// A fresh classifier for `channels`×`height`×`width` images (sides divisible by 4).
    pub fn new(
        channels: usize,
        height: usize,
        width: usize,
        classes: usize,
        device: &B::Device,
    ) -> Self {
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [5, 5])
                .with_padding(PaddingConfig2d::Explicit(2, 2, 2, 2))
                .init(device)
        };
        Self {
            conv1: conv(channels, 32),
            conv2: conv(32, 64),
            pool: MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init(),
            dense: LinearConfig::new(64 * (height / 4) * (width / 4), FEATURES).init(device),
            dropout: DropoutConfig::new(0.3).init(),
            head: LinearConfig::new(FEATURES, classes.max(2)).init(device),
        }
    }

    /// The feature vectors.
    ///
    /// # Shapes
    /// - images: `[n, c, h, w]` in `[0, 1]` → `[n, 128]`
    pub fn features(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        // genzoo's fused convolution: the same maths as burn's, fast on the CPU.
        let x = self.pool.forward(relu(conv2d(&self.conv1, images)));
        let x = self.pool.forward(relu(conv2d(&self.conv2, x)));
        let [n, c, h, w] = x.dims();
        relu(self.dense.forward(x.reshape([n, c * h * w])))
    }

    /// Class logits, `[n, classes]`.
    pub fn forward(&self, images: Tensor<B, 4>) -> Tensor<B, 2> {
        self.head
            .forward(self.dropout.forward(self.features(images)))
    }
}

/// What is stored beside a cached evaluator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluatorInfo {
    /// The dataset's name.
    pub dataset: String,
    /// SHA-256 of the training images and labels (hex).
    pub fingerprint: String,
    /// Image shape (channels, height, width).
    pub shape: (usize, usize, usize),
    /// Number of classes.
    pub classes: usize,
    /// Accuracy on the test split.
    pub test_accuracy: f64,
    /// Training epochs.
    pub epochs: u64,
}

/// A trained evaluator with the test set's features as the reference.
pub struct Evaluator<B: Backend> {
    /// The network (inference backend).
    pub classifier: Classifier<B>,
    /// What it was trained on and how well it does.
    pub info: EvaluatorInfo,
    /// Features of the test split.
    pub reference: Features,
    device: B::Device,
}

/// Where the evaluator of a dataset is cached.
pub fn cache_dir(cache_root: &Path, dataset: &str, fingerprint: &str) -> PathBuf {
    let safe = crate::run_dir::file_name_part(dataset);
    cache_root
        .join("evaluators")
        .join(format!("{safe}-{}", &fingerprint[..16]))
}

/// Whether `dir` holds a complete cached evaluator (one cached before
/// weights were safetensors is not: it is trained again).
pub fn is_cached(dir: &Path) -> bool {
    dir.join("evaluator.json").exists() && record_file(&dir.join("classifier")).exists()
}

impl<B: Backend> Evaluator<B> {
    /// Features and class probabilities of images in `[0, 1]`, in batches.
    pub fn embed(&self, images: Tensor<B, 4>) -> Result<(Features, Vec<Vec<f64>>)> {
        let n = images.dims()[0];
        let mut features = Vec::with_capacity(n * FEATURES);
        let mut probs = Vec::with_capacity(n);
        for start in (0..n).step_by(500) {
            let batch = images.clone().narrow(0, start, 500.min(n - start));
            let f = self.classifier.features(batch);
            let p = softmax(self.classifier.head.forward(f.clone()), 1);
            features.extend(
                f.into_data()
                    .to_vec::<f32>()
                    .map_err(|e| Error::Config(format!("{e:?}")))?,
            );
            let classes = self.info.classes.max(2);
            let values = p
                .into_data()
                .to_vec::<f32>()
                .map_err(|e| Error::Config(format!("{e:?}")))?;
            probs.extend(
                values
                    .chunks(classes)
                    .map(|r| r.iter().map(|v| *v as f64).collect()),
            );
        }
        Ok((Features::new(features, FEATURES)?, probs))
    }

    /// Draws the `request.n` samples of `family` that `request` asks for and
    /// embeds them: their features and class probabilities. In chunks of
    /// 500, chunk k from the noise seed `derive(request.seed,
    /// "eval-samples", k)`, so that the same seed gives the same samples
    /// whatever asks; a class-conditional model draws the classes in turn
    /// unless the request names one. `progress` is told the samples drawn
    /// so far.
    pub fn embed_samples<A, F>(
        &self,
        family: &F,
        request: &SampleRequest,
        mut progress: impl FnMut(usize),
    ) -> Result<(Features, Vec<Vec<f64>>)>
    where
        A: AutodiffBackend<InnerBackend = B>,
        F: Family<A>,
    {
        let mut values = Vec::with_capacity(request.n * FEATURES);
        let mut probs = Vec::with_capacity(request.n);
        let seed = request.seed;
        for request in request.chunks(500, |k| derive(seed, "eval-samples", k)) {
            let images = family.sample_images(&request)?;
            let [_, c, h, w] = images.dims();
            if (c, h, w) != self.info.shape {
                let (ec, eh, ew) = self.info.shape;
                return Err(Error::Config(format!(
                    "the {} evaluator embeds {ec}x{eh}x{ew} images; the model draws {c}x{h}x{w}",
                    self.info.dataset
                )));
            }
            let (f, p) = self.embed(images)?;
            values.extend(f.to_values());
            probs.extend(p);
            progress(probs.len());
        }
        Ok((Features::new(values, FEATURES)?, probs))
    }

    /// Embeds a dataset's images.
    pub fn embed_dataset(&self, set: &ImageDataset) -> Result<(Features, Vec<Vec<f64>>)> {
        let mut features = Vec::new();
        let mut probs = Vec::new();
        let indices: Vec<usize> = (0..set.len()).collect();
        for chunk in indices.chunks(1000) {
            let images = set.batch::<B>(chunk, Scaling::Unit, &self.device).images;
            let (f, p) = self.embed(images)?;
            features.extend(f.to_values());
            probs.extend(p);
        }
        Ok((Features::new(features, FEATURES)?, probs))
    }

    /// Loads the cached evaluator in `dir`.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        let info_path = dir.join("evaluator.json");
        let text = std::fs::read_to_string(&info_path).map_err(|e| Error::io(&info_path, e))?;
        let info: EvaluatorInfo = serde_json::from_str(&text).map_err(|e| {
            Error::checkpoint(&info_path, format!("not an evaluator description: {e}"))
        })?;
        let (c, h, w) = info.shape;
        let classifier = load_module(
            Classifier::new(c, h, w, info.classes, device),
            &dir.join("classifier"),
        )?;
        let ref_path = dir.join("reference_features.f32");
        let bytes = std::fs::read(&ref_path).map_err(|e| Error::io(&ref_path, e))?;
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let reference = Features::new(values, FEATURES).map_err(|e| {
            Error::checkpoint(&ref_path, format!("corrupt reference features: {e}"))
        })?;
        Ok(Self {
            classifier,
            info,
            reference,
            device: device.clone(),
        })
    }

    /// Writes the evaluator into `dir` (through a temporary directory, renamed at the end).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        let tmp = parent.join(format!(".tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        save_module(&self.classifier, &tmp.join("classifier"))?;
        let info =
            serde_json::to_string_pretty(&self.info).map_err(|e| Error::Config(e.to_string()))?;
        std::fs::write(tmp.join("evaluator.json"), info).map_err(|e| Error::io(&tmp, e))?;
        let mut file = std::fs::File::create(tmp.join("reference_features.f32"))
            .map_err(|e| Error::io(&tmp, e))?;
        let bytes: Vec<u8> = self
            .reference
            .to_values()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        file.write_all(&bytes).map_err(|e| Error::io(&tmp, e))?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
    }
}

/// FID and KID of a model's samples against an evaluator's reference
/// features: what a run logs at each evaluation when
/// [`crate::TrainConfig::fid_samples`] is set. Every measurement draws the
/// same noise (from the run's seed), so a run's curve follows its weights,
/// not the draws.
///
/// ```no_run
/// # use genzoo_train::evaluator::{Evaluator, SampleScore};
/// # let dir = std::path::Path::new("evaluator");
/// let evaluator = Evaluator::<genzoo_core::CpuBackend>::load(dir, &Default::default())?;
/// let score = SampleScore::new(evaluator, 1000, 0)?;
/// // score.measure(&family)? gives [("fid", ..), ("kid", ..)]
/// # Ok::<(), genzoo_core::Error>(())
/// ```
pub struct SampleScore<B: Backend> {
    evaluator: Evaluator<B>,
    samples: usize,
    seed: u64,
}

impl<B: Backend> SampleScore<B> {
    /// What [`SampleScore::measure`] gives, by name.
    pub const METRICS: [&str; 2] = ["fid", "kid"];

    /// Scores of `samples` samples drawn from `seed`'s noise (at least 2: a
    /// covariance needs them).
    pub fn new(evaluator: Evaluator<B>, samples: usize, seed: u64) -> Result<Self> {
        if samples < 2 {
            return Err(Error::Config(format!(
                "fid_samples must be at least 2 (FID needs a spread of samples), got {samples}"
            )));
        }
        Ok(Self {
            evaluator,
            samples,
            seed,
        })
    }

    /// `fid` and `kid` of `family`'s samples. A class-conditional model
    /// draws the classes in turn, as `genzoo eval` does.
    pub fn measure<A, F>(&self, family: &F) -> Result<Vec<(String, f64)>>
    where
        A: AutodiffBackend<InnerBackend = B>,
        F: Family<A>,
    {
        // `genzoo eval`'s draws: `eval --n N --seed S --metrics fid,kid` of
        // a checkpoint gives the values a run of seed S logged at its step.
        let request = SampleRequest {
            n: self.samples,
            seed: self.seed,
            ..Default::default()
        };
        let (generated, _) = self.evaluator.embed_samples(family, &request, |_| {
            genzoo_core::parallel::heartbeat();
        })?;
        let options = QualityOptions {
            is: false,
            pr: false,
            seed: self.seed,
            ..Default::default()
        };
        Ok(
            sample_quality(&self.evaluator.reference, &generated, &[], &options)
                .into_iter()
                .filter(|(name, _)| Self::METRICS.contains(&name.as_str()))
                .collect(),
        )
    }
}

/// Accuracy of `classifier` on a dataset.
pub fn accuracy<B: Backend>(
    classifier: &Classifier<B>,
    set: &ImageDataset,
    device: &B::Device,
) -> f64 {
    let indices: Vec<usize> = (0..set.len()).collect();
    let mut correct = 0usize;
    for chunk in indices.chunks(1000) {
        let batch = set.batch::<B>(chunk, Scaling::Unit, device);
        let predicted = classifier
            .forward(batch.images)
            .argmax(1)
            .reshape([chunk.len()]);
        let hits: i64 = predicted
            .equal(batch.labels)
            .int()
            .sum()
            .into_scalar()
            .elem();
        correct += hits as usize;
    }
    correct as f64 / set.len().max(1) as f64
}

/// Trains an evaluator on `train` (Adam, learning rate 1e-3 with cosine
/// decay to 5e-5, batch 128) for `epochs` and
/// measures it on `test`; `progress` is called after each step with
/// (epoch, batch in the epoch, batches per epoch, loss).
pub fn train_evaluator<B: AutodiffBackend>(
    dataset: &str,
    train: &ImageDataset,
    test: &ImageDataset,
    epochs: u64,
    seed: u64,
    device: &B::Device,
    mut progress: impl FnMut(u64, usize, usize, f64),
) -> Result<Evaluator<B::InnerBackend>> {
    if train.num_classes() < 2 {
        return Err(Error::Data(format!(
            "{dataset}: the evaluator is a classifier and needs labelled data of at least 2 classes"
        )));
    }
    let (c, h, w) = train.dims();
    if !h.is_multiple_of(4) || !w.is_multiple_of(4) {
        return Err(Error::Data(format!(
            "{dataset}: the evaluator needs image sides divisible by 4, got {h}x{w}"
        )));
    }
    let classes = train.num_classes();
    B::seed(device, genzoo_core::seed::derive(seed, "evaluator", 0));
    let mut model = Classifier::<B>::new(c, h, w, classes, device);
    let mut optimizer = FusedAdam::new(0.9, 0.999, 1e-8).init();
    let data = ImageData::new(train.clone(), test.clone(), 128, Scaling::Unit, seed)?;
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let per_epoch = TrainData::<B>::batches_per_epoch(&data);
    let total = (epochs * per_epoch as u64).max(1);
    let schedule = crate::Schedule::Cosine {
        warmup_steps: 0,
        min_lr: 5e-5,
    };
    for epoch in 0..epochs {
        for index in 0..per_epoch {
            genzoo_core::seed::seed_step::<B>(
                device,
                seed,
                epoch * per_epoch as u64 + index as u64,
            );
            let batch = TrainData::<B>::train_batch(&data, epoch, index, device);
            let loss = loss_fn.forward(model.forward(batch.images), batch.labels);
            let value: f64 = loss.clone().into_scalar().elem();
            if !value.is_finite() {
                return Err(Error::Config(format!(
                    "evaluator training diverged at epoch {epoch}, batch {index}"
                )));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let step = epoch * per_epoch as u64 + index as u64;
            let lr = 1e-3 * schedule.factor(1e-3, step, total);
            model = optimizer.step(lr, model, grads);
            progress(epoch, index, per_epoch, value);
        }
    }
    let classifier = model.valid();
    let inner_device = device.clone();
    let test_accuracy = accuracy(&classifier, test, &inner_device);
    let info = EvaluatorInfo {
        dataset: dataset.to_string(),
        fingerprint: train.fingerprint(),
        shape: (c, h, w),
        classes,
        test_accuracy,
        epochs,
    };
    let mut evaluator = Evaluator {
        classifier,
        info,
        reference: Features::new(vec![0.0; FEATURES], FEATURES)?,
        device: inner_device,
    };
    evaluator.reference = evaluator.embed_dataset(test)?.0;
    Ok(evaluator)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use genzoo_core::CpuDevice;
    use genzoo_data::synthetic;

    #[test]
    fn trains_above_chance_and_round_trips_through_the_cache() {
        let dev = CpuDevice::default();
        let (x, y) = synthetic::images(256, 12, 4, 1);
        let (tx, ty) = synthetic::images(64, 12, 4, 2);
        let train = ImageDataset::new(x, y, (1, 12, 12), vec![]).unwrap();
        let test = ImageDataset::new(tx, ty, (1, 12, 12), vec![]).unwrap();
        let evaluator = train_evaluator::<Autodiff<Flex>>(
            "synthetic",
            &train,
            &test,
            4,
            0,
            &dev,
            |_, _, _, _| {},
        )
        .unwrap();
        assert!(
            evaluator.info.test_accuracy > 0.5,
            "4 classes: chance is 0.25, got {}",
            evaluator.info.test_accuracy
        );
        assert_eq!(
            (evaluator.reference.len(), evaluator.reference.dim()),
            (64, FEATURES)
        );
        let tmp = tempfile::tempdir().unwrap();
        let dir = cache_dir(tmp.path(), "synthetic", &evaluator.info.fingerprint);
        evaluator.save(&dir).unwrap();
        let loaded = Evaluator::<Flex>::load(&dir, &dev).unwrap();
        assert_eq!(loaded.info, evaluator.info);
        assert_eq!(loaded.reference, evaluator.reference);
        // Same weights: same features for the same images.
        let (a, _) = evaluator.embed_dataset(&test).unwrap();
        let (b, _) = loaded.embed_dataset(&test).unwrap();
        assert_eq!(a, b);
        // A different dataset has a different fingerprint.
        assert_ne!(train.fingerprint(), test.fingerprint());
    }
}
