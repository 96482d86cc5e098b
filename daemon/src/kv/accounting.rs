//! Page accounting: which slot is live, how many tokens it holds, which physical pages it has
//! claimed, and which pages are free. Every change is answered with the page operations (map /
//! unmap at virtual page numbers) the mapper must carry out; nothing physical happens here.
//!
//! Policies (vAttention's, plus look-ahead):
//! - a slot's pages are a prefix of each run (`levels` pages per run), claimed in order;
//! - `free` keeps a slot's pages mapped (deferred reclamation); a new sequence takes the free
//!   slot that already holds enough pages with the fewest pages (best fit), else the free slot
//!   holding the most;
//! - when the free list runs short, pages are trimmed from the top of other slots' *surplus*
//!   (pages a slot holds beyond what its tokens need): idle slots first, longest idle first,
//!   then look-ahead pages of live slots, largest surplus first;
//! - look-ahead covers `lookahead_tokens` or the slot's last growth, whichever is more: a decode
//!   step maps a few tokens ahead, a prefill chunk maps the next chunk ahead (the scheduler
//!   announces one step, the look-ahead guesses a second one, so the mapper has two iterations);
//! - look-ahead pages are only taken from the free list (as many as it has), never by trimming.
//!
//! Must not: call a backend, block, or know about threads.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::KvError;
use super::backend::PageId;
use super::geometry::Geometry;
use super::ready::ReadyMarks;
use crate::kv::SlotId;

/// One physical change, in virtual page numbers of the region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PageOp {
    /// Map `pages[i]` at virtual page `first + i`.
    Map { first: usize, pages: Vec<PageId> },
    /// Unmap `count` pages from virtual page `first` (their physical pages go back to the pool).
    Unmap { first: usize, count: usize },
}

/// Levels per run a growth job covers at most once a slot has `runs` runs: about 64 pages, so
/// that the first chunk of a long prompt is ready long before its last page is mapped, but never
/// fewer than 16 levels, so that the per-layer layout does not pay its per-run access call
/// (`cuMemSetAccess`) once per level.
fn levels_per_job(runs: usize) -> usize {
    (64 / runs).max(16)
}

/// One mapper job of a plan: its operations, and the levels per run the slot has once it is done.
#[derive(Debug)]
pub(crate) struct PlannedJob {
    pub(crate) ops: Vec<PageOp>,
    pub(crate) levels: usize,
}

/// What one admission or reservation asks of the mapper, as jobs in order: trims that free pages
/// come first, then the slot's growth in steps (earlier levels ready first), then look-ahead.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub(crate) jobs: Vec<PlannedJob>,
    /// Levels per run the reserved tokens need (reached by the jobs before the look-ahead).
    pub(crate) need_levels: usize,
    /// Levels per run once the look-ahead is mapped too.
    pub(crate) lookahead_levels: usize,
}

impl Plan {
    /// Every operation in order.
    #[cfg(test)]
    pub(crate) fn ops(&self) -> Vec<&PageOp> {
        self.jobs.iter().flat_map(|job| &job.ops).collect()
    }
}

/// Totals of the accounting, in pages and tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Pages no slot holds.
    pub(crate) pages_free: usize,
    /// Pages held by idle (freed) slots.
    pub(crate) pages_cached: usize,
    /// Pages held by live slots (their tokens' pages plus look-ahead).
    pub(crate) pages_held: usize,
    /// Pages a new reservation can get: free pages plus every slot's surplus.
    pub(crate) pages_available: usize,
    pub(crate) live_seqs: usize,
    pub(crate) live_tokens: usize,
}

#[derive(Debug, Default)]
struct Slot {
    live: bool,
    tokens: usize,
    /// Tokens added by the last reservation (0 after admission).
    last_growth: usize,
    /// Claimed physical pages, level-major: `pages[level * runs + run]`.
    pages: Vec<PageId>,
    idle_since: u64,
    marks: ReadyMarks,
}

/// Page accounting of one region.
#[derive(Debug)]
pub(crate) struct Accounting {
    geometry: Geometry,
    eager: bool,
    lookahead_tokens: usize,
    slots: Vec<Slot>,
    /// Free physical pages; the lowest id comes out first so that a run grows over consecutive
    /// ids (which the CPU backend maps with one call).
    free: BinaryHeap<Reverse<PageId>>,
    clock: u64,
}

