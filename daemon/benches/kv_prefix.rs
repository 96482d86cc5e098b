//! Prefix sharing's costs:
//!
//! 1. map cost: a new request whose 2,000-token prompt prefix is cached (by a live request, in
//!    another slot) maps the prefix's pages into its own row; µs per page mapped (admission to
//!    ready, and the mapper's own per-page latency), for both layouts: on the CPU memfd backend
//!    with SmolLM2-135M's KV shape (f32), and with `--features cuda` on a GPU on the CUDA VMM
//!    backend with Llama-2-7B's and Llama-3-8B's (bf16);
//! 2. on the CPU, with the real SmolLM2-135M (46,080 bytes of K/V per token, 45.5 tokens per 2 MiB
//!    interleaved page): the model's prefill time for one page's worth of tokens at that depth
//!    (what a mapped page saves), and, for a request that diverges inside a cached page, copying
//!    the page's cached part (one 2 MiB memcpy in the memfd pool) against recomputing those
//!    tokens (the extra prefill they add to the suffix's chunk).
//!
//! `cargo bench -p fused-daemon --bench kv_prefix` (≈ 1 min; part 2 needs
//! `scripts/fetch-model.sh`, and says so loudly when the GGUF is missing). Medians of rounds;
//! numbers in docs/BENCHMARKS.md; on the H200 through `e2e/gpu/prefix.sh`.

mod common;

use std::time::Instant;

use common::{median, time};
use fused_daemon::kv::backend::PageBackend;
use fused_daemon::kv::backend::cpu::CpuBackend;
use fused_daemon::kv::{KvBudget, KvConfig, KvLayout, KvManager, TokenHash};
use fused_daemon::model::config::ModelConfig;
use fused_daemon::model::dense_kv::DenseKv;
use fused_daemon::model::gguf::GgufFile;
use fused_daemon::model::{LogitsWanted, Model, SeqChunk};
use fused_daemon::tokenizer::fixtures;

const PREFIX: usize = 2000;
const SUFFIX: usize = 100;
const ROUNDS: usize = 15;

/// Chained hashes of a prompt whose first `shared` tokens are the common prefix and whose rest
/// is request `seq`'s own.
fn chain(shared: usize, total: usize, seq: u128) -> Vec<TokenHash> {
    (0..total as u128)
        .map(|i| match i < shared as u128 {
            true => i + 1,
            false => (seq << 64) | i,
        })
        .collect()
}

/// A region for three requests of the prefix plus suffix, with room to spare.
fn kv_config(c: &ModelConfig, elem_bytes: usize, layout: KvLayout) -> KvConfig {
    let base = KvConfig::for_model(c.layers, c.kv_heads, c.head_dim, elem_bytes);
    let token_bytes = c.layers * 2 * c.kv_heads * c.head_dim * elem_bytes;
    let max_context_len = PREFIX + SUFFIX + 64;
    KvConfig {
        max_seqs: 4,
        max_context_len,
        layout,
        // Three requests' pages, plus a page per run of rounding for each.
        pool_bytes: 3 * (max_context_len * token_bytes + (2 * c.layers + 1) * base.page_bytes),
        prefix_caching: true,
        ..base
    }
}

/// What a new request sharing the whole prefix costs to map, in one layout.
struct MapCost {
    /// Pages per run of the prefix that a hit maps (one level is one page per run).
    shared_pages: usize,
    cached_tokens: usize,
    /// Admission to ready, per page mapped.
    admit_us_per_page: f64,
    /// The mapper's own per-page latency.
    mapper_us_per_page: f64,
}

