//! [`GpuModel`]: the Llama-family forward pass on one GPU. Each call plans the batch on the host
//! ([`BatchPlan`]), copies the plan to the device in one transfer, queues the [`Pass`] (the CPU
//! forward's steps, on the device's stream) and copies the wanted logits back. Decode-only
//! batches replay a CUDA graph captured once per batch-size bucket (and KV layout and decode
//! split): the plan's layout depends on the bucket only and KV addresses never move, so a graph
//! stays valid as pages are mapped.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::sync::Arc;

use fused_kernels::cpu::{AttentionShape, RopeTable};
use fused_kernels::cuda::{
    BatchArrays, BatchShape, Blas, BlockFormat, CacheStatus, CudaError, DecodeSplits, DeviceBatch,
    DeviceBuffer, DeviceSlice, GpuDevice, Graph, Kernels, PREFILL_TILE_ROWS, PersistentLayer,
    PersistentProgram, PersistentShape, RopeTables,
};

use super::pass::Pass;
use super::plan::{BatchPlan, MetaOffsets};
use super::scratch::{Needs, Scratch};
use super::weights::{Activation, GpuLinear, GpuMatrix, GpuNorm, GpuWeights, WeightFormat};
use crate::kv::KvAccess;
use crate::model::checkpoint::Checkpoint;
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
    /// The largest batch the scheduler composes (its token budget) and the most sequences it
    /// runs: the work buffers are sized for them at load, before the KV pool takes the free
    /// memory, so no pass allocates later.
    pub max_batch_tokens: usize,
    pub max_seqs: usize,
    /// Fold SwiGLU into the gate/up GEMV of batches the GEMV takes (off: a separate kernel, as
    /// larger batches run; benchmarks compare the two).
    pub fused_gemv: bool,
    /// How the blocks' matrices are kept (`--quantization fp8`: FP8, quantized at load).
    pub weights: WeightFormat,
    /// Run the layers of a one-sequence decode step as one persistent kernel where the model
    /// allows it (`--decode-kernel persistent`; the per-op path otherwise).
    pub persistent_decode: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self {
            graphs: true,
            max_graph_batch: 256,
            max_context: 4096,
            max_batch_tokens: 4096,
            max_seqs: 256,
            kernel_cache: default_kernel_cache(),
            fused_gemv: true,
            weights: WeightFormat::Bf16,
            persistent_decode: false,
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

/// Which vocabulary matrix [`GpuModel::remap_vocab`] hands over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabMatrix {
    /// The input embedding.
    Input,
    /// The LM head.
    Output,
}

pub struct GpuModel {
    config: ModelConfig,
    device: Arc<GpuDevice>,
    kernels: Kernels,
    blas: Blas,
    /// The persistent decode kernel's program, when the options ask for it and the model's
    /// blocks are ones it runs. Declared before `weights`: it holds their addresses, and is
    /// dropped first.
    persistent: Option<PersistentProgram>,
    weights: GpuWeights,
    /// `(cos, sin)` tables `[max_positions, head_dim / 2]` f32; `None` for learned positions.
    rope: Option<RopeTables>,
    scratch: Scratch,
    /// Where FP8 matrices are expanded to bf16 for GEMMs of many rows (empty for bf16 models).
    dense: DeviceBuffer<half::bf16>,
    options: GpuOptions,
    graphs: HashMap<GraphKey, Graph>,
    cache_status: CacheStatus,
    /// Rows of the LM head the head scores and the device picks among (`Forward::
    /// limit_output_ids`): the vocabulary, or the tokenizer's ids when the model has more rows.
    output_ids: usize,
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

/// What fixes a decode graph's launches besides the buffers (which only move when the graphs are
/// dropped): the batch-size bucket, the KV layout's token stride and the decode split plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct GraphKey {
    bucket: usize,
    token_stride: usize,
    splits: (usize, usize),
}

