//! What patch building needs to know about each base token: its string, whether it is special,
//! a byte-fallback token, digits only, a single character, whether it starts a word, and the BPE
//! merge that made it (to decompose it when it is removed).
//!
//! Word starts: byte-level BPE spells a leading space `Ġ` (and newline/tab/CR `Ċ`/`ĉ`/`č`);
//! SentencePiece spells it `▁`. The marker is detected from the vocabulary, so one rule serves both.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use tokenizers::ModelWrapper;

use super::error::{Result, VocabError};
use crate::tokenizer::Codec;

/// How the base vocabulary marks the start of a word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WordMarker {
    /// Byte-level BPE (GPT-2, SmolLM2, Llama 3): `Ġ` = space, `Ċ`/`ĉ`/`č` = newline/tab/CR.
    ByteLevel,
    /// SentencePiece (Llama 2, Mistral): `▁` = space.
    SentencePiece,
}

impl WordMarker {
    /// Whether a token begins a new word (a whitespace-led token).
    pub fn starts_word(self, token: &str) -> bool {
        match (self, token.chars().next()) {
            (Self::ByteLevel, Some(c)) => matches!(c, 'Ġ' | 'Ċ' | 'ĉ' | 'č'),
            (Self::SentencePiece, Some(c)) => c == '▁',
            (_, None) => false,
        }
    }
}

/// Per-token facts used when choosing removals and n-grams.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenFacts {
    /// A special (control) token: never removed, never part of an n-gram.
    pub special: bool,
    /// A `<0xAB>` byte-fallback token: never removed, never part of an n-gram.
    pub byte_fallback: bool,
    /// One character (one byte for byte-level BPE): never removed.
    pub single_char: bool,
    /// Only ASCII digits: an n-gram of only such tokens is not added.
    pub digits: bool,
    /// Begins a word (see [`WordMarker`]).
    pub starts_word: bool,
}

/// The base vocabulary as the builder sees it.
#[derive(Debug)]
pub struct BaseVocab {
    pub tokens: Vec<String>,
    pub facts: Vec<TokenFacts>,
    pub marker: WordMarker,
    /// Token id → the (left, right) ids of the lowest-ranked merge producing it.
    made_by: HashMap<u32, (u32, u32)>,
}

impl BaseVocab {
    /// Reads the base tokenizer of `codec` (a BPE model is required).
    pub fn new(codec: &Codec) -> Result<Self> {
        let tokenizer = codec.base_tokenizer();
        let vocab_size = codec.vocab_size();
        let mut tokens = vec![String::new(); vocab_size];
        for (token, id) in tokenizer.get_vocab(true) {
            if let Some(slot) = tokens.get_mut(id as usize) {
                *slot = token;
            }
        }
        let marker = detect_marker(&tokens);
        let special_ids: Vec<u32> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .chain(codec.base_specials().all())
            .collect();
        let mut facts: Vec<TokenFacts> = tokens
            .iter()
            .map(|t| TokenFacts {
                special: false,
                byte_fallback: t.len() == 6 && t.starts_with("<0x") && t.ends_with('>'),
                single_char: t.chars().count() <= 1,
                digits: !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()),
                starts_word: marker.starts_word(t),
            })
            .collect();
        for id in special_ids {
            if let Some(f) = facts.get_mut(id as usize) {
                f.special = true;
            }
        }
        let made_by = merges_by_result(tokenizer.get_model(), tokenizer)?;
        Ok(Self {
            tokens,
            facts,
            marker,
            made_by,
        })
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn facts(&self, id: u32) -> TokenFacts {
        self.facts.get(id as usize).copied().unwrap_or_default()
    }

    pub fn token(&self, id: u32) -> &str {
        self.tokens.get(id as usize).map_or("", String::as_str)
    }

    /// The merge that made `id`, if it is the result of one.
    pub fn made_by(&self, id: u32) -> Option<(u32, u32)> {
        self.made_by.get(&id).copied()
    }

    /// May this token be removed? (Not special, not a byte token, longer than one character, and
    /// made by a merge so it can be decomposed.)
    pub fn removable(&self, id: u32) -> bool {
        let f = self.facts(id);
        !f.special && !f.byte_fallback && !f.single_char && self.made_by.contains_key(&id)
    }
}

fn detect_marker(tokens: &[String]) -> WordMarker {
    let count = |c: char| tokens.iter().filter(|t| t.starts_with(c)).count();
    if count('▁') > count('Ġ') {
        WordMarker::SentencePiece
    } else {
        WordMarker::ByteLevel
    }
}

/// For each token made by a merge, the lowest-ranked merge producing it.
fn merges_by_result(
    model: &ModelWrapper,
    tokenizer: &tokenizers::Tokenizer,
) -> Result<HashMap<u32, (u32, u32)>> {
    let ModelWrapper::BPE(bpe) = model else {
        return Err(VocabError::BadOptions(
            "vocabulary patches need a BPE base tokenizer".into(),
        ));
    };
    let json = serde_json::to_value(bpe)
        .map_err(|e| VocabError::BadOptions(format!("cannot read BPE merges: {e}")))?;
    let merges = json
        .get("merges")
        .and_then(|m| m.as_array())
        .ok_or_else(|| {
            VocabError::BadOptions(
                "the base BPE model lists no merges to decompose tokens with".into(),
            )
        })?;
    let mut made_by = HashMap::with_capacity(merges.len());
    for merge in merges {
        let pair: Option<(&str, &str)> = match merge {
            serde_json::Value::Array(p) if p.len() == 2 => p[0].as_str().zip(p[1].as_str()),
            serde_json::Value::String(s) => s.split_once(' '),
            _ => None,
        };
        let Some((left, right)) = pair else { continue };
        let ids = (
            tokenizer.token_to_id(left),
            tokenizer.token_to_id(right),
            tokenizer.token_to_id(&format!("{left}{right}")),
        );
        if let (Some(l), Some(r), Some(result)) = ids {
            made_by.entry(result).or_insert((l, r));
        }
    }
    Ok(made_by)
}
