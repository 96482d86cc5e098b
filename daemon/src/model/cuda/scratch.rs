//! Device buffers one forward pass works in, sized for the largest batch seen so far and grouped
//! by the step that writes them (as the CPU pass's locals). They only grow; a growth moves them,
//! so the model drops its captured graphs when [`Scratch::ensure`] says it reallocated.

use fused_kernels::cuda::{DecodeSplits, DeviceBuffer, GpuDevice, PREFILL_TILE_ROWS};
use half::bf16;

use crate::model::ModelError;
use crate::model::config::ModelConfig;

/// What a batch needs: rows, logits rows, metadata bytes, decode partial floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    pub rows: usize,
    pub head_rows: usize,
    pub meta_bytes: usize,
    pub part_o: usize,
    pub part_ml: usize,
}

impl Needs {
    fn max(self, other: Self) -> Self {
        Self {
            rows: self.rows.max(other.rows),
            head_rows: self.head_rows.max(other.head_rows),
            meta_bytes: self.meta_bytes.max(other.meta_bytes),
            part_o: self.part_o.max(other.part_o),
            part_ml: self.part_ml.max(other.part_ml),
        }
    }

    /// At least what any batch of at most `rows` tokens, `seqs` sequences (decode batches
    /// padded to `seqs` rows) and `max_context` tokens of context needs: sizing the scratch for
    /// this at start-up means no pass allocates later, when the KV pool may have taken the free
    /// memory.
    pub fn upper_bound(
        cfg: &ModelConfig,
        rows: usize,
        seqs: usize,
        max_context: usize,
        multiprocessors: usize,
    ) -> Self {
        let rows = rows.max(seqs);
        let (part_o, part_ml) = (1..=seqs)
            .map(|decodes| {
                DecodeSplits::plan(decodes, cfg.kv_heads, max_context, multiprocessors)
                    .partial_sizes(decodes, cfg.heads, cfg.head_dim)
            })
            .fold((0, 0), |(o, ml), (po, pml)| (o.max(po), ml.max(pml)));
        // The packed batch arrays (`BatchPlan::pack`): per row 3 u32, per chunk 3 u32, per tile
        // and per decode 2 u32, per logits row 1 u32, per layer and chunk 2 u64 of K/V address;
        // 16 bytes of alignment per array.
        let tiles = rows.div_ceil(PREFILL_TILE_ROWS) + seqs;
        let meta_bytes = 4 * (3 * rows + 3 * seqs + 2 * tiles + 2 * seqs + seqs)
            + 16 * cfg.layers * seqs
            + 16 * 12;
        Self {
            rows,
            head_rows: seqs,
            meta_bytes,
            part_o,
            part_ml,
        }
    }

    fn covers(&self, other: &Self) -> bool {
        self.max(*other) == *self
    }

    /// Rounded up so that growth happens a few times, not every batch.
    fn rounded(self) -> Self {
        let up = |n: usize, min: usize| n.max(min).next_power_of_two();
        Self {
            rows: up(self.rows, 64),
            head_rows: up(self.head_rows, 16),
            meta_bytes: up(self.meta_bytes, 64 << 10),
            part_o: up(self.part_o, 1 << 16),
            part_ml: up(self.part_ml, 1 << 10),
        }
    }
}

/// What the attention step writes.
pub struct AttentionBuffers {
    /// `[rows, q + 2 kv]` f32.
    pub qkv: DeviceBuffer<f32>,
    /// Rotated queries `[rows, q]` bf16.
    pub q: DeviceBuffer<bf16>,
    /// Split-KV decode partials: outputs and (max, sum) pairs.
    pub part_o: DeviceBuffer<f32>,
    pub part_ml: DeviceBuffer<f32>,
    /// Attention output `[rows, q]` bf16.
    pub out: DeviceBuffer<bf16>,
}

/// What the MLP step writes.
pub struct MlpBuffers {
    /// `[rows, 2 ffn]` bf16 (unless SwiGLU is folded into the GEMV).
    pub gate_up: DeviceBuffer<bf16>,
    /// SwiGLU output `[rows, ffn]` bf16.
    pub hidden: DeviceBuffer<bf16>,
}

/// What the head writes.
pub struct HeadBuffers {
    /// `[head_rows, vocab]` f32.
    pub logits: DeviceBuffer<f32>,
    /// `[head_rows]`: the greedy choice of each logits row.
    pub picked: DeviceBuffer<u32>,
}

/// The activations of one pass.
pub struct Activations {
    /// Residual stream `[rows, hidden]` f32.
    pub x: DeviceBuffer<f32>,
    /// Normed rows `[rows, hidden]` bf16 (also the final norm's output).
    pub normed: DeviceBuffer<bf16>,
    pub attn: AttentionBuffers,
    pub mlp: MlpBuffers,
    pub head: HeadBuffers,
}

pub struct Scratch {
    pub capacity: Needs,
    /// The batch plan's packed arrays (one upload per pass).
    pub meta: DeviceBuffer<u8>,
    pub act: Activations,
}

impl Scratch {
    pub fn new(device: &GpuDevice, cfg: &ModelConfig, needs: Needs) -> Result<Self, ModelError> {
        let n = needs.rounded();
        let (h, q, kv, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
        Ok(Self {
            capacity: n,
            meta: device.alloc(n.meta_bytes)?,
            act: Activations {
                x: device.alloc(n.rows * h)?,
                normed: device.alloc(n.rows.max(n.head_rows) * h)?,
                attn: AttentionBuffers {
                    qkv: device.alloc(n.rows * (q + 2 * kv))?,
                    q: device.alloc(n.rows * q)?,
                    part_o: device.alloc(n.part_o)?,
                    part_ml: device.alloc(n.part_ml)?,
                    out: device.alloc(n.rows * q)?,
                },
                mlp: MlpBuffers {
                    gate_up: device.alloc(n.rows * 2 * f)?,
                    hidden: device.alloc(n.rows * f)?,
                },
                head: HeadBuffers {
                    logits: device.alloc(n.head_rows * cfg.vocab_size)?,
                    picked: device.alloc(n.head_rows)?,
                },
            },
        })
    }

    /// Makes room for `needs`; returns whether the buffers moved.
    pub fn ensure(
        &mut self,
        device: &GpuDevice,
        cfg: &ModelConfig,
        needs: Needs,
    ) -> Result<bool, ModelError> {
        if self.capacity.covers(&needs) {
            return Ok(false);
        }
        device.synchronize()?;
        let grown = self.capacity.max(needs);
        // Free the old buffers before allocating the new ones.
        *self = Self::new(device, cfg, Needs::default())?;
        *self = Self::new(device, cfg, grown)?;
        Ok(true)
    }
}
