//! Text corpora for language models: a vocabulary (the distinct characters
//! of the training text, or the 256 byte values), a 90/10 train/validation
//! split, and batches of random windows, seeded.

use std::path::Path;

use burn::prelude::*;
use genzoo_core::seed::host_rng;
use genzoo_core::{Error, Result, TokenBatch, TrainData};
use rand::Rng;
use sha2::{Digest, Sha256};

use crate::download::hex;

pub use genzoo_core::vocabulary::Vocabulary;

/// A tokenised corpus split 90/10 into training and validation tokens.
#[derive(Clone, Debug)]
pub struct TextCorpus {
    /// The vocabulary.
    pub vocabulary: Vocabulary,
    /// The first 90% of the tokens.
    pub train: Vec<u32>,
    /// The last 10%.
    pub val: Vec<u32>,
}

impl TextCorpus {
    /// Reads and tokenises a file: its characters (the file must be UTF-8)
    /// or, with `bytes`, its bytes, whatever they encode.
    pub fn from_file(path: &Path, bytes: bool) -> Result<Self> {
        Self::read(path, bytes.then_some(Vocabulary::Bytes))
    }

    /// Reads and tokenises a file in a given vocabulary (a trained model's,
    /// to train it on more text): a character outside it is an error naming it.
    pub fn from_file_in(path: &Path, vocabulary: Vocabulary) -> Result<Self> {
        Self::read(path, Some(vocabulary))
    }

    /// A file's tokens in `vocabulary`, or in the characters of its text when `None`.
    fn read(path: &Path, vocabulary: Option<Vocabulary>) -> Result<Self> {
        let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let corpus = match vocabulary {
            Some(Vocabulary::Bytes) => Self::from_bytes(&raw),
            vocabulary => {
                let text = String::from_utf8(raw).map_err(|e| {
                    Error::Data(format!(
                        "{}: not UTF-8 text ({e}); a byte-level model (`--bytes`) reads any file",
                        path.display()
                    ))
                })?;
                match vocabulary {
                    Some(chars) => chars
                        .encode(&text)
                        .and_then(|tokens| Self::split(chars, tokens)),
                    None => Self::from_text(&text, false),
                }
            }
        };
        corpus.map_err(|e| Error::Data(format!("{}: {e}", path.display())))
    }

    /// Tokenises `text` (`bytes`: its UTF-8 bytes, else its characters) and splits it.
    pub fn from_text(text: &str, bytes: bool) -> Result<Self> {
        if bytes {
            return Self::from_bytes(text.as_bytes());
        }
        let vocabulary = Vocabulary::chars_of(text);
        let tokens = vocabulary.encode(text)?;
        Self::split(vocabulary, tokens)
    }

    /// One token per byte of `raw`, which need not be text, split 90/10.
    pub fn from_bytes(raw: &[u8]) -> Result<Self> {
        Self::split(
            Vocabulary::Bytes,
            raw.iter().map(|&b| u32::from(b)).collect(),
        )
    }

    /// SHA-256 (hex) of the vocabulary and the training tokens: what a
    /// checkpoint records of its training text (see
    /// [`TrainData::fingerprint`]).
    pub fn fingerprint(&self) -> String {
        self.digest(&self.train)
    }

    /// The same of the validation tokens: what a checkpoint records of its
    /// held-out text.
    pub fn val_fingerprint(&self) -> String {
        self.digest(&self.val)
    }

    fn digest(&self, tokens: &[u32]) -> String {
        let mut hash = Sha256::new();
        match self.vocabulary.chars_string() {
            Some(chars) => hash.update(format!("chars {}:{chars}", chars.chars().count())),
            None => hash.update("bytes"),
        }
        hash.update(format!(":{}:", tokens.len()));
        for token in tokens {
            hash.update(token.to_le_bytes());
        }
        hex(&hash.finalize())
    }

    fn split(vocabulary: Vocabulary, tokens: Vec<u32>) -> Result<Self> {
        if tokens.len() < 20 {
            return Err(Error::Data(format!(
                "the text has only {} tokens: too short to train on",
                tokens.len()
            )));
        }
        let split = tokens.len() * 9 / 10;
        Ok(Self {
            vocabulary,
            train: tokens[..split].to_vec(),
            val: tokens[split..].to_vec(),
        })
    }
}

