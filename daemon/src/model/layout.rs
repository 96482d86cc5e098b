//! Which checkpoint tensors make which weight of a Llama-family model: Q, K and V stacked into
//! one QKV matrix, gate and up into one, the LM head tied to the embedding when the checkpoint
//! has none. The one description both loaders follow — the host one (`f32`, any
//! [`TensorSource`](super::weights::TensorSource)) and the GPU one that streams a safetensors
//! checkpoint to the device — so the two cannot disagree on names, shapes or order.

use super::config::{Arch, ModelConfig};

/// A checkpoint tensor `[rows, inner]` that becomes `rows` rows of a stacked matrix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub rows: usize,
}

/// A matrix `[out, inner]` made of its parts' rows, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixPlan {
    pub parts: Vec<Part>,
    pub inner: usize,
}

impl MatrixPlan {
    fn single(name: String, rows: usize, inner: usize) -> Self {
        Self {
            parts: vec![Part { name, rows }],
            inner,
        }
    }

    /// Rows of the stacked matrix.
    pub fn out(&self) -> usize {
        self.parts.iter().map(|p| p.rows).sum()
    }
}

/// One block's tensors; norms are `[hidden]` vectors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPlan {
    pub attn_norm: String,
    pub qkv: MatrixPlan,
    /// The Q, K and V biases (`[rows]` vectors, stacked like `qkv`): Qwen2's; empty for Llama.
    pub qkv_bias: Vec<Part>,
    pub o: MatrixPlan,
    pub mlp_norm: String,
    pub gate_up: MatrixPlan,
    pub down: MatrixPlan,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlamaPlan {
    pub embed: MatrixPlan,
    pub blocks: Vec<BlockPlan>,
    pub final_norm: String,
    /// The untied LM head; a loader uses it when the checkpoint has it or the model is untied.
    pub lm_head: MatrixPlan,
}

impl LlamaPlan {
    /// Whether the LM head is its own tensor: always for untied models, and when a tied model's
    /// checkpoint stores it anyway.
    pub fn head_is_separate(&self, cfg: &ModelConfig, checkpoint_has_head: bool) -> bool {
        !cfg.tie_embeddings || checkpoint_has_head
    }
}

/// The HF names of a Llama-family checkpoint (Llama, Mistral, Llama-3, SmolLM2, Qwen2).
pub fn llama(cfg: &ModelConfig) -> LlamaPlan {
    let (h, q, kv, f) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn);
    let blocks = (0..cfg.layers)
        .map(|l| {
            let p = format!("model.layers.{l}");
            let part = |name: &str, rows| Part {
                name: format!("{p}.{name}"),
                rows,
            };
            BlockPlan {
                attn_norm: format!("{p}.input_layernorm.weight"),
                qkv: MatrixPlan {
                    parts: vec![
                        part("self_attn.q_proj.weight", q),
                        part("self_attn.k_proj.weight", kv),
                        part("self_attn.v_proj.weight", kv),
                    ],
                    inner: h,
                },
                qkv_bias: if cfg.arch == Arch::Qwen2 {
                    vec![
                        part("self_attn.q_proj.bias", q),
                        part("self_attn.k_proj.bias", kv),
                        part("self_attn.v_proj.bias", kv),
                    ]
                } else {
                    Vec::new()
                },
                o: MatrixPlan::single(format!("{p}.self_attn.o_proj.weight"), h, q),
                mlp_norm: format!("{p}.post_attention_layernorm.weight"),
                gate_up: MatrixPlan {
                    parts: vec![
                        part("mlp.gate_proj.weight", f),
                        part("mlp.up_proj.weight", f),
                    ],
                    inner: h,
                },
                down: MatrixPlan::single(format!("{p}.mlp.down_proj.weight"), h, f),
            }
        })
        .collect();
    LlamaPlan {
        embed: MatrixPlan::single("model.embed_tokens.weight".into(), cfg.vocab_size, h),
        blocks,
        final_norm: "model.norm.weight".into(),
        lm_head: MatrixPlan::single("lm_head.weight".into(), cfg.vocab_size, h),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_2_7b_stacks_qkv_and_gate_up() {
        let cfg = ModelConfig::preset("llama-2-7b").expect("preset");
        let plan = llama(&cfg);
        assert_eq!(plan.blocks.len(), 32);
        let b = &plan.blocks[3];
        assert_eq!((b.qkv.out(), b.qkv.inner), (3 * 4096, 4096));
        assert_eq!(
            b.qkv.parts[1].name,
            "model.layers.3.self_attn.k_proj.weight"
        );
        assert_eq!(
            (b.gate_up.out(), b.down.out(), b.down.inner),
            (2 * 11008, 4096, 11008)
        );
        assert_eq!(plan.embed.out(), 32000);
        assert!(plan.head_is_separate(&cfg, false), "Llama-2 is untied");
        let tied = ModelConfig::preset("smollm2-135m").expect("preset");
        assert!(!llama(&tied).head_is_separate(&tied, false));
        assert!(llama(&tied).head_is_separate(&tied, true));
    }
}
