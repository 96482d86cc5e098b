//! The engine thread's loop: take commands, drop requests whose client left, let the scheduler
//! compose a batch, wait for its KV pages, run the forward pass, deliver tokens, report finishes
//! back to the scheduler, update metrics — and keep the engine's health honest: a panic stops
//! the engine (every in-flight request gets an error, the process is told to exit), and
//! [`MAX_CONSECUTIVE_FAILURES`] failed iterations in a row mark it failing (not ready).

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::handle::{EngineHandle, Health};
use super::live::{Ending, Limits, LiveRequest};
use super::masks::MaskThread;
use super::prefix::PrefixHasher;
use super::stats::{self, Group, Phases};
use super::{EngineError, Event, GenerateRequest, Permit};
use crate::guide::{GuideError, TokenMask};
use crate::kv::KvManager;
use crate::metrics::Metrics;
use crate::model::{Forward, Logits, LogitsWanted, SeqChunk};
use crate::sched::{Batch, PrefixHashes, RequestId, Scheduler, SeqRequest, StepOutcome};
use crate::tokenizer::Codec;
use rayon::prelude::*;

/// Sampling items from which delivery (sampling, detokenizing, stop strings) runs in parallel.
const PARALLEL_DELIVERY: usize = 16;

/// What delivering one token did: the request goes on (`None`), ended, or failed.
type Delivered = Result<Option<Ending>, EngineError>;

/// One sampling item to deliver: its index in the batch, its choice, and its token mask (for
/// structured outputs) if it has one.
type Target<'a> = (
    usize,
    &'a mut LiveRequest,
    Option<Result<TokenMask, GuideError>>,
);

/// Iterations in a row that may fail before the engine reports itself failing (not ready, new
/// requests refused with 503).
pub const MAX_CONSECUTIVE_FAILURES: u32 = 3;

pub(super) enum Command {
    Submit {
        /// One engine id per choice.
        ids: Vec<u64>,
        request: Box<GenerateRequest>,
        permits: Vec<Permit>,
        events: UnboundedSender<Event>,
        accepted: oneshot::Sender<Result<(), EngineError>>,
    },
    Cancel(Vec<u64>),
    Shutdown,
}

/// What the engine thread owns.
pub struct EngineParts {
    /// The forward pass: the CPU model or the GPU one.
    pub model: Box<dyn Forward>,
    pub kv: KvManager,
    pub scheduler: Scheduler,
    pub metrics: Arc<Metrics>,
    /// The served tokenizer: output text and stop strings are the engine's business.
    pub codec: Arc<Codec>,
    /// Token ids that end a generation unless the request ignores EOS.
    pub eos_ids: Vec<u32>,
    /// Tokens of context per sequence (prompt plus output).
    pub max_context: usize,
    /// Places admitted at once at most (running plus queued choices).
    pub capacity: usize,
    /// Log one line per finished request (vLLM logs requests unless `--disable-log-requests`).
    pub log_requests: bool,
    /// Automatic prefix caching (`--enable-prefix-caching`): the hasher of the token ids whose
    /// chains key the KV prefix cache; `None` turns it off.
    pub prefix_caching: Option<Arc<PrefixHasher>>,
}

/// Starts the engine thread. Joining the handle returns once it stopped and unmapped its KV.
pub fn spawn(parts: EngineParts) -> std::io::Result<(EngineHandle, JoinHandle<()>)> {
    let (commands, inbox) = mpsc::channel();
    let health = Arc::new(Health::default());
    let handle = EngineHandle {
        commands,
        in_flight: Arc::new(AtomicUsize::new(0)),
        capacity: parts.capacity,
        next_id: Arc::new(AtomicU64::new(1)),
        draining: Arc::new(AtomicBool::new(false)),
        health: health.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("fused-engine".into())
        .spawn(move || {
            // Ids past the tokenizer's (a padded vocabulary) are never output: the model scores
            // only the others, so they are never sampled either.
            let mut parts = parts;
            parts.model.limit_output_ids(parts.codec.vocab_size());
            let mut worker = Worker {
                parts,
                live: HashMap::new(),
                groups: HashMap::new(),
                inbox,
                stalls_seen: 0,
                stall_seconds_seen: 0.0,
                consecutive_failures: 0,
                health: health.clone(),
                masks: None,
            };
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| worker.run()));
            if outcome.is_err() {
                health.panicked.store(true, Ordering::Release);
                tracing::error!(
                    in_flight = worker.live.len(),
                    "the engine thread panicked; failing in-flight requests and stopping"
                );
                for (_, live) in worker.live.drain() {
                    live.fail(EngineError::Panicked);
                }
            }
            // Refuse what is still in the inbox: nobody will run it.
            for command in worker.inbox.try_iter() {
                if let Command::Submit { accepted, .. } = command {
                    let _ = accepted.send(Err(EngineError::Stopped));
                }
            }
            health.stopped.store(true, Ordering::Release);
            health.stopped_notify.notify_waiters();
            let Worker { parts, .. } = worker;
            if let Err(e) = parts.kv.shutdown() {
                tracing::error!(error = %e, "KV shutdown failed");
            }
        })?;
    Ok((handle, thread))
}

