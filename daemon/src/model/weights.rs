//! The model's weights as plain structs shaped like the checkpoint, and how they are loaded from
//! any [`TensorSource`] (GGUF, safetensors, dummy). Matrices are `f32`, `[out, in]` row-major.

use super::ModelError;
use super::config::{Arch, ModelConfig};

/// Where weights come from. Names are HF checkpoint names (`model.layers.0.self_attn.q_proj.weight`,
/// `h.0.attn.c_attn.weight`); `shape` is the shape the HF checkpoint stores.
pub trait TensorSource {
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError>;
    /// Whether the checkpoint has this tensor (an untied LM head, say).
    fn contains(&self, name: &str) -> bool;
}

/// A dense layer `y = x · Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Vec<f32>,
    pub bias: Option<Vec<f32>>,
    pub out: usize,
}

#[derive(Debug, Clone)]
pub enum Norm {
    Rms {
        weight: Vec<f32>,
        eps: f32,
    },
    Layer {
        weight: Vec<f32>,
        bias: Vec<f32>,
        eps: f32,
    },
}

#[derive(Debug, Clone)]
pub enum Mlp {
    /// `down(silu(gate(x)) * up(x))`, gate and up fused as rows `[gate; up]`.
    SwiGlu { gate_up: Linear, down: Linear },
    /// `proj(gelu(fc(x)))`.
    Gelu { fc: Linear, proj: Linear },
}

/// One transformer block; Q, K and V are fused as rows `[q; k; v]`.
#[derive(Debug, Clone)]
pub struct Block {
    pub attn_norm: Norm,
    pub qkv: Linear,
    pub o: Linear,
    pub mlp_norm: Norm,
    pub mlp: Mlp,
}

#[derive(Debug, Clone)]
pub struct Weights {
    /// `[vocab, hidden]`.
    pub embed: Vec<f32>,
    /// GPT-2's learned positions, `[max_positions, hidden]`.
    pub positions: Option<Vec<f32>>,
    pub blocks: Vec<Block>,
    pub final_norm: Norm,
    /// `None` when tied to `embed`.
    pub lm_head: Option<Vec<f32>>,
}

impl Weights {
    pub fn load(cfg: &ModelConfig, src: &mut dyn TensorSource) -> Result<Self, ModelError> {
        match cfg.arch {
            Arch::Llama => load_llama(cfg, src),
            Arch::Gpt2 => load_gpt2(cfg, src),
        }
    }

    pub fn lm_head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }
}

fn load_llama(cfg: &ModelConfig, src: &mut dyn TensorSource) -> Result<Weights, ModelError> {
    let (h, q, kv, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
    let rms = |src: &mut dyn TensorSource, name: &str| -> Result<Norm, ModelError> {
        Ok(Norm::Rms {
            weight: src.tensor(name, &[h])?,
            eps: cfg.norm_eps,
        })
    };
    let mut blocks = Vec::with_capacity(cfg.layers);
    for l in 0..cfg.layers {
        let p = format!("model.layers.{l}");
        let mut qkv = src.tensor(&format!("{p}.self_attn.q_proj.weight"), &[q, h])?;
        qkv.extend(src.tensor(&format!("{p}.self_attn.k_proj.weight"), &[kv, h])?);
        qkv.extend(src.tensor(&format!("{p}.self_attn.v_proj.weight"), &[kv, h])?);
        let mut gate_up = src.tensor(&format!("{p}.mlp.gate_proj.weight"), &[f, h])?;
        gate_up.extend(src.tensor(&format!("{p}.mlp.up_proj.weight"), &[f, h])?);
        blocks.push(Block {
            attn_norm: rms(src, &format!("{p}.input_layernorm.weight"))?,
            qkv: Linear {
                weight: qkv,
                bias: None,
                out: q + 2 * kv,
            },
            o: Linear {
                weight: src.tensor(&format!("{p}.self_attn.o_proj.weight"), &[h, q])?,
                bias: None,
                out: h,
            },
            mlp_norm: rms(src, &format!("{p}.post_attention_layernorm.weight"))?,
            mlp: Mlp::SwiGlu {
                gate_up: Linear {
                    weight: gate_up,
                    bias: None,
                    out: 2 * f,
                },
                down: Linear {
                    weight: src.tensor(&format!("{p}.mlp.down_proj.weight"), &[h, f])?,
                    bias: None,
                    out: h,
                },
            },
        });
    }
    let lm_head = if cfg.tie_embeddings && !src.contains("lm_head.weight") {
        None
    } else {
        Some(src.tensor("lm_head.weight", &[cfg.vocab_size, h])?)
    };
    Ok(Weights {
        embed: src.tensor("model.embed_tokens.weight", &[cfg.vocab_size, h])?,
        positions: None,
        blocks,
        final_norm: rms(src, "model.norm.weight")?,
        lm_head,
    })
}

fn load_gpt2(cfg: &ModelConfig, src: &mut dyn TensorSource) -> Result<Weights, ModelError> {
    let (h, f) = (cfg.hidden, cfg.ffn);
    let layer_norm = |src: &mut dyn TensorSource, name: &str| -> Result<Norm, ModelError> {
        Ok(Norm::Layer {
            weight: src.tensor(&format!("{name}.weight"), &[h])?,
            bias: src.tensor(&format!("{name}.bias"), &[h])?,
            eps: cfg.norm_eps,
        })
    };
    // GPT-2's Conv1D stores `[in, out]`; the forward pass wants `[out, in]`.
    let conv1d = |src: &mut dyn TensorSource,
                  name: &str,
                  inp: usize,
                  out: usize|
     -> Result<Linear, ModelError> {
        let w = src.tensor(&format!("{name}.weight"), &[inp, out])?;
        Ok(Linear {
            weight: transpose(&w, inp, out),
            bias: Some(src.tensor(&format!("{name}.bias"), &[out])?),
            out,
        })
    };
    let mut blocks = Vec::with_capacity(cfg.layers);
    for l in 0..cfg.layers {
        let p = format!("h.{l}");
        blocks.push(Block {
            attn_norm: layer_norm(src, &format!("{p}.ln_1"))?,
            qkv: conv1d(src, &format!("{p}.attn.c_attn"), h, 3 * h)?,
            o: conv1d(src, &format!("{p}.attn.c_proj"), h, h)?,
            mlp_norm: layer_norm(src, &format!("{p}.ln_2"))?,
            mlp: Mlp::Gelu {
                fc: conv1d(src, &format!("{p}.mlp.c_fc"), h, f)?,
                proj: conv1d(src, &format!("{p}.mlp.c_proj"), f, h)?,
            },
        });
    }
    Ok(Weights {
        embed: src.tensor("wte.weight", &[cfg.vocab_size, h])?,
        positions: Some(src.tensor("wpe.weight", &[cfg.max_positions, h])?),
        blocks,
        final_norm: layer_norm(src, "ln_f")?,
        lm_head: None,
    })
}

/// `[rows, cols]` → `[cols, rows]`.
pub fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}
