//! The model's weights in GPU memory: matrices `[out, in]` (as the CPU's `f32` ones) bf16, or
//! FP8 with a scale per row for the blocks' matrices when [`WeightFormat::Fp8`] asks (quantized
//! on the device as each matrix arrives, so the model is never whole in bf16), or a GGUF's own
//! Q8_0 / Q4_K blocks when [`WeightFormat::Blocks`] asks; norm weights and biases `f32`.
//! Uploaded from host [`Weights`] (every architecture; a GGUF's matrices go up in their blocks
//! and are expanded on the device, the others are rounded to bf16 on the host), streamed
//! from a Llama-family safetensors checkpoint tensor by tensor through two page-locked buffers
//! (host memory stays at the two buffers, whatever the model's size), or generated on the device
//! from a seed (`--load-format dummy`).
//!
//! Must not: run layers (the model does).

use std::time::{Duration, Instant};

use fused_kernels::cpu::QuantMatrix;
use fused_kernels::cuda::{
    BlockFormat, BlockMatrix, DeviceBuffer, Element, Fp8Matrix, GpuDevice, Kernels, LinearWeights,
    PinnedStaging, WeightView,
};
use half::bf16;
use sha2::{Digest, Sha256};

use crate::model::ModelError;
use crate::model::checkpoint::{Checkpoint, Dtype, to_bf16_bytes};
use crate::model::config::{Arch, ModelConfig};
use crate::model::layout::{self, MatrixPlan, Part};
use crate::model::weights::{Linear, Mlp, Norm, Weights};

/// Bytes of one page-locked staging buffer (two alternate: one fills from disk while the other
/// crosses to the device).
const STAGING_BYTES: usize = 64 << 20;

/// How the blocks' matrices are kept on the device. The embedding and the LM head stay bf16 (as
/// vLLM keeps them under `--quantization fp8`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    #[default]
    Bf16,
    /// E4M3 with a scale per output row, quantized at load (vLLM's `--quantization fp8`).
    Fp8,
    /// A GGUF's matrices in their own Q8_0 or Q4_K blocks (vLLM's `--quantization gguf`); a
    /// matrix of another format, or stacked from several, is bf16.
    Blocks,
}

/// A matrix as the device holds it.
pub enum GpuMatrix {
    Bf16(DeviceBuffer<bf16>),
    Fp8(Fp8Matrix),
    Blocks(BlockMatrix),
}

impl GpuMatrix {
    pub fn bytes(&self) -> usize {
        match self {
            Self::Bf16(w) => w.bytes(),
            Self::Fp8(m) => m.bytes(),
            Self::Blocks(m) => m.bytes(),
        }
    }
}

impl WeightView for GpuMatrix {
    fn weights(&self) -> LinearWeights<'_> {
        match self {
            Self::Bf16(w) => w.weights(),
            Self::Fp8(m) => m.weights(),
            Self::Blocks(m) => m.weights(),
        }
    }
}

/// A dense layer: `weight [out, inner]` and an optional `bias [out]` f32 (the CPU's [`Linear`],
/// on the GPU).
pub struct GpuLinear {
    pub weight: GpuMatrix,
    pub bias: Option<DeviceBuffer<f32>>,
    pub out: usize,
    pub inner: usize,
}

impl GpuLinear {
    fn with_bias(self, bias: Option<DeviceBuffer<f32>>) -> Self {
        Self { bias, ..self }
    }
}

/// A norm's weights (`[hidden]` f32): RMSNorm, or LayerNorm when it has a bias.
pub struct GpuNorm {
    pub weight: DeviceBuffer<f32>,
    pub bias: Option<DeviceBuffer<f32>>,
}

/// The MLP's activation between its two projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu(gate) · up`: the input projection holds the gate rows, then the up rows.
    SwiGlu,
    /// GELU (tanh approximation) of the input projection plus its bias: GPT-2's.
    Gelu,
}

/// Puts each bf16 matrix that arrives on the device into the [`WeightFormat`] the model runs.
struct Store<'a> {
    device: &'a GpuDevice,
    kernels: &'a Kernels,
    format: WeightFormat,
}

