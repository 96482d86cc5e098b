//! The prefix sharing suite, run on every backend: random sequences that share prefixes of a
//! few documents (diverging anywhere, at and inside page boundaries), admitted, prefilled,
//! decoded, published, freed and preempted in random order, with K/V written the way the
//! forward pass writes it (every computed position, every layer) and checked against the model:
//!
//! - every cached token a sequence starts with reads back exactly what its first writer wrote
//!   (the shared pages are the right ones and the copied parts are complete);
//! - no write ever lands on a page of the prefix index (shared pages are never written);
//! - no page a live sequence uses is free, and every page is free, cached or held exactly once;
//! - once every sequence has ended and the cache is reset, every page is back in the free list
//!   and nothing is mapped.

use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestCaseError, TestRunner};

use super::{Backend, Outcome, ensure, fail, pages_add_up, shape};
use crate::kv::{KvAccess, KvBudget, KvConfig, KvError, KvLayout, KvManager, PartialPage};
use crate::kv::{SlotId, TokenHash};

/// Chained hashes of `tokens` (a stand-in for the engine's keyed hash: equal prefixes, equal
/// links; different prefixes, different links).
fn chain(tokens: &[u32]) -> Vec<TokenHash> {
    let mut link: TokenHash = 0x5eed;
    tokens
        .iter()
        .map(|&token| {
            let mixed = (link ^ TokenHash::from(token))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
            link = mixed ^ (mixed >> 67);
            link
        })
        .collect()
}

/// The bytes the "forward pass" writes for the token whose chain link is `link`.
fn signature(link: TokenHash, layer: usize, which: u8, len: usize) -> Vec<u8> {
    let seed = link ^ ((layer as TokenHash) << 8) ^ TokenHash::from(which);
    (0..len)
        .map(|byte| (seed >> ((byte % 15) * 8)) as u8 ^ byte as u8)
        .collect()
}

/// One live sequence as the test engine sees it.
struct Live {
    slot: SlotId,
    hashes: Vec<TokenHash>,
    /// Positions with K/V written.
    computed: usize,
}

struct Run<'a> {
    backend: &'a Backend<'a>,
    manager: KvManager,
    config: KvConfig,
    live: Vec<Live>,
    next_own: u32,
    cached_tokens: usize,
}

impl<'a> Run<'a> {
    /// A run on a fresh manager of `config`, nothing live yet.
    fn start(backend: &'a Backend, config: &KvConfig) -> Result<Self, String> {
        let manager = (backend.make)(config).map_err(|e| format!("building the manager: {e}"))?;
        Ok(Self {
            backend,
            manager,
            config: config.clone(),
            live: Vec::new(),
            next_own: 1,
            cached_tokens: 0,
        })
    }

