//! The activator: where a scale-to-zero FusedModel's Service points while no replica serves
//! ([`crate::endpoints`]). A request that arrives there is held: the activator scales the model
//! from zero (once per wake-up, with an Event), waits for a serving replica — at most the
//! model's `activationTimeout`, then 503 with `Retry-After` — and forwards the request to that
//! replica directly (never through the Service, which may still point here). A client that
//! streams (`"stream": true`) gets its response headers at once and SSE comments
//! (`: waiting for a replica …`) while it waits; every response carries
//! `x-fused-activator-wait-ms` and `Connection: close`. Once a replica serves, the operator
//! points the Service at the replicas and the activator is out of the data path (a client's next
//! connection goes to a replica).
//!
//! It runs in every operator replica (not only the leader), on its own port, behind the
//! activator Service of the chart: it needs the operator's watch data and RBAC (patching a
//! FusedModel's replicas), holding connections costs little, and it only sees cold starts.
//!
//! Must not: forward a request to a replica that is not ready or is terminating, answer a
//! request it cannot route with anything but a 4xx naming the host, or hold one past the
//! model's activation timeout.

mod forward;
mod route;
mod wake;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fused_crds::FusedModel;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;
use tokio::sync::watch;

use crate::context::Context;
use crate::labels::{MANAGED_BY, MANAGED_BY_LABEL, MODEL_LABEL};
use crate::metrics::Metrics;
use crate::pod_network::PodNetwork;
pub use route::{ModelKey, NoRoute, route};

/// Largest request body held (the daemon's own limit).
pub const MAX_BODY_BYTES: usize = 8 << 20;
/// `Retry-After` of a 503 after the activation timeout, in seconds.
pub const RETRY_AFTER_S: u64 = 10;
/// Period of the SSE progress comments.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(2);
/// Response header with the time the request was held, in milliseconds.
pub const WAIT_HEADER: &str = "x-fused-activator-wait-ms";

/// The activator's view of the cluster and its clients.
pub struct Activator {
    client: Client,
    pod_network: PodNetwork,
    metrics: Arc<Metrics>,
    recorder: Recorder,
    models: Store<FusedModel>,
    services: Store<Service>,
    pods: Store<Pod>,
    /// Bumped on every change the watches see: waiters re-check on it.
    changes: watch::Receiver<u64>,
    http: reqwest::Client,
    watches: Vec<tokio::task::JoinHandle<()>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Activator {
    /// Starts the watches (FusedModels, the operator's Services, daemon Pods) in the scope of
    /// `ctx` and waits until each has listed once.
    pub async fn start(ctx: &Context) -> Result<Arc<Self>, reqwest::Error> {
        let namespace = ctx.config.watch_namespace.as_deref();
        let (changed, changes) = watch::channel(0_u64);
        let changed = Arc::new(changed);
        let mut watches = Vec::new();
        let models = spawn_watch::<FusedModel>(
            &ctx.client,
            namespace,
            watcher::Config::default(),
            &changed,
            &mut watches,
        );
        let services = spawn_watch::<Service>(
            &ctx.client,
            namespace,
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}")),
            &changed,
            &mut watches,
        );
        let pods = spawn_watch::<Pod>(
            &ctx.client,
            namespace,
            watcher::Config::default().labels(MODEL_LABEL),
            &changed,
            &mut watches,
        );
        let listed = (
            models.wait_until_ready().await,
            services.wait_until_ready().await,
            pods.wait_until_ready().await,
        );
        if listed.0.is_err() || listed.1.is_err() || listed.2.is_err() {
            tracing::warn!("an activator watch stopped before its first list");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Arc::new(Self {
            client: ctx.client.clone(),
            pod_network: ctx.pod_network.clone(),
            metrics: ctx.metrics.clone(),
            recorder: ctx.recorder.clone(),
            models,
            services,
            pods,
            changes,
            http,
            watches,
            next: std::sync::atomic::AtomicUsize::new(0),
        }))
    }

