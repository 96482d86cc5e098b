//! The engine thread end to end on a tiny dummy model with the real CPU KV region and the real
//! SmolLM2 tokenizer: requests finish for the engine's own reasons (length, stop strings),
//! cancellation at any stage (queued, mid-prefill, decoding) gives every KV page back, admission
//! places come back when generation ends however slowly the client reads, and a panicking or
//! failing forward pass is seen by the health checks.

// Test scaffolding: a failed setup step is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

mod support;

use fused_daemon::engine::{
    self, EngineError, EngineHandle, EngineParts, Event, FinishReason, GenerateRequest,
    RequestStream, StopReason,
};
use fused_daemon::kv::{KvAccess, KvConfig, KvLayout, KvManager};
use fused_daemon::metrics::{CacheInfo, Metrics};
use fused_daemon::model::sampling::SamplingParams;
use fused_daemon::model::{Forward, Logits, Model, ModelConfig, ModelError, SeqChunk};
use fused_daemon::tokenizer::fixtures;
use support::Engine;

/// What the engine runs: the dummy model, or a wrapper that misbehaves.
enum Kind {
    Plain,
    /// Panics on this forward call (counting from 1).
    PanicsAt(usize),
    /// Every forward call fails.
    AlwaysFails,
    /// The model has 64 rows past the tokenizer's ids (a padded vocabulary), and those rows
    /// score highest if the model scores them (it must not: `Forward::limit_output_ids`).
    PaddingWins,
}

struct Faulty {
    model: Model,
    kind: Kind,
    calls: Arc<AtomicUsize>,
}

impl Forward for Faulty {
    fn config(&self) -> &ModelConfig {
        &self.model.config
    }

    fn kv_element_bytes(&self) -> usize {
        self.model.kv_element_bytes()
    }

    fn limit_output_ids(&mut self, ids: usize) {
        self.model.limit_output_ids(ids);
    }

    fn quantization(&self) -> &'static str {
        self.model.quantization()
    }

    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        kv: &dyn KvAccess,
    ) -> Result<Logits, ModelError> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        match self.kind {
            Kind::PanicsAt(at) if call == at => panic!("injected panic in forward call {call}"),
            Kind::AlwaysFails => Err(ModelError::Device("injected device failure".into())),
            Kind::PaddingWins => {
                // Whatever rows the model scores past the tokenizer's ids win.
                let mut logits = self.model.forward(chunks, kv)?;
                let decodable = self.model.config.vocab_size - PADDING_ROWS;
                let from = decodable.min(logits.vocab);
                for row in logits.data.chunks_mut(logits.vocab) {
                    row[from..].fill(1e4);
                }
                Ok(logits)
            }
            _ => self.model.forward(chunks, kv),
        }
    }
}

fn start(max_seqs: usize, budget: usize) -> Option<Engine> {
    start_with(max_seqs, budget, Kind::Plain)
}

/// Rows of [`Kind::PaddingWins`]'s model past the tokenizer's ids.
const PADDING_ROWS: usize = 64;

fn start_with(max_seqs: usize, budget: usize, kind: Kind) -> Option<Engine> {
    let codec = fixtures::smollm2()?;
    let tiny = ModelConfig::preset("tiny-llama").unwrap();
    // Big enough that a step takes a noticeable fraction of a millisecond.
    let config = ModelConfig {
        hidden: 256,
        layers: 4,
        head_dim: 64,
        ffn: 768,
        vocab_size: match kind {
            Kind::PaddingWins => codec.vocab_size() + PADDING_ROWS,
            _ => tiny.vocab_size,
        },
        ..tiny
    };
    let model = Model::dummy(config, 0).unwrap();
    let c = &model.config;
    let kv = KvManager::cpu(&KvConfig {
        max_seqs,
        max_context_len: 1024,
        layout: KvLayout::Interleaved,
        pool_bytes: 64 << 20,
        ..KvConfig::for_model(c.layers, c.kv_heads, c.head_dim, model.kv_element_bytes())
    })
    .unwrap();
    let scheduler = support::sarathi(budget, max_seqs, 32);
    let cache = CacheInfo::from_kv(&kv.stats(), 4, 1.0, false);
    let metrics = Arc::new(Metrics::new("tiny", 1024, &cache).unwrap());
    Some(Engine::spawn(EngineParts {
        model: Box::new(Faulty {
            model,
            kind,
            calls: Arc::default(),
        }),
        kv,
        scheduler,
        metrics: metrics.clone(),
        codec,
        eos_ids: vec![],
        max_context: 1024,
        capacity: 32,
        log_requests: true,
        prefix_caching: None,
    }))
}

