//! The n-gram scan of patched encoding: a trie over base-id sequences, so each position costs at
//! most `max_n` steps whatever the number of n-grams (not O(len × n-grams) as a list scan).
//!
//! The first level is a dense table indexed by base id; deeper levels are sorted edge lists.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which n-gram wins when several match at one position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum MatchRule {
    /// The n-gram selected first (AdaptiVocab's rule: n-grams are tried in selection order).
    FirstSelected,
    /// The longest n-gram (ties: the one selected first).
    Longest,
}

const NO_NODE: u32 = 0;
const NO_VALUE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    first_edge: u32,
    edge_count: u32,
    /// Patched id of the n-gram ending here, or `NO_VALUE`.
    value: u32,
    /// Selection rank of that n-gram (lower = selected earlier).
    rank: u32,
}

/// A set of n-grams (each ≥ 2 base ids) with their patched ids and selection ranks.
#[derive(Debug, Clone)]
pub struct NgramTrie {
    /// Base id → first-level node (`NO_NODE` when no n-gram starts with it).
    roots: Vec<u32>,
    /// Node 0 is a placeholder so that `NO_NODE` can be 0.
    nodes: Vec<Node>,
    /// (base id, child node), each node's edges contiguous and sorted by base id.
    edges: Vec<(u32, u32)>,
    max_len: usize,
}

#[derive(Default)]
struct BuildNode {
    children: BTreeMap<u32, usize>,
    value: Option<(u32, u32)>,
}

impl NgramTrie {
    /// `ngrams[rank] = (parts, patched id)`; every part must be `< vocab_size`.
    pub fn new(vocab_size: usize, ngrams: &[(&[u32], u32)]) -> Self {
        let mut build = vec![BuildNode::default()]; // index 0: virtual root
        let mut max_len = 0;
        for (rank, (parts, id)) in ngrams.iter().enumerate() {
            max_len = max_len.max(parts.len());
            let mut at = 0;
            for &part in *parts {
                let next = build.len();
                at = *build[at].children.entry(part).or_insert(next);
                if at == next {
                    build.push(BuildNode::default());
                }
            }
            build[at].value.get_or_insert((*id, rank as u32));
        }
        // Flatten breadth-first; build index → flat index.
        let mut flat_of = vec![NO_NODE; build.len()];
        let mut order = Vec::with_capacity(build.len());
        let mut nodes = vec![Node {
            first_edge: 0,
            edge_count: 0,
            value: NO_VALUE,
            rank: u32::MAX,
        }];
        let mut roots = vec![NO_NODE; vocab_size];
        for (&token, &child) in &build[0].children {
            flat_of[child] = nodes.len() as u32;
            nodes.push(Node {
                first_edge: 0,
                edge_count: 0,
                value: NO_VALUE,
                rank: u32::MAX,
            });
            order.push(child);
            if let Some(slot) = roots.get_mut(token as usize) {
                *slot = flat_of[child];
            }
        }
        let mut edges = Vec::new();
        let mut i = 0;
        while i < order.len() {
            let b = order[i];
            let flat = flat_of[b] as usize;
            let (value, rank) = build[b].value.unwrap_or((NO_VALUE, u32::MAX));
            nodes[flat].value = value;
            nodes[flat].rank = rank;
            nodes[flat].first_edge = edges.len() as u32;
            nodes[flat].edge_count = build[b].children.len() as u32;
            for (&token, &child) in &build[b].children {
                flat_of[child] = nodes.len() as u32;
                nodes.push(Node {
                    first_edge: 0,
                    edge_count: 0,
                    value: NO_VALUE,
                    rank: u32::MAX,
                });
                edges.push((token, flat_of[child]));
                order.push(child);
            }
            i += 1;
        }
        Self {
            roots,
            nodes,
            edges,
            max_len,
        }
    }

    /// Longest n-gram length.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    fn child(&self, node: u32, token: u32) -> Option<u32> {
        let n = self.nodes[node as usize];
        let edges = &self.edges[n.first_edge as usize..(n.first_edge + n.edge_count) as usize];
        edges
            .binary_search_by_key(&token, |e| e.0)
            .ok()
            .map(|i| edges[i].1)
    }

    /// The n-gram matching at the start of `tokens` under `rule`: `(length, patched id)`.
    pub fn match_at(&self, tokens: &[u32], rule: MatchRule) -> Option<(usize, u32)> {
        let first = *tokens.first()?;
        let mut node = *self.roots.get(first as usize)?;
        if node == NO_NODE {
            return None;
        }
        let mut best: Option<(usize, u32, u32)> = None; // (len, id, rank)
        for (depth, &token) in tokens.iter().enumerate().skip(1) {
            match self.child(node, token) {
                Some(next) => node = next,
                None => break,
            }
            let n = self.nodes[node as usize];
            if n.value != NO_VALUE {
                let better = match (rule, best) {
                    (_, None) => true,
                    (MatchRule::FirstSelected, Some((_, _, rank))) => n.rank < rank,
                    (MatchRule::Longest, Some(_)) => true,
                };
                if better {
                    best = Some((depth + 1, n.value, n.rank));
                }
            }
            if n.edge_count == 0 {
                break;
            }
        }
        best.map(|(len, id, _)| (len, id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_pick_first_selected_or_longest() {
        // rank 0: [1, 2] → 100; rank 1: [1, 2, 3] → 101; rank 2: [2, 3] → 102
        let ab: &[u32] = &[1, 2];
        let abc: &[u32] = &[1, 2, 3];
        let bc: &[u32] = &[2, 3];
        let trie = NgramTrie::new(10, &[(ab, 100), (abc, 101), (bc, 102)]);
        assert_eq!(trie.max_len(), 3);
        assert_eq!(
            trie.match_at(&[1, 2, 3], MatchRule::FirstSelected),
            Some((2, 100))
        );
        assert_eq!(
            trie.match_at(&[1, 2, 3], MatchRule::Longest),
            Some((3, 101))
        );
        assert_eq!(
            trie.match_at(&[1, 2, 4], MatchRule::Longest),
            Some((2, 100))
        );
        assert_eq!(
            trie.match_at(&[2, 3], MatchRule::FirstSelected),
            Some((2, 102))
        );
        assert_eq!(trie.match_at(&[1], MatchRule::Longest), None);
        assert_eq!(trie.match_at(&[3, 1], MatchRule::Longest), None);
        assert_eq!(
            trie.match_at(&[42], MatchRule::Longest),
            None,
            "ids beyond the table do not match"
        );
        assert_eq!(trie.match_at(&[], MatchRule::Longest), None);
    }
}
