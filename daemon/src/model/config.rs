//! The shape of a model: read from HF `config.json`, GGUF metadata, or a named preset.

use std::path::Path;

use fused_kernels::cpu::RopeScaling;
use serde::Deserialize;

use super::ModelError;

/// The decoder families this daemon runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama-2/3, Mistral, SmolLM2: RMSNorm, RoPE, SwiGLU, GQA.
    Llama,
    /// GPT-2: LayerNorm, learned positions, GELU, biases everywhere.
    Gpt2,
    /// Qwen2 / Qwen2.5: Llama's blocks with biases on the Q, K and V projections.
    Qwen2,
}

impl Arch {
    /// The family's name, as `fused_model_info` labels it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Gpt2 => "gpt2",
            Self::Qwen2 => "qwen2",
        }
    }

    /// Whether the GPU streams this family's safetensors checkpoints to the device itself (their
    /// matrices are stored `[out, in]`; GPT-2's Conv1D ones are `[in, out]` and load through the
    /// host, which transposes them).
    pub fn streams_to_gpu(self) -> bool {
        matches!(self, Self::Llama | Self::Qwen2)
    }

    /// Whether positions enter as a rotation of Q and K (RoPE) rather than learned embeddings.
    pub fn rotary(self) -> bool {
        !matches!(self, Self::Gpt2)
    }
}

