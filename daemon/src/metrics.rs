//! Prometheus series of the daemon. Names follow vLLM (`vllm:*`, same histogram buckets, label
//! `model_name`) so routers, autoscalers and dashboards built for vLLM work unchanged; our own
//! series are `fused_*`.
//!
//! Must not: compute anything; callers observe values, `/metrics` renders them.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// vLLM's buckets for time to first token.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's buckets for inter-token latency.
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's buckets for request-level latencies (end to end, queue time).
const REQUEST_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// Page map latency: tens of microseconds (GPU) to milliseconds (a stalled CPU commit).
const MAP_BUCKETS: &[f64] = &[
    1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 5e-2,
];
const RATIO_BUCKETS: &[f64] = &[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];

/// `finished_reason` values of `vllm:request_success_total`.
pub const FINISH_REASONS: [&str; 4] = ["stop", "length", "abort", "error"];
/// `reason` values of `fused_requests_rejected_total`.
pub const REJECT_REASONS: [&str; 5] = ["queue_full", "draining", "stopped", "unhealthy", "invalid"];

/// Every series the daemon exports, already labelled with the served model name.
pub struct Metrics {
    registry: Registry,
    pub requests_running: IntGauge,
    pub requests_waiting: IntGauge,
    pub kv_usage: Gauge,
    pub ttft: Histogram,
    pub inter_token: Histogram,
    pub e2e: Histogram,
    pub queue_time: Histogram,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    pub preemptions: IntCounter,
    request_success: IntCounterVec,
    pub kv_pages_mapped: IntGauge,
    pub kv_pages_free: IntGauge,
    pub kv_pages_total: IntGauge,
    pub kv_map_seconds: Histogram,
    pub kv_map_stalls: IntCounter,
    pub kv_wasted_bytes: IntGauge,
    pub budget_used: Histogram,
    pub token_budget: IntGauge,
    pub vocab_base_tokens: IntCounter,
    pub vocab_patched_tokens: IntCounter,
    pub requests_rejected: IntCounterVec,
    pub engine_failures: IntCounter,
    pub connections_refused: IntCounter,
    /// Prompt tokens looked up in the prefix cache at admission, and found there (vLLM's
    /// `prefix_cache_queries` / `prefix_cache_hits`, in tokens).
    pub prefix_cache_queries: IntCounter,
    pub prefix_cache_hits: IntCounter,
    /// KV pages two or more running sequences map (a shared prefix, held once).
    pub kv_shared_pages: IntGauge,
}