impl Store<'_> {
    fn linear(
        &self,
        weight: DeviceBuffer<bf16>,
        out: usize,
        inner: usize,
    ) -> Result<GpuLinear, ModelError> {
        let weight = match self.format {
            WeightFormat::Bf16 | WeightFormat::Blocks => GpuMatrix::Bf16(weight),
            // The bf16 matrix is freed (a synchronising free) once its codes are made.
            WeightFormat::Fp8 => GpuMatrix::Fp8(Fp8Matrix::quantize(
                self.device,
                self.kernels,
                &weight,
                out,
                inner,
            )?),
        };
        Ok(GpuLinear {
            weight,
            bias: None,
            out,
            inner,
        })
    }

    /// An FP8 matrix read from an FP8 checkpoint: kept as it is, or expanded to bf16 when the
    /// model runs bf16 weights.
    fn fp8_linear(&self, matrix: Fp8Matrix) -> Result<GpuLinear, ModelError> {
        let (out, inner) = (matrix.out(), matrix.inner());
        let weight = match self.format {
            WeightFormat::Fp8 => GpuMatrix::Fp8(matrix),
            WeightFormat::Bf16 | WeightFormat::Blocks => {
                let mut dense = self.device.alloc::<bf16>(out * inner)?;
                self.kernels.dequantize_fp8(&matrix, &mut dense)?;
                GpuMatrix::Bf16(dense)
            }
        };
        Ok(GpuLinear {
            weight,
            bias: None,
            out,
            inner,
        })
    }
}

pub struct GpuBlock {
    pub attn_norm: GpuNorm,
    /// Q, K and V rows `[q + 2 kv, hidden]`; their bias (Qwen2's, GPT-2's) is added before RoPE.
    pub qkv: GpuLinear,
    pub o: GpuLinear,
    pub mlp_norm: GpuNorm,
    /// The MLP's input projection: gate rows then up rows `[2 ffn, hidden]` (SwiGLU), or
    /// `[ffn, hidden]` with its bias (GELU).
    pub up: GpuLinear,
    pub activation: Activation,
    pub down: GpuLinear,
}

impl GpuBlock {
    pub fn linears(&self) -> [&GpuLinear; 4] {
        [&self.qkv, &self.o, &self.up, &self.down]
    }
}

pub struct GpuWeights {
    /// `[vocab, hidden]` bf16.
    pub embed: DeviceBuffer<bf16>,
    /// Learned positions `[max_positions, hidden]` bf16 (GPT-2); `None` with RoPE.
    pub positions: Option<DeviceBuffer<bf16>>,
    pub blocks: Vec<GpuBlock>,
    pub final_norm: GpuNorm,
    /// `None`: tied to `embed`.
    pub lm_head: Option<DeviceBuffer<bf16>>,
    pub eps: f32,
}

impl GpuWeights {
    /// `[vocab, hidden]` bf16: the LM head, or the embedding it is tied to.
    pub fn lm_head(&self) -> &DeviceBuffer<bf16> {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// The largest block matrix's values when it is FP8 or GGUF blocks (what a GEMM of more rows
    /// than the GEMV takes expands them into), else 0.
    pub fn dense_values(&self) -> usize {
        self.blocks
            .iter()
            .flat_map(GpuBlock::linears)
            .filter(|l| !matches!(l.weight, GpuMatrix::Bf16(_)))
            .map(|l| l.out * l.inner)
            .max()
            .unwrap_or(0)
    }

    /// vLLM's name of how the block matrices are held: `fp8`, `gguf` (some in GGUF blocks) or
    /// `none`.
    pub fn quantization(&self) -> &'static str {
        let matrices = || {
            self.blocks
                .iter()
                .flat_map(GpuBlock::linears)
                .map(|l| &l.weight)
        };
        if matrices().any(|w| matches!(w, GpuMatrix::Fp8(_))) {
            "fp8"
        } else if matrices().any(|w| matches!(w, GpuMatrix::Blocks(_))) {
            "gguf"
        } else {
            "none"
        }
    }

    /// Bytes a decode step reads: every block's matrices and the LM head (one embedding row).
    pub fn bytes_per_step(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .flat_map(GpuBlock::linears)
            .map(|l| l.weight.bytes())
            .sum::<usize>();
        blocks + self.lm_head().bytes()
    }

