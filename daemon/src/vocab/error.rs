//! The vocabulary patch's error type.

use std::path::PathBuf;

use crate::tokenizer::TokenizerError;

/// Errors of building, storing, loading and applying AdaptiVocab patches.
#[derive(Debug, thiserror::Error)]
pub enum VocabError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid vocabulary patch: {reason}")]
    BadArtifact { path: PathBuf, reason: String },
    #[error(
        "unsupported vocabulary patch format version {found} in {path} (this build reads version {supported})"
    )]
    UnsupportedVersion {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error(
        "vocabulary patch digest mismatch: expected {expected}, the artifact at {path} is {actual}"
    )]
    DigestMismatch {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "the vocabulary patch was built for base tokenizer {patch_base} ({patch_source}), but the model's tokenizer is {model_base} ({model_source})"
    )]
    BaseMismatch {
        patch_base: String,
        patch_source: String,
        model_base: String,
        model_source: String,
    },
    #[error("invalid build options: {0}")]
    BadOptions(String),
    #[error("the corpus is empty: no non-blank line in {0}")]
    EmptyCorpus(String),
    #[error("model weights: {0}")]
    Weights(String),
    #[error("embedding matrix has {len} values, not {rows} rows × {hidden}")]
    BadMatrix {
        len: usize,
        rows: usize,
        hidden: usize,
    },
}

impl VocabError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// Result alias for this module.
pub type Result<T, E = VocabError> = std::result::Result<T, E>;
