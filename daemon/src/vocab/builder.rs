//! Builds a patch ([`PatchSpec`]) from a base tokenizer and a tokenized domain corpus:
//! remove `swap` tokens ([`super::removal`]), expand them in the corpus, pick as many n-grams
//! ([`super::ngrams`]), and give the n-grams the freed ids. Kept tokens keep their ids, so special
//! ids and the chat template stay valid and the embedding remap only touches the freed rows.
//! Deterministic: the same inputs give the same `patch.json`.

use std::collections::HashMap;

use super::artifact::{BaseInfo, BuildInfo, FORMAT, NgramEntry, PatchSpec, RemovedEntry, VERSION};
use super::base_vocab::BaseVocab;
use super::corpus::Corpus;
use super::error::{Result, VocabError};
use super::matcher::MatchRule;
use super::ngrams::{self, NgramRules, OverlapCorrection};
use super::patch::PatchTokenizer;
use super::removal;
use crate::tokenizer::{Codec, VocabPatch};

/// Longest n-gram `--max-n` accepts.
pub const MAX_N_LIMIT: usize = 16;

/// Options of `vocab build`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildOptions {
    /// Tokens to swap: remove this many, add as many n-grams.
    pub swap: usize,
    pub max_n: usize,
    pub cross_word: bool,
    pub match_rule: MatchRule,
    pub min_count: u32,
    pub overlap: OverlapCorrection,
}

impl Default for BuildOptions {
    /// The defaults of `vocab build`, chosen by measurement (docs/BENCHMARKS.md): cross-word
    /// 2..3-grams, occurrence overlap correction, longest-match.
    fn default() -> Self {
        Self {
            swap: 10_000,
            max_n: 3,
            cross_word: true,
            match_rule: MatchRule::Longest,
            min_count: 2,
            overlap: OverlapCorrection::Occurrence,
        }
    }
}

impl BuildOptions {
    /// AdaptiVocab as published: within-word 2..3-grams, pairwise overlap correction,
    /// first-selected-wins matching.
    pub fn paper(swap: usize) -> Self {
        Self {
            swap,
            max_n: 3,
            cross_word: false,
            match_rule: MatchRule::FirstSelected,
            min_count: 2,
            overlap: OverlapCorrection::Pairwise,
        }
    }
}

