//! Each scheduler transition, driven by hand: admit, chunk, finish, preempt, cancel, abort.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::kv::KvBudget;

#[test]
fn admit_prefills_whole_prompt_then_decodes() {
    let mut scheduler = sarathi(512);
    let mut kv = big_kv();
    scheduler.add(request(1, 100, 3)).expect("queued");
    assert_eq!(scheduler.stats().waiting, 1);

    let (batch, finished) = step(&mut scheduler, &mut kv);
    assert_eq!(summary(&batch), vec![(1, 0, 100, true)]);
    assert!(!batch.items[0].is_decode);
    assert!(finished.is_empty());
    // The whole prompt's pages were claimed at admission: ceil(100 / 16) = 7.
    assert_eq!(kv.pages_held(batch.items[0].slot), Some(7));
    assert_eq!(
        (scheduler.stats().waiting, scheduler.stats().running),
        (0, 1)
    );

    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(summary(&batch), vec![(1, 100, 1, true)]);
    assert!(batch.items[0].is_decode);
    let (batch, finished) = step(&mut scheduler, &mut kv);
    assert_eq!(summary(&batch), vec![(1, 101, 1, true)]);
    // Prefill sampled token 1, two decodes tokens 2 and 3 = max_new_tokens.
    assert_eq!(finished, vec![RequestId(1)]);
    assert_eq!(kv.free_pages(), kv.total_pages());
    assert!(scheduler.is_idle());
    assert_eq!(scheduler.stats().finished_total, 1);
}

#[test]
fn long_prompt_is_chunked_to_the_budget_left_after_decodes() {
    let mut scheduler = sarathi(256);
    let mut kv = big_kv();
    scheduler.add(request(1, 10, 100)).expect("queued");
    scheduler.add(request(2, 10, 100)).expect("queued");
    step(&mut scheduler, &mut kv);
    scheduler.add(request(3, 1000, 5)).expect("queued");

    let mut chunks = Vec::new();
    loop {
        let (batch, _) = step(&mut scheduler, &mut kv);
        assert!(batch.total_tokens() <= 256);
        // Decodes come first and are never stalled by the prefill.
        assert_eq!(
            summary(&batch)[..2]
                .iter()
                .map(|item| item.0)
                .collect::<Vec<_>>(),
            [1, 2]
        );
        assert!(batch.items[..2].iter().all(|item| item.is_decode));
        let prefill = batch
            .items
            .iter()
            .find(|item| item.id == RequestId(3))
            .copied();
        let Some(prefill) = prefill else { break };
        chunks.push((prefill.start_pos, prefill.num_tokens, prefill.samples));
        if prefill.samples {
            break;
        }
    }
    assert_eq!(
        chunks,
        vec![
            (0, 254, false),
            (254, 254, false),
            (508, 254, false),
            (762, 238, true)
        ]
    );
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(summary(&batch)[2], (3, 1000, 1, true));
}

#[test]
fn new_requests_fill_the_budget_in_arrival_order() {
    let mut scheduler = sarathi(300);
    let mut kv = big_kv();
    for (id, prompt) in [(1, 200), (2, 200), (3, 50)] {
        scheduler.add(request(id, prompt, 10)).expect("queued");
    }
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(summary(&batch), vec![(1, 0, 200, true), (2, 0, 100, false)]);
    // Next: decode of 1, rest of 2, then 3 (FCFS).
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(
        summary(&batch),
        vec![(1, 200, 1, true), (2, 100, 100, true), (3, 0, 50, true)]
    );
}

#[test]
fn max_num_seqs_limits_admission() {
    let mut scheduler = Scheduler::new(config(Policy::Sarathi, 512, 2)).expect("valid");
    let mut kv = big_kv();
    for id in 1..=3 {
        scheduler.add(request(id, 10, 2)).expect("queued");
    }
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(batch.items.len(), 2);
    assert_eq!(scheduler.stats().waiting, 1);
    let (_, finished) = step(&mut scheduler, &mut kv);
    assert_eq!(finished, vec![RequestId(1), RequestId(2)]);
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(summary(&batch), vec![(3, 0, 10, true)]);
}

