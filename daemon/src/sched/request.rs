//! A request as the scheduler sees it: lengths, and for prefix caching the chained hashes of
//! its tokens (opaque to the scheduler, which hands them to the KV budget), never token
//! contents.
//!
//! Must not: touch KV memory; [`Seq`] only records which slot it holds.

use std::sync::{Arc, Mutex, PoisonError};

use crate::kv::{SlotId, TokenHash};

/// Identifies one request for its whole life (queued, running, preempted, finished).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "request {}", self.0)
    }
}

/// The chained token hashes of one sequence (hash `i` covers its first `i + 1` tokens), shared
/// by the engine, which appends one per token it generates, and the scheduler, which looks the
/// prefix up at admission and publishes what the sequence has computed.
#[derive(Debug, Clone, Default)]
pub struct PrefixHashes(Arc<Mutex<Vec<TokenHash>>>);

impl PrefixHashes {
    pub fn new(hashes: Vec<TokenHash>) -> Self {
        Self(Arc::new(Mutex::new(hashes)))
    }

    /// Appends the hash of one more token.
    pub fn push(&self, hash: TokenHash) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(hash);
    }

    /// Runs `read` on the hashes so far.
    pub fn with<R>(&self, read: impl FnOnce(&[TokenHash]) -> R) -> R {
        read(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// What the engine hands the scheduler for a new request.
#[derive(Debug, Clone)]
pub struct SeqRequest {
    pub id: RequestId,
    /// Prompt length in tokens (after the patch tokenizer). How many tokens it generates is
    /// the engine's business: it reports the finish in a [`StepOutcome`](super::StepOutcome).
    pub prompt_len: usize,
    /// Its token hashes when prefix caching is on: admission maps the cached prefix they match
    /// and starts the prefill after it.
    pub prefix: Option<PrefixHashes>,
}

impl SeqRequest {
    /// A request without prefix caching.
    pub fn new(id: RequestId, prompt_len: usize) -> Self {
        Self {
            id,
            prompt_len,
            prefix: None,
        }
    }
}

/// Where a running sequence is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for admission (new, or preempted and waiting for recompute).
    Queued,
    /// Holds a slot; its known tokens are not all in KV yet (a prompt, or a recompute).
    Prefilling,
    /// Holds a slot; every known token but the last sampled one is in KV.
    Decoding,
}

/// One request's scheduling state.
///
/// The sequence's known tokens are the prompt followed by the tokens generated so far:
/// `known_len() = prompt_len + generated`. `computed` of them have K/V in the slot. A batch item
/// processes positions `computed..computed + n`; when it reaches `known_len()` it samples the
/// next token. After a preemption `computed` drops to 0 and all known tokens are recomputed.
#[derive(Debug, Clone)]
pub(crate) struct Seq {
    pub(crate) request: SeqRequest,
    pub(crate) generated: usize,
    pub(crate) computed: usize,
    pub(crate) slot: Option<SlotId>,
    pub(crate) phase: Phase,
    /// Cancelled by the engine; leaves (and returns its pages) at the next `schedule`.
    pub(crate) cancelled: bool,
}

impl Seq {
    /// Runs `read` on the request's token hashes (empty without prefix caching).
    pub(crate) fn with_hashes<R>(&self, read: impl FnOnce(&[TokenHash]) -> R) -> R {
        match &self.request.prefix {
            Some(prefix) => prefix.with(read),
            None => read(&[]),
        }
    }
}

impl Seq {
    pub(crate) fn new(request: SeqRequest) -> Self {
        Seq {
            request,
            generated: 0,
            computed: 0,
            slot: None,
            phase: Phase::Queued,
            cancelled: false,
        }
    }

    pub(crate) fn id(&self) -> RequestId {
        self.request.id
    }

    /// Prompt plus generated tokens: what a recompute must prefill.
    pub(crate) fn known_len(&self) -> usize {
        self.request.prompt_len + self.generated
    }

    /// Tokens still to process before the next sample.
    pub(crate) fn remaining(&self) -> usize {
        self.known_len().saturating_sub(self.computed)
    }

    /// Back to the queue for recompute: the slot is gone, nothing is in KV.
    pub(crate) fn reset_for_recompute(&mut self) {
        self.slot = None;
        self.computed = 0;
        self.phase = Phase::Queued;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recompute_covers_prompt_and_generated_tokens() {
        let mut seq = Seq::new(SeqRequest::new(RequestId(7), 100));
        assert_eq!(seq.remaining(), 100);
        // The prefill sampled token 1, then four decodes sampled tokens 2..=5: the last
        // sampled token is the only one not in KV yet.
        seq.computed = 104;
        seq.generated = 5;
        seq.slot = Some(3);
        seq.phase = Phase::Decoding;
        assert_eq!(seq.remaining(), 1);
        seq.reset_for_recompute();
        assert_eq!(
            (seq.slot, seq.computed, seq.phase),
            (None, 0, Phase::Queued)
        );
        assert_eq!(seq.remaining(), 105);
        assert_eq!(RequestId(7).to_string(), "request 7");
    }
}
