//! What the engine tests share: an engine thread started on its parts, the Sarathi scheduler
//! they run it with, and a greedy request that ignores EOS.

use std::sync::Arc;
use std::time::Instant;

use fused_daemon::engine::{self, EngineHandle, EngineParts, GenerateRequest};
use fused_daemon::metrics::Metrics;
use fused_daemon::model::sampling::SamplingParams;
use fused_daemon::sched::{Policy, Scheduler, SchedulerConfig, TokenBudget};

/// A running engine: its handle, its metrics and its thread.
pub struct Engine {
    pub handle: EngineHandle,
    pub metrics: Arc<Metrics>,
    pub thread: std::thread::JoinHandle<()>,
}

impl Engine {
    /// Starts the engine thread on `parts`.
    pub fn spawn(parts: EngineParts) -> Self {
        let metrics = parts.metrics.clone();
        let (handle, thread) = engine::spawn(parts).expect("the engine starts");
        Self {
            handle,
            metrics,
            thread,
        }
    }
}

/// A Sarathi scheduler with a fixed token budget.
pub fn sarathi(budget: usize, max_num_seqs: usize, max_queue: usize) -> Scheduler {
    Scheduler::new(SchedulerConfig {
        token_budget: TokenBudget::Fixed(budget),
        max_num_seqs,
        max_queue,
        policy: Policy::Sarathi,
    })
    .expect("a valid scheduler configuration")
}

/// A greedy request for `prompt` that runs `max_new_tokens` (EOS ignored), one choice.
pub fn greedy_request(
    request_id: String,
    prompt: Vec<u32>,
    sampling: SamplingParams,
    max_new_tokens: usize,
) -> GenerateRequest {
    GenerateRequest {
        request_id,
        span: tracing::Span::none(),
        prompt,
        sampling,
        n: 1,
        max_new_tokens,
        min_tokens: 0,
        stop_token_ids: vec![],
        stop: vec![],
        ignore_eos: true,
        skip_special_tokens: true,
        guide: None,
        arrival: Instant::now(),
    }
}
