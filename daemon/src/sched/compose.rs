//! Composing one iteration's batch under the token budget, per policy: decode growth with
//! preemption, prefill chunks of running sequences, admission of waiting requests, KV lookahead.
//!
//! Must not: advance any sequence's progress (that happens in `complete`, once the engine ran
//! the batch) or leave a request without a slot, a queue place, or a reported end.

use super::batch::{AbortReason, Batch, BatchItem};
use super::config::Policy;
use super::request::{Phase, Seq};
use super::scheduler::{SchedError, Scheduler};
use crate::kv::{KvBudget, KvError};

/// How prefills are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefill {
    /// Any chunk size that fits the budget left (Sarathi).
    Chunked,
    /// The whole remaining prefill in one iteration, or not at all (vLLM v0, Orca).
    Whole,
}

/// Tokens of budget left while a batch is composed.
#[derive(Debug)]
struct Room {
    budget: usize,
    used: usize,
}

impl Room {
    fn left(&self) -> usize {
        self.budget - self.used
    }
}

impl Scheduler {
    /// Composes the next iteration's batch and reserves its KV (one step ahead of the engine,
    /// which waits for each item's pages, `end_pos()` tokens, right before the forward pass).
    ///
    /// Fails only when the previous batch was not [`Scheduler::complete`]d.
    pub fn schedule(&mut self, kv: &mut dyn KvBudget) -> Result<Batch, SchedError> {
        if self.in_flight.is_some() {
            return Err(SchedError::BatchInFlight);
        }
        let mut batch = Batch {
            cancelled: std::mem::take(&mut self.cancelled_waiting),
            ..Batch::default()
        };
        self.sweep_cancelled(kv, &mut batch);

        let decodes = self
            .running
            .iter()
            .filter(|seq| seq.phase == Phase::Decoding)
            .count();
        let mut room = Room {
            budget: self.budget.budget_for(decodes),
            used: 0,
        };
        batch.token_budget = room.budget;

        match self.config.policy {
            Policy::Sarathi => {
                self.schedule_decodes(kv, &mut batch, &mut room);
                self.schedule_running_prefills(kv, &mut batch, &mut room, Prefill::Chunked);
                if batch.preempted.is_empty() {
                    self.admit_waiting(kv, &mut batch, &mut room, Prefill::Chunked);
                }
            }
            Policy::DecodeFirst => {
                self.schedule_decodes(kv, &mut batch, &mut room);
                self.schedule_running_prefills(kv, &mut batch, &mut room, Prefill::Whole);
                if batch.preempted.is_empty() {
                    self.admit_waiting(kv, &mut batch, &mut room, Prefill::Whole);
                }
            }
            Policy::PrefillFirst => {
                self.schedule_running_prefills(kv, &mut batch, &mut room, Prefill::Whole);
                self.admit_waiting(kv, &mut batch, &mut room, Prefill::Whole);
                if batch.items.is_empty() {
                    self.schedule_decodes(kv, &mut batch, &mut room);
                }
            }
        }
        self.record_batch(&batch);
        self.in_flight = Some(batch.items.clone());
        Ok(batch)
    }

    /// Cancelled running requests leave now and return their pages.
    fn sweep_cancelled(&mut self, kv: &mut dyn KvBudget, batch: &mut Batch) {
        let (cancelled, kept): (Vec<Seq>, Vec<Seq>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|seq| seq.cancelled);
        self.running = kept;
        for seq in cancelled {
            self.leave(kv, &seq);
            self.stats.cancelled_total += 1;
            batch.cancelled.push(seq.id());
        }
    }

    /// Every decoding sequence gets one token, oldest admission first. When its page cannot be
    /// had, the most recently admitted running sequence is preempted (possibly itself).
    fn schedule_decodes(&mut self, kv: &mut dyn KvBudget, batch: &mut Batch, room: &mut Room) {
        let mut index = 0;
        while index < self.running.len() && room.left() > 0 {
            let seq = &self.running[index];
            let Some(slot) = seq.slot.filter(|_| seq.phase == Phase::Decoding) else {
                index += 1;
                continue;
            };
            let start_pos = seq.computed;
            match kv.reserve(slot, start_pos + 1) {
                Ok(()) => {
                    batch.items.push(BatchItem {
                        id: seq.id(),
                        slot,
                        start_pos,
                        num_tokens: 1,
                        samples: true,
                        is_decode: true,
                    });
                    room.used += 1;
                    index += 1;
                }
                Err(KvError::OutOfPages { .. }) => {
                    // Free the newest admission and retry; the newest may be this one.
                    let victim = self.running.len() - 1;
                    self.preempt(kv, victim, batch);
                }
                Err(error) => {
                    let seq = self.running.remove(index);
                    self.abort(
                        kv,
                        seq,
                        AbortReason::Kv(error.to_string()),
                        &mut batch.aborted,
                    );
                }
            }
        }
    }