    /// Writes positions `from..to` of `live` in every layer, after checking that none of their
    /// bytes lies on a prefix index page.
    fn write(&self, live: &Live, from: usize, to: usize) -> Outcome {
        let geometry = self.manager.geometry();
        let pages = self.manager.accounting().slot_pages(live.slot);
        let row = geometry.run_token_bytes;
        for position in from..to {
            let levels = position * row / geometry.page_bytes
                ..=((position + 1) * row - 1) / geometry.page_bytes;
            for level in levels {
                for run in 0..geometry.runs {
                    let page = pages[level * geometry.runs + run];
                    ensure(self.manager.accounting().page_refs(page).is_none(), || {
                        format!(
                            "slot {} writes token {position} onto shared page {page} (level {level})",
                            live.slot
                        )
                    })?;
                }
            }
            for (_, address, bytes) in self.signatures(live, position) {
                (self.backend.memory)
                    .write(address, &bytes)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    /// Each layer's K and V of token `position` of `live`: `((layer, 0 for K | 1 for V),
    /// address, the signature that belongs there)`.
    fn signatures(&self, live: &Live, position: usize) -> Vec<((usize, u8), usize, Vec<u8>)> {
        let geometry = self.manager.geometry();
        (0..geometry.layers)
            .flat_map(|layer| {
                let kv = self.manager.layer_kv(live.slot, layer);
                [(0u8, kv.k as usize), (1, kv.v as usize)].map(|(which, base)| {
                    let bytes = signature(
                        live.hashes[position],
                        layer,
                        which,
                        geometry.layer_token_bytes,
                    );
                    ((layer, which), base + position * kv.token_stride, bytes)
                })
            })
            .collect()
    }

    /// Checks positions of `live` below `to`: every one within two of a page boundary, every
    /// 11th, and the last.
    fn verify(&self, live: &Live, to: usize) -> Outcome {
        let geometry = self.manager.geometry();
        let per_page = geometry.page_bytes as f64 / geometry.run_token_bytes as f64;
        let near_boundary = |p: usize| {
            let offset = (p as f64) % per_page;
            offset < 2.0 || per_page - offset < 3.0
        };
        for position in (0..to).filter(|&p| p % 11 == 0 || near_boundary(p) || p + 1 == to) {
            for ((layer, which), address, expected) in self.signatures(live, position) {
                let found = (self.backend.memory)
                    .read(address, expected.len())
                    .map_err(|e| e.to_string())?;
                ensure(found == expected, || {
                    format!(
                        "slot {} token {position} layer {layer} kv {which} reads back wrong",
                        live.slot
                    )
                })?;
            }
        }
        Ok(())
    }

    /// Every page free, cached or held once; nothing a live sequence uses is free; the page
    /// table maps exactly what the slots claim.
    fn check(&self) -> Outcome {
        self.manager.sync().map_err(|e| e.to_string())?;
        let stats = self.manager.stats();
        pages_add_up(&stats)?;
        let accounting = self.manager.accounting();
        let free = accounting.free_list();
        let claimed = accounting.claimed_pages();
        for live in &self.live {
            for page in accounting.slot_pages(live.slot) {
                ensure(free.binary_search(&page).is_err(), || {
                    format!("page {page} of live slot {} is free", live.slot)
                })?;
                ensure(
                    accounting.page_refs(page).is_none_or(|refs| refs > 0),
                    || {
                        format!(
                            "shared page {page} of live slot {} has no reference",
                            live.slot
                        )
                    },
                )?;
            }
        }
        for pages in accounting.prefix_node_pages() {
            for page in pages {
                ensure(free.binary_search(&page).is_err(), || {
                    format!("cached prefix page {page} is also free")
                })?;
            }
        }
        self.manager.mapper().with_table(|table| {
            for &(at, page) in &claimed {
                ensure(table.pool_page_at(at) == Some(page), || {
                    format!("virtual page {at} should hold pool page {page}")
                })?;
            }
            ensure(table.mapped() == claimed.len(), || {
                format!("{} mapped, {} claimed", table.mapped(), claimed.len())
            })?;
            for &page in &free {
                ensure(table.mappings(page) == 0, || {
                    format!("free page {page} is mapped")
                })?;
            }
            Outcome::Ok(())
        })?;
        for live in &self.live {
            self.verify(live, live.computed)?;
        }
        Ok(())
    }

    /// The engine's preemption path: the newest other sequence leaves.
    fn preempt_other(&mut self, keep: SlotId) -> Result<bool, String> {
        let Some(index) = self.live.iter().rposition(|live| live.slot != keep) else {
            return Ok(false);
        };
        let victim = self.live.remove(index);
        self.manager.free(victim.slot).map_err(|e| e.to_string())?;
        Ok(true)
    }

    fn admit(&mut self, document: u32, shared: usize, total: usize) -> Outcome {
        let own = self.next_own;
        self.next_own += 1;
        let tokens: Vec<u32> = (0..total as u32)
            .map(|i| match (i as usize) < shared {
                true => document * 10_000 + i,
                false => 1 << 30 | own << 12 | i,
            })
            .collect();
        let hashes = chain(&tokens);
        let predicted = self.manager.can_admit_prefixed(total, &hashes);
        let before = self.manager.stats();
        let (slot, cached) = match self.manager.admit_prefixed(total, &hashes) {
            Ok(admitted) if predicted => admitted,
            Ok(_) => return fail(format!("admit({total}) succeeded though can_admit said no")),
            Err(KvError::TooLong { .. } | KvError::OutOfPages { .. } | KvError::NoFreeSlot(_))
                if !predicted =>
            {
                let after = self.manager.stats();
                return ensure(
                    (before.pages_held, before.pages_free, before.live_seqs)
                        == (after.pages_held, after.pages_free, after.live_seqs),
                    || "a refused admission changed the accounting".into(),
                );
            }
            Err(error) => return fail(format!("admit({total}): {error} (predicted {predicted})")),
        };
        ensure(cached < total && cached <= shared, || {
            format!("{cached} cached tokens of {total}, only {shared} shareable")
        })?;
        self.cached_tokens += cached;
        let mut live = Live {
            slot,
            hashes,
            computed: cached,
        };
        self.manager
            .wait_ready(slot, total)
            .map_err(|e| format!("wait_ready: {e}"))?;
        self.verify(&live, cached)
            .map_err(|e| format!("cached prefix of {cached} tokens: {e}"))?;
        self.write(&live, cached, total)?;
        live.computed = total;
        self.manager.publish(slot, total, &live.hashes);
        self.live.push(live);
        self.check()
    }

    fn decode(&mut self, pick: usize) -> Outcome {
        if self.live.is_empty() {
            return Ok(());
        }
        let index = pick % self.live.len();
        let (slot, target) = (self.live[index].slot, self.live[index].computed + 1);
        if target > self.config.max_context_len {
            return Ok(());
        }
        loop {
            match self.manager.reserve(slot, target) {
                Ok(()) => break,
                Err(KvError::OutOfPages { .. }) => {
                    if !self.preempt_other(slot)? {
                        return self.check();
                    }
                }
                Err(error) => return fail(format!("reserve({slot}, {target}): {error}")),
            }
        }
        let index = self
            .live
            .iter()
            .position(|live| live.slot == slot)
            .unwrap_or(0);
        let own = self.next_own;
        self.next_own += 1;
        let live = &mut self.live[index];
        let link = chain(&[own | 1 << 31])[0] ^ live.hashes[live.computed - 1].rotate_left(7);
        live.hashes.push(link);
        self.manager
            .wait_ready(slot, target)
            .map_err(|e| e.to_string())?;
        let live = &self.live[index];
        self.write(live, target - 1, target)?;
        self.live[index].computed = target;
        self.manager.publish(slot, target, &self.live[index].hashes);
        self.check()
    }

    fn free(&mut self, pick: usize) -> Outcome {
        if self.live.is_empty() {
            return Ok(());
        }
        let live = self.live.remove(pick % self.live.len());
        self.manager.free(live.slot).map_err(|e| e.to_string())?;
        self.check()
    }

    /// Everything ends: every page is free again once the cache is reset and idle slots trimmed.
    fn finish(mut self) -> Result<usize, String> {
        for live in std::mem::take(&mut self.live) {
            self.manager.free(live.slot).map_err(|e| e.to_string())?;
        }
        let stats = self.manager.stats();
        ensure(stats.pages_held == 0 && stats.pages_shared == 0, || {
            format!(
                "{} pages held, {} shared with nothing live",
                stats.pages_held, stats.pages_shared
            )
        })?;
        ensure(
            stats.pages_cached + stats.pages_free == stats.pages_total,
            || "pages leaked".into(),
        )?;
        self.manager
            .reset_prefix_cache()
            .map_err(|e| e.to_string())?;
        self.manager.trim_idle().map_err(|e| e.to_string())?;
        self.manager.sync().map_err(|e| e.to_string())?;
        let stats = self.manager.stats();
        ensure(
            stats.pages_free == stats.pages_total
                && stats.pages_mapped == 0
                && stats.pages_prefix == 0,
            || {
                format!(
                    "after reset: {} of {} free, {} mapped, {} cached prefix",
                    stats.pages_free, stats.pages_total, stats.pages_mapped, stats.pages_prefix
                )
            },
        )?;
        let cached = self.cached_tokens;
        self.manager.shutdown().map_err(|e| e.to_string())?;
        Ok(cached)
    }
}

#[derive(Debug, Clone)]
enum Step {
    Admit {
        document: u32,
        shared: usize,
        total: usize,
    },
    Decode {
        pick: usize,
    },
    Free {
        pick: usize,
    },
}

fn step_strategy(max: usize) -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..2u32, 0..max, 1..max).prop_map(move |(document, shared, extra)| Step::Admit {
            document,
            shared,
            total: (shared + extra / 4).clamp(1, max),
        }),
        3 => any::<usize>().prop_map(|pick| Step::Decode { pick }),
        2 => any::<usize>().prop_map(|pick| Step::Free { pick }),
    ]
}

