//! The background mapper: a thread that owns the backend and carries out page jobs (maps,
//! unmaps, copies of cached page parts) in the order they were submitted, while the engine
//! computes. Each job has a ticket; the engine waits for a
//! ticket only when the pages it needs are not mapped yet (a *stall*).
//!
//! Order is the safety argument: a trim's unmap is queued before the map that reuses its pages,
//! and every job runs after all earlier ones, so a pool page is never needed in two places.
//! Failures are typed and sticky: after one, every wait reports it. Shutdown (drop of the
//! handle) closes the queue, joins the thread, unmaps everything and drops the backend.
//!
//! Must not: decide placement (the accounting does) or block the submitter.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::KvError;
use super::accounting::PageOp;
use super::backend::PageBackend;
use super::page_table::PageTable;

/// Latency samples kept between two drains (older ones are dropped first).
const LATENCY_SAMPLES: usize = 16_384;

/// Per-page latencies of map and unmap calls since the last drain (one sample per call: the
/// call's time divided by its pages), for a metrics histogram.
#[derive(Debug, Default, Clone)]
pub struct LatencySamples {
    pub map_per_page: Vec<Duration>,
    pub unmap_per_page: Vec<Duration>,
}

/// Totals of the mapper's work since start.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MapTotals {
    pub(crate) pages_mapped: u64,
    pub(crate) pages_unmapped: u64,
    pub(crate) map_nanos: u64,
    pub(crate) unmap_nanos: u64,
    /// Pool pages whose cached part was copied into a sequence's own page, and the time taken.
    pub(crate) pages_copied: u64,
    pub(crate) copy_nanos: u64,
}

struct Job {
    ticket: u64,
    ops: Vec<PageOp>,
}

#[derive(Default)]
struct Completion {
    done: u64,
    failure: Option<String>,
}

#[derive(Default)]
struct Recent {
    map: VecDeque<Duration>,
    unmap: VecDeque<Duration>,
}

/// State shared by the mapper thread and its handle.
struct Shared {
    done: AtomicU64,
    failed: AtomicBool,
    completion: Mutex<Completion>,
    progressed: Condvar,
    table: Mutex<PageTable>,
    totals: Mutex<MapTotals>,
    recent: Mutex<Recent>,
    page_bytes: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked mid-update of plain counters.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn push_sample(samples: &mut VecDeque<Duration>, sample: Duration) {
    if samples.len() == LATENCY_SAMPLES {
        samples.pop_front();
    }
    samples.push_back(sample);
}

impl Shared {
    fn complete(&self, ticket: u64) {
        let mut completion = lock(&self.completion);
        completion.done = ticket;
        self.done.store(ticket, Ordering::Release);
        self.progressed.notify_all();
    }

    fn fail(&self, error: &KvError) {
        let mut completion = lock(&self.completion);
        if completion.failure.is_none() {
            tracing::error!(%error, "KV mapper failed; the KV region is unusable");
            completion.failure = Some(error.to_string());
        }
        self.failed.store(true, Ordering::Release);
        self.progressed.notify_all();
    }

    fn apply(&self, backend: &mut dyn PageBackend, op: &PageOp) -> Result<(), KvError> {
        match op {
            PageOp::Map {
                first,
                pages,
                shared,
            } => {
                lock(&self.table).check_map(*first, pages, *shared)?;
                let started = Instant::now();
                backend.map_run(first * self.page_bytes, pages)?;
                let took = started.elapsed();
                lock(&self.table).record_map(*first, pages);
                self.count(true, pages.len(), took);
            }
            PageOp::Unmap { first, count } => {
                lock(&self.table).check_unmap(*first, *count)?;
                let started = Instant::now();
                backend.unmap_run(first * self.page_bytes, *count)?;
                let took = started.elapsed();
                lock(&self.table).record_unmap(*first, *count);
                self.count(false, *count, took);
            }
            PageOp::Copy { from, to, bytes } => {
                lock(&self.table).check_copy(from, to)?;
                let started = Instant::now();
                backend.copy_pages(from, to, *bytes)?;
                let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let mut totals = lock(&self.totals);
                totals.pages_copied += from.len() as u64;
                totals.copy_nanos += nanos;
            }
        }
        Ok(())
    }

    fn count(&self, map: bool, pages: usize, took: Duration) {
        if pages == 0 {
            return;
        }
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let mut totals = lock(&self.totals);
        let mut recent = lock(&self.recent);
        let per_page = took / pages as u32;
        if map {
            totals.pages_mapped += pages as u64;
            totals.map_nanos += nanos;
            push_sample(&mut recent.map, per_page);
        } else {
            totals.pages_unmapped += pages as u64;
            totals.unmap_nanos += nanos;
            push_sample(&mut recent.unmap, per_page);
        }
    }
}

/// Marks the mapper as failed if its thread unwinds, so that no waiter hangs.
struct PanicGuard(Arc<Shared>);

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .fail(&KvError::Mapper("the mapper thread panicked".into()));
        }
    }
}

