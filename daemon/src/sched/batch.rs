//! What one iteration runs ([`Batch`]) and what the engine reports back ([`StepOutcome`]).
//!
//! Must not: decide anything; these are plain records passed between scheduler and engine.

use super::request::RequestId;
use crate::kv::SlotId;

/// One sequence's share of an iteration: positions `start_pos..start_pos + num_tokens` of its
/// known tokens (prompt followed by generated tokens) go through the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchItem {
    pub id: RequestId,
    pub slot: SlotId,
    /// First position processed; 0 means the slot starts fresh (new request or recompute).
    pub start_pos: usize,
    pub num_tokens: usize,
    /// The item reaches the end of the known tokens, so the engine samples a token for it.
    /// True for decodes and for the last chunk of a prefill.
    pub samples: bool,
    /// A decode (one token after the prompt was done), as opposed to a prefill chunk.
    pub is_decode: bool,
}

impl BatchItem {
    /// Tokens of K/V the slot holds once this item has run (what the engine waits ready for).
    pub fn end_pos(&self) -> usize {
        self.start_pos + self.num_tokens
    }
}

/// Why the scheduler gave up on a request. The engine reports it to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AbortReason {
    /// Even with every page free, the KV pool cannot hold this many tokens for one sequence.
    #[error("{tokens} tokens of context do not fit in the KV cache even when it is empty")]
    ExceedsKvCapacity { tokens: usize },
    /// The policy processes prefills whole and this one is longer than the token budget.
    #[error("prefill of {tokens} tokens exceeds the token budget of {budget} of this policy")]
    ExceedsTokenBudget { tokens: usize, budget: usize },
    /// The KV manager refused the sequence's length or failed.
    #[error("KV cache: {0}")]
    Kv(String),
}

/// One iteration's work, from [`crate::sched::Scheduler::schedule`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Decodes first, then prefill chunks, each request at most once.
    pub items: Vec<BatchItem>,
    /// The token budget this batch was composed under; `total_tokens() <= token_budget`.
    pub token_budget: usize,
    /// Requests that lost their KV this iteration and wait for recompute (head of the queue).
    pub preempted: Vec<RequestId>,
    /// Requests that left because they were cancelled; their pages are back in the pool.
    pub cancelled: Vec<RequestId>,
    /// Requests the scheduler gave up on, with the reason; their pages are back in the pool.
    pub aborted: Vec<(RequestId, AbortReason)>,
}

impl Batch {
    pub fn total_tokens(&self) -> usize {
        self.items.iter().map(|item| item.num_tokens).sum()
    }

    pub fn prefill_tokens(&self) -> usize {
        self.items
            .iter()
            .filter(|item| !item.is_decode)
            .map(|item| item.num_tokens)
            .sum()
    }

    pub fn decode_tokens(&self) -> usize {
        self.items.iter().filter(|item| item.is_decode).count()
    }

    /// K/V positions the attention of this batch reads: every item reads its whole context.
    pub fn context_tokens(&self) -> usize {
        self.items.iter().map(BatchItem::end_pos).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// What the engine reports for one sampling item of the batch it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepOutcome {
    pub id: RequestId,
    /// The engine ends the request (EOS, stop string, length): its slot is released.
    pub finished: bool,
}
