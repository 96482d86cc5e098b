//! Step 2 of AdaptiVocab: choose the n-grams of surviving tokens to add.
//!
//! Candidates are runs of 2..=`max_n` tokens of the corpus (after removed tokens are expanded),
//! scored `count × n`. By default a run stays within a word (no token after the first starts a
//! word); `cross_word` lifts that rule to allow phrase tokens. Special and byte tokens never take
//! part, and runs of digits only are skipped. Selection is greedy: the best-scoring candidate is
//! added, then the counts of the candidates it overlaps are corrected ([`OverlapCorrection`]);
//! like the paper, picking goes on until `wanted` n-grams are chosen even once corrected counts
//! reach zero (the vocabulary stays full). A lazy max-heap keeps this O(candidates · log).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use serde::{Deserialize, Serialize};

use super::base_vocab::BaseVocab;
use super::corpus::TokenSequences;

/// How picking an n-gram lowers the counts of the candidates that overlap it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OverlapCorrection {
    /// AdaptiVocab's rule: subtract, for every other candidate, the number of (occurrence,
    /// occurrence) pairs overlapping the pick (an occurrence overlapping two picks counts twice,
    /// so counts can go negative).
    Pairwise,
    /// Every occurrence of the pick claims its tokens; each other occurrence touching a claimed
    /// token is discarded once. Counts stay the number of occurrences still usable.
    Occurrence,
}

/// How candidate n-grams are formed and corrected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgramRules {
    /// Longest n-gram, in tokens (≥ 2).
    pub max_n: usize,
    /// Allow n-grams that span words (phrase tokens such as "Ġdue" "Ġto").
    pub cross_word: bool,
    /// Candidates seen fewer times are dropped before selection.
    pub min_count: u32,
    pub overlap: OverlapCorrection,
}

/// A chosen n-gram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selected {
    pub parts: Vec<u32>,
    /// Occurrences in the corpus before any overlap correction.
    pub count: u64,
}

/// Picks up to `wanted` n-grams in selection order (the order the matcher's
/// first-selected-wins rule uses).
pub fn select(
    vocab: &BaseVocab,
    corpus: &TokenSequences,
    rules: &NgramRules,
    wanted: usize,
) -> Vec<Selected> {
    let candidates = Candidates::count(vocab, corpus, rules);
    let occurrences = Occurrences::find(&candidates, vocab, corpus, rules);
    match rules.overlap {
        OverlapCorrection::Pairwise => {
            let overlaps = occurrences.pairwise_overlaps(candidates.len());
            candidates.greedy(wanted, |pick, counts| {
                for &(other, times) in &overlaps[pick] {
                    counts[other as usize] -= times;
                }
            })
        }
        OverlapCorrection::Occurrence => {
            let mut claims = Claims::new(occurrences, candidates.len());
            candidates.greedy(wanted, |pick, counts| claims.claim(pick, counts))
        }
    }
}

/// The longest candidate length starting at `seq[start]` (0 or ≥ 2); every shorter run from
/// there is a candidate shape too, every longer one contains a token that breaks the rules.
fn longest_valid(vocab: &BaseVocab, rules: &NgramRules, seq: &[u32], start: usize) -> usize {
    let usable = |id: u32| {
        let f = vocab.facts(id);
        !f.special && !f.byte_fallback
    };
    if !usable(seq[start]) {
        return 0;
    }
    let mut n = 1;
    while n < rules.max_n && start + n < seq.len() {
        let id = seq[start + n];
        if !usable(id) || (!rules.cross_word && vocab.facts(id).starts_word) {
            break;
        }
        n += 1;
    }
    if n >= 2 { n } else { 0 }
}

/// Calls `f(flat_start, window)` for every candidate-shaped window of the corpus, in order of
/// flat start position, shorter windows first.
fn for_each_window(
    vocab: &BaseVocab,
    corpus: &TokenSequences,
    rules: &NgramRules,
    mut f: impl FnMut(usize, &[u32]),
) {
    let mut flat = 0;
    for seq in corpus.iter() {
        for start in 0..seq.len() {
            for n in 2..=longest_valid(vocab, rules, seq, start) {
                f(flat + start, &seq[start..start + n]);
            }
        }
        flat += seq.len();
    }
}

