//! [`Codec`]: the served model's tokenizer — encode, decode, special ids, chat template — with an
//! optional vocabulary patch applied to every id that goes in or out.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::Tokenizer;

use super::chat::{ChatMessage, ChatTemplate};
use super::error::{Result, TokenizerError};
use super::patch::VocabPatch;
use super::stream::StreamDecoder;
use super::{BaseParts, gguf, hf_dir};

/// Special token ids from the model's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SpecialIds {
    pub bos: Option<u32>,
    /// Ids that end generation: EOS first, then end-of-turn ids.
    pub eos: Vec<u32>,
    pub pad: Option<u32>,
    pub unk: Option<u32>,
}

impl SpecialIds {
    /// Every id named here.
    pub fn all(&self) -> impl Iterator<Item = u32> + '_ {
        self.bos
            .into_iter()
            .chain(self.eos.iter().copied())
            .chain(self.pad)
            .chain(self.unk)
    }

    fn try_map(&self, f: impl Fn(u32) -> Option<u32>) -> Option<Self> {
        Some(Self {
            bos: self.bos.map(&f).map_or(Some(None), |m| m.map(Some))?,
            eos: self
                .eos
                .iter()
                .map(|id| f(*id))
                .collect::<Option<Vec<_>>>()?,
            pad: self.pad.map(&f).map_or(Some(None), |m| m.map(Some))?,
            unk: self.unk.map(&f).map_or(Some(None), |m| m.map(Some))?,
        })
    }
}

/// The tokenizer of the served model. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Codec {
    base: Tokenizer,
    /// Special ids in the base vocabulary.
    base_specials: SpecialIds,
    /// Special ids as the outside sees them (remapped when a patch is applied).
    specials: SpecialIds,
    chat: Option<ChatTemplate>,
    vocab_size: usize,
    /// What each base id is, for the stream decoder (see [`TokenKind`]).
    kinds: Vec<TokenKind>,
    base_digest: String,
    source: String,
    patch: Option<Arc<dyn VocabPatch>>,
}