    /// Uploads host weights (any architecture).
    pub fn upload(
        device: &GpuDevice,
        kernels: &Kernels,
        format: WeightFormat,
        cfg: &ModelConfig,
        w: &Weights,
    ) -> Result<Self, ModelError> {
        let store = Store {
            device,
            kernels,
            format,
        };
        let matrix = |m: &[f32]| upload_bf16(device, m);
        let expand = |p: &QuantMatrix| expand_on_device(device, kernels, p);
        let vector =
            |v: &[f32]| -> Result<DeviceBuffer<f32>, ModelError> { Ok(device.upload_new(v)?) };
        let linear = |l: &Linear| -> Result<GpuLinear, ModelError> {
            // A GGUF's blocks may come without their f32 values (`GgufSource::blocks_only`).
            let inner =
                (l.packed.as_ref()).map_or(l.weight.len() / l.out.max(1), QuantMatrix::inner);
            let bias = l.bias.as_deref().map(vector).transpose()?;
            let layer = match kept_blocks(format, l) {
                Some((block_format, packed)) => GpuLinear {
                    weight: GpuMatrix::Blocks(BlockMatrix::upload(
                        device,
                        block_format,
                        l.out,
                        inner,
                        packed,
                    )?),
                    bias: None,
                    out: l.out,
                    inner,
                },
                None => {
                    let dense = match &l.packed {
                        Some(packed) => expand(packed)?,
                        None => matrix(&l.weight)?,
                    };
                    store.linear(dense, l.out, inner)?
                }
            };
            Ok(layer.with_bias(bias))
        };
        let norm = |n: &Norm| -> Result<GpuNorm, ModelError> {
            Ok(match n {
                Norm::Rms { weight, .. } => GpuNorm {
                    weight: vector(weight)?,
                    bias: None,
                },
                Norm::Layer { weight, bias, .. } => GpuNorm {
                    weight: vector(weight)?,
                    bias: Some(vector(bias)?),
                },
            })
        };
        let mut blocks = Vec::with_capacity(w.blocks.len());
        for b in &w.blocks {
            let (up, activation, down) = match &b.mlp {
                Mlp::SwiGlu { gate_up, down } => (gate_up, Activation::SwiGlu, down),
                Mlp::Gelu { fc, proj } => (fc, Activation::Gelu, proj),
            };
            if activation == Activation::SwiGlu && up.bias.is_some() {
                return Err(ModelError::Config(
                    "the CUDA forward pass has no biases on SwiGLU's gate and up projections"
                        .into(),
                ));
            }
            blocks.push(GpuBlock {
                attn_norm: norm(&b.attn_norm)?,
                qkv: linear(&b.qkv)?,
                o: linear(&b.o)?,
                mlp_norm: norm(&b.mlp_norm)?,
                up: linear(up)?,
                activation,
                down: linear(down)?,
            });
        }
        // The head's blocks are the embedding's when the two are tied.
        let (embed, lm_head) = match (&w.lm_head, w.lm_head_packed()) {
            (None, Some(tied)) => (expand(tied)?, None),
            (None, None) => (matrix(&w.embed)?, None),
            (Some(_), Some(head)) => (matrix(&w.embed)?, Some(expand(head)?)),
            (Some(head), None) => (matrix(&w.embed)?, Some(matrix(head)?)),
        };
        Ok(Self {
            embed,
            positions: w.positions.as_deref().map(matrix).transpose()?,
            blocks,
            final_norm: norm(&w.final_norm)?,
            lm_head,
            eps: cfg.norm_eps,
        })
    }

