//! The client's reference tokenizer (`--tokenizer`: a GGUF, a tokenizer.json or an HF
//! directory; without it, the server's own `/tokenize`): sizes prompts to a token length and
//! counts generated text in one fixed unit, so servers with different vocabularies (a domain
//! patch tokenizer, another engine) are compared on the same text. Never applies a vocabulary
//! patch.

use std::collections::HashSet;
use std::path::Path;

use fused_daemon::tokenizer::Codec;

use crate::bench::BenchError;
use crate::bench::server_tokens::ServerTokenizer;

/// Where the ids come from.
enum Backend {
    Local(Box<Codec>),
    Server(ServerTokenizer),
}

/// Base-vocabulary text ↔ ids.
pub struct RefTokenizer {
    backend: Backend,
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
            backend: Backend::Local(Box::new(codec)),
            text_ids,
            source: path.display().to_string(),
        })
    }

    /// The served model's tokenizer through the server's `/tokenize` and `/detokenize`.
    /// Random prompts then draw from every id below the vocabulary size the server reports
    /// (special tokens are not told apart there).
    pub fn from_server(
        base_url: &str,
        model: &str,
        api_key: Option<&str>,
    ) -> Result<Self, BenchError> {
        let server = ServerTokenizer::connect(base_url, model, api_key)?;
        let text_ids = (0..server.vocab_size()?).collect();
        Ok(Self {
            source: server.source(),
            text_ids,
            backend: Backend::Server(server),
        })
    }

    /// Where the tokenizer was loaded from (recorded in results).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Ids of `text`, without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, BenchError> {
        match &self.backend {
            Backend::Local(codec) => codec
                .encode(text, false)
                .map_err(|e| BenchError::Tokenizer(e.to_string())),
            Backend::Server(server) => server.encode(text),
        }
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String, BenchError> {
        match &self.backend {
            Backend::Local(codec) => codec
                .decode(ids, true)
                .map_err(|e| BenchError::Tokenizer(e.to_string())),
            Backend::Server(server) => server.decode(ids),
        }
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