/// Candidate n-grams, indexed `0..len` in a deterministic order (score desc, then parts).
struct Candidates {
    parts: Vec<Box<[u32]>>,
    counts: Vec<u64>,
    index: HashMap<Box<[u32]>, u32>,
}

impl Candidates {
    fn count(vocab: &BaseVocab, corpus: &TokenSequences, rules: &NgramRules) -> Self {
        let mut counts: HashMap<Box<[u32]>, u64> = HashMap::new();
        for_each_window(vocab, corpus, rules, |_, window| {
            match counts.get_mut(window) {
                Some(c) => *c += 1,
                None => {
                    counts.insert(window.into(), 1);
                }
            }
        });
        let all_digits = |parts: &[u32]| parts.iter().all(|&id| vocab.facts(id).digits);
        let mut kept: Vec<(Box<[u32]>, u64)> = counts
            .into_iter()
            .filter(|(parts, count)| *count >= u64::from(rules.min_count) && !all_digits(parts))
            .collect();
        kept.sort_unstable_by(|(pa, ca), (pb, cb)| {
            (cb * pb.len() as u64)
                .cmp(&(ca * pa.len() as u64))
                .then_with(|| pa.cmp(pb))
        });
        let index = kept
            .iter()
            .enumerate()
            .map(|(i, (p, _))| (p.clone(), i as u32))
            .collect();
        let (parts, counts) = kept.into_iter().unzip();
        Self {
            parts,
            counts,
            index,
        }
    }

    fn len(&self) -> usize {
        self.parts.len()
    }

    /// Greedy selection by corrected `count × n`; `correct(pick, counts)` lowers the counts of
    /// the candidates the pick overlaps. Ties go to the lower candidate index.
    fn greedy(&self, wanted: usize, mut correct: impl FnMut(usize, &mut [i64])) -> Vec<Selected> {
        let score = |count: i64, c: usize| count.saturating_mul(self.parts[c].len() as i64);
        let mut counts: Vec<i64> = self
            .counts
            .iter()
            .map(|&c| i64::try_from(c).unwrap_or(i64::MAX))
            .collect();
        let mut picked = vec![false; self.len()];
        let mut heap: BinaryHeap<(i64, Reverse<u32>)> = (0..self.len())
            .map(|c| (score(counts[c], c), Reverse(c as u32)))
            .collect();
        let mut selected = Vec::with_capacity(wanted.min(self.len()));
        while selected.len() < wanted {
            let Some((stale_score, Reverse(c))) = heap.pop() else {
                break;
            };
            let c = c as usize;
            if picked[c] {
                continue;
            }
            let current = score(counts[c], c);
            if current != stale_score {
                heap.push((current, Reverse(c as u32)));
                continue;
            }
            picked[c] = true;
            selected.push(Selected {
                parts: self.parts[c].to_vec(),
                count: self.counts[c],
            });
            correct(c, &mut counts);
        }
        selected
    }
}

/// Every occurrence of every candidate, sorted by flat start position (then length).
struct Occurrences {
    start: Vec<u32>,
    len: Vec<u8>,
    candidate: Vec<u32>,
}

/// Pairs are compacted (sorted, run-length counted) whenever this many are pending.
const PAIR_BATCH: usize = 1 << 24;

impl Occurrences {
    fn find(
        candidates: &Candidates,
        vocab: &BaseVocab,
        corpus: &TokenSequences,
        rules: &NgramRules,
    ) -> Self {
        let mut occ = Self {
            start: Vec::new(),
            len: Vec::new(),
            candidate: Vec::new(),
        };
        for_each_window(vocab, corpus, rules, |flat, window| {
            if let Some(&c) = candidates.index.get(window) {
                occ.start.push(flat as u32);
                occ.len.push(window.len() as u8);
                occ.candidate.push(c);
            }
        });
        occ
    }

    fn end(&self, o: usize) -> u32 {
        self.start[o] + u32::from(self.len[o])
    }

