//! Running one validated request's choices through the engine and turning token events into
//! text: streaming detokenisation, stop strings held back, logprobs, finish reasons, usage.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::error::ApiError;
use super::validate::GenerationParams;
use crate::engine::{Event, GenerateRequest, Permit, RequestStream};
use crate::model::sampling::Sampled;
use crate::tokenizer::Codec;

use super::AppState;
use super::stop::StopMatcher;

/// One piece of a choice's output as it is produced.
#[derive(Debug, Clone)]
pub enum ChoiceEvent {
    /// New text, with the tokens that completed it (for logprobs).
    Text {
        index: usize,
        text: String,
        tokens: Vec<Sampled>,
    },
    /// The choice ended.
    Done {
        index: usize,
        reason: &'static str,
        completion_tokens: usize,
    },
    /// The engine failed the choice.
    Error { error: ApiError },
}

/// Starts every choice of a request; events of all choices arrive on the returned channel in
/// the order they are produced. Dropping the receiver cancels every choice in the engine.
pub fn start(
    state: &Arc<AppState>,
    permits: Vec<Permit>,
    prompt: Vec<u32>,
    params: &GenerationParams,
    max_new_tokens: usize,
) -> mpsc::Receiver<ChoiceEvent> {
    let (tx, rx) = mpsc::channel(64);
    let arrival = std::time::Instant::now();
    for (index, permit) in permits.into_iter().enumerate() {
        let mut sampling = params.sampling.clone();
        // Choices of one seeded request differ from each other but stay reproducible.
        sampling.seed = sampling.seed.map(|s| s.wrapping_add(index as u64));
        let request = GenerateRequest {
            prompt: prompt.clone(),
            sampling,
            max_new_tokens,
            min_tokens: params.min_tokens,
            stop_token_ids: params.stop_token_ids.clone(),
            ignore_eos: params.ignore_eos,
            arrival,
        };
        let stream = state.engine.submit(permit, request);
        let codec = state.codec.clone();
        let stops = StopMatcher::new(params.stop.clone());
        let skip_special = params.skip_special_tokens;
        tokio::spawn(run_choice(
            index,
            stream,
            codec,
            stops,
            skip_special,
            tx.clone(),
        ));
    }
    rx
}

async fn run_choice(
    index: usize,
    mut stream: RequestStream,
    codec: Arc<Codec>,
    mut stops: StopMatcher,
    skip_special: bool,
    tx: mpsc::Sender<ChoiceEvent>,
) {
    let mut decoder = codec.stream_decoder(skip_special);
    let mut generated = 0;
    let mut pending_tokens = Vec::new();
    let reason = loop {
        let event = tokio::select! {
            event = stream.next() => event,
            // The client went away: stop (dropping the stream cancels in the engine).
            () = tx.closed() => return,
        };
        match event {
            Some(Event::Token(sampled)) => {
                generated += 1;
                let delta = match decoder.step(sampled.token) {
                    Ok(delta) => delta.unwrap_or_default(),
                    Err(e) => {
                        let _ = tx
                            .send(ChoiceEvent::Error {
                                error: ApiError::internal(e.to_string()),
                            })
                            .await;
                        return;
                    }
                };
                pending_tokens.push(sampled);
                let text = stops.push(&delta);
                if !text.is_empty() || stops.stopped() {
                    let tokens = std::mem::take(&mut pending_tokens);
                    if tx
                        .send(ChoiceEvent::Text {
                            index,
                            text,
                            tokens,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                if stops.stopped() {
                    break "stop";
                }
            }
            Some(Event::Finished(reason)) => {
                let mut tail = decoder
                    .finish()
                    .ok()
                    .flatten()
                    .map(|t| stops.push(&t))
                    .unwrap_or_default();
                if !stops.stopped() {
                    tail.push_str(&stops.flush());
                }
                if !tail.is_empty() || !pending_tokens.is_empty() {
                    let tokens = std::mem::take(&mut pending_tokens);
                    let _ = tx
                        .send(ChoiceEvent::Text {
                            index,
                            text: tail,
                            tokens,
                        })
                        .await;
                }
                break if stops.stopped() {
                    "stop"
                } else {
                    reason.as_str()
                };
            }
            Some(Event::Failed {
                message,
                overloaded,
            }) => {
                let error = if overloaded {
                    ApiError::overloaded(1)
                } else {
                    ApiError::internal(message)
                };
                let _ = tx.send(ChoiceEvent::Error { error }).await;
                return;
            }
            None => {
                let _ = tx
                    .send(ChoiceEvent::Error {
                        error: ApiError::internal("the engine stopped"),
                    })
                    .await;
                return;
            }
        }
    };
    let _ = tx
        .send(ChoiceEvent::Done {
            index,
            reason,
            completion_tokens: generated,
        })
        .await;
}

/// A whole choice, for non-streaming responses.
#[derive(Debug, Clone, Default)]
pub struct ChoiceOutput {
    pub text: String,
    pub tokens: Vec<Sampled>,
    pub finish_reason: Option<&'static str>,
    pub completion_tokens: usize,
}

/// Runs every choice to the end and gathers them, in choice order.
pub async fn collect(
    mut events: mpsc::Receiver<ChoiceEvent>,
    n: usize,
) -> Result<Vec<ChoiceOutput>, ApiError> {
    let mut outputs = vec![ChoiceOutput::default(); n];
    let mut done = 0;
    while done < n {
        match events.recv().await {
            Some(ChoiceEvent::Text {
                index,
                text,
                tokens,
            }) => {
                outputs[index].text.push_str(&text);
                outputs[index].tokens.extend(tokens);
            }
            Some(ChoiceEvent::Done {
                index,
                reason,
                completion_tokens,
            }) => {
                outputs[index].finish_reason = Some(reason);
                outputs[index].completion_tokens = completion_tokens;
                done += 1;
            }
            Some(ChoiceEvent::Error { error }) => return Err(error),
            None => return Err(ApiError::internal("generation ended without a result")),
        }
    }
    Ok(outputs)
}
