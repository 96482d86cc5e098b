//! The KV suite, run on every backend: property tests of random admit / grow / free / preempt
//! sequences against a model of the accounting, K/V reads and writes across every page
//! boundary, and pool exhaustion with a preemption path. The CPU backend runs it in every
//! `cargo test`; the CUDA backend runs the same functions on a GPU (`e2e/gpu/kv_test.sh`).

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};

use super::{KvBudget, KvConfig, KvError, KvLayout, KvManager, KvStats};
use crate::kv::{KvAccess, SlotId};

mod prefix;

/// Reads and writes region bytes at absolute addresses (host pointers or device addresses).
pub(crate) trait RegionMemory {
    fn write(&self, address: usize, bytes: &[u8]) -> Result<(), KvError>;
    fn read(&self, address: usize, len: usize) -> Result<Vec<u8>, KvError>;
}

/// Host memory: the CPU backend's region.
pub(crate) struct HostMemory;

impl RegionMemory for HostMemory {
    fn write(&self, address: usize, bytes: &[u8]) -> Result<(), KvError> {
        // SAFETY: callers only pass addresses of positions `wait_ready` made ready.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), address as *mut u8, bytes.len()) };
        Ok(())
    }

    fn read(&self, address: usize, len: usize) -> Result<Vec<u8>, KvError> {
        let mut bytes = vec![0; len];
        // SAFETY: as for `write`.
        unsafe { std::ptr::copy_nonoverlapping(address as *const u8, bytes.as_mut_ptr(), len) };
        Ok(bytes)
    }
}

/// A backend under test: how to build a manager and how to touch its memory.
pub(crate) struct Backend<'a> {
    pub(crate) make: &'a dyn Fn(&KvConfig) -> Result<KvManager, KvError>,
    pub(crate) memory: &'a dyn RegionMemory,
}

type Outcome = Result<(), String>;

fn fail<T>(message: impl Into<String>) -> Result<T, String> {
    Err(message.into())
}

fn ensure(condition: bool, message: impl FnOnce() -> String) -> Outcome {
    if condition { Ok(()) } else { Err(message()) }
}

/// Every page is free, cached or held, once.
fn pages_add_up(stats: &KvStats) -> Outcome {
    ensure(
        stats.pages_free + stats.pages_cached + stats.pages_held == stats.pages_total,
        || {
            format!(
                "free {} + cached {} + held {} != total {}",
                stats.pages_free, stats.pages_cached, stats.pages_held, stats.pages_total
            )
        },
    )
}

/// A small shape with many page boundaries: 2 layers × 8 KV heads × f32; `odd` makes tokens
/// straddle pages (head_dim 96: 3072-byte rows do not divide 2 MiB).
pub(crate) fn shape(layout: KvLayout, odd: bool, pool_pages: usize) -> KvConfig {
    let mut config = KvConfig::for_model(2, 8, if odd { 96 } else { 128 }, 4);
    config.layout = layout;
    config.max_seqs = 5;
    config.max_context_len = 2048;
    config.pool_bytes = pool_pages * config.page_bytes;
    config.lookahead_tokens = 0;
    config
}

/// The model the property test checks the manager against: live slots and their tokens.
struct Model {
    config: KvConfig,
    live: BTreeMap<SlotId, usize>,
}

impl Model {
    fn need_pages(&self, manager: &KvManager, tokens: usize) -> usize {
        let geometry = manager.geometry();
        if self.config.eager {
            geometry.pages_per_run * geometry.runs
        } else {
            geometry.pages_for(tokens)
        }
    }

    /// Would every live sequence plus one of `tokens` (replacing `instead`) fit in the pool?
    fn fits(&self, manager: &KvManager, tokens: usize, instead: Option<SlotId>) -> bool {
        let others: usize = (self.live.iter())
            .filter(|(slot, _)| Some(**slot) != instead)
            .map(|(_, &held)| self.need_pages(manager, held))
            .sum();
        tokens <= self.config.max_context_len
            && others + self.need_pages(manager, tokens) <= manager.geometry().pool_pages
    }
}