struct Worker {
    parts: EngineParts,
    /// Every choice the engine holds, by engine id.
    live: HashMap<u64, LiveRequest>,
    /// The requests those choices belong to, by their first choice's engine id.
    groups: HashMap<u64, Group>,
    inbox: mpsc::Receiver<Command>,
    stalls_seen: u64,
    stall_seconds_seen: f64,
    consecutive_failures: u32,
    health: Arc<Health>,
    /// Computes constrained choices' masks during the forward pass (started when first needed).
    masks: Option<MaskThread>,
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
                        ids,
                        request,
                        permits,
                        events,
                        accepted,
                    } => {
                        let result = self.submit(&ids, &request, permits, &events);
                        if accepted.send(result).is_err() {
                            // The client left before hearing back.
                            self.cancel(&ids);
                        }
                    }
                    Command::Cancel(ids) => self.cancel(&ids),
                    Command::Shutdown => return,
                }
            }
            self.cancel_departed();
            self.step();
        }
    }

    /// Queues every choice of a request, or none of them.
    fn submit(
        &mut self,
        ids: &[u64],
        request: &GenerateRequest,
        permits: Vec<Permit>,
        events: &UnboundedSender<Event>,
    ) -> Result<(), EngineError> {
        let limits = Limits {
            codec: &self.parts.codec,
            eos_ids: &self.parts.eos_ids,
            max_context: self.parts.max_context,
        };
        let mut added = Vec::with_capacity(ids.len());
        let hasher = self.parts.prefix_caching.clone();
        let chain = hasher.as_ref().map(|hasher| hasher.chain(&request.prompt));
        for ((index, &id), permit) in ids.iter().enumerate().zip(permits) {
            // Each choice extends its own chain with its own output.
            let prefix = chain.clone().map(PrefixHashes::new);
            let seq = SeqRequest {
                prefix: prefix.clone(),
                ..SeqRequest::new(RequestId(id), request.prompt.len())
            };
            if let Err(error) = self.parts.scheduler.add(seq) {
                for id in added {
                    self.parts.scheduler.cancel(RequestId(id));
                    self.live.remove(&id);
                }
                // Refused whole: its group was never registered.
                let error = EngineError::Refused(error);
                self.parts.metrics.rejected(error.metric_label());
                return Err(error);
            }
            let mut live = LiveRequest::new(request, index, &limits, events.clone(), permit);
            if let (Some(prefix), Some(hasher)) = (prefix, &hasher) {
                live.track_prefix(prefix, hasher.clone());
            }
            self.live.insert(id, live);
            added.push(id);
        }
        if let Some(&first) = ids.first() {
            self.groups
                .insert(first, Group::new(ids.len(), request.max_new_tokens));
        }
        Ok(())
    }

    fn cancel(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(live) = self.live.remove(id) {
                self.parts.scheduler.cancel(RequestId(*id));
                self.end(*id, &live, Ending::Gone);
            }
        }
    }

    /// Requests whose client is gone leave before they cost another iteration (a queued one
    /// never reaches its prefill).
    fn cancel_departed(&mut self) {
        let gone: Vec<u64> = (self.live.iter())
            .filter(|(_, live)| live.is_gone())
            .map(|(id, _)| *id)
            .collect();
        self.cancel(&gone);
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
            Ok(outcomes) => {
                self.iteration_succeeded();
                outcomes
            }
            Err(error) => {
                self.iteration_failed(&error);
                for item in &batch.items {
                    if let Some(live) = self.live.remove(&item.id.0) {
                        self.fail(item.id.0, live, error.clone());
                    }
                    self.parts.scheduler.cancel(item.id);
                }
                Vec::new()
            }
        };
        // The scheduler frees exactly the requests the engine reported finished.
        self.parts.scheduler.complete(&mut self.parts.kv, &outcomes);
        let seconds = started.elapsed().as_secs_f64();
        self.parts.scheduler.observe_iteration(
            batch.prefill_tokens(),
            batch.decode_tokens(),
            seconds,
        );
        let m = &self.parts.metrics;
        // Tokens this step ran (prefill chunks + decodes): where the Sarathi budget's use shows.
        m.iteration_tokens.observe(batch.total_tokens() as f64);
        if batch.token_budget > 0 {
            m.budget_used
                .observe(batch.total_tokens() as f64 / batch.token_budget as f64);
        }
        m.token_budget.set(batch.token_budget as i64);
        self.update_gauges();
    }

    fn iteration_succeeded(&mut self) {
        if self.consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
            tracing::info!("the engine recovered: iterations succeed again");
        }
        self.consecutive_failures = 0;
        self.health.failing.store(false, Ordering::Release);
    }

    fn iteration_failed(&mut self, error: &EngineError) {
        self.consecutive_failures += 1;
        self.parts.metrics.engine_failures.inc();
        tracing::error!(%error, consecutive = self.consecutive_failures, "batch failed; failing its requests");
        if self.consecutive_failures == MAX_CONSECUTIVE_FAILURES {
            tracing::error!(
                "{MAX_CONSECUTIVE_FAILURES} iterations failed in a row: not ready, refusing new requests"
            );
            self.health.failing.store(true, Ordering::Release);
        }
    }

    /// Preempted, cancelled and aborted requests of this batch.
    fn settle_departures(&mut self, batch: &Batch) {
        self.parts
            .metrics
            .preemptions
            .inc_by(batch.preempted.len() as u64);
        for (id, reason) in &batch.aborted {
            if let Some(live) = self.live.remove(&id.0) {
                {
                    let _span = request_span(&live).entered();
                    tracing::warn!(%reason, "aborted by the scheduler");
                }
                self.fail(id.0, live, EngineError::Aborted(reason.clone()));
            }
        }
    }

    /// Waits for the batch's KV, runs the model, delivers tokens. Returns the outcomes of the
    /// sampling items.
    fn run_batch(&mut self, batch: &Batch) -> Result<Vec<StepOutcome>, EngineError> {
        let now = Instant::now();
        for item in &batch.items {
            self.parts.kv.wait_ready(item.slot, item.end_pos())?;
            if let Some(live) = self.live.get_mut(&item.id.0) {
                if !item.is_decode {
                    live.prefill_chunks += 1;
                }
                if live.first_scheduled.is_none() {
                    live.first_scheduled = Some(now);
                    // Looked up once, at admission to the batch (as vLLM counts new requests;
                    // a recompute after preemption is not a new query); no lookups with
                    // prefix caching off, as in vLLM.
                    live.cached_tokens = item.start_pos.min(live.prompt_len);
                    if self.parts.prefix_caching.is_some() {
                        (self.parts.metrics)
                            .prefix_cache_lookup(live.prompt_len, live.cached_tokens);
                    }
                }
            }
        }
        // Constrained choices lend their guides to the mask thread for the forward pass.
        let lent: Vec<(u64, crate::guide::Guide)> = (batch.items.iter())
            .filter(|item| item.samples)
            .filter_map(|item| {
                let guide = self.live.get_mut(&item.id.0)?.lend_guide()?;
                Some((item.id.0, guide))
            })
            .collect();
        let masks = match lent.is_empty() {
            true => None,
            false => Some(self.start_masks(lent)?),
        };
        let mut chunks = Vec::with_capacity(batch.items.len());
        for item in &batch.items {
            let live = self
                .live
                .get(&item.id.0)
                .ok_or_else(|| EngineError::Internal(format!("{} has no engine state", item.id)))?;
            let tokens = live
                .tokens
                .get(item.start_pos..item.end_pos())
                .ok_or_else(|| {
                    EngineError::Internal(format!(
                        "{} has no tokens at {}..{}",
                        item.id,
                        item.start_pos,
                        item.end_pos()
                    ))
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
        let logits = self.parts.model.forward(&chunks, &self.parts.kv);
        drop(chunks);
        let mut masks = match masks {
            Some(thread) => self.collect_masks(thread)?,
            None => HashMap::new(),
        };
        let logits = logits?;
        let now = Instant::now();
        let delivered = self.deliver_all(batch, &logits, &mut masks);
        let mut outcomes = Vec::with_capacity(delivered.len());
        for (index, delivered) in delivered {
            let item = &batch.items[index];
            let finished = match delivered {
                Ok(ending) => {
                    self.observe_token(item.id.0, now);
                    match ending {
                        None => false,
                        Some(ending) => {
                            if let Some(live) = self.live.remove(&item.id.0) {
                                self.end(item.id.0, &live, ending);
                            }
                            true
                        }
                    }
                }
                Err(error) => {
                    if let Some(live) = self.live.remove(&item.id.0) {
                        self.fail(item.id.0, live, error);
                    }
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

    /// A token of request `id` was produced at `now`: generation counter, TTFT or inter-token
    /// latency.
    fn observe_token(&mut self, id: u64, now: Instant) {
        let Some(live) = self.live.get_mut(&id) else {
            return;
        };
        let m = &self.parts.metrics;
        m.generation_tokens.inc();
        match live.last_token_at {
            None => {
                // Counted once per request, like `usage.prompt_tokens` (recomputes are not).
                m.prompt_counted(live.prompt_len, live.cached_tokens);
                m.ttft.observe((now - live.arrival).as_secs_f64());
                live.first_token_at = Some(now);
            }
            Some(previous) => m.observe_inter_token((now - previous).as_secs_f64()),
        }
        live.last_token_at = Some(now);
    }

    /// Samples, detokenizes and streams each sampling item's token: `(item index, result)` in
    /// batch order. Large batches spread the work over the CPU's cores (each request's output
    /// is independent), so turning tokens into text does not lengthen the iteration.
    fn deliver_all(
        &mut self,
        batch: &Batch,
        logits: &Logits,
        masks: &mut HashMap<u64, Result<TokenMask, GuideError>>,
    ) -> Vec<(usize, Delivered)> {
        let index_of: HashMap<u64, usize> = (batch.items.iter().enumerate())
            .map(|(index, item)| (item.id.0, index))
            .collect();
        let mut targets: Vec<Target<'_>> = (self.live.iter_mut())
            .filter_map(|(id, live)| {
                let index = *index_of.get(id)?;
                Some((index, live, masks.remove(id)))
            })
            .collect();
        let deliver = |(index, live, mask): &mut Target<'_>| match mask.take().transpose() {
            Ok(mask) => live
                .deliver(logits.picked(*index), logits.rows(*index).next(), mask)
                .map(|delivered| (*index, delivered)),
            Err(error) => Some((*index, Err(error.into()))),
        };
        let mut delivered: Vec<(usize, Delivered)> = if targets.len() >= PARALLEL_DELIVERY {
            targets.par_iter_mut().filter_map(deliver).collect()
        } else {
            targets.iter_mut().filter_map(deliver).collect()
        };
        delivered.sort_unstable_by_key(|(index, _)| *index);
        delivered
    }

    /// Hands lent guides to the mask thread (started on first use); returns it, to collect.
    fn start_masks(
        &mut self,
        lent: Vec<(u64, crate::guide::Guide)>,
    ) -> Result<MaskThread, EngineError> {
        let thread = match self.masks.take() {
            Some(thread) => thread,
            None => MaskThread::spawn()
                .map_err(|e| EngineError::Internal(format!("starting the mask thread: {e}")))?,
        };
        thread.start(lent)?;
        Ok(thread)
    }

    /// Waits for the masks, gives each guide back to its choice; the masks by engine id.
    fn collect_masks(
        &mut self,
        thread: MaskThread,
    ) -> Result<HashMap<u64, Result<TokenMask, GuideError>>, EngineError> {
        let computed = thread.finish()?;
        self.masks = Some(thread);
        Ok(computed
            .into_iter()
            .filter_map(|c| {
                self.live.get_mut(&c.id)?.return_guide(c.guide);
                Some((c.id, c.mask))
            })
            .collect())
    }

    /// Records the end of choice `id` in the metrics and its log line.
    fn end(&mut self, id: u64, live: &LiveRequest, ending: Ending) {
        let finished = matches!(ending, Ending::Finished(_));
        let max_tokens = self.choice_ended(id, live, finished);
        let m = &self.parts.metrics;
        let reason = match ending {
            Ending::Finished(reason) => {
                let phases = Phases {
                    arrival: live.arrival,
                    first_scheduled: live.first_scheduled,
                    first_token: live.first_token_at,
                    last_token: live.last_token_at,
                };
                m.observe_finished(&stats::finished(
                    phases,
                    Instant::now(),
                    live.prompt_len,
                    live.generated(),
                    max_tokens,
                ));
                reason.as_str()
            }
            Ending::Gone => "abort",
        };
        m.finished(reason);
        if self.parts.log_requests {
            let _span = request_span(live).entered();
            tracing::info!(
                finish_reason = reason,
                prompt_tokens = live.prompt_len,
                completion_tokens = live.generated(),
                prefill_chunks = live.prefill_chunks,
                cached_tokens = live.cached_tokens,
                queue_s = live
                    .first_scheduled
                    .map(|at| (at - live.arrival).as_secs_f64()),
                e2e_s = live.arrival.elapsed().as_secs_f64(),
                "request finished"
            );
        }
    }

    /// Ends choice `id` with an error (its client gets the error as its last event).
    fn fail(&mut self, id: u64, live: LiveRequest, error: EngineError) {
        self.choice_ended(id, &live, false);
        self.parts.metrics.finished("error");
        live.fail(error);
    }

    /// Counts choice `id` out of its request; once the request's last choice ended, observes
    /// its `n` and longest generation. Returns the request's `max_tokens`.
    fn choice_ended(&mut self, id: u64, live: &LiveRequest, finished: bool) -> usize {
        let Some(first) = id.checked_sub(live.index as u64) else {
            return 0;
        };
        let Some(group) = self.groups.get_mut(&first) else {
            return 0;
        };
        let max_tokens = group.max_tokens;
        if let Some(max_generated) = group.choice_ended(live.generated(), finished) {
            self.parts
                .metrics
                .observe_request_group(group.n, max_generated);
        }
        if group.is_done() {
            self.groups.remove(&first);
        }
        max_tokens
    }

    fn update_gauges(&mut self) {
        let m = &self.parts.metrics;
        let sched = self.parts.scheduler.stats();
        m.set_scheduler_state(sched.running, sched.waiting);
        let kv = self.parts.kv.stats();
        m.set_kv_usage(kv.usage);
        m.kv_pages_mapped.set(kv.pages_mapped as i64);
        m.kv_pages_free.set(kv.pages_free as i64);
        m.kv_pages_total.set(kv.pages_total as i64);
        m.kv_wasted_bytes.set(kv.wasted_bytes as i64);
        m.kv_map_stalls
            .inc_by(kv.map_stalls.saturating_sub(self.stalls_seen));
        self.stalls_seen = kv.map_stalls;
        m.kv_map_stall_seconds
            .inc_by((kv.map_stall_seconds - self.stall_seconds_seen).max(0.0));
        self.stall_seconds_seen = kv.map_stall_seconds;
        for seconds in self.parts.kv.drain_latencies().map_per_page {
            m.kv_map_seconds.observe(seconds.as_secs_f64());
        }
        m.kv_shared_pages.set(kv.pages_shared as i64);
    }
}

/// The span every engine log line about one choice is written in: a child of the request's
/// span on the server (a root span when there is none), naming the request id either way.
fn request_span(live: &LiveRequest) -> tracing::Span {
    tracing::info_span!(parent: &live.span, "engine", request_id = %live.request_id, choice = live.index)
}
