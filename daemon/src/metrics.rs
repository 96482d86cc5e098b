//! Prometheus series of the daemon. Every series vLLM v1 exports that dashboards, routers and
//! autoscalers read is here with vLLM's name, help text, buckets and labels (`model_name`,
//! `engine`), so stock vLLM dashboards (vLLM's own examples, production-stack) work unchanged;
//! our own series are `fused_*`.
//!
//! Must not: compute anything; callers observe values, `/metrics` renders them.

use prometheus::{
    Counter, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// vLLM's buckets for time to first token.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's buckets for inter-token latency and time per output token.
const ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's buckets for request-level latencies (end to end, queue, prefill, decode, inference).
const REQUEST_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// vLLM's buckets for tokens per engine step.
const ITERATION_TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
/// vLLM's buckets for the `n` request parameter.
const N_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];
/// Page map latency: tens of microseconds (GPU) to milliseconds (a stalled CPU commit).
const MAP_BUCKETS: &[f64] = &[
    1e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 5e-2,
];
const RATIO_BUCKETS: &[f64] = &[0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0];

/// `finished_reason` values of `vllm:request_success_total` (vLLM's `FinishReason`; this server
/// never detects repetition, so that one stays at 0 as in vLLM without the detector).
pub const FINISH_REASONS: [&str; 5] = ["stop", "length", "abort", "error", "repetition"];
/// `reason` values of `fused_requests_rejected_total`.
pub const REJECT_REASONS: [&str; 5] = ["queue_full", "draining", "stopped", "unhealthy", "invalid"];
/// Buckets of `http_request_duration_seconds` (the HTTP instrumentation vLLM uses).
const HTTP_BUCKETS: &[f64] = &[0.1, 0.5, 1.0];
/// Routes the HTTP series leave out, as vLLM's instrumentation does (probes and scrapes).
pub const HTTP_UNCOUNTED: [&str; 4] = ["/metrics", "/health", "/ready", "/version"];
/// `source` values of `vllm:prompt_tokens_by_source_total`.
const PROMPT_SOURCES: [&str; 3] = ["local_compute", "local_cache_hit", "external_kv_transfer"];

/// The `engine` label: one engine core per daemon (vLLM numbers data-parallel ranks from 0).
pub const ENGINE_INDEX: &str = "0";

/// vLLM's 1-2-5 buckets up to `max` (`build_1_2_5_buckets`): 1, 2, 5, 10, 20, 50, … ≤ `max`.
pub fn buckets_1_2_5(max: usize) -> Vec<f64> {
    let mut buckets = Vec::new();
    let mut scale = 1usize;
    'outer: loop {
        for mantissa in [1usize, 2, 5] {
            match mantissa.checked_mul(scale) {
                Some(value) if value <= max => buckets.push(value as f64),
                _ => break 'outer,
            }
        }
        scale = match scale.checked_mul(10) {
            Some(s) => s,
            None => break,
        };
    }
    buckets
}

/// What `vllm:cache_config_info` says about the KV cache, in vLLM's units.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheInfo {
    /// Tokens per KV block (vLLM's `block_size`): the whole tokens one page holds.
    pub block_size: usize,
    /// Blocks the pool holds (vLLM's `num_gpu_blocks`, on any device): pages of token
    /// positions, so `block_size × num_gpu_blocks` is the token capacity (to within the part of
    /// a token a page boundary splits), as prefix-aware routers assume.
    pub num_gpu_blocks: usize,
    /// Bytes per physical page (`fused_kv_page_bytes`).
    pub page_bytes: usize,
    /// Element type of the cached K/V (`float32` on the CPU, `bfloat16` on the GPU).
    pub cache_dtype: &'static str,
    pub gpu_memory_utilization: f64,
    /// Automatic prefix caching is on.
    pub enable_prefix_caching: bool,
}

impl CacheInfo {
    /// The cache description of a reserved KV region whose elements are `element_bytes` wide.
    pub fn from_kv(
        stats: &crate::kv::KvStats,
        element_bytes: usize,
        gpu_memory_utilization: f64,
        enable_prefix_caching: bool,
    ) -> Self {
        CacheInfo {
            block_size: stats.tokens_per_page,
            num_gpu_blocks: stats.position_pages,
            page_bytes: stats.page_bytes,
            cache_dtype: match element_bytes {
                4 => "float32",
                2 => "bfloat16",
                1 => "fp8",
                _ => "auto",
            },
            gpu_memory_utilization,
            enable_prefix_caching,
        }
    }
}

