//! The engine thread's loop: take commands, let the scheduler compose a batch, wait for its KV
//! pages, run the forward pass, sample, stream tokens, report back, update metrics.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use super::handle::EngineHandle;
use super::live::{Delivery, LiveRequest};
use super::{Event, GenerateRequest};
use crate::kv::KvManager;
use crate::metrics::Metrics;
use crate::model::{Forward, LogitsWanted, SeqChunk};
use crate::sched::{AddError, Batch, RequestId, Scheduler, SeqRequest, StepOutcome};

pub(super) enum Command {
    Submit {
        id: u64,
        request: GenerateRequest,
        events: UnboundedSender<Event>,
    },
    Cancel(u64),
    Shutdown,
}

/// What the engine thread owns.
pub struct EngineParts {
    /// The forward pass: the CPU model or the GPU one.
    pub model: Box<dyn Forward>,
    pub kv: KvManager,
    pub scheduler: Scheduler,
    pub metrics: Arc<Metrics>,
    /// Token ids that end a generation unless the request ignores EOS.
    pub eos_ids: Vec<u32>,
    /// Requests admitted at once at most (running plus queued).
    pub capacity: usize,
}

/// Starts the engine thread. Joining the handle returns once it stopped and unmapped its KV.
pub fn spawn(parts: EngineParts) -> std::io::Result<(EngineHandle, JoinHandle<()>)> {
    let (commands, inbox) = mpsc::channel();
    let alive = Arc::new(AtomicBool::new(true));
    let handle = EngineHandle {
        commands,
        in_flight: Arc::new(AtomicUsize::new(0)),
        capacity: parts.capacity,
        next_id: Arc::new(AtomicU64::new(1)),
        draining: Arc::new(AtomicBool::new(false)),
        alive: alive.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("fused-engine".into())
        .spawn(move || {
            let mut worker = Worker {
                parts,
                live: HashMap::new(),
                inbox,
                stalls_seen: 0,
            };
            worker.run();
            alive.store(false, Ordering::Release);
            let Worker { parts, .. } = worker;
            if let Err(e) = parts.kv.shutdown() {
                tracing::error!(error = %e, "KV shutdown failed");
            }
        })?;
    Ok((handle, thread))
}

struct Worker {
    parts: EngineParts,
    live: HashMap<u64, LiveRequest>,
    inbox: mpsc::Receiver<Command>,
    stalls_seen: u64,
}

impl Worker {
    fn run(&mut self) {
        loop {
            // Block while there is nothing to do; otherwise only drain what has arrived.
            let idle = self.parts.scheduler.is_idle();
            let first = if idle {
                match self.inbox.recv_timeout(Duration::from_secs(1)) {
                    Ok(c) => Some(c),
                    Err(RecvTimeoutError::Timeout) => {
                        self.update_gauges();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                None
            };
            let commands: Vec<Command> = first.into_iter().chain(self.inbox.try_iter()).collect();
            for command in commands {
                match command {
                    Command::Submit {
                        id,
                        request,
                        events,
                    } => self.submit(id, request, events),
                    Command::Cancel(id) => self.cancel(id),
                    Command::Shutdown => return,
                }
            }
            self.step();
        }
    }

    fn submit(&mut self, id: u64, request: GenerateRequest, events: UnboundedSender<Event>) {
        let seq = SeqRequest {
            id: RequestId(id),
            prompt_len: request.prompt.len(),
            max_new_tokens: request.max_new_tokens,
        };
        let live = LiveRequest::new(request, &self.parts.eos_ids, events);
        match self.parts.scheduler.add(seq) {
            Ok(()) => {
                self.live.insert(id, live);
            }
            Err(e) => {
                let overloaded = matches!(e, AddError::QueueFull { .. });
                self.parts
                    .metrics
                    .rejected(if overloaded { "queue_full" } else { "invalid" });
                live.send(Event::Failed {
                    message: e.to_string(),
                    overloaded,
                });
            }
        }
    }

    fn cancel(&mut self, id: u64) {
        if self.live.remove(&id).is_some() {
            self.parts.scheduler.cancel(RequestId(id));
            self.parts.metrics.finished("abort");
        }
    }

    /// One iteration.
    fn step(&mut self) {
        let batch = match self.parts.scheduler.schedule(&mut self.parts.kv) {
            Ok(batch) => batch,
            Err(e) => {
                // Only possible if a batch was left uncompleted; close it and go on.
                tracing::error!(error = %e, "scheduler refused to compose a batch");
                self.parts.scheduler.complete(&mut self.parts.kv, &[]);
                return;
            }
        };
        self.settle_departures(&batch);
        if batch.is_empty() {
            self.parts.scheduler.complete(&mut self.parts.kv, &[]);
            self.update_gauges();
            return;
        }
        let started = Instant::now();
        let outcomes = match self.run_batch(&batch) {
            Ok(outcomes) => outcomes,
            Err(message) => {
                tracing::error!(%message, "batch failed; failing its requests");
                for item in &batch.items {
                    if let Some(live) = self.live.remove(&item.id.0) {
                        live.send(Event::Failed {
                            message: message.clone(),
                            overloaded: false,
                        });
                        self.parts.metrics.finished("error");
                    }
                    self.parts.scheduler.cancel(item.id);
                }
                Vec::new()
            }
        };
        let finished = self.parts.scheduler.complete(&mut self.parts.kv, &outcomes);
        for id in finished {
            // The scheduler also finishes a request at max_new_tokens; the engine already did.
            if let Some(live) = self.live.remove(&id.0) {
                self.finish(live, super::FinishReason::Length);
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        self.parts.scheduler.observe_iteration(
            batch.prefill_tokens(),
            batch.decode_tokens(),
            seconds,
        );
        let m = &self.parts.metrics;
        if batch.token_budget > 0 {
            m.budget_used
                .observe(batch.total_tokens() as f64 / batch.token_budget as f64);
        }
        m.token_budget.set(batch.token_budget as i64);
        self.update_gauges();
    }

    /// Preempted, cancelled and aborted requests of this batch.
    fn settle_departures(&mut self, batch: &Batch) {
        self.parts
            .metrics
            .preemptions
            .inc_by(batch.preempted.len() as u64);
        for (id, reason) in &batch.aborted {
            if let Some(live) = self.live.remove(&id.0) {
                live.send(Event::Failed {
                    message: reason.to_string(),
                    overloaded: false,
                });
                self.parts.metrics.finished("error");
            }
        }
    }

    /// Waits for the batch's KV, runs the model, samples and streams. Returns the outcomes of
    /// the sampling items.
    fn run_batch(&mut self, batch: &Batch) -> Result<Vec<StepOutcome>, String> {
        let now = Instant::now();
        for item in &batch.items {
            self.parts
                .kv
                .wait_ready(item.slot, item.end_pos())
                .map_err(|e| format!("KV cache: {e}"))?;
            if let Some(live) = self.live.get_mut(&item.id.0)
                && live.first_scheduled.is_none()
            {
                live.first_scheduled = Some(now);
                self.parts
                    .metrics
                    .queue_time
                    .observe((now - live.arrival).as_secs_f64());
            }
        }
        let mut chunks = Vec::with_capacity(batch.items.len());
        for item in &batch.items {
            let live = self
                .live
                .get(&item.id.0)
                .ok_or_else(|| format!("{} has no engine state", item.id))?;
            let tokens = live
                .tokens
                .get(item.start_pos..item.end_pos())
                .ok_or_else(|| {
                    format!(
                        "{} has no tokens at {}..{}",
                        item.id,
                        item.start_pos,
                        item.end_pos()
                    )
                })?;
            let logits = if item.samples {
                live.wants()
            } else {
                LogitsWanted::None
            };
            chunks.push(SeqChunk {
                slot: item.slot,
                start_pos: item.start_pos,
                tokens,
                logits,
            });
        }
        let logits = self
            .parts
            .model
            .forward(&chunks, &self.parts.kv)
            .map_err(|e| e.to_string())?;
        drop(chunks);
        let mut outcomes = Vec::new();
        let now = Instant::now();
        for (index, item) in batch.items.iter().enumerate() {
            let Some(live) = self.live.get_mut(&item.id.0) else {
                continue;
            };
            let Some(delivery) = live.deliver(logits.picked(index), logits.rows(index).next())
            else {
                continue;
            };
            self.parts.metrics.generation_tokens.inc();
            match live.last_token_at {
                None => {
                    // Counted once per request, like `usage.prompt_tokens` (recomputes are not).
                    self.parts
                        .metrics
                        .prompt_tokens
                        .inc_by(live.prompt_len as u64);
                    self.parts
                        .metrics
                        .ttft
                        .observe((now - live.arrival).as_secs_f64());
                }
                Some(previous) => self
                    .parts
                    .metrics
                    .inter_token
                    .observe((now - previous).as_secs_f64()),
            }
            live.last_token_at = Some(now);
            let finished = match delivery {
                Delivery::Continue => false,
                Delivery::Finished(reason) => {
                    if let Some(live) = self.live.remove(&item.id.0) {
                        self.finish(live, reason);
                    }
                    true
                }
                Delivery::Gone => {
                    self.live.remove(&item.id.0);
                    self.parts.metrics.finished("abort");
                    true
                }
            };
            outcomes.push(StepOutcome {
                id: item.id,
                finished,
            });
        }
        Ok(outcomes)
    }

    fn finish(&self, live: LiveRequest, reason: super::FinishReason) {
        let m = &self.parts.metrics;
        m.e2e.observe(live.arrival.elapsed().as_secs_f64());
        m.finished(reason.as_str());
        live.send(Event::Finished(reason));
    }

    fn update_gauges(&mut self) {
        let m = &self.parts.metrics;
        let sched = self.parts.scheduler.stats();
        m.requests_running.set(sched.running as i64);
        m.requests_waiting.set(sched.waiting as i64);
        let kv = self.parts.kv.stats();
        m.kv_usage.set(kv.usage);
        m.kv_pages_mapped.set(kv.pages_mapped as i64);
        m.kv_pages_free.set(kv.pages_free as i64);
        m.kv_pages_total.set(kv.pages_total as i64);
        m.kv_wasted_bytes.set(kv.wasted_bytes as i64);
        m.kv_map_stalls
            .inc_by(kv.map_stalls.saturating_sub(self.stalls_seen));
        self.stalls_seen = kv.map_stalls;
        for seconds in self.parts.kv.drain_latencies().map_per_page {
            m.kv_map_seconds.observe(seconds.as_secs_f64());
        }
    }
}
