//! [`GpuModel`]: the Llama-family forward pass on one GPU. Each call plans the batch on the host
//! ([`BatchPlan`]), copies the plan to the device in one transfer, runs every layer's kernels on
//! the device's stream and copies the wanted logits back. Decode-only batches replay a CUDA graph
//! captured once per batch-size bucket: the plan's layout depends on the bucket only and KV
//! addresses never move, so a graph stays valid as pages are mapped.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use fused_kernels::cpu::RopeTable;
use fused_kernels::cuda::{
    AttentionBatch, Blas, CacheStatus, DecodeSplits, DeviceBuffer, GemmOut, GemvOut, GemvShape,
    GpuDevice, Graph, Kernels, PREFILL_TILE_ROWS,
};

use super::device_error;
use super::plan::{BatchPlan, MetaOffsets};
use super::scratch::{Needs, Scratch};
use super::weights::{GpuWeights, upload};
use crate::kv::KvAccess;
use crate::model::config::ModelConfig;
use crate::model::forward::{Logits, SeqChunk, check_chunks};
use crate::model::{Forward, LogitsWanted, Model, ModelError};

/// How the GPU model runs.
#[derive(Debug, Clone)]
pub struct GpuOptions {
    /// Replay decode iterations from CUDA graphs.
    pub graphs: bool,
    /// Largest decode batch that gets a graph (buckets are powers of two up to it).
    pub max_graph_batch: usize,
    /// Longest context a sequence can reach (fixes the decode split plan of graphs).
    pub max_context: usize,
    /// Where compiled kernels are cached; `None` compiles every start.
    pub kernel_cache: Option<PathBuf>,
    /// Fold SwiGLU into the gate/up GEMV of batches of up to
    /// [`GEMV_MAX_ROWS`](fused_kernels::cuda::GEMV_MAX_ROWS) rows (off: a separate kernel, as
    /// larger batches run; benchmarks compare the two).
    pub fused_gemv: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            graphs: true,
            max_graph_batch: 256,
            max_context: 4096,
            kernel_cache: default_kernel_cache(),
            fused_gemv: true,
        }
    }
}

/// `$FUSED_KERNEL_CACHE`, else `$XDG_CACHE_HOME` or `~/.cache` + `fusedmodel/kernels`.
fn default_kernel_cache() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("FUSED_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("fusedmodel").join("kernels"))
}

pub struct GpuModel {
    config: ModelConfig,
    device: Arc<GpuDevice>,
    kernels: Kernels,
    blas: Blas,
    weights: GpuWeights,
    /// `(cos, sin)` tables `[max_positions, head_dim / 2]` f32.
    rope: (DeviceBuffer, DeviceBuffer),
    scratch: Scratch,
    options: GpuOptions,
    graphs: HashMap<usize, Graph>,
    cache_status: CacheStatus,
}

impl std::fmt::Debug for GpuModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuModel")
            .field("device", &self.device)
            .field("graphs", &self.graphs.len())
            .finish_non_exhaustive()
    }
}

// SAFETY: the model is driven by one thread at a time (the engine's); every call binds the
// context first. Graph handles are not thread-affine, only not concurrently usable.
unsafe impl Send for GpuModel {}

/// Device addresses of one packed plan's arrays.
#[derive(Debug, Clone, Copy)]
struct MetaPtrs {
    base: u64,
    at: MetaOffsets,
}

impl MetaPtrs {
    fn p(&self, offset: usize) -> u64 {
        self.base + offset as u64
    }
}

/// Counts that fix one pass's launches.
#[derive(Debug, Clone, Copy)]
struct Shape {
    rows: usize,
    chunks: usize,
    tiles: usize,
    decodes: usize,
    head_rows: usize,
    token_stride: usize,
    splits: DecodeSplits,
}

impl GpuModel {
    /// Uploads a host model (bf16 on the device).
    pub fn from_host(
        device: Arc<GpuDevice>,
        model: &Model,
        options: GpuOptions,
    ) -> Result<Self, ModelError> {
        let (kernels, cache_status) = load_kernels(&device, &options)?;
        let weights = GpuWeights::upload(&device, &model.config, &model.weights)?;
        Self::assemble(
            device,
            model.config.clone(),
            kernels,
            cache_status,
            weights,
            options,
        )
    }

