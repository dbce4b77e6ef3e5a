//! GPT: a decoder-only transformer over text (characters or bytes) and over
//! images (16-level pixels in raster order), as nanoGPT.
//!
//! - [`model`]: the network, with a key/value cache;
//! - [`sample`]: temperature / top-k / top-p generation, cached or not;
//! - [`family`]: the training step (AdamW with decay on matrices only), for
//!   text ([`GptText`]) and for images ([`GptPixel`]).

pub mod family;
pub mod model;
pub mod sample;

pub use family::{GptInput, GptPixel, GptText};
pub use model::{Gpt, GptConfig};
pub use sample::Sampling;
