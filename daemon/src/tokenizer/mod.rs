//! The base tokenizer: text ↔ ids for the served model.
//!
//! [`Codec`] is built from a GGUF's metadata ([`Codec::from_gguf`]) or a Hugging Face directory
//! ([`Codec::from_hf_dir`]); it encodes, decodes, streams text deltas ([`StreamDecoder`]), renders
//! the chat template ([`ChatTemplate`]) and knows the BOS/EOS/stop ids. An optional
//! [`VocabPatch`] (AdaptiVocab, built in `crate::vocab`) is applied transparently: every id going
//! in or out is then a patched id. This module knows nothing about how a patch is built or stored,
//! and nothing about model weights.

mod chat;
mod codec;
mod error;
#[doc(hidden)]
pub mod fixtures;
mod gguf;
mod hf_dir;
mod patch;
mod stream;

pub use chat::{ChatMessage, ChatTemplate};
pub use codec::{Codec, SpecialIds};
pub use error::{Result, TokenizerError};
pub use patch::VocabPatch;
pub use stream::StreamDecoder;

/// What a loader hands to [`Codec`]: the `tokenizers` pipeline plus the model's metadata.
pub(crate) struct BaseParts {
    pub tokenizer: tokenizers::Tokenizer,
    pub specials: SpecialIds,
    pub chat_template: Option<String>,
    /// Ids the model knows (rows of its embedding), including special tokens.
    pub vocab_size: usize,
}