fn map_cost(mut kv: KvManager) -> MapCost {
    // The first request computes the prefix and publishes it; it stays live, so every later
    // request maps the same pages into another slot.
    let first = chain(PREFIX, PREFIX + SUFFIX, 1);
    let (owner, _) = kv.admit_prefixed(first.len(), &first).expect("admit");
    kv.sync().expect("mapped");
    kv.publish(owner, first.len(), &first);
    let (mut per_page, mut mapper, mut shared_pages, mut cached_tokens) =
        (Vec::new(), Vec::new(), 0, 0);
    for round in 0..ROUNDS + 1 {
        let hashes = chain(PREFIX, PREFIX + SUFFIX, 2 + round as u128);
        kv.drain_latencies();
        let before = kv.stats().pages_shared;
        let started = Instant::now();
        let (slot, cached) = kv.admit_prefixed(hashes.len(), &hashes).expect("admit");
        kv.wait_ready(slot, cached).expect("ready");
        let elapsed = started.elapsed().as_secs_f64();
        let runs = kv.geometry().runs;
        shared_pages = (kv.stats().pages_shared - before) / runs.max(1);
        cached_tokens = cached;
        let mapped = shared_pages * runs;
        if round > 0 && mapped > 0 {
            per_page.push(elapsed / mapped as f64);
            let samples = kv.drain_latencies().map_per_page;
            let own: f64 = samples.iter().map(|d| d.as_secs_f64()).sum();
            mapper.push(own / samples.len().max(1) as f64);
        }
        kv.free(slot).expect("free");
        // Unmap the freed slot's pages so that the next request maps them again.
        kv.trim_idle().expect("trim");
        kv.sync().expect("unmapped");
    }
    kv.shutdown().expect("shutdown");
    let us = |v: Vec<f64>| if v.is_empty() { 0.0 } else { median(v) * 1e6 };
    MapCost {
        shared_pages,
        cached_tokens,
        admit_us_per_page: us(per_page),
        mapper_us_per_page: us(mapper),
    }
}

/// The real model with K/V for the first `PREFIX` tokens of a prompt of `PREFIX + SUFFIX`.
struct Prefilled {
    model: Model,
    kv: DenseKv,
    prompt: Vec<u32>,
}

impl Prefilled {
    fn new(model: Model) -> Self {
        let prompt: Vec<u32> = (0..(PREFIX + SUFFIX) as u32)
            .map(|i| 200 + i * 97 % 20_000)
            .collect();
        let kv = DenseKv::new(&model.config, 1, prompt.len());
        let this = Self { model, kv, prompt };
        for start in (0..PREFIX).step_by(512) {
            this.forward(start, (start + 512).min(PREFIX));
        }
        this
    }

    /// Seconds of one prefill chunk of tokens `from..to` (K/V before `from` in place; rewriting
    /// positions already there writes the same values).
    fn forward(&self, from: usize, to: usize) -> f64 {
        let chunk = [SeqChunk {
            slot: 0,
            start_pos: from,
            tokens: &self.prompt[from..to],
            logits: LogitsWanted::Last,
        }];
        let started = Instant::now();
        self.model.forward(&chunk, &self.kv).expect("prefill chunk");
        started.elapsed().as_secs_f64()
    }
}

/// The map-cost table's rows for one backend: `make` builds its region for a shape and layout.
fn map_table(backend: &str, shapes: &[(&str, usize)], make: &dyn Fn(&KvConfig) -> KvManager) {
    for &(name, elem_bytes) in shapes {
        let shape = ModelConfig::preset(name).expect("a preset shape");
        for layout in [KvLayout::Interleaved, KvLayout::PerLayer] {
            let kv = make(&kv_config(&shape, elem_bytes, layout));
            let tokens_per_page = kv.geometry().tokens_per_page();
            let cost = map_cost(kv);
            let us = |v: f64| match cost.shared_pages {
                0 => "n/a (no whole page shared)".to_string(),
                _ => format!("{v:.1}"),
            };
            println!(
                "| {backend} | {name} | {layout:?} | {tokens_per_page} | {} | {} | {} | {} |",
                cost.shared_pages,
                cost.cached_tokens,
                us(cost.admit_us_per_page),
                us(cost.mapper_us_per_page),
            );
        }
    }
}

fn main() {
    println!(
        "Mapping a cached {PREFIX}-token prefix into a new request ({SUFFIX}-token suffix; \
         the prefix's owner is live):\n\n\
         | backend | KV shape | layout | tokens per page | pages shared per run | tokens cached \
         | admit→ready µs/page | mapper µs/page |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|");
    map_table("cpu-memfd", &[("smollm2-135m", 4)], &|config| {
        KvManager::cpu(config).expect("CPU KV region")
    });
    cuda_map_table();
    match fixtures::smollm2_gguf() {
        Some(path) => model_costs(&path),
        None => eprintln!(
            "\nSKIPPED the prefill and copy-vs-recompute part: no SmolLM2 GGUF here \
             (run scripts/fetch-model.sh)"
        ),
    }
}

