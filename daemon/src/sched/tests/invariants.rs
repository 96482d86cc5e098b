//! Randomized invariants: any sequence of add / cancel / iterate, under any policy and pool,
//! keeps the budget, never skips or repeats a position, leaks no page, and ends every request.

use std::collections::{HashMap, HashSet};

use proptest::prelude::*;

use super::*;
use crate::kv::KvBudget;

#[derive(Debug, Clone)]
enum Op {
    Add {
        prompt_len: usize,
        max_new_tokens: usize,
    },
    /// Cancel the request added `back` additions ago (may be finished or unknown by then).
    Cancel { back: usize },
    /// One iteration; the engine finishes sampling items whose bit in `finish_bits` is set.
    Step { finish_bits: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..150, 1usize..100)
            .prop_map(|(prompt_len, max_new_tokens)| Op::Add { prompt_len, max_new_tokens }),
        1 => (0usize..8).prop_map(|back| Op::Cancel { back }),
        6 => any::<u64>().prop_map(|bits| Op::Step { finish_bits: bits & bits.rotate_left(7) }),
    ]
}

#[derive(Debug, Clone)]
struct Setup {
    policy: Policy,
    max_num_seqs: usize,
    budget_extra: usize,
    tokens_per_page: usize,
    pool_tokens: usize,
    slots: usize,
    slot_capacity: usize,
    lookahead: usize,
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        prop_oneof![
            Just(Policy::Sarathi),
            Just(Policy::PrefillFirst),
            Just(Policy::DecodeFirst)
        ],
        1usize..12,
        0usize..400,
        1usize..16,
        16usize..600,
        1usize..10,
        30usize..400,
        0usize..3,
    )
        .prop_map(
            |(
                policy,
                max_num_seqs,
                budget_extra,
                tokens_per_page,
                pool_tokens,
                slots,
                slot_capacity,
                lookahead,
            )| Setup {
                policy,
                max_num_seqs,
                budget_extra,
                tokens_per_page,
                pool_tokens,
                slots,
                slot_capacity,
                lookahead,
            },
        )
}

/// What a correct scheduler must have done to one request, tracked from the outside.
#[derive(Debug, Default, Clone)]
struct Expect {
    prompt_len: usize,
    max_new_tokens: usize,
    generated: usize,
    /// Positions whose K/V the engine computed in the current slot.
    computed: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Finished,
    Cancelled,
    Aborted,
}

/// How each request ended; a request ends at most once.
#[derive(Debug, Default)]
struct Ends(HashMap<RequestId, End>);

impl Ends {
    fn record(&mut self, id: RequestId, end: End) {
        let before = self.0.insert(id, end);
        assert_eq!(before, None, "{id} ended twice");
    }
}

