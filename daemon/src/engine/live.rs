//! One request's state inside the engine: its known tokens (prompt, then generated), sampler,
//! stop rules, event channel and timestamps.

use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::{Event, FinishReason, GenerateRequest};
use crate::model::LogitsWanted;
use crate::model::sampling::{Sampled, Sampler};

pub(super) struct LiveRequest {
    /// Prompt followed by every generated token.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    sampler: Sampler,
    max_new_tokens: usize,
    min_tokens: usize,
    stop_ids: Vec<u32>,
    events: UnboundedSender<Event>,
    pub arrival: Instant,
    pub first_scheduled: Option<Instant>,
    pub last_token_at: Option<Instant>,
}

/// What happened when a sampled token was delivered.
pub(super) enum Delivery {
    Continue,
    Finished(FinishReason),
    /// The client is gone: cancel the request.
    Gone,
}

impl LiveRequest {
    pub fn new(request: GenerateRequest, eos_ids: &[u32], events: UnboundedSender<Event>) -> Self {
        let mut stop_ids = request.stop_token_ids;
        if !request.ignore_eos {
            stop_ids.extend_from_slice(eos_ids);
        }
        Self {
            sampler: Sampler::new(request.sampling, &request.prompt),
            prompt_len: request.prompt.len(),
            tokens: request.prompt,
            max_new_tokens: request.max_new_tokens,
            min_tokens: request.min_tokens,
            stop_ids,
            events,
            arrival: request.arrival,
            first_scheduled: None,
            last_token_at: None,
        }
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// What the model must return for this request's next token.
    pub fn wants(&self) -> LogitsWanted {
        if self.sampler.is_plain_greedy() {
            LogitsWanted::Greedy
        } else {
            LogitsWanted::Last
        }
    }

    /// Takes the token the model picked (`Some`) or samples one from the logits row, sends it,
    /// and says whether the request is done.
    pub fn deliver(&mut self, picked: Option<u32>, logits: Option<&[f32]>) -> Option<Delivery> {
        let sampled = match (picked, logits) {
            (Some(token), _) => self.sampler.record(token),
            (None, Some(row)) => self.sampler.sample(row),
            (None, None) => return None,
        };
        Some(self.send_token(sampled))
    }

    fn send_token(&mut self, sampled: Sampled) -> Delivery {
        let token = sampled.token;
        self.tokens.push(token);
        if self.events.send(Event::Token(sampled)).is_err() {
            return Delivery::Gone;
        }
        let generated = self.generated();
        if generated >= self.min_tokens && self.stop_ids.contains(&token) {
            Delivery::Finished(FinishReason::Stop)
        } else if generated >= self.max_new_tokens {
            Delivery::Finished(FinishReason::Length)
        } else {
            Delivery::Continue
        }
    }

    pub fn send(&self, event: Event) {
        let _ = self.events.send(event);
    }
}