impl Codec {
    /// From an opened GGUF file's metadata.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let name = match content.metadata.get("general.name") {
            Some(gguf_file::Value::String(name)) => format!("gguf:{name}"),
            _ => "gguf".to_owned(),
        };
        Self::from_gguf_metadata(&content.metadata, name)
    }

    /// From GGUF metadata already read; `source` names where it came from (for messages).
    pub fn from_gguf_metadata(
        metadata: &HashMap<String, gguf_file::Value>,
        source: String,
    ) -> Result<Self> {
        Self::from_parts(gguf::base_parts(metadata)?, source)
    }

    /// Reads the metadata of the GGUF file at `path` (not its tensors).
    pub fn from_gguf_path(path: &Path) -> Result<Self> {
        let io_err = |source| TokenizerError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io_err)?;
        let content =
            gguf_file::Content::read(&mut file).map_err(|e| TokenizerError::BadConfig {
                path: path.to_owned(),
                reason: format!("not a readable GGUF file: {e}"),
            })?;
        Self::from_gguf(&content)
    }

    /// From a directory holding `tokenizer.json` (+ optional `tokenizer_config.json`,
    /// `generation_config.json`, `config.json`, `chat_template.jinja`).
    pub fn from_hf_dir(dir: &Path) -> Result<Self> {
        Self::from_parts(hf_dir::base_parts(dir)?, format!("hf:{}", dir.display()))
    }

    /// `*.gguf` file → [`Self::from_gguf_path`]; a directory, or a `tokenizer.json` in one →
    /// [`Self::from_hf_dir`].
    pub fn from_path(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::from_hf_dir(path)
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        {
            Self::from_gguf_path(path)
        } else if path.file_name().is_some_and(|n| n == "tokenizer.json") {
            Self::from_hf_dir(path.parent().unwrap_or(Path::new(".")))
        } else {
            Err(TokenizerError::BadConfig {
                path: path.to_owned(),
                reason: "expected a .gguf file, a tokenizer.json or a directory holding one".into(),
            })
        }
    }

    fn from_parts(parts: BaseParts, source: String) -> Result<Self> {
        let BaseParts {
            tokenizer,
            specials,
            chat_template,
            vocab_size,
        } = parts;
        let name_of = |id: Option<u32>| {
            id.and_then(|id| tokenizer.id_to_token(id))
                .unwrap_or_default()
        };
        let chat = chat_template
            .map(|source| {
                ChatTemplate::new(
                    source,
                    name_of(specials.bos),
                    name_of(specials.eos.first().copied()),
                )
            })
            .transpose()?;
        let specials_added: HashSet<u32> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        let id_count = u32::try_from(vocab_size).map_err(|_| {
            TokenizerError::Tokenizers(format!("{vocab_size} ids do not fit in u32"))
        })?;
        let kinds = (0..id_count)
            .map(|id| {
                if specials_added.contains(&id) {
                    TokenKind::Special
                } else if tokenizer
                    .id_to_token(id)
                    .is_some_and(|t| is_byte_fallback_token(&t))
                {
                    TokenKind::ByteFallback
                } else {
                    TokenKind::Text
                }
            })
            .collect();
        Ok(Self {
            base_digest: digest_of(&tokenizer)?,
            base: tokenizer,
            base_specials: specials.clone(),
            specials,
            chat,
            vocab_size,
            kinds,
            source,
            patch: None,
        })
    }

    /// Applies a vocabulary patch: from now on every id in or out is a patched id. Fails when the
    /// patch was built for another base tokenizer or would lose a special token.
    pub fn with_patch(mut self, patch: Arc<dyn VocabPatch>) -> Result<Self> {
        if patch.base_digest() != self.base_digest {
            return Err(TokenizerError::PatchMismatch {
                patch_base: patch.base_digest().to_owned(),
                model_base: self.base_digest.clone(),
            });
        }
        if patch.vocab_size() != self.vocab_size {
            return Err(TokenizerError::BadPatch(format!(
                "it has {} ids but the base vocabulary has {}",
                patch.vocab_size(),
                self.vocab_size
            )));
        }
        self.specials = self
            .base_specials
            .try_map(|id| patch.patched_id_of(id))
            .ok_or_else(|| {
                TokenizerError::Tokenizers("the patch removes a special token".into())
            })?;
        self.patch = Some(patch);
        Ok(self)
    }

    /// The applied patch, if any.
    pub fn patch(&self) -> Option<&Arc<dyn VocabPatch>> {
        self.patch.as_ref()
    }

    /// Text → ids (patched ids when a patch is applied). `add_special` adds what the model's
    /// metadata asks for (BOS for Llama-family SentencePiece, nothing for SmolLM2).
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let base = self.encode_base(text, add_special)?;
        Ok(match &self.patch {
            Some(patch) => patch.patch_ids(&base),
            None => base,
        })
    }

    /// Text → ids as [`encode`](Self::encode), and how many base ids the text was before the
    /// patch (the vocabulary patch's token reduction), from one tokenisation.
    pub fn encode_counting_base(&self, text: &str, add_special: bool) -> Result<(Vec<u32>, usize)> {
        let base = self.encode_base(text, add_special)?;
        let base_len = base.len();
        Ok(match &self.patch {
            Some(patch) => (patch.patch_ids(&base), base_len),
            None => (base, base_len),
        })
    }

    /// Text → base ids, ignoring any patch.
    pub fn encode_base(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let encoding = self
            .base
            .encode_fast(text, add_special)
            .map_err(TokenizerError::tokenizers)?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Ids → text. Errors on an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        let mut base = Vec::with_capacity(ids.len() * 2);
        self.expand_to_base(ids, &mut base)?;
        self.decode_base(&base, skip_special)
    }

    /// Base ids → text, ignoring any patch.
    pub fn decode_base(&self, base_ids: &[u32], skip_special: bool) -> Result<String> {
        if let Some(&id) = base_ids.iter().find(|id| **id as usize >= self.vocab_size) {
            return Err(TokenizerError::UnknownId {
                id,
                vocab_size: self.vocab_size,
            });
        }
        self.base
            .decode(base_ids, skip_special)
            .map_err(TokenizerError::tokenizers)
    }

    /// Appends the base ids that `ids` stand for (the ids themselves without a patch).
    pub fn expand_to_base(&self, ids: &[u32], out: &mut Vec<u32>) -> Result<()> {
        let unknown = |id| TokenizerError::UnknownId {
            id,
            vocab_size: self.vocab_size,
        };
        match &self.patch {
            None => {
                if let Some(&id) = ids.iter().find(|id| **id as usize >= self.vocab_size) {
                    return Err(unknown(id));
                }
                out.extend_from_slice(ids);
            }
            Some(patch) => {
                for &id in ids {
                    out.extend_from_slice(patch.base_ids_of(id).ok_or_else(|| unknown(id))?);
                }
            }
        }
        Ok(())
    }

    /// A streaming detokenizer over this codec (see [`StreamDecoder`]).
    pub fn stream_decoder(self: &Arc<Self>, skip_special: bool) -> StreamDecoder {
        StreamDecoder::new(Arc::clone(self), skip_special)
    }

    /// Renders the model's chat template; errors clearly when the model has none.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.apply_chat_template_with_tools(messages, add_generation_prompt, None)
    }

    /// [`apply_chat_template`](Self::apply_chat_template) with the template's `tools` variable.
    pub fn apply_chat_template_with_tools(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&[serde_json::Value]>,
    ) -> Result<String> {
        self.chat
            .as_ref()
            .ok_or(TokenizerError::NoChatTemplate)?
            .render(messages, add_generation_prompt, tools)
    }

    /// Whether the chat template reads the `tools` variable (false without a template).
    pub fn chat_template_reads_tools(&self) -> bool {
        self.chat.as_ref().is_some_and(ChatTemplate::reads_tools)
    }

    /// The same tokenizer with `source` as its chat template (`--chat-template`) in place of
    /// the model's own; a template that does not compile is an error now.
    pub fn with_chat_template(mut self, source: String) -> Result<Self> {
        let name_of = |id: Option<u32>| {
            id.and_then(|id| self.base.id_to_token(id))
                .unwrap_or_default()
        };
        let chat = ChatTemplate::new(
            source,
            name_of(self.base_specials.bos),
            name_of(self.base_specials.eos.first().copied()),
        )?;
        self.chat = Some(chat);
        Ok(self)
    }

    /// Whether the model has a chat template.
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.specials.bos
    }

    /// Ids that end generation (EOS first).
    pub fn eos_ids(&self) -> &[u32] {
        &self.specials.eos
    }

    pub fn specials(&self) -> &SpecialIds {
        &self.specials
    }

    /// Ids the model knows (rows of its embedding); a patch keeps this unchanged.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The vocabulary entry of an id as the tokenizer spells it (byte-level BPE shows a leading
    /// space as `Ġ`); a patched n-gram is its parts' entries concatenated. For logprobs.
    pub fn token_str(&self, id: u32) -> Result<String> {
        let mut base = Vec::new();
        self.expand_to_base(&[id], &mut base)?;
        base.iter()
            .map(|&b| {
                self.base.id_to_token(b).ok_or(TokenizerError::UnknownId {
                    id: b,
                    vocab_size: self.vocab_size,
                })
            })
            .collect()
    }

    /// sha256 over the base tokenizer's definition (model, vocabulary, merges, normalizer,
    /// pre-tokenizer, decoder, added tokens): what a vocabulary patch is tied to.
    pub fn base_digest(&self) -> &str {
        &self.base_digest
    }

    /// Where the base tokenizer came from (`gguf:<name>` or `hf:<dir>`), for humans.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The underlying `tokenizers` pipeline (unpatched), for building patches.
    pub fn base_tokenizer(&self) -> &Tokenizer {
        &self.base
    }

    /// Special ids of the base vocabulary (before any patch).
    pub fn base_specials(&self) -> &SpecialIds {
        &self.base_specials
    }

    /// Whether a base id is a special token (`<|im_end|>`, `</s>`…), not text.
    pub fn is_special_base(&self, base_id: u32) -> bool {
        self.token_kind(base_id) == TokenKind::Special
    }

    pub(crate) fn token_kind(&self, base_id: u32) -> TokenKind {
        self.kinds
            .get(base_id as usize)
            .copied()
            .unwrap_or(TokenKind::Text)
    }
}

