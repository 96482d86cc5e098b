//! Accounting tests: growth per layout, reuse, trimming, look-ahead, eager admission.

use super::*;
use crate::kv::config::{KvConfig, KvLayout};

/// 2 layers × 2 KV heads × 64 × f32: 512 bytes per (layer, K|V) token, 4096 tokens per page.
fn accounting(layout: KvLayout, pool_pages: usize, lookahead_tokens: usize) -> Accounting {
    let mut config = KvConfig::for_model(2, 2, 64, 4);
    config.layout = layout;
    config.max_seqs = 4;
    config.max_context_len = 3 * 4096;
    config.pool_bytes = pool_pages * config.page_bytes;
    Accounting::new(
        Geometry::new(&config).expect("valid test shape"),
        false,
        lookahead_tokens,
    )
}

#[test]
fn per_layer_growth_maps_one_page_per_run() {
    let mut acct = accounting(KvLayout::PerLayer, 16, 0);
    let (slot, plan) = acct.admit(10).expect("room for one page per run");
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
    let (first, _) = acct.admit(3 * 1024).expect("room");
    acct.free(first).expect("live slot");
    let (again, plan) = acct.admit(1024).expect("room");
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
    let (a, _) = acct.admit(3 * tokens_per_level).expect("3 pages");
    let (b, _) = acct.admit(3 * tokens_per_level).expect("3 pages");
    acct.free(a).expect("live");
    acct.free(b).expect("live");
    let (c, _) = acct.admit(3 * tokens_per_level).expect("best fit: a");
    assert_eq!(c, a);
    let (d, plan) = acct.admit(tokens_per_level).expect("b holds 3 pages");
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
    let (slot, plan) = acct.admit(100).expect("room");
    assert_eq!((plan.need_levels, plan.lookahead_levels), (1, 2));
    assert_eq!(
        acct.counts().pages_available,
        1,
        "look-ahead page is surplus"
    );
    let (other, plan) = acct.admit(100).expect("trims the look-ahead page");
    assert_ne!(other, slot);
    assert_eq!((plan.need_levels, plan.lookahead_levels), (1, 1));
}

#[test]
fn prefill_chunks_map_the_next_chunk_ahead() {
    let mut acct = accounting(KvLayout::Interleaved, 12, 0);
    let (slot, plan) = acct.admit(1024).expect("room");
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
    let (again, _) = acct.admit(10).expect("room");
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
    let mut acct = Accounting::new(Geometry::new(&config).expect("valid"), false, 0);
    let (_, plan) = acct.admit(150 * 1024).expect("150 pages");
    let levels: Vec<usize> = plan.jobs.iter().map(|job| job.levels).collect();
    assert_eq!(levels, vec![64, 128, 150]);
    let mut per_layer = accounting(KvLayout::PerLayer, 16, 0);
    let (_, plan) = per_layer.admit(3 * 4096).expect("12 pages");
    assert_eq!(plan.jobs.len(), 1, "few levels: one access call per run");
}

#[test]
fn eager_admission_claims_the_whole_context() {
    let mut config = KvConfig::for_model(2, 2, 64, 4);
    config.max_seqs = 4;
    config.max_context_len = 3 * 4096;
    config.pool_bytes = 16 * config.page_bytes;
    let mut acct = Accounting::new(Geometry::new(&config).expect("valid"), true, 0);
    let (_, plan) = acct.admit(1).expect("12 pages");
    assert_eq!(plan.need_levels, 3);
    assert!(!acct.can_admit(1), "4 pages left, 12 needed");
}

#[test]
fn waiting_beyond_the_reservation_is_an_error() {
    let mut acct = accounting(KvLayout::PerLayer, 16, 0);
    let (slot, _) = acct.admit(10).expect("room");
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
