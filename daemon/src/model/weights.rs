//! The model's weights as plain structs shaped like the checkpoint, and how they are loaded from
//! any [`TensorSource`] (GGUF, safetensors, dummy). Matrices are `f32`, `[out, in]` row-major;
//! where the checkpoint stores a matrix in a block format the CPU multiplies directly (GGUF
//! Q4_0 / Q4_1 / Q8_0), those blocks are kept too, for the few-row products of decode.

use fused_kernels::cpu::QuantMatrix;

use super::ModelError;
use super::config::{Arch, ModelConfig};
use super::layout::{self, MatrixPlan};

/// Where weights come from. Names are HF checkpoint names (`model.layers.0.self_attn.q_proj.weight`,
/// `h.0.attn.c_attn.weight`); `shape` is the shape the HF checkpoint stores.
pub trait TensorSource {
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError>;
    /// A matrix `[out, in]` as f32 and, if the checkpoint stores it in a block format the CPU
    /// multiplies directly, those blocks (rows in the same order).
    fn linear_weight(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<(Vec<f32>, Option<QuantMatrix>), ModelError> {
        Ok((self.tensor(name, shape)?, None))
    }
    /// Whether the checkpoint has this tensor (an untied LM head, say).
    fn contains(&self, name: &str) -> bool;
}

/// A dense layer `y = x · Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Vec<f32>,
    /// The same matrix in the checkpoint's block format, when it has one.
    pub packed: Option<QuantMatrix>,
    pub bias: Option<Vec<f32>>,
    pub out: usize,
}

impl Linear {
    /// A layer without bias from `(f32, blocks)` parts stacked row-wise (Q, K and V into one
    /// QKV layer); the blocks are kept only if every part has them (each part keeps its
    /// format). A part that came as blocks alone (an empty f32 matrix: a source that leaves the
    /// expansion to the device) is decoded here when the stack cannot keep blocks.
    pub(crate) fn stacked(out: usize, parts: Vec<(Vec<f32>, Option<QuantMatrix>)>) -> Self {
        let all: Option<Vec<QuantMatrix>> = parts.iter().map(|(_, p)| p.clone()).collect();
        if let Some(packed) = all.and_then(|p| QuantMatrix::stack(p).ok()) {
            let weights: Vec<Vec<f32>> = parts.into_iter().map(|(w, _)| w).collect();
            return Self {
                weight: weights.concat(),
                packed: Some(packed),
                bias: None,
                out,
            };
        }
        let weight = (parts.into_iter())
            .flat_map(|(w, p)| match p {
                Some(p) if w.is_empty() => p.dequantize(),
                _ => w,
            })
            .collect();
        Self {
            weight,
            packed: None,
            bias: None,
            out,
        }
    }
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

impl Block {
    /// The block's four matrices: QKV, output, and the MLP's two.
    pub fn linears(&self) -> [&Linear; 4] {
        match &self.mlp {
            Mlp::SwiGlu { gate_up, down } => [&self.qkv, &self.o, gate_up, down],
            Mlp::Gelu { fc, proj } => [&self.qkv, &self.o, fc, proj],
        }
    }

    pub fn linears_mut(&mut self) -> [&mut Linear; 4] {
        match &mut self.mlp {
            Mlp::SwiGlu { gate_up, down } => [&mut self.qkv, &mut self.o, gate_up, down],
            Mlp::Gelu { fc, proj } => [&mut self.qkv, &mut self.o, fc, proj],
        }
    }
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
    /// The LM head in the checkpoint's block format (dropped when the vocabulary changes).
    lm_head_packed: Option<QuantMatrix>,
}

impl Weights {
    /// The same embedding, norms and head with `blocks` in place of these (a tensor-parallel
    /// rank's slices).
    pub fn with_blocks(&self, blocks: Vec<Block>) -> Self {
        Self {
            embed: self.embed.clone(),
            positions: self.positions.clone(),
            blocks,
            final_norm: self.final_norm.clone(),
            lm_head: self.lm_head.clone(),
            lm_head_packed: self.lm_head_packed.clone(),
        }
    }