    /// Seeded random weights generated on the device (no host copy; 7B shapes fit).
    pub fn dummy(
        device: Arc<GpuDevice>,
        config: ModelConfig,
        seed: u64,
        options: GpuOptions,
    ) -> Result<Self, ModelError> {
        let (kernels, cache_status) = load_kernels(&device, &options)?;
        let weights = GpuWeights::dummy(&device, &kernels, &config, seed)?;
        Self::assemble(device, config, kernels, cache_status, weights, options)
    }

    fn assemble(
        device: Arc<GpuDevice>,
        config: ModelConfig,
        kernels: Kernels,
        cache_status: CacheStatus,
        weights: GpuWeights,
        options: GpuOptions,
    ) -> Result<Self, ModelError> {
        if !Kernels::supports_attention(config.heads, config.kv_heads, config.head_dim) {
            return Err(ModelError::Config(format!(
                "the CUDA attention kernels need head_dim 64 or 128 and at most 8 query heads per \
                 KV head (model: head_dim {}, {} heads, {} KV heads)",
                config.head_dim, config.heads, config.kv_heads
            )));
        }
        let rope = rope_tables(&device, &config)?;
        let blas = Blas::new(&device).map_err(device_error)?;
        let scratch = Scratch::new(&device, &config, Needs::default())?;
        Ok(Self {
            config,
            device,
            kernels,
            blas,
            weights,
            rope,
            scratch,
            options,
            graphs: HashMap::new(),
            cache_status,
        })
    }

    pub fn device(&self) -> &Arc<GpuDevice> {
        &self.device
    }

    /// What the kernel cache did at load.
    pub fn kernel_cache_status(&self) -> &CacheStatus {
        &self.cache_status
    }

    /// Weight bytes one decode step reads (the memory roofline's numerator).
    pub fn weight_bytes_per_step(&self) -> usize {
        self.weights.bytes_per_step()
    }

    /// Decode graphs captured so far.
    pub fn graphs_captured(&self) -> usize {
        self.graphs.len()
    }

    /// The longest context sequences will reach (fixes the decode split plan of graphs).
    pub fn set_max_context(&mut self, tokens: usize) {
        if self.options.max_context != tokens {
            self.options.max_context = tokens;
            self.graphs.clear();
        }
    }

    /// The kernels, for benchmarks that time single operations.
    pub fn kernels_mut(&mut self) -> &mut Kernels {
        &mut self.kernels
    }

    pub fn set_graphs(&mut self, enabled: bool) {
        self.options.graphs = enabled;
        if !enabled {
            self.graphs.clear();
        }
    }

    /// Fold SwiGLU into small batches' gate/up GEMV (see [`GpuOptions::fused_gemv`]).
    pub fn set_fused_gemv(&mut self, enabled: bool) {
        if self.options.fused_gemv != enabled {
            self.options.fused_gemv = enabled;
            self.graphs.clear();
        }
    }

