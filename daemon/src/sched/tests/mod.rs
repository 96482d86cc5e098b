//! Scheduler tests against the simulated KV pool: one module per kind.
//! `transitions`: admit, chunk, finish, preempt, cancel, abort, each policy, by hand.
//! `invariants`: randomized call sequences checked against an outside model (proptest).

mod invariants;
mod transitions;

use super::*;

pub(super) fn config(policy: Policy, budget: usize, max_num_seqs: usize) -> SchedulerConfig {
    SchedulerConfig {
        token_budget: TokenBudget::Fixed(budget),
        max_num_seqs,
        max_queue: 64,
        policy,
        decode_lookahead: 0,
    }
}

pub(super) fn sarathi(budget: usize) -> Scheduler {
    Scheduler::new(config(Policy::Sarathi, budget, 4)).expect("valid config")
}

pub(super) fn big_kv() -> SimKv {
    SimKv::new(16, 1000, 8, 4096).expect("valid")
}

pub(super) fn request(id: u64, prompt_len: usize, max_new_tokens: usize) -> SeqRequest {
    SeqRequest {
        id: RequestId(id),
        prompt_len,
        max_new_tokens,
    }
}

/// Runs one iteration in which the engine finishes nobody early; returns the batch and the
/// requests that finished (by reaching `max_new_tokens`).
pub(super) fn step(scheduler: &mut Scheduler, kv: &mut SimKv) -> (Batch, Vec<RequestId>) {
    step_finishing(scheduler, kv, &[])
}

pub(super) fn step_finishing(
    scheduler: &mut Scheduler,
    kv: &mut SimKv,
    finish: &[u64],
) -> (Batch, Vec<RequestId>) {
    let batch = scheduler.schedule(kv).expect("no batch in flight");
    let outcomes: Vec<StepOutcome> = batch
        .items
        .iter()
        .filter(|item| item.samples)
        .map(|item| StepOutcome {
            id: item.id,
            finished: finish.contains(&item.id.0),
        })
        .collect();
    let finished = scheduler.complete(kv, &outcomes);
    (batch, finished)
}

pub(super) fn summary(batch: &Batch) -> Vec<(u64, usize, usize, bool)> {
    batch
        .items
        .iter()
        .map(|item| (item.id.0, item.start_pos, item.num_tokens, item.samples))
        .collect()
}
