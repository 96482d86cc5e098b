//! `/v1/completions` and `/v1/chat/completions`: validate (fields, sampling, output constraint,
//! tools), admit (503 before any tokenising), tokenise and compile the constraint, check the
//! context, then answer as one JSON body or as an SSE stream that always ends with
//! `data: [DONE]`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::fields::{Endpoint, check_other_fields};
use super::generate::{self, ChoiceOutput};
use super::logprobs::{chat_logprobs, completion_logprobs};
use super::protocol::*;
use super::sse::{self, Head, Reply, Shape};
use super::structured::guide_spec;
use super::tokenize::Encoded;
use super::tools::{self, ToolPlan};
use super::validate::{GenerationParams, generation_params};
use super::{AppState, RequestId, unix_now};
use crate::engine::Permit;
use crate::guide::{Guide, GuideSpec};

pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(request_id): Extension<RequestId>,
    body: Result<Json<CompletionRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    state.check_model(req.model.as_deref())?;
    check_other_fields(Endpoint::Completions, &req.other)?;
    if req.echo && req.logprobs.is_some() {
        return Err(ApiError::invalid_param(
            "echo",
            "`echo` with `logprobs` (the prompt's log-probabilities) is not supported",
        ));
    }
    let params = generation_params(
        req.sampling,
        req.logprobs,
        Some(16),
        state.codec.vocab_size(),
    )?;
    let constraint = guide_spec(&req.structured)?;
    let prompt = req
        .prompt
        .ok_or_else(|| ApiError::invalid_param("prompt", "`prompt` is required"))?;
    let permit = admit(&state, params.n)?;
    let (prompt_ids, prompt_text) = match prompt {
        Prompt::Text(text) => (encode(&state, text.clone()).await?, Some(text)),
        Prompt::Texts(mut texts) if texts.len() == 1 => {
            let text = texts.remove(0);
            (encode(&state, text.clone()).await?, Some(text))
        }
        Prompt::Tokens(ids) => (ids, None),
        Prompt::TokenLists(mut lists) if lists.len() == 1 => (lists.remove(0), None),
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
    let echo = match (req.echo, prompt_text) {
        (false, _) => None,
        (true, Some(text)) => Some(text),
        (true, None) => Some(
            state
                .codec
                .decode(&prompt_ids, false)
                .map_err(|e| ApiError::invalid_param("prompt", e.to_string()))?,
        ),
    };
    let guide = compile(&state, constraint).await?;
    let reply = Reply {
        shape: Shape::Completion,
        echo,
        tools: None,
    };
    respond(state, &request_id, permit, prompt_ids, params, guide, reply).await
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
    check_other_fields(Endpoint::Chat, &req.other)?;
    let params = generation_params(req.sampling, logprobs, None, state.codec.vocab_size())?;
    let plan =
        ToolPlan::from_request(req.tools, req.tool_choice.as_ref(), req.parallel_tool_calls)?;
    let mut constraint = guide_spec(&req.structured)?;
    if let Some(forced) = plan.as_ref().and_then(ToolPlan::guide_spec) {
        if let Some((_, field)) = &constraint {
            return Err(ApiError::invalid_param(
                field,
                format!("`{field}` cannot be combined with a `tool_choice` that forces a call"),
            ));
        }
        constraint = Some((forced, "tools".to_owned()));
    }
    let messages = tools::chat_messages(req.messages.unwrap_or_default())?;
    // vLLM's chat `echo`: the reply repeats the last message when it is the assistant's.
    let echo = req.echo.then(|| {
        (messages.last())
            .filter(|m| m.role == "assistant")
            .map(|m| m.content.clone())
            .unwrap_or_default()
    });
    let permit = admit(&state, params.n)?;
    let (messages, template_tools) = tools::prepare(
        messages,
        plan.as_ref(),
        state.codec.chat_template_reads_tools(),
    );
    let encoded = state
        .tokenizer
        .encode_chat(messages, true, template_tools)
        .await?;
    let prompt_ids = count_tokens(&state, encoded);
    let guide = compile(&state, constraint).await?;
    let reply = Reply {
        shape: Shape::Chat,
        echo,
        tools: plan,
    };
    respond(state, &request_id, permit, prompt_ids, params, guide, reply).await
}

/// Compiles the request's constraint (on the blocking pool); errors name its field.
async fn compile(
    state: &AppState,
    constraint: Option<(GuideSpec, String)>,
) -> Result<Option<Guide>, ApiError> {
    match constraint {
        None => Ok(None),
        Some((spec, field)) => Ok(Some(state.tokenizer.compile_guide(spec, field).await?)),
    }
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
    guide: Option<Guide>,
    reply: Reply,
) -> Result<Response, ApiError> {
    let shape = reply.shape;
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
    let request = generate::engine_request(&request_id.0, prompt, &params, max_new_tokens, guide);
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
            reply,
            params,
            prompt_tokens,
            stream,
        ));
    }
    let echo = reply.echo.unwrap_or_default();
    let outputs = generate::collect(stream, params.n).await?;
    let completion_tokens = outputs.iter().map(|o| o.completion_tokens).sum();
    let cached_tokens = outputs.iter().map(|o| o.cached_tokens).max();
    let usage =
        Usage::new(prompt_tokens, completion_tokens).with_cached(cached_tokens.unwrap_or(0));
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
                        .map(|_| completion_logprobs(&state, &o.tokens, echo.len())),
                    text: format!("{echo}{}", o.text),
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
                .map(|(index, o): (usize, ChoiceOutput)| {
                    let text = format!("{echo}{}", o.text);
                    let (content, tool_calls) = match &reply.tools {
                        Some(plan) => plan.parse(&text),
                        None => (Some(text), Vec::new()),
                    };
                    ChatChoice {
                        index,
                        logprobs: params
                            .sampling
                            .logprobs
                            .map(|_| chat_logprobs(&state, &o.tokens)),
                        finish_reason: match tool_calls.is_empty() {
                            true => o.finish_reason,
                            false => Some("tool_calls"),
                        },
                        message: ChatMessageOut {
                            role: "assistant",
                            content,
                            tool_calls,
                        },
                        stop_reason: o.stop_reason.map(Into::into),
                    }
                })
                .collect(),
            usage,
        })
        .into_response(),
    })
}
