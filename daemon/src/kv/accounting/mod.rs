//! Page accounting: which slot is live, how many tokens it holds, which physical pages it has
//! claimed, which pages are free and which hold cached prefixes. Every change is answered with
//! the page operations (map / unmap at virtual page numbers, copies between pool pages) the
//! mapper must carry out; nothing physical happens here.
//!
//! Policies (vAttention's, plus look-ahead and prefix sharing):
//! - a slot's pages are a prefix of each run (`levels` pages per run), claimed in order;
//! - a level is either the slot's own (private, written by its sequence) or a node of the
//!   prefix index (`sharing`): mapped wherever its prefix is used, never written;
//! - `free` keeps a slot's pages mapped (deferred reclamation); a new sequence takes the free
//!   slot that can keep the most of what it needs: with enough pages, the fewest (best fit),
//!   else the most (its cached prefix levels count as kept when they are the ones it maps);
//! - when the free list runs short, pages are trimmed from the top of other slots' *surplus*
//!   (own pages a slot holds beyond what its tokens need): idle slots first, longest idle
//!   first, then look-ahead pages of live slots, largest surplus first; then cached prefix
//!   pages no live sequence uses are evicted, least recently released first — all before the
//!   scheduler preempts anything (it only does when this runs out);
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

mod plan;
mod sharing;

use super::config::KvConfig;
use super::geometry::Geometry;
use super::prefix::{NodeId, PrefixIndex};
use super::ready::ReadyMarks;
use crate::kv::SlotId;
use plan::levels_per_job;
pub(crate) use plan::{PageOp, Plan, PlannedJob};

/// Totals of the accounting, in pages and tokens. Every page is counted once, however many
/// sequences map it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counts {
    /// Pages no slot holds and no cached prefix uses.
    pub(crate) pages_free: usize,
    /// Pages kept for later: idle slots' own pages and cached prefix pages no live sequence uses.
    pub(crate) pages_cached: usize,
    /// Pages live sequences use (their tokens' pages, shared or not, plus look-ahead).
    pub(crate) pages_held: usize,
    /// Pages a new reservation can get: free pages, every slot's surplus and unused cached
    /// prefix pages.
    pub(crate) pages_available: usize,
    /// Pages two or more live sequences use.
    pub(crate) pages_shared: usize,
    /// Pages in the prefix index (used or not).
    pub(crate) pages_prefix: usize,
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
    /// Levels whose pages are prefix index nodes (shared, never written).
    indexed_levels: usize,
    /// The prefix nodes this live sequence uses: the levels it maps shared and the levels it
    /// filled and published; empty while idle.
    nodes: Vec<NodeId>,
    /// Levels from level 0 that are in the prefix index, by this sequence's pages or (when
    /// another sequence published the same prefix first) by that one's.
    published: usize,
    idle_since: u64,
    marks: ReadyMarks,
}

/// Page accounting of one region.
#[derive(Debug)]
pub(crate) struct Accounting {
    geometry: Geometry,
    eager: bool,
    lookahead_tokens: usize,
    prefix_caching: bool,
    slots: Vec<Slot>,
    /// Free physical pages; the lowest id comes out first so that a run grows over consecutive
    /// ids (which the CPU backend maps with one call).
    free: BinaryHeap<Reverse<PageId>>,
    index: PrefixIndex,
    clock: u64,
}

