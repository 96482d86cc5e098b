//! The async side of the engine: admission permits (the bounded queue, checked before any
//! tokenising), submitting a request (answered once the engine has accepted or refused it, so a
//! refusal is known before a response starts), and the request's stream, which cancels the
//! request in the engine when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;

use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{Notify, oneshot};

use super::worker::Command;
use super::{EngineError, Event, GenerateRequest};

/// A claim on `count` places in the engine; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    in_flight: Arc<AtomicUsize>,
    count: usize,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.in_flight.fetch_sub(self.count, Ordering::AcqRel);
    }
}

impl Permit {
    /// Splits one permit of `count` places into `count` permits of one.
    pub(super) fn split(mut self) -> Vec<Permit> {
        let count = std::mem::take(&mut self.count);
        (0..count)
            .map(|_| Permit {
                in_flight: self.in_flight.clone(),
                count: 1,
            })
            .collect()
    }

    pub fn count(&self) -> usize {
        self.count
    }
}

/// What the engine thread and every handle share about the engine's state.
#[derive(Debug, Default)]
pub(super) struct Health {
    /// False once the engine thread has stopped (shut down or panicked).
    pub stopped: AtomicBool,
    /// The thread panicked: the process must exit and be restarted.
    pub panicked: AtomicBool,
    /// The last [`super::MAX_CONSECUTIVE_FAILURES`] iterations all failed.
    pub failing: AtomicBool,
    /// Woken when the engine stops.
    pub stopped_notify: Notify,
}

/// Cheap to clone; every clone talks to the same engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) in_flight: Arc<AtomicUsize>,
    pub(super) capacity: usize,
    pub(super) next_id: Arc<AtomicU64>,
    pub(super) draining: Arc<AtomicBool>,
    pub(super) health: Arc<Health>,
}

impl EngineHandle {
    /// Claims `count` places (one per choice) if the engine has room and is healthy; call
    /// before tokenising.
    pub fn admit(&self, count: usize) -> Result<Permit, EngineError> {
        if self.health.stopped.load(Ordering::Acquire) {
            return Err(EngineError::Stopped);
        }
        if self.draining.load(Ordering::Acquire) {
            return Err(EngineError::Draining);
        }
        if self.health.failing.load(Ordering::Acquire) {
            return Err(EngineError::Unhealthy);
        }
        let mut current = self.in_flight.load(Ordering::Acquire);
        loop {
            if current + count > self.capacity {
                return Err(EngineError::Overloaded { in_flight: current });
            }
            match self.in_flight.compare_exchange(
                current,
                current + count,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Permit {
                        in_flight: self.in_flight.clone(),
                        count,
                    });
                }
                Err(now) => current = now,
            }
        }
    }

    /// Hands a request of `permit.count()` choices to the engine and waits until the engine
    /// has queued it (or refused it). The permit's places are given back as each choice ends in
    /// the engine. Dropping the future before it resolves cancels the request.
    pub async fn submit(
        &self,
        permit: Permit,
        request: GenerateRequest,
    ) -> Result<RequestStream, EngineError> {
        let choices = permit.count();
        let first_id = self.next_id.fetch_add(choices as u64, Ordering::Relaxed);
        let ids: Vec<u64> = (first_id..first_id + choices as u64).collect();
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let (accepted_tx, accepted) = oneshot::channel();
        // From here on a drop (the client went away) cancels what the engine may have queued.
        let stream = RequestStream {
            ids: ids.clone(),
            events,
            commands: self.commands.clone(),
            open: choices,
        };
        self.commands
            .send(Command::Submit {
                ids,
                request: Box::new(request),
                permits: permit.split(),
                events: events_tx,
                accepted: accepted_tx,
            })
            .map_err(|_| EngineError::Stopped)?;
        match accepted.await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(EngineError::Stopped),
        }
    }

    /// Places taken by admitted requests that have not ended in the engine.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Stops admitting new requests (SIGTERM); in-flight ones run on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The engine thread runs (liveness).
    pub fn is_alive(&self) -> bool {
        !self.health.stopped.load(Ordering::Acquire)
    }

    /// The engine runs and its iterations succeed (readiness).
    pub fn is_healthy(&self) -> bool {
        self.is_alive() && !self.health.failing.load(Ordering::Acquire)
    }

    /// The engine thread panicked.
    pub fn has_panicked(&self) -> bool {
        self.health.panicked.load(Ordering::Acquire)
    }

    /// Resolves once the engine thread has stopped, for whatever reason.
    pub async fn stopped(&self) {
        loop {
            let notified = self.health.stopped_notify.notified();
            if !self.is_alive() {
                return;
            }
            notified.await;
        }
    }

    /// Asks the engine thread to stop after its current iteration.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

/// The events of one request's choices, in the order the engine produced them. Dropping it
/// before every choice ended cancels the request in the engine, which frees its KV pages at the
/// next iteration.
pub struct RequestStream {
    ids: Vec<u64>,
    events: UnboundedReceiver<Event>,
    commands: mpsc::Sender<Command>,
    /// Choices that have not ended yet.
    open: usize,
}

impl RequestStream {
    /// The next event; `None` once every choice has ended, or if the engine went away without
    /// a final event (then [`is_complete`](Self::is_complete) is false).
    pub async fn next(&mut self) -> Option<Event> {
        if self.open == 0 {
            return None;
        }
        let event = self.events.recv().await;
        match &event {
            Some(Event::Finished { .. } | Event::Failed { .. }) => self.open -= 1,
            Some(Event::Output { .. }) => {}
            None => {}
        }
        event
    }

    /// Every choice has ended.
    pub fn is_complete(&self) -> bool {
        self.open == 0
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if self.open > 0 {
            let _ = self.commands.send(Command::Cancel(self.ids.clone()));
        }
    }
}