    /// The graph bucket of a decode-only batch, if it gets one.
    fn bucket(&self, chunks: &[SeqChunk<'_>]) -> Option<usize> {
        let decode_only = chunks.iter().all(|c| {
            c.tokens.len() == 1 && matches!(c.logits, LogitsWanted::Last | LogitsWanted::Greedy)
        });
        let bucket = chunks.len().next_power_of_two();
        (self.options.graphs && decode_only && !chunks.is_empty())
            .then_some(bucket)
            .filter(|&b| b <= self.options.max_graph_batch)
    }

    fn shape(&self, plan: &BatchPlan, graph: bool) -> Shape {
        let max_ctx = if graph {
            self.options.max_context.max(plan.max_ctx)
        } else {
            plan.max_ctx
        };
        Shape {
            rows: plan.rows(),
            chunks: plan.chunks(),
            tiles: plan.tile_chunk.len(),
            decodes: plan.dec_row.len(),
            head_rows: plan.head_rows.len(),
            token_stride: plan.token_stride,
            splits: DecodeSplits::plan(
                plan.dec_row.len(),
                self.config.kv_heads,
                max_ctx,
                self.device.multiprocessors(),
            ),
        }
    }

    /// `y = x · Wᵀ`: the bandwidth-bound GEMV for a few rows, cuBLAS otherwise.
    ///
    /// # Safety
    /// As [`Blas::linear`].
    #[allow(clippy::too_many_arguments)]
    unsafe fn linear(
        &self,
        x: u64,
        w: u64,
        y: u64,
        rows: usize,
        out: usize,
        inner: usize,
        kind: GemmOut,
    ) -> Result<(), ModelError> {
        // SAFETY: per the contract.
        unsafe {
            if Kernels::gemv_fits(rows, inner) {
                self.kernels.gemv(x, w, y, rows, out, inner, kind)
            } else {
                self.blas.linear(x, w, y, rows, out, inner, kind)
            }
        }
        .map_err(device_error)
    }

    /// `act = silu(xn · W_gateᵀ) · (xn · W_upᵀ)`: one GEMV for small batches, else a GEMM into
    /// `gate_up` and the SwiGLU kernel.
    ///
    /// # Safety
    /// As [`Blas::linear`]; `gate_up` is `[2 ffn, hidden]`.
    unsafe fn swiglu(&self, gate_up: u64, rows: usize) -> Result<(), ModelError> {
        let (x, h, f) = (&self.scratch, self.config.hidden, self.config.ffn);
        // SAFETY: per the contract.
        unsafe {
            if self.options.fused_gemv && Kernels::gemv_fits(rows, h) {
                let shape = GemvShape {
                    rows,
                    out: f,
                    inner: h,
                };
                self.kernels
                    .gemv_fused(x.xn.ptr(), gate_up, x.act.ptr(), shape, GemvOut::SwiGlu)
                    .map_err(device_error)
            } else {
                self.linear(
                    x.xn.ptr(),
                    gate_up,
                    x.gate_up.ptr(),
                    rows,
                    2 * f,
                    h,
                    GemmOut::Bf16,
                )?;
                self.kernels
                    .silu_mul(x.gate_up.ptr(), x.act.ptr(), rows, f)
                    .map_err(device_error)
            }
        }
    }

    /// Queues every kernel of one pass (also what a graph captures).
    fn launch(&self, m: MetaPtrs, s: Shape) -> Result<(), ModelError> {
        let cfg = &self.config;
        let (h, q_dim, kv_dim, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
        let (k, w, x) = (&self.kernels, &self.weights, &self.scratch);
        let eps = w.eps;
        let rope = Some((self.rope.0.ptr(), self.rope.1.ptr()));
        let at = m.at;
        // SAFETY: every buffer was sized by `Scratch::ensure` for this shape, the plan's arrays
        // were copied to `m`, and the engine made each chunk's KV positions ready.
        unsafe {
            k.embed(m.p(at.tokens), w.embed.ptr(), x.x.ptr(), s.rows, h)
                .map_err(device_error)?;
            for (layer, b) in w.blocks.iter().enumerate() {
                let batch = AttentionBatch {
                    chunk_q_start: m.p(at.chunk_q_start),
                    chunk_len: m.p(at.chunk_len),
                    chunk_start: m.p(at.chunk_start),
                    kv: m.p(at.kv) + (layer * s.chunks * 16) as u64,
                    token_stride: s.token_stride,
                    heads: cfg.heads,
                    kv_heads: cfg.kv_heads,
                    head_dim: cfg.head_dim,
                };
                let acc = GemmOut::F32 { accumulate: true };
                let set = GemmOut::F32 { accumulate: false };
                k.rms_norm(
                    x.x.ptr(),
                    b.attn_norm.ptr(),
                    x.xn.ptr(),
                    None,
                    s.rows,
                    h,
                    eps,
                )
                .map_err(device_error)?;
                let width = q_dim + 2 * kv_dim;
                self.linear(x.xn.ptr(), b.qkv.ptr(), x.qkv.ptr(), s.rows, width, h, set)?;
                k.rope_kv_write(
                    x.qkv.ptr(),
                    x.q.ptr(),
                    m.p(at.positions),
                    m.p(at.row_chunk),
                    &batch,
                    rope,
                    s.rows,
                )
                .map_err(device_error)?;
                k.attention_prefill(
                    &batch,
                    x.q.ptr(),
                    x.attn.ptr(),
                    m.p(at.tile_chunk),
                    m.p(at.tile_row0),
                    s.tiles,
                )
                .map_err(device_error)?;
                k.attention_decode(
                    &batch,
                    x.q.ptr(),
                    x.attn.ptr(),
                    m.p(at.dec_row),
                    m.p(at.dec_chunk),
                    s.decodes,
                    s.splits,
                    x.part_o.ptr(),
                    x.part_ml.ptr(),
                )
                .map_err(device_error)?;
                self.linear(x.attn.ptr(), b.o.ptr(), x.x.ptr(), s.rows, h, q_dim, acc)?;
                k.rms_norm(
                    x.x.ptr(),
                    b.mlp_norm.ptr(),
                    x.xn.ptr(),
                    None,
                    s.rows,
                    h,
                    eps,
                )
                .map_err(device_error)?;
                self.swiglu(b.gate_up.ptr(), s.rows)?;
                self.linear(x.act.ptr(), b.down.ptr(), x.x.ptr(), s.rows, h, f, acc)?;
            }
            k.rms_norm(
                x.x.ptr(),
                w.final_norm.ptr(),
                x.xn.ptr(),
                Some(m.p(at.head_rows)),
                s.head_rows,
                h,
                eps,
            )
            .map_err(device_error)?;
            let vocab = cfg.vocab_size;
            let set = GemmOut::F32 { accumulate: false };
            self.linear(
                x.xn.ptr(),
                w.lm_head(),
                x.logits.ptr(),
                s.head_rows,
                vocab,
                h,
                set,
            )?;
            k.argmax(x.logits.ptr(), x.picked.ptr(), s.head_rows, vocab)
                .map_err(device_error)?;
        }
        Ok(())
    }

    /// Runs the pass of `shape` from a graph of `bucket` (capturing it on first use).
    fn replay(&mut self, bucket: usize, m: MetaPtrs, shape: Shape) -> Result<(), ModelError> {
        if !self.graphs.contains_key(&bucket) {
            self.device.begin_capture().map_err(device_error)?;
            let launched = self.launch(m, shape);
            // Always end the capture, so the stream leaves capture mode even after an error.
            let captured = self.device.end_capture();
            launched?;
            let graph = captured.map_err(device_error)?;
            self.graphs.insert(bucket, graph);
        }
        match self.graphs.get(&bucket) {
            Some(graph) => graph.launch().map_err(device_error),
            None => Err(ModelError::Device(
                "decode graph missing after capture".into(),
            )),
        }
    }
}

impl GpuModel {
    /// Copies back what the batch asked for once the pass is done: the device's pick for each
    /// [`LogitsWanted::Greedy`] chunk and the logits rows of the others (consecutive rows in one
    /// copy), so a greedy decode batch moves a few bytes per sequence instead of a vocabulary row.
    fn fetch_logits(
        &self,
        chunks: &[SeqChunk<'_>],
        plan: &BatchPlan,
    ) -> Result<Logits, ModelError> {
        let vocab = self.config.vocab_size;
        let greedy = chunks.iter().any(|c| c.logits == LogitsWanted::Greedy);
        let mut ids = vec![0u32; if greedy { plan.head_rows.len() } else { 0 }];
        // SAFETY: `picked` holds one u32 per head row of this pass.
        unsafe { self.device.download(self.scratch.picked.ptr(), &mut ids) }
            .map_err(device_error)?;
        let mut picked = vec![None; if greedy { chunks.len() } else { 0 }];
        let mut spans = Vec::with_capacity(chunks.len());
        let mut runs: Vec<(usize, usize)> = Vec::new();
        let mut rows = 0;
        for (i, (c, &(first, count))) in chunks.iter().zip(&plan.spans).enumerate() {
            if c.logits == LogitsWanted::Greedy {
                // The kernel answers u32::MAX for a row of NaN only; the host argmax picks 0.
                let id = ids.get(first).copied().filter(|&t| (t as usize) < vocab);
                picked[i] = Some(id.unwrap_or(0));
                spans.push((rows, 0));
                continue;
            }
            spans.push((rows, count));
            rows += count;
            match runs.last_mut() {
                Some(run) if run.0 + run.1 == first => run.1 += count,
                _ if count > 0 => runs.push((first, count)),
                _ => {}
            }
        }
        let mut data = vec![0.0f32; rows * vocab];
        let mut at = 0;
        for (first, count) in runs {
            let src = self.scratch.logits.ptr() + (first * vocab * 4) as u64;
            // SAFETY: the logits buffer holds every head row of this pass.
            unsafe {
                self.device
                    .download(src, &mut data[at * vocab..(at + count) * vocab])
            }
            .map_err(device_error)?;
            at += count;
        }
        Ok(Logits {
            vocab,
            data,
            spans,
            picked,
        })
    }
}

fn load_kernels(
    device: &GpuDevice,
    options: &GpuOptions,
) -> Result<(Kernels, CacheStatus), ModelError> {
    Kernels::load(device, options.kernel_cache.as_deref()).map_err(device_error)
}

/// The CPU's RoPE table as device arrays: rotating `(1, 0)` pairs yields exactly `(cos, sin)`.
fn rope_tables(
    device: &GpuDevice,
    cfg: &ModelConfig,
) -> Result<(DeviceBuffer, DeviceBuffer), ModelError> {
    let table = RopeTable::new(
        cfg.head_dim,
        cfg.rope_theta,
        cfg.rope_scaling,
        cfg.max_positions,
    );
    let half = cfg.head_dim / 2;
    let mut cos = Vec::with_capacity(cfg.max_positions * half);
    let mut sin = Vec::with_capacity(cfg.max_positions * half);
    let mut unit = vec![0.0f32; cfg.head_dim];
    for pos in 0..cfg.max_positions {
        unit[..half].fill(1.0);
        unit[half..].fill(0.0);
        table.apply(&mut unit, pos);
        cos.extend_from_slice(&unit[..half]);
        sin.extend_from_slice(&unit[half..]);
    }
    Ok((upload(device, &cos)?, upload(device, &sin)?))
}

impl Forward for GpuModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// K/V are bf16 on the GPU.
    fn kv_element_bytes(&self) -> usize {
        2
    }

    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        kv: &dyn KvAccess,
    ) -> Result<Logits, ModelError> {
        check_chunks(chunks, self.config.vocab_size, self.config.max_positions)?;
        self.device.bind().map_err(device_error)?;
        let bucket = self.bucket(chunks);
        let plan = BatchPlan::new(chunks, kv, self.config.layers, PREFILL_TILE_ROWS, bucket)?;
        let shape = self.shape(&plan, bucket.is_some());
        let (bytes, offsets) = plan.pack();
        let (part_o, part_ml) =
            shape
                .splits
                .partial_sizes(shape.decodes, self.config.heads, self.config.head_dim);
        let needs = Needs {
            rows: shape.rows,
            head_rows: shape.head_rows,
            meta_bytes: bytes.len(),
            part_o,
            part_ml,
        };
        if self.scratch.ensure(&self.device, &self.config, needs)? {
            self.graphs.clear();
        }
        let meta = MetaPtrs {
            base: self.scratch.meta.ptr(),
            at: offsets,
        };
        // SAFETY: the meta buffer holds at least `bytes.len()` bytes (ensured above).
        unsafe { self.device.upload(meta.base, &bytes) }.map_err(device_error)?;
        match bucket {
            Some(bucket) => self.replay(bucket, meta, shape)?,
            None => self.launch(meta, shape)?,
        }
        self.fetch_logits(chunks, &plan)
    }
}