/// Everything the forward pass needs to know about a model's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub ffn: usize,
    pub norm_eps: f32,
    pub rope_theta: f32,
    pub rope_scaling: Option<RopeScaling>,
    pub max_positions: usize,
    pub tie_embeddings: bool,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }

    /// Parameters, counting a tied embedding once.
    pub fn parameter_count(&self) -> usize {
        let attn = self.hidden * (self.q_dim() + 2 * self.kv_dim()) + self.q_dim() * self.hidden;
        let bias = match self.arch {
            Arch::Qwen2 => self.q_dim() + 2 * self.kv_dim(),
            Arch::Llama | Arch::Gpt2 => 0,
        };
        let mlp = match self.arch {
            Arch::Llama | Arch::Qwen2 => 3 * self.hidden * self.ffn,
            Arch::Gpt2 => 2 * self.hidden * self.ffn,
        };
        let embed = self.vocab_size * self.hidden * if self.tie_embeddings { 1 } else { 2 };
        self.layers * (attn + bias + mlp) + embed
    }

    /// Reads an HF `config.json` (Llama/Mistral/SmolLM2 or GPT-2 field names).
    pub fn from_hf_json(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_hf_str(&text).map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
    }

    /// The quantization an HF checkpoint's `config.json` in `dir` declares
    /// (`quantization_config.quant_method`: `fp8`, `compressed-tensors`, ...), if any.
    pub fn quantization_method(dir: &Path) -> Option<String> {
        let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let method = json.get("quantization_config")?.get("quant_method")?;
        method.as_str().map(str::to_owned)
    }

    pub fn from_hf_str(text: &str) -> Result<Self, String> {
        let raw: HfConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        raw.into_config()
    }

    /// A named shape for `--load-format dummy`.
    pub fn preset(name: &str) -> Option<Self> {
        let llama = |vocab, hidden, layers, heads, kv_heads, ffn, theta, max, tie| ModelConfig {
            arch: Arch::Llama,
            vocab_size: vocab,
            hidden,
            layers,
            heads,
            kv_heads,
            head_dim: hidden / heads,
            ffn,
            norm_eps: 1e-5,
            rope_theta: theta,
            rope_scaling: None,
            max_positions: max,
            tie_embeddings: tie,
        };
        Some(match name {
            "smollm2-135m" => llama(49152, 576, 30, 9, 3, 1536, 100_000.0, 8192, true),
            "llama-2-7b" => llama(32000, 4096, 32, 32, 32, 11008, 10_000.0, 4096, false),
            "llama-3-8b" => llama(128_256, 4096, 32, 32, 8, 14336, 500_000.0, 8192, false),
            "tiny-llama" => llama(512, 64, 2, 4, 2, 128, 10_000.0, 256, false),
            // Qwen2.5's released shapes (GQA groups of 7; the 0.5B has head_dim 64, a tied head).
            "qwen2.5-0.5b" => ModelConfig {
                arch: Arch::Qwen2,
                norm_eps: 1e-6,
                ..llama(151_936, 896, 24, 14, 2, 4864, 1_000_000.0, 32768, true)
            },
            "qwen2.5-7b" => ModelConfig {
                arch: Arch::Qwen2,
                norm_eps: 1e-6,
                ..llama(152_064, 3584, 28, 28, 4, 18944, 1_000_000.0, 32768, false)
            },
            // Qwen2's Q/K/V biases at toy size, with its tied head and RoPE base.
            "tiny-qwen2" => ModelConfig {
                arch: Arch::Qwen2,
                ..llama(512, 64, 2, 4, 2, 128, 1_000_000.0, 256, true)
            },
            // Llama-3 features at toy size: GQA, untied head, llama3 RoPE scaling.
            "tiny-llama3" => ModelConfig {
                rope_scaling: Some(RopeScaling {
                    factor: 8.0,
                    low_freq_factor: 1.0,
                    high_freq_factor: 4.0,
                    original_max_position: 64,
                }),
                ..llama(512, 128, 2, 4, 2, 256, 500_000.0, 256, false)
            },
            "gpt2" => ModelConfig {
                arch: Arch::Gpt2,
                vocab_size: 50257,
                hidden: 768,
                layers: 12,
                heads: 12,
                kv_heads: 12,
                head_dim: 64,
                ffn: 3072,
                norm_eps: 1e-5,
                rope_theta: 0.0,
                rope_scaling: None,
                max_positions: 1024,
                tie_embeddings: true,
            },
            _ => return None,
        })
    }

    pub const PRESETS: &'static [&'static str] = &[
        "smollm2-135m",
        "llama-2-7b",
        "llama-3-8b",
        "gpt2",
        "qwen2.5-0.5b",
        "qwen2.5-7b",
        "tiny-llama",
        "tiny-qwen2",
    ];

    /// The HF `config.json` a reference implementation needs to rebuild this shape.
    pub fn to_hf_json(&self) -> serde_json::Value {
        match self.arch {
            Arch::Llama | Arch::Qwen2 => {
                let (architecture, model_type) = match self.arch {
                    Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
                    _ => ("LlamaForCausalLM", "llama"),
                };
                let mut json = serde_json::json!({
                    "architectures": [architecture],
                    "model_type": model_type,
                    "vocab_size": self.vocab_size,
                    "hidden_size": self.hidden,
                    "intermediate_size": self.ffn,
                    "num_hidden_layers": self.layers,
                    "num_attention_heads": self.heads,
                    "num_key_value_heads": self.kv_heads,
                    "head_dim": self.head_dim,
                    "rms_norm_eps": self.norm_eps,
                    "rope_theta": self.rope_theta,
                    "max_position_embeddings": self.max_positions,
                    "tie_word_embeddings": self.tie_embeddings,
                    "hidden_act": "silu",
                    "torch_dtype": "float32",
                });
                if let Some(s) = self.rope_scaling {
                    json["rope_scaling"] = serde_json::json!({
                        "rope_type": "llama3",
                        "factor": s.factor,
                        "low_freq_factor": s.low_freq_factor,
                        "high_freq_factor": s.high_freq_factor,
                        "original_max_position_embeddings": s.original_max_position,
                    });
                }
                json
            }
            Arch::Gpt2 => serde_json::json!({
                "architectures": ["GPT2LMHeadModel"],
                "model_type": "gpt2",
                "vocab_size": self.vocab_size,
                "n_embd": self.hidden,
                "n_layer": self.layers,
                "n_head": self.heads,
                "n_inner": self.ffn,
                "n_positions": self.max_positions,
                "layer_norm_epsilon": self.norm_eps,
                "activation_function": "gelu_new",
                "tie_word_embeddings": true,
                "torch_dtype": "float32",
            }),
        }
    }
}