/// How a base id takes part in decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// Ordinary text.
    Text,
    /// A special token (dropped when decoding with `skip_special`).
    Special,
    /// A SentencePiece byte-fallback token (`<0xAB>`): a run of them decodes as a whole, so the
    /// next byte can change how the run reads.
    ByteFallback,
}

fn is_byte_fallback_token(token: &str) -> bool {
    token.len() == 6
        && token.starts_with("<0x")
        && token.ends_with('>')
        && token[3..5].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Digest of everything that decides how text becomes base ids and back. Post-processing (BOS
/// insertion), padding and truncation are left out: they do not change which id a token has.
fn digest_of(tokenizer: &Tokenizer) -> Result<String> {
    let json = tokenizer
        .to_string(false)
        .map_err(TokenizerError::tokenizers)?;
    let mut value: serde_json::Value =
        serde_json::from_str(&json).map_err(TokenizerError::tokenizers)?;
    if let Some(map) = value.as_object_mut() {
        for key in ["post_processor", "padding", "truncation", "version"] {
            map.remove(key);
        }
    }
    // Keys sorted at every level, whatever order serde_json's map keeps (a dependency may turn
    // on `preserve_order`), so this serialisation is canonical.
    value.sort_all_objects();
    let canonical = serde_json::to_vec(&value).map_err(TokenizerError::tokenizers)?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(&canonical))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::fixtures;

    /// Golden ids from Python `tokenizers` 0.23.3: a BPE built from this GGUF's
    /// `tokenizer.ggml.tokens`/`merges` with SmolLM2's published tokenizer.json pipeline
    /// (Digits(individual_digits) + ByteLevel(add_prefix_space=false), ByteLevel decoder).
    const SMOLLM2_GOLDEN: &[(&str, &[u32])] = &[
        ("The quick brown fox", &[504, 2365, 6354, 16438]),
        (
            "Hello world, 12345!",
            &[19556, 905, 28, 216, 33, 34, 35, 36, 37, 17],
        ),
        (" leading space", &[2899, 1898]),
        (
            "Pneumonia due to Streptococcus pneumoniae",
            &[64, 10304, 7409, 1568, 288, 47543, 15648, 85],
        ),
        (
            "naïve café 日本語 🙂",
            &[
                3546, 46494, 37366, 17097, 241, 115, 40993, 179, 120, 248, 47526,
            ],
        ),
        (
            "<|im_start|>user\nhi<|im_end|>\n",
            &[1, 4093, 198, 6004, 2, 198],
        ),
    ];

    /// Golden ids from Python `tokenizers` 0.23.3 on the same tokenizer.json
    /// (`encode(text, add_special_tokens=True)`).
    const MISTRAL_GOLDEN: &[(&str, &[u32])] = &[
        ("The quick brown fox", &[1, 415, 2936, 9060, 285, 1142]),
        (
            "Hello world, 12345!",
            &[
                1, 22557, 1526, 28725, 28705, 28740, 28750, 28770, 28781, 28782, 28808,
            ],
        ),
        (" leading space", &[1, 28705, 5374, 2764]),
        (
            "x 𝔘 ꙮ",
            &[1, 1318, 28705, 243, 160, 151, 155, 28705, 237, 156, 177],
        ),
    ];

    const SAMPLE: &str = "Typhoid fever with heart involvement (A01.02), 3 doses.\n\n\
        def f(x):\n    return x ** 2  # tabs\tand  double  spaces\r\n\
        naïve café — 日本語, emoji 🙂👍🏽, math ∑ 𝔘 ꙮ, <not special> end ";

    #[test]
    fn smollm2_matches_golden_ids_and_has_no_prefix_space() {
        let Some(codec) = fixtures::smollm2() else {
            return;
        };
        for (text, ids) in SMOLLM2_GOLDEN {
            assert_eq!(codec.encode(text, true).unwrap(), *ids, "{text:?}");
        }
        let the = codec.encode("The", false).unwrap();
        assert_eq!(
            codec.token_str(the[0]).unwrap(),
            "The",
            "no prefix space: \"The\" must not become \"ĠThe\""
        );
        assert_eq!(codec.token_str(2365).unwrap(), "Ġquick");
    }

    #[test]
    fn smollm2_round_trips_real_text() {
        let Some(codec) = fixtures::smollm2() else {
            return;
        };
        for text in [
            SAMPLE,
            "",
            " ",
            "  two leading",
            "trailing  ",
            "\n\n\n",
            "0123456789",
        ] {
            let ids = codec.encode(text, true).unwrap();
            assert_eq!(codec.decode(&ids, false).unwrap(), text);
        }
    }

    #[test]
    fn smollm2_special_ids_come_from_metadata() {
        let Some(codec) = fixtures::smollm2() else {
            return;
        };
        assert_eq!(codec.vocab_size(), 49152);
        assert_eq!(codec.bos_id(), Some(1));
        assert_eq!(codec.eos_ids(), &[2]);
        assert_eq!(codec.specials().pad, Some(2));
        assert_eq!(codec.token_str(2).unwrap(), "<|im_end|>");
        // SmolLM2 adds no BOS (tokenizer.ggml.add_bos_token = false).
        assert_eq!(
            codec.encode("hi", true).unwrap(),
            codec.encode("hi", false).unwrap()
        );
        assert_eq!(codec.decode(&[1, 6004, 2], true).unwrap(), "hi");
        assert_eq!(
            codec.decode(&[1, 6004, 2], false).unwrap(),
            "<|im_start|>hi<|im_end|>"
        );
    }

    #[test]
    fn mistral_matches_golden_ids_and_round_trips() {
        let Some(codec) = fixtures::mistral() else {
            return;
        };
        for (text, ids) in MISTRAL_GOLDEN {
            assert_eq!(codec.encode(text, true).unwrap(), *ids, "{text:?}");
        }
        assert_eq!(codec.vocab_size(), 32000);
        assert_eq!(codec.bos_id(), Some(1));
        assert_eq!(codec.eos_ids(), &[2]);
        for text in [SAMPLE, " leading", "x"] {
            let ids = codec.encode(text, false).unwrap();
            assert_eq!(codec.decode(&ids, false).unwrap(), text);
        }
        assert_eq!(codec.token_str(415).unwrap(), "▁The");
    }

    #[test]
    fn out_of_range_ids_are_errors_not_dropped() {
        let Some(codec) = fixtures::smollm2() else {
            return;
        };
        let err = codec.decode(&[504, 49152], false).unwrap_err();
        assert!(
            matches!(
                err,
                TokenizerError::UnknownId {
                    id: 49152,
                    vocab_size: 49152
                }
            ),
            "{err}"
        );
        assert!(codec.token_str(u32::MAX).is_err());
    }

    #[test]
    fn digest_identifies_the_base_tokenizer() {
        let (Some(smol), Some(mistral)) = (fixtures::smollm2(), fixtures::mistral()) else {
            return;
        };
        let path = fixtures::smollm2_gguf().unwrap();
        let again = Codec::from_gguf_path(&path).unwrap();
        assert_eq!(smol.base_digest(), again.base_digest());
        assert_ne!(smol.base_digest(), mistral.base_digest());
        assert!(smol.base_digest().starts_with("sha256:"));
    }

    #[test]
    fn bad_paths_are_clear_errors() {
        let err = Codec::from_path(Path::new("/nonexistent/model.gguf")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
        let err = Codec::from_path(Path::new("/etc/hostname")).unwrap_err();
        assert!(err.to_string().contains("expected a .gguf file"), "{err}");
        let dir = std::env::temp_dir().join(format!("fused-no-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = Codec::from_hf_dir(&dir).unwrap_err();
        assert!(err.to_string().contains("tokenizer.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