fn run(mut backend: Box<dyn PageBackend>, jobs: Receiver<Job>, shared: Arc<Shared>) {
    let _guard = PanicGuard(Arc::clone(&shared));
    if let Err(error) = backend.attach_thread() {
        shared.fail(&error);
    }
    while let Ok(job) = jobs.recv() {
        if !shared.failed.load(Ordering::Acquire) {
            for op in &job.ops {
                if let Err(error) = shared.apply(backend.as_mut(), op) {
                    shared.fail(&error);
                    break;
                }
            }
        }
        shared.complete(job.ticket);
    }
    let runs = lock(&shared.table).mapped_runs();
    for (first, count) in runs {
        if let Err(error) = shared.apply(backend.as_mut(), &PageOp::Unmap { first, count }) {
            tracing::warn!(%error, first, count, "unmapping KV pages at shutdown failed");
        }
    }
}

/// The engine's handle on the mapper thread.
pub(crate) struct Mapper {
    jobs: Option<Sender<Job>>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    next_ticket: u64,
}

impl Mapper {
    /// Starts the thread, which owns `backend` from now on.
    pub(crate) fn start(
        backend: Box<dyn PageBackend>,
        page_bytes: usize,
        virtual_pages: usize,
        pool_pages: usize,
    ) -> Result<Self, KvError> {
        let shared = Arc::new(Shared {
            done: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            completion: Mutex::default(),
            progressed: Condvar::new(),
            table: Mutex::new(PageTable::new(virtual_pages, pool_pages)),
            totals: Mutex::default(),
            recent: Mutex::default(),
            page_bytes,
        });
        let (sender, receiver) = channel();
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("fused-kv-mapper".into())
            .spawn(move || run(backend, receiver, thread_shared))
            .map_err(|source| KvError::Os {
                call: "spawn (KV mapper thread)",
                source,
            })?;
        Ok(Self {
            jobs: Some(sender),
            shared,
            thread: Some(thread),
            next_ticket: 1,
        })
    }

    /// Queues `ops` as one job and returns its ticket.
    pub(crate) fn submit(&mut self, ops: Vec<PageOp>) -> Result<u64, KvError> {
        let ticket = self.next_ticket;
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(Job { ticket, ops }).is_ok());
        if !sent {
            return Err(self
                .failure()
                .unwrap_or_else(|| KvError::Mapper("the mapper has shut down".into())));
        }
        self.next_ticket += 1;
        Ok(ticket)
    }

    /// The last ticket finished.
    pub(crate) fn done(&self) -> u64 {
        self.shared.done.load(Ordering::Acquire)
    }

    /// The last ticket handed out.
    pub(crate) fn last_ticket(&self) -> u64 {
        self.next_ticket - 1
    }

    fn failure(&self) -> Option<KvError> {
        if !self.shared.failed.load(Ordering::Acquire) {
            return None;
        }
        let completion = lock(&self.shared.completion);
        let message = completion
            .failure
            .clone()
            .unwrap_or_else(|| "unknown failure".into());
        Some(KvError::Mapper(message))
    }

    /// Waits until job `ticket` is done. `Ok(true)` when it had to wait.
    pub(crate) fn wait_for(&self, ticket: u64) -> Result<bool, KvError> {
        if let Some(error) = self.failure() {
            return Err(error);
        }
        if self.done() >= ticket {
            return Ok(false);
        }
        let mut completion = lock(&self.shared.completion);
        loop {
            if let Some(failure) = &completion.failure {
                return Err(KvError::Mapper(failure.clone()));
            }
            if completion.done >= ticket {
                return Ok(true);
            }
            completion = self
                .shared
                .progressed
                .wait(completion)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    pub(crate) fn pages_mapped(&self) -> usize {
        lock(&self.shared.table).mapped()
    }

    pub(crate) fn totals(&self) -> MapTotals {
        *lock(&self.shared.totals)
    }

    pub(crate) fn drain_latencies(&self) -> LatencySamples {
        let mut recent = lock(&self.shared.recent);
        LatencySamples {
            map_per_page: recent.map.drain(..).collect(),
            unmap_per_page: recent.unmap.drain(..).collect(),
        }
    }

    /// Runs `inspect` on the page table (for consistency checks).
    #[cfg(test)]
    pub(crate) fn with_table<R>(&self, inspect: impl FnOnce(&PageTable) -> R) -> R {
        inspect(&lock(&self.shared.table))
    }

    /// Closes the queue, lets the thread finish every job and unmap everything, and joins it.
    pub(crate) fn shutdown(&mut self) -> Result<(), KvError> {
        self.jobs = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            return Err(KvError::Mapper("the mapper thread panicked".into()));
        }
        match lock(&self.shared.completion).failure.take() {
            Some(failure) => Err(KvError::Mapper(failure)),
            None => Ok(()),
        }
    }
}

impl Drop for Mapper {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::warn!(%error, "KV mapper shut down with an error");
        }
    }
}