/// One finished choice, in the units vLLM's per-request histograms take (seconds and tokens).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FinishedRequest {
    /// Arrival to the last token.
    pub e2e: f64,
    /// Arrival to the first scheduling (WAITING).
    pub queued: f64,
    /// First scheduling to the first token (PREFILL; preemptions included).
    pub prefill: f64,
    /// First token to the last token (DECODE).
    pub decode: f64,
    /// First scheduling to the last token (RUNNING).
    pub inference: f64,
    /// Mean time per output token after the first (0 with fewer than two tokens, as vLLM).
    pub time_per_output_token: f64,
    pub prompt_tokens: usize,
    pub generation_tokens: usize,
    /// The request's `max_tokens` (after the server's default).
    pub max_tokens: usize,
}

/// Every series the daemon exports, already labelled with the served model name and engine.
pub struct Metrics {
    registry: Registry,
    pub requests_running: IntGauge,
    pub requests_waiting: IntGauge,
    waiting_by_reason: IntGaugeVec,
    kv_usage: Gauge,
    gpu_cache_usage: Gauge,
    pub ttft: Histogram,
    inter_token: Histogram,
    time_per_output_token: Histogram,
    pub iteration_tokens: Histogram,
    pub e2e: Histogram,
    queue_time: Histogram,
    prefill_time: Histogram,
    decode_time: Histogram,
    inference_time: Histogram,
    request_time_per_output_token: Histogram,
    request_prompt_tokens: Histogram,
    request_generation_tokens: Histogram,
    request_max_tokens: Histogram,
    request_max_num_generation_tokens: Histogram,
    request_n: Histogram,
    prompt_tokens: IntCounter,
    prompt_tokens_by_source: IntCounterVec,
    prompt_tokens_cached: IntCounter,
    pub generation_tokens: IntCounter,
    pub preemptions: IntCounter,
    prefix_cache_queries: [IntCounter; 2],
    prefix_cache_hits: [IntCounter; 2],
    request_success: IntCounterVec,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    pub kv_pages_mapped: IntGauge,
    pub kv_pages_free: IntGauge,
    pub kv_pages_total: IntGauge,
    pub kv_map_seconds: Histogram,
    pub kv_map_stalls: IntCounter,
    pub kv_map_stall_seconds: Counter,
    pub kv_wasted_bytes: IntGauge,
    pub budget_used: Histogram,
    pub token_budget: IntGauge,
    pub vocab_base_tokens: IntCounter,
    pub vocab_patched_tokens: IntCounter,
    pub requests_rejected: IntCounterVec,
    pub engine_failures: IntCounter,
    pub connections_refused: IntCounter,
    /// KV pages two or more running sequences map (a shared prefix, held once).
    pub kv_shared_pages: IntGauge,
    model_info: GaugeVec,
}

impl Metrics {
    /// Sets `fused_model_info` (one series, 1): the weights' compute `dtype` (`float32` on the
    /// CPU, `bfloat16` on the GPU), their `quantization` as vLLM names it (`none`, `fp8`,
    /// `gguf`) and the architecture.
    pub fn set_model_info(&self, dtype: &str, quantization: &str, architecture: &str) {
        self.model_info.reset();
        self.model_info
            .with_label_values(&[dtype, quantization, architecture])
            .set(1.0);
    }

