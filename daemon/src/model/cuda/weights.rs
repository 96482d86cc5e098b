//! The model's weights in GPU memory: matrices bf16 `[out, in]` (as the CPU's `f32` ones), norm
//! weights `f32`. Either uploaded from host [`Weights`] (rounded to bf16 on the host) or generated
//! on the device from a seed (`--load-format dummy` at 7B scale, which would not fit host RAM as
//! `f32`).
//!
//! Must not: run layers (the model does).

use fused_kernels::cuda::{DeviceBuffer, GpuDevice, Kernels};
use half::bf16;
use sha2::{Digest, Sha256};

use crate::model::ModelError;
use crate::model::config::{Arch, ModelConfig};
use crate::model::weights::{Linear, Mlp, Norm, Weights};

use super::device_error;

pub struct GpuBlock {
    pub attn_norm: DeviceBuffer,
    pub qkv: DeviceBuffer,
    pub o: DeviceBuffer,
    pub mlp_norm: DeviceBuffer,
    pub gate_up: DeviceBuffer,
    pub down: DeviceBuffer,
}

pub struct GpuWeights {
    pub embed: DeviceBuffer,
    pub blocks: Vec<GpuBlock>,
    pub final_norm: DeviceBuffer,
    /// `None`: tied to `embed`.
    pub lm_head: Option<DeviceBuffer>,
    pub eps: f32,
}

impl GpuWeights {
    pub fn lm_head(&self) -> u64 {
        self.lm_head.as_ref().unwrap_or(&self.embed).ptr()
    }

    /// Bytes a decode step reads: every block's matrices and the LM head (one embedding row).
    pub fn bytes_per_step(&self) -> usize {
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| b.qkv.bytes() + b.o.bytes() + b.gate_up.bytes() + b.down.bytes())
            .sum();
        blocks + self.lm_head.as_ref().unwrap_or(&self.embed).bytes()
    }

    /// Uploads host weights of a Llama-family model.
    pub fn upload(device: &GpuDevice, cfg: &ModelConfig, w: &Weights) -> Result<Self, ModelError> {
        check_llama(cfg)?;
        let matrix = |m: &[f32]| upload_bf16(device, m);
        let linear = |l: &Linear| {
            if l.bias.is_some() {
                return Err(ModelError::Config(
                    "the CUDA forward pass has no bias terms (Llama family only)".into(),
                ));
            }
            matrix(&l.weight)
        };
        let norm = |n: &Norm| match n {
            Norm::Rms { weight, .. } => upload_f32(device, weight),
            Norm::Layer { .. } => Err(ModelError::Config(
                "the CUDA forward pass has RMSNorm only (Llama family)".into(),
            )),
        };
        let mut blocks = Vec::with_capacity(w.blocks.len());
        for b in &w.blocks {
            let Mlp::SwiGlu { gate_up, down } = &b.mlp else {
                return Err(ModelError::Config(
                    "the CUDA forward pass has SwiGLU MLPs only (Llama family)".into(),
                ));
            };
            blocks.push(GpuBlock {
                attn_norm: norm(&b.attn_norm)?,
                qkv: linear(&b.qkv)?,
                o: linear(&b.o)?,
                mlp_norm: norm(&b.mlp_norm)?,
                gate_up: linear(gate_up)?,
                down: linear(down)?,
            });
        }
        Ok(Self {
            embed: matrix(&w.embed)?,
            blocks,
            final_norm: norm(&w.final_norm)?,
            lm_head: w.lm_head.as_deref().map(matrix).transpose()?,
            eps: cfg.norm_eps,
        })
    }

    /// Seeded random weights made on the device, distributed like the host's dummy weights
    /// (matrices uniform with the variance of N(0, 0.04²), norm weights uniform in [0.8, 1.2)).
    pub fn dummy(
        device: &GpuDevice,
        kernels: &Kernels,
        cfg: &ModelConfig,
        seed: u64,
    ) -> Result<Self, ModelError> {
        check_llama(cfg)?;
        let (h, q, kv, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
        let bound = 0.02 * 3f32.sqrt() * 2.0;
        let fill = |name: &str, n: usize, norm: bool| -> Result<DeviceBuffer, ModelError> {
            let elem = if norm { 4 } else { 2 };
            let buf = device.alloc(n * elem).map_err(device_error)?;
            let (lo, hi) = if norm { (0.8, 1.2) } else { (-bound, bound) };
            // SAFETY: the buffer holds `n` elements of the filled type.
            unsafe { kernels.fill_uniform(buf.ptr(), n, tensor_seed(seed, name), lo, hi, norm) }
                .map_err(device_error)?;
            Ok(buf)
        };
        let mut blocks = Vec::with_capacity(cfg.layers);
        for l in 0..cfg.layers {
            let p = format!("model.layers.{l}");
            blocks.push(GpuBlock {
                attn_norm: fill(&format!("{p}.input_layernorm.weight"), h, true)?,
                qkv: fill(&format!("{p}.self_attn.qkv"), (q + 2 * kv) * h, false)?,
                o: fill(&format!("{p}.self_attn.o_proj.weight"), h * q, false)?,
                mlp_norm: fill(&format!("{p}.post_attention_layernorm.weight"), h, true)?,
                gate_up: fill(&format!("{p}.mlp.gate_up"), 2 * f * h, false)?,
                down: fill(&format!("{p}.mlp.down_proj.weight"), h * f, false)?,
            });
        }
        let lm_head = if cfg.tie_embeddings {
            None
        } else {
            Some(fill("lm_head.weight", cfg.vocab_size * h, false)?)
        };
        let weights = Self {
            embed: fill("model.embed_tokens.weight", cfg.vocab_size * h, false)?,
            blocks,
            final_norm: fill("model.norm.weight", h, true)?,
            lm_head,
            eps: cfg.norm_eps,
        };
        device.synchronize().map_err(device_error)?;
        Ok(weights)
    }
}

fn check_llama(cfg: &ModelConfig) -> Result<(), ModelError> {
    if cfg.arch != Arch::Llama {
        return Err(ModelError::Config(format!(
            "the CUDA forward pass runs Llama-family models, not {:?}",
            cfg.arch
        )));
    }
    Ok(())
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

fn upload_bf16(device: &GpuDevice, values: &[f32]) -> Result<DeviceBuffer, ModelError> {
    let host: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
    upload(device, &host)
}

fn upload_f32(device: &GpuDevice, values: &[f32]) -> Result<DeviceBuffer, ModelError> {
    upload(device, values)
}

pub(super) fn upload<T: Copy>(
    device: &GpuDevice,
    values: &[T],
) -> Result<DeviceBuffer, ModelError> {
    let buf = device
        .alloc(std::mem::size_of_val(values))
        .map_err(device_error)?;
    // SAFETY: the buffer was sized for `values`.
    unsafe { device.upload(buf.ptr(), values) }.map_err(device_error)?;
    Ok(buf)
}