/// The union of the HF config fields we read, for both families.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f32>,
    rope_theta: Option<f32>,
    rope_scaling: Option<HfRopeScaling>,
    /// transformers ≥ 5 spelling: `rope_scaling` fields plus `rope_theta`.
    rope_parameters: Option<HfRopeScaling>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    /// Qwen2's sliding-window attention (off in its released configs).
    #[serde(default)]
    use_sliding_window: bool,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    // GPT-2 spellings
    n_embd: Option<usize>,
    n_layer: Option<usize>,
    n_head: Option<usize>,
    n_inner: Option<usize>,
    n_positions: Option<usize>,
    layer_norm_epsilon: Option<f32>,
}

#[derive(Debug, Deserialize)]
struct HfRopeScaling {
    rope_theta: Option<f32>,
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    factor: Option<f32>,
    low_freq_factor: Option<f32>,
    high_freq_factor: Option<f32>,
    original_max_position_embeddings: Option<usize>,
}

impl HfConfig {
    fn into_config(self) -> Result<ModelConfig, String> {
        let missing = |field: &str| format!("config.json has no `{field}`");
        match self.model_type.as_deref() {
            Some("gpt2") => {
                let hidden = self.n_embd.ok_or_else(|| missing("n_embd"))?;
                let heads = self.n_head.ok_or_else(|| missing("n_head"))?;
                check_heads(hidden, heads)?;
                Ok(ModelConfig {
                    arch: Arch::Gpt2,
                    vocab_size: self.vocab_size,
                    hidden,
                    layers: self.n_layer.ok_or_else(|| missing("n_layer"))?,
                    heads,
                    kv_heads: heads,
                    head_dim: hidden / heads,
                    ffn: self.n_inner.unwrap_or(4 * hidden),
                    norm_eps: self.layer_norm_epsilon.unwrap_or(1e-5),
                    rope_theta: 0.0,
                    rope_scaling: None,
                    max_positions: self.n_positions.unwrap_or(1024),
                    tie_embeddings: true,
                })
            }
            family @ (Some("llama" | "mistral" | "qwen2") | None) => {
                let arch = if family == Some("qwen2") {
                    if self.use_sliding_window {
                        return Err("qwen2 with use_sliding_window is not supported".into());
                    }
                    Arch::Qwen2
                } else {
                    Arch::Llama
                };
                let hidden = self.hidden_size.ok_or_else(|| missing("hidden_size"))?;
                let heads = self
                    .num_attention_heads
                    .ok_or_else(|| missing("num_attention_heads"))?;
                check_heads(hidden, heads)?;
                let kv_heads = self.num_key_value_heads.unwrap_or(heads);
                if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
                    return Err(format!(
                        "{heads} attention heads do not group over {kv_heads} KV heads"
                    ));
                }
                if self.attention_bias || self.mlp_bias {
                    return Err(
                        "llama checkpoints with attention or MLP biases are not supported".into(),
                    );
                }
                let rope_theta = self
                    .rope_theta
                    .or(self.rope_parameters.as_ref().and_then(|p| p.rope_theta))
                    .unwrap_or(10_000.0);
                let rope_scaling = match self.rope_scaling.or(self.rope_parameters) {
                    None => None,
                    Some(s) => match s.rope_type.as_deref().or(s.kind.as_deref()) {
                        None | Some("default") => None,
                        Some("llama3") => Some(RopeScaling {
                            factor: s.factor.unwrap_or(8.0),
                            low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                            high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                            original_max_position: s
                                .original_max_position_embeddings
                                .unwrap_or(8192),
                        }),
                        Some(kind) => {
                            return Err(format!(
                                "rope type `{kind}` is not supported (default, llama3)"
                            ));
                        }
                    },
                };
                Ok(ModelConfig {
                    arch,
                    vocab_size: self.vocab_size,
                    hidden,
                    layers: self
                        .num_hidden_layers
                        .ok_or_else(|| missing("num_hidden_layers"))?,
                    heads,
                    kv_heads,
                    head_dim: self.head_dim.unwrap_or(hidden / heads),
                    ffn: self
                        .intermediate_size
                        .ok_or_else(|| missing("intermediate_size"))?,
                    norm_eps: self.rms_norm_eps.unwrap_or(1e-5),
                    rope_theta,
                    rope_scaling,
                    max_positions: self.max_position_embeddings.unwrap_or(4096),
                    tie_embeddings: self.tie_word_embeddings.unwrap_or(false),
                })
            }
            Some(other) => Err(format!(
                "model_type `{other}` is not supported (llama, mistral, qwen2, gpt2)"
            )),
        }
    }
}

