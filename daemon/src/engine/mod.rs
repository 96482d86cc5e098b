//! The engine: one thread that owns the model, the KV memory and the scheduler, runs one batch
//! per iteration, samples, turns tokens into text, decides when each request ends, and streams
//! the output back to the async server through one channel per request.
//!
//! - `handle`: the async side (admission permits, submit with acknowledgement, the stream that
//!   cancels its request when dropped);
//! - `worker`: the thread's loop (commands, schedule, forward, deliver, metrics, health);
//! - `live`: one choice's state and the one place that decides its finish (EOS, stop ids, stop
//!   strings, a complete constrained output, max tokens, context length);
//! - `masks`: the thread that computes constrained choices' token masks while the model runs;
//! - `output`: streaming detokenisation with stop strings held back (`stop`);
//! - [`PrefixHasher`]: the chained token hashes that key the KV prefix cache;
//! - `stats`: the per-request intervals vLLM's metrics report, and a request's choices until
//!   the last one ends;
//! - [`EngineError`]: every refusal and failure, typed.
//!
//! Must not: block the async runtime (the server only sends commands and reads events), parse
//! HTTP or format responses (the server's job), or let the scheduler decide a finish (it only
//! frees what the engine reports finished).

mod error;
mod handle;
mod live;
mod masks;
mod output;
mod prefix;
mod stats;
mod stop;
mod worker;

pub use error::EngineError;
pub use handle::{EngineHandle, Permit, RequestStream};
pub use prefix::PrefixHasher;
pub use worker::{EngineParts, MAX_CONSECUTIVE_FAILURES, spawn};

use crate::guide::Guide;
use crate::model::sampling::{Sampled, SamplingParams};

/// What the server asks the engine to generate: `n` choices of one prompt.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// The request's id (the client's `x-request-id`, or one made up): on every engine log line
    /// about this request.
    pub request_id: String,
    /// The request's span on the server (`Span::none()` outside one): the engine's spans of
    /// its choices are its children, so a trace shows the request end to end.
    pub span: tracing::Span,
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Choices (OpenAI's `n`); choice `i` samples with seed `seed + i`.
    pub n: usize,
    /// Tokens to generate at most per choice (the engine also stops at the context length).
    pub max_new_tokens: usize,
    /// EOS and stop ids are ignored until this many tokens were generated.
    pub min_tokens: usize,
    pub stop_token_ids: Vec<u32>,
    /// Stop strings: the output ends before the first of them (never shown to the client).
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    pub skip_special_tokens: bool,
    /// The output constraint (structured outputs), compiled; each choice follows its own copy.
    pub guide: Option<Guide>,
    /// When the server received the request (TTFT and queue time count from here).
    pub arrival: std::time::Instant,
}

/// Why a choice ended (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS, a stop token id or a stop string.
    Stop,
    /// `max_tokens` or the context length.
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

/// What ended a [`FinishReason::Stop`] other than EOS (vLLM's `stop_reason`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    Token(u32),
    Text(String),
}

/// What the engine streams back for one request, choice by choice (`index`).
#[derive(Debug, Clone)]
pub enum Event {
    /// Text that is final (no stop string can still begin in it) and the tokens sampled since
    /// the last output. `text` may be empty on the last output of a choice.
    Output {
        index: usize,
        text: String,
        tokens: Vec<Sampled>,
    },
    /// The choice ended (after its last output).
    Finished {
        index: usize,
        reason: FinishReason,
        stop_reason: Option<StopReason>,
        completion_tokens: usize,
        /// Prompt tokens whose K/V came from the prefix cache (OpenAI's
        /// `usage.prompt_tokens_details.cached_tokens`).
        cached_tokens: usize,
    },
    /// The engine gave up on the choice.
    Failed { index: usize, error: EngineError },
}
