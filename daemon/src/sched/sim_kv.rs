//! Page accounting without memory: a fixed pool of pages handed to slots, for the simulator
//! and the scheduler's tests. Enforces the same [`KvBudget`] contract as the real KV manager,
//! and models its look-ahead: after each admission or reservation a slot also takes up to
//! `lookahead_tokens` more tokens' pages from the free list (never by trimming), and those
//! surplus pages are trimmed again, largest surplus first, when another slot needs them.
//!
//! Must not: map anything or hold per-token state; a slot is just counts of pages.

use crate::kv::SlotId;
use crate::kv::{KvBudget, KvError};

/// Pages one live slot holds: `needed` for its reserved tokens, `held` with look-ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SlotPages {
    needed: usize,
    held: usize,
}

impl SlotPages {
    fn surplus(&self) -> usize {
        self.held - self.needed
    }
}

/// A pool of `total_pages` pages of `tokens_per_page` tokens shared by `slots` sequences.
#[derive(Debug, Clone)]
pub struct SimKv {
    tokens_per_page: usize,
    total_pages: usize,
    max_tokens_per_slot: usize,
    lookahead_tokens: usize,
    /// `None` is a free slot.
    slots: Vec<Option<SlotPages>>,
    free_pages: usize,
}

impl SimKv {
    /// `max_tokens_per_slot` is the slot's capacity (the model's context length); no look-ahead
    /// (see [`with_lookahead`](Self::with_lookahead)).
    pub fn new(
        tokens_per_page: usize,
        total_pages: usize,
        slots: usize,
        max_tokens_per_slot: usize,
    ) -> Result<Self, KvError> {
        if tokens_per_page == 0 || slots == 0 || max_tokens_per_slot == 0 {
            return Err(KvError::Backend(format!(
                "simulated KV needs tokens per page, slots and slot capacity above zero \
                 (got {tokens_per_page}, {slots}, {max_tokens_per_slot})"
            )));
        }
        if u32::try_from(slots).is_err() {
            return Err(KvError::Backend(format!(
                "{slots} slots do not fit a slot id"
            )));
        }
        Ok(SimKv {
            tokens_per_page,
            total_pages,
            max_tokens_per_slot,
            lookahead_tokens: 0,
            slots: vec![None; slots],
            free_pages: total_pages,
        })
    }

    /// The same pool with the KV manager's look-ahead (`KvConfig::lookahead_tokens`).
    pub fn with_lookahead(mut self, lookahead_tokens: usize) -> Self {
        self.lookahead_tokens = lookahead_tokens;
        self
    }

    pub fn total_pages(&self) -> usize {
        self.total_pages
    }

    /// Slots currently given to sequences.
    pub fn slots_in_use(&self) -> usize {
        self.slots.iter().filter(|pages| pages.is_some()).count()
    }

    /// Pages `slot` holds (look-ahead included), or `None` if the slot is free or unknown.
    pub fn pages_held(&self, slot: SlotId) -> Option<usize> {
        self.slots
            .get(slot as usize)
            .copied()
            .flatten()
            .map(|pages| pages.held)
    }

    fn pages_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.tokens_per_page)
    }

    fn check_length(&self, tokens: usize) -> Result<(), KvError> {
        if tokens > self.max_tokens_per_slot {
            return Err(KvError::TooLong {
                tokens,
                max: self.max_tokens_per_slot,
            });
        }
        Ok(())
    }

    /// Free pages plus the look-ahead surplus of every slot but `except`.
    fn available(&self, except: Option<usize>) -> usize {
        let surplus: usize = (self.slots.iter().enumerate())
            .filter(|(index, _)| Some(*index) != except)
            .filter_map(|(_, pages)| pages.map(|p| p.surplus()))
            .sum();
        self.free_pages + surplus
    }

    /// Takes `needed` pages for slot `index`, trimming other slots' surplus when the free list
    /// is short. On error nothing has changed.
    fn take_pages(&mut self, index: usize, needed: usize) -> Result<(), KvError> {
        let available = self.available(Some(index));
        if needed > available {
            return Err(KvError::OutOfPages {
                needed,
                free: available,
            });
        }
        while self.free_pages < needed {
            let victim = (self.slots.iter_mut().enumerate())
                .filter(|(other, _)| *other != index)
                .filter_map(|(_, pages)| pages.as_mut())
                .max_by_key(|pages| pages.surplus());
            let Some(victim) = victim else { break };
            let trimmed = victim.surplus().min(needed - self.free_pages);
            victim.held -= trimmed;
            self.free_pages += trimmed;
        }
        self.free_pages -= needed;
        Ok(())
    }

    /// Grows slot `index` to hold `tokens` (trimming others if needed), then adds look-ahead
    /// pages from the free list only.
    fn grow(&mut self, index: usize, tokens: usize) -> Result<(), KvError> {
        let mut pages = self.slots[index].unwrap_or(SlotPages { needed: 0, held: 0 });
        let wanted = self.pages_for(tokens);
        if wanted > pages.held {
            self.take_pages(index, wanted - pages.held)?;
            pages.held = wanted;
        }
        pages.needed = pages.needed.max(wanted);
        let ahead = self.pages_for((tokens + self.lookahead_tokens).min(self.max_tokens_per_slot));
        let extra = ahead.saturating_sub(pages.held).min(self.free_pages);
        self.free_pages -= extra;
        pages.held += extra;
        self.slots[index] = Some(pages);
        Ok(())
    }
}

