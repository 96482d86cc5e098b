//! The tokenization models a GGUF describes: byte-level BPE (GPT-2 style, pre-tokenizer by
//! `tokenizer.ggml.pre`) and SentencePiece-style BPE (`▁` spaces, byte fallback, merges from the
//! file or derived from the token scores), built as `tokenizers` pipelines.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    DecoderWrapper, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use super::{Metadata, TOKEN_TYPE_NORMAL, bad};
use crate::tokenizer::error::{Result, TokenizerError};

const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Token → id. A token listed twice would leave one of its ids without a string to decode to, so
/// duplicates are rejected rather than silently lost.
pub(super) fn vocab_map(tokens: &[&str]) -> Result<Vocab> {
    let mut vocab = Vocab::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let id = u32::try_from(id)
            .map_err(|_| bad("tokenizer.ggml.tokens", "too many tokens".into()))?;
        if vocab.insert((*token).to_owned(), id).is_some() {
            return Err(bad(
                "tokenizer.ggml.tokens",
                format!("token {token:?} is listed twice (second time at id {id})"),
            ));
        }
    }
    Ok(vocab)
}

fn parse_merges(merges: &[&str]) -> Result<Vec<(String, String)>> {
    merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(l, r)| (l.to_owned(), r.to_owned()))
                .ok_or_else(|| bad("tokenizer.ggml.merges", format!("merge {m:?} has no space")))
        })
        .collect()
}

pub(super) fn byte_level_bpe(md: &Metadata<'_>, vocab: Vocab) -> Result<Tokenizer> {
    let merges = md
        .strings("tokenizer.ggml.merges")?
        .ok_or(TokenizerError::MissingKey {
            key: "tokenizer.ggml.merges",
        })?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, parse_merges(&merges)?)
        .build()
        .map_err(TokenizerError::tokenizers)?;
    let pre = md.string("tokenizer.ggml.pre")?.unwrap_or("default");
    let byte_level = ByteLevel::new(false, true, true);
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "default" | "gpt-2" => byte_level.into(),
        "smollm" | "starcoder" => {
            PreSequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        "llama-bpe" | "llama3" | "llama-v3" => regex_then_bytes(LLAMA3_SPLIT)?,
        "qwen2" => regex_then_bytes(QWEN2_SPLIT)?,
        other => return Err(TokenizerError::UnsupportedPreTokenizer(other.to_owned())),
    };
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    Ok(tokenizer)
}

fn regex_then_bytes(pattern: &str) -> Result<PreTokenizerWrapper> {
    let split = Split::new(
        SplitPattern::Regex(pattern.to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(TokenizerError::tokenizers)?;
    Ok(PreSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, false).into(),
    ])
    .into())
}

pub(super) fn sentencepiece_bpe(
    md: &Metadata<'_>,
    tokens: &[&str],
    token_types: Option<&[i64]>,
    vocab: Vocab,
) -> Result<Tokenizer> {
    let merges = match md.strings("tokenizer.ggml.merges")? {
        Some(merges) => parse_merges(&merges)?,
        None => {
            let scores = md
                .floats("tokenizer.ggml.scores")?
                .ok_or(TokenizerError::MissingKey {
                    key: "tokenizer.ggml.scores",
                })?;
            if scores.len() != tokens.len() {
                return Err(bad(
                    "tokenizer.ggml.scores",
                    format!("{} scores for {} tokens", scores.len(), tokens.len()),
                ));
            }
            merges_from_scores(tokens, &scores, token_types, &vocab)
        }
    };
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    if let Some(unk) = md.id("tokenizer.ggml.unknown_token_id")? {
        let unk = tokens.get(unk as usize).ok_or_else(|| {
            bad(
                "tokenizer.ggml.unknown_token_id",
                format!("{unk} is out of range"),
            )
        })?;
        builder = builder.unk_token((*unk).to_owned());
    }
    let bpe = builder.build().map_err(TokenizerError::tokenizers)?;

    let add_space_prefix = md.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_space_prefix {
        normalizers.push(Prepend::new("▁".to_owned()).into());
    }
    normalizers.push(
        Replace::new(" ", "▁")
            .map_err(TokenizerError::tokenizers)?
            .into(),
    );
    let mut decoders: Vec<DecoderWrapper> = vec![
        DecoderWrapper::Replace(Replace::new("▁", " ").map_err(TokenizerError::tokenizers)?),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(TokenizerError::tokenizers)?;
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// Merges implied by a SentencePiece vocabulary: every split of a normal token into two vocabulary
/// pieces, ranked by the merged token's score (best first), then by longer left piece, then by
/// longer right piece; ties keep vocabulary order (the rule `transformers` uses for GGUF files).
/// Control, byte and user-defined tokens are never the result of a merge.
fn merges_from_scores(
    tokens: &[&str],
    scores: &[f64],
    token_types: Option<&[i64]>,
    vocab: &Vocab,
) -> Vec<(String, String)> {
    struct Candidate<'t> {
        left: &'t str,
        right: &'t str,
        score: f64,
    }
    let mut candidates: Vec<Candidate<'_>> = Vec::new();
    for (id, (token, score)) in tokens.iter().zip(scores).enumerate() {
        if token_types.is_some_and(|types| types.get(id) != Some(&TOKEN_TYPE_NORMAL)) {
            continue;
        }
        let mut local: Vec<Candidate<'_>> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| vocab.contains_key(*l) && vocab.contains_key(*r))
            .map(|(left, right)| Candidate {
                left,
                right,
                score: *score,
            })
            .collect();
        local.sort_by_key(|c| (vocab.get(c.left).copied(), vocab.get(c.right).copied()));
        candidates.extend(local);
    }
    candidates.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| b.left.chars().count().cmp(&a.left.chars().count()))
            .then_with(|| b.right.chars().count().cmp(&a.right.chars().count()))
    });
    candidates
        .into_iter()
        .map(|c| (c.left.to_owned(), c.right.to_owned()))
        .collect()
}