/// Checks the manager against the model and its own page table after every step.
fn check_state(manager: &KvManager, model: &Model) -> Outcome {
    for (&slot, &tokens) in &model.live {
        manager
            .wait_ready(slot, tokens)
            .map_err(|e| format!("wait_ready({slot}, {tokens}): {e}"))?;
    }
    manager.sync().map_err(|e| format!("sync: {e}"))?;
    let stats = manager.stats();
    let geometry = manager.geometry();
    let live_tokens: usize = model.live.values().sum();
    let need: usize = model
        .live
        .values()
        .map(|&tokens| model.need_pages(manager, tokens))
        .sum();
    ensure(stats.live_seqs == model.live.len(), || {
        format!("live_seqs {} vs {}", stats.live_seqs, model.live.len())
    })?;
    ensure(stats.live_tokens == live_tokens, || {
        format!("live_tokens {} vs {live_tokens}", stats.live_tokens)
    })?;
    pages_add_up(&stats)?;
    ensure(stats.pages_held >= need, || {
        format!("held {} < needed {need}", stats.pages_held)
    })?;
    ensure(
        stats.pages_mapped == stats.pages_held + stats.pages_cached,
        || {
            format!(
                "mapped {} != held {} + cached {}",
                stats.pages_mapped, stats.pages_held, stats.pages_cached
            )
        },
    )?;
    let wasted = stats.pages_held * geometry.page_bytes - live_tokens * geometry.token_bytes();
    ensure(stats.wasted_bytes == wasted, || {
        format!("wasted {} vs {wasted}", stats.wasted_bytes)
    })?;
    ensure(
        stats.pages_mapped_total == stats.pages_unmapped_total + stats.pages_mapped as u64,
        || {
            format!(
                "mapped total {} != unmapped total {} + mapped {}",
                stats.pages_mapped_total, stats.pages_unmapped_total, stats.pages_mapped
            )
        },
    )?;
    // The accounting's claims are exactly the page table's mappings: no page mapped twice, none lost.
    let mut claimed = manager.accounting().claimed_pages();
    claimed.sort_unstable();
    let free = manager.accounting().free_list();
    manager.mapper().with_table(|table| {
        let mut pool_pages: Vec<u32> = claimed
            .iter()
            .map(|&(_, page)| page)
            .chain(free.iter().copied())
            .collect();
        pool_pages.sort_unstable();
        pool_pages.dedup();
        ensure(pool_pages.len() == claimed.len() + free.len(), || {
            "a pool page is claimed twice or both claimed and free".into()
        })?;
        ensure(pool_pages.len() == geometry.pool_pages, || {
            format!(
                "{} of {} pool pages accounted for",
                pool_pages.len(),
                geometry.pool_pages
            )
        })?;
        for &(at, page) in &claimed {
            ensure(table.pool_page_at(at) == Some(page), || {
                format!(
                    "virtual page {at} should hold pool page {page}, holds {:?}",
                    table.pool_page_at(at)
                )
            })?;
        }
        ensure(table.mapped() == claimed.len(), || {
            format!("{} mapped, {} claimed", table.mapped(), claimed.len())
        })?;
        // No live token on an unmapped page.
        for (&slot, &tokens) in &model.live {
            for run in 0..geometry.runs {
                for level in 0..geometry.levels_for(tokens) {
                    let at = geometry.virtual_page(run, slot as usize, level);
                    ensure(table.pool_page_at(at).is_some(), || {
                        format!("slot {slot} token page {at} is unmapped")
                    })?;
                }
            }
        }
        Ok(())
    })
}