impl Accounting {
    pub(crate) fn new(geometry: Geometry, config: &KvConfig) -> Self {
        let pool_pages = geometry.pool_pages as PageId;
        let slots = (0..geometry.max_seqs).map(|_| Slot::default()).collect();
        let free = (0..pool_pages).map(Reverse).collect();
        let index = PrefixIndex::new(geometry.pool_pages, geometry.runs, config.partial_page);
        Self {
            geometry,
            eager: config.eager,
            lookahead_tokens: config.lookahead_tokens,
            prefix_caching: config.prefix_caching,
            slots,
            free,
            index,
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

    /// Whether level `level` of `slot` is a prefix index node.
    fn is_indexed(&self, slot: &Slot, level: usize) -> bool {
        self.index
            .node_of_page(slot.pages[level * self.geometry.runs])
            .is_some()
    }

    /// Own pages `slot` holds beyond what its tokens need: trimming frees them. (A live slot's
    /// levels past its need are all its own; an idle slot's indexed levels stay cached.)
    fn surplus_pages(&self, slot: &Slot) -> usize {
        let levels = self.levels(slot);
        let own = match slot.live {
            true => levels - self.need_levels(slot),
            false => levels - slot.indexed_levels,
        };
        own * self.geometry.runs
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

    /// Pages a reservation for `slot` could get: free pages, every other slot's surplus and the
    /// cached prefix pages no live sequence uses.
    fn available_excluding(&self, slot: usize) -> usize {
        let others: usize = (self.slots.iter().enumerate())
            .filter(|(index, _)| *index != slot)
            .map(|(_, s)| self.surplus_pages(s))
            .sum();
        self.free.len() + others + self.index.unreferenced_pages()
    }

    /// Pages beyond what is held that `slot` must get to reach `levels` per run.
    fn extra_pages(&self, slot: usize, levels: usize) -> usize {
        levels.saturating_sub(self.levels(&self.slots[slot])) * self.geometry.runs
    }

    /// Make `slot` hold `tokens` tokens in all (a reservation never shrinks while live).
    pub(crate) fn reserve(&mut self, slot: SlotId, tokens: usize) -> Result<Plan, KvError> {
        self.live_slot(slot)?;
        self.check_length(tokens)?;
        let index = slot as usize;
        let tokens = tokens.max(self.slots[index].tokens);
        let levels = self.want_levels(tokens);
        let needed = self.extra_pages(index, levels);
        let available = self.available_excluding(index);
        if needed > available {
            return Err(KvError::OutOfPages {
                needed,
                free: available,
            });
        }
        let entry = &mut self.slots[index];
        if tokens > entry.tokens {
            entry.last_growth = tokens - entry.tokens;
        }
        entry.tokens = tokens;
        Ok(self.plan_growth(index, levels, Vec::new()))
    }

    /// Grows `slot` to `levels` (trimming others as needed), then adds look-ahead; `lead` runs
    /// first.
    fn plan_growth(&mut self, slot: usize, levels: usize, mut lead: Vec<PageOp>) -> Plan {
        let mut plan = Plan::default();
        let needed = self.extra_pages(slot, levels);
        self.reclaim(needed, slot, &mut lead);
        self.grow_in_jobs(slot, levels, lead, &mut plan);
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

    /// Frees pages until `needed` are free: other slots' surplus first, then cached prefix
    /// pages no live sequence uses, least recently released first.
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
            if let Some(victim) = victim {
                let keep_levels = self.trim_target(victim, needed - self.free.len());
                self.trim(victim, keep_levels, ops);
            } else if let Some(node) = self.index.oldest_unreferenced() {
                self.evict(node, ops);
            } else {
                debug_assert!(
                    false,
                    "callers checked that surplus and cache cover the need"
                );
                return;
            }
        }
    }

    /// The levels to trim `slot` to so that at least `short` of its own pages are freed (or all
    /// of its surplus, if that is less).
    fn trim_target(&self, slot: usize, short: usize) -> usize {
        let entry = &self.slots[slot];
        let runs = self.geometry.runs;
        let floor = self.need_levels(entry);
        let mut levels = self.levels(entry);
        let mut freed = 0;
        while levels > floor && freed < short {
            levels -= 1;
            if !self.is_indexed(entry, levels) {
                freed += runs;
            }
        }
        levels
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
                shared: false,
            });
        }
        self.slots[slot].pages.extend(added);
    }

    /// Unmaps the pages of `slot` above `levels` per run: its own go back to the free list,
    /// cached prefix pages stay in the index.
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
        for level in released.chunks(runs) {
            if self.index.node_of_page(level[0]).is_some() {
                entry.indexed_levels -= 1;
            } else {
                self.free.extend(level.iter().copied().map(Reverse));
            }
        }
    }

    /// Ends `slot`'s sequence; its pages stay mapped for a later one, and the prefix pages it
    /// used stay cached (its deepest level first in line for eviction).
    pub(crate) fn free(&mut self, slot: SlotId) -> Result<(), KvError> {
        self.live_slot(slot)?;
        self.clock += 1;
        let entry = &mut self.slots[slot as usize];
        entry.live = false;
        entry.tokens = 0;
        entry.idle_since = self.clock;
        entry.published = 0;
        for node in std::mem::take(&mut entry.nodes).into_iter().rev() {
            self.index.release(node);
        }
        Ok(())
    }

    /// Trims every idle slot to nothing: its own pages go back to the free list, the cached
    /// prefix pages it mapped stay in the index. Returns the unmaps.
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
        let runs = self.geometry.runs;
        let mut counts = Counts {
            pages_free: self.free.len(),
            pages_cached: self.index.unreferenced_pages(),
            pages_held: self.index.referenced_pages(),
            pages_available: self.free.len() + self.index.unreferenced_pages(),
            pages_shared: self.index.shared_pages(),
            pages_prefix: self.index.pages(),
            live_seqs: 0,
            live_tokens: 0,
        };
        for slot in &self.slots {
            counts.pages_available += self.surplus_pages(slot);
            let own = (self.levels(slot) - slot.indexed_levels) * runs;
            if slot.live {
                counts.pages_held += own;
                counts.live_seqs += 1;
                counts.live_tokens += slot.tokens;
            } else {
                counts.pages_cached += own;
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
mod tests;
