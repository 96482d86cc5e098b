//! The scheduler's state and its life-cycle transitions: add, cancel, complete, counters.
//! Composing a batch lives in `compose.rs`.
//!
//! Must not: see token contents, run the model, or keep KV pages past a request's life.

use std::collections::{HashSet, VecDeque};

use super::batch::{AbortReason, BatchItem, StepOutcome};
use super::budget::{BudgetControl, CostEstimate};
use super::config::{ConfigError, SchedulerConfig};
use super::request::{Phase, RequestId, Seq, SeqRequest};
use crate::kv::KvBudget;

/// Why a request was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    #[error("the queue is full ({max} requests waiting)")]
    QueueFull { max: usize },
    #[error("{0} is already queued or running")]
    Duplicate(RequestId),
    #[error("{0} has an empty prompt")]
    EmptyPrompt(RequestId),
}

/// A call the scheduler cannot serve in its current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    #[error("the previous batch has not been completed yet")]
    BatchInFlight,
}

/// Plain counters for metrics (the engine maps them to Prometheus series).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedStats {
    /// Requests waiting for admission (new or preempted).
    pub waiting: usize,
    /// Requests holding KV (prefilling or decoding).
    pub running: usize,
    pub preemptions_total: u64,
    pub batches_total: u64,
    pub finished_total: u64,
    pub cancelled_total: u64,
    pub aborted_total: u64,
    pub prefill_tokens_total: u64,
    pub decode_tokens_total: u64,
    /// The last batch's budget and how much of it prefill and decode tokens used.
    pub last_token_budget: usize,
    pub last_prefill_tokens: usize,
    pub last_decode_tokens: usize,
    /// Tokens of admitted requests looked up in the prefix cache (vLLM's
    /// `prefix_cache_queries`), and how many of them were found there (`prefix_cache_hits`).
    pub prefix_query_tokens_total: u64,
    pub prefix_hit_tokens_total: u64,
}

/// Sarathi-Serve scheduler; see the [`crate::sched`] module documentation for the protocol.
#[derive(Debug)]
pub struct Scheduler {
    pub(super) config: SchedulerConfig,
    pub(super) budget: BudgetControl,
    /// Admission order: new requests at the back, preempted ones back at the front.
    pub(super) waiting: VecDeque<Seq>,
    /// Holding a slot, oldest admission first (the back is preempted first).
    pub(super) running: Vec<Seq>,
    /// Ids in `waiting` or `running`.
    pub(super) live: HashSet<RequestId>,
    /// Items of the batch handed out and not completed yet.
    pub(super) in_flight: Option<Vec<BatchItem>>,
    /// Cancelled while waiting (no KV held): reported with the next batch.
    pub(super) cancelled_waiting: Vec<RequestId>,
    pub(super) stats: SchedStats,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Scheduler {
            budget: BudgetControl::new(config.token_budget),
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            live: HashSet::new(),
            in_flight: None,
            cancelled_waiting: Vec::new(),
            stats: SchedStats::default(),
        })
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Queues a request (at the back). The engine keeps its tokens; the scheduler only lengths.
    pub fn add(&mut self, request: SeqRequest) -> Result<(), AddError> {
        if request.prompt_len == 0 {
            return Err(AddError::EmptyPrompt(request.id));
        }
        if self.live.contains(&request.id) {
            return Err(AddError::Duplicate(request.id));
        }
        if self.waiting.len() >= self.config.max_queue {
            return Err(AddError::QueueFull {
                max: self.config.max_queue,
            });
        }
        self.live.insert(request.id);
        self.waiting.push_back(Seq::new(request));
        Ok(())
    }

    /// Cancels a request wherever it is. A waiting one leaves at once; a running one leaves at
    /// the next [`Scheduler::schedule`], which returns its pages and lists it in
    /// `Batch::cancelled`. Returns false for an unknown, finished or already cancelled id.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        if let Some(index) = self.waiting.iter().position(|seq| seq.id() == id) {
            self.waiting.remove(index);
            self.live.remove(&id);
            self.cancelled_waiting.push(id);
            self.stats.cancelled_total += 1;
            return true;
        }
        match self
            .running
            .iter_mut()
            .find(|seq| seq.id() == id && !seq.cancelled)
        {
            Some(seq) => {
                seq.cancelled = true;
                true
            }
            None => false,
        }
    }

    /// Applies the results of the batch from the last [`Scheduler::schedule`]: every item's
    /// tokens are now in KV (and published to the prefix cache for a request with hashes); each
    /// sampling item produced one token. A request finishes when its
    /// outcome says so (the engine alone decides when a request ends); its slot is released and
    /// its id returned. A sampling item without an outcome counts as a token produced, not finished;
    /// outcomes for other ids are ignored. Does nothing when no batch is in flight.
    pub fn complete(&mut self, kv: &mut dyn KvBudget, outcomes: &[StepOutcome]) -> Vec<RequestId> {
        let Some(items) = self.in_flight.take() else {
            return Vec::new();
        };
        let mut finished = Vec::new();
        for item in items {
            let Some(index) = self.running.iter().position(|seq| seq.id() == item.id) else {
                continue;
            };
            let seq = &mut self.running[index];
            if seq.cancelled {
                continue;
            }
            seq.computed = item.end_pos();
            if let Some(prefix) = &seq.request.prefix {
                prefix.with(|hashes| kv.publish(item.slot, item.end_pos(), hashes));
            }
            if !item.samples {
                continue;
            }
            seq.generated += 1;
            seq.phase = Phase::Decoding;
            let engine_finished = outcomes
                .iter()
                .any(|outcome| outcome.id == item.id && outcome.finished);
            if engine_finished {
                let seq = self.running.remove(index);
                self.leave(kv, &seq);
                self.stats.finished_total += 1;
                finished.push(item.id);
            }
        }
        finished
    }

    /// Feeds one iteration's measured time to the auto token budget.
    pub fn observe_iteration(&mut self, prefill_tokens: usize, decode_tokens: usize, seconds: f64) {
        self.budget.observe(prefill_tokens, decode_tokens, seconds);
    }

    /// The auto budget's current cost model (`None` until it has enough measurements).
    pub fn cost_estimate(&self) -> Option<CostEstimate> {
        self.budget.estimate()
    }

    pub fn stats(&self) -> SchedStats {
        SchedStats {
            waiting: self.waiting.len(),
            running: self.running.len(),
            ..self.stats
        }
    }

    /// Nothing waiting, running, in flight, or to report (a cancellation of a waiting request
    /// is reported by the next [`Scheduler::schedule`]).
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty()
            && self.running.is_empty()
            && self.in_flight.is_none()
            && self.cancelled_waiting.is_empty()
    }

    /// Releases the slot of a request that leaves for good.
    pub(super) fn leave(&mut self, kv: &mut dyn KvBudget, seq: &Seq) {
        if let Some(slot) = seq.slot {
            kv.release(slot);
        }
        self.live.remove(&seq.id());
    }

    /// Gives up on a request: pages back, reason recorded for the engine.
    pub(super) fn abort(
        &mut self,
        kv: &mut dyn KvBudget,
        seq: Seq,
        reason: AbortReason,
        aborted: &mut Vec<(RequestId, AbortReason)>,
    ) {
        self.leave(kv, &seq);
        self.stats.aborted_total += 1;
        aborted.push((seq.id(), reason));
    }
}
