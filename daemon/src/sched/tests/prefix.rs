//! Prefix caching through the scheduler, on the real KV manager (CPU backend): a hit starts the
//! prefill after the cached tokens, shared pages count once, generated tokens are published
//! too (a follow-up turn finds them), and the counters add up.

use super::*;
use crate::kv::{KvBudget, KvConfig, KvLayout, KvManager, TokenHash};

/// 4 layers × 8 KV heads × 128 × f32, interleaved: 64 tokens per page; a pool of 64 pages.
fn kv() -> KvManager {
    kv_of(64)
}

fn kv_of(pool_pages: usize) -> KvManager {
    let mut config = KvConfig::for_model(4, 8, 128, 4);
    config.layout = KvLayout::Interleaved;
    config.max_seqs = 4;
    config.max_context_len = 1024;
    config.pool_bytes = pool_pages * config.page_bytes;
    config.prefix_caching = true;
    KvManager::cpu(&config).expect("KV region")
}

/// Stand-in token hashes: shared with `document` for `shared` tokens, then `seq`'s own.
fn chain(len: usize, shared: usize, seq: u128) -> Vec<TokenHash> {
    (0..len as u128)
        .map(|i| match (i as usize) < shared {
            true => i + 1,
            false => seq << 64 | (i + 1),
        })
        .collect()
}

fn prefixed(id: u64, hashes: &[TokenHash]) -> (SeqRequest, PrefixHashes) {
    let prefix = PrefixHashes::new(hashes.to_vec());
    let request = SeqRequest {
        prefix: Some(prefix.clone()),
        ..SeqRequest::new(RequestId(id), hashes.len())
    };
    (request, prefix)
}

/// Runs iterations until `id` has sampled `tokens` tokens (each sample appends an own hash);
/// returns every batch.
fn run(
    scheduler: &mut Scheduler,
    kv: &mut KvManager,
    prefixes: &[(u64, &PrefixHashes)],
    until: (u64, usize),
) -> Vec<Batch> {
    let mut batches = Vec::new();
    let mut sampled: HashMapCount = HashMapCount::default();
    while sampled.get(until.0) < until.1 {
        let batch = scheduler.schedule(kv).expect("no batch in flight");
        assert!(!batch.is_empty(), "stalled before {until:?}");
        for item in &batch.items {
            kv.wait_ready(item.slot, item.end_pos()).expect("mapped");
        }
        let outcomes: Vec<StepOutcome> = (batch.items.iter())
            .filter(|item| item.samples)
            .map(|item| {
                sampled.bump(item.id.0);
                if let Some((_, prefix)) = prefixes.iter().find(|(id, _)| *id == item.id.0) {
                    prefix.push(
                        1 << 100 | u128::from(item.id.0) << 32 | sampled.get(item.id.0) as u128,
                    );
                }
                StepOutcome {
                    id: item.id,
                    finished: false,
                }
            })
            .collect();
        scheduler.complete(kv, &outcomes);
        batches.push(batch);
    }
    batches
}

#[derive(Default)]
struct HashMapCount(std::collections::HashMap<u64, usize>);

impl HashMapCount {
    fn get(&self, id: u64) -> usize {
        self.0.get(&id).copied().unwrap_or(0)
    }

    fn bump(&mut self, id: u64) {
        *self.0.entry(id).or_default() += 1;
    }
}

fn first_item(batches: &[Batch], id: u64) -> BatchItem {
    *batches
        .iter()
        .flat_map(|batch| &batch.items)
        .find(|item| item.id.0 == id)
        .expect("scheduled")
}