impl BuildOptions {
    fn validate(&self) -> Result<()> {
        if self.swap == 0 {
            return Err(VocabError::BadOptions("--swap must be at least 1".into()));
        }
        if !(2..=MAX_N_LIMIT).contains(&self.max_n) {
            return Err(VocabError::BadOptions(format!(
                "--max-n must be within 2..={MAX_N_LIMIT}"
            )));
        }
        if self.min_count == 0 {
            return Err(VocabError::BadOptions(
                "--min-count must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Runs AdaptiVocab on `corpus` (tokenized with `codec`'s base tokenizer).
pub fn build(codec: &Codec, corpus: &Corpus, options: &BuildOptions) -> Result<PatchSpec> {
    options.validate()?;
    // N-gram occurrences are indexed by u32 token positions.
    if u32::try_from(corpus.sequences.total_tokens()).is_err() {
        return Err(VocabError::BadOptions(
            "the corpus has more than 2^32 tokens; use a sample".into(),
        ));
    }
    let vocab = BaseVocab::new(codec)?;
    let counts = removal::unigram_counts(vocab.len(), &corpus.sequences);
    let candidates = removal::choose(&vocab, &counts, options.swap);
    let expanded = {
        let removed = removal::decompose(&vocab, &candidates, &counts);
        let parts: HashMap<u32, &[u32]> = removed
            .iter()
            .map(|r| (r.id, r.decomposition.as_slice()))
            .collect();
        corpus.sequences.map_tokens(|id, out| match parts.get(&id) {
            Some(parts) => out.extend_from_slice(parts),
            None => out.push(id),
        })
    };
    let rules = NgramRules {
        max_n: options.max_n,
        cross_word: options.cross_word,
        min_count: options.min_count,
        overlap: options.overlap,
    };
    let selected = ngrams::select(&vocab, &expanded, &rules, candidates.len());
    // The vocabulary stays full: remove only as many tokens as there are n-grams to add (the
    // first ones in removal order), decomposing them again against that final set.
    let removed = removal::decompose(&vocab, &candidates[..selected.len()], &counts);

    let mut free_ids: Vec<u32> = removed.iter().map(|r| r.id).collect();
    free_ids.sort_unstable();
    let mut id_map: Vec<Option<u32>> = (0..vocab.len() as u32).map(Some).collect();
    for r in &removed {
        id_map[r.id as usize] = None;
    }
    let text_of = |parts: &[u32]| parts.iter().map(|&p| vocab.token(p)).collect::<String>();
    let ngrams = selected
        .iter()
        .zip(&free_ids)
        .map(|(g, &id)| NgramEntry {
            id,
            text: text_of(&g.parts),
            parts: g.parts.clone(),
            count: g.count,
        })
        .collect();
    let removed = removed
        .into_iter()
        .map(|r| RemovedEntry {
            id: r.id,
            token: vocab.token(r.id).to_owned(),
            count: r.count,
            decomposition: r.decomposition,
        })
        .collect();

    let mut spec = PatchSpec {
        format: FORMAT.to_owned(),
        version: VERSION,
        base: BaseInfo {
            digest: codec.base_digest().to_owned(),
            source: codec.source().to_owned(),
            vocab_size: vocab.len(),
            word_marker: vocab.marker,
        },
        build: BuildInfo {
            tool: format!("fused-daemon {}", env!("CARGO_PKG_VERSION")),
            swap: options.swap,
            max_n: options.max_n,
            cross_word: options.cross_word,
            min_count: options.min_count,
            overlap: options.overlap,
            corpus: corpus.files.clone(),
            corpus_lines: corpus.lines,
            corpus_base_tokens: corpus.sequences.total_tokens(),
            corpus_patched_tokens: 0,
        },
        match_rule: options.match_rule,
        // Kept tokens keep their ids, and special tokens are always kept.
        special_ids: codec.base_specials().clone(),
        removed,
        ngrams,
        id_map,
        embeddings: None,
    };
    let patch = PatchTokenizer::from_spec(&spec, String::new())?;
    spec.build.corpus_patched_tokens = corpus
        .sequences
        .iter()
        .map(|seq| patch.patch_ids(seq).len())
        .sum();
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::tokenizer::VocabPatch;
    use crate::vocab::corpus::tokenize;
    use crate::vocab::fixtures;

    /// The toy corpus: "de" five times ([▁, de]) and "cab" twice ([▁, c, a, b]); tokens `▁abc`,
    /// `def`, `▁f`, `bc`, `▁a` never occur.
    fn toy_corpus(codec: &Codec) -> Corpus {
        let lines: Vec<String> = ["de"; 5]
            .into_iter()
            .chain(["cab"; 2])
            .map(str::to_owned)
            .collect();
        tokenize(codec, &lines, Vec::new(), "toy").unwrap()
    }

    fn toy_spec(options: &BuildOptions) -> (Codec, PatchSpec) {
        let codec = fixtures::toy_codec();
        let spec = build(&codec, &toy_corpus(&codec), options).unwrap();
        (codec, spec)
    }

    fn removed(spec: &PatchSpec) -> Vec<(u32, Vec<u32>)> {
        spec.removed
            .iter()
            .map(|r| (r.id, r.decomposition.clone()))
            .collect()
    }

    fn ngrams(spec: &PatchSpec) -> Vec<(u32, Vec<u32>)> {
        spec.ngrams
            .iter()
            .map(|g| (g.id, g.parts.clone()))
            .collect()
    }

    /// Worked out by hand. Candidates (within word, count × n): [▁,de] 5×2 = 10; [▁,c,a] and
    /// [c,a,b] 2×3 = 6 (tie → lower ids first); [▁,c] [a,b] [c,a] 2×2 = 4. Picking [▁,de] touches
    /// nothing; picking [▁,c,a] overlaps every occurrence of the rest, which drop to 0, so the
    /// third pick is the next in candidate order, [c,a,b]. Removals: unseen tokens longest first,
    /// ties to the higher id: ▁abc(12), def(15), ▁f(14), bc(11), ▁a(10).
    #[test]
    fn toy_corpus_gives_the_known_patch() {
        for overlap in [OverlapCorrection::Pairwise, OverlapCorrection::Occurrence] {
            let options = BuildOptions {
                overlap,
                ..BuildOptions::paper(2)
            };
            let (_, spec) = toy_spec(&options);
            assert_eq!(
                removed(&spec),
                vec![(12, vec![10, 11]), (15, vec![13, 9])],
                "{overlap:?}"
            );
            assert_eq!(
                ngrams(&spec),
                vec![(12, vec![3, 13]), (15, vec![3, 6, 4])],
                "{overlap:?}"
            );
            assert_eq!(spec.ngrams[1].text, "▁ca");
            assert_eq!(spec.build.corpus_base_tokens, 5 * 2 + 2 * 4);
            assert_eq!(spec.build.corpus_patched_tokens, 5 + 2 * 2);

            let (_, spec) = toy_spec(&BuildOptions { swap: 3, ..options });
            assert_eq!(
                removed(&spec),
                vec![(12, vec![10, 11]), (15, vec![13, 9]), (14, vec![3, 9])]
            );
            assert_eq!(
                ngrams(&spec),
                vec![(12, vec![3, 13]), (14, vec![3, 6, 4]), (15, vec![6, 4, 5])]
            );
        }
        // Removing ▁a too decomposes ▁abc down to surviving characters.
        let (_, spec) = toy_spec(&BuildOptions::paper(5));
        assert_eq!(
            spec.removed[0],
            RemovedEntry {
                id: 12,
                token: "▁abc".into(),
                count: 0,
                decomposition: vec![3, 4, 5, 6]
            }
        );
    }

    #[test]
    fn toy_patch_encodes_and_decodes_exactly() {
        let (codec, spec) = toy_spec(&BuildOptions::paper(2));
        let patch = Arc::new(PatchTokenizer::from_spec(&spec, "toy".into()).unwrap());
        // Base: "▁de▁cab▁abc" → [▁, de, ▁, c, a, b, ▁abc]; ▁abc is removed → ▁a bc.
        assert_eq!(
            codec.encode("de cab abc", false).unwrap(),
            vec![3, 13, 3, 6, 4, 5, 12]
        );
        let patched = codec.with_patch(patch).unwrap();
        let ids = patched.encode("de cab abc", false).unwrap();
        assert_eq!(ids, vec![12, 15, 5, 10, 11]);
        assert_eq!(patched.decode(&ids, false).unwrap(), "de cab abc");
        assert_eq!(patched.token_str(15).unwrap(), "▁ca");
        assert_eq!(patched.bos_id(), Some(1));
    }

    #[test]
    fn builds_are_deterministic_and_keep_specials() {
        let Some(codec) = crate::tokenizer::fixtures::smollm2() else {
            return;
        };
        let a = fixtures::icd10_patch(&codec, 3000, &fixtures::options(500)).unwrap();
        let b = fixtures::icd10_patch(&codec, 3000, &fixtures::options(500)).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.ngrams.len(), 500);
        for id in codec.base_specials().all() {
            assert_eq!(a.id_map[id as usize], Some(id), "special {id} keeps its id");
        }
        let patch = PatchTokenizer::from_spec(&a, String::new()).unwrap();
        assert!(a.build.corpus_patched_tokens < a.build.corpus_base_tokens * 9 / 10);
        assert_eq!(patch.patched_id_of(2), Some(2));
    }

    #[test]
    fn bad_options_are_refused() {
        let codec = fixtures::toy_codec();
        let corpus = toy_corpus(&codec);
        for bad in [
            BuildOptions {
                swap: 0,
                ..BuildOptions::default()
            },
            BuildOptions {
                max_n: 1,
                ..BuildOptions::default()
            },
            BuildOptions {
                max_n: MAX_N_LIMIT + 1,
                ..BuildOptions::default()
            },
            BuildOptions {
                min_count: 0,
                ..BuildOptions::default()
            },
        ] {
            assert!(
                matches!(build(&codec, &corpus, &bad), Err(VocabError::BadOptions(_))),
                "{bad:?}"
            );
        }
    }
}