#[test]
fn engine_finish_releases_the_slot_early() {
    let mut scheduler = sarathi(512);
    let mut kv = big_kv();
    scheduler.add(request(1, 40, 1000)).expect("queued");
    scheduler.add(request(2, 40, 1000)).expect("queued");
    step(&mut scheduler, &mut kv);
    let (_, finished) = step_finishing(&mut scheduler, &mut kv, &[2]);
    assert_eq!(finished, vec![RequestId(2)]);
    assert_eq!(kv.slots_in_use(), 1);
    // A finished id is unknown afterwards: cancel is a no-op, the id may be reused.
    assert!(!scheduler.cancel(RequestId(2)));
    scheduler.add(request(2, 5, 1)).expect("id free again");
}

#[test]
fn decode_growth_preempts_the_newest_and_recomputes_it() {
    // 4 pages of 16 tokens. Two sequences of 16-token prompts hold one page each; growth past
    // 32 tokens each needs more pages than the pool has.
    let mut scheduler = sarathi(512);
    let mut kv = SimKv::new(16, 4, 4, 1024).expect("valid");
    scheduler.add(request(1, 16, 40)).expect("queued");
    scheduler.add(request(2, 16, 40)).expect("queued");
    let mut samples: HashMap<u64, usize> = HashMap::new();
    let mut preempted = Vec::new();
    let mut recompute_items = Vec::new();
    let mut finished = Vec::new();
    for _ in 0..200 {
        if scheduler.is_idle() {
            break;
        }
        let (batch, done) = step(&mut scheduler, &mut kv);
        preempted.extend(batch.preempted.iter().map(|id| id.0));
        for item in &batch.items {
            if item.samples {
                *samples.entry(item.id.0).or_default() += 1;
            }
            if item.start_pos == 0 && !preempted.is_empty() && item.id.0 == 2 {
                recompute_items.push((item.start_pos, item.num_tokens));
            }
        }
        finished.extend(done.iter().map(|id| id.0));
    }
    // Request 2 (the newest) was preempted when request 1 needed its third page.
    assert_eq!(preempted.first(), Some(&2));
    assert_eq!(
        scheduler.stats().preemptions_total as usize,
        preempted.len()
    );
    // Its recompute covers its prompt plus every token it had generated (17 tokens: it held
    // 2 pages = 32 tokens when 1 needed a third page at 33 tokens).
    assert_eq!(recompute_items.first().map(|item| item.0), Some(0));
    assert!(
        recompute_items
            .first()
            .map(|item| item.1)
            .is_some_and(|tokens| tokens > 16)
    );
    // Every request still produced exactly its max_new_tokens tokens: nothing lost or repeated.
    assert_eq!(samples.get(&1), Some(&40));
    assert_eq!(samples.get(&2), Some(&40));
    finished.sort_unstable();
    assert_eq!(finished, vec![1, 2]);
    assert_eq!(kv.free_pages(), 4);
}

#[test]
fn a_lone_request_that_outgrows_the_pool_is_aborted_not_looped() {
    let mut scheduler = sarathi(512);
    let mut kv = SimKv::new(16, 2, 4, 1024).expect("valid");
    scheduler.add(request(1, 30, 100)).expect("queued");
    let mut aborted = Vec::new();
    let mut preempted = 0;
    for _ in 0..100 {
        if scheduler.is_idle() {
            break;
        }
        let (batch, _) = step(&mut scheduler, &mut kv);
        preempted += batch.preempted.len();
        aborted.extend(batch.aborted);
    }
    assert!(scheduler.is_idle(), "must end, not loop");
    assert_eq!(preempted, 1);
    assert_eq!(
        aborted,
        vec![(RequestId(1), AbortReason::ExceedsKvCapacity { tokens: 33 })]
    );
    assert_eq!(kv.free_pages(), 2);
}

