//! The served vocabulary as llguidance sees it: every id's bytes in a token trie. With a
//! vocabulary patch the ids are patched ids and an n-gram id is the bytes of the base tokens it
//! stands for, so a mask is over exactly the ids the model's logits row has.

use std::sync::Arc;

use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use serde_json::Value as Json;

use super::GuideError;
use crate::tokenizer::Codec;

/// How the base tokenizer spells bytes in its vocabulary entries.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Spelling {
    /// GPT-2 byte-level BPE: each byte is one printable character (`Ġ` is a space).
    ByteLevel,
    /// SentencePiece: text with `space` standing for ' ', and `<0xAB>` byte tokens.
    Pieces { space: char },
}

/// The served tokenizer and its trie, for llguidance.
pub struct ServedVocab {
    trie: TokTrie,
    codec: Arc<Codec>,
}

impl ServedVocab {
    pub fn new(codec: Arc<Codec>) -> Result<Self, GuideError> {
        let base = base_token_bytes(&codec)?;
        let words: Vec<Vec<u8>> = match codec.patch() {
            None => base,
            Some(patch) => (0..codec.vocab_size() as u32)
                .map(|id| {
                    patch.base_ids_of(id).map_or_else(Vec::new, |parts| {
                        parts
                            .iter()
                            .flat_map(|&b| base.get(b as usize).map_or(&[][..], Vec::as_slice))
                            .copied()
                            .collect()
                    })
                })
                .collect(),
        };
        let eos = codec.eos_ids();
        let first_eos = *eos.first().ok_or_else(|| {
            GuideError::Vocabulary("the tokenizer names no end-of-sequence token".into())
        })?;
        let vocab_size = u32::try_from(words.len())
            .map_err(|_| GuideError::Vocabulary("more ids than fit in u32".into()))?;
        let mut info = TokRxInfo::new(vocab_size, first_eos);
        info.tok_bos = codec.bos_id();
        info.tok_pad = codec.specials().pad;
        info.tok_unk = codec.specials().unk;
        let trie = TokTrie::from(&info, &words).with_eos_tokens(eos);
        Ok(Self { trie, codec })
    }
}

impl TokenizerEnv for ServedVocab {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.trie.tokenize_with_greedy_fallback(s, |text| {
            self.codec
                .encode(text, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(text.as_bytes()))
        })
    }
}

/// The bytes of every base id; special tokens start with llguidance's marker byte (so no text
/// can produce them) and ids the tokenizer cannot spell are empty (never allowed).
fn base_token_bytes(codec: &Codec) -> Result<Vec<Vec<u8>>, GuideError> {
    let tokenizer = codec.base_tokenizer();
    let decoder = serde_json::to_value(tokenizer.get_decoder())
        .map_err(|e| GuideError::Vocabulary(format!("reading the decoder: {e}")))?;
    let spelling = spelling_of(&decoder).ok_or_else(|| {
        GuideError::Vocabulary(format!(
            "structured outputs need a byte-level or SentencePiece tokenizer; the decoder is {decoder}"
        ))
    })?;
    let byte_of_char = byte_level_chars();
    let mut words = Vec::with_capacity(codec.vocab_size());
    for id in 0..codec.vocab_size() as u32 {
        let Some(name) = tokenizer.id_to_token(id) else {
            words.push(Vec::new());
            continue;
        };
        let bytes = if codec.is_special_base(id) {
            let mut bytes = vec![TokTrie::SPECIAL_TOKEN_MARKER];
            bytes.extend_from_slice(name.as_bytes());
            bytes
        } else {
            match spelling {
                Spelling::ByteLevel => name
                    .chars()
                    .map(|c| byte_of_char.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_default(),
                Spelling::Pieces { space } => match byte_fallback(&name) {
                    Some(byte) => vec![byte],
                    None => name.replace(space, " ").into_bytes(),
                },
            }
        };
        words.push(bytes);
    }
    Ok(words)
}

/// The spelling a `tokenizers` decoder (as JSON) undoes.
fn spelling_of(decoder: &Json) -> Option<Spelling> {
    match decoder["type"].as_str()? {
        "ByteLevel" => Some(Spelling::ByteLevel),
        "Metaspace" => Some(Spelling::Pieces {
            space: decoder["replacement"]
                .as_str()
                .and_then(|s| s.chars().next())
                .unwrap_or('▁'),
        }),
        "Sequence" => {
            let parts = decoder["decoders"].as_array()?;
            if let Some(spelling) = parts.iter().find_map(|d| match d["type"].as_str() {
                Some("ByteLevel" | "Metaspace") => spelling_of(d),
                _ => None,
            }) {
                return Some(spelling);
            }
            let space = parts.iter().find_map(|d| {
                let pattern = d["pattern"]["String"].as_str()?;
                let mut chars = pattern.chars();
                match (
                    d["type"].as_str(),
                    d["content"].as_str(),
                    chars.next(),
                    chars.next(),
                ) {
                    (Some("Replace"), Some(" "), Some(c), None) => Some(c),
                    _ => None,
                }
            });
            let fallback = parts
                .iter()
                .any(|d| d["type"].as_str() == Some("ByteFallback"));
            match (space, fallback) {
                (Some(space), _) => Some(Spelling::Pieces { space }),
                (None, true) => Some(Spelling::Pieces { space: '▁' }),
                (None, false) => None,
            }
        }
        _ => None,
    }
}

/// `<0xAB>` → 0xAB.
fn byte_fallback(name: &str) -> Option<u8> {
    let hex = name.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// GPT-2's byte ↔ printable character table, character → byte.
fn byte_level_chars() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
                next += 1;
                (c, b)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::fixtures;

    fn check_spells_like_decode(codec: Arc<Codec>) {
        let vocab = ServedVocab::new(codec.clone()).unwrap();
        let text = "Pneumonia due to Streptococcus, {\"a\": [1, 2]} naïve 日本語 🙂";
        let ids = codec.encode(text, false).unwrap();
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| vocab.trie.token(id).to_vec())
            .collect();
        // SentencePiece spells a leading space that its decoder strips.
        let spelled = String::from_utf8(bytes).unwrap();
        assert!(
            spelled == text || spelled == format!(" {text}"),
            "{spelled:?} {ids:?}"
        );
        for &eos in codec.eos_ids() {
            assert!(vocab.trie.is_special_token(eos));
        }
    }

    #[test]
    fn smollm2_ids_spell_their_text() {
        let Some(codec) = fixtures::smollm2() else {
            return;
        };
        check_spells_like_decode(codec);
    }

    #[test]
    fn mistral_ids_spell_their_text() {
        let Some(codec) = fixtures::mistral() else {
            return;
        };
        check_spells_like_decode(codec);
    }

    #[test]
    fn patched_ids_spell_their_base_tokens() {
        let Some((codec, _)) = crate::vocab::fixtures::patched_smollm2() else {
            return;
        };
        check_spells_like_decode(codec.clone());
        let ngram = (0..codec.vocab_size() as u32)
            .find(|&id| {
                codec
                    .patch()
                    .and_then(|p| p.base_ids_of(id))
                    .is_some_and(|b| b.len() > 1)
            })
            .expect("the patch has n-grams");
        let vocab = ServedVocab::new(codec.clone()).unwrap();
        assert_eq!(
            vocab.trie.token(ngram),
            codec.decode(&[ngram], false).unwrap().as_bytes()
        );
    }
}
