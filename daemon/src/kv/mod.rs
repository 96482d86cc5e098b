//! vAttention KV memory: one virtual reservation per model, each sequence's K/V virtually
//! contiguous, physical pages (`blockSize` bytes) mapped on demand ahead of need.
//!
//! Must not: know about requests, tokens' contents or the model's maths.

use crate::model::kv_access::SlotId;

/// Why the KV memory could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("no free KV slot (all {0} sequences are in use)")]
    NoFreeSlot(usize),
    #[error("out of KV pages: need {needed}, {free} free")]
    OutOfPages { needed: usize, free: usize },
    #[error("sequence of {tokens} tokens exceeds the slot capacity of {max} tokens")]
    TooLong { tokens: usize, max: usize },
    #[error("unknown KV slot {0}")]
    UnknownSlot(SlotId),
    #[error("KV backend: {0}")]
    Backend(String),
}

/// What the scheduler needs from KV memory: page accounting only, never physical work.
///
/// `reserve` only claims pages; a background mapper makes them physical before the engine
/// runs the batch (the engine waits, and counts a stall, only when it is not done in time).
pub trait KvBudget {
    /// Tokens one page holds for one sequence.
    fn tokens_per_page(&self) -> usize;
    /// Could a new sequence of `tokens` tokens get a slot and pages for all of them now?
    fn can_admit(&self, tokens: usize) -> bool;
    /// Take a slot for a new sequence and reserve pages for its first `tokens` tokens.
    fn admit(&mut self, tokens: usize) -> Result<SlotId, KvError>;
    /// Reserve pages so that `slot` can hold `tokens` tokens in all.
    fn reserve(&mut self, slot: SlotId, tokens: usize) -> Result<(), KvError>;
    /// Give a slot back (its pages may stay mapped for a later sequence: deferred reclamation).
    fn release(&mut self, slot: SlotId);
    /// Pages in the pool that no sequence holds.
    fn free_pages(&self) -> usize;
}