/// `tokens` cut into consecutive windows of `block_size + 1` tokens that
/// overlap by one (a window's inputs are its first `block_size` tokens, its
/// targets the last `block_size`), so that every token after the first is
/// predicted exactly once; the last window is shorter when the tokens do not
/// divide evenly.
///
/// ```
/// let w = genzoo_data::text::consecutive_windows(&[0, 1, 2, 3, 4, 5], 2);
/// assert_eq!(w, vec![&[0, 1, 2][..], &[2, 3, 4][..], &[4, 5][..]]);
/// ```
pub fn consecutive_windows(tokens: &[u32], block_size: usize) -> Vec<&[u32]> {
    let block = block_size.max(1);
    (0..tokens.len().saturating_sub(1))
        .step_by(block)
        .map(|start| &tokens[start..(start + block + 1).min(tokens.len())])
        .collect()
}

/// Random windows of a corpus: batch `(epoch, index)` and validation batch
/// `i` depend only on the seed and those numbers.
#[derive(Clone, Debug)]
pub struct TextData {
    /// The corpus.
    pub corpus: TextCorpus,
    /// Tokens per window (the model's context).
    pub block_size: usize,
    /// Windows per batch.
    pub batch_size: usize,
    /// Seed of the window positions.
    pub seed: u64,
    /// Validation batches per evaluation (nanoGPT's `eval_iters`).
    pub eval_batches: usize,
}

impl TextData {
    /// Batches over `corpus`; both splits must be longer than one window.
    pub fn new(
        corpus: TextCorpus,
        block_size: usize,
        batch_size: usize,
        seed: u64,
        eval_batches: usize,
    ) -> Result<Self> {
        for (name, split) in [("training", &corpus.train), ("validation", &corpus.val)] {
            if split.len() <= block_size + 1 {
                return Err(Error::Data(format!(
                    "the {name} split has {} tokens, fewer than one window of block_size + 1 = {}",
                    split.len(),
                    block_size + 1
                )));
            }
        }
        Ok(Self {
            corpus,
            block_size,
            batch_size,
            seed,
            eval_batches,
        })
    }

    fn windows<B: Backend>(
        &self,
        tokens: &[u32],
        stream: &str,
        index: u64,
        device: &B::Device,
    ) -> TokenBatch<B> {
        let mut rng = host_rng(self.seed, stream, index);
        let (n, t) = (self.batch_size, self.block_size);
        let mut inputs = Vec::with_capacity(n * t);
        let mut targets = Vec::with_capacity(n * t);
        for _ in 0..n {
            let start = rng.random_range(0..tokens.len() - t - 1);
            inputs.extend(tokens[start..start + t].iter().map(|&x| x as i64));
            targets.extend(tokens[start + 1..start + t + 1].iter().map(|&x| x as i64));
        }
        TokenBatch {
            inputs: Tensor::from_data(TensorData::new(inputs, [n, t]), device),
            targets: Tensor::from_data(TensorData::new(targets, [n, t]), device),
        }
    }
}

impl<B: Backend> TrainData<B> for TextData {
    type Batch = TokenBatch<B>;

    /// One "epoch" is as many windows as there are training tokens.
    fn batches_per_epoch(&self) -> usize {
        (self.corpus.train.len() / (self.batch_size * self.block_size)).max(1)
    }

    fn train_batch(&self, epoch: u64, index: usize, device: &B::Device) -> TokenBatch<B> {
        let global = epoch * TrainData::<B>::batches_per_epoch(self) as u64 + index as u64;
        self.windows(&self.corpus.train, "text-train", global, device)
    }

    fn fingerprint(&self) -> Option<String> {
        Some(self.corpus.fingerprint())
    }

    fn held_out_fingerprint(&self) -> Option<String> {
        Some(self.corpus.val_fingerprint())
    }

    fn eval_batches(&self) -> usize {
        self.eval_batches
    }

    fn eval_batch(&self, index: usize, device: &B::Device) -> (TokenBatch<B>, usize) {
        (
            self.windows(&self.corpus.val, "text-val", index as u64, device),
            self.batch_size,
        )
    }

    fn eval_split(&self) -> &'static str {
        "val"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use genzoo_core::{CpuBackend, CpuDevice};

    #[test]
    fn the_fingerprint_tells_training_texts_apart() {
        let text = "to be or not to be, that is the question\n".repeat(5);
        let of =
            |text: &str, bytes: bool| TextCorpus::from_text(text, bytes).unwrap().fingerprint();
        assert_eq!(of(&text, false), of(&text, false), "deterministic");
        assert_eq!(of(&text, false).len(), 64);
        // One character changed, the same tokens read as bytes, another
        // validation tail only (not trained on: the same fingerprint).
        let changed = text.replacen("not", "nor", 1);
        assert_ne!(of(&changed, false), of(&text, false));
        assert_ne!(of(&text, true), of(&text, false));
        let mut tail = text.clone();
        tail.replace_range(text.len() - 3.., "qa\n");
        assert_eq!(of(&tail, false), of(&text, false));
        // That tail is the validation split's, told apart by its own fingerprint.
        let val = |text: &str| {
            TextCorpus::from_text(text, false)
                .unwrap()
                .val_fingerprint()
        };
        assert_ne!(val(&tail), val(&text));
        assert_ne!(val(&text), of(&text, false));
    }