    /// Streams a Llama-family safetensors checkpoint (bf16, f16 or f32, or FP8 block matrices
    /// with their scales; single or sharded) to the device, tensor by tensor in chunks of
    /// [`STAGING_BYTES`]; logs progress every few seconds.
    pub fn stream(
        device: &GpuDevice,
        kernels: &Kernels,
        format: WeightFormat,
        cfg: &ModelConfig,
        checkpoint: &Checkpoint,
    ) -> Result<Self, ModelError> {
        if !cfg.arch.streams_to_gpu() {
            return Err(ModelError::Config(format!(
                "{} checkpoints load through the host (Conv1D matrices are transposed there), not \
                 streamed to the GPU",
                cfg.arch.name()
            )));
        }
        let plan = layout::llama(cfg);
        let store = Store {
            device,
            kernels,
            format,
        };
        let mut streamer = Streamer::new(device, checkpoint)?;
        let mut linear = |m: &MatrixPlan| {
            if checkpoint.is_fp8(&m.parts[0].name) {
                store.fp8_linear(streamer.fp8_matrix(m)?)
            } else {
                store.linear(streamer.matrix(m)?, m.out(), m.inner)
            }
        };
        let norm = |name: &str| -> Result<GpuNorm, ModelError> {
            Ok(GpuNorm {
                weight: device.upload_new(&checkpoint.read_f32(name, &[cfg.hidden])?)?,
                bias: None,
            })
        };
        let qkv_bias = |parts: &[Part]| -> Result<Option<DeviceBuffer<f32>>, ModelError> {
            if parts.is_empty() {
                return Ok(None);
            }
            let stacked = (parts.iter())
                .map(|p| checkpoint.read_f32(&p.name, &[p.rows]))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(device.upload_new(&stacked.concat())?))
        };
        let mut blocks = Vec::with_capacity(plan.blocks.len());
        for b in &plan.blocks {
            blocks.push(GpuBlock {
                attn_norm: norm(&b.attn_norm)?,
                qkv: linear(&b.qkv)?.with_bias(qkv_bias(&b.qkv_bias)?),
                o: linear(&b.o)?,
                mlp_norm: norm(&b.mlp_norm)?,
                up: linear(&b.gate_up)?,
                activation: Activation::SwiGlu,
                down: linear(&b.down)?,
            });
        }
        let embed = streamer.matrix(&plan.embed)?;
        let has_head = checkpoint.contains(&plan.lm_head.parts[0].name);
        let lm_head = if plan.head_is_separate(cfg, has_head) {
            Some(streamer.matrix(&plan.lm_head)?)
        } else {
            None
        };
        let weights = Self {
            embed,
            positions: None,
            blocks,
            final_norm: norm(&plan.final_norm)?,
            lm_head,
            eps: cfg.norm_eps,
        };
        device.synchronize()?;
        streamer.report(true);
        Ok(weights)
    }

    /// Seeded random weights made on the device, distributed like the host's dummy weights
    /// (matrices uniform with the variance of N(0, 0.04²), norm weights uniform in [0.8, 1.2),
    /// biases in [-0.02, 0.02)). With `blocks`, the blocks' matrices are random GGUF blocks of
    /// that format instead (made on the host: benchmarks of the block GEMV).
    pub fn dummy(
        device: &GpuDevice,
        kernels: &Kernels,
        format: WeightFormat,
        cfg: &ModelConfig,
        seed: u64,
        blocks: Option<BlockFormat>,
    ) -> Result<Self, ModelError> {
        let (h, q, kv, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
        let gpt2 = cfg.arch == Arch::Gpt2;
        let bound = 0.02 * 3f32.sqrt() * 2.0;
        let store = Store {
            device,
            kernels,
            format,
        };
        let matrix = |name: &str, out: usize, inner: usize| -> Result<_, ModelError> {
            let mut weight = device.alloc::<bf16>(out * inner)?;
            kernels.fill_uniform(&mut weight, tensor_seed(seed, name), -bound, bound)?;
            Ok(weight)
        };
        let uniform = |name: &str, len: usize, lo: f32, hi: f32| {
            let mut values = device.alloc::<f32>(len)?;
            kernels.fill_uniform(&mut values, tensor_seed(seed, name), lo, hi)?;
            Ok::<_, ModelError>(values)
        };
        // A bias where the architecture has one.
        let bias = |name: &str, len: usize, present: bool| {
            present
                .then(|| uniform(&format!("{name}.bias"), len, -0.02, 0.02))
                .transpose()
        };
        let linear = |name: &str, out: usize, inner: usize, biased: bool| {
            let layer = match blocks {
                Some(block_format) => GpuLinear {
                    weight: GpuMatrix::Blocks(BlockMatrix::random(
                        device,
                        block_format,
                        out,
                        inner,
                        tensor_seed(seed, name),
                    )?),
                    bias: None,
                    out,
                    inner,
                },
                None => store.linear(matrix(name, out, inner)?, out, inner)?,
            };
            Ok::<_, ModelError>(layer.with_bias(bias(name, out, biased)?))
        };
        let norm = |name: &str| {
            Ok::<_, ModelError>(GpuNorm {
                weight: uniform(&format!("{name}.weight"), h, 0.8, 1.2)?,
                bias: bias(name, h, gpt2)?,
            })
        };
        let (activation, up_rows) = if gpt2 {
            (Activation::Gelu, f)
        } else {
            (Activation::SwiGlu, 2 * f)
        };
        let mut blocks = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("model.layers.{l}");
            let qkv_biased = cfg.arch != Arch::Llama;
            blocks.push(GpuBlock {
                attn_norm: norm(&format!("{p}.input_layernorm"))?,
                qkv: linear(&format!("{p}.self_attn.qkv"), q + 2 * kv, h, qkv_biased)?,
                o: linear(&format!("{p}.self_attn.o_proj.weight"), h, q, gpt2)?,
                mlp_norm: norm(&format!("{p}.post_attention_layernorm"))?,
                up: linear(&format!("{p}.mlp.gate_up"), up_rows, h, gpt2)?,
                activation,
                down: linear(&format!("{p}.mlp.down_proj.weight"), h, f, gpt2)?,
            });
        }
        let lm_head = if cfg.tie_embeddings {
            None
        } else {
            Some(matrix("lm_head.weight", cfg.vocab_size, h)?)
        };
        let weights = Self {
            embed: matrix("model.embed_tokens.weight", cfg.vocab_size, h)?,
            positions: gpt2
                .then(|| matrix("wpe.weight", cfg.max_positions, h))
                .transpose()?,
            blocks,
            final_norm: norm("model.norm")?,
            lm_head,
            eps: cfg.norm_eps,
        };
        device.synchronize()?;
        Ok(weights)
    }
}

