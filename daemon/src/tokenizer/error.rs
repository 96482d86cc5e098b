//! The tokenizer's error type: every way loading, encoding, decoding or templating can fail.

use std::path::PathBuf;

/// Errors of the base tokenizer ([`super::Codec`]) and its loaders.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("GGUF metadata key `{key}` is missing")]
    MissingKey { key: &'static str },
    #[error("GGUF metadata key `{key}` has the wrong type or value: {reason}")]
    BadKey { key: &'static str, reason: String },
    #[error(
        "unsupported tokenizer model `{0}` in GGUF metadata (`tokenizer.ggml.model`); supported: gpt2, llama"
    )]
    UnsupportedModel(String),
    #[error(
        "unsupported pre-tokenizer `{0}` in GGUF metadata (`tokenizer.ggml.pre`); supported: {supported}",
        supported = super::gguf::SUPPORTED_PRE_TOKENIZERS.join(", ")
    )]
    UnsupportedPreTokenizer(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizers(String),
    #[error("token id {id} is out of range: the vocabulary has {vocab_size} ids")]
    UnknownId { id: u32, vocab_size: usize },
    #[error("the model has no chat template (none in its GGUF metadata or tokenizer_config.json)")]
    NoChatTemplate,
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error(
        "the vocabulary patch was built for base tokenizer {patch_base}, but this model's tokenizer is {model_base}"
    )]
    PatchMismatch {
        patch_base: String,
        model_base: String,
    },
    #[error("the vocabulary patch does not fit this tokenizer: {0}")]
    BadPatch(String),
}

impl TokenizerError {
    /// Wraps an error of the `tokenizers` crate (a boxed `dyn Error`, not `Send`-friendly to keep).
    pub(crate) fn tokenizers(err: impl std::fmt::Display) -> Self {
        Self::Tokenizers(err.to_string())
    }
}

/// Result alias for this module.
pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;
