//! [`PatchTokenizer`]: a patch ready to serve. Encoding = base ids → removed tokens expanded into
//! their decompositions → left-to-right n-gram scan over a trie; decoding maps each patched id back
//! to its base ids, so the base tokenizer decodes exactly the original text.
//!
//! It plugs into [`crate::tokenizer::Codec`] through [`VocabPatch`], and patches the model's
//! embedding and LM-head matrices with [`PatchTokenizer::remap_rows`]. It does not build patches.

use super::artifact::{NewRows, PatchArtifact, PatchSpec};
use super::error::{Result, VocabError};
use super::matcher::{MatchRule, NgramTrie};
use crate::tokenizer::VocabPatch;

/// The runtime form of a patch.
#[derive(Debug)]
pub struct PatchTokenizer {
    base_digest: String,
    artifact_digest: String,
    vocab_size: usize,
    rule: MatchRule,
    /// Base id → its decomposition when removed (empty slice when kept).
    expansion_offsets: Vec<u32>,
    expansion_ids: Vec<u32>,
    /// Base id → patched id (`u32::MAX` when removed).
    base_to_patched: Vec<u32>,
    /// Patched id → base ids: `patched_ids[patched_offsets[p]..patched_offsets[p + 1]]`.
    patched_offsets: Vec<u32>,
    patched_ids: Vec<u32>,
    trie: NgramTrie,
    /// Patched ids of the n-grams, in selection order (the order of `NewRows`).
    ngram_ids: Vec<u32>,
}

const REMOVED: u32 = u32::MAX;

impl PatchTokenizer {
    /// From a loaded artifact (already validated).
    pub fn from_artifact(artifact: &PatchArtifact) -> Result<Self> {
        Self::from_spec(&artifact.spec, artifact.digest.clone())
    }

    /// From a patch description; `artifact_digest` names it in messages and metrics.
    pub fn from_spec(spec: &PatchSpec, artifact_digest: String) -> Result<Self> {
        spec.validate().map_err(|reason| VocabError::BadArtifact {
            path: "patch.json".into(),
            reason,
        })?;
        let size = spec.base.vocab_size;
        let base_to_patched: Vec<u32> = spec.id_map.iter().map(|p| p.unwrap_or(REMOVED)).collect();

        let mut decomposition: Vec<&[u32]> = vec![&[]; size];
        for r in &spec.removed {
            decomposition[r.id as usize] = &r.decomposition;
        }
        let (expansion_offsets, expansion_ids) = flatten(decomposition.iter().copied());

        let mut patched: Vec<Vec<u32>> = vec![Vec::new(); size];
        for (base, p) in spec.id_map.iter().enumerate() {
            if let Some(p) = p {
                patched[*p as usize] = vec![base as u32];
            }
        }
        for g in &spec.ngrams {
            patched[g.id as usize].clone_from(&g.parts);
        }
        let (patched_offsets, patched_ids) = flatten(patched.iter().map(Vec::as_slice));

        let ngrams: Vec<(&[u32], u32)> = spec
            .ngrams
            .iter()
            .map(|g| (g.parts.as_slice(), g.id))
            .collect();
        Ok(Self {
            base_digest: spec.base.digest.clone(),
            artifact_digest,
            vocab_size: size,
            rule: spec.match_rule,
            expansion_offsets,
            expansion_ids,
            base_to_patched,
            patched_offsets,
            patched_ids,
            trie: NgramTrie::new(size, &ngrams),
            ngram_ids: spec.ngrams.iter().map(|g| g.id).collect(),
        })
    }

    /// sha256 of the artifact's `patch.json`.
    pub fn artifact_digest(&self) -> &str {
        &self.artifact_digest
    }

    pub fn match_rule(&self) -> MatchRule {
        self.rule
    }

    /// Patched ids of the added n-grams, in the order of [`NewRows`].
    pub fn ngram_ids(&self) -> &[u32] {
        &self.ngram_ids
    }

    fn expansion(&self, base_id: u32) -> &[u32] {
        let i = base_id as usize;
        match (
            self.expansion_offsets.get(i),
            self.expansion_offsets.get(i + 1),
        ) {
            (Some(&a), Some(&b)) => &self.expansion_ids[a as usize..b as usize],
            _ => &[],
        }
    }