impl Accounting {
    pub(crate) fn new(geometry: Geometry, eager: bool, lookahead_tokens: usize) -> Self {
        let pool_pages = geometry.pool_pages as PageId;
        let slots = (0..geometry.max_seqs).map(|_| Slot::default()).collect();
        let free = (0..pool_pages).map(Reverse).collect();
        Self {
            geometry,
            eager,
            lookahead_tokens,
            slots,
            free,
            clock: 0,
        }
    }

    pub(crate) fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    fn levels(&self, slot: &Slot) -> usize {
        slot.pages.len() / self.geometry.runs
    }

    /// Levels the tokens of `slot` need (0 for an idle slot).
    fn need_levels(&self, slot: &Slot) -> usize {
        match (slot.live, self.eager) {
            (false, _) => 0,
            (true, true) => self.geometry.pages_per_run,
            (true, false) => self.geometry.levels_for(slot.tokens),
        }
    }

    fn surplus_pages(&self, slot: &Slot) -> usize {
        (self.levels(slot) - self.need_levels(slot)) * self.geometry.runs
    }

    fn want_levels(&self, tokens: usize) -> usize {
        if self.eager {
            self.geometry.pages_per_run
        } else {
            self.geometry.levels_for(tokens)
        }
    }

    fn check_length(&self, tokens: usize) -> Result<(), KvError> {
        let max = self.geometry.max_context_len;
        if tokens > max {
            Err(KvError::TooLong { tokens, max })
        } else {
            Ok(())
        }
    }

    fn live_slot(&self, slot: SlotId) -> Result<&Slot, KvError> {
        self.slots
            .get(slot as usize)
            .filter(|s| s.live)
            .ok_or(KvError::UnknownSlot(slot))
    }

    /// Pages a reservation for `slot` could get: free pages plus every other slot's surplus.
    fn available_excluding(&self, slot: usize) -> usize {
        let others: usize = (self.slots.iter().enumerate())
            .filter(|(index, _)| *index != slot)
            .map(|(_, s)| self.surplus_pages(s))
            .sum();
        self.free.len() + others
    }

    /// The free slot a new sequence needing `levels` pages per run gets (best fit).
    fn choose_slot(&self, levels: usize) -> Option<usize> {
        let idle = || self.slots.iter().enumerate().filter(|(_, s)| !s.live);
        let best_fit = idle()
            .filter(|(_, s)| self.levels(s) >= levels)
            .min_by_key(|(index, s)| (self.levels(s), *index));
        let most_held = || idle().max_by_key(|(index, s)| (self.levels(s), Reverse(*index)));
        best_fit.or_else(most_held).map(|(index, _)| index)
    }

    /// Pages beyond what is held that `slot` must get to reach `levels` per run.
    fn extra_pages(&self, slot: usize, levels: usize) -> usize {
        levels.saturating_sub(self.levels(&self.slots[slot])) * self.geometry.runs
    }

    pub(crate) fn can_admit(&self, tokens: usize) -> bool {
        if self.check_length(tokens).is_err() {
            return false;
        }
        let levels = self.want_levels(tokens);
        self.choose_slot(levels)
            .is_some_and(|slot| self.extra_pages(slot, levels) <= self.available_excluding(slot))
    }

    pub(crate) fn admit(&mut self, tokens: usize) -> Result<(SlotId, Plan), KvError> {
        self.check_length(tokens)?;
        let levels = self.want_levels(tokens);
        let slot = self
            .choose_slot(levels)
            .ok_or(KvError::NoFreeSlot(self.geometry.max_seqs))?;
        self.ensure_pages(slot, levels)?;
        let entry = &mut self.slots[slot];
        entry.live = true;
        entry.tokens = tokens;
        entry.last_growth = 0;
        Ok((slot as SlotId, self.plan_growth(slot, levels)))
    }

    /// Make `slot` hold `tokens` tokens in all (a reservation never shrinks while live).
    pub(crate) fn reserve(&mut self, slot: SlotId, tokens: usize) -> Result<Plan, KvError> {
        self.live_slot(slot)?;
        self.check_length(tokens)?;
        let index = slot as usize;
        let tokens = tokens.max(self.slots[index].tokens);
        let levels = self.want_levels(tokens);
        self.ensure_pages(index, levels)?;
        let entry = &mut self.slots[index];
        if tokens > entry.tokens {
            entry.last_growth = tokens - entry.tokens;
        }
        entry.tokens = tokens;
        Ok(self.plan_growth(index, levels))
    }

