//! The engine: one thread that owns the model, the KV memory and the scheduler, runs one batch
//! per iteration, and streams sampled tokens back to the async server through channels.
//!
//! Must not: block the async runtime (the server only sends commands and reads token events),
//! parse HTTP, or detokenize (text is the server's job).

mod handle;
mod live;
mod worker;

pub use handle::{AdmissionError, EngineHandle, Permit, RequestStream};
pub use worker::{EngineParts, spawn};

use crate::model::sampling::{Sampled, SamplingParams};

/// What the server asks the engine to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Tokens to generate at most (the server already bounded it by the context).
    pub max_new_tokens: usize,
    /// EOS and stop ids are ignored until this many tokens were generated.
    pub min_tokens: usize,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// When the server received the request (TTFT and queue time count from here).
    pub arrival: std::time::Instant,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop token id.
    Stop,
    /// `max_new_tokens` or the context length.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// What the engine streams back for one request.
#[derive(Debug, Clone)]
pub enum Event {
    Token(Sampled),
    /// The last event of a successful generation (after its last token).
    Finished(FinishReason),
    /// The engine gave up on the request; the message is safe to show the client.
    Failed {
        message: String,
        overloaded: bool,
    },
}