/// Writes a token's K and V signature for the first and last layer, then reads them back.
fn touch_last_token(
    backend: &Backend,
    manager: &KvManager,
    slot: SlotId,
    tokens: usize,
) -> Outcome {
    if tokens == 0 {
        return Ok(());
    }
    let geometry = manager.geometry();
    let position = tokens - 1;
    for layer in [0, geometry.layers - 1] {
        let kv = manager.layer_kv(slot, layer);
        for (which, base) in [(0u8, kv.k as usize), (1, kv.v as usize)] {
            let address = base + position * kv.token_stride;
            let signature: Vec<u8> = (0..geometry.layer_token_bytes)
                .map(|byte| {
                    (slot as usize * 31 + layer * 7 + which as usize + position + byte) as u8
                })
                .collect();
            backend
                .memory
                .write(address, &signature)
                .map_err(|e| e.to_string())?;
            let back = backend
                .memory
                .read(address, signature.len())
                .map_err(|e| e.to_string())?;
            ensure(back == signature, || {
                format!("slot {slot} layer {layer} token {position} read back differently")
            })?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Step {
    Admit(usize),
    Grow { pick: usize, by: usize },
    Free { pick: usize },
}

fn step_strategy(max_context_len: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..max_context_len + 64).prop_map(Step::Admit),
        5 => (any::<usize>(), prop_oneof![1..40usize, 1..700usize]).prop_map(|(pick, by)| Step::Grow { pick, by }),
        2 => any::<usize>().prop_map(|pick| Step::Free { pick }),
    ]
}

fn pick(model: &Model, index: usize) -> Option<(SlotId, usize)> {
    let live = model.live.len();
    (live > 0)
        .then(|| model.live.iter().nth(index % live).map(|(&s, &t)| (s, t)))
        .flatten()
}

fn admit_step(
    backend: &Backend,
    manager: &mut KvManager,
    model: &mut Model,
    tokens: usize,
) -> Outcome {
    let room = model.live.len() < model.config.max_seqs;
    let expected = room && model.fits(manager, tokens, None);
    ensure(manager.can_admit(tokens) == expected, || {
        format!("can_admit({tokens}) should be {expected}")
    })?;
    let idle_holding_enough = (0..model.config.max_seqs as SlotId)
        .filter(|slot| !model.live.contains_key(slot))
        .any(|slot| {
            manager.slot_levels(slot).unwrap_or(0) >= manager.geometry().levels_for(tokens)
        });
    let mapped_before = manager.stats().pages_mapped_total;
    match manager.admit(tokens) {
        Ok(slot) if expected => {
            ensure(model.live.insert(slot, tokens).is_none(), || {
                format!("slot {slot} handed out twice")
            })?;
            check_state(manager, model)?;
            if idle_holding_enough && !model.config.eager && model.config.lookahead_tokens == 0 {
                let mapped_after = manager.stats().pages_mapped_total;
                ensure(mapped_after == mapped_before, || {
                    format!(
                        "admit({tokens}) mapped {} pages though a freed slot held enough",
                        mapped_after - mapped_before
                    )
                })?;
            }
            touch_last_token(backend, manager, slot, tokens)
        }
        Ok(slot) => fail(format!(
            "admit({tokens}) gave slot {slot} but the model says it cannot fit"
        )),
        Err(KvError::TooLong { .. } | KvError::OutOfPages { .. } | KvError::NoFreeSlot(_))
            if !expected =>
        {
            Ok(())
        }
        Err(error) => fail(format!(
            "admit({tokens}): {error} (expected success: {expected})"
        )),
    }
}

fn grow_step(
    backend: &Backend,
    manager: &mut KvManager,
    model: &mut Model,
    index: usize,
    by: usize,
) -> Outcome {
    let Some((slot, tokens)) = pick(model, index) else {
        return Ok(());
    };
    let target = tokens + by;
    let expected = model.fits(manager, target, Some(slot));
    match manager.reserve(slot, target) {
        Ok(()) if expected => {
            model.live.insert(slot, target);
        }
        Ok(()) => {
            return fail(format!(
                "reserve({slot}, {target}) succeeded but cannot fit"
            ));
        }
        Err(KvError::TooLong { .. }) if target > model.config.max_context_len => return Ok(()),
        Err(KvError::OutOfPages { .. }) if !expected => {
            // The scheduler's preemption path: evict the largest other sequence and retry.
            let victim = (model.live.iter())
                .filter(|(s, _)| **s != slot)
                .max_by_key(|(_, t)| **t)
                .map(|(s, _)| *s);
            let Some(victim) = victim else {
                return check_state(manager, model);
            };
            manager
                .free(victim)
                .map_err(|e| format!("free({victim}): {e}"))?;
            model.live.remove(&victim);
            let expected = model.fits(manager, target, Some(slot));
            match manager.reserve(slot, target) {
                Ok(()) if expected => {
                    model.live.insert(slot, target);
                }
                Err(KvError::OutOfPages { .. }) if !expected => {}
                other => {
                    return fail(format!(
                        "reserve after preempting {victim}: {other:?}, expected success: {expected}"
                    ));
                }
            }
        }
        Err(error) => {
            return fail(format!(
                "reserve({slot}, {target}): {error} (expected success: {expected})"
            ));
        }
    }
    check_state(manager, model)?;
    let tokens = model.live.get(&slot).copied().unwrap_or(0);
    touch_last_token(backend, manager, slot, tokens)
}

fn run_steps(backend: &Backend, config: &KvConfig, steps: &[Step]) -> Outcome {
    let mut manager = (backend.make)(config).map_err(|e| format!("building the manager: {e}"))?;
    let mut model = Model {
        config: config.clone(),
        live: BTreeMap::new(),
    };
    for step in steps {
        match *step {
            Step::Admit(tokens) => admit_step(backend, &mut manager, &mut model, tokens)?,
            Step::Grow { pick: index, by } => {
                grow_step(backend, &mut manager, &mut model, index, by)?
            }
            Step::Free { pick: index } => {
                if let Some((slot, _)) = pick(&model, index) {
                    manager
                        .free(slot)
                        .map_err(|e| format!("free({slot}): {e}"))?;
                    model.live.remove(&slot);
                    ensure(
                        matches!(manager.free(slot), Err(KvError::UnknownSlot(_))),
                        || "double free accepted".into(),
                    )?;
                    check_state(&manager, &model)?;
                }
            }
        }
    }
    let stats = manager.stats();
    ensure(
        stats.map_stalls as usize <= steps.len() * config.max_seqs,
        || "more stalls than waits".into(),
    )?;
    manager.shutdown().map_err(|e| format!("shutdown: {e}"))
}

fn config_strategy() -> impl Strategy<Value = KvConfig> {
    (
        prop_oneof![Just(KvLayout::PerLayer), Just(KvLayout::Interleaved)],
        any::<bool>(),
        12..40usize,
        any::<bool>(),
        prop_oneof![Just(0usize), Just(100)],
    )
        .prop_map(|(layout, odd, pool_pages, eager, lookahead)| {
            let mut config = shape(layout, odd, pool_pages);
            config.eager = eager && pool_pages >= 16;
            config.lookahead_tokens = lookahead;
            config
        })
}

/// Random admit / grow / free / preempt sequences against the model.
pub(crate) fn property_suite(backend: &Backend, cases: u32) -> Outcome {
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let strategy = config_strategy().prop_flat_map(|config| {
        (
            Just(config.clone()),
            prop::collection::vec(step_strategy(config.max_context_len), 1..60),
        )
    });
    runner
        .run(&strategy, |(config, steps)| {
            run_steps(backend, &config, &steps).map_err(TestCaseError::fail)
        })
        .map_err(|error| error.to_string())
}

fn pattern(slot: SlotId, layer: usize, which: u8, position: usize, len: usize) -> Vec<u8> {
    let seed = (slot as usize) << 24 ^ layer << 16 ^ (which as usize) << 15 ^ position;
    (0..len)
        .map(|byte| (seed.wrapping_mul(2_654_435_761) >> (byte % 24)) as u8 ^ byte as u8)
        .collect()
}

fn write_all(backend: &Backend, manager: &KvManager, slot: SlotId, tokens: usize) -> Outcome {
    let geometry = manager.geometry();
    for layer in 0..geometry.layers {
        let kv = manager.layer_kv(slot, layer);
        for (which, base) in [(0u8, kv.k as usize), (1, kv.v as usize)] {
            for position in 0..tokens {
                let bytes = pattern(slot, layer, which, position, geometry.layer_token_bytes);
                backend
                    .memory
                    .write(base + position * kv.token_stride, &bytes)
                    .map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

fn verify_all(backend: &Backend, manager: &KvManager, slot: SlotId, tokens: usize) -> Outcome {
    let geometry = manager.geometry();
    for layer in 0..geometry.layers {
        let kv = manager.layer_kv(slot, layer);
        for (which, base) in [(0u8, kv.k as usize), (1, kv.v as usize)] {
            for position in 0..tokens {
                let expected = pattern(slot, layer, which, position, geometry.layer_token_bytes);
                let found = backend
                    .memory
                    .read(base + position * kv.token_stride, expected.len())
                    .map_err(|e| e.to_string())?;
                ensure(found == expected, || {
                    format!("slot {slot} layer {layer} kv {which} token {position} corrupted")
                })?;
            }
        }
    }
    Ok(())
}

/// Every token of every layer, K and V, across every page boundary, for both layouts and for
/// rows that straddle pages; two slots side by side must not see each other's bytes.
pub(crate) fn boundary_suite(backend: &Backend) -> Outcome {
    for layout in [KvLayout::PerLayer, KvLayout::Interleaved] {
        for odd in [false, true] {
            let mut config = shape(layout, odd, 40);
            config.lookahead_tokens = 64;
            let mut manager = (backend.make)(&config).map_err(|e| e.to_string())?;
            let full = config.max_context_len;
            let first = manager.admit(1).map_err(|e| e.to_string())?;
            let second = manager.admit(full / 3).map_err(|e| e.to_string())?;
            // Grow the first slot one page boundary at a time, writing as it grows.
            let step = manager.geometry().tokens_per_page().max(1);
            let mut tokens = 1;
            while tokens < full {
                tokens = (tokens + step).min(full);
                manager.reserve(first, tokens).map_err(|e| e.to_string())?;
            }
            manager.wait_ready(first, full).map_err(|e| e.to_string())?;
            manager
                .wait_ready(second, full / 3)
                .map_err(|e| e.to_string())?;
            write_all(backend, &manager, first, full)?;
            write_all(backend, &manager, second, full / 3)?;
            verify_all(backend, &manager, first, full)
                .map_err(|e| format!("{layout:?} odd={odd}: {e}"))?;
            verify_all(backend, &manager, second, full / 3)
                .map_err(|e| format!("{layout:?} odd={odd}: {e}"))?;
            // Freed and re-admitted: same pages, same bytes (deferred reclamation keeps them).
            manager.free(first).map_err(|e| e.to_string())?;
            let again = manager.admit(full).map_err(|e| e.to_string())?;
            ensure(again == first, || {
                format!("re-admission took slot {again}, not the slot holding pages")
            })?;
            manager.wait_ready(again, full).map_err(|e| e.to_string())?;
            verify_all(backend, &manager, again, full)?;
            manager.shutdown().map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Filling the pool: `can_admit` turns false, admission and growth fail with typed errors and
/// change nothing, preempting a sequence lets growth proceed, and survivors keep their bytes.
pub(crate) fn exhaustion_suite(backend: &Backend) -> Outcome {
    for layout in [KvLayout::PerLayer, KvLayout::Interleaved] {
        let config = shape(layout, false, 20);
        let mut manager = (backend.make)(&config).map_err(|e| e.to_string())?;
        let quarter = config.max_context_len / 4;
        let mut live = Vec::new();
        while manager.can_admit(quarter) {
            live.push(
                manager
                    .admit(quarter)
                    .map_err(|e| format!("admit while can_admit: {e}"))?,
            );
        }
        ensure(!live.is_empty(), || "nothing admitted".into())?;
        for &slot in &live {
            manager
                .wait_ready(slot, quarter)
                .map_err(|e| e.to_string())?;
            write_all(backend, &manager, slot, quarter)?;
        }
        let before = manager.stats();
        match manager.admit(quarter) {
            Err(KvError::OutOfPages { .. } | KvError::NoFreeSlot(_)) => {}
            other => return fail(format!("admit past the pool: {other:?}")),
        }
        let grower = live[0];
        match manager.reserve(grower, config.max_context_len) {
            Err(KvError::OutOfPages { needed, free }) => {
                ensure(needed > free, || "OutOfPages with room".into())?
            }
            other => return fail(format!("growth past the pool: {other:?}")),
        }
        let after = manager.stats();
        ensure(
            before.pages_held == after.pages_held && before.live_tokens == after.live_tokens,
            || "a failed call changed the accounting".into(),
        )?;
        ensure(
            matches!(
                manager.reserve(grower, config.max_context_len + 1),
                Err(KvError::TooLong { .. })
            ),
            || "too long accepted".into(),
        )?;
        // Preemption: free the other sequences one by one until the grower fits.
        let mut victims = live[1..].iter();
        loop {
            match manager.reserve(grower, config.max_context_len) {
                Ok(()) => break,
                Err(KvError::OutOfPages { .. }) => match victims.next() {
                    Some(&victim) => manager.free(victim).map_err(|e| e.to_string())?,
                    None => return fail("no victim left"),
                },
                Err(error) => return fail(error.to_string()),
            }
        }
        manager
            .wait_ready(grower, config.max_context_len)
            .map_err(|e| e.to_string())?;
        verify_all(backend, &manager, grower, quarter)?;
        for &survivor in victims {
            verify_all(backend, &manager, survivor, quarter)
                .map_err(|e| format!("survivor: {e}"))?;
        }
        let stats = manager.stats();
        ensure(stats.pages_unmapped_total > 0, || {
            "preemption did not reuse the victims' pages".into()
        })?;
        manager.shutdown().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Bad input gets typed errors, never a panic.
pub(crate) fn bad_input_suite(backend: &Backend) -> Outcome {
    let config = shape(KvLayout::PerLayer, false, 16);
    let mut manager = (backend.make)(&config).map_err(|e| e.to_string())?;
    ensure(
        matches!(manager.admit(usize::MAX), Err(KvError::TooLong { .. })),
        || "huge admit".into(),
    )?;
    ensure(!manager.can_admit(usize::MAX), || "huge can_admit".into())?;
    ensure(
        matches!(manager.reserve(99, 1), Err(KvError::UnknownSlot(99))),
        || "unknown slot".into(),
    )?;
    ensure(
        matches!(manager.wait_ready(0, 1), Err(KvError::UnknownSlot(0))),
        || "wait on idle slot".into(),
    )?;
    let slot = manager.admit(10).map_err(|e| e.to_string())?;
    ensure(
        matches!(
            manager.wait_ready(slot, 11),
            Err(KvError::NotReserved { .. })
        ),
        || "wait past reservation".into(),
    )?;
    manager.release(slot);
    manager.release(slot);
    let mut bad = config.clone();
    bad.page_bytes = 3 << 20;
    ensure(
        matches!((backend.make)(&bad), Err(KvError::InvalidConfig(_))),
        || "3 MiB pages accepted".into(),
    )?;
    manager.shutdown().map_err(|e| e.to_string())
}

mod cpu {
    use super::*;

    fn backend() -> Backend<'static> {
        Backend {
            make: &KvManager::cpu,
            memory: &HostMemory,
        }
    }

    #[test]
    fn property_suite_on_cpu() {
        property_suite(&backend(), 48).expect("property suite");
    }

    #[test]
    fn every_page_boundary_reads_back_on_cpu() {
        boundary_suite(&backend()).expect("boundary suite");
    }

    #[test]
    fn pool_exhaustion_preempts_on_cpu() {
        exhaustion_suite(&backend()).expect("exhaustion suite");
    }

    #[test]
    fn bad_input_is_typed_on_cpu() {
        bad_input_suite(&backend()).expect("bad input suite");
    }

    #[test]
    fn prefix_sharing_property_suite_on_cpu() {
        prefix::prefix_suite(&backend(), 32).expect("prefix suite");
    }

    #[test]
    fn shared_prefixes_map_once_and_read_back_on_cpu() {
        prefix::sharing_suite(&backend()).expect("sharing suite");
    }

    #[test]
    fn waiting_after_sync_is_no_stall() {
        let mut manager =
            KvManager::cpu(&shape(KvLayout::Interleaved, false, 16)).expect("manager");
        let slot = manager.admit(500).expect("room");
        manager.sync().expect("mapper healthy");
        manager.wait_ready(slot, 500).expect("mapped");
        assert_eq!(manager.stats().map_stalls, 0);
        assert!(manager.stats().pages_mapped_total >= 4);
        manager.free(slot).expect("live");
        assert_eq!(manager.trim_idle().expect("mapper healthy"), 4);
        manager.sync().expect("unmapped");
        let stats = manager.stats();
        assert_eq!(
            (stats.pages_mapped, stats.pages_free),
            (0, stats.pages_total)
        );
        let samples = manager.drain_latencies();
        assert!(!samples.map_per_page.is_empty(), "one sample per map call");
        assert!(manager.drain_latencies().map_per_page.is_empty(), "drained");
    }
}

/// The real CPU backend behind a gate the test opens, and optionally failing: to pin down
/// timing (a mapper that is provably busy) and the error path.
mod gated {
    use std::sync::{Arc, Condvar, Mutex};

    use crate::kv::KvError;
    use crate::kv::backend::cpu::CpuBackend;
    use crate::kv::backend::{PageBackend, PageId};

    #[derive(Default)]
    pub(super) struct Gate {
        open: Mutex<bool>,
        opened: Condvar,
    }

    impl Gate {
        pub(super) fn open(&self) {
            *self.open.lock().expect("gate lock") = true;
            self.opened.notify_all();
        }

        fn pass(&self) {
            let mut open = self.open.lock().expect("gate lock");
            while !*open {
                open = self.opened.wait(open).expect("gate lock");
            }
        }
    }

    pub(super) struct Gated {
        pub(super) inner: CpuBackend,
        pub(super) gate: Arc<Gate>,
        pub(super) fail_maps: bool,
    }

    impl PageBackend for Gated {
        fn name(&self) -> &'static str {
            "cpu-gated"
        }

        fn base_address(&self) -> usize {
            self.inner.base_address()
        }

        fn map_run(&mut self, offset: usize, pages: &[PageId]) -> Result<(), KvError> {
            self.gate.pass();
            if self.fail_maps {
                return Err(KvError::Backend("injected map failure".into()));
            }
            self.inner.map_run(offset, pages)
        }

        fn unmap_run(&mut self, offset: usize, count: usize) -> Result<(), KvError> {
            self.inner.unmap_run(offset, count)
        }

        fn copy_pages(
            &mut self,
            from: &[PageId],
            to: &[PageId],
            bytes: usize,
        ) -> Result<(), KvError> {
            self.inner.copy_pages(from, to, bytes)
        }
    }
}

mod mapper_timing {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::gated::{Gate, Gated};
    use super::*;
    use crate::kv::backend::cpu::CpuBackend;

    fn gated_manager(gate: &Arc<Gate>, fail_maps: bool) -> KvManager {
        let config = shape(KvLayout::Interleaved, false, 16);
        KvManager::with_backend(&config, |geometry| {
            let inner = CpuBackend::new(
                geometry.virtual_bytes,
                geometry.page_bytes,
                geometry.pool_pages,
            )?;
            Ok(Box::new(Gated {
                inner,
                gate: Arc::clone(gate),
                fail_maps,
            }))
        })
        .expect("gated manager")
    }

    #[test]
    fn engine_waits_for_a_busy_mapper_and_counts_a_stall() {
        let gate = Arc::new(Gate::default());
        let mut manager = gated_manager(&gate, false);
        let slot = manager.admit(300).expect("room");
        let finished = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| {
                let result = manager.wait_ready(slot, 300);
                finished.store(true, Ordering::SeqCst);
                result
            });
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                !finished.load(Ordering::SeqCst),
                "wait_ready returned while the page was unmapped"
            );
            gate.open();
            waiter
                .join()
                .expect("waiter thread")
                .expect("mapped after the gate opened");
        });
        let stats = manager.stats();
        assert_eq!(stats.map_stalls, 1);
        assert!(
            stats.map_stall_seconds >= 0.04,
            "{}",
            stats.map_stall_seconds
        );
        manager.wait_ready(slot, 300).expect("ready");
        assert_eq!(manager.stats().map_stalls, 1, "a ready slot is no stall");
    }

    #[test]
    fn a_backend_failure_reaches_every_waiter_as_a_typed_error() {
        let gate = Arc::new(Gate::default());
        gate.open();
        let mut manager = gated_manager(&gate, true);
        let slot = manager.admit(300).expect("accounting still has room");
        let error = manager.wait_ready(slot, 300).expect_err("the map failed");
        assert!(
            error.to_string().contains("injected map failure"),
            "{error}"
        );
        assert!(
            matches!(manager.sync(), Err(KvError::Mapper(_))),
            "the failure is sticky"
        );
        assert!(manager.shutdown().is_err(), "shutdown reports the failure");
    }

    #[test]
    fn shutdown_unmaps_every_page() {
        let gate = Arc::new(Gate::default());
        gate.open();
        let mut manager = gated_manager(&gate, false);
        for tokens in [100, 700, 900] {
            manager.admit(tokens).expect("room");
        }
        manager.sync().expect("mapped");
        let mapper_totals = |manager: &KvManager| manager.stats().pages_mapped_total;
        assert!(mapper_totals(&manager) > 0);
        let (mapped_pages, shared_totals) = manager.shutdown_for_test();
        assert_eq!(mapped_pages, 0, "every page unmapped at shutdown");
        assert_eq!(shared_totals.pages_mapped, shared_totals.pages_unmapped);
    }
}

#[cfg(feature = "cuda")]
pub(crate) mod cuda {
    use std::sync::Arc;

    use cudarc::driver::{CudaContext, sys};

    use super::*;
    use crate::kv::backend::cuda::{check, cuda_context};

    /// Device memory through synchronous driver copies.
    pub(crate) struct DeviceMemory(pub(crate) Arc<CudaContext>);

    impl RegionMemory for DeviceMemory {
        fn write(&self, address: usize, bytes: &[u8]) -> Result<(), KvError> {
            self.0
                .bind_to_thread()
                .map_err(|e| KvError::NoCuda(format!("bind: {:?}", e.0)))?;
            // SAFETY: the address is a ready position of the region; the host slice is valid.
            check("cuMemcpyHtoD", unsafe {
                sys::cuMemcpyHtoD_v2(address as u64, bytes.as_ptr().cast(), bytes.len())
            })
        }

        fn read(&self, address: usize, len: usize) -> Result<Vec<u8>, KvError> {
            self.0
                .bind_to_thread()
                .map_err(|e| KvError::NoCuda(format!("bind: {:?}", e.0)))?;
            let mut bytes = vec![0u8; len];
            // SAFETY: as for `write`.
            check("cuMemcpyDtoH", unsafe {
                sys::cuMemcpyDtoH_v2(bytes.as_mut_ptr().cast(), address as u64, len)
            })?;
            Ok(bytes)
        }
    }

    /// The GPU context, or `None` after saying loudly why the CUDA tests cannot run here.
    /// With `FUSED_REQUIRE_GPU=1` (the GPU machine's script) a missing GPU is a failure.
    fn context_or_skip(test: &str) -> Option<Arc<CudaContext>> {
        match cuda_context(0) {
            Ok(context) => Some(context),
            Err(error) if std::env::var("FUSED_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
                panic!("{test}: FUSED_REQUIRE_GPU=1 but no GPU: {error}")
            }
            Err(error) => {
                eprintln!(
                    "SKIPPED {test}: no usable CUDA GPU on this machine ({error}); run e2e/gpu/kv_test.sh on the GPU machine"
                );
                None
            }
        }
    }

    fn with_gpu(test: &str, suite: impl FnOnce(&Backend) -> Outcome) {
        let Some(context) = context_or_skip(test) else {
            return;
        };
        let make = |config: &KvConfig| KvManager::cuda(config, Arc::clone(&context));
        let memory = DeviceMemory(Arc::clone(&context));
        suite(&Backend {
            make: &make,
            memory: &memory,
        })
        .expect(test);
    }

    #[test]
    fn property_suite_on_cuda() {
        with_gpu("property_suite_on_cuda", |backend| {
            property_suite(backend, 48)
        });
    }

    #[test]
    fn every_page_boundary_reads_back_on_cuda() {
        with_gpu("every_page_boundary_reads_back_on_cuda", boundary_suite);
    }

    #[test]
    fn pool_exhaustion_preempts_on_cuda() {
        with_gpu("pool_exhaustion_preempts_on_cuda", exhaustion_suite);
    }

    #[test]
    fn bad_input_is_typed_on_cuda() {
        with_gpu("bad_input_is_typed_on_cuda", bad_input_suite);
    }

    #[test]
    fn prefix_sharing_property_suite_on_cuda() {
        with_gpu("prefix_sharing_property_suite_on_cuda", |backend| {
            prefix::prefix_suite(backend, 32)
        });
    }

    #[test]
    fn shared_prefixes_map_once_and_read_back_on_cuda() {
        with_gpu(
            "shared_prefixes_map_once_and_read_back_on_cuda",
            prefix::sharing_suite,
        );
    }
}
