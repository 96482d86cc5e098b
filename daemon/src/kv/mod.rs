//! vAttention KV memory: one virtual reservation per model, each sequence's K/V virtually
//! contiguous, physical pages (`blockSize` bytes) mapped on demand ahead of need.
//!
//! - [`config`]: the region's shape and budget; [`geometry`]: where every byte lives;
//! - `accounting`: slots and pages, pure bookkeeping (what [`KvBudget`] answers from);
//! - `prefix`: the prefix index, which cached pages hold which token prefix (by the engine's
//!   chained token hashes), reference-counted, evicted least recently used first;
//! - [`backend`]: the physical side (CPU memfd pool, CUDA VMM behind feature `cuda`);
//! - `mapper` (with its `page_table`): the thread that maps what the next iteration needs while
//!   this one computes; `ready`: which of its jobs makes which pages usable;
//! - [`KvManager`] ties them together for the scheduler ([`KvBudget`]) and the forward pass
//!   ([`KvAccess`], the narrow interface the model reads and writes K/V through, with the
//!   [`SlotId`] that names a sequence's row); [`KvStats`] are its counters.
//!
//! Must not: know about requests, tokens' contents (prefixes are looked up by hashes) or the
//! model's maths (it is the bottom layer: the model and the scheduler import it, it imports
//! neither).

mod access;
mod accounting;
pub mod backend;
pub mod config;
pub mod geometry;
mod manager;
mod mapper;
mod page_table;
mod prefix;
mod ready;
pub mod stats;
#[cfg(test)]
mod tests;

pub use access::{KvAccess, LayerKv, SlotId};
pub use config::{
    DEFAULT_LOOKAHEAD_TOKENS, DEFAULT_PAGE_BYTES, KvConfig, KvLayout, PAGE_GRANULE_BYTES,
    PartialPage,
};
pub use geometry::Geometry;
pub use manager::KvManager;
pub use mapper::LatencySamples;
pub use prefix::TokenHash;
pub use stats::KvStats;

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
    #[error("invalid KV configuration: {0}")]
    InvalidConfig(String),
    #[error("KV slot {slot} asked for {tokens} tokens but reserved only {reserved}")]
    NotReserved {
        slot: SlotId,
        tokens: usize,
        reserved: usize,
    },
    #[error("{call} failed: {source}")]
    Os {
        call: &'static str,
        source: std::io::Error,
    },
    #[error("CUDA {call} failed with {name} ({code})")]
    Driver {
        call: &'static str,
        code: u32,
        name: String,
    },
    #[error("no usable CUDA device: {0}")]
    NoCuda(String),
    #[error("KV mapper: {0}")]
    Mapper(String),
    #[error("KV page table invariant broken: {0}")]
    Invariant(String),
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
    /// Pages a new reservation can get (free, surplus, cached prefixes no one uses); shared
    /// pages count once.
    fn free_pages(&self) -> usize;
    /// As [`can_admit`](Self::can_admit), for a sequence whose chained token hashes are
    /// `hashes`: the pages of its cached prefix are already there.
    fn can_admit_prefixed(&self, tokens: usize, hashes: &[TokenHash]) -> bool {
        let _ = hashes;
        self.can_admit(tokens)
    }
    /// As [`admit`](Self::admit), mapping the longest cached prefix `hashes` match: returns the
    /// slot and how many of the sequence's first tokens already have K/V (its prefill starts
    /// there; at least its last token is left to compute).
    fn admit_prefixed(
        &mut self,
        tokens: usize,
        hashes: &[TokenHash],
    ) -> Result<(SlotId, usize), KvError> {
        let _ = hashes;
        self.admit(tokens).map(|slot| (slot, 0))
    }
    /// `slot` has K/V for its first `computed` tokens, whose chained hashes start `hashes`: the
    /// pages they fill become cached prefix pages (shared from now on, never written again).
    fn publish(&mut self, slot: SlotId, computed: usize, hashes: &[TokenHash]) {
        let _ = (slot, computed, hashes);
    }
}
