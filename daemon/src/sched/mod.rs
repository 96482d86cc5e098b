//! Sarathi-Serve scheduling: per-iteration token budget, decodes first, chunked prefills fill
//! the rest. A pure function of (state, budget, KV accounting) → batch; no model, no threads.
//!
//! Must not: see token contents, run the model, map memory, decide when a request ends (the
//! engine reports every finish in a [`StepOutcome`]; the scheduler only frees its slot), or
//! drop a request silently: every
//! request the scheduler accepted ends as finished (returned by [`Scheduler::complete`]),
//! cancelled (`Batch::cancelled`) or aborted with a reason (`Batch::aborted`).
//!
//! # Protocol (driven by the engine thread)
//!
//! ```text
//! scheduler.add(SeqRequest::new(id, prompt_len))?;   // any time; cancel(id) too
//! loop {
//!     let batch = scheduler.schedule(&mut kv)?;   // reserves KV for every item (+ lookahead)
//!     for item in &batch.items { kv.wait_ready(item.slot, item.end_pos()) }
//!     // forward over tokens[start_pos..end_pos()] of each item's prompt ++ generated tokens,
//!     // sample one token for each item with `samples`
//!     let finished = scheduler.complete(&mut kv, &outcomes);   // releases finished slots
//!     scheduler.observe_iteration(batch.prefill_tokens(), batch.decode_tokens(), seconds);
//! }
//! ```
//!
//! A preempted request (`Batch::preempted`) lost its slot and is recomputed later: its next
//! item starts at position 0 and covers its prompt and every token generated so far; the last
//! chunk of that recompute samples its next token, so no generated token is lost or repeated.
//!
//! # Policies
//!
//! All three admit waiting requests first come, first served, and only while the KV pool can
//! hold the request's whole known length (`KvBudget::can_admit`; the pages are claimed at
//! admission, so prefill chunks never need new pages) and fewer than `max_num_seqs` run. When a
//! decode's next page cannot be had, the most recently admitted running request is preempted
//! (its pages freed, requeued at the head of the queue for recompute), repeatedly, possibly the
//! decoding request itself; no request is admitted in an iteration that preempted. A request
//! that cannot fit even with nothing else running is aborted with [`AbortReason`].
//!
//! - [`Policy::Sarathi`] (Sarathi-Serve, stall-free batching): every running decode gets one
//!   token; then prefills already running, then new requests in arrival order, get chunks of
//!   `min(remaining prompt, budget − tokens already batched)`.
//! - [`Policy::PrefillFirst`] (vLLM v0 without chunked prefill; the daemon's
//!   `--scheduler prefill-first` ablation): if a waiting request can be admitted, the iteration
//!   runs only whole prefills (as many as fit the budget, in order) and every decode stalls;
//!   otherwise it runs all decodes. The budget caps the prefill tokens of one iteration, and a
//!   prefill longer than the whole budget is aborted (vLLM v0's prompt limit), so give this
//!   policy a budget of at least the context length.
//! - [`Policy::DecodeFirst`] (Orca-like iteration-level batching): every running decode gets
//!   one token, then whole prefills of new requests join the same batch while they fit the rest
//!   of the budget. Decodes never stall for a whole iteration, but share it with whole prompts.
//!
//! # Prefix caching
//!
//! A request that carries its token hashes ([`SeqRequest::prefix`]) is admitted through
//! `KvBudget::admit_prefixed`: its slot maps the longest cached prefix they match, the request
//! counts as having computed those tokens, and its first chunk starts right after them (at
//! least its last prompt token is computed: its logits are the first sample). Only its own
//! pages count against the pool; pages it shares are counted once. After every batch,
//! `complete` publishes what each such request has computed (`KvBudget::publish`), so a later
//! request finds it. Admission counts the tokens looked up and the tokens found
//! ([`SchedStats::prefix_query_tokens_total`], [`SchedStats::prefix_hit_tokens_total`]).
//!
//! # KV one step ahead
//!
//! [`Scheduler::schedule`] calls `KvBudget::reserve(slot, end_pos)` for every item before it
//! hands the batch out, so the KV manager's mapper starts mapping while the engine prepares the
//! forward pass; new requests get their whole prompt reserved at admission, so the mapper can
//! map later chunks' pages during earlier chunks. Mapping *further* ahead (the page the next decode
//! step writes) is the KV manager's own look-ahead (`KvConfig::lookahead_tokens`): the scheduler
//! only ever claims what the batch needs.

mod batch;
mod budget;
mod compose;
mod config;
mod request;
mod scheduler;
pub mod sim;
mod sim_kv;

pub use batch::{AbortReason, Batch, BatchItem, StepOutcome};
pub use budget::CostEstimate;
pub use config::{ConfigError, Policy, SchedulerConfig, TokenBudget};
pub use request::{PrefixHashes, RequestId, SeqRequest};
pub use scheduler::{AddError, SchedError, SchedStats, Scheduler};
pub use sim_kv::SimKv;

#[cfg(test)]
mod tests;
