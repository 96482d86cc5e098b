//! Page accounting without memory: a fixed pool of pages handed to slots, for the simulator
//! and the scheduler's tests. Enforces the same [`KvBudget`] contract as the real KV manager.
//!
//! Must not: map anything or hold per-token state; a slot is just a count of pages.

use crate::kv::{KvBudget, KvError};
use crate::model::kv_access::SlotId;

/// A pool of `total_pages` pages of `tokens_per_page` tokens shared by `slots` sequences.
#[derive(Debug, Clone)]
pub struct SimKv {
    tokens_per_page: usize,
    total_pages: usize,
    max_tokens_per_slot: usize,
    /// Pages held by each slot; `None` is a free slot.
    slot_pages: Vec<Option<usize>>,
    free_pages: usize,
}

impl SimKv {
    /// `max_tokens_per_slot` is the slot's capacity (the model's context length).
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
            slot_pages: vec![None; slots],
            free_pages: total_pages,
        })
    }

    pub fn total_pages(&self) -> usize {
        self.total_pages
    }

    /// Slots currently given to sequences.
    pub fn slots_in_use(&self) -> usize {
        self.slot_pages
            .iter()
            .filter(|pages| pages.is_some())
            .count()
    }

    /// Pages `slot` holds, or `None` if the slot is free or does not exist.
    pub fn pages_held(&self, slot: SlotId) -> Option<usize> {
        self.slot_pages.get(slot as usize).copied().flatten()
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

    fn take_pages(&mut self, needed: usize) -> Result<(), KvError> {
        if needed > self.free_pages {
            return Err(KvError::OutOfPages {
                needed,
                free: self.free_pages,
            });
        }
        self.free_pages -= needed;
        Ok(())
    }
}

impl KvBudget for SimKv {
    fn tokens_per_page(&self) -> usize {
        self.tokens_per_page
    }

    fn can_admit(&self, tokens: usize) -> bool {
        tokens <= self.max_tokens_per_slot
            && self.pages_for(tokens) <= self.free_pages
            && self.slot_pages.iter().any(Option::is_none)
    }

    fn admit(&mut self, tokens: usize) -> Result<SlotId, KvError> {
        self.check_length(tokens)?;
        let index = self
            .slot_pages
            .iter()
            .position(Option::is_none)
            .ok_or(KvError::NoFreeSlot(self.slot_pages.len()))?;
        let pages = self.pages_for(tokens);
        self.take_pages(pages)?;
        self.slot_pages[index] = Some(pages);
        // The constructor checked that every slot index fits a SlotId.
        Ok(index as SlotId)
    }

    fn reserve(&mut self, slot: SlotId, tokens: usize) -> Result<(), KvError> {
        let held = self.pages_held(slot).ok_or(KvError::UnknownSlot(slot))?;
        self.check_length(tokens)?;
        let wanted = self.pages_for(tokens);
        if wanted > held {
            self.take_pages(wanted - held)?;
            self.slot_pages[slot as usize] = Some(wanted);
        }
        Ok(())
    }

    fn release(&mut self, slot: SlotId) {
        if let Some(entry) = self.slot_pages.get_mut(slot as usize)
            && let Some(pages) = entry.take()
        {
            self.free_pages += pages;
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