    /// Checks that `slot` can reach `levels`, trimming others' surplus into the free list.
    /// On error nothing has changed.
    fn ensure_pages(&mut self, slot: usize, levels: usize) -> Result<(), KvError> {
        let needed = self.extra_pages(slot, levels);
        let available = self.available_excluding(slot);
        if needed > available {
            return Err(KvError::OutOfPages {
                needed,
                free: available,
            });
        }
        Ok(())
    }

    /// Grows `slot` to `levels` (trimming others as needed), then adds look-ahead.
    fn plan_growth(&mut self, slot: usize, levels: usize) -> Plan {
        let mut plan = Plan::default();
        let needed = self.extra_pages(slot, levels);
        let mut trims = Vec::new();
        self.reclaim(needed, slot, &mut trims);
        self.grow_in_jobs(slot, levels, trims, &mut plan);
        plan.need_levels = self.levels(&self.slots[slot]);
        let entry = &self.slots[slot];
        let lookahead_tokens = entry
            .tokens
            .saturating_add(self.lookahead_tokens.max(entry.last_growth));
        let lookahead_levels = self
            .want_levels(lookahead_tokens.min(self.geometry.max_context_len))
            .min(plan.need_levels + self.free.len() / self.geometry.runs);
        self.grow_in_jobs(slot, lookahead_levels, Vec::new(), &mut plan);
        plan.lookahead_levels = self.levels(&self.slots[slot]);
        plan
    }

    /// Grows `slot` to `levels` in jobs of at most [`levels_per_job`] levels; `first_ops` (trims)
    /// lead the first job.
    fn grow_in_jobs(
        &mut self,
        slot: usize,
        levels: usize,
        first_ops: Vec<PageOp>,
        plan: &mut Plan,
    ) {
        let step = levels_per_job(self.geometry.runs);
        let mut ops = first_ops;
        loop {
            let from = self.levels(&self.slots[slot]);
            self.grow(slot, levels.min(from + step), &mut ops);
            let reached = self.levels(&self.slots[slot]);
            if !ops.is_empty() {
                plan.jobs.push(PlannedJob {
                    ops: std::mem::take(&mut ops),
                    levels: reached,
                });
            }
            if reached >= levels {
                return;
            }
        }
    }

    /// Trims other slots' surplus until `needed` pages are free.
    fn reclaim(&mut self, needed: usize, keep: usize, ops: &mut Vec<PageOp>) {
        while self.free.len() < needed {
            let victim = (self.slots.iter().enumerate())
                .filter(|(index, s)| *index != keep && self.surplus_pages(s) > 0)
                .min_by_key(|(_, s)| {
                    let surplus = self.surplus_pages(s);
                    (
                        s.live,
                        if s.live {
                            usize::MAX - surplus
                        } else {
                            s.idle_since as usize
                        },
                    )
                })
                .map(|(index, _)| index);
            let Some(victim) = victim else {
                debug_assert!(false, "ensure_pages checked that surplus covers the need");
                return;
            };
            let short_levels = (needed - self.free.len()).div_ceil(self.geometry.runs);
            let entry = &self.slots[victim];
            let keep_levels = self
                .need_levels(entry)
                .max(self.levels(entry).saturating_sub(short_levels));
            self.trim(victim, keep_levels, ops);
        }
    }

    /// Claims pages so that `slot` holds `levels` per run.
    fn grow(&mut self, slot: usize, levels: usize, ops: &mut Vec<PageOp>) {
        let from = self.levels(&self.slots[slot]);
        if levels <= from {
            return;
        }
        let runs = self.geometry.runs;
        let mut added = vec![0; (levels - from) * runs];
        for run in 0..runs {
            let mut pages = Vec::with_capacity(levels - from);
            for level in 0..levels - from {
                let Reverse(page) = self
                    .free
                    .pop()
                    .expect("callers check the free list covers the growth");
                added[level * runs + run] = page;
                pages.push(page);
            }
            ops.push(PageOp::Map {
                first: self.geometry.virtual_page(run, slot, from),
                pages,
            });
        }
        self.slots[slot].pages.extend(added);
    }