#[cfg(feature = "cuda")]
fn cuda_map_table() {
    use fused_daemon::kv::backend::cuda::cuda_context;
    let context = match cuda_context(0) {
        Ok(context) => context,
        Err(error) if std::env::var("FUSED_REQUIRE_GPU").is_ok_and(|v| v == "1") => {
            panic!("FUSED_REQUIRE_GPU=1 but no usable GPU: {error}")
        }
        Err(error) => {
            eprintln!("SKIPPED the CUDA VMM map cost: no usable GPU here ({error})");
            return;
        }
    };
    map_table(
        "cuda-vmm",
        &[("llama-2-7b", 2), ("llama-3-8b", 2)],
        &|config| KvManager::cuda(config, context.clone()).expect("CUDA KV region"),
    );
}

#[cfg(not(feature = "cuda"))]
fn cuda_map_table() {
    eprintln!("SKIPPED the CUDA VMM map cost: built without feature `cuda`");
}

/// The model's side on the CPU: a page's prefill time, and copy vs recompute of a partial page.
fn model_costs(path: &std::path::Path) {
    let model = Model::load_gguf(GgufFile::open(path).expect("GGUF opens")).expect("loads");
    let c = &model.config;
    let token_bytes = c.layers * 2 * c.kv_heads * c.head_dim * 4;
    let page_tokens = (2 << 20) / token_bytes;
    let run = Prefilled::new(model);
    // One page's worth of prefill at the prefix's depth, as the suffix's chunk would see it.
    let page_prefill = median(
        (0..ROUNDS)
            .map(|_| run.forward(PREFIX - page_tokens, PREFIX))
            .collect(),
    );
    println!(
        "\nSmolLM2-135M on the CPU ({token_bytes} bytes of K/V per token, threads {}): prefill of \
         one interleaved page's {page_tokens} tokens after {} tokens: {:.1} ms",
        rayon::current_num_threads(),
        PREFIX - page_tokens,
        page_prefill * 1e3
    );

    // Diverging inside a page: copy its cached part, or recompute those tokens with the suffix.
    let mut backend = CpuBackend::new(4 << 21, 2 << 20, 4).expect("pool");
    let source: Vec<u8> = (0..2 << 20).map(|i| (i % 251) as u8).collect();
    backend.map_run(0, &[0]).expect("map");
    // SAFETY: page 0 of the reservation is mapped, 2 MiB long.
    unsafe {
        std::ptr::copy_nonoverlapping(
            source.as_ptr(),
            backend.base_address() as *mut u8,
            source.len(),
        )
    };
    let copy = time(ROUNDS, || {
        backend.copy_pages(&[0], &[1], 2 << 20).expect("copy");
    });
    println!(
        "\nDiverging inside a cached page ({SUFFIX}-token suffix after {PREFIX} tokens): copy the \
         page's cached part vs recompute those tokens with the suffix (extra prefill: the suffix's \
         chunk with and without them, back to back, median of {ROUNDS} rounds):\n\n\
         | tokens of the page cached | copy (2 MiB memcpy) µs | suffix alone ms | recompute: extra \
         prefill µs | recompute / copy |"
    );
    println!("|---:|---:|---:|---:|---:|");
    for cached in [1usize, page_tokens / 2, page_tokens] {
        let (mut alone, mut extra) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let base = run.forward(PREFIX, PREFIX + SUFFIX);
            let with = run.forward(PREFIX - cached, PREFIX + SUFFIX);
            alone.push(base);
            extra.push(with - base);
        }
        let extra = median(extra);
        println!(
            "| {cached} | {:.0} | {:.1} | {:.0} | {:.0}× |",
            copy * 1e6,
            median(alone) * 1e3,
            extra * 1e6,
            extra / copy
        );
    }
}