#[test]
fn a_prompt_larger_than_the_pool_waits_while_others_run_then_is_aborted() {
    let mut scheduler = sarathi(512);
    let mut kv = SimKv::new(16, 4, 4, 1024).expect("valid");
    scheduler.add(request(1, 16, 3)).expect("queued");
    scheduler.add(request(2, 100, 3)).expect("queued");
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(summary(&batch), vec![(1, 0, 16, true)]);
    assert!(
        batch.aborted.is_empty(),
        "another request may free pages: wait"
    );
    step(&mut scheduler, &mut kv);
    let (_, finished) = step(&mut scheduler, &mut kv);
    assert_eq!(finished, vec![RequestId(1)]);
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert!(batch.items.is_empty());
    assert_eq!(
        batch.aborted,
        vec![(RequestId(2), AbortReason::ExceedsKvCapacity { tokens: 100 })]
    );
    assert!(scheduler.is_idle());
    assert_eq!(scheduler.stats().aborted_total, 1);
}

#[test]
fn context_beyond_the_slot_capacity_aborts_with_the_kv_reason() {
    let mut scheduler = sarathi(512);
    let mut kv = SimKv::new(16, 100, 4, 20).expect("valid");
    scheduler.add(request(1, 18, 10)).expect("queued");
    let mut aborted = Vec::new();
    let mut samples = 0;
    while !scheduler.is_idle() {
        let (batch, _) = step(&mut scheduler, &mut kv);
        samples += batch.items.iter().filter(|item| item.samples).count();
        aborted.extend(batch.aborted);
    }
    // Positions 0..20 fit: the prefill samples token 1 and the decodes at positions 18 and 19
    // sample tokens 2 and 3; position 20 does not fit.
    assert_eq!(samples, 3);
    assert_eq!(aborted.len(), 1);
    assert!(
        matches!(&aborted[0], (RequestId(1), AbortReason::Kv(message)) if message.contains("exceeds"))
    );
    assert_eq!(kv.free_pages(), 100);
}

#[test]
fn cancel_while_queued_leaves_at_once() {
    let mut scheduler = sarathi(512);
    let mut kv = big_kv();
    scheduler.add(request(1, 10, 5)).expect("queued");
    assert!(scheduler.cancel(RequestId(1)));
    assert!(!scheduler.cancel(RequestId(1)), "second cancel is a no-op");
    assert_eq!(scheduler.stats().waiting, 0);
    assert!(
        !scheduler.is_idle(),
        "the cancellation is still to be reported"
    );
    let batch = scheduler.schedule(&mut kv).expect("schedulable");
    assert_eq!(batch.cancelled, vec![RequestId(1)]);
    assert!(batch.items.is_empty());
    scheduler.complete(&mut kv, &[]);
    assert!(scheduler.is_idle());
}

#[test]
fn cancel_between_prefill_chunks_returns_pages_next_iteration() {
    let mut scheduler = sarathi(128);
    let mut kv = big_kv();
    scheduler.add(request(1, 1000, 5)).expect("queued");
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(summary(&batch), vec![(1, 0, 128, false)]);
    assert!(kv.free_pages() < kv.total_pages());
    assert!(scheduler.cancel(RequestId(1)));
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(batch.cancelled, vec![RequestId(1)]);
    assert!(batch.items.is_empty());
    assert_eq!(kv.free_pages(), kv.total_pages());
    assert_eq!(scheduler.stats().cancelled_total, 1);
    assert!(scheduler.is_idle());
}

#[test]
fn cancel_while_decoding_and_while_in_flight() {
    let mut scheduler = sarathi(512);
    let mut kv = big_kv();
    scheduler.add(request(1, 10, 50)).expect("queued");
    scheduler.add(request(2, 10, 50)).expect("queued");
    step(&mut scheduler, &mut kv);
    step(&mut scheduler, &mut kv);
    // 1 is cancelled between iterations; 2 while its batch is in flight.
    assert!(scheduler.cancel(RequestId(1)));
    let batch = scheduler.schedule(&mut kv).expect("schedulable");
    assert_eq!(batch.cancelled, vec![RequestId(1)]);
    assert_eq!(summary(&batch), vec![(2, 11, 1, true)]);
    assert!(scheduler.cancel(RequestId(2)));
    let finished = scheduler.complete(
        &mut kv,
        &[StepOutcome {
            id: RequestId(2),
            finished: true,
        }],
    );
    assert!(
        finished.is_empty(),
        "a cancelled request is not reported finished"
    );
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(batch.cancelled, vec![RequestId(2)]);
    assert_eq!(kv.free_pages(), kv.total_pages());
    assert!(scheduler.is_idle());
}