    /// Sequence `index` of `running` loses its slot and goes to the head of the queue.
    fn preempt(&mut self, kv: &mut dyn KvBudget, index: usize, batch: &mut Batch) {
        let mut seq = self.running.remove(index);
        if let Some(slot) = seq.slot {
            kv.release(slot);
        }
        seq.reset_for_recompute();
        batch.preempted.push(seq.id());
        self.stats.preemptions_total += 1;
        self.waiting.push_front(seq);
    }

    /// Prefills already holding a slot continue (their pages were reserved at admission).
    fn schedule_running_prefills(
        &mut self,
        kv: &mut dyn KvBudget,
        batch: &mut Batch,
        room: &mut Room,
        prefill: Prefill,
    ) {
        let mut index = 0;
        while index < self.running.len() && room.left() > 0 {
            let seq = &self.running[index];
            let Some(slot) = seq.slot.filter(|_| seq.phase == Phase::Prefilling) else {
                index += 1;
                continue;
            };
            let remaining = seq.remaining();
            let num_tokens = match prefill {
                Prefill::Chunked => remaining.min(room.left()),
                Prefill::Whole if remaining <= room.left() => remaining,
                Prefill::Whole => {
                    index += 1;
                    continue;
                }
            };
            let item = BatchItem {
                id: seq.id(),
                slot,
                start_pos: seq.computed,
                num_tokens,
                samples: num_tokens == remaining,
                is_decode: false,
            };
            match kv.reserve(slot, item.end_pos()) {
                Ok(()) => {
                    batch.items.push(item);
                    room.used += num_tokens;
                    index += 1;
                }
                Err(error) => {
                    let seq = self.running.remove(index);
                    self.abort(
                        kv,
                        seq,
                        AbortReason::Kv(error.to_string()),
                        &mut batch.aborted,
                    );
                }
            }
        }
    }

    /// Waiting requests, in order, while the head's whole known length can get KV, fewer than
    /// `max_num_seqs` run and budget is left. A request that cannot fit even with nothing else
    /// running is aborted with its reason rather than left to block the queue forever.
    fn admit_waiting(
        &mut self,
        kv: &mut dyn KvBudget,
        batch: &mut Batch,
        room: &mut Room,
        prefill: Prefill,
    ) {
        while let Some(head) = self.waiting.front() {
            if self.running.len() >= self.config.max_num_seqs || room.left() == 0 {
                return;
            }
            let tokens = head.known_len();
            if prefill == Prefill::Whole && tokens > room.budget {
                self.abort_head(
                    kv,
                    AbortReason::ExceedsTokenBudget {
                        tokens,
                        budget: room.budget,
                    },
                    batch,
                );
                continue;
            }
            if prefill == Prefill::Whole && tokens > room.left() {
                return;
            }
            if !head.with_hashes(|hashes| kv.can_admit_prefixed(tokens, hashes)) {
                if self.running.is_empty() {
                    self.abort_head(kv, AbortReason::ExceedsKvCapacity { tokens }, batch);
                    continue;
                }
                return;
            }
            let prefixed = head.request.prefix.is_some();
            let (slot, cached) = match head.with_hashes(|hashes| kv.admit_prefixed(tokens, hashes))
            {
                Ok(admitted) => admitted,
                Err(KvError::OutOfPages { .. } | KvError::NoFreeSlot(_))
                    if !self.running.is_empty() =>
                {
                    return;
                }
                Err(error) => {
                    self.abort_head(kv, AbortReason::Kv(error.to_string()), batch);
                    continue;
                }
            };
            let Some(mut seq) = self.waiting.pop_front() else {
                kv.release(slot);
                return;
            };
            if prefixed {
                self.stats.prefix_query_tokens_total += tokens as u64;
                self.stats.prefix_hit_tokens_total += cached as u64;
            }
            // The cached tokens are in KV already; the prefill starts after them.
            let remaining = tokens - cached;
            let num_tokens = remaining.min(room.left());
            batch.items.push(BatchItem {
                id: seq.id(),
                slot,
                start_pos: cached,
                num_tokens,
                samples: num_tokens == remaining,
                is_decode: false,
            });
            room.used += num_tokens;
            seq.slot = Some(slot);
            seq.computed = cached;
            seq.phase = Phase::Prefilling;
            self.running.push(seq);
        }
    }

    fn abort_head(&mut self, kv: &mut dyn KvBudget, reason: AbortReason, batch: &mut Batch) {
        if let Some(seq) = self.waiting.pop_front() {
            self.abort(kv, seq, reason, &mut batch.aborted);
        }
    }

    fn record_batch(&mut self, batch: &Batch) {
        let prefill_tokens = batch.prefill_tokens();
        let decode_tokens = batch.decode_tokens();
        self.stats.batches_total += 1;
        self.stats.last_token_budget = batch.token_budget;
        self.stats.last_prefill_tokens = prefill_tokens;
        self.stats.last_decode_tokens = decode_tokens;
        self.stats.prefill_tokens_total += prefill_tokens as u64;
        self.stats.decode_tokens_total += decode_tokens as u64;
    }
}
