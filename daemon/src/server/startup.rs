//! The router from the moment the port is bound: while the daemon loads, `/health` answers 200
//! (the process is alive), `/ready` 503 with the start-up step it is in, `/version` its version,
//! and every other route 503 + `Retry-After` naming that step; once the engine runs, every
//! request goes to the full router.
//!
//! Must not: load anything or know the engine; serve.rs reports the steps and hands over the
//! full router.

use std::sync::{Arc, Mutex, OnceLock};

use axum::Json;
use axum::Router;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tower::ServiceExt;

use super::error::ApiError;

/// Seconds a client is asked to wait before retrying while the daemon starts.
const RETRY_AFTER_S: u64 = 5;

/// Where start-up is, shared between the loader and the router.
#[derive(Debug, Default)]
pub struct Startup {
    step: Mutex<String>,
    serving: OnceLock<Router>,
}

impl Startup {
    pub fn new(step: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            step: Mutex::new(step.into()),
            serving: OnceLock::new(),
        })
    }

    /// The step start-up is in now (shown by `/ready` and in 503s).
    pub fn set_step(&self, step: impl Into<String>) {
        if let Ok(mut current) = self.step.lock() {
            *current = step.into();
        }
    }

    pub fn step(&self) -> String {
        self.step
            .lock()
            .map_or_else(|_| "starting".to_owned(), |s| s.clone())
    }

    /// From now on every request goes to `router`.
    pub fn serve(&self, router: Router) {
        let _ = self.serving.set(router);
    }

    pub fn is_serving(&self) -> bool {
        self.serving.get().is_some()
    }

    async fn handle(&self, request: Request) -> Response {
        if let Some(router) = self.serving.get() {
            return match router.clone().oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
        }
        let step = self.step();
        match request.uri().path() {
            "/health" => StatusCode::OK.into_response(),
            "/ready" => (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, RETRY_AFTER_S.to_string())],
                Json(json!({"status": "loading", "reason": step})),
            )
                .into_response(),
            "/version" => super::admin::version().await.into_response(),
            _ => ApiError {
                retry_after_s: Some(RETRY_AFTER_S),
                ..ApiError::unavailable(format!("the server is starting: {step}"))
            }
            .into_response(),
        }
    }
}

/// The router to bind first: answers for `startup` until it serves the full router.
pub fn router(startup: Arc<Startup>) -> Router {
    Router::new().fallback(move |request: Request| {
        let startup = startup.clone();
        async move { startup.handle(request).await }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;

    async fn call(router: &Router, path: &str) -> (StatusCode, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn loading_answers_probes_then_hands_over() {
        let startup = Startup::new("reading weights");
        let router = router(startup.clone());
        assert_eq!(call(&router, "/health").await.0, StatusCode::OK);
        let (status, body) = call(&router, "/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("reading weights"), "{body}");
        startup.set_step("reading weights: 50%");
        let (status, body) = call(&router, "/v1/models").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("starting: reading weights: 50%"), "{body}");
        assert_eq!(call(&router, "/version").await.0, StatusCode::OK);
        startup.serve(Router::new().route("/ready", get(|| async { "ready" })));
        assert!(startup.is_serving());
        assert_eq!(
            call(&router, "/ready").await,
            (StatusCode::OK, "ready".into())
        );
        assert_eq!(call(&router, "/health").await.0, StatusCode::NOT_FOUND);
    }
}