/// One iteration, checked against the model; returns whether the batch did anything.
fn checked_step(
    scheduler: &mut Scheduler,
    kv: &mut SimKv,
    expect: &mut HashMap<RequestId, Expect>,
    ends: &mut Ends,
    finish_bits: u64,
) -> bool {
    let batch = scheduler.schedule(kv).expect("never in flight here");
    assert!(
        batch.total_tokens() <= batch.token_budget,
        "budget exceeded: {batch:?}"
    );
    let ids: HashSet<_> = batch.items.iter().map(|item| item.id).collect();
    let slots: HashSet<_> = batch.items.iter().map(|item| item.slot).collect();
    assert_eq!(ids.len(), batch.items.len(), "a request twice in one batch");
    assert_eq!(slots.len(), batch.items.len(), "a slot twice in one batch");
    for id in &batch.cancelled {
        ends.record(*id, End::Cancelled);
    }
    for (id, _) in &batch.aborted {
        ends.record(*id, End::Aborted);
    }
    for id in &batch.preempted {
        if let Some(model) = expect.get_mut(id) {
            model.computed = 0;
        }
    }
    let mut outcomes = Vec::new();
    for (index, item) in batch.items.iter().enumerate() {
        let model = expect
            .get_mut(&item.id)
            .expect("only known requests are scheduled");
        assert!(item.num_tokens > 0);
        assert_eq!(
            item.start_pos, model.computed,
            "{item:?} skips or repeats positions"
        );
        let known = model.prompt_len + model.generated;
        assert!(
            item.end_pos() <= known,
            "{item:?} runs past the known tokens"
        );
        assert_eq!(item.samples, item.end_pos() == known);
        assert!(
            kv.pages_held(item.slot)
                .is_some_and(|pages| pages * kv.tokens_per_page() >= item.end_pos())
        );
        if item.is_decode {
            assert_eq!(item.num_tokens, 1);
        }
        model.computed = item.end_pos();
        if item.samples {
            model.generated += 1;
            assert!(model.generated <= model.max_new_tokens);
            // The stand-in engine ends a request at its length or when the bits say so.
            outcomes.push(StepOutcome {
                id: item.id,
                finished: model.generated == model.max_new_tokens
                    || (finish_bits >> (index % 64)) & 1 == 1,
            });
        }
    }
    let held: usize = (0..16).filter_map(|slot| kv.pages_held(slot)).sum();
    assert_eq!(
        held + kv.free_pages(),
        kv.total_pages(),
        "pages leaked or double-counted"
    );
    assert_eq!(
        kv.slots_in_use(),
        scheduler.stats().running,
        "a slot without a running request"
    );
    for id in scheduler.complete(kv, &outcomes) {
        ends.record(id, End::Finished);
    }
    !batch.items.is_empty()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn any_call_sequence_keeps_the_invariants(setup in setup(), ops in prop::collection::vec(op(), 1..120)) {
        let config = SchedulerConfig {
            token_budget: TokenBudget::Fixed(setup.max_num_seqs + setup.budget_extra),
            max_num_seqs: setup.max_num_seqs,
            max_queue: 16,
            policy: setup.policy,
        };
        let mut scheduler = Scheduler::new(config).expect("valid by construction");
        let pages = (setup.pool_tokens / setup.tokens_per_page).max(1);
        let mut kv = SimKv::new(setup.tokens_per_page, pages, setup.slots, setup.slot_capacity)
            .expect("valid by construction")
            .with_lookahead(setup.lookahead);
        let mut expect: HashMap<RequestId, Expect> = HashMap::new();
        let mut ends = Ends::default();
        let mut added: Vec<RequestId> = Vec::new();
        for (next_id, op) in (0u64..).zip(ops) {
            match op {
                Op::Add { prompt_len, max_new_tokens } => {
                    let id = RequestId(next_id);
                    if scheduler.add(SeqRequest::new(id, prompt_len)).is_ok() {
                        added.push(id);
                        expect.insert(id, Expect { prompt_len, max_new_tokens, ..Expect::default() });
                    }
                }
                Op::Cancel { back } => {
                    if let Some(&id) = added.iter().rev().nth(back) {
                        scheduler.cancel(id);
                    }
                }
                Op::Step { finish_bits } => {
                    checked_step(&mut scheduler, &mut kv, &mut expect, &mut ends, finish_bits);
                }
            }
        }
        // Drain: without new work the scheduler must reach idle (no deadlock, no livelock).
        let bound = 20 * (added.len() + 1) * 450;
        let mut iterations = 0;
        while !scheduler.is_idle() {
            checked_step(&mut scheduler, &mut kv, &mut expect, &mut ends, 0);
            iterations += 1;
            prop_assert!(iterations < bound, "no progress after {iterations} iterations");
        }
        for id in &added {
            prop_assert!(ends.0.contains_key(id), "{} neither finished, cancelled nor aborted", id);
            if ends.0[id] == End::Finished {
                prop_assert!(expect[id].generated >= 1, "{} finished without a token", id);
            }
        }
        prop_assert_eq!(ends.0.len(), added.len());
        prop_assert_eq!(kv.free_pages(), kv.total_pages(), "KV leaked");
        prop_assert_eq!(kv.slots_in_use(), 0);
    }
}
