//! `/v1/completions` and `/v1/chat/completions`: validate, admit (503 before any tokenising),
//! tokenise, check the context, then answer as one JSON body or as an SSE stream that always
//! ends with `data: [DONE]`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::error::ApiError;
use super::generate::{self, ChoiceEvent, ChoiceOutput};
use super::protocol::*;
use super::validate::{GenerationParams, generation_params};
use super::{AppState, admin, new_id, unix_now};
use crate::engine::{AdmissionError, Permit};
use crate::model::sampling::Sampled;
use crate::tokenizer::ChatMessage;

/// Which endpoint a response is shaped for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Completion,
    Chat,
}

pub async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    state.check_model(req.model.as_deref())?;
    let params = generation_params(
        req.sampling,
        req.logprobs,
        Some(16),
        state.codec.vocab_size(),
    )?;
    let prompt = req
        .prompt
        .ok_or_else(|| ApiError::invalid_param("prompt", "`prompt` is required"))?;
    let permit = admit(&state, params.n)?;
    let prompt_ids = match prompt {
        Prompt::Text(text) => encode(&state, &text, true)?,
        Prompt::Texts(texts) if texts.len() == 1 => encode(&state, &texts[0], true)?,
        Prompt::Tokens(ids) => ids,
        Prompt::TokenLists(mut lists) if lists.len() == 1 => lists.remove(0),
        Prompt::Texts(_) | Prompt::TokenLists(_) => {
            return Err(ApiError::invalid_param(
                "prompt",
                "send one prompt per request (batched prompts are not supported)",
            ));
        }
    };
    if let Some(bad) = prompt_ids
        .iter()
        .find(|&&t| t as usize >= state.codec.vocab_size())
    {
        return Err(ApiError::invalid_param(
            "prompt",
            format!("token id {bad} is outside the vocabulary"),
        ));
    }
    respond(state, permit, prompt_ids, params, Shape::Completion).await
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Json<ChatRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    state.check_model(req.model.as_deref())?;
    let logprobs = match (req.logprobs, req.top_logprobs) {
        (true, top) => Some(top.unwrap_or(0)),
        (false, Some(_)) => {
            return Err(ApiError::invalid_param(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
        (false, None) => None,
    };
    let params = generation_params(req.sampling, logprobs, None, state.codec.vocab_size())?;
    let messages = chat_messages(req.messages.unwrap_or_default())?;
    let permit = admit(&state, params.n)?;
    let text = admin::render_chat(&state, &messages, true)?;
    let prompt_ids = encode(&state, &text, false)?;
    respond(state, permit, prompt_ids, params, Shape::Chat).await
}

/// Checks the messages and flattens text parts; an empty list is a 400 naming `messages`.
pub fn chat_messages(messages: Vec<ChatMessageIn>) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid_param(
            "messages",
            "`messages` must not be empty",
        ));
    }
    messages
        .into_iter()
        .map(|m| {
            if !matches!(
                m.role.as_str(),
                "system" | "user" | "assistant" | "tool" | "developer"
            ) {
                return Err(ApiError::invalid_param(
                    "messages",
                    format!("unknown role `{}`", m.role),
                ));
            }
            let content = match m.content {
                None => String::new(),
                Some(MessageContent::Text(t)) => t,
                Some(MessageContent::Parts(parts)) => {
                    if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                        return Err(ApiError::invalid_param(
                            "messages",
                            format!("content part `{}` is not supported", p.kind),
                        ));
                    }
                    parts.into_iter().filter_map(|p| p.text).collect()
                }
            };
            Ok(ChatMessage::new(m.role, content))
        })
        .collect()
}

fn admit(state: &AppState, n: usize) -> Result<Permit, ApiError> {
    state.engine.admit(n).map_err(|e| {
        state.metrics.rejected(match e {
            AdmissionError::Full(_) => "queue_full",
            AdmissionError::Draining => "draining",
            AdmissionError::Stopped => "stopped",
        });
        match e {
            AdmissionError::Full(_) => ApiError::overloaded(1),
            AdmissionError::Draining | AdmissionError::Stopped => {
                ApiError::unavailable(e.to_string())
            }
        }
    })
}

