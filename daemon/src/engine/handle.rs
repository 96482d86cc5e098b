//! The async side of the engine: admission permits (the bounded queue, checked before any
//! tokenising), submitting requests, and streams that cancel their request when dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;

use tokio::sync::mpsc::UnboundedReceiver;

use super::worker::Command;
use super::{Event, GenerateRequest};

/// Refusal at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    #[error("the server is at capacity ({0} requests in flight)")]
    Full(usize),
    #[error("the server is shutting down")]
    Draining,
    #[error("the engine has stopped")]
    Stopped,
}

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

/// Cheap to clone; every clone talks to the same engine thread.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) commands: mpsc::Sender<Command>,
    pub(super) in_flight: Arc<AtomicUsize>,
    pub(super) capacity: usize,
    pub(super) next_id: Arc<AtomicU64>,
    pub(super) draining: Arc<AtomicBool>,
    pub(super) alive: Arc<AtomicBool>,
}

impl EngineHandle {
    /// Claims `count` places (one per choice) if the engine has room; call before tokenising.
    pub fn admit(&self, count: usize) -> Result<Permit, AdmissionError> {
        if !self.alive.load(Ordering::Acquire) {
            return Err(AdmissionError::Stopped);
        }
        if self.draining.load(Ordering::Acquire) {
            return Err(AdmissionError::Draining);
        }
        let mut current = self.in_flight.load(Ordering::Acquire);
        loop {
            if current + count > self.capacity {
                return Err(AdmissionError::Full(current));
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

    /// Hands a request to the engine. The permit (for this one request) travels with the stream.
    pub fn submit(&self, permit: Permit, request: GenerateRequest) -> RequestStream {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
        let sent = self.commands.send(Command::Submit {
            id,
            request,
            events: events_tx,
        });
        if sent.is_err() {
            self.alive.store(false, Ordering::Release);
        }
        RequestStream {
            id,
            events,
            commands: self.commands.clone(),
            done: false,
            permit: Some(permit),
        }
    }

    /// Requests admitted and not finished.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Stops admitting new requests (SIGTERM); in-flight ones run on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Asks the engine thread to stop after its current iteration.
    pub fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown);
    }
}

impl Permit {
    /// Splits one permit of `count` places into `count` permits of one.
    pub fn split(mut self) -> Vec<Permit> {
        let count = std::mem::take(&mut self.count);
        (0..count)
            .map(|_| Permit {
                in_flight: self.in_flight.clone(),
                count: 1,
            })
            .collect()
    }
}

/// Token events of one request. Dropping it before the end cancels the request in the engine,
/// which frees its KV pages at the next iteration.
pub struct RequestStream {
    id: u64,
    events: UnboundedReceiver<Event>,
    commands: mpsc::Sender<Command>,
    done: bool,
    /// Given back as soon as the request has ended, even if the stream lives on.
    permit: Option<Permit>,
}

impl RequestStream {
    /// The next event; `None` only if the engine went away without a final event.
    pub async fn next(&mut self) -> Option<Event> {
        let event = self.events.recv().await;
        match &event {
            Some(Event::Finished(_) | Event::Failed { .. }) | None => {
                self.done = true;
                self.permit = None;
            }
            Some(Event::Token(_)) => {}
        }
        event
    }
}

impl Drop for RequestStream {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.commands.send(Command::Cancel(self.id));
        }
    }
}