fn request(prompt_len: usize, max_new_tokens: usize) -> GenerateRequest {
    support::greedy_request(
        format!("test-{prompt_len}-{max_new_tokens}"),
        (0..prompt_len as u32).map(|i| 20 + i * 7 % 480).collect(),
        SamplingParams::greedy(),
        max_new_tokens,
    )
}

async fn submit(engine: &EngineHandle, request: GenerateRequest) -> RequestStream {
    let permit = engine.admit(request.n).unwrap();
    engine.submit(permit, request).await.unwrap()
}

/// Everything one choice produced: its text, token count and how it ended.
async fn run_to_end(
    stream: &mut RequestStream,
) -> (String, usize, FinishReason, Option<StopReason>) {
    let (mut text, mut tokens) = (String::new(), 0);
    loop {
        match stream.next().await.expect("an event") {
            Event::Output {
                text: t,
                tokens: sampled,
                ..
            } => {
                text.push_str(&t);
                tokens += sampled.len();
            }
            Event::Finished {
                reason,
                stop_reason,
                completion_tokens,
                ..
            } => {
                assert_eq!(
                    completion_tokens, tokens,
                    "every token was sent with output"
                );
                return (text, tokens, reason, stop_reason);
            }
            Event::Failed { error, .. } => panic!("failed: {error}"),
        }
    }
}

/// Waits until no request runs or waits and no KV page is held.
async fn wait_idle(metrics: &Metrics) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let idle = metrics.requests_running.get() == 0
            && metrics.requests_waiting.get() == 0
            && metrics.kv_usage() == 0.0;
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