impl Metrics {
    pub fn new(
        model_name: &str,
        block_size: usize,
        num_blocks: usize,
    ) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let label = |opts: Opts| opts.const_label("model_name", model_name);
        let hist =
            |name: &str, help: &str, buckets: &[f64]| -> Result<Histogram, prometheus::Error> {
                let h = Histogram::with_opts(
                    HistogramOpts::new(name, help)
                        .const_label("model_name", model_name)
                        .buckets(buckets.to_vec()),
                )?;
                registry.register(Box::new(h.clone()))?;
                Ok(h)
            };
        let int_gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let g = IntGauge::with_opts(label(Opts::new(name, help)))?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let c = IntCounter::with_opts(label(Opts::new(name, help)))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let kv_usage = Gauge::with_opts(label(Opts::new(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage: live token slots over capacity (1 = full).",
        )))?;
        registry.register(Box::new(kv_usage.clone()))?;
        let cache_info = GaugeVec::new(
            label(Opts::new(
                "vllm:cache_config_info",
                "Information of the KV cache configuration.",
            )),
            &["block_size", "num_gpu_blocks"],
        )?;
        registry.register(Box::new(cache_info.clone()))?;
        cache_info
            .with_label_values(&[&block_size.to_string(), &num_blocks.to_string()])
            .set(1.0);
        let request_success = IntCounterVec::new(
            label(Opts::new(
                "vllm:request_success_total",
                "Finished requests by finish reason.",
            )),
            &["finished_reason"],
        )?;
        registry.register(Box::new(request_success.clone()))?;
        let requests_rejected = IntCounterVec::new(
            label(Opts::new(
                "fused_requests_rejected_total",
                "Requests refused before running, by reason.",
            )),
            &["reason"],
        )?;
        registry.register(Box::new(requests_rejected.clone()))?;
        // Every label value exists from the start, so `rate()` sees the first increment too.
        for reason in FINISH_REASONS {
            request_success.with_label_values(&[reason]);
        }
        for reason in REJECT_REASONS {
            requests_rejected.with_label_values(&[reason]);
        }
        Ok(Self {
            requests_running: int_gauge(
                "vllm:num_requests_running",
                "Requests in model execution batches.",
            )?,
            requests_waiting: int_gauge(
                "vllm:num_requests_waiting",
                "Requests waiting to be processed.",
            )?,
            kv_usage,
            ttft: hist(
                "vllm:time_to_first_token_seconds",
                "Time to first token in seconds.",
                TTFT_BUCKETS,
            )?,
            inter_token: hist(
                "vllm:inter_token_latency_seconds",
                "Inter-token latency in seconds.",
                ITL_BUCKETS,
            )?,
            e2e: hist(
                "vllm:e2e_request_latency_seconds",
                "End-to-end request latency in seconds.",
                REQUEST_BUCKETS,
            )?,
            queue_time: hist(
                "vllm:request_queue_time_seconds",
                "Time spent waiting in the queue.",
                REQUEST_BUCKETS,
            )?,
            prompt_tokens: counter("vllm:prompt_tokens_total", "Prefill tokens processed.")?,
            generation_tokens: counter(
                "vllm:generation_tokens_total",
                "Generation tokens processed.",
            )?,
            preemptions: counter(
                "vllm:num_preemptions_total",
                "Cumulative number of preemptions.",
            )?,
            request_success,
            kv_pages_mapped: int_gauge(
                "fused_kv_pages_mapped",
                "Physical KV pages mapped into the region.",
            )?,
            kv_pages_free: int_gauge(
                "fused_kv_pages_free",
                "Physical KV pages no sequence holds.",
            )?,
            kv_pages_total: int_gauge("fused_kv_pages_total", "Physical KV pages in the pool.")?,
            kv_map_seconds: hist(
                "fused_kv_page_map_seconds",
                "Latency of mapping one KV page (per page of a batched mapping).",
                MAP_BUCKETS,
            )?,
            kv_map_stalls: counter(
                "fused_kv_map_stalls_total",
                "Iterations that waited for a KV page to be mapped.",
            )?,
            kv_wasted_bytes: int_gauge(
                "fused_kv_wasted_bytes",
                "Bytes mapped for KV that hold no live token.",
            )?,
            budget_used: hist(
                "fused_sched_budget_used_ratio",
                "Share of the iteration token budget used by each batch.",
                RATIO_BUCKETS,
            )?,
            token_budget: int_gauge(
                "fused_sched_token_budget",
                "Token budget of the last iteration.",
            )?,
            vocab_base_tokens: counter(
                "fused_vocab_base_tokens_total",
                "Prompt tokens the base tokenizer would have produced.",
            )?,
            vocab_patched_tokens: counter(
                "fused_vocab_patched_tokens_total",
                "Prompt tokens the (patched) tokenizer produced.",
            )?,
            requests_rejected,
            engine_failures: counter(
                "fused_engine_failures_total",
                "Engine iterations that failed (every request in the batch got an error).",
            )?,
            connections_refused: counter(
                "fused_http_connections_refused_total",
                "Connections closed on accept because --max-connections were open.",
            )?,
            prefix_cache_queries: counter(
                "vllm:prefix_cache_queries_total",
                "Prefix cache queries, in terms of number of queried tokens.",
            )?,
            prefix_cache_hits: counter(
                "vllm:prefix_cache_hits_total",
                "Prefix cache hits, in terms of number of cached tokens.",
            )?,
            kv_shared_pages: int_gauge(
                "fused_kv_shared_pages",
                "KV pages mapped by two or more running sequences (a shared prefix, held once).",
            )?,
            registry,
        })
    }

    pub fn finished(&self, reason: &str) {
        self.request_success.with_label_values(&[reason]).inc();
    }

    pub fn rejected(&self, reason: &str) {
        self.requests_rejected.with_label_values(&[reason]).inc();
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))
    }
}
