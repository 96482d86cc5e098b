//! The client's reference tokenizer (`--tokenizer`: a GGUF, a tokenizer.json or an HF
//! directory): sizes prompts to a token length and counts generated text in one fixed unit, so
//! servers with different vocabularies (a domain patch tokenizer, another engine) are compared
//! on the same text. Never applies a vocabulary patch.

use std::collections::HashSet;
use std::path::Path;

use fused_daemon::tokenizer::Codec;

use crate::bench::BenchError;

/// Base-vocabulary text ↔ ids.
pub struct RefTokenizer {
    codec: Codec,
    /// Ids that decode to ordinary text (not special tokens), for random prompts.
    text_ids: Vec<u32>,
    source: String,
}

impl std::fmt::Debug for RefTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefTokenizer")
            .field("source", &self.source)
            .finish()
    }
}

impl RefTokenizer {
    /// Loads the tokenizer at `path` (`*.gguf`, `tokenizer.json`, or a directory holding one).
    pub fn load(path: &Path) -> Result<Self, BenchError> {
        let codec = Codec::from_path(path)
            .map_err(|e| BenchError::Tokenizer(format!("{}: {e}", path.display())))?;
        let specials: HashSet<u32> = codec.specials().all().collect();
        let text_ids: Vec<u32> = (0..codec.vocab_size() as u32)
            .filter(|id| !specials.contains(id))
            .collect();
        if text_ids.is_empty() {
            return Err(BenchError::Tokenizer(format!(
                "{}: the vocabulary has no ordinary tokens",
                path.display()
            )));
        }
        Ok(Self {
            codec,
            text_ids,
            source: path.display().to_string(),
        })
    }

    /// Where the tokenizer was loaded from (recorded in results).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, BenchError> {
        self.codec
            .encode(text, false)
            .map_err(|e| BenchError::Tokenizer(e.to_string()))
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, BenchError> {
        self.codec
            .decode(ids, true)
            .map_err(|e| BenchError::Tokenizer(e.to_string()))
    }

    /// How many tokens `text` is.
    pub fn count(&self, text: &str) -> Result<usize, BenchError> {
        Ok(self.encode(text)?.len())
    }

    /// Ids that decode to ordinary text.
    pub fn text_ids(&self) -> &[u32] {
        &self.text_ids
    }
}