    /// Registers every series for `model_name`, whose context holds `max_model_len` tokens
    /// (the token histograms' buckets reach it, as vLLM's do), with a KV cache described by
    /// `cache`.
    pub fn new(
        model_name: &str,
        max_model_len: usize,
        cache: &CacheInfo,
    ) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let label = |opts: Opts| {
            opts.const_label("model_name", model_name)
                .const_label("engine", ENGINE_INDEX)
        };
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(
                HistogramOpts::new(name, help)
                    .const_label("model_name", model_name)
                    .const_label("engine", ENGINE_INDEX)
                    .buckets(buckets.to_vec()),
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let gauge = |name: &str, help: &str| {
            let g = Gauge::with_opts(label(Opts::new(name, help)))?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(label(Opts::new(name, help)))?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::with_opts(label(Opts::new(name, help)))?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let seconds_counter = |name: &str, help: &str| {
            let c = Counter::with_opts(label(Opts::new(name, help)))?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(label(Opts::new(name, help)), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        // Info series: a gauge fixed at 1 whose labels carry the configuration (vLLM's labels).
        let cache_info = GaugeVec::new(
            label(Opts::new(
                "vllm:cache_config_info",
                "Information of the LLMEngine CacheConfig",
            )),
            &[
                "block_size",
                "num_gpu_blocks",
                "num_cpu_blocks",
                "cache_dtype",
                "enable_prefix_caching",
                "gpu_memory_utilization",
            ],
        )?;
        registry.register(Box::new(cache_info.clone()))?;
        cache_info
            .with_label_values(&[
                &cache.block_size.to_string(),
                &cache.num_gpu_blocks.to_string(),
                "None",
                cache.cache_dtype,
                python_bool(cache.enable_prefix_caching),
                &cache.gpu_memory_utilization.to_string(),
            ])
            .set(1.0);
        int_gauge(
            "fused_kv_page_bytes",
            "Bytes of one physical KV page (vllm:cache_config_info's block_size is in tokens).",
        )?
        .set(cache.page_bytes as i64);
        let request_success = counter_vec(
            "vllm:request_success_total",
            "Count of successfully processed requests.",
            &["finished_reason"],
        )?;
        // Series of features this server does not have (an external KV cache, multimodal
        // inputs): vLLM exports them at 0 too, so their panels work.
        for (name, help) in [
            (
                "vllm:external_prefix_cache_queries_total",
                "External prefix cache queries from KV connector cross-instance cache sharing, in terms of number of queried tokens.",
            ),
            (
                "vllm:external_prefix_cache_hits_total",
                "External prefix cache hits from KV connector cross-instance cache sharing, in terms of number of cached tokens.",
            ),
            (
                "vllm:mm_cache_queries_total",
                "Multi-modal cache queries, in terms of number of queried items.",
            ),
            (
                "vllm:mm_cache_hits_total",
                "Multi-modal cache hits, in terms of number of cached items.",
            ),
        ] {
            counter(name, help)?;
        }
        let prompt_tokens_by_source = counter_vec(
            "vllm:prompt_tokens_by_source_total",
            "Number of prompt tokens by source.",
            &["source"],
        )?;
        for source in PROMPT_SOURCES {
            prompt_tokens_by_source.with_label_values(&[source]);
        }
        let waiting_by_reason = IntGaugeVec::new(
            label(Opts::new(
                "vllm:num_requests_waiting_by_reason",
                "Number of requests waiting, by reason: capacity (KV cache or batch room) or deferred.",
            )),
            &["reason"],
        )?;
        registry.register(Box::new(waiting_by_reason.clone()))?;
        for reason in ["capacity", "deferred"] {
            waiting_by_reason.with_label_values(&[reason]);
        }
        // The HTTP series carry no model labels, as vLLM's HTTP instrumentation's.
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "Total number of requests by method, status and handler.",
            ),
            &["handler", "method", "status"],
        )?;
        registry.register(Box::new(http_requests.clone()))?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Latency with only few buckets by handler (to the response's headers).",
            )
            .buckets(HTTP_BUCKETS.to_vec()),
            &["handler", "method"],
        )?;
        registry.register(Box::new(http_duration.clone()))?;
        let requests_rejected = counter_vec(
            "fused_requests_rejected_total",
            "Requests refused before running, by reason.",
            &["reason"],
        )?;
        // Every label value exists from the start, so `rate()` sees the first increment too.
        for reason in FINISH_REASONS {
            request_success.with_label_values(&[reason]);
        }
        for reason in REJECT_REASONS {
            requests_rejected.with_label_values(&[reason]);
        }
        let model_info = GaugeVec::new(
            label(Opts::new(
                "fused_model_info",
                "The served weights: compute dtype, quantization and architecture (1).",
            )),
            &["dtype", "quantization", "architecture"],
        )?;
        registry.register(Box::new(model_info.clone()))?;
        let tokens_buckets = buckets_1_2_5(max_model_len);
        Ok(Self {
            model_info,
            requests_running: int_gauge(
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
            )?,
            requests_waiting: int_gauge(
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
            )?,
            waiting_by_reason,
            kv_usage: gauge(
                "vllm:kv_cache_usage_perc",
                "KV-cache usage. 1 means 100 percent usage.",
            )?,
            gpu_cache_usage: gauge(
                "vllm:gpu_cache_usage_perc",
                "GPU KV-cache usage. 1 means 100 percent usage.DEPRECATED: Use vllm:kv_cache_usage_perc instead.",
            )?,
            ttft: hist(
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                TTFT_BUCKETS,
            )?,
            inter_token: hist(
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                ITL_BUCKETS,
            )?,
            time_per_output_token: hist(
                "vllm:time_per_output_token_seconds",
                "Histogram of time per output token in seconds.DEPRECATED: Use vllm:inter_token_latency_seconds instead.",
                ITL_BUCKETS,
            )?,
            iteration_tokens: hist(
                "vllm:iteration_tokens_total",
                "Histogram of number of tokens per engine_step.",
                ITERATION_TOKEN_BUCKETS,
            )?,
            e2e: hist(
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                REQUEST_BUCKETS,
            )?,
            queue_time: hist(
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                REQUEST_BUCKETS,
            )?,
            prefill_time: hist(
                "vllm:request_prefill_time_seconds",
                "Histogram of time spent in PREFILL phase for request.",
                REQUEST_BUCKETS,
            )?,
            decode_time: hist(
                "vllm:request_decode_time_seconds",
                "Histogram of time spent in DECODE phase for request.",
                REQUEST_BUCKETS,
            )?,
            inference_time: hist(
                "vllm:request_inference_time_seconds",
                "Histogram of time spent in RUNNING phase for request.",
                REQUEST_BUCKETS,
            )?,
            request_time_per_output_token: hist(
                "vllm:request_time_per_output_token_seconds",
                "Histogram of time_per_output_token_seconds per request.",
                ITL_BUCKETS,
            )?,
            request_prompt_tokens: hist(
                "vllm:request_prompt_tokens",
                "Number of prefill tokens processed.",
                &tokens_buckets,
            )?,
            request_generation_tokens: hist(
                "vllm:request_generation_tokens",
                "Number of generation tokens processed.",
                &tokens_buckets,
            )?,
            request_max_tokens: hist(
                "vllm:request_params_max_tokens",
                "Histogram of the max_tokens request parameter.",
                &tokens_buckets,
            )?,
            request_max_num_generation_tokens: hist(
                "vllm:request_max_num_generation_tokens",
                "Histogram of maximum number of requested generation tokens.",
                &tokens_buckets,
            )?,
            request_n: hist(
                "vllm:request_params_n",
                "Histogram of the n request parameter.",
                N_BUCKETS,
            )?,
            prompt_tokens: counter(
                "vllm:prompt_tokens_total",
                "Number of prefill tokens processed.",
            )?,
            prompt_tokens_by_source,
            prompt_tokens_cached: counter(
                "vllm:prompt_tokens_cached_total",
                "Number of cached prompt tokens (local prefix cache and KV connector).",
            )?,
            generation_tokens: counter(
                "vllm:generation_tokens_total",
                "Number of generation tokens processed.",
            )?,
            preemptions: counter(
                "vllm:num_preemptions_total",
                "Cumulative number of preemption from the engine.",
            )?,
            prefix_cache_queries: [
                counter(
                    "vllm:prefix_cache_queries_total",
                    "Prefix cache queries, in terms of number of queried tokens.",
                )?,
                counter(
                    "vllm:gpu_prefix_cache_queries_total",
                    "GPU prefix cache queries, in terms of number of queried tokens. DEPRECATED: Use vllm:prefix_cache_queries instead.",
                )?,
            ],
            prefix_cache_hits: [
                counter(
                    "vllm:prefix_cache_hits_total",
                    "Prefix cache hits, in terms of number of cached tokens.",
                )?,
                counter(
                    "vllm:gpu_prefix_cache_hits_total",
                    "GPU prefix cache hits, in terms of number of cached tokens. DEPRECATED: Use vllm:prefix_cache_hits instead.",
                )?,
            ],
            request_success,
            http_requests,
            http_duration,
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
            kv_map_stall_seconds: seconds_counter(
                "fused_kv_map_stall_seconds_total",
                "Time the engine waited for KV pages to be mapped before a forward pass.",
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

    /// Requests running and waiting (every waiting request waits for capacity: nothing here
    /// defers one).
    pub fn set_scheduler_state(&self, running: usize, waiting: usize) {
        self.requests_running.set(running as i64);
        self.requests_waiting.set(waiting as i64);
        self.waiting_by_reason
            .with_label_values(&["capacity"])
            .set(waiting as i64);
    }

    /// A request's `tokens` prompt tokens, `cached` of them found in the prefix cache and the
    /// rest computed here (no KV transfer).
    pub fn prompt_counted(&self, tokens: usize, cached: usize) {
        let cached = cached.min(tokens);
        self.prompt_tokens.inc_by(tokens as u64);
        self.prompt_tokens_cached.inc_by(cached as u64);
        self.prompt_tokens_by_source
            .with_label_values(&["local_compute"])
            .inc_by((tokens - cached) as u64);
        self.prompt_tokens_by_source
            .with_label_values(&["local_cache_hit"])
            .inc_by(cached as u64);
    }

    /// One answered HTTP request: its route template (`handler`), method, status code and
    /// the seconds to its response's headers. Probes and scrapes are not counted.
    pub fn observe_http(&self, handler: &str, method: &str, status: u16, seconds: f64) {
        if HTTP_UNCOUNTED.contains(&handler) {
            return;
        }
        let class = format!("{}xx", status / 100);
        self.http_requests
            .with_label_values(&[handler, method, class.as_str()])
            .inc();
        self.http_duration
            .with_label_values(&[handler, method])
            .observe(seconds);
    }

    /// The share of KV pages in use (the current name and vLLM's deprecated one).
    pub fn set_kv_usage(&self, usage: f64) {
        self.kv_usage.set(usage);
        self.gpu_cache_usage.set(usage);
    }

    pub fn kv_usage(&self) -> f64 {
        self.kv_usage.get()
    }

    /// The gap between two tokens of a request (also under vLLM's deprecated name).
    pub fn observe_inter_token(&self, seconds: f64) {
        self.inter_token.observe(seconds);
        self.time_per_output_token.observe(seconds);
    }

    /// `tokens` prompt tokens looked up in the prefix cache, `hits` of them found.
    pub fn prefix_cache_lookup(&self, tokens: usize, hits: usize) {
        for c in &self.prefix_cache_queries {
            c.inc_by(tokens as u64);
        }
        for c in &self.prefix_cache_hits {
            c.inc_by(hits as u64);
        }
    }

    /// The per-request histograms of one finished choice.
    pub fn observe_finished(&self, r: &FinishedRequest) {
        self.e2e.observe(r.e2e);
        self.queue_time.observe(r.queued);
        self.prefill_time.observe(r.prefill);
        self.decode_time.observe(r.decode);
        self.inference_time.observe(r.inference);
        self.request_time_per_output_token
            .observe(r.time_per_output_token);
        self.request_prompt_tokens.observe(r.prompt_tokens as f64);
        self.request_generation_tokens
            .observe(r.generation_tokens as f64);
        self.request_max_tokens.observe(r.max_tokens as f64);
    }

    /// A request whose `n` choices have all ended; the longest generated `max_generated`.
    pub fn observe_request_group(&self, n: usize, max_generated: usize) {
        self.request_n.observe(n as f64);
        self.request_max_num_generation_tokens
            .observe(max_generated as f64);
    }

    /// The Prometheus text exposition of every series, bucket bounds written as vLLM's Python
    /// client writes them (`le="1.0"`, not `le="1"`), so a dashboard selecting a bucket by its
    /// bound (an SLO panel's `le="$ttft_slo"`) finds it.
    pub fn render(&self) -> Result<String, prometheus::Error> {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        let text = String::from_utf8(out).map_err(|e| prometheus::Error::Msg(e.to_string()))?;
        Ok(python_bucket_bounds(&text))
    }
}

/// `le="N"` → `le="N.0"` for whole-number bounds (Python's `repr` of a float).
fn python_bucket_bounds(text: &str) -> String {
    const LE: &str = "le=\"";
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    let mut rest = text;
    while let Some(at) = rest.find(LE) {
        // The label `le` itself, not one whose name ends in "le".
        let is_le = at > 0 && matches!(rest.as_bytes()[at - 1], b'{' | b',');
        let value_start = at + LE.len();
        out.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        let end = rest.find('"').unwrap_or(rest.len());
        let value = &rest[..end];
        out.push_str(value);
        if is_le && !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(".0");
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A boolean label as vLLM's Python writes it.
fn python_bool(value: bool) -> &'static str {
    match value {
        true => "True",
        false => "False",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_1_2_5_stop_at_the_context_length_like_vllm() {
        assert_eq!(buckets_1_2_5(100), vec![1., 2., 5., 10., 20., 50., 100.]);
        assert_eq!(
            buckets_1_2_5(2048),
            vec![1., 2., 5., 10., 20., 50., 100., 200., 500., 1000., 2000.]
        );
        assert_eq!(buckets_1_2_5(0), Vec::<f64>::new());
        assert!(buckets_1_2_5(usize::MAX).len() > 50);
    }

    fn cache() -> CacheInfo {
        CacheInfo {
            block_size: 64,
            num_gpu_blocks: 100,
            page_bytes: 2 << 20,
            cache_dtype: "float32",
            gpu_memory_utilization: 0.9,
            enable_prefix_caching: true,
        }
    }

    #[test]
    fn every_vllm_series_carries_model_name_and_engine() {
        let m = Metrics::new("m", 2048, &cache()).unwrap();
        m.observe_finished(&FinishedRequest {
            e2e: 1.0,
            queued: 0.1,
            prefill: 0.2,
            decode: 0.7,
            inference: 0.9,
            time_per_output_token: 0.07,
            prompt_tokens: 12,
            generation_tokens: 11,
            max_tokens: 16,
        });
        m.observe_request_group(2, 11);
        m.observe_inter_token(0.05);
        let text = m.render().unwrap();
        for name in [
            "vllm:request_prompt_tokens_bucket",
            "vllm:request_generation_tokens_sum",
            "vllm:request_params_max_tokens_count",
            "vllm:request_max_num_generation_tokens_sum",
            "vllm:request_params_n_count",
            "vllm:request_queue_time_seconds_count",
            "vllm:request_prefill_time_seconds_sum",
            "vllm:request_decode_time_seconds_sum",
            "vllm:request_inference_time_seconds_sum",
            "vllm:request_time_per_output_token_seconds_sum",
            "vllm:time_per_output_token_seconds_count",
            "vllm:inter_token_latency_seconds_count",
            "vllm:iteration_tokens_total_bucket",
            "vllm:gpu_cache_usage_perc",
            "vllm:prefix_cache_queries_total",
            "vllm:gpu_prefix_cache_hits_total",
        ] {
            let line = text
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("{name} missing"));
            assert!(
                line.contains("engine=\"0\"") && line.contains("model_name=\"m\""),
                "{line}"
            );
        }
        for reason in FINISH_REASONS {
            assert!(
                text.contains(&format!("finished_reason=\"{reason}\"")),
                "{reason}"
            );
        }
        let info = text
            .lines()
            .find(|l| l.starts_with("vllm:cache_config_info{"))
            .unwrap();
        assert!(info.contains("block_size=\"64\"") && info.contains("num_gpu_blocks=\"100\""));
        assert!(info.contains("enable_prefix_caching=\"True\""), "{info}");
        assert!(text.contains("fused_kv_page_bytes{engine=\"0\",model_name=\"m\"} 2097152"));
        // One model-info series, the last one set.
        m.set_model_info("float32", "none", "llama");
        m.set_model_info("bfloat16", "fp8", "llama");
        let text = m.render().unwrap();
        let info: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("fused_model_info{"))
            .collect();
        assert_eq!(
            info,
            [
                "fused_model_info{architecture=\"llama\",dtype=\"bfloat16\",engine=\"0\",model_name=\"m\",quantization=\"fp8\"} 1"
            ]
        );
        // The tokens histograms' buckets reach the context length, no further.
        let bounds: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("vllm:request_prompt_tokens_bucket"))
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(
            bounds,
            [
                "1.0", "2.0", "5.0", "10.0", "20.0", "50.0", "100.0", "200.0", "500.0", "1000.0",
                "2000.0", "+Inf"
            ]
        );
        assert!(text.contains("le=\"0.001\"") && text.contains("le=\"2560.0\""));
        assert_eq!(
            python_bucket_bounds("a{handle=\"7\",le=\"7\"} 1\nb{le=\"+Inf\"} 2\n"),
            "a{handle=\"7\",le=\"7.0\"} 1\nb{le=\"+Inf\"} 2\n"
        );
    }
}