/// `vllm:request_success_total{finished_reason=reason}`.
fn finished(metrics: &Metrics, reason: &str) -> u64 {
    let text = metrics.render().unwrap();
    let label = format!("\"{reason}\"");
    text.lines()
        .find(|l| l.starts_with("vllm:request_success_total") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

fn aborted(metrics: &Metrics) -> u64 {
    finished(metrics, "abort")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_finish_with_exactly_max_tokens() {
    let Some(Engine {
        handle: engine,
        metrics,
        thread,
    }) = start(4, 32)
    else {
        return;
    };
    let mut streams = Vec::new();
    for i in 0..6 {
        streams.push(submit(&engine, request(20 + i * 13, 9)).await);
    }
    for stream in &mut streams {
        let (_, tokens, reason, _) = run_to_end(stream).await;
        assert_eq!((tokens, reason), (9, FinishReason::Length));
    }
    wait_idle(&metrics).await;
    assert_eq!(engine.in_flight(), 0, "permits come back when requests end");
    assert_eq!(finished(&metrics, "length"), 6);
    engine.shutdown();
    drop(streams);
    thread.join().unwrap();
}

/// A model with more rows than its tokenizer has ids (Qwen2's padded vocabulary) never outputs
/// an id the tokenizer cannot decode, greedy or sampled, even when those rows score highest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_the_tokenizer_are_never_sampled() {
    let Some(Engine {
        handle: engine,
        metrics,
        thread,
    }) = start_with(4, 32, Kind::PaddingWins)
    else {
        return;
    };
    let sampled = SamplingParams {
        temperature: 1.0,
        seed: Some(3),
        ..SamplingParams::greedy()
    };
    let mut streams = Vec::new();
    for (i, sampling) in [SamplingParams::greedy(), sampled].into_iter().enumerate() {
        let mut request = request(20 + i, 6);
        request.sampling = sampling;
        streams.push(submit(&engine, request).await);
    }
    for stream in &mut streams {
        let (_, tokens, reason, _) = run_to_end(stream).await;
        assert_eq!((tokens, reason), (6, FinishReason::Length));
    }
    wait_idle(&metrics).await;
    assert_eq!(finished(&metrics, "length"), 2);
    engine.shutdown();
    drop(streams);
    thread.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_at_any_stage_frees_kv() {
    // One running sequence and a 4-token budget: a second request waits in the queue, a long
    // prompt is prefilled over many chunks.
    let Some(Engine {
        handle: engine,
        metrics,
        thread,
    }) = start(1, 4)
    else {
        return;
    };
    let mut running = submit(&engine, request(10, 1000)).await;
    assert!(matches!(running.next().await, Some(Event::Output { .. })));
    let queued = submit(&engine, request(30, 5)).await;
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
    let prefilling = submit(&engine, request(960, 50)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_string_ends_the_request_as_stop_with_its_latency_recorded() {
    let Some(Engine {
        handle: engine,
        metrics,
        thread,
    }) = start(2, 64)
    else {
        return;
    };
    // Greedy on fixed weights: the same text every time. Stop on a piece of its middle.
    let mut first = submit(&engine, request(12, 40)).await;
    let (full, _, _, _) = run_to_end(&mut first).await;
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() >= 8, "enough text to cut: {full:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut = full.find(&stop).unwrap();
    // The engine records a finish right after sending its last event: wait for the first one.
    let deadline = Instant::now() + Duration::from_secs(20);
    while finished(&metrics, "length") < 1 {
        assert!(
            Instant::now() < deadline,
            "the first request is never counted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let e2e_before = metrics.e2e.get_sample_count();
    let mut stopped = submit(
        &engine,
        GenerateRequest {
            stop: vec![stop.clone()],
            ..request(12, 40)
        },
    )
    .await;
    let (text, tokens, reason, stop_reason) = run_to_end(&mut stopped).await;
    assert_eq!(text, full[..cut], "the output ends before the stop string");
    assert!(tokens < 40);
    assert_eq!(reason, FinishReason::Stop);
    assert_eq!(stop_reason, Some(StopReason::Text(stop)));
    wait_idle(&metrics).await;
    assert_eq!(finished(&metrics, "stop"), 1, "counted as stop");
    assert_eq!(aborted(&metrics), 0, "not as abort");
    assert_eq!(
        metrics.e2e.get_sample_count(),
        e2e_before + 1,
        "its latency is recorded"
    );
    engine.shutdown();
    thread.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_places_come_back_when_generation_ends_not_when_the_client_reads() {
    let Some(Engine {
        handle: engine,
        metrics,
        thread,
    }) = start(4, 64)
    else {
        return;
    };
    // A client that never reads its stream.
    let unread = submit(&engine, request(16, 20)).await;
    assert_eq!(engine.in_flight(), 1);
    let deadline = Instant::now() + Duration::from_secs(20);
    while finished(&metrics, "length") == 0 {
        assert!(Instant::now() < deadline, "the request never finished");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        engine.in_flight(),
        0,
        "the place is back while the stream is unread"
    );
    drop(unread);
    engine.shutdown();
    thread.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_forward_stops_the_engine_and_fails_in_flight_requests() {
    let Some(Engine {
        handle: engine,
        metrics: _,
        thread,
    }) = start_with(2, 64, Kind::PanicsAt(3))
    else {
        return;
    };
    let mut stream = submit(&engine, request(8, 50)).await;
    let error = loop {
        match stream.next().await {
            Some(Event::Failed { error, .. }) => break error,
            Some(_) => {}
            None => panic!("the stream ended without an error"),
        }
    };
    assert!(matches!(error, EngineError::Panicked), "{error}");
    tokio::time::timeout(Duration::from_secs(5), engine.stopped())
        .await
        .expect("the engine reports it stopped");
    assert!(!engine.is_alive() && engine.has_panicked());
    assert!(matches!(engine.admit(1), Err(EngineError::Stopped)));
    thread.join().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_that_always_fails_marks_the_engine_failing() {
    let Some(Engine {
        handle: engine,
        metrics,
        thread,
    }) = start_with(2, 64, Kind::AlwaysFails)
    else {
        return;
    };
    for attempt in 0..engine::MAX_CONSECUTIVE_FAILURES {
        assert!(engine.is_healthy(), "healthy before failure {attempt}");
        let mut stream = submit(&engine, request(8, 5)).await;
        match stream.next().await {
            Some(Event::Failed {
                error: EngineError::Forward(_),
                ..
            }) => {}
            other => panic!("expected a forward error, got {other:?}"),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.is_healthy() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!engine.is_healthy(), "not ready after repeated failures");
    assert!(engine.is_alive(), "the thread still runs");
    assert!(matches!(engine.admit(1), Err(EngineError::Unhealthy)));
    assert_eq!(
        metrics.engine_failures.get(),
        u64::from(engine::MAX_CONSECUTIVE_FAILURES)
    );
    engine.shutdown();
    thread.join().unwrap();
}
