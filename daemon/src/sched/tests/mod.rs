//! Scheduler tests against the simulated KV pool: one module per kind.
//! `transitions`: admit, chunk, finish, preempt, cancel, abort, each policy, by hand.
//! `invariants`: randomized call sequences checked against an outside model (proptest).
//! `prefix`: prefix caching on the real KV manager.

mod invariants;
mod prefix;
mod transitions;

use super::*;

pub(super) fn config(policy: Policy, budget: usize, max_num_seqs: usize) -> SchedulerConfig {
    SchedulerConfig {
        token_budget: TokenBudget::Fixed(budget),
        max_num_seqs,
        max_queue: 64,
        policy,
    }
}

pub(super) fn sarathi(budget: usize) -> Scheduler {
    Scheduler::new(config(Policy::Sarathi, budget, 4)).expect("valid config")
}

pub(super) fn big_kv() -> SimKv {
    SimKv::new(16, 1000, 8, 4096).expect("valid")
}

thread_local! {
    /// The stand-in engine of these tests: per request id, (tokens it generates, generated so
    /// far). A test thread runs one test, so each test has its own.
    static LENGTHS: std::cell::RefCell<std::collections::HashMap<u64, (usize, usize)>> =
        Default::default();
}

/// A request of `prompt_len` tokens that the stand-in engine ends after `max_new_tokens`.
pub(super) fn request(id: u64, prompt_len: usize, max_new_tokens: usize) -> SeqRequest {
    LENGTHS.with(|lengths| lengths.borrow_mut().insert(id, (max_new_tokens, 0)));
    SeqRequest::new(RequestId(id), prompt_len)
}

/// Runs one iteration in which the stand-in engine ends requests only at their length; returns
/// the batch and the requests that finished.
pub(super) fn step(scheduler: &mut Scheduler, kv: &mut SimKv) -> (Batch, Vec<RequestId>) {
    step_finishing(scheduler, kv, &[])
}

/// As [`step`], and the engine also ends the requests in `finish` (EOS, stop strings).
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
        .map(|item| {
            let reached_length = LENGTHS.with(|lengths| {
                let mut lengths = lengths.borrow_mut();
                let entry = lengths.entry(item.id.0).or_insert((usize::MAX, 0));
                entry.1 += 1;
                entry.1 >= entry.0
            });
            StepOutcome {
                id: item.id,
                finished: reached_length || finish.contains(&item.id.0),
            }
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
