//! Request ids and the per-request span: the client's `x-request-id` is honoured (when it is a
//! sane token) or one is made up; it is returned in the response's `x-request-id`, names the
//! completion (`chatcmpl-<id>`), and is a field of the span every log line of the request is
//! written in — on the server and, through the engine's own span, on the engine thread.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The header clients and proxies use to correlate a request (vLLM, Envoy, nginx).
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Longest client-chosen id kept (longer ones are replaced by a fresh id).
const MAX_REQUEST_ID_LEN: usize = 128;

/// A request's id, in the request's extensions for handlers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub String);

impl RequestId {
    /// The client's id if it is 1–128 visible ASCII characters, else a fresh random one.
    pub fn from_header(value: Option<&HeaderValue>) -> Self {
        let given = value.and_then(|v| v.to_str().ok()).filter(|v| {
            (1..=MAX_REQUEST_ID_LEN).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic())
        });
        match given {
            Some(id) => RequestId(id.to_owned()),
            None => RequestId(format!("{:032x}", rand::random::<u128>())),
        }
    }
}

/// Middleware: gives the request its id, runs it inside its span, returns the id.
pub async fn trace(mut request: Request, next: Next) -> Response {
    let id = RequestId::from_header(request.headers().get(REQUEST_ID_HEADER));
    let span = tracing::info_span!(
        "http",
        request_id = %id.0,
        method = %request.method(),
        path = %request.uri().path(),
    );
    request.extensions_mut().insert(id.clone());
    let mut response = next.run(request).instrument(span).await;
    if let Ok(value) = HeaderValue::from_str(&id.0) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sane_client_ids_are_kept_and_others_replaced() {
        let keep = HeaderValue::from_static("abc-123_X.y");
        assert_eq!(RequestId::from_header(Some(&keep)).0, "abc-123_X.y");
        let spaced = HeaderValue::from_static("a b");
        let long = HeaderValue::from_str(&"x".repeat(129)).expect("ascii");
        for bad in [Some(&spaced), Some(&long), None] {
            let id = RequestId::from_header(bad).0;
            assert_eq!(id.len(), 32, "a fresh id replaces {bad:?}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
    }
}