impl GpuModel {
    /// Uploads a host model (bf16 on the device).
    pub fn from_host(
        device: Arc<GpuDevice>,
        model: &Model,
        options: GpuOptions,
    ) -> Result<Self, ModelError> {
        let (kernels, cache_status) = load_kernels(&device, &options)?;
        let format = options.weights;
        let weights = GpuWeights::upload(&device, &kernels, format, &model.config, &model.weights)?;
        Self::assemble(
            device,
            model.config.clone(),
            kernels,
            cache_status,
            weights,
            options,
        )
    }

    /// Streams an HF safetensors checkpoint directory to the device (no host copy of the
    /// weights; host memory stays at two 64 MiB staging buffers).
    pub fn from_checkpoint(
        device: Arc<GpuDevice>,
        config: ModelConfig,
        dir: &std::path::Path,
        options: GpuOptions,
    ) -> Result<Self, ModelError> {
        let (kernels, cache_status) = load_kernels(&device, &options)?;
        let checkpoint = Checkpoint::open(dir)?;
        let weights = GpuWeights::stream(&device, &kernels, options.weights, &config, &checkpoint)?;
        Self::assemble(device, config, kernels, cache_status, weights, options)
    }

    /// Seeded random weights generated on the device (no host copy; 7B shapes fit).
    pub fn dummy(
        device: Arc<GpuDevice>,
        config: ModelConfig,
        seed: u64,
        options: GpuOptions,
    ) -> Result<Self, ModelError> {
        let (kernels, cache_status) = load_kernels(&device, &options)?;
        let weights = GpuWeights::dummy(&device, &kernels, options.weights, &config, seed, None)?;
        Self::assemble(device, config, kernels, cache_status, weights, options)
    }

