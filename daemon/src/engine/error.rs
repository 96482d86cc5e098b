//! Why the engine refused or failed a request: one enum, so the server can map every failure to
//! an HTTP status and an OpenAI error type in one place (`server::error`).

use std::sync::Arc;

use crate::guide::GuideError;
use crate::kv::KvError;
use crate::model::ModelError;
use crate::sched::{AbortReason, AddError};
use crate::tokenizer::TokenizerError;

/// A refusal at admission or a failure while generating. Cheap to clone: a failed batch sends
/// the same error to every request in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// Every admission place is taken (running plus queued); retry later.
    #[error("the server is at capacity ({in_flight} requests in flight)")]
    Overloaded { in_flight: usize },
    /// SIGTERM arrived: no new requests.
    #[error("the server is shutting down")]
    Draining,
    /// The engine thread is gone (it panicked or shut down).
    #[error("the engine has stopped")]
    Stopped,
    /// The engine fails every iteration (a lasting device or KV error); it is marked not ready.
    #[error("the engine is failing; retry on another replica")]
    Unhealthy,
    /// The scheduler refused the request.
    #[error("{0}")]
    Refused(AddError),
    /// The scheduler gave up on the request (it can never fit).
    #[error("{0}")]
    Aborted(AbortReason),
    #[error("KV cache: {0}")]
    Kv(Arc<KvError>),
    #[error("forward pass: {0}")]
    Forward(Arc<ModelError>),
    #[error("detokenizing the output: {0}")]
    Detokenize(Arc<TokenizerError>),
    /// The output constraint (structured outputs) failed while generating.
    #[error("{0}")]
    Guide(Arc<GuideError>),
    /// The engine thread panicked while the request was in flight.
    #[error("the engine crashed while generating; the replica restarts")]
    Panicked,
    /// An engine invariant broke (a bug); the message says which.
    #[error("internal engine error: {0}")]
    Internal(String),
}

impl EngineError {
    /// A label for `vllm:request_success_total`-style counters and `fused_*_total{reason}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            EngineError::Overloaded { .. } => "queue_full",
            EngineError::Draining => "draining",
            EngineError::Stopped | EngineError::Panicked => "stopped",
            EngineError::Unhealthy => "unhealthy",
            EngineError::Refused(AddError::QueueFull { .. }) => "queue_full",
            EngineError::Refused(_) | EngineError::Aborted(_) => "invalid",
            EngineError::Kv(_)
            | EngineError::Forward(_)
            | EngineError::Detokenize(_)
            | EngineError::Guide(_)
            | EngineError::Internal(_) => "error",
        }
    }
}

impl From<KvError> for EngineError {
    fn from(error: KvError) -> Self {
        EngineError::Kv(Arc::new(error))
    }
}

impl From<ModelError> for EngineError {
    fn from(error: ModelError) -> Self {
        EngineError::Forward(Arc::new(error))
    }
}

impl From<GuideError> for EngineError {
    fn from(error: GuideError) -> Self {
        EngineError::Guide(Arc::new(error))
    }
}

impl From<TokenizerError> for EngineError {
    fn from(error: TokenizerError) -> Self {
        EngineError::Detokenize(Arc::new(error))
    }
}