    /// Lays out a weight matrix for the patched vocabulary: row `patched(b)` = base row `b` for
    /// every kept base token, n-gram rows from `new_rows` (`[n-grams, hidden]`, [`NewRows`]
    /// order). `base` is `[rows, hidden]` with `rows ≥ vocab_size`; rows past the vocabulary
    /// (padding) are copied unchanged. Use it for the input embedding (`NewRows::input`) and,
    /// separately, the LM head (`NewRows::output`) — a model with tied embeddings must untie them.
    /// Any element type: the host's `f32` matrices, the GPU's `bf16` ones.
    pub fn remap_rows<T: Copy>(
        &self,
        base: &[T],
        rows: usize,
        hidden: usize,
        new_rows: &[T],
    ) -> Result<Vec<T>> {
        if base.len() != rows * hidden || rows < self.vocab_size || hidden == 0 {
            return Err(VocabError::BadMatrix {
                len: base.len(),
                rows,
                hidden,
            });
        }
        if new_rows.len() != self.ngram_ids.len() * hidden {
            return Err(VocabError::BadMatrix {
                len: new_rows.len(),
                rows: self.ngram_ids.len(),
                hidden,
            });
        }
        let mut out = base.to_vec();
        for (b, &p) in self.base_to_patched.iter().enumerate() {
            if p != REMOVED && p as usize != b {
                out[p as usize * hidden..(p as usize + 1) * hidden]
                    .copy_from_slice(&base[b * hidden..(b + 1) * hidden]);
            }
        }
        for (k, &p) in self.ngram_ids.iter().enumerate() {
            out[p as usize * hidden..(p as usize + 1) * hidden]
                .copy_from_slice(&new_rows[k * hidden..(k + 1) * hidden]);
        }
        Ok(out)
    }

    /// Both matrices at once from an artifact's rows.
    pub fn remap_embedding_and_head(
        &self,
        embedding: &[f32],
        head: &[f32],
        rows: usize,
        new_rows: &NewRows,
    ) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((
            self.remap_rows(embedding, rows, new_rows.hidden, &new_rows.input)?,
            self.remap_rows(head, rows, new_rows.hidden, &new_rows.output)?,
        ))
    }
}

fn flatten<'a>(lists: impl Iterator<Item = &'a [u32]>) -> (Vec<u32>, Vec<u32>) {
    let mut offsets = vec![0u32];
    let mut ids = Vec::new();
    for list in lists {
        ids.extend_from_slice(list);
        offsets.push(ids.len() as u32);
    }
    (offsets, ids)
}

impl VocabPatch for PatchTokenizer {
    fn base_digest(&self) -> &str {
        &self.base_digest
    }

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// Ids outside the patch's table (impossible once `Codec::with_patch` checked the sizes)
    /// pass through unchanged.
    fn patch_ids(&self, base_ids: &[u32]) -> Vec<u32> {
        let mut expanded = Vec::with_capacity(base_ids.len() + base_ids.len() / 4);
        for &id in base_ids {
            match self.expansion(id) {
                [] => expanded.push(id),
                parts => expanded.extend_from_slice(parts),
            }
        }
        let mut out = Vec::with_capacity(expanded.len());
        let mut i = 0;
        while i < expanded.len() {
            let window = &expanded[i..(i + self.trie.max_len()).min(expanded.len())];
            match self.trie.match_at(window, self.rule) {
                Some((len, patched)) => {
                    out.push(patched);
                    i += len;
                }
                None => {
                    let id = expanded[i];
                    out.push(
                        self.base_to_patched
                            .get(id as usize)
                            .copied()
                            .filter(|p| *p != REMOVED)
                            .unwrap_or(id),
                    );
                    i += 1;
                }
            }
        }
        out
    }

    fn base_ids_of(&self, patched_id: u32) -> Option<&[u32]> {
        let i = patched_id as usize;
        let (a, b) = (
            *self.patched_offsets.get(i)?,
            *self.patched_offsets.get(i + 1)?,
        );
        Some(&self.patched_ids[a as usize..b as usize])
    }