/// The GGUF blocks of `l` the device keeps as they are under `format`: those of one format the
/// device reads (a stack of several formats, or another format, goes up as bf16).
fn kept_blocks(format: WeightFormat, l: &Linear) -> Option<(BlockFormat, &[u8])> {
    let packed = l
        .packed
        .as_ref()
        .filter(|_| format == WeightFormat::Blocks)?;
    match packed.kinds().as_slice() {
        [kind] => BlockFormat::of(*kind).map(|f| (f, packed.data())),
        _ => None,
    }
}

fn tensor_seed(seed: u64, name: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(seed.to_le_bytes())
        .chain_update(name)
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// A GGUF matrix as bf16, from its blocks: they cross to the device as they are (4.5–8.5 bits a
/// weight) and are expanded there, a run of rows of one format at a time.
fn expand_on_device(
    device: &GpuDevice,
    kernels: &Kernels,
    packed: &QuantMatrix,
) -> Result<DeviceBuffer<bf16>, ModelError> {
    let blocks = device.upload_new(packed.data())?;
    let mut dense = device.alloc::<bf16>(packed.out() * packed.inner())?;
    let (mut byte, mut value) = (0, 0);
    for (kind, bytes) in packed.segments() {
        let values = bytes.len() / kind.block_bytes() * kind.block_weights();
        kernels.expand_gguf(
            kind,
            blocks.slice(byte..byte + bytes.len())?,
            dense.slice_mut(value..value + values)?,
        )?;
        byte += bytes.len();
        value += values;
    }
    // The blocks' buffer is freed on return; the expansion must have read it.
    device.synchronize()?;
    Ok(dense)
}

fn upload_bf16(device: &GpuDevice, values: &[f32]) -> Result<DeviceBuffer<bf16>, ModelError> {
    let host: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
    Ok(device.upload_new(&host)?)
}

/// Moves checkpoint tensors to the device through two alternating page-locked buffers: a chunk
/// is read from disk (and converted to bf16) into one while the other's copy runs.
struct Streamer<'a> {
    device: &'a GpuDevice,
    checkpoint: &'a Checkpoint,
    staging: [PinnedStaging; 2],
    next: usize,
    /// Raw bytes of a chunk that is not bf16 yet.
    raw: Vec<u8>,
    total: u64,
    loaded: u64,
    started: Instant,
    last_report: Instant,
}