fn encode(state: &AppState, text: &str, add_special: bool) -> Result<Vec<u32>, ApiError> {
    let ids = state
        .codec
        .encode(text, add_special)
        .map_err(|e| ApiError::invalid_param("prompt", e.to_string()))?;
    if state.codec.patch().is_some()
        && let Ok(base) = state.codec.encode_base(text, add_special)
    {
        state.metrics.vocab_base_tokens.inc_by(base.len() as u64);
        state.metrics.vocab_patched_tokens.inc_by(ids.len() as u64);
    }
    Ok(ids)
}

async fn respond(
    state: Arc<AppState>,
    permit: Permit,
    prompt: Vec<u32>,
    params: GenerationParams,
    shape: Shape,
) -> Result<Response, ApiError> {
    if prompt.is_empty() {
        return Err(ApiError::invalid_param("prompt", "the prompt is empty"));
    }
    let room = state.max_context.saturating_sub(prompt.len());
    let max_new_tokens = match params.max_tokens {
        Some(m) if m > room => {
            return Err(ApiError::context_length(format!(
                "This model's maximum context length is {} tokens. However, you requested {} tokens ({} in the prompt, {m} for the completion).",
                state.max_context,
                prompt.len() + m,
                prompt.len()
            )));
        }
        Some(m) => m,
        None if room == 0 => {
            return Err(ApiError::context_length(format!(
                "This model's maximum context length is {} tokens; the prompt has {}.",
                state.max_context,
                prompt.len()
            )));
        }
        None => room,
    };
    let prompt_tokens = prompt.len();
    let events = generate::start(&state, permit.split(), prompt, &params, max_new_tokens);
    let head = Head {
        id: new_id(if shape == Shape::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        }),
        created: unix_now(),
        model: state.served_model_name.clone(),
    };
    if params.stream {
        let (tx, rx) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
        tokio::spawn(stream_events(
            state,
            head,
            shape,
            params,
            prompt_tokens,
            events,
            tx,
        ));
        return Ok(Sse::new(ReceiverStream::new(rx)).into_response());
    }
    let outputs = generate::collect(events, params.n).await?;
    let completion_tokens = outputs.iter().map(|o| o.completion_tokens).sum();
    let usage = Usage::new(prompt_tokens, completion_tokens);
    Ok(match shape {
        Shape::Completion => Json(CompletionResponse {
            id: head.id,
            object: "text_completion",
            created: head.created,
            model: head.model,
            choices: outputs
                .into_iter()
                .enumerate()
                .map(|(index, o)| CompletionChoice {
                    index,
                    logprobs: params
                        .sampling
                        .logprobs
                        .map(|_| completion_logprobs(&state, &o.tokens, 0)),
                    text: o.text,
                    finish_reason: o.finish_reason,
                })
                .collect(),
            usage: Some(usage),
        })
        .into_response(),
        Shape::Chat => Json(ChatResponse {
            id: head.id,
            object: "chat.completion",
            created: head.created,
            model: head.model,
            choices: outputs
                .into_iter()
                .enumerate()
                .map(|(index, o): (usize, ChoiceOutput)| ChatChoice {
                    index,
                    logprobs: params
                        .sampling
                        .logprobs
                        .map(|_| chat_logprobs(&state, &o.tokens)),
                    message: ChatMessageOut {
                        role: "assistant",
                        content: o.text,
                    },
                    finish_reason: o.finish_reason,
                })
                .collect(),
            usage,
        })
        .into_response(),
    })
}

/// The fields every chunk of one response repeats.
struct Head {
    id: String,
    created: u64,
    model: String,
}