    fn patched_id_of(&self, base_id: u32) -> Option<u32> {
        self.base_to_patched
            .get(base_id as usize)
            .copied()
            .filter(|p| *p != REMOVED)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::tokenizer::{Codec, fixtures as base_fixtures};
    use crate::vocab::fixtures;

    const ICD_LINE: &str =
        "Malignant neoplasm of upper-outer quadrant of unspecified female breast, unspecified";

    #[test]
    fn the_patch_saves_tokens_on_domain_text_and_keeps_specials() {
        for (patched, base) in [
            (fixtures::patched_smollm2(), base_fixtures::smollm2()),
            (fixtures::patched_mistral(), base_fixtures::mistral()),
        ] {
            let (Some((patched, _)), Some(base)) = (patched, base) else {
                continue;
            };
            let base_ids = base.encode(ICD_LINE, false).unwrap();
            let ids = patched.encode(ICD_LINE, false).unwrap();
            let tokens: Vec<String> = ids.iter().map(|&i| patched.token_str(i).unwrap()).collect();
            assert!(
                ids.len() * 10 < base_ids.len() * 8,
                "{} vs {}: {tokens:?}",
                ids.len(),
                base_ids.len()
            );
            assert_eq!(patched.decode(&ids, false).unwrap(), ICD_LINE);
            assert_eq!(patched.eos_ids(), base.eos_ids());
            assert_eq!(patched.vocab_size(), base.vocab_size());
        }
    }

    #[test]
    fn remap_rows_moves_kept_rows_and_places_new_ones() {
        let Some((patched, spec)) = fixtures::patched_smollm2() else {
            return;
        };
        let patch = PatchTokenizer::from_spec(&spec, String::new()).unwrap();
        let (rows, hidden) = (patched.vocab_size(), 2);
        let base: Vec<f32> = (0..rows * hidden).map(|x| x as f32).collect();
        let new_rows: Vec<f32> = (0..spec.ngrams.len() * hidden)
            .map(|x| -(x as f32) - 1.0)
            .collect();
        let out = patch.remap_rows(&base, rows, hidden, &new_rows).unwrap();
        for (b, p) in spec.id_map.iter().enumerate() {
            if let Some(p) = p {
                assert_eq!(
                    out[*p as usize * hidden..][..hidden],
                    base[b * hidden..][..hidden]
                );
            }
        }
        for (k, g) in spec.ngrams.iter().enumerate() {
            assert_eq!(
                out[g.id as usize * hidden..][..hidden],
                new_rows[k * hidden..][..hidden]
            );
        }
        assert!(patch.remap_rows(&base, rows, 3, &new_rows).is_err());
        assert!(
            patch
                .remap_rows(&base[..hidden], 1, hidden, &new_rows)
                .is_err()
        );
        assert!(
            patch
                .remap_rows(&base, rows, hidden, &new_rows[1..])
                .is_err()
        );
    }

    fn stream_concat(codec: &std::sync::Arc<Codec>, ids: &[u32]) -> String {
        let mut decoder = codec.stream_decoder(false);
        let mut text: String = ids
            .iter()
            .filter_map(|&id| decoder.step(id).unwrap())
            .collect();
        text.extend(decoder.finish().unwrap());
        text
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn smollm2_patched_round_trip_is_exact(text in "\\PC{0,60}|[a-z ,()]{0,80}") {
            let Some((codec, _)) = fixtures::patched_smollm2() else { return Ok(()) };
            let ids = codec.encode(&text, false).unwrap();
            prop_assert_eq!(codec.decode(&ids, false).unwrap(), text.clone());
            prop_assert_eq!(stream_concat(&codec, &ids), text);
        }

        #[test]
        fn mistral_patched_round_trip_matches_the_base(text in "\\PC{0,60}|[a-z ,()]{0,80}") {
            let (Some((codec, _)), Some(base)) = (fixtures::patched_mistral(), base_fixtures::mistral()) else {
                return Ok(());
            };
            let ids = codec.encode(&text, false).unwrap();
            let base_text = base.decode(&base.encode(&text, false).unwrap(), false).unwrap();
            prop_assert_eq!(codec.decode(&ids, false).unwrap(), base_text.clone());
            prop_assert_eq!(stream_concat(&codec, &ids), base_text);
        }

        #[test]
        fn any_patched_ids_stream_to_their_decode(ids in proptest::collection::vec(0..49152u32, 0..40)) {
            let Some((codec, _)) = fixtures::patched_smollm2() else { return Ok(()) };
            prop_assert_eq!(stream_concat(&codec, &ids), codec.decode(&ids, false).unwrap());
        }
    }
}