#[test]
fn a_hit_starts_the_prefill_after_the_cached_tokens_and_counts_shared_pages_once() {
    let mut scheduler = sarathi(256);
    let mut kv = kv();
    let (a, a_hashes) = prefixed(1, &chain(600, 600, 0));
    scheduler.add(a).expect("queued");
    let batches = run(&mut scheduler, &mut kv, &[(1, &a_hashes)], (1, 1));
    assert_eq!(batches.len(), 3, "600 tokens in chunks of 256");
    assert_eq!(first_item(&batches, 1).start_pos, 0, "nothing cached yet");
    let held_alone = kv.stats().pages_held;

    // B shares A's first 500 tokens: 7 whole pages mapped, the 8th's first 52 tokens copied.
    let (b, b_hashes) = prefixed(2, &chain(600, 500, 2));
    scheduler.add(b).expect("queued");
    let batches = run(
        &mut scheduler,
        &mut kv,
        &[(1, &a_hashes), (2, &b_hashes)],
        (2, 1),
    );
    let item = first_item(&batches, 2);
    assert_eq!(
        (item.start_pos, item.num_tokens, item.samples),
        (500, 100, true)
    );
    let stats = kv.stats();
    assert_eq!(stats.pages_shared, 7);
    assert_eq!(stats.pages_copied_total, 1);
    assert_eq!(
        stats.pages_held - held_alone,
        kv.geometry().pages_for(600 + 1) - 7,
        "B holds only its own pages"
    );

    // C is A's prompt again: its 9 whole pages are cached (A's 10th is not full yet).
    let (c, c_hashes) = prefixed(3, &chain(600, 600, 0));
    scheduler.add(c).expect("queued");
    let batches = run(&mut scheduler, &mut kv, &[(3, &c_hashes)], (3, 1));
    let item = first_item(&batches, 3);
    assert_eq!((item.start_pos, item.num_tokens), (576, 24));
    let stats = scheduler.stats();
    assert_eq!(stats.prefix_query_tokens_total, 1800);
    assert_eq!(stats.prefix_hit_tokens_total, 500 + 576);
}

#[test]
fn a_follow_up_turn_finds_the_generated_tokens_of_the_last_one() {
    let mut scheduler = sarathi(256);
    let mut kv = kv();
    let (a, a_hashes) = prefixed(1, &chain(100, 100, 0));
    scheduler.add(a).expect("queued");
    run(&mut scheduler, &mut kv, &[(1, &a_hashes)], (1, 60));
    // The next turn: the whole conversation so far (prompt + 60 generated tokens, of which the
    // last is not in KV yet), then 30 new tokens.
    let mut turn: Vec<TokenHash> = a_hashes.with(|hashes| hashes.to_vec());
    assert_eq!(turn.len(), 160);
    turn.extend((0..30u128).map(|i| 7 << 64 | i));
    scheduler.cancel(RequestId(1));
    let (b, b_hashes) = prefixed(2, &turn);
    scheduler.add(b).expect("queued");
    let batches = run(&mut scheduler, &mut kv, &[(2, &b_hashes)], (2, 1));
    assert_eq!(
        first_item(&batches, 2).start_pos,
        128,
        "two whole pages of prompt and output were published"
    );
}

#[test]
fn cached_prefixes_are_evicted_before_running_requests_are_preempted() {
    let mut scheduler = sarathi(256);
    let mut kv = kv_of(40);
    // A computes 600 tokens and ends: its 9 whole pages stay cached, no one using them.
    let (a, a_hashes) = prefixed(1, &chain(600, 600, 0));
    scheduler.add(a).expect("queued");
    run(&mut scheduler, &mut kv, &[(1, &a_hashes)], (1, 1));
    scheduler.cancel(RequestId(1));
    assert_eq!(kv.stats().pages_prefix, 9);
    // B and C share nothing with A and need 16 pages each: 32 of the 40, more than the 31 the
    // cache leaves, so a cached page must go, and no running request.
    let (b, b_hashes) = prefixed(2, &chain(1000, 0, 2));
    let (c, c_hashes) = prefixed(3, &chain(1000, 0, 3));
    scheduler.add(b).expect("queued");
    scheduler.add(c).expect("queued");
    let prefixes = [(2, &b_hashes), (3, &c_hashes)];
    run(&mut scheduler, &mut kv, &prefixes, (2, 8));
    run(&mut scheduler, &mut kv, &prefixes, (3, 8));
    assert_eq!(
        scheduler.stats().preemptions_total,
        0,
        "the cache gave way first"
    );
    let stats = kv.stats();
    assert!(
        stats.pages_held >= 32,
        "B and C hold their pages: {}",
        stats.pages_held
    );
    // B and C published their 15 whole pages each; of A's 9, the deepest went.
    assert_eq!(stats.pages_prefix, 2 * 15 + 8);
}

#[test]
fn without_hashes_nothing_is_looked_up_or_published() {
    let mut scheduler = sarathi(256);
    let mut kv = kv();
    scheduler
        .add(SeqRequest::new(RequestId(1), 300))
        .expect("queued");
    run(&mut scheduler, &mut kv, &[], (1, 2));
    assert_eq!(kv.stats().pages_prefix, 0);
    let stats = scheduler.stats();
    assert_eq!(
        (
            stats.prefix_query_tokens_total,
            stats.prefix_hit_tokens_total
        ),
        (0, 0)
    );
    assert!(kv.free_pages() > 0);
}
