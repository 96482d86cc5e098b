//! `/v1/completions` and `/v1/chat/completions`: validate, admit (503 before any tokenising),
//! tokenise, check the context, then answer as one JSON body or as an SSE stream that always
//! ends with `data: [DONE]`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::generate::{self, ChoiceOutput};
use super::logprobs::{chat_logprobs, completion_logprobs};
use super::protocol::*;
use super::sse::{self, Head, Shape};
use super::tokenize::Encoded;
use super::validate::{GenerationParams, generation_params};
use super::{AppState, RequestId, unix_now};
use crate::engine::Permit;
use crate::tokenizer::ChatMessage;

pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
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
        Prompt::Text(text) => encode(&state, text).await?,
        Prompt::Texts(mut texts) if texts.len() == 1 => encode(&state, texts.remove(0)).await?,
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
    respond(
        state,
        &request_id,
        permit,
        prompt_ids,
        params,
        Shape::Completion,
    )
    .await
}

pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
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
    let encoded = state.tokenizer.encode_chat(messages, true).await?;
    let prompt_ids = count_tokens(&state, encoded);
    respond(state, &request_id, permit, prompt_ids, params, Shape::Chat).await
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
        state.metrics.rejected(e.metric_label());
        ApiError::from(e)
    })
}

async fn encode(state: &AppState, text: String) -> Result<Vec<u32>, ApiError> {
    let encoded = state.tokenizer.encode(text, true, "prompt").await?;
    Ok(count_tokens(state, encoded))
}

/// Counts the prompt for the vocabulary patch's token-reduction series; returns its ids.
fn count_tokens(state: &AppState, encoded: Encoded) -> Vec<u32> {
    if state.codec.patch().is_some() {
        state
            .metrics
            .vocab_base_tokens
            .inc_by(encoded.base_len as u64);
        state
            .metrics
            .vocab_patched_tokens
            .inc_by(encoded.ids.len() as u64);
    }
    encoded.ids
}

async fn respond(
    state: Arc<AppState>,
    request_id: &RequestId,
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
    let request = generate::engine_request(&request_id.0, prompt, &params, max_new_tokens);
    // Admission is decided here, before any response starts: a refusal is a plain 4xx/5xx.
    let stream = state.engine.submit(permit, request).await.map_err(|e| {
        state.metrics.rejected(e.metric_label());
        ApiError::from(e)
    })?;
    let head = Head {
        id: format!(
            "{}-{}",
            if shape == Shape::Chat {
                "chatcmpl"
            } else {
                "cmpl"
            },
            request_id.0
        ),
        created: unix_now(),
        model: state.served_model_name.clone(),
    };
    if params.stream {
        return Ok(sse::response(
            state,
            head,
            shape,
            params,
            prompt_tokens,
            stream,
        ));
    }
    let outputs = generate::collect(stream, params.n).await?;
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
                    stop_reason: o.stop_reason.map(Into::into),
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
                    stop_reason: o.stop_reason.map(Into::into),
                })
                .collect(),
            usage,
        })
        .into_response(),
    })
}
