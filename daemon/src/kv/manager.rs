//! The KV manager the engine owns: the scheduler's page accounting ([`KvBudget`]), the forward
//! pass's fixed K/V addresses ([`KvAccess`]), the barrier before each forward pass
//! ([`KvManager::wait_ready`]) and the counters for metrics ([`KvManager::stats`]).
//!
//! Reservations are asynchronous: `admit` / `reserve` claim pages and queue their mapping at
//! once, so when the scheduler reserves next iteration's tokens (decode growth and the prefill
//! chunks it plans one step ahead) while this iteration computes, the mapper maps them in the
//! background. `wait_ready` blocks only for pages not mapped yet, and counts each such stall.
//!
//! Prefix sharing: `admit_prefixed` maps the cached prefix a new sequence's token hashes match
//! (the scheduler starts its prefill after it), `publish` indexes the pages a sequence has
//! filled; both come through [`KvBudget`], from the scheduler, with hashes the engine made.
//!
//! Must not: know requests or tokens' contents (only their hashes); take a lock in `layer_kv`
//! (it runs on the forward pass's worker threads).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::accounting::{Accounting, PageOp, Plan};
use super::backend::PageBackend;
use super::backend::cpu::CpuBackend;
use super::config::KvConfig;
use super::geometry::Geometry;
use super::mapper::{LatencySamples, Mapper};
use super::prefix::TokenHash;
use super::stats::KvStats;
use super::{KvBudget, KvError};
use crate::kv::{KvAccess, LayerKv, SlotId};

/// One model's KV region: accounting, mapper thread and backend.
pub struct KvManager {
    accounting: Accounting,
    mapper: Mapper,
    base: usize,
    backend: &'static str,
    stalls: AtomicU64,
    stall_nanos: AtomicU64,
}

impl std::fmt::Debug for KvManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvManager")
            .field("backend", &self.backend)
            .field("geometry", self.accounting.geometry())
            .finish_non_exhaustive()
    }
}

impl KvManager {
    /// A region over the backend `make` builds for the validated geometry of `config`.
    pub fn with_backend(
        config: &KvConfig,
        make: impl FnOnce(&Geometry) -> Result<Box<dyn PageBackend>, KvError>,
    ) -> Result<Self, KvError> {
        let geometry = Geometry::new(config)?;
        let backend = make(&geometry)?;
        let base = backend.base_address();
        let name = backend.name();
        let virtual_pages = geometry.virtual_bytes / geometry.page_bytes;
        let mapper = Mapper::start(
            backend,
            geometry.page_bytes,
            virtual_pages,
            geometry.pool_pages,
        )?;
        Ok(Self {
            accounting: Accounting::new(geometry, config),
            mapper,
            base,
            backend: name,
            stalls: AtomicU64::new(0),
            stall_nanos: AtomicU64::new(0),
        })
    }

    /// A region in host memory (`pool_bytes` of it committed up front).
    pub fn cpu(config: &KvConfig) -> Result<Self, KvError> {
        Self::with_backend(config, |geometry| {
            let backend = CpuBackend::new(
                geometry.virtual_bytes,
                geometry.page_bytes,
                geometry.pool_pages,
            )?;
            Ok(Box::new(backend))
        })
    }

    /// A region in the memory of `context`'s GPU (`pool_bytes` of it allocated up front).
    #[cfg(feature = "cuda")]
    pub fn cuda(
        config: &KvConfig,
        context: std::sync::Arc<cudarc::driver::CudaContext>,
    ) -> Result<Self, KvError> {
        Self::with_backend(config, |geometry| {
            let backend = super::backend::cuda::CudaBackend::new(
                context,
                geometry.virtual_bytes,
                geometry.page_bytes,
                geometry.pool_pages,
                config.prefix_caching,
            )?;
            Ok(Box::new(backend))
        })
    }

    pub fn geometry(&self) -> &Geometry {
        self.accounting.geometry()
    }

