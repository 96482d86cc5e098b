//! Forwarding a held request to a serving replica, straight to its Pod address (round robin,
//! another replica when a connection cannot be made: the request was not seen then), and the
//! response back as it streams. For a streaming client held at zero: the SSE response starts at
//! once, comments report the wait, and the replica's stream follows (or an error event).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};

use super::{Activator, ModelKey, PROGRESS_EVERY, WAIT_HEADER, error, error_json, wait_header};

/// A request held by the activator, body read.
pub(super) struct Held {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub arrived: Instant,
}

/// Connection-level headers, which a proxy does not pass on (RFC 9110 §7.6.1), and those the
/// client library sets itself.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
];

fn passes(name: &HeaderName) -> bool {
    !HOP_BY_HOP.contains(&name.as_str())
}

impl Activator {
    /// Forwards `held` to one of `replicas` and streams the answer back.
    pub(super) async fn forward(
        &self,
        key: &ModelKey,
        replicas: &[SocketAddr],
        held: Held,
    ) -> Response {
        match self.send(key, replicas, &held).await {
            Ok(upstream) => {
                self.count("forwarded");
                let mut response = Response::builder().status(upstream.status());
                if let Some(headers) = response.headers_mut() {
                    for (name, value) in upstream.headers() {
                        if passes(name) {
                            headers.append(name.clone(), value.clone());
                        }
                    }
                    headers.insert(WAIT_HEADER, wait_header(held.arrived));
                }
                response
                    .body(Body::from_stream(upstream.bytes_stream()))
                    .unwrap_or_else(|e| {
                        error(
                            StatusCode::BAD_GATEWAY,
                            "bad_gateway",
                            &format!("building the response: {e}"),
                            Some(held.arrived),
                        )
                    })
            }
            Err(message) => {
                self.count("error");
                error(
                    StatusCode::BAD_GATEWAY,
                    "bad_gateway",
                    &message,
                    Some(held.arrived),
                )
            }
        }
    }

    /// Sends `held` to a replica: round robin over `replicas`, then over the serving replicas
    /// the watches know, when a connection cannot be made (three tries).
    pub(super) async fn send(
        &self,
        key: &ModelKey,
        replicas: &[SocketAddr],
        held: &Held,
    ) -> Result<reqwest::Response, String> {
        let path = held
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut last = String::from("no serving replica");
        for attempt in 0..3 {
            let candidates = if attempt == 0 {
                replicas.to_vec()
            } else {
                self.serving(key)
            };
            if candidates.is_empty() {
                break;
            }
            let address = candidates[self.next.fetch_add(1, Ordering::Relaxed) % candidates.len()];
            let mut request = self
                .http
                .request(held.method.clone(), format!("http://{address}{path}"))
                .body(held.body.clone());
            for (name, value) in &held.headers {
                if passes(name) {
                    request = request.header(name, value);
                }
            }
            match request.send().await {
                Ok(response) => return Ok(response),
                Err(e) if e.is_connect() => {
                    last = format!("connecting to replica {address}: {e}");
                    tracing::info!(%address, error = %e, "replica refused the connection; trying another");
                }
                Err(e) => return Err(format!("forwarding to replica {address}: {e}")),
            }
        }
        Err(last)
    }
}

/// A streaming request held at zero: SSE response now, progress comments while waiting, then
/// the replica's stream (or an error event and `[DONE]`).
pub(super) fn stream_with_progress(
    activator: Arc<Activator>,
    key: ModelKey,
    held: Held,
    timeout: Duration,
) -> Response {
    let (mut tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        let _gauge = activator.hold();
        let arrived = held.arrived;
        let say = |text: String| Ok(Bytes::from(text));
        if tx
            .send(say(format!(
                ": fused-activator: no replica of {}/{} serves yet; waking it (at most {} s)\n\n",
                key.0,
                key.1,
                timeout.as_secs()
            )))
            .await
            .is_err()
        {
            return;
        }
        let wake = activator.wake(&key, timeout);
        tokio::pin!(wake);
        let mut ticks =
            tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
        let woken = loop {
            tokio::select! {
                result = &mut wake => break result,
                _ = ticks.tick() => {
                    let comment = format!(
                        ": fused-activator: waiting for a replica ({:.0} s)\n\n",
                        arrived.elapsed().as_secs_f64()
                    );
                    if tx.send(say(comment)).await.is_err() {
                        // The client left.
                        return;
                    }
                }
            }
        };
        let failure = match woken {
            Ok(replicas) => match activator.send(&key, &replicas, &held).await {
                Ok(upstream) if upstream.status().is_success() => {
                    activator.count("forwarded");
                    let ready = format!(
                        ": fused-activator: replica ready after {} ms\n\n",
                        arrived.elapsed().as_millis()
                    );
                    if tx.send(say(ready)).await.is_err() {
                        return;
                    }
                    let mut stream = upstream.bytes_stream();
                    while let Some(chunk) = stream.next().await {
                        let chunk = chunk.map_err(std::io::Error::other);
                        let failed = chunk.is_err();
                        if tx.send(chunk).await.is_err() || failed {
                            return;
                        }
                    }
                    return;
                }
                Ok(upstream) => {
                    activator.count("error");
                    let status = upstream.status();
                    let text = upstream.text().await.unwrap_or_default();
                    let reported = serde_json::from_str::<serde_json::Value>(&text)
                        .ok()
                        .filter(|v| v.get("error").is_some());
                    reported.unwrap_or_else(|| {
                        error_json(
                            status,
                            "replica_error",
                            &format!("the replica answered {status}"),
                        )
                    })
                }
                Err(message) => {
                    activator.count("error");
                    error_json(StatusCode::BAD_GATEWAY, "bad_gateway", &message)
                }
            },
            Err(message) => {
                activator.count("timeout");
                error_json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    &message,
                )
            }
        };
        let _ = tx.send(say(format!("data: {failure}\n\n"))).await;
        let _ = tx.send(say("data: [DONE]\n\n".to_owned())).await;
    });
    let mut response = Response::new(Body::from_stream(rx));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
