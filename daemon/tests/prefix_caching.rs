//! Prefix caching end to end on the real SmolLM2 weights, the real CPU KV region and the real
//! engine: prompts that share 0 %, 50 % and 100 % of a cached prompt, and prompts that diverge
//! at and inside a page boundary, produce the same greedy tokens and logprobs (within 1e-5) with
//! prefix caching as without, while the cache really serves their prefixes
//! (`cached_tokens`, `vllm:prefix_cache_hits_total`, shared pages).
//!
//! SmolLM2's K/V rows (30 layers × 3 heads × 64 × f32 = 46,080 bytes) do not divide a 2 MiB
//! page: 45.5 tokens per page, rows straddle pages, so every hit also exercises the partial
//! page copy.

// Test scaffolding: a failed setup step is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

mod support;

use fused_daemon::engine::{EngineHandle, EngineParts, Event, PrefixHasher};
use fused_daemon::kv::{KvConfig, KvLayout, KvManager, PartialPage};
use fused_daemon::metrics::{CacheInfo, Metrics};
use fused_daemon::model::Forward;
use fused_daemon::model::sampling::SamplingParams;
use fused_daemon::tokenizer::{Codec, fixtures};
use support::Engine;

impl Engine {
    fn stop(self) {
        self.handle.shutdown();
        self.thread.join().unwrap();
    }
}

fn start(prefix_caching: bool, partial_page: PartialPage) -> Option<(Engine, Arc<Codec>)> {
    let path = fixtures::smollm2_gguf()?;
    let (model, codec) = fused_daemon::serve::open_model(&path, None).unwrap();
    let c = model.config.clone();
    let kv_config = KvConfig {
        max_seqs: 8,
        max_context_len: 2048,
        layout: KvLayout::Interleaved,
        pool_bytes: 512 << 20,
        prefix_caching,
        partial_page,
        ..KvConfig::for_model(c.layers, c.kv_heads, c.head_dim, model.kv_element_bytes())
    };
    let kv = KvManager::cpu(&kv_config).unwrap();
    assert_eq!(
        kv.geometry().run_token_bytes,
        46_080,
        "rows straddle 2 MiB pages"
    );
    let scheduler = support::sarathi(256, 8, 64);
    let cache = CacheInfo::from_kv(&kv.stats(), model.kv_element_bytes(), 1.0, prefix_caching);
    let metrics = Arc::new(Metrics::new("smollm2", 2048, &cache).unwrap());
    let codec = Arc::new(codec);
    let engine = Engine::spawn(EngineParts {
        model: Box::new(model),
        kv,
        scheduler,
        metrics: metrics.clone(),
        codec: codec.clone(),
        eos_ids: codec.eos_ids().to_vec(),
        max_context: 2048,
        capacity: 64,
        log_requests: false,
        prefix_caching: prefix_caching.then(|| Arc::new(PrefixHasher::new("smollm2-test"))),
    });
    Some((engine, codec))
}

/// What one greedy request produced.
#[derive(Debug)]
struct Output {
    tokens: Vec<u32>,
    logprobs: Vec<f32>,
    /// Top-5 alternatives' logprobs at each step.
    top: Vec<Vec<(u32, f32)>>,
    cached_tokens: usize,
}

async fn generate(engine: &EngineHandle, prompt: &[u32]) -> Output {
    let sampling = SamplingParams {
        logprobs: Some(5),
        ..SamplingParams::greedy()
    };
    let request = support::greedy_request(
        format!("prefix-{}", prompt.len()),
        prompt.to_vec(),
        sampling,
        6,
    );
    let permit = engine.admit(1).unwrap();
    let mut stream = engine.submit(permit, request).await.unwrap();
    let mut output = Output {
        tokens: vec![],
        logprobs: vec![],
        top: vec![],
        cached_tokens: 0,
    };
    while let Some(event) = stream.next().await {
        match event {
            Event::Output { tokens, .. } => {
                for sampled in tokens {
                    output.tokens.push(sampled.token);
                    output
                        .logprobs
                        .push(sampled.logprob.expect("logprobs asked for"));
                    output.top.push(sampled.top);
                }
            }
            Event::Finished { cached_tokens, .. } => output.cached_tokens = cached_tokens,
            Event::Failed { error, .. } => panic!("failed: {error}"),
        }
    }
    output
}