fn config_strategy() -> impl Strategy<Value = KvConfig> {
    (
        prop_oneof![Just(KvLayout::PerLayer), Just(KvLayout::Interleaved)],
        any::<bool>(),
        16..40usize,
        prop_oneof![Just(PartialPage::Copy), Just(PartialPage::Recompute)],
        prop_oneof![Just(0usize), Just(100)],
    )
        .prop_map(|(layout, odd, pool_pages, partial, lookahead)| {
            let mut config = shape(layout, odd, pool_pages);
            config.prefix_caching = true;
            config.partial_page = partial;
            config.lookahead_tokens = lookahead;
            config
        })
}

fn run_steps(backend: &Backend, config: &KvConfig, steps: &[Step]) -> Result<usize, String> {
    let mut run = Run::start(backend, config)?;
    for step in steps {
        match *step {
            Step::Admit {
                document,
                shared,
                total,
            } => run.admit(document, shared.min(total), total)?,
            Step::Decode { pick } => run.decode(pick)?,
            Step::Free { pick } => run.free(pick)?,
        }
    }
    run.finish()
}

/// Random sharing workloads on `backend`; fails unless some of them hit the cache.
pub(crate) fn prefix_suite(backend: &Backend, cases: u32) -> Outcome {
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let cached = std::cell::Cell::new(0usize);
    let strategy = config_strategy().prop_flat_map(|config| {
        (
            Just(config.clone()),
            prop::collection::vec(step_strategy(config.max_context_len), 1..40),
        )
    });
    runner
        .run(&strategy, |(config, steps)| {
            let hit = run_steps(backend, &config, &steps).map_err(TestCaseError::fail)?;
            cached.set(cached.get() + hit);
            Ok(())
        })
        .map_err(|error| error.to_string())?;
    ensure(cached.get() > 0, || {
        "no case ever hit the prefix cache".into()
    })
}

