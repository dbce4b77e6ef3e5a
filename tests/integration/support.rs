//! Helpers shared by the integration tests.

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::backend::AutodiffBackend;
use genzoo::core::family::SampleRequest;
use genzoo::core::{CpuDevice, Family};
use genzoo::models::ddpm::{DdpmConfig, UNetConfig};
use genzoo::train::{RunDir, TrainConfig, Trainer};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// burn's CPU RNG is one per process, and all these tests share one
/// process: a test that builds models or draws random numbers holds this
/// lock, so that a test checking bit-exact results never sees another's
/// draws.
pub fn rng_lock() -> MutexGuard<'static, ()> {
    static RNG_LOCK: Mutex<()> = Mutex::new(());
    RNG_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` while another thread keeps drawing from burn's process-wide CPU
/// RNG, as another model or test in the same process would. Hold [`rng_lock`]
/// around it: the draws would disturb seeded tests.
pub fn while_the_backend_rng_is_busy<T>(f: impl FnOnce() -> T) -> T {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ =
                    Tensor::<Flex, 1>::random([64], Distribution::Default, &CpuDevice::default());
            }
        });
        let out = f();
        stop.store(true, Ordering::Relaxed);
        out
    })
}

/// Asserts that `family`'s samples for a seed are the same on every call,
/// even while another thread draws from burn's CPU RNG, and that another
/// seed gives others. Hold [`rng_lock`] around it.
pub fn assert_samples_depend_on_the_seed_alone<B: AutodiffBackend, F: Family<B>>(family: &F) {
    let sample = |seed: u64| -> Vec<f32> {
        let request = SampleRequest {
            n: 3,
            seed,
            ..Default::default()
        };
        let images = family.sample_images(&request).unwrap();
        images.into_data().to_vec().unwrap()
    };
    let a = sample(4);
    // Many tries: a draw between seeding and sampling is a narrow window.
    let same = while_the_backend_rng_is_busy(|| (0..50).all(|_| sample(4) == a));
    assert!(same, "the same seed gave other samples");
    assert_ne!(a, sample(5), "another seed gave the same samples");
}

/// Asserts what a run started from another's weights (`init_from`) relies
/// on: `load_weights` of `checkpoint` (written at the end of the run that
/// trained `trained`) gives a fresh family `trained`'s weights (as
/// `weights` lists them, moving averages included) but not its optimizer
/// state, so that a step on `batch` from it differs from the same step,
/// with the same noise, of the fully loaded family. Hold [`rng_lock`].
pub fn assert_load_weights_takes_the_weights_alone<B, F>(
    checkpoint: &Path,
    trained: &F,
    fresh: impl Fn() -> F,
    weights: impl Fn(&F) -> Vec<f32>,
    batch: F::Batch,
) where
    B: AutodiffBackend,
    F: Family<B>,
    F::Batch: Clone,
{
    assert!(
        weights(&fresh()) != weights(trained),
        "a fresh family must differ from the trained one, or nothing is shown"
    );
    let loaded = fresh().load_weights(checkpoint).unwrap();
    assert!(weights(&loaded) == weights(trained), "the trained weights");
    let step = |family: F| {
        B::seed(&Default::default(), 9);
        let mut ctx = genzoo::core::StepContext::new(1, 1e-3);
        weights(&family.train_step(batch.clone(), &mut ctx).unwrap().0)
    };
    let full = fresh().load(checkpoint).unwrap();
    assert!(
        step(loaded) != step(full),
        "the optimizer state must start afresh"
    );
}

/// A DDPM small enough for tests: an 8×8 U-Net of 8 base channels, T = 100;
/// class-conditional when `num_classes` > 0.
pub fn tiny_ddpm(num_classes: usize) -> DdpmConfig {
    DdpmConfig {
        unet: UNetConfig {
            height: 8,
            width: 8,
            base_channels: 8,
            groups: 4,
            time_embedding: 32,
            num_classes,
            ..Default::default()
        },
        timesteps: 100,
        conditional: num_classes > 0,
        ema_decay: 0.9,
        ..Default::default()
    }
}

/// The largest absolute difference between two equally long lists of values.
pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// The steps of the checkpoints in `run`'s `checkpoints/`, oldest first.
pub fn checkpoint_steps(run: &Path) -> Vec<u64> {
    genzoo::train::checkpoint::list_checkpoints(&run.join("checkpoints"))
        .unwrap()
        .into_iter()
        .map(|(step, _)| step)
        .collect()
}

/// The run directory `dir`: created for a new run, or opened to resume one.
pub fn run_dir(dir: &Path, resume: bool) -> RunDir {
    if resume {
        RunDir::open(dir).unwrap()
    } else {
        RunDir::create(dir, false).unwrap()
    }
}

/// A trainer without a progress bar for the run in `dir` (new, or resumed),
/// its checkpoints naming `model` and its config's `fingerprint`.
pub fn quiet_trainer(
    dir: &Path,
    config: TrainConfig,
    resume: bool,
    model: &str,
    fingerprint: impl Into<String>,
) -> Trainer {
    Trainer::new(run_dir(dir, resume), config)
        .identity(model, fingerprint)
        .resume(resume)
        .progress(false)
}

/// Runs the `genzoo` binary in `cwd`, offline, with its cache under `cwd`.
pub fn genzoo(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_genzoo"))
        .args(args)
        .current_dir(cwd)
        .env("GENZOO_OFFLINE", "1")
        .env("XDG_CACHE_HOME", cwd.join("cache"))
        .output()
        .expect("run genzoo")
}

/// A JSON file genzoo wrote (eval.json, a manifest).
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What a run of the binary printed: stdout, then stderr.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The training losses in a run's `metrics.jsonl` records, in step order.
pub fn train_losses(records: &[serde_json::Map<String, serde_json::Value>]) -> Vec<f64> {
    records
        .iter()
        .filter_map(|r| r.get("train_loss")?.as_f64())
        .collect()
}

/// Data whose evaluation asks the run to stop, as a Ctrl-C during an
/// evaluation would.
pub struct StopsDuringEvaluation {
    pub data: genzoo::data::ImageData,
    pub stop: std::sync::Arc<AtomicBool>,
}

impl<B: Backend> genzoo::core::TrainData<B> for StopsDuringEvaluation {
    type Batch = genzoo::core::ImageBatch<B>;
    fn batches_per_epoch(&self) -> usize {
        genzoo::core::TrainData::<B>::batches_per_epoch(&self.data)
    }
    fn train_batch(&self, epoch: u64, index: usize, device: &B::Device) -> Self::Batch {
        self.data.train_batch(epoch, index, device)
    }
    fn eval_batches(&self) -> usize {
        genzoo::core::TrainData::<B>::eval_batches(&self.data)
    }
    fn eval_batch(&self, index: usize, device: &B::Device) -> (Self::Batch, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.data.eval_batch(index, device)
    }
}

/// One TensorBoard event a run wrote, as TensorBoard reads it.
#[derive(Debug, Default)]
pub struct TensorBoardEvent {
    pub step: u64,
    pub scalars: Vec<(String, f32)>,
    pub images: Vec<(String, Vec<u8>)>,
    pub texts: Vec<(String, String)>,
    /// A `SessionLog` START: the run restarts at `step`.
    pub restart: bool,
}

/// The events of every TensorBoard file in `run`, file by file in the
/// order of their names (TensorBoard's), each record's CRCs checked. The
/// decoder is this test's own, written from TensorFlow's `event.proto`,
/// `summary.proto` and `tensor.proto`, not genzoo's encoder run backwards.
pub fn tensorboard_files(run: &Path) -> Vec<Vec<TensorBoardEvent>> {
    let mut files: Vec<_> = std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .contains("tfevents")
        })
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            tfrecords(&std::fs::read(path).unwrap())
                .iter()
                .map(|r| decode_event(r))
                .collect()
        })
        .collect()
}

/// What TensorBoard shows of a run: its files' events, where a restart at
/// step S drops the earlier events of step S and later.
pub fn tensorboard_view(run: &Path) -> Vec<TensorBoardEvent> {
    let mut shown: Vec<TensorBoardEvent> = Vec::new();
    for event in tensorboard_files(run).into_iter().flatten() {
        if event.restart {
            shown.retain(|e| e.step < event.step);
        } else {
            shown.push(event);
        }
    }
    shown
}

fn tfrecords(bytes: &[u8]) -> Vec<Vec<u8>> {
    fn masked_crc32c(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82f63b78
                } else {
                    crc >> 1
                };
            }
        }
        let crc = !crc;
        crc.rotate_right(15).wrapping_add(0xa282ead8)
    }
    let le32 = |b: &[u8]| u32::from_le_bytes(b.try_into().unwrap());
    let mut out = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
        assert_eq!(le32(&rest[8..12]), masked_crc32c(&rest[..8]), "length CRC");
        let data = &rest[12..12 + len];
        assert_eq!(
            le32(&rest[12 + len..16 + len]),
            masked_crc32c(data),
            "data CRC"
        );
        out.push(data.to_vec());
        rest = &rest[16 + len..];
    }
    out
}

enum Field<'a> {
    Varint(u64),
    Fixed(u64),
    Bytes(&'a [u8]),
}

/// A protobuf message's fields, in order.
fn fields(mut bytes: &[u8]) -> Vec<(u64, Field<'_>)> {
    fn varint(bytes: &mut &[u8]) -> u64 {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let b = bytes[0];
            *bytes = &bytes[1..];
            value |= ((b & 0x7f) as u64) << shift;
            if b < 0x80 {
                return value;
            }
            shift += 7;
        }
    }
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes);
        let field = match key & 7 {
            0 => Field::Varint(varint(&mut bytes)),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                let mut le = [0u8; 8];
                le[..n].copy_from_slice(&bytes[..n]);
                bytes = &bytes[n..];
                Field::Fixed(u64::from_le_bytes(le))
            }
            2 => {
                let len = varint(&mut bytes) as usize;
                let (data, rest) = bytes.split_at(len);
                bytes = rest;
                Field::Bytes(data)
            }
            other => panic!("wire type {other}"),
        };
        out.push((key >> 3, field));
    }
    out
}

fn decode_event(bytes: &[u8]) -> TensorBoardEvent {
    let mut event = TensorBoardEvent::default();
    for (number, field) in fields(bytes) {
        match (number, field) {
            (2, Field::Varint(step)) => event.step = step,
            (7, Field::Bytes(log)) => {
                event.restart = fields(log)
                    .iter()
                    .any(|(n, f)| *n == 1 && matches!(f, Field::Varint(1)))
            }
            (5, Field::Bytes(summary)) => {
                for (_, value) in fields(summary) {
                    let Field::Bytes(value) = value else {
                        panic!("Summary.value")
                    };
                    decode_value(value, &mut event);
                }
            }
            _ => {} // wall_time, file_version
        }
    }
    event
}

fn decode_value(value: &[u8], event: &mut TensorBoardEvent) {
    let fields = fields(value);
    let bytes_of = |fields: &[(u64, Field<'_>)], number: u64| -> Option<Vec<u8>> {
        fields.iter().find_map(|(n, f)| match f {
            Field::Bytes(b) if *n == number => Some(b.to_vec()),
            _ => None,
        })
    };
    let tag = String::from_utf8(bytes_of(&fields, 1).expect("a tag")).unwrap();
    for (number, field) in &fields {
        match (number, field) {
            (2, Field::Fixed(bits)) => event
                .scalars
                .push((tag.clone(), f32::from_bits(*bits as u32))),
            (4, Field::Bytes(image)) => {
                let png = bytes_of(&self::fields(image), 4).expect("encoded_image_string");
                event.images.push((tag.clone(), png));
            }
            (8, Field::Bytes(tensor)) => {
                let text = bytes_of(&self::fields(tensor), 8).expect("string_val");
                // For the text plugin, which shows only what names it.
                let metadata = bytes_of(&fields, 9).expect("SummaryMetadata");
                let plugin = bytes_of(&self::fields(&metadata), 1).expect("plugin_data");
                assert_eq!(bytes_of(&self::fields(&plugin), 1).unwrap(), b"text");
                event
                    .texts
                    .push((tag.clone(), String::from_utf8(text).unwrap()));
            }
            _ => {}
        }
    }
}
