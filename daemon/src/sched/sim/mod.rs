//! Deterministic serving simulator: drives the real [`Scheduler`] through an arrival trace
//! with simulated KV accounting ([`SimKv`]) and iteration times from a [`CostModel`].
//!
//! Must not: contain scheduling logic of its own; it plays the engine (feeds arrivals, "runs"
//! batches, reports tokens) and checks the scheduler's invariants as it goes.

mod cost;
mod report;
mod trace;

use std::time::Duration;

pub use cost::CostModel;
pub use report::{SimReport, percentile};
pub use trace::{RequestClass, TraceConfig, TraceError, TraceRequest};

use crate::kv::SlotId;
use crate::kv::{KvBudget, KvError};
use crate::sched::{
    ConfigError, Policy, RequestId, SchedError, Scheduler, SchedulerConfig, SeqRequest, SimKv,
    StepOutcome, TokenBudget,
};

/// The simulated KV pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvShape {
    pub tokens_per_page: usize,
    pub total_pages: usize,
    /// One sequence's capacity (context length).
    pub max_tokens_per_slot: usize,
    /// Tokens of growth the KV manager maps ahead of each reservation (its look-ahead).
    pub lookahead_tokens: usize,
}

impl KvShape {
    /// A pool of `pool_bytes` holding `bytes_per_token` of K/V per token, in pages of
    /// `tokens_per_page` tokens.
    pub fn from_bytes(
        pool_bytes: u64,
        bytes_per_token: u64,
        tokens_per_page: usize,
        max_tokens_per_slot: usize,
    ) -> Self {
        let page_bytes = bytes_per_token
            .saturating_mul(tokens_per_page as u64)
            .max(1);
        KvShape {
            tokens_per_page,
            total_pages: usize::try_from(pool_bytes / page_bytes).unwrap_or(usize::MAX),
            max_tokens_per_slot,
            lookahead_tokens: crate::kv::DEFAULT_LOOKAHEAD_TOKENS,
        }
    }
}

/// One simulated configuration: a labelled scheduler setting on a KV pool and a GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct SimSetup {
    pub label: String,
    pub scheduler: SchedulerConfig,
    pub kv: KvShape,
    pub cost: CostModel,
}

/// A run that could not complete, or a scheduler invariant the run caught being broken.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("scheduler config: {0}")]
    Config(#[from] ConfigError),
    #[error("simulated KV: {0}")]
    Kv(#[from] KvError),
    #[error("scheduler: {0}")]
    Sched(#[from] SchedError),
    #[error("scheduler stalled at {clock_s:.3} s: work left but three empty batches in a row")]
    Stalled { clock_s: f64 },
    #[error("batch of {tokens} tokens exceeds its budget of {budget}")]
    BudgetExceeded { tokens: usize, budget: usize },
    #[error("KV leaked at the end: {free} of {total} pages free, {slots} slots still held")]
    Leak {
        free: usize,
        total: usize,
        slots: usize,
    },
    #[error("{missing} requests neither finished nor were aborted or rejected")]
    Lost { missing: usize },
}

/// A run specification as written on the command line: `POLICY:BUDGET`, where BUDGET is a
/// token count or `auto` (e.g. `sarathi:512`, `prefill-first:8192`, `sarathi:auto`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunSpec {
    pub policy: Policy,
    pub budget: Option<usize>,
}

/// A `POLICY:BUDGET` that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunSpecError {
    #[error("run {0:?} is not POLICY:BUDGET (e.g. sarathi:512 or sarathi:auto)")]
    Shape(String),
    #[error("run {spec:?}: {source}")]
    Policy { spec: String, source: ConfigError },
    #[error("run {0:?}: budget must be a positive token count or auto")]
    Budget(String),
}

impl std::str::FromStr for RunSpec {
    type Err = RunSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let (policy, budget) = spec
            .split_once(':')
            .ok_or_else(|| RunSpecError::Shape(spec.to_string()))?;
        let policy = policy
            .parse::<Policy>()
            .map_err(|source| RunSpecError::Policy {
                spec: spec.to_string(),
                source,
            })?;
        let budget = match budget {
            "auto" => None,
            tokens => match tokens.parse::<usize>() {
                Ok(tokens) if tokens > 0 => Some(tokens),
                _ => return Err(RunSpecError::Budget(spec.to_string())),
            },
        };
        Ok(RunSpec { policy, budget })
    }
}

impl RunSpec {
    /// The scheduler config for this run; `auto` becomes an auto budget with `auto`'s settings.
    pub fn scheduler_config(
        &self,
        max_num_seqs: usize,
        auto_target: Duration,
        auto_range: (usize, usize),
    ) -> SchedulerConfig {
        let token_budget = match self.budget {
            Some(tokens) => TokenBudget::Fixed(tokens),
            None => TokenBudget::Auto {
                tbt_target: auto_target,
                min: auto_range.0,
                max: auto_range.1,
            },
        };
        SchedulerConfig {
            token_budget,
            max_num_seqs,
            // The simulator measures queueing; it never refuses a request for a full queue.
            max_queue: usize::MAX,
            policy: self.policy,
        }
    }

    pub fn label(&self, auto_target: Duration) -> String {
        match self.budget {
            Some(tokens) => format!("{} {tokens}", self.policy.name()),
            None => format!(
                "{} auto ({} ms)",
                self.policy.name(),
                auto_target.as_millis()
            ),
        }
    }
}