    /// Serves on `listener` until `shutdown`; requests held then are finished first.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = Router::new().fallback(handle).with_state(self);
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

impl Drop for Activator {
    fn drop(&mut self) {
        for task in &self.watches {
            task.abort();
        }
    }
}

/// A reflector of `K` in scope, run on a task that bumps `changed` on every event.
fn spawn_watch<K>(
    client: &Client,
    namespace: Option<&str>,
    config: watcher::Config,
    changed: &Arc<watch::Sender<u64>>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (reader, writer) = reflector::store();
    let changed = changed.clone();
    let stream = reflector::reflector(writer, watcher(api, config)).default_backoff();
    tasks.push(tokio::spawn(async move {
        stream
            .for_each(|event| {
                if let Err(error) = &event {
                    tracing::warn!(%error, kind = %K::kind(&()), "activator watch");
                }
                changed.send_modify(|n| *n = n.wrapping_add(1));
                std::future::ready(())
            })
            .await;
    }));
    reader
}

/// Every request: route it, hold it until a replica serves, forward it. Every response closes
/// its connection: a keep-alive client's next request goes through the Service again, to a
/// replica once one serves (the activator leaves the data path for connections too).
async fn handle(State(activator): State<Arc<Activator>>, request: Request) -> Response {
    let mut response = respond(activator, request).await;
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

async fn respond(activator: Arc<Activator>, request: Request) -> Response {
    let arrived = Instant::now();
    let (parts, body) = request.into_parts();
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.host())
        .unwrap_or_default()
        .to_owned();
    let key = match route(
        &host,
        &activator.models.state(),
        &activator.services.state(),
    ) {
        Ok(key) => key,
        Err(NoRoute(message)) => {
            activator.count("unknown_model");
            return error(StatusCode::NOT_FOUND, "not_found_error", &message, None);
        }
    };
    let body = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                &format!("the request body is larger than {MAX_BODY_BYTES} bytes"),
                None,
            );
        }
    };
    let held = forward::Held {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
        arrived,
    };
    let timeout = activator.activation_timeout(&key);
    if activator.serving(&key).is_empty() && streams(&held.body) {
        return forward::stream_with_progress(activator, key, held, timeout);
    }
    let _gauge = activator.hold();
    match activator.wake(&key, timeout).await {
        Ok(replicas) => activator.forward(&key, &replicas, held).await,
        Err(message) => {
            activator.count("timeout");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                &message,
                Some(arrived),
            )
        }
    }
}

/// Whether the request body asks for a streamed response (`"stream": true`).
fn streams(body: &Bytes) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("stream").and_then(serde_json::Value::as_bool))
        .unwrap_or(false)
}

impl Activator {
    fn count(&self, result: &str) {
        self.metrics.activations.with_label_values(&[result]).inc();
    }

    /// Counts a held request while the guard lives.
    fn hold(&self) -> HeldGauge {
        self.metrics.held_requests.inc();
        HeldGauge(self.metrics.clone())
    }
}

/// Decrements the held-requests gauge when dropped.
struct HeldGauge(Arc<Metrics>);

impl Drop for HeldGauge {
    fn drop(&mut self) {
        self.0.held_requests.dec();
    }
}

/// An OpenAI-style error (`{"error": {"message", "type", "code"}}`); a 503 carries
/// `Retry-After`, and a held request its wait.
fn error(status: StatusCode, kind: &str, message: &str, held_since: Option<Instant>) -> Response {
    let mut response = (status, axum::Json(error_json(status, kind, message))).into_response();
    let headers: &mut HeaderMap = response.headers_mut();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    }
    if let Some(since) = held_since {
        headers.insert(WAIT_HEADER, wait_header(since));
    }
    response
}

/// The wait since `since`, as a header value in milliseconds.
fn wait_header(since: Instant) -> HeaderValue {
    HeaderValue::from(u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX))
}

/// The body of an OpenAI-style error.
fn error_json(status: StatusCode, kind: &str, message: &str) -> serde_json::Value {
    json!({"error": {"message": message, "type": kind, "code": status.as_u16()}})
}