    /// Returns the pages of `slot` above `levels` per run to the free list.
    fn trim(&mut self, slot: usize, levels: usize, ops: &mut Vec<PageOp>) {
        let runs = self.geometry.runs;
        let entry = &mut self.slots[slot];
        let from = entry.pages.len() / runs;
        if levels >= from {
            return;
        }
        for run in 0..runs {
            let first = self.geometry.virtual_page(run, slot, levels);
            ops.push(PageOp::Unmap {
                first,
                count: from - levels,
            });
        }
        let released = entry.pages.split_off(levels * runs);
        entry.marks.clamp(levels);
        self.free.extend(released.into_iter().map(Reverse));
    }

    /// Ends `slot`'s sequence; its pages stay mapped for a later one.
    pub(crate) fn free(&mut self, slot: SlotId) -> Result<(), KvError> {
        self.live_slot(slot)?;
        self.clock += 1;
        let entry = &mut self.slots[slot as usize];
        entry.live = false;
        entry.tokens = 0;
        entry.idle_since = self.clock;
        Ok(())
    }

    /// Trims every idle slot to nothing: the pages go back to the free list. Returns the unmaps.
    pub(crate) fn trim_idle(&mut self) -> Vec<PageOp> {
        let mut ops = Vec::new();
        for slot in 0..self.slots.len() {
            if !self.slots[slot].live {
                self.trim(slot, 0, &mut ops);
            }
        }
        ops
    }

    /// Job `ticket` brings `slot` to `levels` pages per run; marks of jobs up to `done` are finished.
    pub(crate) fn mark_ready(&mut self, slot: SlotId, levels: usize, ticket: u64, done: u64) {
        if let Some(entry) = self.slots.get_mut(slot as usize) {
            entry.marks.prune(done);
            entry.marks.push(levels, ticket);
        }
    }

    /// The mapper job to wait for before `slot` can hold `tokens` tokens (0: none).
    pub(crate) fn ready_ticket(&self, slot: SlotId, tokens: usize) -> Result<u64, KvError> {
        let entry = self.live_slot(slot)?;
        let levels = self.geometry.levels_for(tokens);
        let reserved = entry.tokens;
        if tokens > reserved {
            return Err(KvError::NotReserved {
                slot,
                tokens,
                reserved,
            });
        }
        entry.marks.ticket_for(levels).ok_or(KvError::NotReserved {
            slot,
            tokens,
            reserved,
        })
    }

    pub(crate) fn counts(&self) -> Counts {
        let mut counts = Counts {
            pages_free: self.free.len(),
            pages_cached: 0,
            pages_held: 0,
            pages_available: self.free.len(),
            live_seqs: 0,
            live_tokens: 0,
        };
        for slot in &self.slots {
            counts.pages_available += self.surplus_pages(slot);
            if slot.live {
                counts.pages_held += slot.pages.len();
                counts.live_seqs += 1;
                counts.live_tokens += slot.tokens;
            } else {
                counts.pages_cached += slot.pages.len();
            }
        }
        counts
    }

    /// Pages per run `slot` holds now (live or idle).
    pub(crate) fn slot_levels(&self, slot: SlotId) -> Option<usize> {
        self.slots.get(slot as usize).map(|s| self.levels(s))
    }

    /// Tokens reserved by `slot` if it is live.
    pub(crate) fn slot_tokens(&self, slot: SlotId) -> Option<usize> {
        self.live_slot(slot).ok().map(|s| s.tokens)
    }

    /// Every claimed page with its virtual page number (for consistency checks).
    #[cfg(test)]
    pub(crate) fn claimed_pages(&self) -> Vec<(usize, PageId)> {
        let runs = self.geometry.runs;
        let mut claimed = Vec::new();
        for (index, slot) in self.slots.iter().enumerate() {
            for (at, &page) in slot.pages.iter().enumerate() {
                claimed.push((
                    self.geometry.virtual_page(at % runs, index, at / runs),
                    page,
                ));
            }
        }
        claimed
    }

    #[cfg(test)]
    pub(crate) fn free_list(&self) -> Vec<PageId> {
        let mut pages: Vec<PageId> = self.free.iter().map(|page| page.0).collect();
        pages.sort_unstable();
        pages
    }
}

#[cfg(test)]
mod tests {
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
}