/// What the simulated engine knows of one request.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    arrival_s: f64,
    output_tokens: usize,
    generated: usize,
    last_token_s: Option<f64>,
}

/// Runs `trace` through the real scheduler under `setup`, checking on every iteration that the
/// budget holds, and at the end that every request finished (or was aborted or rejected with a
/// reason) and every KV page is back in the pool.
pub fn run(trace: &[TraceRequest], setup: &SimSetup) -> Result<SimReport, SimError> {
    let mut scheduler = Scheduler::new(setup.scheduler.clone())?;
    let mut kv = SimKv::new(
        setup.kv.tokens_per_page,
        setup.kv.total_pages,
        setup.scheduler.max_num_seqs,
        setup.kv.max_tokens_per_slot,
    )?
    .with_lookahead(setup.kv.lookahead_tokens);
    let mut tracked: Vec<Tracked> = trace
        .iter()
        .map(|request| Tracked {
            arrival_s: request.arrival_s,
            output_tokens: request.output_tokens,
            generated: 0,
            last_token_s: None,
        })
        .collect();
    let mut report = SimReport {
        label: setup.label.clone(),
        requests: trace.len(),
        ..SimReport::default()
    };
    let mut clock_s = 0.0;
    let mut next_arrival = 0;
    let mut empty_streak = 0;
    let mut budget_sum = 0u64;
    loop {
        while let Some(request) = trace.get(next_arrival).filter(|r| r.arrival_s <= clock_s) {
            let added = scheduler.add(SeqRequest::new(
                RequestId(next_arrival as u64),
                request.prompt_tokens,
            ));
            if added.is_err() {
                report.rejected += 1;
            }
            next_arrival += 1;
        }
        if scheduler.is_idle() {
            match trace.get(next_arrival) {
                Some(request) => {
                    clock_s = request.arrival_s;
                    continue;
                }
                None => break,
            }
        }
        let held_before: Vec<usize> = (0..setup.scheduler.max_num_seqs)
            .map(|slot| {
                SlotId::try_from(slot)
                    .ok()
                    .and_then(|slot| kv.pages_held(slot))
                    .unwrap_or(0)
            })
            .collect();
        let batch = scheduler.schedule(&mut kv)?;
        report.aborted += batch.aborted.len();
        report.late_decode_pages += batch
            .items
            .iter()
            .filter(|item| item.is_decode)
            .map(|item| {
                let needed = item.end_pos().div_ceil(setup.kv.tokens_per_page);
                let before = held_before.get(item.slot as usize).copied().unwrap_or(0);
                needed.saturating_sub(before) as u64
            })
            .sum::<u64>();
        let tokens = batch.total_tokens();
        if tokens > batch.token_budget {
            return Err(SimError::BudgetExceeded {
                tokens,
                budget: batch.token_budget,
            });
        }
        if batch.is_empty() {
            // Legitimate once (a lone decode preempted itself); never three times in a row.
            scheduler.complete(&mut kv, &[]);
            empty_streak += 1;
            if empty_streak >= 3 {
                return Err(SimError::Stalled { clock_s });
            }
            continue;
        }
        empty_streak = 0;
        let seconds = setup.cost.iteration_s(&batch);
        clock_s += seconds;
        report.iterations += 1;
        budget_sum += batch.token_budget as u64;
        let mut outcomes = Vec::new();
        for item in batch.items.iter().filter(|item| item.samples) {
            let Some(request) = usize::try_from(item.id.0)
                .ok()
                .and_then(|i| tracked.get_mut(i))
            else {
                continue;
            };
            request.generated += 1;
            match request.last_token_s {
                None => report.ttft_s.push(clock_s - request.arrival_s),
                Some(previous) => report.tbt_s.push(clock_s - previous),
            }
            request.last_token_s = Some(clock_s);
            let finished = request.generated >= request.output_tokens;
            outcomes.push(StepOutcome {
                id: item.id,
                finished,
            });
        }
        report.output_tokens += outcomes.len() as u64;
        for id in scheduler.complete(&mut kv, &outcomes) {
            report.finished += 1;
            if let Some(request) = trace.get(id.0 as usize) {
                report.prompt_tokens += request.prompt_tokens as u64;
            }
        }
        scheduler.observe_iteration(batch.prefill_tokens(), batch.decode_tokens(), seconds);
    }
    report.preemptions = scheduler.stats().preemptions_total;
    report.makespan_s = clock_s - trace.first().map_or(0.0, |request| request.arrival_s);
    report.mean_token_budget = if report.iterations > 0 {
        budget_sum as f64 / report.iterations as f64
    } else {
        0.0
    };
    check_end_state(&report, &kv)?;
    Ok(report)
}

fn check_end_state(report: &SimReport, kv: &SimKv) -> Result<(), SimError> {
    if kv.free_pages() != kv.total_pages() || kv.slots_in_use() != 0 {
        return Err(SimError::Leak {
            free: kv.free_pages(),
            total: kv.total_pages(),
            slots: kv.slots_in_use(),
        });
    }
    let accounted = report.finished + report.aborted + report.rejected;
    if accounted != report.requests {
        return Err(SimError::Lost {
            missing: report.requests.saturating_sub(accounted),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