    /// `overlaps[a]` = `(b, k)`: `k` pairs of overlapping occurrences of `a` and `b` (a ≠ b).
    fn pairwise_overlaps(&self, candidates: usize) -> Vec<Vec<(u32, i64)>> {
        let mut counted: Vec<(u64, i64)> = Vec::new();
        let mut pending: Vec<u64> = Vec::new();
        for a in 0..self.start.len() {
            let end_a = self.end(a);
            // Later occurrences start at or after `a`; they overlap it until one starts at its end.
            for b in a + 1..self.start.len() {
                if self.start[b] >= end_a {
                    break;
                }
                let (ca, cb) = (u64::from(self.candidate[a]), u64::from(self.candidate[b]));
                if ca != cb {
                    pending.push(ca << 32 | cb);
                    pending.push(cb << 32 | ca);
                }
            }
            if pending.len() >= PAIR_BATCH {
                counted = merge_counts(counted, &mut pending);
            }
        }
        counted = merge_counts(counted, &mut pending);
        let mut overlaps = vec![Vec::new(); candidates];
        for (key, times) in counted {
            overlaps[(key >> 32) as usize].push((key as u32, times));
        }
        overlaps
    }
}

/// Sorts and run-length counts `pending` (emptying it) and merges it into `counted` (sorted).
fn merge_counts(counted: Vec<(u64, i64)>, pending: &mut Vec<u64>) -> Vec<(u64, i64)> {
    pending.sort_unstable();
    let fresh = pending
        .chunk_by(|x, y| x == y)
        .map(|run| (run[0], run.len() as i64));
    let mut merged = Vec::with_capacity(counted.len() + pending.len() / 2);
    let mut old = counted.into_iter().peekable();
    for (key, times) in fresh {
        while let Some(&(k, t)) = old.peek() {
            if k >= key {
                break;
            }
            merged.push((k, t));
            old.next();
        }
        match old.peek() {
            Some(&(k, t)) if k == key => {
                merged.push((key, times + t));
                old.next();
            }
            _ => merged.push((key, times)),
        }
    }
    merged.extend(old);
    pending.clear();
    merged
}

/// State of [`OverlapCorrection::Occurrence`]: which occurrences are still usable.
struct Claims {
    occ: Occurrences,
    /// Occurrence indices of each candidate: `of[c]`.
    of: Vec<Vec<u32>>,
    alive: Vec<bool>,
    /// Longest occurrence, to bound the search for overlapping ones.
    longest: u32,
}

impl Claims {
    fn new(occ: Occurrences, candidates: usize) -> Self {
        let mut of = vec![Vec::new(); candidates];
        for (o, &c) in occ.candidate.iter().enumerate() {
            of[c as usize].push(o as u32);
        }
        let alive = vec![true; occ.start.len()];
        let longest = occ.len.iter().copied().max().map_or(0, u32::from);
        Self {
            occ,
            of,
            alive,
            longest,
        }
    }

    /// The usable occurrences of `pick` claim their tokens; every usable occurrence touching
    /// them (the pick's own included) is used up and leaves its candidate's count.
    fn claim(&mut self, pick: usize, counts: &mut [i64]) {
        for &o in &self.of[pick] {
            let o = o as usize;
            if !self.alive[o] {
                continue;
            }
            let (start, end) = (self.occ.start[o], self.occ.end(o));
            let from = self
                .occ
                .start
                .partition_point(|&s| s + self.longest <= start);
            let to = self.occ.start.partition_point(|&s| s < end);
            for other in from..to {
                if self.alive[other] && self.occ.end(other) > start {
                    self.alive[other] = false;
                    counts[self.occ.candidate[other] as usize] -= 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_counts_adds_up_runs() {
        let mut pending = vec![5, 1, 5, 3];
        let counted = merge_counts(Vec::new(), &mut pending);
        assert_eq!(counted, vec![(1, 1), (3, 1), (5, 2)]);
        let mut more = vec![3, 7, 0];
        assert_eq!(
            merge_counts(counted, &mut more),
            vec![(0, 1), (1, 1), (3, 2), (5, 2), (7, 1)]
        );
        assert!(more.is_empty());
    }
}
