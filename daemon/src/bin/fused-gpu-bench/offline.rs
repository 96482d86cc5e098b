//! (c) Offline throughput through the real serving path minus HTTP: the engine thread, the
//! Sarathi scheduler, the CUDA KV region and the GPU model; all requests submitted at once,
//! greedy, EOS ignored, every output token detokenized by the engine (as when serving) and
//! counted from the output events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use fused_daemon::engine::{self, EngineParts, Event, GenerateRequest};
use fused_daemon::kv::{KvConfig, KvLayout, KvManager};
use fused_daemon::metrics::{CacheInfo, Metrics};
use fused_daemon::model::Forward;
use fused_daemon::model::cuda::GpuModel;
use fused_daemon::model::sampling::SamplingParams;
use fused_daemon::sched::{Policy, Scheduler, SchedulerConfig, TokenBudget};
use fused_daemon::tokenizer::Codec;
use fused_kernels::cuda::GpuDevice;

use crate::report::Report;

#[derive(Debug, Clone, Copy)]
pub struct Workload {
    pub requests: usize,
    pub prompt: usize,
    pub output: usize,
    pub token_budget: usize,
}

pub fn run(
    device: &Arc<GpuDevice>,
    mut model: GpuModel,
    codec: Arc<Codec>,
    w: Workload,
    report: &mut Report,
) -> anyhow::Result<()> {
    let cfg = model.config().clone();
    let max_context = w.prompt + w.output;
    model.set_max_context(max_context);
    let token_bytes = 2 * cfg.layers * cfg.kv_dim() * 2;
    let (free, _) = device.memory()?;
    // Every sequence's whole context, within what is free after weights (keep 8 GiB for
    // scratch and cuBLAS).
    let wanted = w.requests * max_context * token_bytes + (1 << 30);
    let pool_bytes = wanted.min(free.saturating_sub(8 << 30));
    let kv_config = KvConfig {
        max_seqs: w.requests,
        max_context_len: max_context,
        layout: KvLayout::Interleaved,
        pool_bytes,
        ..KvConfig::for_model(
            cfg.layers,
            cfg.kv_heads,
            cfg.head_dim,
            model.kv_element_bytes(),
        )
    };
    let kv = KvManager::cuda(&kv_config, device.context().clone())?;
    let stats = kv.stats();
    let scheduler = Scheduler::new(SchedulerConfig {
        token_budget: TokenBudget::Fixed(w.token_budget.max(w.requests)),
        max_num_seqs: w.requests,
        max_queue: w.requests,
        policy: Policy::Sarathi,
    })?;
    let cache = CacheInfo::from_kv(&stats, model.kv_element_bytes(), 1.0, false);
    let metrics = Arc::new(Metrics::new("bench", max_context, &cache)?);
    let (handle, thread) = engine::spawn(EngineParts {
        model: Box::new(model),
        kv,
        scheduler,
        metrics,
        codec,
        eos_ids: Vec::new(),
        max_context,
        capacity: 2 * w.requests,
        log_requests: false,
        prefix_caching: None,
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let vocab = cfg.vocab_size as u32;
    let request = |i: usize| GenerateRequest {
        request_id: format!("offline-{i}"),
        span: tracing::Span::none(),
        prompt: (0..w.prompt as u32)
            .map(|t| (t.wrapping_mul(2_654_435_761) ^ (i as u32).wrapping_mul(40_503)) % vocab)
            .collect(),
        sampling: SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        },
        n: 1,
        max_new_tokens: w.output,
        min_tokens: 0,
        stop_token_ids: Vec::new(),
        stop: Vec::new(),
        ignore_eos: true,
        skip_special_tokens: true,
        guide: None,
        arrival: Instant::now(),
    };
    // Warm-up: a few requests capture the decode graphs of small buckets and load cuBLAS kernels.
    let run_batch = |count: usize| -> anyhow::Result<(usize, f64)> {
        runtime.block_on(async {
            let started = Instant::now();
            // All at once, as concurrent clients would: each submission waits for the engine's
            // acknowledgement, so awaiting them one by one would add one iteration per request.
            let mut submissions = Vec::with_capacity(count);
            for i in 0..count {
                let permit = handle
                    .admit(1)
                    .map_err(|e| anyhow::anyhow!("admission: {e}"))?;
                submissions.push(handle.submit(permit, request(i)));
            }
            let streams = futures::future::join_all(submissions)
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("submit: {e}"))?;
            let mut tasks = Vec::new();
            for mut stream in streams {
                tasks.push(tokio::spawn(async move {
                    let mut tokens = 0usize;
                    while let Some(event) = stream.next().await {
                        match event {
                            Event::Output {
                                tokens: sampled, ..
                            } => tokens += sampled.len(),
                            Event::Finished { .. } => return Ok(tokens),
                            Event::Failed { error, .. } => return Err(error.to_string()),
                        }
                    }
                    Err("the engine stopped".to_owned())
                }));
            }
            let mut total = 0;
            for task in tasks {
                total += task
                    .await
                    .context("request task")?
                    .map_err(|m| anyhow::anyhow!("request failed: {m}"))?;
            }
            Ok((total, started.elapsed().as_secs_f64()))
        })
    };
    run_batch(8)?;
    let (tokens, seconds) = run_batch(w.requests)?;
    handle.shutdown();
    runtime.shutdown_timeout(Duration::from_secs(5));
    if thread.join().is_err() {
        anyhow::bail!("the engine thread panicked");
    }
    let expected = w.requests * w.output;
    report.value(
        "c",
        &format!(
            "offline {} x ({} in, {} out), budget {}: output tok/s",
            w.requests, w.prompt, w.output, w.token_budget
        ),
        tokens as f64 / seconds,
        "tok/s",
        &format!(
            "{tokens}/{expected} tokens in {seconds:.2} s; total {:.0} tok/s",
            (tokens + w.requests * w.prompt) as f64 / seconds
        ),
    );
    if tokens != expected {
        report.check("c", "every request produced its tokens", f64::NAN, 0.0);
    }
    Ok(())
}
