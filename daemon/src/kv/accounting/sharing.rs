//! Admission and prefix sharing: a new sequence gets a slot whose first levels are the cached
//! prefix pages its hashes match (mapped shared), one level started as a copy where the hit ends
//! inside a page, and its own pages for the rest; a live sequence publishes the levels it has
//! filled; cached pages no one uses are evicted when pages run short.
//!
//! Must not: let a sequence write a page it shares (shared levels lie wholly below the first
//! token it computes) or free a page a live sequence uses (eviction takes unused nodes only).

use std::cmp::Reverse;

use super::{Accounting, PageOp, Plan, PlannedJob};
use crate::kv::KvError;
use crate::kv::SlotId;
use crate::kv::prefix::{Hit, TokenHash};

/// A new sequence's place, worked out before anything changes.
#[derive(Debug)]
struct Admission {
    slot: usize,
    /// Levels of the slot's current pages it keeps (its cached prefix levels the hit maps,
    /// then its own pages).
    keep: usize,
    levels: usize,
    hit: Hit,
}

/// Where a new sequence goes and what it holds at once.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) slot: SlotId,
    /// Tokens whose K/V the slot holds from the cache (the prefill starts here).
    pub(crate) cached_tokens: usize,
    pub(crate) plan: Plan,
}

impl Accounting {
    /// Levels of idle `slot` a sequence with `hit` can keep: its levels that are the hit's shared
    /// nodes, then its own pages (a cached page above the hit cannot be written).
    fn reusable_levels(&self, slot: usize, hit: &Hit) -> usize {
        let entry = &self.slots[slot];
        let held = self.levels(entry);
        if entry.indexed_levels == 0 && hit.shared.is_empty() {
            return held;
        }
        let runs = self.geometry.runs;
        (0..held)
            .find(|&level| {
                let page = entry.pages[level * runs];
                match hit.shared.get(level) {
                    Some(&node) => self.index.node(node).pages[0] != page,
                    None => self.index.node_of_page(page).is_some(),
                }
            })
            .unwrap_or(held)
    }

    /// The idle slot a new sequence needing `levels` per run gets, with the levels it keeps:
    /// among those that keep enough, the one that keeps the fewest (best fit), else the one that
    /// keeps the most.
    fn choose_slot(&self, levels: usize, hit: &Hit) -> Option<(usize, usize)> {
        let idle = || {
            (0..self.slots.len())
                .filter(|&slot| !self.slots[slot].live)
                .map(|slot| (slot, self.reusable_levels(slot, hit)))
        };
        let best_fit = idle()
            .filter(|&(_, keep)| keep >= levels)
            .min_by_key(|&(slot, keep)| (keep, slot));
        best_fit.or_else(|| idle().max_by_key(|&(slot, keep)| (keep, Reverse(slot))))
    }

    /// Works out a new sequence's slot and hit; on error nothing has changed.
    fn plan_admission(&self, tokens: usize, hashes: &[TokenHash]) -> Result<Admission, KvError> {
        self.check_length(tokens)?;
        let levels = self.want_levels(tokens);
        let hit = match self.prefix_caching {
            true => self.index.lookup(&self.geometry, hashes, tokens),
            false => Hit::default(),
        };
        let (slot, keep) = self
            .choose_slot(levels, &hit)
            .ok_or(KvError::NoFreeSlot(self.geometry.max_seqs))?;
        let runs = self.geometry.runs;
        let entry = &self.slots[slot];
        // Its own pages above `keep` are freed by trimming it; the nodes the hit uses stop being
        // evictable once it holds them.
        let own_above: usize = (keep..self.levels(entry))
            .filter(|&level| !self.is_indexed(entry, level))
            .count()
            * runs;
        let needed = levels.saturating_sub(keep.max(hit.shared.len())) * runs;
        let available = (self.available_excluding(slot) + own_above)
            .saturating_sub(self.index.unreferenced_pages_of(&hit));
        if needed > available {
            return Err(KvError::OutOfPages {
                needed,
                free: available,
            });
        }
        Ok(Admission {
            slot,
            keep,
            levels,
            hit,
        })
    }

    /// Could a new sequence of `tokens` tokens, whose chained token hashes start with `hashes`
    /// (empty: no prefix lookup), get a slot and pages for all of them now?
    pub(crate) fn can_admit(&self, tokens: usize, hashes: &[TokenHash]) -> bool {
        self.plan_admission(tokens, hashes).is_ok()
    }

