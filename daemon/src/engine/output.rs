//! One choice's output text: streaming detokenisation, with text that could still begin a stop
//! string held back, and the sampled tokens kept until the text they produced is released (so
//! logprobs line up with text).

use std::sync::Arc;

use super::stop::StopMatcher;
use crate::model::sampling::Sampled;
use crate::tokenizer::{Codec, StreamDecoder, TokenizerError};

/// Text released by one token, and whether a stop string matched.
#[derive(Debug, Default)]
pub(super) struct Released {
    pub text: String,
    pub tokens: Vec<Sampled>,
    /// The stop string that ended the output, if one did (its text and what follows are cut).
    pub stop: Option<String>,
}

impl Released {
    pub fn is_empty(&self) -> bool {
        self.text.is_empty() && self.tokens.is_empty()
    }
}

#[derive(Debug)]
pub(super) struct OutputText {
    decoder: StreamDecoder,
    stops: StopMatcher,
    /// Sampled tokens whose text is not released yet.
    pending: Vec<Sampled>,
}

impl OutputText {
    pub fn new(codec: &Arc<Codec>, skip_special: bool, stops: Vec<String>) -> Self {
        Self {
            decoder: codec.stream_decoder(skip_special),
            stops: StopMatcher::new(stops),
            pending: Vec::new(),
        }
    }

    /// Feeds one sampled token. Tokens are released with the first text that follows them.
    pub fn push(&mut self, sampled: Sampled) -> Result<Released, TokenizerError> {
        let delta = self.decoder.step(sampled.token)?.unwrap_or_default();
        self.pending.push(sampled);
        let text = self.stops.push(&delta);
        let stop = self.stops.stopped().map(str::to_owned);
        if text.is_empty() && stop.is_none() {
            return Ok(Released::default());
        }
        Ok(Released {
            text,
            tokens: std::mem::take(&mut self.pending),
            stop,
        })
    }

    /// The end of the output (not by a stop string): flushes held text and tokens. A stop string
    /// can still match in the flushed text.
    pub fn finish(&mut self) -> Result<Released, TokenizerError> {
        let mut text = match self.decoder.finish()? {
            Some(tail) => self.stops.push(&tail),
            None => String::new(),
        };
        let stop = self.stops.stopped().map(str::to_owned);
        if stop.is_none() {
            text.push_str(&self.stops.flush());
        }
        Ok(Released {
            text,
            tokens: std::mem::take(&mut self.pending),
            stop,
        })
    }
}
