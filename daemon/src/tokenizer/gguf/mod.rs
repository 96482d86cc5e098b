//! Builds the base tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
//!
//! A GGUF carries no `tokenizer.json`: only the vocabulary, merges (or SentencePiece scores), token
//! types and special ids. This module rebuilds the `tokenizers` pipeline those describe:
//! - `tokenizer.ggml.model = gpt2`: byte-level BPE, pre-tokenizer chosen by `tokenizer.ggml.pre`
//!   (SmolLM2's `smollm` = `Digits(individual) + ByteLevel(add_prefix_space = false)`; a prefix
//!   space here is the known bug that turns "The" into "ĠThe");
//! - `tokenizer.ggml.model = llama`: SentencePiece-style BPE (`▁` for spaces, `<0xXX>` byte fallback),
//!   merges from the file or derived from the token scores.
//!
//! It only reads metadata; it never touches tensors.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use super::error::{Result, TokenizerError};
use super::{BaseParts, SpecialIds};

mod models;

use models::{byte_level_bpe, sentencepiece_bpe, vocab_map};

/// Values of `tokenizer.ggml.pre` this loader knows (for byte-level BPE vocabularies).
pub(crate) const SUPPORTED_PRE_TOKENIZERS: &[&str] = &[
    "default",
    "gpt-2",
    "smollm",
    "starcoder",
    "llama-bpe",
    "llama3",
    "llama-v3",
    "qwen2",
];

/// GGUF token types (llama.cpp's `llama_token_type`).
pub(super) const TOKEN_TYPE_NORMAL: i64 = 1;
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// Typed access to the metadata map, with errors that name the key.
pub(super) struct Metadata<'a>(&'a HashMap<String, Value>);

impl<'a> Metadata<'a> {
    fn get(&self, key: &'static str) -> Option<&'a Value> {
        self.0.get(key)
    }

    fn string(&self, key: &'static str) -> Result<Option<&'a str>> {
        self.get(key).map(|v| as_str(key, v)).transpose()
    }

    fn id(&self, key: &'static str) -> Result<Option<u32>> {
        self.get(key)
            .map(|v| {
                let n = as_int(key, v)?;
                u32::try_from(n).map_err(|_| bad(key, format!("{n} is not a token id")))
            })
            .transpose()
    }

    fn bool(&self, key: &'static str) -> Result<Option<bool>> {
        self.get(key)
            .map(|v| match v {
                Value::Bool(b) => Ok(*b),
                other => Err(bad(
                    key,
                    format!("expected a bool, got {:?}", other.value_type()),
                )),
            })
            .transpose()
    }

    fn array(&self, key: &'static str) -> Result<Option<&'a [Value]>> {
        self.get(key)
            .map(|v| match v {
                Value::Array(items) => Ok(items.as_slice()),
                other => Err(bad(
                    key,
                    format!("expected an array, got {:?}", other.value_type()),
                )),
            })
            .transpose()
    }

    fn strings(&self, key: &'static str) -> Result<Option<Vec<&'a str>>> {
        self.array(key)?
            .map(|items| items.iter().map(|v| as_str(key, v)).collect())
            .transpose()
    }

    fn ints(&self, key: &'static str) -> Result<Option<Vec<i64>>> {
        self.array(key)?
            .map(|items| items.iter().map(|v| as_int(key, v)).collect())
            .transpose()
    }

    fn floats(&self, key: &'static str) -> Result<Option<Vec<f64>>> {
        self.array(key)?
            .map(|items| {
                items
                    .iter()
                    .map(|v| match v {
                        Value::F32(x) => Ok(f64::from(*x)),
                        Value::F64(x) => Ok(*x),
                        other => as_int(key, other).map(|n| n as f64),
                    })
                    .collect()
            })
            .transpose()
    }
}

pub(super) fn bad(key: &'static str, reason: String) -> TokenizerError {
    TokenizerError::BadKey { key, reason }
}

fn as_str<'a>(key: &'static str, v: &'a Value) -> Result<&'a str> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(bad(
            key,
            format!("expected a string, got {:?}", other.value_type()),
        )),
    }
}

fn as_int(key: &'static str, v: &Value) -> Result<i64> {
    let n = match v {
        Value::U8(x) => i64::from(*x),
        Value::I8(x) => i64::from(*x),
        Value::U16(x) => i64::from(*x),
        Value::I16(x) => i64::from(*x),
        Value::U32(x) => i64::from(*x),
        Value::I32(x) => i64::from(*x),
        Value::U64(x) => i64::try_from(*x).map_err(|_| bad(key, format!("{x} is too large")))?,
        Value::I64(x) => *x,
        other => {
            return Err(bad(
                key,
                format!("expected an integer, got {:?}", other.value_type()),
            ));
        }
    };
    Ok(n)
}

/// Builds the tokenizer, special ids and chat template described by a GGUF's metadata.
pub(crate) fn base_parts(metadata: &HashMap<String, Value>) -> Result<BaseParts> {
    let md = Metadata(metadata);
    let model = md
        .string("tokenizer.ggml.model")?
        .ok_or(TokenizerError::MissingKey {
            key: "tokenizer.ggml.model",
        })?;
    let tokens = md
        .strings("tokenizer.ggml.tokens")?
        .ok_or(TokenizerError::MissingKey {
            key: "tokenizer.ggml.tokens",
        })?;
    let token_types = md.ints("tokenizer.ggml.token_type")?;
    if let Some(types) = &token_types
        && types.len() != tokens.len()
    {
        return Err(bad(
            "tokenizer.ggml.token_type",
            format!("{} types for {} tokens", types.len(), tokens.len()),
        ));
    }
    let vocab = vocab_map(&tokens)?;

    let (mut tokenizer, byte_level) = match model {
        "gpt2" => (byte_level_bpe(&md, vocab)?, true),
        "llama" => (
            sentencepiece_bpe(&md, &tokens, token_types.as_deref(), vocab)?,
            false,
        ),
        other => return Err(TokenizerError::UnsupportedModel(other.to_owned())),
    };
    add_special_tokens(&mut tokenizer, &tokens, token_types.as_deref())?;

    let specials = SpecialIds {
        bos: md.id("tokenizer.ggml.bos_token_id")?,
        eos: stop_ids(&md)?,
        pad: md.id("tokenizer.ggml.padding_token_id")?,
        unk: md.id("tokenizer.ggml.unknown_token_id")?,
    };
    for id in specials.all() {
        if id as usize >= tokens.len() {
            return Err(bad(
                "tokenizer.ggml.*_token_id",
                format!("id {id} is outside the vocabulary of {}", tokens.len()),
            ));
        }
    }
    // llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise.
    let add_bos = md
        .bool("tokenizer.ggml.add_bos_token")?
        .unwrap_or(!byte_level);
    let add_eos = md.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let bos = specials.bos.filter(|_| add_bos);
    let eos = specials.eos.first().copied().filter(|_| add_eos);
    if let Some(processor) = template_processor(&tokens, bos, eos)? {
        tokenizer.with_post_processor(Some(processor));
    }

    Ok(BaseParts {
        tokenizer,
        specials,
        chat_template: md.string("tokenizer.chat_template")?.map(str::to_owned),
        vocab_size: tokens.len(),
    })
}

/// Control tokens become special added tokens (matched whole, skippable on decode); user-defined
/// tokens become plain added tokens (matched whole, always decoded).
fn add_special_tokens(
    tokenizer: &mut Tokenizer,
    tokens: &[&str],
    types: Option<&[i64]>,
) -> Result<()> {
    let Some(types) = types else { return Ok(()) };
    let of_type = |wanted: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types)
            .filter(|(_, t)| **t == wanted)
            .map(|(token, _)| AddedToken::from(*token, special).normalized(false))
            .collect()
    };
    tokenizer
        .add_special_tokens(of_type(TOKEN_TYPE_CONTROL, true))
        .map_err(TokenizerError::tokenizers)?;
    tokenizer
        .add_tokens(of_type(TOKEN_TYPE_USER_DEFINED, false))
        .map_err(TokenizerError::tokenizers)?;
    Ok(())
}

