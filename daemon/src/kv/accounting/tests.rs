//! Accounting tests: growth per layout, reuse, trimming, look-ahead, eager admission.

use super::*;
use crate::kv::config::{KvConfig, KvLayout};

/// Admits a sequence with no prefix to look up.
fn admit(acct: &mut Accounting, tokens: usize) -> Result<(SlotId, Plan), KvError> {
    acct.admit(tokens, &[])
        .map(|admitted| (admitted.slot, admitted.plan))
}

/// 2 layers × 2 KV heads × 64 × f32: 512 bytes per (layer, K|V) token, 4096 tokens per page.
fn accounting(layout: KvLayout, pool_pages: usize, lookahead_tokens: usize) -> Accounting {
    let mut config = KvConfig::for_model(2, 2, 64, 4);
    config.layout = layout;
    config.max_seqs = 4;
    config.max_context_len = 3 * 4096;
    config.pool_bytes = pool_pages * config.page_bytes;
    config.lookahead_tokens = lookahead_tokens;
    Accounting::new(Geometry::new(&config).expect("valid test shape"), &config)
}

#[test]
fn per_layer_growth_maps_one_page_per_run() {
    let mut acct = accounting(KvLayout::PerLayer, 16, 0);
    let (slot, plan) = admit(&mut acct, 10).expect("room for one page per run");
    assert_eq!(plan.ops().len(), 4, "2 layers × K,V runs");
    assert!(
        plan.ops()
            .into_iter()
            .all(|op| matches!(op, PageOp::Map { pages, .. } if pages.len() == 1))
    );
    assert_eq!(plan.need_levels, 1);
    let plan = acct.reserve(slot, 4096).expect("still one page per run");
    assert_eq!(
        (plan.need_levels, plan.lookahead_levels),
        (1, 2),
        "a 4086-token step maps one more ahead"
    );
    let plan = acct.reserve(slot, 4097).expect("second level");
    assert_eq!(plan.need_levels, 2);
    assert!(plan.jobs.is_empty(), "the look-ahead already mapped it");
    assert_eq!(acct.counts().pages_held, 8);
}

#[test]
fn freed_slot_is_reused_without_new_pages() {
    let mut acct = accounting(KvLayout::Interleaved, 8, 0);
    let (first, _) = admit(&mut acct, 3 * 1024).expect("room");
    acct.free(first).expect("live slot");
    let (again, plan) = admit(&mut acct, 1024).expect("room");
    assert_eq!(
        again, first,
        "best fit prefers the slot that still holds pages"
    );
    assert!(plan.jobs.is_empty());
}

#[test]
fn shortage_trims_idle_slots_oldest_first() {
    let mut acct = accounting(KvLayout::Interleaved, 6, 0);
    let tokens_per_level = 4096 / 4;
    let (a, _) = admit(&mut acct, 3 * tokens_per_level).expect("3 pages");
    let (b, _) = admit(&mut acct, 3 * tokens_per_level).expect("3 pages");
    acct.free(a).expect("live");
    acct.free(b).expect("live");
    let (c, _) = admit(&mut acct, 3 * tokens_per_level).expect("best fit: a");
    assert_eq!(c, a);
    let (d, plan) = admit(&mut acct, tokens_per_level).expect("b holds 3 pages");
    assert_eq!(d, b);
    assert!(plan.jobs.is_empty());
    let error = acct
        .reserve(c, 6 * tokens_per_level)
        .expect_err("pool holds 6 pages");
    assert!(
        matches!(error, KvError::OutOfPages { needed: 3, free: 2 }),
        "{error}"
    );
    let plan = acct
        .reserve(d, 2 * tokens_per_level)
        .expect("d's own surplus");
    assert!(plan.jobs.is_empty());
    acct.free(d).expect("live");
    let plan = acct
        .reserve(c, 3 * tokens_per_level + 1)
        .expect("trims idle d");
    assert!(
        matches!(*plan.ops()[0], PageOp::Unmap { count: 1, .. }),
        "{:?}",
        plan.jobs
    );
    assert_eq!(acct.slot_levels(d), Some(2));
}

#[test]
fn lookahead_takes_only_free_pages() {
    let mut acct = accounting(KvLayout::Interleaved, 2, 3000);
    let (slot, plan) = admit(&mut acct, 100).expect("room");
    assert_eq!((plan.need_levels, plan.lookahead_levels), (1, 2));
    assert_eq!(
        acct.counts().pages_available,
        1,
        "look-ahead page is surplus"
    );
    let (other, plan) = admit(&mut acct, 100).expect("trims the look-ahead page");
    assert_ne!(other, slot);
    assert_eq!((plan.need_levels, plan.lookahead_levels), (1, 1));
}

