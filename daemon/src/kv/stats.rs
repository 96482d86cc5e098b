//! A snapshot of a KV region's counters, as plain numbers for whatever exports metrics.
//!
//! Must not: depend on a metrics crate.

/// Counters of one KV region at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct KvStats {
    /// Backend name (`cpu-memfd`, `cuda-vmm`).
    pub backend: &'static str,
    pub page_bytes: usize,
    /// Pages in the physical pool.
    pub pages_total: usize,
    /// Pages no slot holds.
    pub pages_free: usize,
    /// Pages kept for later: idle slots' own pages (deferred reclamation) and cached prefix
    /// pages no live sequence uses.
    pub pages_cached: usize,
    /// Pages held by live sequences (their tokens' pages plus look-ahead), each page once.
    pub pages_held: usize,
    /// Pages physically mapped now (lags `pages_held + pages_cached` while the mapper works).
    pub pages_mapped: usize,
    /// Whole tokens one page holds in one page run.
    pub tokens_per_page: usize,
    /// Pages of token positions the pool holds: `pages_total` over the page runs (per-layer:
    /// a token position takes one page in each run). vLLM's `num_gpu_blocks`.
    pub position_pages: usize,
    pub live_seqs: usize,
    /// Tokens reserved by live sequences.
    pub live_tokens: usize,
    /// Tokens the pool holds when packed perfectly.
    pub capacity_tokens: usize,
    /// `live_tokens / capacity_tokens`.
    pub utilisation: f64,
    /// `pages_held / pages_total` (what `vllm:kv_cache_usage_perc` reports).
    pub usage: f64,
    /// Bytes held by live sequences that hold no live token (partly filled pages, look-ahead,
    /// and in eager mode the whole unused context).
    pub wasted_bytes: usize,
    /// Times the engine waited for the mapper (`fused_kv_map_stalls_total`).
    pub map_stalls: u64,
    pub map_stall_seconds: f64,
    pub pages_mapped_total: u64,
    pub pages_unmapped_total: u64,
    pub map_seconds_total: f64,
    pub unmap_seconds_total: f64,
    /// Pages two or more live sequences map (a shared prefix, counted once in `pages_held`).
    pub pages_shared: usize,
    /// Pages of the prefix cache, used or not (`pages_cached` counts its unused ones).
    pub pages_prefix: usize,
    /// Pool pages whose cached part was copied into a sequence's own page, and the time taken.
    pub pages_copied_total: u64,
    pub copy_seconds_total: f64,
}