/// Stop ids: EOS first, then end-of-turn / end-of-message ids when the file names other ones.
fn stop_ids(md: &Metadata<'_>) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for key in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = md.id(key)?
            && !ids.contains(&id)
        {
            ids.push(id);
        }
    }
    Ok(ids)
}

fn template_processor(
    tokens: &[&str],
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<Option<TemplateProcessing>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let name = |id: u32| {
        tokens
            .get(id as usize)
            .map(|t| (*t).to_owned())
            .unwrap_or_default()
    };
    let mut single = Vec::new();
    let mut specials = Vec::new();
    if let Some(id) = bos {
        single.push(name(id));
        specials.push((name(id), id));
    }
    single.push("$A".to_owned());
    if let Some(id) = eos {
        single.push(name(id));
        specials.push((name(id), id));
    }
    let mut pair = single.clone();
    pair.extend(single.iter().map(|p| {
        if p == "$A" {
            "$B".to_owned()
        } else {
            p.clone()
        }
    }));
    TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(TokenizerError::tokenizers)?
        .special_tokens(specials)
        .build()
        .map(Some)
        .map_err(TokenizerError::tokenizers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::{Codec, fixtures};

    fn smollm2_metadata() -> Option<HashMap<String, Value>> {
        let path = fixtures::smollm2_gguf()?;
        let mut file = std::fs::File::open(path).unwrap();
        Some(
            candle_core::quantized::gguf_file::Content::read(&mut file)
                .unwrap()
                .metadata,
        )
    }

    /// A llama-style (SentencePiece) GGUF metadata map made from Mistral's tokenizer.json the way
    /// llama.cpp's converter lays it out: scores instead of merges (SentencePiece BPE scores are
    /// -id, except the runs of `▁` which score -1e9), byte tokens typed 6, `<s>`/`</s>` control,
    /// `<unk>` unknown.
    fn mistral_as_gguf(codec: &Codec) -> HashMap<String, Value> {
        let mut by_id: Vec<(String, u32)> =
            codec.base_tokenizer().get_vocab(true).into_iter().collect();
        by_id.sort_by_key(|(_, id)| *id);
        let token_type = |id: u32, token: &str| match id {
            0 => 2,
            1 | 2 => 3,
            _ if token.starts_with("<0x") => 6,
            _ => 1,
        };
        let mut md = HashMap::new();
        let string = |s: &str| Value::String(s.to_owned());
        md.insert("tokenizer.ggml.model".into(), string("llama"));
        md.insert(
            "tokenizer.ggml.tokens".into(),
            Value::Array(by_id.iter().map(|(t, _)| string(t)).collect()),
        );
        md.insert(
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                by_id
                    .iter()
                    .map(|(t, id)| Value::I32(token_type(*id, t)))
                    .collect(),
            ),
        );
        md.insert(
            "tokenizer.ggml.scores".into(),
            Value::Array(
                by_id
                    .iter()
                    .map(|(t, id)| {
                        Value::F32(match token_type(*id, t) {
                            1 if t.chars().count() > 1 && t.chars().all(|c| c == '▁') => -1e9,
                            1 => -(*id as f32),
                            _ => 0.0,
                        })
                    })
                    .collect(),
            ),
        );
        md.insert("tokenizer.ggml.bos_token_id".into(), Value::U32(1));
        md.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(2));
        md.insert("tokenizer.ggml.unknown_token_id".into(), Value::U32(0));
        md
    }

    #[test]
    fn llama_sentencepiece_gguf_matches_the_tokenizer_json() {
        let Some(reference) = fixtures::mistral() else {
            return;
        };
        let from_gguf =
            Codec::from_gguf_metadata(&mistral_as_gguf(&reference), "test".into()).unwrap();
        assert_eq!(from_gguf.vocab_size(), 32000);
        assert_eq!(from_gguf.bos_id(), Some(1));
        for text in [
            "The quick brown fox",
            " leading and  double  spaces ",
            "Pneumonia due to Streptococcus pneumoniae, unspecified (J13)",
            "x 𝔘 ꙮ 日本語\ttab\nnewline",
            "</s> is kept special",
        ] {
            let want = reference.encode(text, true).unwrap();
            let got = from_gguf.encode(text, true).unwrap();
            assert_eq!(got, want, "{text:?}");
            assert_eq!(
                from_gguf.decode(&got, true).unwrap(),
                reference.decode(&want, true).unwrap()
            );
        }
    }

    #[test]
    fn pre_tokenizer_follows_the_metadata() {
        let Some(mut md) = smollm2_metadata() else {
            return;
        };
        let smollm = Codec::from_gguf_metadata(&md, "test".into()).unwrap();
        md.insert("tokenizer.ggml.pre".into(), Value::String("gpt-2".into()));
        let gpt2 = Codec::from_gguf_metadata(&md, "test".into()).unwrap();
        // `smollm` splits digits one by one; plain GPT-2 keeps runs of digits together.
        let pieces = |codec: &Codec| {
            use tokenizers::PreTokenizer;
            let mut s = tokenizers::PreTokenizedString::from(" 2024");
            codec
                .base_tokenizer()
                .get_pre_tokenizer()
                .unwrap()
                .pre_tokenize(&mut s)
                .unwrap();
            s.get_splits(
                tokenizers::OffsetReferential::Original,
                tokenizers::OffsetType::Char,
            )
            .len()
        };
        assert_eq!(pieces(&smollm), 5);
        assert_eq!(pieces(&gpt2), 1);
        assert_ne!(smollm.base_digest(), gpt2.base_digest());

        md.insert("tokenizer.ggml.pre".into(), Value::String("made-up".into()));
        let err = Codec::from_gguf_metadata(&md, "test".into()).unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported pre-tokenizer `made-up`"),
            "{err}"
        );
    }

    #[test]
    fn broken_metadata_is_a_clear_error() {
        let Some(md) = smollm2_metadata() else { return };
        let mut no_merges = md.clone();
        no_merges.remove("tokenizer.ggml.merges");
        let err = Codec::from_gguf_metadata(&no_merges, "test".into()).unwrap_err();
        assert!(
            err.to_string()
                .contains("`tokenizer.ggml.merges` is missing"),
            "{err}"
        );

        let mut bad_model = md.clone();
        bad_model.insert("tokenizer.ggml.model".into(), Value::String("bert".into()));
        let err = Codec::from_gguf_metadata(&bad_model, "test".into()).unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported tokenizer model `bert`"),
            "{err}"
        );

        let mut bad_id = md;
        bad_id.insert("tokenizer.ggml.eos_token_id".into(), Value::U32(1 << 20));
        let err = Codec::from_gguf_metadata(&bad_id, "test".into()).unwrap_err();
        assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    }
}
