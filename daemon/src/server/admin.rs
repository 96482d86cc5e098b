//! Operational and tokenizer routes: health, readiness, version, models, metrics, tokenize,
//! detokenize, and the JSON 404.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::error::ApiError;
use super::protocol::{DetokenizeRequest, TokenizeRequest};
use super::{AppState, unix_now};

pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    if state.engine.is_alive() {
        StatusCode::OK.into_response()
    } else {
        ApiError::unavailable("the engine thread has stopped").into_response()
    }
}

pub async fn ready(State(state): State<Arc<AppState>>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else {
        ApiError::unavailable("not ready: loading, draining or stopped").into_response()
    }
}

pub async fn version() -> Json<serde_json::Value> {
    Json(json!({"version": env!("CARGO_PKG_VERSION"), "name": "fused-daemon"}))
}

pub async fn models(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let created = state
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(unix_now(), |d| d.as_secs());
    Json(json!({
        "object": "list",
        "data": [{
            "id": state.served_model_name,
            "object": "model",
            "created": created,
            "owned_by": "fusedmodel",
            "max_model_len": state.max_context,
        }]
    }))
}

pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    match state.metrics.render() {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => ApiError::internal(format!("rendering metrics: {e}")).into_response(),
    }
}

pub async fn tokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Json<TokenizeRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body?;
    state.check_model(req.model.as_deref())?;
    let encoded = match (req.prompt, req.messages) {
        (Some(prompt), None) => {
            state
                .tokenizer
                .encode(prompt, req.add_special_tokens, "prompt")
                .await?
        }
        (None, Some(messages)) => {
            let messages = super::tools::chat_messages(messages)?;
            state
                .tokenizer
                .encode_chat(messages, req.add_generation_prompt, None)
                .await?
        }
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of `prompt` and `messages`",
            ));
        }
    };
    let tokens = encoded.ids;
    Ok(Json(
        json!({"count": tokens.len(), "max_model_len": state.max_context, "tokens": tokens}),
    ))
}

pub async fn detokenize(
    State(state): State<Arc<AppState>>,
    body: Result<Json<DetokenizeRequest>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(req) = body?;
    state.check_model(req.model.as_deref())?;
    if let Some(bad) = req
        .tokens
        .iter()
        .find(|&&t| t as usize >= state.codec.vocab_size())
    {
        return Err(ApiError::invalid_param(
            "tokens",
            format!("token id {bad} is outside the vocabulary"),
        ));
    }
    let tokens = req.tokens;
    let prompt = state
        .tokenizer
        .run(move |codec| {
            codec
                .decode(&tokens, false)
                .map_err(|e| ApiError::bad_request(e.to_string()))
        })
        .await?;
    Ok(Json(json!({"prompt": prompt})))
}

pub async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        ..ApiError::bad_request("no such route")
    }
}
