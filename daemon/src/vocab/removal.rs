//! Step 1 of AdaptiVocab: choose the base tokens to remove and decompose each into survivors.
//!
//! Tokens never seen in the domain go first, longest first; then the rarest seen ones. Special
//! tokens, byte tokens and single characters are kept. A removed token is split along the BPE
//! merge that made it, recursively, until every piece survives, so its text is unchanged.

use std::collections::{HashMap, HashSet};

use super::base_vocab::BaseVocab;
use super::corpus::TokenSequences;

/// A removed base token and the surviving base ids it now stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removed {
    pub id: u32,
    /// Occurrences in the (base-tokenized) corpus.
    pub count: u64,
    pub decomposition: Vec<u32>,
}

/// Occurrences of each base id in the corpus.
pub fn unigram_counts(vocab_size: usize, corpus: &TokenSequences) -> Vec<u64> {
    let mut counts = vec![0u64; vocab_size];
    for seq in corpus.iter() {
        for &id in seq {
            if let Some(c) = counts.get_mut(id as usize) {
                *c += 1;
            }
        }
    }
    counts
}

/// Up to `n` removable ids in removal order: unseen tokens (longest first), then seen ones
/// (rarest first, longer first). Ties go to the higher id (a later, rarer merge): deterministic.
pub fn choose(vocab: &BaseVocab, counts: &[u64], n: usize) -> Vec<u32> {
    let mut candidates: Vec<(u64, std::cmp::Reverse<usize>, std::cmp::Reverse<u32>)> = (0..vocab
        .len())
        .filter_map(|i| u32::try_from(i).ok())
        .filter(|&id| vocab.removable(id))
        .map(|id| {
            let count = counts.get(id as usize).copied().unwrap_or(0);
            (
                count,
                std::cmp::Reverse(vocab.token(id).chars().count()),
                std::cmp::Reverse(id),
            )
        })
        .collect();
    candidates.sort_unstable();
    candidates
        .into_iter()
        .take(n)
        .map(|(_, _, std::cmp::Reverse(id))| id)
        .collect()
}

/// Decomposes every id of `removed` into surviving ids along the merges that made them.
pub fn decompose(vocab: &BaseVocab, removed: &[u32], counts: &[u64]) -> Vec<Removed> {
    let removed_set: HashSet<u32> = removed.iter().copied().collect();
    let mut memo: HashMap<u32, Vec<u32>> = HashMap::new();
    removed
        .iter()
        .map(|&id| Removed {
            id,
            count: counts.get(id as usize).copied().unwrap_or(0),
            decomposition: split(vocab, id, &removed_set, &mut memo),
        })
        .collect()
}

fn split(
    vocab: &BaseVocab,
    id: u32,
    removed: &HashSet<u32>,
    memo: &mut HashMap<u32, Vec<u32>>,
) -> Vec<u32> {
    if !removed.contains(&id) {
        return vec![id];
    }
    if let Some(parts) = memo.get(&id) {
        return parts.clone();
    }
    // `choose` only removes tokens made by a merge, and merge pieces are strictly shorter, so the
    // recursion ends at surviving tokens (single characters always survive).
    let parts = match vocab.made_by(id) {
        Some((left, right)) => {
            let mut parts = split(vocab, left, removed, memo);
            parts.extend(split(vocab, right, removed, memo));
            parts
        }
        None => vec![id],
    };
    memo.insert(id, parts.clone());
    parts
}