    #[test]
    fn a_file_read_in_a_given_vocabulary_keeps_its_tokens() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("more.txt");
        std::fs::write(&path, "abba cab, abc; ".repeat(4)).unwrap();
        // A wider vocabulary than the file's own: the tokens are the
        // vocabulary's, not those of the file's characters.
        let wide = Vocabulary::from_chars("\n ,;abcdz");
        let corpus = TextCorpus::from_file_in(&path, wide.clone()).unwrap();
        assert_eq!(corpus.vocabulary, wide);
        assert_eq!(&corpus.train[..5], &[4, 5, 5, 4, 1]);
        let own = TextCorpus::from_file(&path, false).unwrap();
        assert_eq!(own.vocabulary.len(), 6);
        assert_ne!(own.train, corpus.train);
        // A character the vocabulary lacks is named, with the file.
        let err = TextCorpus::from_file_in(&path, Vocabulary::from_chars(" ,;ab"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("more.txt") && err.contains("'c'"), "{err}");
        // Bytes read the file's bytes.
        let bytes = TextCorpus::from_file_in(&path, Vocabulary::Bytes).unwrap();
        assert_eq!(bytes.train[0], u32::from(b'a'));
    }

    #[test]
    fn consecutive_windows_predict_every_token_once() {
        for (len, block) in [(10, 3), (9, 3), (2, 5), (100, 64), (129, 64), (1, 4)] {
            let tokens: Vec<u32> = (0..len).collect();
            let windows = consecutive_windows(&tokens, block);
            // Targets (all but a window's first token) cover tokens 1.. once, in order.
            let targets: Vec<u32> = windows.iter().flat_map(|w| w[1..].to_vec()).collect();
            assert_eq!(
                targets,
                (1..len).collect::<Vec<_>>(),
                "{len} tokens, block {block}"
            );
            for w in &windows {
                assert!(w.len() >= 2 && w.len() <= block + 1, "{w:?}");
                // Inputs are contiguous: each window continues the text.
                assert!(w.windows(2).all(|p| p[1] == p[0] + 1));
            }
        }
    }

    #[test]
    fn windows_are_shifted_by_one_and_seeded() {
        let text: String = (0..500)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let corpus = TextCorpus::from_text(&text, false).unwrap();
        assert_eq!((corpus.train.len(), corpus.val.len()), (450, 50));
        let data = TextData::new(corpus, 8, 4, 3, 2).unwrap();
        let dev = CpuDevice::default();
        let a: TokenBatch<CpuBackend> = data.train_batch(0, 1, &dev);
        let b: TokenBatch<CpuBackend> = data.train_batch(0, 1, &dev);
        let x = a
            .inputs
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap();
        let y = a
            .targets
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap();
        assert_eq!(
            x,
            b.inputs
                .into_data()
                .convert::<i64>()
                .to_vec::<i64>()
                .unwrap()
        );
        for row in 0..4 {
            assert_eq!(
                x[row * 8 + 1..row * 8 + 8],
                y[row * 8..row * 8 + 7],
                "targets are the inputs shifted by one"
            );
        }
        assert_eq!(TrainData::<CpuBackend>::eval_split(&data), "val");
    }

    #[test]
    fn a_byte_level_corpus_reads_any_file_and_a_character_one_only_utf8() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latin1.txt");
        // "café " in Latin-1: 0xE9 alone is not UTF-8.
        let raw: Vec<u8> = b"caf\xE9 ".repeat(20);
        std::fs::write(&path, &raw).unwrap();
        let corpus = TextCorpus::from_file(&path, true).unwrap();
        assert_eq!(corpus.vocabulary, Vocabulary::Bytes);
        let tokens: Vec<u32> = raw.iter().map(|&b| u32::from(b)).collect();
        assert_eq!((corpus.train.len(), corpus.val.len()), (90, 10));
        assert_eq!([corpus.train, corpus.val].concat(), tokens);
        let err = TextCorpus::from_file(&path, false).unwrap_err().to_string();
        assert!(
            err.contains("latin1.txt: not UTF-8") && err.contains("--bytes"),
            "{err}"
        );
        // UTF-8 text gives the same tokens either way in.
        let text = "naïve ".repeat(10);
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            TextCorpus::from_file(&path, true).unwrap().train,
            TextCorpus::from_text(&text, true).unwrap().train
        );
    }
}