    /// Takes a slot for a new sequence of `tokens` tokens, maps the cached prefix its `hashes`
    /// match and reserves its own pages for the rest.
    pub(crate) fn admit(
        &mut self,
        tokens: usize,
        hashes: &[TokenHash],
    ) -> Result<Admitted, KvError> {
        let Admission {
            slot,
            keep,
            levels,
            hit,
        } = self.plan_admission(tokens, hashes)?;
        // Hold what the hit reads first, so that making room below never evicts it; the copy's
        // source only until the copy is queued.
        for node in hit.nodes() {
            self.index.acquire(node);
        }
        let mut lead = Vec::new();
        self.trim(slot, keep, &mut lead);
        let shared = hit.shared.len();
        let runs = self.geometry.runs;
        if keep < shared {
            for run in 0..runs {
                lead.push(PageOp::Map {
                    first: self.geometry.virtual_page(run, slot, keep),
                    pages: (hit.shared[keep..].iter())
                        .map(|&node| self.index.node(node).pages[run])
                        .collect(),
                    shared: true,
                });
            }
            let pages: Vec<_> = (keep..shared)
                .flat_map(|level| self.index.node(hit.shared[level]).pages.clone())
                .collect();
            self.slots[slot].pages.extend(pages);
        }
        let entry = &mut self.slots[slot];
        entry.indexed_levels = shared;
        entry.published = shared;
        entry.nodes = hit.shared.clone();
        entry.live = true;
        entry.tokens = tokens;
        entry.last_growth = 0;
        if hit.copy.is_some() {
            // The copied level is ready once its copy is done, not when it was last mapped.
            entry.marks.clamp(shared);
        }
        let mut plan = self.plan_growth(slot, levels, lead);
        if let Some((source, bytes)) = hit.copy {
            let copy = PageOp::Copy {
                from: self.index.node(source).pages.clone(),
                to: self.slots[slot].pages[shared * runs..(shared + 1) * runs].to_vec(),
                bytes,
            };
            match plan.jobs.first_mut() {
                Some(job) if job.levels > shared => job.ops.push(copy),
                _ => plan.jobs.insert(
                    0,
                    PlannedJob {
                        ops: vec![copy],
                        levels: plan.need_levels,
                    },
                ),
            }
            self.index.release(source);
        }
        Ok(Admitted {
            slot: slot as SlotId,
            cached_tokens: hit.tokens,
            plan,
        })
    }

    /// `slot`'s first `computed` tokens are in KV: every level they fill becomes a prefix node
    /// (unless another sequence published the same prefix first: this one's copy then stays its
    /// own, and the index keeps the first).
    pub(crate) fn publish(
        &mut self,
        slot: SlotId,
        computed: usize,
        hashes: &[TokenHash],
    ) -> Result<(), KvError> {
        if !self.prefix_caching {
            return Ok(());
        }
        let entry = self.live_slot(slot)?;
        let known = computed.min(hashes.len()).min(entry.tokens);
        let index = slot as usize;
        let runs = self.geometry.runs;
        loop {
            let entry = &self.slots[index];
            let level = entry.published;
            let end = self.geometry.level_end_token(level);
            if level >= self.levels(entry) || end > known || self.is_indexed(entry, level) {
                return Ok(());
            }
            let key = hashes[end - 1];
            if self.index.find(key, level).is_none() {
                let parent = level
                    .checked_sub(1)
                    .map(|below| hashes[self.geometry.level_end_token(below) - 1]);
                let pages = entry.pages[level * runs..(level + 1) * runs].to_vec();
                let first = self.geometry.level_first_token(level);
                let whole = self.geometry.level_whole_end(level);
                let token_hashes = hashes[first..whole].to_vec();
                let node = self.index.insert(key, parent, level, pages, token_hashes);
                let entry = &mut self.slots[index];
                entry.indexed_levels += 1;
                entry.nodes.push(node);
            }
            self.slots[index].published += 1;
        }
    }

    /// Evicts unused cached prefix node `node`: unmapped from every idle slot that maps it
    /// (with what those slots hold above it), its pages back to the free list.
    pub(super) fn evict(&mut self, node: u32, ops: &mut Vec<PageOp>) {
        let (level, first_page) = {
            let node = self.index.node(node);
            (node.level, node.pages[0])
        };
        let runs = self.geometry.runs;
        for slot in 0..self.slots.len() {
            if self.slots[slot].pages.get(level * runs) == Some(&first_page) {
                self.trim(slot, level, ops);
            }
        }
        let removed = self.index.remove(node);
        self.free.extend(removed.pages.into_iter().map(Reverse));
    }

    /// Evicts every cached prefix page no live sequence uses (vLLM's `reset_prefix_cache`).
    /// Returns the unmaps and the pages freed.
    pub(crate) fn reset_prefix_cache(&mut self) -> (Vec<PageOp>, usize) {
        let mut ops = Vec::new();
        let before = self.free.len();
        while let Some(node) = self.index.oldest_unreferenced() {
            self.evict(node, &mut ops);
        }
        (ops, self.free.len() - before)
    }

    /// Live sequences using the prefix node pool page `page` belongs to (for checks).
    #[cfg(test)]
    pub(crate) fn page_refs(&self, page: crate::kv::backend::PageId) -> Option<usize> {
        self.index
            .node_of_page(page)
            .map(|node| self.index.refs(node))
    }

    /// The pages `slot` holds, level-major (for checks).
    #[cfg(test)]
    pub(crate) fn slot_pages(&self, slot: SlotId) -> Vec<crate::kv::backend::PageId> {
        self.slots
            .get(slot as usize)
            .map(|entry| entry.pages.clone())
            .unwrap_or_default()
    }

    /// Every prefix node's pages (for checks).
    #[cfg(test)]
    pub(crate) fn prefix_node_pages(&self) -> Vec<Vec<crate::kv::backend::PageId>> {
        (self.index.ids().into_iter())
            .map(|node| self.index.node(node).pages.clone())
            .collect()
    }
}
