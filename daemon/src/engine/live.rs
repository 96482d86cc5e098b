//! One choice's state inside the engine: its known tokens (prompt, then generated) and, with
//! prefix caching, their chained hashes, sampler, output constraint, output text, timestamps
//! and admission permit — and the one place that
//! decides when it ends: EOS, stop token ids, stop strings, a complete constrained output, max
//! tokens or the context length.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::output::{OutputText, Released};
use super::prefix::PrefixHasher;
use super::{EngineError, Event, FinishReason, GenerateRequest, Permit, StopReason};
use crate::guide::{Guide, TokenMask};
use crate::model::LogitsWanted;
use crate::model::sampling::{Sampled, Sampler};
use crate::sched::PrefixHashes;
use crate::tokenizer::Codec;

/// What the engine knows of the model and tokenizer when it makes a [`LiveRequest`].
pub(super) struct Limits<'a> {
    pub codec: &'a Arc<Codec>,
    pub eos_ids: &'a [u32],
    /// Tokens of context per sequence (prompt plus output).
    pub max_context: usize,
}

/// How a request ended, for the metrics and the request's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    Finished(FinishReason),
    /// The client went away.
    Gone,
}

pub(super) struct LiveRequest {
    pub request_id: Arc<str>,
    /// The request's span on the server, parent of this choice's engine span.
    pub span: tracing::Span,
    /// Which choice of its request this is.
    pub index: usize,
    /// Prompt followed by every generated token.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    sampler: Sampler,
    /// The output constraint; the engine lends it to the mask thread during each forward pass.
    guide: Option<Guide>,
    /// Whether the choice is constrained (its guide may be on loan).
    constrained: bool,
    max_new_tokens: usize,
    min_tokens: usize,
    max_context: usize,
    stop_token_ids: Vec<u32>,
    /// EOS ids, unless the request ignores EOS.
    eos_ids: Vec<u32>,
    output: OutputText,
    events: UnboundedSender<Event>,
    /// This choice's admission place: given back when the engine drops the request, that is when
    /// its generation ends, however fast the client reads.
    _permit: Permit,
    pub arrival: Instant,
    pub first_scheduled: Option<Instant>,
    pub first_token_at: Option<Instant>,
    pub last_token_at: Option<Instant>,
    /// Forward passes that processed part of the prompt (chunked prefill), recomputes included.
    pub prefill_chunks: usize,
    /// Prompt tokens found in the prefix cache when the choice was first scheduled.
    pub cached_tokens: usize,
    /// The chained hashes of `tokens` (shared with the scheduler), extended as tokens come.
    prefix: Option<(PrefixHashes, Arc<PrefixHasher>)>,
}

impl LiveRequest {
    /// Choice `index` of `request`.
    pub fn new(
        request: &GenerateRequest,
        index: usize,
        limits: &Limits<'_>,
        events: UnboundedSender<Event>,
        permit: Permit,
    ) -> Self {
        let mut sampling = request.sampling.clone();
        // Choices of one seeded request differ from each other but stay reproducible.
        sampling.seed = sampling.seed.map(|s| s.wrapping_add(index as u64));
        Self {
            request_id: Arc::from(request.request_id.as_str()),
            span: request.span.clone(),
            index,
            sampler: Sampler::new(sampling, &request.prompt),
            guide: request.guide.clone(),
            constrained: request.guide.is_some(),
            prompt_len: request.prompt.len(),
            tokens: request.prompt.clone(),
            max_new_tokens: request.max_new_tokens,
            min_tokens: request.min_tokens,
            max_context: limits.max_context,
            stop_token_ids: request.stop_token_ids.clone(),
            eos_ids: if request.ignore_eos {
                Vec::new()
            } else {
                limits.eos_ids.to_vec()
            },
            output: OutputText::new(
                limits.codec,
                request.skip_special_tokens,
                request.stop.clone(),
            ),
            events,
            _permit: permit,
            arrival: request.arrival,
            first_scheduled: None,
            first_token_at: None,
            last_token_at: None,
            prefill_chunks: 0,
            cached_tokens: 0,
            prefix: None,
        }
    }

