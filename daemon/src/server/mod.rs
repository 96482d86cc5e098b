//! The OpenAI-compatible HTTP server (axum): routes, shared state, API-key check, and graceful
//! drain on shutdown.
//!
//! Must not: run the model or hold KV (it talks to the engine thread through its handle), or
//! block the runtime.

mod admin;
pub mod error;
mod fields;
mod generate;
pub mod hand_off;
pub mod listener;
mod logprobs;
mod openai;
pub mod protocol;
mod request_id;
mod sse;
pub mod startup;
mod structured;
pub mod tokenize;
mod tools;
pub mod validate;

pub use request_id::{REQUEST_ID_HEADER, RequestId};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use sha2::{Digest, Sha256};

use crate::engine::EngineHandle;
use crate::metrics::Metrics;
use crate::tokenizer::Codec;
use error::ApiError;

/// Request bodies larger than this are refused with 413 while they are read, before any
/// parsing (about a million tokens of prompt text; vLLM sets no limit).
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// What every handler shares.
pub struct AppState {
    pub engine: EngineHandle,
    pub codec: Arc<Codec>,
    /// Tokenizer work runs here, off the async runtime.
    pub tokenizer: tokenize::TokenizerPool,
    pub metrics: Arc<Metrics>,
    pub served_model_name: String,
    /// Tokens of context per sequence (prompt + generated).
    pub max_context: usize,
    pub api_key: Option<ApiKey>,
    /// `/metrics` sits behind the API key too.
    pub protect_metrics: bool,
    /// Weights loaded and KV reserved, and not draining.
    pub ready: AtomicBool,
    pub started: std::time::SystemTime,
}

impl AppState {
    /// Loaded, not draining, and the engine's iterations succeed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.engine.is_healthy()
    }

    /// 404 unless `model` is absent or names the served model.
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.served_model_name => Err(ApiError::model_not_found(m)),
            _ => Ok(()),
        }
    }
}

/// All routes. The OpenAI and tokenizer routes sit behind the API key when one is set, and
/// `/metrics` with `protect_metrics`; the probes and `/version` are always open.
pub fn router(state: Arc<AppState>) -> Router {
    let mut api = Router::new()
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(admin::models))
        .route("/tokenize", post(admin::tokenize))
        .route("/detokenize", post(admin::detokenize));
    let mut open = Router::new()
        .route("/health", get(admin::health))
        .route("/ready", get(admin::ready))
        .route("/version", get(admin::version));
    if state.protect_metrics {
        api = api.route("/metrics", get(admin::metrics));
    } else {
        open = open.route("/metrics", get(admin::metrics));
    }
    let api = api.route_layer(middleware::from_fn_with_state(
        state.clone(),
        require_api_key,
    ));
    Router::new()
        .merge(api)
        .merge(open)
        .route_layer(middleware::from_fn_with_state(state.clone(), count_http))
        .fallback(admin::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(request_id::trace))
        .with_state(state)
}

/// `http_requests_total` and `http_request_duration_seconds` by route template, as vLLM's HTTP
/// instrumentation counts them.
async fn count_http(
    State(state): State<Arc<AppState>>,
    path: MatchedPath,
    request: Request,
    next: Next,
) -> Response {
    let method = request.method().clone();
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state.metrics.observe_http(
        path.as_str(),
        method.as_str(),
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn require_api_key(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(key) = &state.api_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|given| key.matches(given)) {
            return Err(ApiError::unauthorized());
        }
    }
    Ok(next.run(request).await)
}

/// The API key, kept as its SHA-256 digest and compared in constant time, so the time a wrong
/// key takes to refuse says nothing about how much of it was right.
pub struct ApiKey([u8; 32]);

impl ApiKey {
    pub fn new(key: &str) -> Self {
        ApiKey(Sha256::digest(key.as_bytes()).into())
    }

    pub fn matches(&self, given: &str) -> bool {
        let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        self.0
            .iter()
            .zip(given)
            .fold(0u8, |differ, (a, b)| differ | (a ^ b))
            == 0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Seconds since the Unix epoch, for `created` fields.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::ApiKey;

    #[test]
    fn the_api_key_matches_itself_only() {
        let key = ApiKey::new("sekret");
        assert!(key.matches("sekret"));
        for wrong in ["", "sekre", "sekret ", "Sekret", "sekretsekret"] {
            assert!(!key.matches(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
    }
}
