//! Device buffers one forward pass works in, sized for the largest batch seen so far. They only
//! grow; a growth moves them, so the model drops its captured graphs when [`Scratch::ensure`]
//! says it reallocated.

use fused_kernels::cuda::{DeviceBuffer, GpuDevice};

use crate::model::ModelError;
use crate::model::config::ModelConfig;

use super::device_error;

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

pub struct Scratch {
    pub capacity: Needs,
    /// Residual stream `[rows, hidden]` f32.
    pub x: DeviceBuffer,
    /// Normed rows `[rows, hidden]` bf16 (also the final norm's output).
    pub xn: DeviceBuffer,
    /// `[rows, q + 2 kv]` f32.
    pub qkv: DeviceBuffer,
    /// Rotated queries `[rows, q]` bf16.
    pub q: DeviceBuffer,
    /// Attention output `[rows, q]` bf16.
    pub attn: DeviceBuffer,
    /// `[rows, 2 ffn]` bf16.
    pub gate_up: DeviceBuffer,
    /// `[rows, ffn]` bf16.
    pub act: DeviceBuffer,
    /// `[head_rows, vocab]` f32.
    pub logits: DeviceBuffer,
    /// `[head_rows]` u32: the greedy choice of each logits row.
    pub picked: DeviceBuffer,
    pub meta: DeviceBuffer,
    pub part_o: DeviceBuffer,
    pub part_ml: DeviceBuffer,
}

impl Scratch {
    pub fn new(device: &GpuDevice, cfg: &ModelConfig, needs: Needs) -> Result<Self, ModelError> {
        let n = needs.rounded();
        let alloc = |bytes: usize| device.alloc(bytes).map_err(device_error);
        let (h, q, kv, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
        Ok(Self {
            capacity: n,
            x: alloc(n.rows * h * 4)?,
            xn: alloc(n.rows.max(n.head_rows) * h * 2)?,
            qkv: alloc(n.rows * (q + 2 * kv) * 4)?,
            q: alloc(n.rows * q * 2)?,
            attn: alloc(n.rows * q * 2)?,
            gate_up: alloc(n.rows * 2 * f * 2)?,
            act: alloc(n.rows * f * 2)?,
            logits: alloc(n.head_rows * cfg.vocab_size * 4)?,
            picked: alloc(n.head_rows * 4)?,
            meta: alloc(n.meta_bytes)?,
            part_o: alloc(n.part_o * 4)?,
            part_ml: alloc(n.part_ml * 4)?,
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
        device.synchronize().map_err(device_error)?;
        let grown = self.capacity.max(needs);
        // Free the old buffers before allocating the new ones.
        *self = Self::new(device, cfg, Needs::default())?;
        *self = Self::new(device, cfg, grown)?;
        Ok(true)
    }
}