async fn stream_events(
    state: Arc<AppState>,
    head: Head,
    shape: Shape,
    params: GenerationParams,
    prompt_tokens: usize,
    mut events: mpsc::Receiver<ChoiceEvent>,
    tx: mpsc::Sender<Result<SseEvent, Infallible>>,
) {
    let send = |value: serde_json::Value| {
        let tx = tx.clone();
        async move {
            tx.send(Ok(SseEvent::default().data(value.to_string())))
                .await
                .is_ok()
        }
    };
    let chunk = |choices: serde_json::Value, usage: Option<Usage>| {
        let object = if shape == Shape::Chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let mut value = serde_json::json!({"id": head.id, "object": object, "created": head.created, "model": head.model, "choices": choices});
        if let Some(usage) = usage {
            value["usage"] = serde_json::json!(usage);
        }
        value
    };
    if shape == Shape::Chat {
        for index in 0..params.n {
            let first = serde_json::json!([{"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}]);
            if !send(chunk(first, None)).await {
                return;
            }
        }
    }
    let mut offsets = vec![0usize; params.n];
    let (mut done, mut completion_tokens) = (0, 0);
    while done < params.n {
        let Some(event) = events.recv().await else {
            break;
        };
        let choice = match event {
            ChoiceEvent::Text {
                index,
                text,
                tokens,
            } => {
                let logprobs = params.sampling.logprobs.map(|_| match shape {
                    Shape::Completion => {
                        serde_json::json!(completion_logprobs(&state, &tokens, offsets[index]))
                    }
                    Shape::Chat => serde_json::json!(chat_logprobs(&state, &tokens)),
                });
                offsets[index] += text.len();
                match shape {
                    Shape::Completion => {
                        serde_json::json!({"index": index, "text": text, "logprobs": logprobs, "finish_reason": null})
                    }
                    Shape::Chat => {
                        serde_json::json!({"index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": null})
                    }
                }
            }
            ChoiceEvent::Done {
                index,
                reason,
                completion_tokens: tokens,
            } => {
                done += 1;
                completion_tokens += tokens;
                match shape {
                    Shape::Completion => {
                        serde_json::json!({"index": index, "text": "", "logprobs": null, "finish_reason": reason})
                    }
                    Shape::Chat => {
                        serde_json::json!({"index": index, "delta": {}, "logprobs": null, "finish_reason": reason})
                    }
                }
            }
            ChoiceEvent::Error { error } => {
                let _ = send(error.body()).await;
                break;
            }
        };
        if !send(chunk(serde_json::json!([choice]), None)).await {
            return;
        }
    }
    if done == params.n && params.include_usage {
        let usage = Usage::new(prompt_tokens, completion_tokens);
        if !send(chunk(serde_json::json!([]), Some(usage))).await {
            return;
        }
    }
    let _ = tx.send(Ok(SseEvent::default().data("[DONE]"))).await;
}

fn token_text(state: &AppState, id: u32) -> String {
    state.codec.decode(&[id], false).unwrap_or_default()
}

fn completion_logprobs(
    state: &AppState,
    tokens: &[Sampled],
    start_offset: usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut offset = start_offset;
    for t in tokens {
        let text = token_text(state, t.token);
        out.text_offset.push(offset);
        offset += text.len();
        out.tokens.push(text);
        out.token_logprobs.push(t.logprob.unwrap_or(0.0));
        out.top_logprobs.push(
            t.top
                .iter()
                .map(|&(id, lp)| (token_text(state, id), lp))
                .collect(),
        );
    }
    out
}

fn chat_logprobs(state: &AppState, tokens: &[Sampled]) -> ChatLogprobs {
    let content = tokens
        .iter()
        .map(|t| {
            let token = token_text(state, t.token);
            ChatTokenLogprob {
                bytes: token.as_bytes().to_vec(),
                token,
                logprob: t.logprob.unwrap_or(0.0),
                top_logprobs: t
                    .top
                    .iter()
                    .map(|&(id, logprob)| {
                        let token = token_text(state, id);
                        TopLogprob {
                            bytes: token.as_bytes().to_vec(),
                            token,
                            logprob,
                        }
                    })
                    .collect(),
            }
        })
        .collect();
    ChatLogprobs { content }
}
