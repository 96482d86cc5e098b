//! Hand-off of kept-alive connections when the server shuts down. Closing idle keep-alive
//! connections the moment SIGTERM arrives races clients that send on them at that instant, and
//! a response that started before SIGTERM and ends after the close leaves its connection in the
//! client's pool to be reused and fail (a rolling update on a real kubelet showed both). So once
//! shutdown starts every response says `Connection: close`, and the server closes what is left
//! only when no exchange is open (request read to response body sent) and none has started or
//! ended for a quiet spell: busy clients have moved to new connections — another replica — by
//! then.
//!
//! Must not: delay the shutdown of a server without traffic by more than the quiet spell.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;

/// No exchange open, started or ended for this long: the clients that were busy have left.
pub const QUIET: Duration = Duration::from_millis(500);

/// Whether the server is closing, how many exchanges are open, and when one last started or
/// ended.
#[derive(Debug)]
pub struct HandOff {
    closing: AtomicBool,
    open: AtomicUsize,
    epoch: Instant,
    last_activity_ns: AtomicU64,
}

impl HandOff {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            closing: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            epoch: Instant::now(),
            last_activity_ns: AtomicU64::new(0),
        })
    }

    /// From now on, responses close their connections.
    pub fn start_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// Waits until no exchange is open and none started or ended for `quiet`, at most
    /// `max_wait` (the drain timeout).
    pub async fn settle(&self, quiet: Duration, max_wait: Duration) {
        let deadline = Instant::now() + max_wait;
        while Instant::now() < deadline
            && (self.open.load(Ordering::Acquire) > 0 || self.since_activity() < quiet)
        {
            tokio::time::sleep(quiet / 10).await;
        }
    }

    fn touch(&self) {
        // Nanoseconds, not milliseconds: a truncated stamp would end the quiet spell early.
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_activity_ns.store(now, Ordering::Release);
    }

    fn since_activity(&self) -> Duration {
        let last = Duration::from_nanos(self.last_activity_ns.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(last)
    }

    fn open_exchange(self: &Arc<Self>) -> Exchange {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.touch();
        Exchange(self.clone())
    }
}

/// One open exchange; it ends when the response body is dropped (sent, or the client left).
struct Exchange(Arc<HandOff>);

impl Drop for Exchange {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.touch();
    }
}

/// Middleware: counts the exchange until its body is gone, and marks responses
/// `Connection: close` once closing.
pub async fn mark(State(hand_off): State<Arc<HandOff>>, request: Request, next: Next) -> Response {
    let exchange = hand_off.open_exchange();
    let mut response = next.run(request).await;
    if hand_off.closing.load(Ordering::Acquire) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // The exchange lives in the body (map_err keeps the body's size hint).
    response.map(|body| {
        Body::new(body.map_err(move |error| {
            let _open = &exchange;
            error
        }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_QUIET: Duration = Duration::from_millis(100);
    const TEST_MAX: Duration = Duration::from_millis(400);

    #[tokio::test]
    async fn settle_waits_for_open_exchanges_and_a_quiet_spell_but_not_forever() {
        let hand_off = HandOff::new();
        // An exchange that stays open: settle waits until the cap.
        let open = hand_off.open_exchange();
        let started = Instant::now();
        hand_off.settle(TEST_QUIET, TEST_MAX).await;
        assert!(started.elapsed() >= TEST_MAX, "{:?}", started.elapsed());
        // Closed: a quiet spell from its end, then done, well before a long cap.
        let ended = Instant::now();
        drop(open);
        hand_off.settle(TEST_QUIET, Duration::from_secs(60)).await;
        let waited = ended.elapsed();
        assert!(
            waited >= TEST_QUIET && waited < Duration::from_secs(60),
            "{waited:?}"
        );
        // Nothing since: nothing to wait for.
        tokio::time::sleep(TEST_QUIET).await;
        let idle = Instant::now();
        hand_off.settle(TEST_QUIET, Duration::from_secs(60)).await;
        assert!(idle.elapsed() < TEST_QUIET, "{:?}", idle.elapsed());
    }
}
