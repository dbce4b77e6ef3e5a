//! Text ↔ tokens: the vocabulary shared by the text data (genzoo-data)
//! and the language models that decode their own samples (genzoo-models).

use crate::error::{Error, Result};

/// How text becomes tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vocabulary {
    /// One token per distinct character, in sorted order (nanoGPT's `shakespeare_char`).
    Chars(Vec<char>),
    /// One token per byte: 256 tokens, no mapping to save. A byte-level
    /// model reads any file, UTF-8 text or not, and emits bytes.
    Bytes,
}

impl Vocabulary {
    /// The characters of `text`, sorted and deduplicated.
    pub fn chars_of(text: &str) -> Self {
        let mut chars: Vec<char> = text.chars().collect();
        chars.sort_unstable();
        chars.dedup();
        Vocabulary::Chars(chars)
    }

    /// A character vocabulary from its characters in token order (as saved in a config).
    pub fn from_chars(chars: &str) -> Self {
        Vocabulary::Chars(chars.chars().collect())
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        match self {
            Vocabulary::Chars(c) => c.len(),
            Vocabulary::Bytes => 256,
        }
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The characters in token order (`None` for bytes).
    pub fn chars_string(&self) -> Option<String> {
        match self {
            Vocabulary::Chars(c) => Some(c.iter().collect()),
            Vocabulary::Bytes => None,
        }
    }

    /// Tokens of `text`; a character outside the vocabulary is an error naming it.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            Vocabulary::Bytes => Ok(text.bytes().map(u32::from).collect()),
            Vocabulary::Chars(chars) => text
                .chars()
                .map(|ch| {
                    chars.binary_search(&ch).map(|i| i as u32).or_else(|_| {
                        chars.iter().position(|&c| c == ch).map(|i| i as u32).ok_or_else(|| {
                            Error::Data(format!("character {ch:?} is not in the model's vocabulary of {} characters", chars.len()))
                        })
                    })
                })
                .collect(),
        }
    }

    /// Text of `tokens` (bytes that are not valid UTF-8 are replaced).
    pub fn decode(&self, tokens: &[u32]) -> String {
        match self {
            Vocabulary::Bytes => String::from_utf8_lossy(&self.decode_bytes(tokens)).into_owned(),
            Vocabulary::Chars(chars) => tokens
                .iter()
                .filter_map(|&t| chars.get(t as usize))
                .collect(),
        }
    }

    /// The bytes `tokens` stand for, as they are: a byte-level model's own
    /// bytes (which need not be UTF-8), a character model's text in UTF-8.
    ///
    /// ```
    /// use genzoo_core::vocabulary::Vocabulary;
    /// assert_eq!(Vocabulary::Bytes.decode_bytes(&[0xE9, 0x0A]), vec![0xE9, 0x0A]);
    /// ```
    pub fn decode_bytes(&self, tokens: &[u32]) -> Vec<u8> {
        match self {
            Vocabulary::Bytes => tokens.iter().map(|&t| t as u8).collect(),
            Vocabulary::Chars(_) => self.decode(tokens).into_bytes(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_round_trips() {
        let text = "hello, world!\nÀ bientôt.";
        let v = Vocabulary::chars_of(text);
        assert_eq!(v.decode(&v.encode(text).unwrap()), text);
        let again = Vocabulary::from_chars(&v.chars_string().unwrap());
        assert_eq!(again, v);
        let err = v.encode("xyz").unwrap_err().to_string();
        assert!(err.contains("'x'") && err.contains("vocabulary"), "{err}");
        let b = Vocabulary::Bytes;
        assert_eq!(b.decode(&b.encode(text).unwrap()), text);
        assert_eq!(b.len(), 256);
        // Every byte value survives decode_bytes, UTF-8 or not; decode
        // replaces what is not UTF-8.
        let all: Vec<u32> = (0..=255).collect();
        let raw = b.decode_bytes(&all);
        assert_eq!(raw, (0..=255u8).collect::<Vec<_>>());
        assert!(b.decode(&[0xE9]).contains('\u{FFFD}'));
        assert_eq!(v.decode_bytes(&v.encode(text).unwrap()), text.as_bytes());
    }
}