fn check_heads(hidden: usize, heads: usize) -> Result<(), String> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(format!(
            "hidden size {hidden} does not split over {heads} heads"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_round_trip_of_every_preset() {
        for name in ModelConfig::PRESETS {
            let preset = ModelConfig::preset(name).unwrap();
            let back = ModelConfig::from_hf_str(&preset.to_hf_json().to_string()).unwrap();
            assert_eq!(back, preset, "{name}");
        }
    }

    #[test]
    fn qwen2_is_llama_with_qkv_biases() {
        // Qwen2.5-0.5B-Instruct's config.json, abridged.
        let json = r#"{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2",
            "vocab_size":151936,"hidden_size":896,"intermediate_size":4864,
            "num_hidden_layers":24,"num_attention_heads":14,"num_key_value_heads":2,
            "rms_norm_eps":1e-06,"rope_theta":1000000.0,"max_position_embeddings":32768,
            "tie_word_embeddings":true,"use_sliding_window":false,"sliding_window":32768}"#;
        let cfg = ModelConfig::from_hf_str(json).unwrap();
        assert_eq!(cfg.arch, Arch::Qwen2);
        assert_eq!((cfg.heads, cfg.kv_heads, cfg.head_dim), (14, 2, 64));
        // 494 M parameters, as its model card says (0.49 B).
        let params = cfg.parameter_count();
        assert!((493_000_000..495_000_000).contains(&params), "{params}");
        assert_eq!(Some(&cfg), ModelConfig::preset("qwen2.5-0.5b").as_ref());
        // Qwen2.5-7B: 7.61 B by its model card.
        let seven = ModelConfig::preset("qwen2.5-7b").unwrap().parameter_count();
        assert!((7_600_000_000..7_630_000_000).contains(&seven), "{seven}");
        let sliding = json.replace(
            r#""use_sliding_window":false"#,
            r#""use_sliding_window":true"#,
        );
        let err = ModelConfig::from_hf_str(&sliding).unwrap_err();
        assert!(err.contains("use_sliding_window"), "{err}");
    }

    #[test]
    fn smollm2_has_135m_parameters() {
        let params = ModelConfig::preset("smollm2-135m")
            .unwrap()
            .parameter_count();
        assert!((134_000_000..136_000_000).contains(&params), "{params}");
    }

    #[test]
    fn transformers_5_rope_parameters_are_read() {
        let json = r#"{"model_type":"llama","vocab_size":8,"hidden_size":8,"num_attention_heads":2,
            "num_hidden_layers":1,"intermediate_size":16,"rope_parameters":{"rope_type":"llama3",
            "rope_theta":500000.0,"factor":8.0,"original_max_position_embeddings":64}}"#;
        let cfg = ModelConfig::from_hf_str(json).unwrap();
        assert_eq!(cfg.rope_theta, 500_000.0);
        assert_eq!(cfg.rope_scaling.map(|s| s.original_max_position), Some(64));
        let plain = json.replace("llama3", "default");
        assert_eq!(ModelConfig::from_hf_str(&plain).unwrap().rope_scaling, None);
    }

    #[test]
    fn bad_configs_say_what_is_wrong() {
        let err = ModelConfig::from_hf_str(r#"{"model_type":"bert","vocab_size":3}"#).unwrap_err();
        assert!(err.contains("bert"), "{err}");
        let err = ModelConfig::from_hf_str(r#"{"model_type":"llama","vocab_size":3}"#).unwrap_err();
        assert!(err.contains("hidden_size"), "{err}");
    }
}