impl<'a> Streamer<'a> {
    fn new(device: &'a GpuDevice, checkpoint: &'a Checkpoint) -> Result<Self, ModelError> {
        let now = Instant::now();
        Ok(Self {
            device,
            checkpoint,
            staging: [
                device.pinned_staging(STAGING_BYTES)?,
                device.pinned_staging(STAGING_BYTES)?,
            ],
            next: 0,
            raw: Vec::new(),
            total: checkpoint.total_bytes(),
            loaded: 0,
            started: now,
            last_report: now,
        })
    }

    /// A stacked matrix (bf16): each part's rows uploaded after the previous part's.
    fn matrix(&mut self, m: &MatrixPlan) -> Result<DeviceBuffer<bf16>, ModelError> {
        let mut weight = self.device.alloc::<bf16>(m.out() * m.inner)?;
        let mut row = 0;
        for part in &m.parts {
            self.upload(
                &part.name,
                &[part.rows, m.inner],
                &mut weight,
                row * m.inner,
            )?;
            row += part.rows;
        }
        Ok(weight)
    }

    /// An FP8 matrix: each part's codes uploaded as stored, after the previous part's, and its
    /// scales (per tensor or per row) as one per row.
    fn fp8_matrix(&mut self, m: &MatrixPlan) -> Result<Fp8Matrix, ModelError> {
        let mut codes = self.device.alloc::<u8>(m.out() * m.inner)?;
        let mut scales = Vec::with_capacity(m.out());
        let mut row = 0;
        for part in &m.parts {
            let shape = [part.rows, m.inner];
            if !self.checkpoint.is_fp8(&part.name) {
                return Err(ModelError::Format(format!(
                    "`{}` is stacked with FP8 matrices but is not FP8",
                    part.name
                )));
            }
            self.upload(&part.name, &shape, &mut codes, row * m.inner)?;
            scales.extend(self.checkpoint.fp8_scales(&part.name, part.rows)?);
            row += part.rows;
        }
        let scales = self.device.upload_new(&scales)?;
        Ok(Fp8Matrix::from_parts(codes, scales, m.out(), m.inner)?)
    }

    /// Tensor `name` (of `shape`) into `dst` from element `offset` on, chunk by chunk: bf16
    /// from any float type, or FP8 codes (`u8`) as stored.
    fn upload<T: Element>(
        &mut self,
        name: &str,
        shape: &[usize],
        dst: &mut DeviceBuffer<T>,
        offset: usize,
    ) -> Result<(), ModelError> {
        let entry = self.checkpoint.entry(name, shape)?.clone();
        let (width, element) = (entry.dtype.bytes(), size_of::<T>());
        let as_stored = width == element && matches!(entry.dtype, Dtype::Bf16 | Dtype::F8E4M3);
        let converts = element == size_of::<bf16>() && entry.dtype != Dtype::F8E4M3;
        if !as_stored && !converts {
            return Err(ModelError::Format(format!(
                "`{name}` is {:?}, which does not load into {element}-byte elements",
                entry.dtype
            )));
        }
        let per_chunk = STAGING_BYTES / element;
        let elements = entry.elements();
        let mut done = 0;
        while done < elements {
            let count = per_chunk.min(elements - done);
            let staging = &mut self.staging[self.next];
            self.next ^= 1;
            let out = &mut staging.bytes_mut()?[..count * element];
            let start = (done * width) as u64;
            if as_stored {
                self.checkpoint.read(&entry, start, out)?;
            } else {
                self.raw.resize(count * width, 0);
                self.checkpoint.read(&entry, start, &mut self.raw)?;
                to_bf16_bytes(entry.dtype, &self.raw, out);
            }
            self.device
                .upload_staged(dst, offset + done, staging, count * element)?;
            done += count;
            self.loaded += (count * width) as u64;
            self.report(false);
        }
        Ok(())
    }

    /// A progress line every few seconds (and a last one at the end).
    fn report(&mut self, last: bool) {
        if !last && self.last_report.elapsed() < Duration::from_secs(3) {
            return;
        }
        self.last_report = Instant::now();
        let seconds = self.started.elapsed().as_secs_f64();
        let gb_per_s = self.loaded as f64 / seconds.max(1e-9) / 1e9;
        tracing::info!(
            loaded_gb = self.loaded as f64 / 1e9,
            total_gb = self.total as f64 / 1e9,
            gb_per_s,
            seconds,
            "{}",
            if last {
                "weights streamed to the GPU"
            } else {
                "streaming weights to the GPU"
            }
        );
    }
}