fn counter(metrics: &Metrics, name: &str) -> f64 {
    let text = metrics.render().unwrap();
    text.lines()
        .find(|line| line.starts_with(name))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("{name} not exported:\n{text}"))
}

/// The prompts of the comparison, by name: a base prompt first (it fills the cache), then
/// prompts sharing none, half, all of it, and diverging at and inside a page boundary.
fn prompts(codec: &Codec) -> Vec<(&'static str, Vec<u32>)> {
    let text =
        |line: &dyn Fn(usize) -> String, lines: usize| -> String { (0..lines).map(line).collect() };
    let base = codec
        .encode(
            &text(
                &|i| format!("Fact {i}: the river crosses valley number {i} before the sea. "),
                30,
            ),
            false,
        )
        .unwrap();
    let own = |seed: usize| {
        codec
            .encode(
                &text(
                    &|i| format!("Question {}: why is the sky blue over city {i}? ", seed + i),
                    6,
                ),
                false,
            )
            .unwrap()
    };
    let with_tail = |shared: usize, seed: usize| [&base[..shared], &own(seed)[..]].concat();
    // Page 6 starts inside token 273 (6 × 2 MiB / 46,080 bytes = 273.07): tokens 0..273 lie
    // wholly on pages 0..5.
    vec![
        ("base", base.clone()),
        ("shares 0 %", own(100)),
        ("shares 50 %", with_tail(base.len() / 2, 200)),
        ("shares 100 %", base.clone()),
        ("diverges at a page boundary", with_tail(273, 300)),
        ("diverges inside a page", with_tail(273 + 20, 400)),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greedy_tokens_and_logprobs_are_the_same_with_and_without_sharing() {
    for partial in [PartialPage::Copy, PartialPage::Recompute] {
        compare(partial).await;
    }
}

/// Runs every prompt through an engine with prefix caching (`partial` for pages matched in
/// part) and one without, and compares.
async fn compare(partial: PartialPage) {
    let Some((cached, codec)) = start(true, partial) else {
        return;
    };
    let (plain, _) = start(false, partial).unwrap();
    let prompts = prompts(&codec);
    assert!(
        prompts[0].1.len() > 300,
        "the base prompt spans several pages"
    );
    for (name, prompt) in &prompts {
        let with = generate(&cached.handle, prompt).await;
        let without = generate(&plain.handle, prompt).await;
        assert_eq!(
            with.tokens, without.tokens,
            "{partial:?} {name}: greedy tokens differ"
        );
        let worst = (with.logprobs.iter().zip(&without.logprobs))
            .chain(
                with.top
                    .iter()
                    .flatten()
                    .map(|(_, l)| l)
                    .zip(without.top.iter().flatten().map(|(_, l)| l)),
            )
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= 1e-5,
            "{partial:?} {name}: logprobs differ by {worst}"
        );
        let shared = match *name {
            "base" | "shares 0 %" => 0,
            "shares 50 %" => prompts[0].1.len() / 2,
            "shares 100 %" => prompts[0].1.len(),
            "diverges at a page boundary" => 273,
            _ => 293,
        };
        // Copy mode caches every shared token wholly on published pages; at most the last
        // (partial) page of the base prompt is not published.
        assert!(
            with.cached_tokens <= shared,
            "{name}: {} cached",
            with.cached_tokens
        );
        assert!(
            with.cached_tokens + 46 >= shared.min(prompt.len() - 1),
            "{name}: only {} of {shared} shared tokens cached",
            with.cached_tokens
        );
        assert_eq!(without.cached_tokens, 0, "{name}: cached without caching");
        eprintln!(
            "{partial:?} {name}: {} tokens, {} cached, worst logprob difference {worst:e}",
            prompt.len(),
            with.cached_tokens
        );
    }
    let hits = counter(&cached.metrics, "vllm:prefix_cache_hits_total");
    let queries = counter(&cached.metrics, "vllm:prefix_cache_queries_total");
    let expected_queries: usize = prompts.iter().map(|(_, p)| p.len()).sum();
    assert_eq!(queries as usize, expected_queries);
    assert!(hits > 0.0 && hits < queries);
    assert_eq!(
        counter(&plain.metrics, "vllm:prefix_cache_queries_total"),
        0.0
    );
    cached.stop();
    plain.stop();
}
