//! Structured outputs: a request's constraint (JSON schema, JSON object, regex, choice, Lark
//! grammar) compiled by llguidance into a matcher over the served vocabulary, and the per-choice
//! [`Guide`] that gives the engine a [`TokenMask`] before each sample and follows each sampled
//! token.
//!
//! - `vocab`: the served vocabulary as bytes (a patched id is its base tokens' bytes) in the
//!   token trie llguidance walks;
//! - `spec`: what a request asks for ([`GuideSpec`]) as an llguidance grammar.
//!
//! Must not: know HTTP (errors are typed; the server names the field), or be called on the
//! async runtime: compiling a grammar takes milliseconds to seconds (the server uses the blocking
//! pool) and a mask up to a few milliseconds (the engine computes it beside the forward pass).

mod spec;
mod vocab;

pub use spec::GuideSpec;

use std::sync::Arc;

use llguidance::toktrie::{SimpleVob, TokEnv};
use llguidance::{Matcher, ParserFactory};

use crate::tokenizer::Codec;

#[derive(Debug, thiserror::Error)]
pub enum GuideError {
    /// The served tokenizer cannot be described to the grammar engine.
    #[error("structured outputs are not available for this tokenizer: {0}")]
    Vocabulary(String),
    /// The request's schema, regex or grammar does not compile.
    #[error("{0}")]
    Invalid(String),
    /// The matcher failed while generating (a token it did not allow, or its limits).
    #[error("the output constraint failed: {0}")]
    Failed(String),
}

/// Compiles constraints for the served vocabulary; built once, shared by every request.
pub struct Guides {
    factory: ParserFactory,
}

impl std::fmt::Debug for Guides {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guides")
            .field(
                "vocab_size",
                &self.factory.tok_env().tok_trie().vocab_size(),
            )
            .finish()
    }
}

impl Guides {
    /// The token trie and lexer slices of `codec`'s vocabulary (tens to hundreds of ms).
    pub fn new(codec: Arc<Codec>) -> Result<Self, GuideError> {
        let env: TokEnv = Arc::new(vocab::ServedVocab::new(codec)?);
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| GuideError::Vocabulary(e.to_string()))?;
        factory.quiet();
        Ok(Self { factory })
    }

    /// Compiles `spec` into the guide of one choice (fork it for more).
    pub fn compile(&self, spec: &GuideSpec) -> Result<Guide, GuideError> {
        let grammar = spec.grammar()?;
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| GuideError::Invalid(first_line(&e.to_string())))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(error) = matcher.get_error() {
            return Err(GuideError::Invalid(first_line(&error)));
        }
        Ok(Guide { matcher })
    }
}

/// The first line of an llguidance error (later lines dump parser state).
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or(message).to_owned()
}

/// One choice's constraint: which tokens may come next, and where the output stands.
pub struct Guide {
    matcher: Matcher,
}

impl std::fmt::Debug for Guide {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guide")
            .field("stopped", &self.matcher.is_stopped())
            .finish()
    }
}

impl Clone for Guide {
    /// An independent copy (its own parser state and lexer caches), for another choice.
    fn clone(&self) -> Self {
        Self {
            matcher: self.matcher.deep_clone(),
        }
    }
}

impl Guide {
    /// The tokens allowed next (only EOS once the output is complete).
    pub fn mask(&mut self) -> Result<TokenMask, GuideError> {
        self.matcher
            .compute_mask_or_eos()
            .map(TokenMask)
            .map_err(|e| GuideError::Failed(first_line(&e.to_string())))
    }

    /// Follows a sampled token; `true` once the output is complete (nothing may follow).
    pub fn advance(&mut self, token: u32) -> Result<bool, GuideError> {
        self.matcher
            .consume_token(token)
            .map_err(|e| GuideError::Failed(first_line(&e.to_string())))?;
        Ok(self.matcher.is_stopped())
    }
}

/// The set of ids a constrained choice may sample next.
#[derive(Debug, Clone)]
pub struct TokenMask(SimpleVob);

impl TokenMask {
    pub fn allows(&self, token: u32) -> bool {
        (token as usize) < self.0.len() && self.0.is_allowed(token)
    }

    /// Sets every disallowed logit (and every row entry past the vocabulary) to −∞.
    pub fn apply(&self, logits: &mut [f32]) {
        for (id, l) in logits.iter_mut().enumerate() {
            if !self.allows(id as u32) {
                *l = f32::NEG_INFINITY;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_zero()
    }
}

#[cfg(test)]
mod tests;
