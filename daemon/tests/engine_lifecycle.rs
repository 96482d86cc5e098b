//! The engine thread end to end on a tiny dummy model with the real CPU KV region: requests
//! finish, and cancellation at any stage (queued, mid-prefill, decoding) gives every KV page back.

// Test scaffolding: a failed setup step is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use fused_daemon::engine::{self, EngineHandle, EngineParts, Event, FinishReason, GenerateRequest};
use fused_daemon::kv::{KvConfig, KvLayout, KvManager};
use fused_daemon::metrics::Metrics;
use fused_daemon::model::sampling::SamplingParams;
use fused_daemon::model::{Model, ModelConfig};
use fused_daemon::sched::{Policy, Scheduler, SchedulerConfig, TokenBudget};

fn start(
    max_seqs: usize,
    budget: usize,
) -> (EngineHandle, Arc<Metrics>, std::thread::JoinHandle<()>) {
    // Big enough that a step takes a noticeable fraction of a millisecond.
    let config = ModelConfig {
        hidden: 256,
        layers: 4,
        head_dim: 64,
        ffn: 768,
        ..ModelConfig::preset("tiny-llama").unwrap()
    };
    let model = Model::dummy(config, 0).unwrap();
    let c = &model.config;
    let kv = KvManager::cpu(&KvConfig {
        max_seqs,
        max_context_len: 1024,
        layout: KvLayout::Interleaved,
        pool_bytes: 64 << 20,
        ..KvConfig::for_model(c.layers, c.kv_heads, c.head_dim, 4)
    })
    .unwrap();
    let scheduler = Scheduler::new(SchedulerConfig {
        token_budget: TokenBudget::Fixed(budget),
        max_num_seqs: max_seqs,
        max_queue: 16,
        policy: Policy::Sarathi,
        ..SchedulerConfig::sarathi_default()
    })
    .unwrap();
    let metrics = Arc::new(Metrics::new("tiny", 2 << 20, 32).unwrap());
    let (handle, thread) = engine::spawn(EngineParts {
        model: Box::new(model),
        kv,
        scheduler,
        metrics: metrics.clone(),
        eos_ids: vec![],
        capacity: 32,
    })
    .unwrap();
    (handle, metrics, thread)
}

fn request(prompt_len: usize, max_new_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: (0..prompt_len as u32).map(|i| i * 7 % 500).collect(),
        sampling: SamplingParams::greedy(),
        max_new_tokens,
        min_tokens: 0,
        stop_token_ids: vec![],
        ignore_eos: true,
        arrival: Instant::now(),
    }
}

/// Waits until no request runs or waits and no KV page is held.
async fn wait_idle(metrics: &Metrics) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let idle = metrics.requests_running.get() == 0
            && metrics.requests_waiting.get() == 0
            && metrics.kv_usage.get() == 0.0;
        if idle {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "engine not idle: {}",
            metrics.render().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn aborted(metrics: &Metrics) -> u64 {
    let text = metrics.render().unwrap();
    text.lines()
        .find(|l| l.starts_with("vllm:request_success_total") && l.contains("\"abort\""))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_finish_with_exactly_max_tokens() {
    let (engine, metrics, thread) = start(4, 32);
    let mut streams: Vec<_> = (0..6)
        .map(|i| engine.submit(engine.admit(1).unwrap(), request(20 + i * 13, 9)))
        .collect();
    for stream in &mut streams {
        let mut tokens = 0;
        loop {
            match stream.next().await.expect("an event") {
                Event::Token(_) => tokens += 1,
                Event::Finished(reason) => {
                    assert_eq!((tokens, reason), (9, FinishReason::Length));
                    break;
                }
                Event::Failed { message, .. } => panic!("failed: {message}"),
            }
        }
    }
    wait_idle(&metrics).await;
    assert_eq!(engine.in_flight(), 0, "permits come back when streams end");
    engine.shutdown();
    drop(streams);
    thread.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_at_any_stage_frees_kv() {
    // One running sequence and a 4-token budget: a second request waits in the queue, a long
    // prompt is prefilled over many chunks.
    let (engine, metrics, thread) = start(1, 4);
    let mut running = engine.submit(engine.admit(1).unwrap(), request(10, 1000));
    assert!(matches!(running.next().await, Some(Event::Token(_))));
    let queued = engine.submit(engine.admit(1).unwrap(), request(30, 5));
    let deadline = Instant::now() + Duration::from_secs(2);
    while metrics.requests_waiting.get() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    assert_eq!(
        (
            metrics.requests_running.get(),
            metrics.requests_waiting.get()
        ),
        (1, 1),
        "the second request is queued: {}",
        metrics.render().unwrap()
    );
    drop(queued); // cancelled while queued
    drop(running); // cancelled while decoding
    wait_idle(&metrics).await;
    assert_eq!(aborted(&metrics), 2);
    // A 960-token prompt takes 240 chunks of 4 tokens (a window wide enough for a poller on a
    // loaded machine to see it prefilling); cancel it once it runs, before its first token.
    let tokens_before = metrics.generation_tokens.get();
    let prefilling = engine.submit(engine.admit(1).unwrap(), request(960, 50));
    let deadline = Instant::now() + Duration::from_secs(2);
    while metrics.requests_running.get() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    assert_eq!(
        metrics.requests_running.get(),
        1,
        "the long prompt is being prefilled"
    );
    assert_eq!(
        metrics.generation_tokens.get(),
        tokens_before,
        "no token yet: still in prefill"
    );
    drop(prefilling);
    let deadline = Instant::now() + Duration::from_secs(5);
    while aborted(&metrics) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    wait_idle(&metrics).await;
    assert_eq!(aborted(&metrics), 3);
    assert_eq!(engine.in_flight(), 0);
    engine.shutdown();
    thread.join().unwrap();
}
