//! One request's state inside the engine: its known tokens (prompt, then generated), sampler,
//! stop rules, event channel and timestamps.

use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::{Event, FinishReason, GenerateRequest};
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

    /// Samples from `logits`, sends the token, and says whether the request is done.
    pub fn deliver(&mut self, logits: &[f32]) -> (Sampled, Delivery) {
        let sampled = self.sampler.sample(logits);
        self.tokens.push(sampled.token);
        if self.events.send(Event::Token(sampled.clone())).is_err() {
            return (sampled, Delivery::Gone);
        }
        let generated = self.generated();
        let outcome = if generated >= self.min_tokens && self.stop_ids.contains(&sampled.token) {
            Delivery::Finished(FinishReason::Stop)
        } else if generated >= self.max_new_tokens {
            Delivery::Finished(FinishReason::Length)
        } else {
            Delivery::Continue
        };
        (sampled, outcome)
    }

    pub fn send(&self, event: Event) {
        let _ = self.events.send(event);
    }
}
