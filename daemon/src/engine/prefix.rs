//! The keys of the KV prefix cache: chained hashes of the served token ids (after the patch
//! tokenizer), link `i` covering tokens `0..=i`. The chain is seeded with what makes K/V differ
//! for the same ids (model, patch tokenizer, KV layout and page size) and keyed with random
//! per-process keys (SipHash-1-3 twice, 128 bits), so no client can make two different prefixes
//! collide on purpose and read another's cached K/V.
//!
//! Must not: see anything but token ids (text never reaches the cache).

use std::hash::{BuildHasher, RandomState};

use crate::kv::TokenHash;
use crate::sched::PrefixHashes;

/// Makes the chained token hashes of one serving process.
#[derive(Debug)]
pub struct PrefixHasher {
    keys: [RandomState; 2],
    seed: TokenHash,
}

impl PrefixHasher {
    /// A hasher for the K/V of `identity` (model, patch tokenizer, layout, page size).
    pub fn new(identity: &str) -> Self {
        let keys = [RandomState::new(), RandomState::new()];
        let seed = Self::link(&keys, identity);
        Self { keys, seed }
    }

    fn link(keys: &[RandomState; 2], value: impl std::hash::Hash + Copy) -> TokenHash {
        TokenHash::from(keys[0].hash_one(value)) << 64 | TokenHash::from(keys[1].hash_one(value))
    }

    /// The link after `previous` (`None`: the chain's start) for `token`.
    pub fn next(&self, previous: Option<TokenHash>, token: u32) -> TokenHash {
        Self::link(&self.keys, (previous.unwrap_or(self.seed), token))
    }

    /// The chain of `tokens`.
    pub fn chain(&self, tokens: &[u32]) -> Vec<TokenHash> {
        let mut previous = None;
        tokens
            .iter()
            .map(|&token| {
                let link = self.next(previous, token);
                previous = Some(link);
                link
            })
            .collect()
    }

    /// Extends `hashes` with `token`'s link.
    pub fn push(&self, hashes: &PrefixHashes, token: u32) {
        let previous = hashes.with(|links| links.last().copied());
        hashes.push(self.next(previous, token));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_prefixes_share_links_and_nothing_else_does() {
        let hasher = PrefixHasher::new("model|patch|interleaved|2097152");
        let a = hasher.chain(&[1, 2, 3, 4]);
        let b = hasher.chain(&[1, 2, 9, 4]);
        assert_eq!(a[..2], b[..2]);
        assert!(
            a[2..].iter().zip(&b[2..]).all(|(x, y)| x != y),
            "links cover the whole prefix"
        );
        let extended = PrefixHashes::new(hasher.chain(&[1, 2, 3]));
        hasher.push(&extended, 4);
        assert_eq!(extended.with(<[TokenHash]>::to_vec), a);
        let other = PrefixHasher::new("another model");
        assert_ne!(other.chain(&[1])[0], a[0], "the identity seeds the chain");
        assert_ne!(hasher.next(None, 1), hasher.next(None, 2));
    }
}