/// A sequence sharing a prefix that ends at, and inside, a page boundary with a live one, on
/// both layouts, both kinds of row and both partial-page policies: it reads the first one's
/// bytes, holds only its own levels (the shared ones are counted once) and shares every whole
/// page below its first computed token.
pub(crate) fn sharing_suite(backend: &Backend) -> Outcome {
    for layout in [KvLayout::PerLayer, KvLayout::Interleaved] {
        for odd in [false, true] {
            for partial in [PartialPage::Copy, PartialPage::Recompute] {
                let mut config = shape(layout, odd, 40);
                config.prefix_caching = true;
                config.partial_page = partial;
                let mut run = Run::start(backend, &config)?;
                let geometry = run.manager.geometry().clone();
                let per_page = geometry.tokens_per_page();
                let first = (3 * per_page + per_page / 2).min(config.max_context_len - 50);
                run.admit(0, first, first + 9)?;
                ensure(run.live.len() == 1, || {
                    "the first sequence was refused".into()
                })?;
                for shared in [2 * per_page, 2 * per_page + per_page / 3, first + 9] {
                    let context = format!("{layout:?} odd={odd} {partial:?} shared={shared}");
                    let before = run.manager.stats();
                    let cached_before = run.cached_tokens;
                    let total = shared + 40;
                    run.admit(0, shared, total)?;
                    ensure(run.live.len() == 2, || format!("{context}: refused"))?;
                    let cached = run.cached_tokens - cached_before;
                    let after = run.manager.stats();
                    ensure(cached + per_page + 1 >= shared.min(first + 8), || {
                        format!("{context}: only {cached} tokens cached")
                    })?;
                    let shared_levels = cached * geometry.run_token_bytes / geometry.page_bytes;
                    let shared_pages = after.pages_shared - before.pages_shared;
                    ensure(shared_pages == shared_levels * geometry.runs, || {
                        format!(
                            "{context}: {shared_pages} pages shared, {shared_levels} levels below the first computed token"
                        )
                    })?;
                    let held = after.pages_held - before.pages_held;
                    ensure(
                        held + shared_pages == geometry.levels_for(total) * geometry.runs,
                        || {
                            format!(
                                "{context}: {held} own + {shared_pages} shared pages for {total} tokens"
                            )
                        },
                    )?;
                    run.free(run.live.len() - 1)?;
                }
                run.finish()?;
            }
        }
    }
    Ok(())
}