impl KvBudget for SimKv {
    fn tokens_per_page(&self) -> usize {
        self.tokens_per_page
    }

    fn can_admit(&self, tokens: usize) -> bool {
        tokens <= self.max_tokens_per_slot
            && self.pages_for(tokens) <= self.available(None)
            && self.slots.iter().any(Option::is_none)
    }

    fn admit(&mut self, tokens: usize) -> Result<SlotId, KvError> {
        self.check_length(tokens)?;
        let index = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(KvError::NoFreeSlot(self.slots.len()))?;
        self.grow(index, tokens)?;
        // The constructor checked that every slot index fits a SlotId.
        Ok(index as SlotId)
    }

    fn reserve(&mut self, slot: SlotId, tokens: usize) -> Result<(), KvError> {
        self.pages_held(slot).ok_or(KvError::UnknownSlot(slot))?;
        self.check_length(tokens)?;
        self.grow(slot as usize, tokens)
    }

    fn release(&mut self, slot: SlotId) {
        if let Some(entry) = self.slots.get_mut(slot as usize)
            && let Some(pages) = entry.take()
        {
            self.free_pages += pages.held;
        }
    }

    fn free_pages(&self) -> usize {
        self.free_pages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admit_reserve_release_account_pages() {
        let mut kv = SimKv::new(16, 10, 2, 1000).expect("valid");
        assert!(kv.can_admit(160));
        assert!(!kv.can_admit(161));
        let slot = kv.admit(17).expect("room");
        assert_eq!((kv.pages_held(slot), kv.free_pages()), (Some(2), 8));
        kv.reserve(slot, 32).expect("no growth needed");
        assert_eq!(kv.free_pages(), 8);
        kv.reserve(slot, 33).expect("one more page");
        assert_eq!(kv.free_pages(), 7);
        kv.reserve(slot, 10).expect("never shrinks");
        assert_eq!(kv.pages_held(slot), Some(3));
        kv.release(slot);
        kv.release(slot);
        assert_eq!((kv.free_pages(), kv.slots_in_use()), (10, 0));
    }

    #[test]
    fn reserve_fails_with_out_of_pages_when_the_pool_is_empty() {
        let mut kv = SimKv::new(16, 2, 2, 1000).expect("valid");
        let slot = kv.admit(32).expect("room");
        assert!(matches!(
            kv.reserve(slot, 33),
            Err(KvError::OutOfPages { needed: 1, free: 0 })
        ));
        assert_eq!(kv.pages_held(slot), Some(2));
        assert!(!kv.can_admit(1));
        assert!(matches!(kv.admit(1), Err(KvError::OutOfPages { .. })));
    }

    #[test]
    fn lookahead_takes_free_pages_and_gives_them_back_when_needed() {
        let mut kv = SimKv::new(16, 4, 2, 1000)
            .expect("valid")
            .with_lookahead(16);
        let a = kv.admit(16).expect("room");
        assert_eq!((kv.pages_held(a), kv.free_pages()), (Some(2), 2));
        // The next page a decode writes is already held: no growth.
        kv.reserve(a, 17).expect("held ahead");
        assert_eq!((kv.pages_held(a), kv.free_pages()), (Some(3), 1));
        // A new sequence needing 2 pages trims `a`'s surplus instead of failing.
        assert!(kv.can_admit(32));
        assert!(!kv.can_admit(33));
        let b = kv.admit(32).expect("room after trimming look-ahead");
        assert_eq!((kv.pages_held(a), kv.pages_held(b)), (Some(2), Some(2)));
        assert!(kv.reserve(b, 33).is_err(), "needed pages are never trimmed");
    }

    #[test]
    fn slots_lengths_and_unknown_slots_are_checked() {
        let mut kv = SimKv::new(16, 100, 1, 64).expect("valid");
        assert!(matches!(
            kv.admit(65),
            Err(KvError::TooLong {
                tokens: 65,
                max: 64
            })
        ));
        assert!(!kv.can_admit(65));
        let slot = kv.admit(1).expect("room");
        assert!(!kv.can_admit(1));
        assert!(matches!(kv.admit(1), Err(KvError::NoFreeSlot(1))));
        assert!(matches!(kv.reserve(slot, 65), Err(KvError::TooLong { .. })));
        assert!(matches!(kv.reserve(5, 1), Err(KvError::UnknownSlot(5))));
        kv.release(5);
        assert!(SimKv::new(0, 1, 1, 1).is_err());
        assert!(SimKv::new(1, 1, 0, 1).is_err());
    }
}