    /// Keeps `hashes` (the prompt's chain) in step with the choice's tokens.
    pub fn track_prefix(&mut self, hashes: PrefixHashes, hasher: Arc<PrefixHasher>) {
        self.prefix = Some((hashes, hasher));
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// What the model must return for this request's next token. A constrained choice needs the
    /// row: its mask applies before the pick (a device argmax would ignore it). A device pick is
    /// among the tokenizer's ids (`Forward::limit_output_ids`).
    pub fn wants(&self) -> LogitsWanted {
        if self.sampler.is_plain_greedy() && !self.constrained {
            LogitsWanted::Greedy
        } else {
            LogitsWanted::Last
        }
    }

    /// The client is gone (its stream was dropped).
    pub fn is_gone(&self) -> bool {
        self.events.is_closed()
    }

    /// Lends the guide out (to compute its next mask beside the forward pass).
    pub fn lend_guide(&mut self) -> Option<Guide> {
        self.guide.take()
    }

    /// Takes the guide back.
    pub fn return_guide(&mut self, guide: Guide) {
        self.guide = Some(guide);
    }

    /// Takes the token the model picked (`Some`) or samples one from the logits row (among the
    /// tokens `mask` allows, for a constrained choice), streams the text it completes, and
    /// decides whether the choice has ended (then its last events are sent). `None` when the
    /// model returned nothing for this request.
    pub fn deliver(
        &mut self,
        picked: Option<u32>,
        logits: Option<&[f32]>,
        mask: Option<TokenMask>,
    ) -> Option<Result<Option<Ending>, EngineError>> {
        let sampled = match (picked, logits) {
            (Some(token), _) => self.sampler.record(token),
            (None, Some(row)) => match (self.constrained, &mask) {
                (false, _) => self.sampler.sample(row),
                (true, Some(mask)) if !mask.is_empty() => {
                    self.sampler.sample_masked(row, Some(mask))
                }
                (true, _) => {
                    let error = "no token is allowed next (the constraint has no continuation)";
                    return Some(Err(EngineError::Guide(std::sync::Arc::new(
                        crate::guide::GuideError::Failed(error.into()),
                    ))));
                }
            },
            (None, None) => return None,
        };
        let complete = match self.guide.as_mut().map(|g| g.advance(sampled.token)) {
            None => false,
            Some(Ok(complete)) => complete,
            Some(Err(error)) => return Some(Err(error.into())),
        };
        Some(self.take(sampled, complete))
    }

    /// Records `sampled`; `complete`: the constrained output is whole (nothing may follow).
    fn take(&mut self, sampled: Sampled, complete: bool) -> Result<Option<Ending>, EngineError> {
        let token = sampled.token;
        self.tokens.push(token);
        if let Some((hashes, hasher)) = &self.prefix {
            hasher.push(hashes, token);
        }
        let released = self.output.push(sampled)?;
        let generated = self.generated();
        let ended = if let Some(stop) = &released.stop {
            Some((FinishReason::Stop, Some(StopReason::Text(stop.clone()))))
        } else if complete && !self.eos_ids.contains(&token) {
            Some((FinishReason::Stop, None))
        } else if generated >= self.min_tokens && self.stop_token_ids.contains(&token) {
            Some((FinishReason::Stop, Some(StopReason::Token(token))))
        } else if generated >= self.min_tokens && self.eos_ids.contains(&token) {
            Some((FinishReason::Stop, None))
        } else if generated >= self.max_new_tokens || self.tokens.len() >= self.max_context {
            Some((FinishReason::Length, None))
        } else {
            None
        };
        let Some((reason, stop_reason)) = ended else {
            return Ok(self.send_output(released).then_some(Ending::Gone));
        };
        let last = if released.stop.is_some() {
            released
        } else {
            let mut tail = self.output.finish()?;
            tail.text.insert_str(0, &released.text);
            tail.tokens.splice(0..0, released.tokens);
            tail
        };
        // A stop string in the flushed tail also ends the output as a stop.
        let (reason, stop_reason) = match &last.stop {
            Some(stop) if stop_reason.is_none() || reason == FinishReason::Length => {
                (FinishReason::Stop, Some(StopReason::Text(stop.clone())))
            }
            _ => (reason, stop_reason),
        };
        let index = self.index;
        let _ = self.events.send(Event::Output {
            index,
            text: last.text,
            tokens: last.tokens,
        });
        let _ = self.events.send(Event::Finished {
            index,
            reason,
            stop_reason,
            completion_tokens: generated,
            cached_tokens: self.cached_tokens,
        });
        Ok(Some(Ending::Finished(reason)))
    }

    /// Sends released output, if any; true if the client is gone.
    fn send_output(&self, released: Released) -> bool {
        if released.is_empty() {
            return self.is_gone();
        }
        self.events
            .send(Event::Output {
                index: self.index,
                text: released.text,
                tokens: released.tokens,
            })
            .is_err()
    }

    /// Ends the choice with an error (the client gets it as its last event).
    pub fn fail(self, error: EngineError) {
        let _ = self.events.send(Event::Failed {
            index: self.index,
            error,
        });
    }
}
