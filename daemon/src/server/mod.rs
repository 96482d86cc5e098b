//! The OpenAI-compatible HTTP server (axum): routes, shared state, API-key check, and graceful
//! drain on shutdown.
//!
//! Must not: run the model or hold KV (it talks to the engine thread through its handle), or
//! block the runtime.

mod admin;
pub mod error;
mod generate;
pub mod hand_off;
mod openai;
pub mod protocol;
mod stop;
pub mod validate;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

use crate::engine::EngineHandle;
use crate::metrics::Metrics;
use crate::tokenizer::Codec;
use error::ApiError;

/// What every handler shares.
pub struct AppState {
    pub engine: EngineHandle,
    pub codec: Arc<Codec>,
    pub metrics: Arc<Metrics>,
    pub served_model_name: String,
    /// Tokens of context per sequence (prompt + generated).
    pub max_context: usize,
    pub api_key: Option<String>,
    /// Weights loaded and KV reserved, and not draining.
    pub ready: AtomicBool,
    pub started: std::time::SystemTime,
}

impl AppState {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.engine.is_alive()
    }

    /// 404 unless `model` is absent or names the served model.
    fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.served_model_name => Err(ApiError::model_not_found(m)),
            _ => Ok(()),
        }
    }
}

/// All routes. The OpenAI and tokenizer routes sit behind the API key when one is set.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/completions", post(openai::completions))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/models", get(admin::models))
        .route("/tokenize", post(admin::tokenize))
        .route("/detokenize", post(admin::detokenize))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_api_key,
        ));
    Router::new()
        .merge(api)
        .route("/health", get(admin::health))
        .route("/ready", get(admin::ready))
        .route("/version", get(admin::version))
        .route("/metrics", get(admin::metrics))
        .fallback(admin::not_found)
        .with_state(state)
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
        if given != Some(key.as_str()) {
            return Err(ApiError::unauthorized());
        }
    }
    Ok(next.run(request).await)
}

/// Seconds since the Unix epoch, for `created` fields.
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A fresh id with an OpenAI-like prefix.
fn new_id(prefix: &str) -> String {
    format!("{prefix}-{:032x}", rand::random::<u128>())
}