    /// The backend's name (`cpu-memfd`, `cuda-vmm`).
    pub fn backend_name(&self) -> &'static str {
        self.backend
    }

    /// Address of the region's first byte (host pointer or device address); it never moves.
    pub fn base_address(&self) -> usize {
        self.base
    }

    /// Queues the plan's jobs and records which ticket makes which pages ready.
    fn submit(&mut self, slot: SlotId, plan: Plan) -> Result<(), KvError> {
        let done = self.mapper.done();
        for job in plan.jobs {
            let ticket = self.mapper.submit(job.ops)?;
            self.accounting.mark_ready(slot, job.levels, ticket, done);
        }
        Ok(())
    }

    /// Ends `slot`'s sequence (finished, cancelled or preempted). Its pages stay mapped for the
    /// next sequence that fits them, until a shortage trims them.
    pub fn free(&mut self, slot: SlotId) -> Result<(), KvError> {
        self.accounting.free(slot)
    }

    /// Unmaps the pages idle slots keep for reuse (deferred reclamation), returning their own
    /// pages to the free pool (cached prefix pages stay cached); for an idle server, and to
    /// measure mapping from a cold pool. Returns the number of pages queued for unmapping.
    pub fn trim_idle(&mut self) -> Result<usize, KvError> {
        let ops = self.accounting.trim_idle();
        let pages = ops
            .iter()
            .map(|op| {
                if let PageOp::Unmap { count, .. } = op {
                    *count
                } else {
                    0
                }
            })
            .sum();
        if !ops.is_empty() {
            self.mapper.submit(ops)?;
        }
        Ok(pages)
    }

    /// Evicts every cached prefix page no live sequence uses (vLLM's `reset_prefix_cache`);
    /// returns the pages freed.
    pub fn reset_prefix_cache(&mut self) -> Result<usize, KvError> {
        let (ops, freed) = self.accounting.reset_prefix_cache();
        if !ops.is_empty() {
            self.mapper.submit(ops)?;
        }
        Ok(freed)
    }

    /// Tokens reserved by `slot`, if it is live.
    pub fn reserved_tokens(&self, slot: SlotId) -> Option<usize> {
        self.accounting.slot_tokens(slot)
    }

    /// Pages per run that `slot` holds (live or idle), if it exists.
    pub fn slot_levels(&self, slot: SlotId) -> Option<usize> {
        self.accounting.slot_levels(slot)
    }

    /// Blocks until the first `tokens` positions of `slot` are backed by memory. Returns at once
    /// when the mapper is already done with them; otherwise waits and counts a stall.
    pub fn wait_ready(&self, slot: SlotId, tokens: usize) -> Result<(), KvError> {
        let ticket = self.accounting.ready_ticket(slot, tokens)?;
        let started = Instant::now();
        if self.mapper.wait_for(ticket)? {
            let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.stalls.fetch_add(1, Ordering::Relaxed);
            self.stall_nanos.fetch_add(waited, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Blocks until every queued job is done (start-up, tests, benchmarks); not a stall.
    pub fn sync(&self) -> Result<(), KvError> {
        self.mapper.wait_for(self.mapper.last_ticket()).map(|_| ())
    }

    pub fn stats(&self) -> KvStats {
        let geometry = self.accounting.geometry();
        let counts = self.accounting.counts();
        let totals = self.mapper.totals();
        let capacity_tokens = geometry.capacity_tokens();
        let ratio = |part: usize, whole: usize| {
            if whole == 0 {
                0.0
            } else {
                part as f64 / whole as f64
            }
        };
        KvStats {
            backend: self.backend,
            page_bytes: geometry.page_bytes,
            pages_total: geometry.pool_pages,
            pages_free: counts.pages_free,
            pages_cached: counts.pages_cached,
            pages_held: counts.pages_held,
            pages_shared: counts.pages_shared,
            pages_prefix: counts.pages_prefix,
            pages_mapped: self.mapper.pages_mapped(),
            tokens_per_page: geometry.tokens_per_page(),
            position_pages: geometry.pool_pages / geometry.runs.max(1),
            live_seqs: counts.live_seqs,
            live_tokens: counts.live_tokens,
            capacity_tokens,
            utilisation: ratio(counts.live_tokens, capacity_tokens),
            usage: ratio(counts.pages_held, geometry.pool_pages),
            wasted_bytes: (counts.pages_held * geometry.page_bytes)
                .saturating_sub(counts.live_tokens * geometry.token_bytes()),
            map_stalls: self.stalls.load(Ordering::Relaxed),
            map_stall_seconds: self.stall_nanos.load(Ordering::Relaxed) as f64 * 1e-9,
            pages_mapped_total: totals.pages_mapped,
            pages_unmapped_total: totals.pages_unmapped,
            map_seconds_total: totals.map_nanos as f64 * 1e-9,
            unmap_seconds_total: totals.unmap_nanos as f64 * 1e-9,
            pages_copied_total: totals.pages_copied,
            copy_seconds_total: totals.copy_nanos as f64 * 1e-9,
        }
    }

    /// Per-page map / unmap latencies since the last call, for a histogram.
    pub fn drain_latencies(&self) -> LatencySamples {
        self.mapper.drain_latencies()
    }

    /// Stops the mapper: finishes queued jobs, unmaps every page, releases the backend.
    pub fn shutdown(mut self) -> Result<(), KvError> {
        self.mapper.shutdown()
    }

    #[cfg(test)]
    pub(crate) fn accounting(&self) -> &Accounting {
        &self.accounting
    }

    #[cfg(test)]
    pub(crate) fn mapper(&self) -> &Mapper {
        &self.mapper
    }

    /// Shuts down and reports what the page table and totals say afterwards.
    #[cfg(test)]
    pub(crate) fn shutdown_for_test(mut self) -> (usize, super::mapper::MapTotals) {
        self.mapper.shutdown().expect("clean shutdown");
        (self.mapper.pages_mapped(), self.mapper.totals())
    }
}

impl KvBudget for KvManager {
    fn tokens_per_page(&self) -> usize {
        self.accounting.geometry().tokens_per_page()
    }

    fn can_admit(&self, tokens: usize) -> bool {
        self.accounting.can_admit(tokens, &[])
    }

    fn admit(&mut self, tokens: usize) -> Result<SlotId, KvError> {
        self.admit_prefixed(tokens, &[]).map(|(slot, _)| slot)
    }

    fn can_admit_prefixed(&self, tokens: usize, hashes: &[TokenHash]) -> bool {
        self.accounting.can_admit(tokens, hashes)
    }

    fn admit_prefixed(
        &mut self,
        tokens: usize,
        hashes: &[TokenHash],
    ) -> Result<(SlotId, usize), KvError> {
        let admitted = self.accounting.admit(tokens, hashes)?;
        self.submit(admitted.slot, admitted.plan)?;
        Ok((admitted.slot, admitted.cached_tokens))
    }

    fn publish(&mut self, slot: SlotId, computed: usize, hashes: &[TokenHash]) {
        if let Err(error) = self.accounting.publish(slot, computed, hashes) {
            tracing::warn!(%error, slot, "publishing the pages of a KV slot that is not live");
        }
    }

    fn reserve(&mut self, slot: SlotId, tokens: usize) -> Result<(), KvError> {
        let plan = self.accounting.reserve(slot, tokens)?;
        self.submit(slot, plan)
    }

    fn release(&mut self, slot: SlotId) {
        if let Err(error) = self.free(slot) {
            tracing::warn!(%error, slot, "release of a KV slot that is not live");
        }
    }

    /// Pages a new reservation can get: free pages plus the surplus that trimming can reclaim.
    fn free_pages(&self) -> usize {
        self.accounting.counts().pages_available
    }
}

impl KvAccess for KvManager {
    fn layer_kv(&self, slot: SlotId, layer: usize) -> LayerKv {
        let geometry = self.accounting.geometry();
        assert!(
            (slot as usize) < geometry.max_seqs && layer < geometry.layers,
            "slot {slot} / layer {layer} out of range: the engine only passes admitted slots and \
             the model's own layers"
        );
        let (k, v) = geometry.layer_offsets(slot as usize, layer);
        LayerKv {
            k: (self.base + k) as *mut u8,
            v: (self.base + v) as *mut u8,
            token_stride: geometry.run_token_bytes,
        }
    }
}
