//! Drives one run: warm-up requests, then requests sent on the arrival process (each a task
//! that may wait for a `--max-concurrency` slot), until `--num-prompts` were sent or the
//! `--duration` passed, then waits for every response. Shows a progress bar; optionally
//! watches the server's `/metrics` meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::bench::BenchError;
use crate::bench::arrivals::ArrivalProcess;
use crate::bench::client::{Endpoint, RequestRecord};
use crate::bench::conversation::{next_turn, turn_prompt};
use crate::bench::dataset::BenchPrompt;
use crate::bench::scrape::{ServerMetrics, watch_server};

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Requests per second (`f64::INFINITY`: all at once).
    pub request_rate: f64,
    pub burstiness: f64,
    pub seed: u64,
    pub max_concurrency: Option<usize>,
    /// Requests to send (prompts are reused in order when the run is longer than the dataset).
    pub num_prompts: usize,
    /// Turns per conversation: 1 sends independent requests; more sends conversations whose
    /// turns follow one another, each extending the last ([`conversation`](crate::bench::conversation)).
    pub turns: usize,
    /// Send until this much time has passed instead of `num_prompts` requests.
    pub duration: Option<Duration>,
    /// Requests sent and awaited one by one before the run (not measured).
    pub warmups: usize,
    pub show_progress: bool,
    /// `/metrics` URL to watch during the run.
    pub scrape_url: Option<String>,
}

/// The raw outcome of a run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// In the order the requests were sent.
    pub records: Vec<RequestRecord>,
    /// From the first request sent to the last response finished.
    pub duration_s: f64,
    pub server: Option<ServerMetrics>,
}

/// Runs the load against `endpoint` with `prompts` (at least one).
pub async fn run(
    endpoint: Arc<Endpoint>,
    prompts: Arc<Vec<BenchPrompt>>,
    load: &LoadSpec,
) -> Result<RunOutcome, BenchError> {
    let mut arrivals = ArrivalProcess::new(load.request_rate, load.burstiness, load.seed)?;
    if load.duration.is_some() && arrivals.is_unpaced() && load.max_concurrency.is_none() {
        return Err(BenchError::BadOption(
            "--duration needs a finite --request-rate or a --max-concurrency".into(),
        ));
    }
    if load.max_concurrency == Some(0) {
        return Err(BenchError::BadOption(
            "--max-concurrency must be at least 1".into(),
        ));
    }
    if prompts.is_empty() {
        return Err(BenchError::BadOption("the dataset gave no prompt".into()));
    }
    if load.turns == 0 {
        return Err(BenchError::BadOption(
            "--multi-turn must be at least 1".into(),
        ));
    }
    // Each arrival starts a conversation of `turns` requests.
    let conversations = load.num_prompts.div_ceil(load.turns);
    warm_up(&endpoint, &prompts[0], load.warmups).await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let scraper = load.scrape_url.clone().map(|url| {
        let http = endpoint.http.clone();
        tokio::spawn(watch_server(http, url, Duration::from_millis(250), stop_rx))
    });
    let slots = load.max_concurrency.map(|n| Arc::new(Semaphore::new(n)));
    let progress = progress_bar(load);
    let start = Instant::now();
    let deadline = load.duration.map(|d| start + d);
    let mut tasks = Vec::new();
    let mut next_at = start;
    for index in 0.. {
        if deadline.is_none() && index >= conversations {
            break;
        }
        if index > 0 {
            next_at += arrivals.next_gap();
        }
        if deadline.is_some_and(|d| next_at >= d) {
            break;
        }
        tokio::time::sleep_until(next_at.into()).await;
        // Unpaced runs are closed loops: wait for a slot before sending the next one.
        let early_permit = match &slots {
            Some(slots) if arrivals.is_unpaced() => Some(acquire(slots).await),
            _ => None,
        };
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let (endpoint, prompts, slots) = (endpoint.clone(), prompts.clone(), slots.clone());
        let progress = progress.clone();
        let turns = load.turns;
        tasks.push(tokio::spawn(async move {
            let _permit = match (early_permit, slots) {
                (Some(permit), _) => Some(permit),
                (None, Some(slots)) => Some(acquire(&slots).await),
                (None, None) => None,
            };
            let mut records = Vec::with_capacity(turns);
            let mut prompt = turn_prompt(&prompts, index, turns, 0).clone();
            for turn in 1..=turns {
                let record = endpoint.send(&prompt, start).await;
                progress.inc(1);
                let go_on = record.success && turn < turns;
                if go_on {
                    let next = turn_prompt(&prompts, index, turns, turn);
                    prompt = next_turn(&prompt, &record, next);
                }
                records.push(record);
                if !go_on {
                    break;
                }
            }
            records
        }));
    }
    let mut records = Vec::with_capacity(tasks.len() * load.turns);
    for task in tasks {
        records.extend(task.await.map_err(|e| BenchError::Server {
            url: endpoint.url.clone(),
            reason: format!("a request task failed: {e}"),
        })?);
    }
    let duration_s = start.elapsed().as_secs_f64();
    progress.finish_and_clear();
    // The receiver may already be gone if the scraper ended; nothing to stop then.
    let _ = stop_tx.send(true);
    let server = match scraper {
        Some(handle) => handle.await.ok(),
        None => None,
    };
    Ok(RunOutcome {
        records,
        duration_s,
        server,
    })
}

async fn acquire(slots: &Arc<Semaphore>) -> OwnedSemaphorePermit {
    slots
        .clone()
        .acquire_owned()
        .await
        .expect("the run never closes its concurrency semaphore")
}

/// Sends `count` requests one by one; the first failure ends the benchmark with its reason.
async fn warm_up(
    endpoint: &Endpoint,
    prompt: &BenchPrompt,
    count: usize,
) -> Result<(), BenchError> {
    for _ in 0..count {
        let record = endpoint.send(prompt, Instant::now()).await;
        if !record.success {
            return Err(BenchError::Server {
                url: endpoint.url.clone(),
                reason: format!(
                    "warm-up request failed: {}",
                    record.error.unwrap_or_default()
                ),
            });
        }
    }
    Ok(())
}

fn progress_bar(load: &LoadSpec) -> ProgressBar {
    if !load.show_progress {
        return ProgressBar::hidden();
    }
    match load.duration {
        None => {
            ProgressBar::new((load.num_prompts.div_ceil(load.turns.max(1)) * load.turns) as u64)
                .with_style(
                ProgressStyle::with_template(
                    "{elapsed_precise} [{wide_bar}] {pos}/{len} requests ({per_sec}, eta {eta})",
                )
                .expect("the progress template is valid"),
            )
        }
        Some(_) => {
            let bar = ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{elapsed_precise} {spinner} {pos} requests done")
                    .expect("the progress template is valid"),
            );
            bar.enable_steady_tick(Duration::from_millis(250));
            bar
        }
    }
}