#[test]
fn prefill_chunks_map_the_next_chunk_ahead() {
    let mut acct = accounting(KvLayout::Interleaved, 12, 0);
    let (slot, plan) = admit(&mut acct, 1024).expect("room");
    assert_eq!(
        (plan.need_levels, plan.lookahead_levels),
        (1, 1),
        "no growth seen yet"
    );
    let plan = acct.reserve(slot, 3 * 1024).expect("room");
    assert_eq!(
        (plan.need_levels, plan.lookahead_levels),
        (3, 5),
        "next chunk of 2048 mapped ahead"
    );
    let plan = acct.reserve(slot, 3 * 1024 + 1).expect("room");
    assert!(plan.jobs.is_empty(), "decode step inside look-ahead");
    acct.free(slot).expect("live");
    let (again, _) = admit(&mut acct, 10).expect("room");
    let plan = acct.reserve(again, 11).expect("room");
    assert!(
        plan.jobs.is_empty(),
        "a new sequence does not inherit the old growth"
    );
}

#[test]
fn long_prompts_are_mapped_in_steps_so_early_chunks_are_ready_first() {
    let mut config = KvConfig::for_model(2, 2, 64, 4);
    config.layout = KvLayout::Interleaved;
    config.max_seqs = 2;
    config.max_context_len = 200 * 1024;
    config.pool_bytes = 200 * config.page_bytes;
    config.lookahead_tokens = 0;
    let mut acct = Accounting::new(Geometry::new(&config).expect("valid"), &config);
    let (_, plan) = admit(&mut acct, 150 * 1024).expect("150 pages");
    let levels: Vec<usize> = plan.jobs.iter().map(|job| job.levels).collect();
    assert_eq!(levels, vec![64, 128, 150]);
    let mut per_layer = accounting(KvLayout::PerLayer, 16, 0);
    let (_, plan) = admit(&mut per_layer, 3 * 4096).expect("12 pages");
    assert_eq!(plan.jobs.len(), 1, "few levels: one access call per run");
}

#[test]
fn eager_admission_claims_the_whole_context() {
    let mut config = KvConfig::for_model(2, 2, 64, 4);
    config.max_seqs = 4;
    config.max_context_len = 3 * 4096;
    config.pool_bytes = 16 * config.page_bytes;
    config.eager = true;
    config.lookahead_tokens = 0;
    let mut acct = Accounting::new(Geometry::new(&config).expect("valid"), &config);
    let (_, plan) = admit(&mut acct, 1).expect("12 pages");
    assert_eq!(plan.need_levels, 3);
    assert!(!acct.can_admit(1, &[]), "4 pages left, 12 needed");
}

#[test]
fn waiting_beyond_the_reservation_is_an_error() {
    let mut acct = accounting(KvLayout::PerLayer, 16, 0);
    let (slot, _) = admit(&mut acct, 10).expect("room");
    assert!(
        matches!(acct.ready_ticket(slot, 0), Ok(0)),
        "no page needed"
    );
    acct.mark_ready(slot, 1, 1, 0);
    assert!(matches!(acct.ready_ticket(slot, 10), Ok(1)));
    assert!(matches!(
        acct.ready_ticket(slot, 5000),
        Err(KvError::NotReserved { .. })
    ));
    assert!(matches!(
        acct.ready_ticket(3, 1),
        Err(KvError::UnknownSlot(3))
    ));
}

/// Tokens per page of [`sharing`].
const T: usize = 1024;

/// Interleaved, 1024 tokens per page (`T`), prefix caching on, no look-ahead.
fn sharing(pool_pages: usize) -> Accounting {
    let mut config = KvConfig::for_model(2, 2, 64, 4);
    config.layout = KvLayout::Interleaved;
    config.max_seqs = 4;
    config.max_context_len = 6 * T;
    config.pool_bytes = pool_pages * config.page_bytes;
    config.lookahead_tokens = 0;
    config.prefix_caching = true;
    Accounting::new(Geometry::new(&config).expect("valid test shape"), &config)
}

