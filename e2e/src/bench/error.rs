//! The one error type of the benchmark client's library code.

use std::path::PathBuf;

/// What can go wrong while preparing, running or reporting a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid option: {0}")]
    BadOption(String),
    #[error("dataset {path}: {reason}")]
    Dataset { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("server at {url}: {reason}")]
    Server { url: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("result file {path}: {reason}")]
    Result { path: PathBuf, reason: String },
    #[error("plot {name}: {reason}")]
    Plot { name: String, reason: String },
}

impl BenchError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