#[test]
fn preempted_request_waits_at_the_head_of_the_queue() {
    let mut scheduler = sarathi(512);
    let mut kv = SimKv::new(16, 3, 4, 1024).expect("valid");
    scheduler.add(request(1, 16, 30)).expect("queued");
    scheduler.add(request(2, 16, 30)).expect("queued");
    step(&mut scheduler, &mut kv);
    scheduler.add(request(3, 16, 30)).expect("queued");
    let mut order = Vec::new();
    while !scheduler.is_idle() {
        let (batch, _) = step(&mut scheduler, &mut kv);
        for item in batch.items.iter().filter(|item| item.start_pos == 0) {
            order.push(item.id.0);
        }
    }
    // 2 was preempted when 1 grew; its recompute starts before 3, which arrived earlier than
    // the preemption but queued behind it.
    assert_eq!(order[..2], [2, 3], "order {order:?}");
    assert!(scheduler.stats().preemptions_total >= 1);
}

#[test]
fn prefill_first_stalls_decodes_for_whole_prompts() {
    let mut scheduler = Scheduler::new(config(Policy::PrefillFirst, 2048, 4)).expect("valid");
    let mut kv = big_kv();
    scheduler.add(request(1, 10, 50)).expect("queued");
    step(&mut scheduler, &mut kv);
    scheduler.add(request(2, 1500, 5)).expect("queued");
    scheduler.add(request(3, 600, 5)).expect("queued");
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(
        summary(&batch),
        vec![(2, 0, 1500, true)],
        "no decode, no chunk"
    );
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(summary(&batch), vec![(3, 0, 600, true)]);
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert!(batch.items.iter().all(|item| item.is_decode));
    assert_eq!(batch.items.len(), 3);
    // A prompt longer than the whole budget can never run whole: aborted with the reason.
    scheduler.add(request(4, 3000, 5)).expect("queued");
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(
        batch.aborted,
        vec![(
            RequestId(4),
            AbortReason::ExceedsTokenBudget {
                tokens: 3000,
                budget: 2048
            }
        )]
    );
}

#[test]
fn decode_first_batches_decodes_with_whole_prompts() {
    let mut scheduler = Scheduler::new(config(Policy::DecodeFirst, 1024, 4)).expect("valid");
    let mut kv = big_kv();
    scheduler.add(request(1, 10, 50)).expect("queued");
    step(&mut scheduler, &mut kv);
    scheduler.add(request(2, 900, 5)).expect("queued");
    scheduler.add(request(3, 200, 5)).expect("queued");
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(summary(&batch), vec![(1, 10, 1, true), (2, 0, 900, true)]);
    // 3 does not fit the 123 tokens left and is not chunked: it waits.
    let (batch, _) = step(&mut scheduler, &mut kv);
    assert_eq!(
        summary(&batch),
        vec![(1, 11, 1, true), (2, 900, 1, true), (3, 0, 200, true)]
    );
}

#[test]
fn kv_lookahead_holds_the_next_step_and_never_preempts() {
    let mut scheduler = sarathi(512);
    let mut kv = SimKv::new(16, 2, 4, 1024).expect("valid").with_lookahead(1);
    scheduler.add(request(1, 16, 5)).expect("queued");
    let batch = scheduler.schedule(&mut kv).expect("schedulable");
    // The prefill needs 1 page; the decode after it writes position 16: page 2 held now.
    assert_eq!(kv.pages_held(batch.items[0].slot), Some(2));
    // A full pool: the look-ahead takes nothing, nothing is preempted.
    let mut tiny = SimKv::new(16, 1, 4, 1024).expect("valid").with_lookahead(4);
    let mut other = sarathi(512);
    other.add(request(9, 16, 5)).expect("queued");
    let batch = other.schedule(&mut tiny).expect("schedulable");
    assert!(batch.preempted.is_empty());
    assert_eq!(tiny.free_pages(), 0);
}