/// Stand-in chained hashes: `seq`'s own after `diverge` tokens.
fn chain(len: usize, diverge: usize, seq: u128) -> Vec<crate::kv::TokenHash> {
    (0..len as u128)
        .map(|i| {
            if (i as usize) < diverge {
                i + 1
            } else {
                seq << 64 | (i + 1)
            }
        })
        .collect()
}

#[test]
fn a_returning_prefix_lands_in_its_idle_slot_and_maps_nothing() {
    let mut acct = sharing(8);
    let first = chain(3 * T, 3 * T, 0);
    let admitted = acct.admit(3 * T, &first).expect("room");
    acct.publish(admitted.slot, 3 * T, &first)
        .expect("live slot");
    assert_eq!(acct.counts().pages_prefix, 3);
    acct.free(admitted.slot).expect("live");
    assert_eq!(
        acct.counts().pages_cached,
        3,
        "the prefix outlives its sequence"
    );
    // Same first 2.5 pages, then its own: two pages shared in place, the third copied.
    let second = chain(3 * T, 2 * T + T / 2, 1);
    let again = acct.admit(3 * T, &second).expect("room");
    assert_eq!(
        (again.slot, again.cached_tokens),
        (admitted.slot, 2 * T + T / 2)
    );
    let ops = again.plan.ops();
    assert!(
        !ops.iter()
            .any(|op| matches!(op, PageOp::Map { shared: true, .. })),
        "levels 0 and 1 are already mapped there: {ops:?}"
    );
    assert!(
        matches!(ops.first(), Some(PageOp::Unmap { count: 1, .. })),
        "the shared third page leaves the row: {ops:?}"
    );
    assert!(
        ops.iter()
            .any(|op| matches!(op, PageOp::Copy { bytes, .. } if *bytes == (T / 2) * 2048)),
        "half of the third page is copied: {ops:?}"
    );
    let counts = acct.counts();
    assert_eq!((counts.pages_held, counts.pages_prefix), (3, 3));
}

#[test]
fn cached_prefixes_give_way_before_admission_fails() {
    let mut acct = sharing(4);
    let cached = chain(3 * T, 3 * T, 0);
    let first = acct.admit(3 * T, &cached).expect("room");
    acct.publish(first.slot, 3 * T, &cached).expect("live");
    acct.free(first.slot).expect("live");
    let other = chain(4 * T, 0, 1);
    assert_eq!(acct.counts().pages_available, 4);
    assert!(acct.can_admit(3 * T + 1, &other), "the cache is evictable");
    let admitted = acct.admit(3 * T + 1, &other).expect("evicts the cache");
    assert_eq!(admitted.cached_tokens, 0);
    let counts = acct.counts();
    assert_eq!(
        (counts.pages_prefix, counts.pages_held, counts.pages_free),
        (0, 4, 0)
    );
    // Now nothing is left to evict: the next admission is refused, and changes nothing.
    assert!(!acct.can_admit(1, &[]));
    assert!(matches!(
        admit(&mut acct, 1),
        Err(KvError::OutOfPages { .. })
    ));
    assert_eq!(acct.counts(), counts);
}

#[test]
fn eviction_takes_the_least_recently_released_deepest_level_first() {
    let mut acct = sharing(6);
    let a = chain(2 * T + 1, 2 * T + 1, 0);
    let b = chain(2 * T + 1, 0, 1);
    for hashes in [&a, &b] {
        let admitted = acct.admit(2 * T + 1, hashes).expect("room");
        acct.publish(admitted.slot, 2 * T + 1, hashes)
            .expect("live");
        acct.free(admitted.slot).expect("live");
    }
    acct.trim_idle();
    assert_eq!(acct.counts().pages_prefix, 4);
    let cached = |acct: &Accounting, hashes: &[crate::kv::TokenHash]| {
        acct.index
            .lookup(&acct.geometry, hashes, hashes.len())
            .tokens
    };
    assert_eq!((cached(&acct, &a), cached(&acct, &b)), (2 * T, 2 * T));
    // Needing 2 of the 4 cached pages: a's two go (released first).
    let fresh = acct.admit(4 * T, &chain(4 * T, 0, 2)).expect("evicts two");
    assert_eq!((cached(&acct, &a), cached(&acct, &b)), (0, 2 * T));
    acct.free(fresh.slot).expect("live");
    acct.trim_idle();
    // One more than the free pages: b's deepest level goes, its first stays.
    acct.admit(4 * T + 1, &chain(4 * T + 1, 0, 3))
        .expect("evicts one");
    assert_eq!(cached(&acct, &b), T);
}