    pub fn load(cfg: &ModelConfig, src: &mut dyn TensorSource) -> Result<Self, ModelError> {
        match cfg.arch {
            Arch::Llama | Arch::Qwen2 => load_llama(cfg, src),
            Arch::Gpt2 => load_gpt2(cfg, src),
        }
    }

    pub fn lm_head(&self) -> &[f32] {
        self.lm_head.as_deref().unwrap_or(&self.embed)
    }

    pub fn lm_head_packed(&self) -> Option<&QuantMatrix> {
        self.lm_head_packed.as_ref()
    }

    /// Drops every block copy: all products then come from the f32 matrices (what a
    /// checkpoint without blocks does; tests and benchmarks compare the two).
    pub fn drop_packed(&mut self) {
        self.lm_head_packed = None;
        for b in &mut self.blocks {
            for layer in b.linears_mut() {
                layer.packed = None;
            }
        }
    }

    /// How many matrices (the LM head included) have block copies.
    pub fn packed_count(&self) -> usize {
        let layers: usize = self
            .blocks
            .iter()
            .map(|b| b.linears().iter().filter(|l| l.packed.is_some()).count())
            .sum();
        layers + usize::from(self.lm_head_packed.is_some())
    }

    /// Replaces the input embedding and the LM head (a vocabulary patch); the checkpoint's
    /// blocks of the old head no longer apply.
    pub fn set_vocab(&mut self, embed: Vec<f32>, lm_head: Vec<f32>) {
        self.embed = embed;
        self.lm_head = Some(lm_head);
        self.lm_head_packed = None;
    }
}

fn load_llama(cfg: &ModelConfig, src: &mut dyn TensorSource) -> Result<Weights, ModelError> {
    let plan = layout::llama(cfg);
    let rms = |src: &mut dyn TensorSource, name: &str| -> Result<Norm, ModelError> {
        Ok(Norm::Rms {
            weight: src.tensor(name, &[cfg.hidden])?,
            eps: cfg.norm_eps,
        })
    };
    let matrix = |src: &mut dyn TensorSource, m: &MatrixPlan| -> Result<Linear, ModelError> {
        let parts = (m.parts.iter())
            .map(|p| src.linear_weight(&p.name, &[p.rows, m.inner]))
            .collect::<Result<_, _>>()?;
        Ok(Linear::stacked(m.out(), parts))
    };
    let mut blocks = Vec::with_capacity(plan.blocks.len());
    for b in &plan.blocks {
        let mut qkv = matrix(src, &b.qkv)?;
        if !b.qkv_bias.is_empty() {
            let parts = (b.qkv_bias.iter())
                .map(|p| src.tensor(&p.name, &[p.rows]))
                .collect::<Result<Vec<_>, _>>()?;
            qkv.bias = Some(parts.concat());
        }
        blocks.push(Block {
            attn_norm: rms(src, &b.attn_norm)?,
            qkv,
            o: matrix(src, &b.o)?,
            mlp_norm: rms(src, &b.mlp_norm)?,
            mlp: Mlp::SwiGlu {
                gate_up: matrix(src, &b.gate_up)?,
                down: matrix(src, &b.down)?,
            },
        });
    }
    let embed_part = &plan.embed.parts[0];
    let (embed, embed_packed) =
        src.linear_weight(&embed_part.name, &[embed_part.rows, plan.embed.inner])?;
    let head_part = &plan.lm_head.parts[0];
    let (lm_head, lm_head_packed) = if plan.head_is_separate(cfg, src.contains(&head_part.name)) {
        let (head, packed) =
            src.linear_weight(&head_part.name, &[head_part.rows, plan.lm_head.inner])?;
        (Some(head), packed)
    } else {
        (None, embed_packed)
    };
    Ok(Weights {
        embed,
        positions: None,
        blocks,
        final_norm: rms(src, &plan.final_norm)?,
        lm_head,
        lm_head_packed,
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
            packed: None,
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
        lm_head_packed: None,
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