    /// [`GpuModel::dummy`] with the blocks' matrices in random GGUF blocks of `format` (what
    /// `--quantization gguf` keeps of a GGUF file): benchmarks of the block GEMV.
    pub fn dummy_blocks(
        device: Arc<GpuDevice>,
        config: ModelConfig,
        seed: u64,
        options: GpuOptions,
        format: BlockFormat,
    ) -> Result<Self, ModelError> {
        let (kernels, cache_status) = load_kernels(&device, &options)?;
        let weights = GpuWeights::dummy(
            &device,
            &kernels,
            options.weights,
            &config,
            seed,
            Some(format),
        )?;
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
        let rope = match config.arch.rotary() {
            true => {
                let table = RopeTable::new(
                    config.head_dim,
                    config.rope_theta,
                    config.rope_scaling,
                    config.max_positions,
                );
                Some(RopeTables::upload(&device, &table, config.head_dim)?)
            }
            false => None,
        };
        let blas = Blas::new(&device)?;
        let needs = Needs::upper_bound(
            &config,
            options.max_batch_tokens,
            options.max_seqs.max(options.max_graph_batch),
            options.max_context,
            device.multiprocessors(),
        );
        let scratch = Scratch::new(&device, &config, needs).map_err(|e| {
            ModelError::Memory(format!(
                "work buffers for batches of {} tokens and {} sequences: {e}",
                options.max_batch_tokens, options.max_seqs
            ))
        })?;
        let dense = device.alloc(weights.dense_values())?;
        let persistent = match options.persistent_decode {
            true => persistent_program(&device, &config, &weights)?,
            false => None,
        };
        Ok(Self {
            persistent,
            output_ids: config.vocab_size,
            config,
            device,
            kernels,
            blas,
            weights,
            rope,
            scratch,
            dense,
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

    /// Lays the input embedding and the LM head out anew (a vocabulary patch): `remap` gets each
    /// base matrix `[vocab, hidden]` bf16 and which one it is, and returns the patched matrix of
    /// the same shape. A tied head becomes its own matrix. Host memory: the base matrices and
    /// the patched one being uploaded.
    pub fn remap_vocab(
        &mut self,
        remap: impl Fn(&[half::bf16], VocabMatrix) -> Result<Vec<half::bf16>, ModelError>,
    ) -> Result<(), ModelError> {
        self.device.bind()?;
        let download = |buffer: &DeviceBuffer<half::bf16>| {
            let mut host = vec![half::bf16::ZERO; buffer.len()];
            self.device.download(buffer, &mut host)?;
            Ok::<_, ModelError>(host)
        };
        let embed = download(&self.weights.embed)?;
        let head = self.weights.lm_head.as_ref().map(download).transpose()?;
        let patched = remap(&embed, VocabMatrix::Input)?;
        self.device.upload(&mut self.weights.embed, &patched)?;
        let patched = remap(head.as_deref().unwrap_or(&embed), VocabMatrix::Output)?;
        match &mut self.weights.lm_head {
            Some(head) => self.device.upload(head, &patched)?,
            None => {
                // The head's address changes: graphs captured with the tied one are stale.
                self.weights.lm_head = Some(self.device.upload_new(&patched)?);
                self.graphs.clear();
            }
        }
        Ok(())
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

    /// Runs one-sequence decode steps' layers in the persistent kernel (see
    /// [`GpuOptions::persistent_decode`]); returns whether it runs (the model may not allow it).
    pub fn set_persistent_decode(&mut self, enabled: bool) -> Result<bool, ModelError> {
        self.options.persistent_decode = enabled;
        self.persistent = match enabled {
            true => persistent_program(&self.device, &self.config, &self.weights)?,
            false => None,
        };
        Ok(self.persistent.is_some())
    }

    /// The persistent decode kernel's program, while it runs (benchmarks read its timers).
    pub fn persistent_program(&mut self) -> Option<&mut PersistentProgram> {
        self.persistent.as_mut()
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

    /// The batch's bounds: the model's, the KV layout's, and the longest context the pass (or
    /// the graph it is captured into) must cover.
    fn batch_shape(&self, plan: &BatchPlan, graph: bool) -> BatchShape {
        let cfg = &self.config;
        let max_context = if graph {
            self.options.max_context.max(plan.max_ctx)
        } else {
            plan.max_ctx
        };
        BatchShape {
            attention: AttentionShape {
                heads: cfg.heads,
                kv_heads: cfg.kv_heads,
                head_dim: cfg.head_dim,
            },
            token_stride: plan.token_stride,
            layers: cfg.layers,
            vocab: cfg.vocab_size,
            positions: cfg.max_positions,
            max_context,
        }
    }
}

/// Runs `pass` from the graph of `key`, capturing it on first use.
fn replay(
    device: &GpuDevice,
    graphs: &mut HashMap<GraphKey, Graph>,
    key: GraphKey,
    pass: impl FnOnce() -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let graph = match graphs.entry(key) {
        Entry::Occupied(graph) => graph.into_mut(),
        Entry::Vacant(slot) => {
            device.begin_capture()?;
            let launched = pass();
            // Always end the capture, so the stream leaves capture mode even after an error.
            let captured = device.end_capture();
            launched?;
            slot.insert(captured?)
        }
    };
    // SAFETY: the graph was captured from a pass over this model's buffers and `meta`, which
    // have not moved since (`Scratch::ensure` reports a move and the graphs are dropped then),
    // with this key's bucket, token stride and decode splits; a bucket fixes every array length
    // and offset of the padded plan, so `meta` now holds this step's plan in the captured
    // layout, and it meets the `DeviceBatch` contract `forward` vouched for.
    unsafe { graph.launch() }?;
    Ok(())
}

/// Typed views of the plan's arrays in the packed buffer.
fn batch_arrays<'a>(
    meta: &'a DeviceBuffer<u8>,
    at: &MetaOffsets,
    plan: &BatchPlan,
) -> Result<BatchArrays<'a>, CudaError> {
    let u32s = |offset: usize, values: &[u32]| meta.cast_slice::<u32>(offset, values.len());
    Ok(BatchArrays {
        tokens: u32s(at.tokens, &plan.tokens)?,
        positions: u32s(at.positions, &plan.positions)?,
        row_chunk: u32s(at.row_chunk, &plan.row_chunk)?,
        chunk_q_start: u32s(at.chunk_q_start, &plan.chunk_q_start)?,
        chunk_len: u32s(at.chunk_len, &plan.chunk_len)?,
        chunk_start: u32s(at.chunk_start, &plan.chunk_start)?,
        tile_chunk: u32s(at.tile_chunk, &plan.tile_chunk)?,
        tile_row0: u32s(at.tile_row0, &plan.tile_row0)?,
        dec_row: u32s(at.dec_row, &plan.dec_row)?,
        dec_chunk: u32s(at.dec_chunk, &plan.dec_chunk)?,
        head_rows: u32s(at.head_rows, &plan.head_rows)?,
        kv: meta.cast_slice::<u64>(at.kv, plan.kv.len())?,
    })
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
        let vocab = self.output_ids;
        let greedy = chunks.iter().any(|c| c.logits == LogitsWanted::Greedy);
        let head = &self.scratch.act.head;
        let mut ids = vec![0u32; if greedy { plan.head_rows.len() } else { 0 }];
        self.device.download(&head.picked, &mut ids)?;
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
            let src = head.logits.slice(first * vocab..(first + count) * vocab)?;
            self.device
                .download(&src, &mut data[at * vocab..(at + count) * vocab])?;
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

/// The persistent decode kernel's program for `weights`, or `None` (with the reason logged)
/// when the model's blocks are not ones it runs: Llama-family (RMSNorm, SwiGLU), bf16 matrices,
/// no biases.
fn persistent_program(
    device: &GpuDevice,
    config: &ModelConfig,
    weights: &GpuWeights,
) -> Result<Option<PersistentProgram>, ModelError> {
    let shape = PersistentShape {
        hidden: config.hidden,
        heads: config.heads,
        kv_heads: config.kv_heads,
        head_dim: config.head_dim,
        ffn: config.ffn,
        layers: config.layers,
        max_positions: config.max_positions,
    };
    let mut layers = Vec::with_capacity(weights.blocks.len());
    let mut why = shape.unsupported();
    for b in &weights.blocks {
        fn bf16(l: &GpuLinear) -> Option<DeviceSlice<'_, half::bf16>> {
            match (&l.weight, &l.bias) {
                (GpuMatrix::Bf16(w), None) => Some(w.view()),
                _ => None,
            }
        }
        fn norm(n: &GpuNorm) -> Option<DeviceSlice<'_, f32>> {
            n.bias.is_none().then(|| n.weight.view())
        }
        let layer = (b.activation == Activation::SwiGlu)
            .then_some(())
            .and_then(|()| {
                Some(PersistentLayer {
                    attn_norm: norm(&b.attn_norm)?,
                    qkv: bf16(&b.qkv)?,
                    o: bf16(&b.o)?,
                    mlp_norm: norm(&b.mlp_norm)?,
                    gate_up: bf16(&b.up)?,
                    down: bf16(&b.down)?,
                })
            });
        match layer {
            Some(layer) => layers.push(layer),
            None => {
                why.get_or_insert_with(|| {
                    "its blocks are not RMSNorm + SwiGLU with bf16 matrices and no biases".into()
                });
            }
        }
    }
    if let Some(why) = why {
        tracing::warn!(
            "the persistent decode kernel does not run this model ({why}): per-op decode"
        );
        return Ok(None);
    }
    // SAFETY: the matrices and norms are the model's `weights`, which the model keeps (and
    // never replaces block by block) for as long as it holds the program; the program is
    // dropped before them (field order).
    let program = unsafe { PersistentProgram::new(device, shape, &layers)? };
    let (grid, splits) = program.grid_and_splits();
    tracing::info!(grid, splits, "persistent decode kernel ready");
    Ok(Some(program))
}

fn load_kernels(
    device: &GpuDevice,
    options: &GpuOptions,
) -> Result<(Kernels, CacheStatus), ModelError> {
    Ok(Kernels::load(device, options.kernel_cache.as_deref())?)
}

impl Forward for GpuModel {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// bf16: the KV region holds what `rope_kv_write` stores.
    fn kv_element_bytes(&self) -> usize {
        size_of::<half::bf16>()
    }

    /// The head's GEMM covers the first `ids` rows only (they are contiguous), so the padding
    /// rows are neither scored nor picked nor copied back.
    fn limit_output_ids(&mut self, ids: usize) {
        let ids = ids.clamp(1, self.config.vocab_size);
        if ids != self.output_ids {
            self.output_ids = ids;
            // The head's width is baked into captured graphs.
            self.graphs.clear();
        }
    }

    fn quantization(&self) -> &'static str {
        self.weights.quantization()
    }

    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        kv: &dyn KvAccess,
    ) -> Result<Logits, ModelError> {
        check_chunks(chunks, self.config.vocab_size, self.config.max_positions)?;
        self.device.bind()?;
        // One sequence's decode step: the persistent kernel, outside graphs (each launch's
        // barriers start where the last one's ended).
        let persistent =
            self.persistent.is_some() && chunks.len() == 1 && chunks[0].tokens.len() == 1;
        let bucket = match persistent {
            true => None,
            false => self.bucket(chunks),
        };
        let plan = BatchPlan::new(chunks, kv, self.config.layers, PREFILL_TILE_ROWS, bucket)?;
        let shape = self.batch_shape(&plan, bucket.is_some());
        let splits = DecodeSplits::plan(
            plan.dec_row.len(),
            self.config.kv_heads,
            shape.max_context,
            self.device.multiprocessors(),
        );
        let (bytes, offsets) = plan.pack();
        let (part_o, part_ml) =
            splits.partial_sizes(plan.dec_row.len(), self.config.heads, self.config.head_dim);
        let needs = Needs {
            rows: plan.rows(),
            head_rows: plan.head_rows.len(),
            meta_bytes: bytes.len(),
            part_o,
            part_ml,
        };
        if self.scratch.ensure(&self.device, &self.config, needs)? {
            self.graphs.clear();
        }
        self.device.upload(&mut self.scratch.meta, &bytes)?;
        let arrays = batch_arrays(&self.scratch.meta, &offsets, &plan)?;
        // SAFETY: the arrays are `plan`'s, uploaded into `meta` just above (stream-ordered
        // before any kernel reads them). `BatchPlan::new` derives every row, chunk, tile and
        // decode index from the chunk list, so each is in range by construction (padding rows
        // at `PAD_POSITION`, padding chunks empty); `check_chunks` refused tokens outside the
        // vocabulary and positions past `max_positions`; `max_context` is at least the plan's
        // longest context. The K/V addresses come from `KvAccess::layer_kv`, whose contract (the
        // KV manager's) is that positions below a slot's ready length are mapped; the caller of
        // `forward` (the engine) made positions `0..start + len` ready for each chunk and gave
        // each chunk its own slot, and this call waits for the kernels (`fetch_logits`
        // synchronises) before it returns, so the slots stay live while they run.
        let batch = unsafe { DeviceBatch::new(arrays, shape) }?;
        let pass = Pass {
            config: &self.config,
            kernels: &self.kernels,
            blas: &self.blas,
            weights: &self.weights,
            rope: self.rope.as_ref(),
            batch,
            splits,
            fused_gemv: self.options.fused_gemv,
            output_ids: self.output_ids,
        };
        let (activations, dense) = (&mut self.scratch.act, &mut self.dense);
        if let Some(program) = self.persistent.as_mut().filter(|_| persistent) {
            pass.forward_persistent(activations, program)?;
            return self.fetch_logits(chunks, &plan);
        }
        match bucket {
            Some(bucket) => {
                let key = GraphKey {
                    bucket,
                    token_stride: shape.token_stride,
                    splits: (splits.split_len, splits.splits),
                };
                replay(&self.device, &mut self.graphs, key, || {
                    pass.forward(activations, dense)
                })?;
            }
            None => pass.forward(activations, dense)?,
        }
        self.fetch_logits(chunks, &plan)
    }
}