#[test]
fn add_refuses_bad_requests_and_a_full_queue() {
    let mut scheduler = Scheduler::new(SchedulerConfig {
        max_queue: 2,
        ..config(Policy::Sarathi, 512, 4)
    })
    .expect("valid");
    assert_eq!(
        scheduler.add(request(1, 0, 5)),
        Err(AddError::EmptyPrompt(RequestId(1)))
    );
    scheduler.add(request(1, 5, 5)).expect("queued");
    assert_eq!(
        scheduler.add(request(1, 5, 5)),
        Err(AddError::Duplicate(RequestId(1)))
    );
    scheduler.add(request(2, 5, 5)).expect("queued");
    assert_eq!(
        scheduler.add(request(3, 5, 5)),
        Err(AddError::QueueFull { max: 2 })
    );
}

#[test]
fn out_of_order_calls_are_refused_or_ignored() {
    let mut scheduler = sarathi(512);
    let mut kv = big_kv();
    assert!(scheduler.complete(&mut kv, &[]).is_empty());
    assert!(!scheduler.cancel(RequestId(42)));
    scheduler.add(request(1, 5, 5)).expect("queued");
    scheduler.schedule(&mut kv).expect("first");
    assert_eq!(scheduler.schedule(&mut kv), Err(SchedError::BatchInFlight));
    // Outcomes for ids not in the batch are ignored.
    let finished = scheduler.complete(
        &mut kv,
        &[StepOutcome {
            id: RequestId(77),
            finished: true,
        }],
    );
    assert!(finished.is_empty());
    assert!(scheduler.complete(&mut kv, &[]).is_empty());
}

#[test]
fn auto_budget_grows_from_min_once_iterations_are_measured() {
    let auto = SchedulerConfig {
        token_budget: TokenBudget::Auto {
            tbt_target: Duration::from_millis(50),
            min: 128,
            max: 4096,
        },
        ..config(Policy::Sarathi, 512, 4)
    };
    let mut scheduler = Scheduler::new(auto).expect("valid");
    let mut kv = big_kv();
    scheduler.add(request(1, 3000, 2)).expect("queued");
    let batch = scheduler.schedule(&mut kv).expect("schedulable");
    assert_eq!(batch.token_budget, 128);
    scheduler.complete(&mut kv, &[]);
    for step in 0..20usize {
        let prefill = 64 * (step % 8);
        let decode = 1 + step % 3;
        scheduler.observe_iteration(
            prefill,
            decode,
            0.004 + 30e-6 * prefill as f64 + 1e-4 * decode as f64,
        );
    }
    let batch = scheduler.schedule(&mut kv).expect("schedulable");
    // (50 − 4) ms at 30 µs per token: 1533 tokens.
    assert_eq!(batch.token_budget, 1533);
    assert_eq!(batch.total_tokens(), 1533);
    assert_eq!(scheduler.stats().last_token_budget, 1533);
    assert!(scheduler.cost_estimate().is_some());
}

#[test]
fn stats_count_budget_use() {
    let mut scheduler = sarathi(100);
    let mut kv = big_kv();
    scheduler.add(request(1, 10, 20)).expect("queued");
    step(&mut scheduler, &mut kv);
    scheduler.add(request(2, 300, 2)).expect("queued");
    step(&mut scheduler, &mut kv);
    let stats = scheduler.stats();
    assert_eq!(
        (stats.last_prefill_tokens, stats.last_decode_tokens),
        (99, 1)
    );
    assert_eq!(
        (stats.prefill_tokens_total, stats.decode_tokens_total),
        (109, 1)
    );
    assert_eq!((stats.batches_total, stats.last_token_budget), (2, 100));
    assert_eq!((stats.running, stats.waiting), (2, 0));
}
