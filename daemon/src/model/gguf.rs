//! GGUF checkpoints (llama.cpp's format): the config from metadata, tensors dequantised to `f32`
//! at load (F32, F16, Q8_0, Q4_0, Q4_1 and the other types candle reads), Q/K rows un-permuted
//! from llama.cpp's interleaved RoPE layout back to the HF layout the forward pass uses.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use fused_kernels::cpu::{BlockKind, QuantMatrix};

use super::ModelError;
use super::config::{Arch, ModelConfig};
use super::weights::TensorSource;

/// An open GGUF file: its parsed header and a reader for tensor data.
pub struct GgufFile {
    path: PathBuf,
    pub content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader)
            .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        Ok(Self {
            path: path.to_owned(),
            content,
            reader,
        })
    }

    fn meta(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn meta_usize(&self, key: &str) -> Result<usize, ModelError> {
        let value = self
            .meta(key)
            .ok_or_else(|| self.error(format!("metadata has no `{key}`")))?;
        value
            .to_u64()
            .map(|v| v as usize)
            .or_else(|_| value.to_u32().map(|v| v as usize))
            .map_err(|e| self.error(format!("`{key}`: {e}")))
    }

    fn meta_f32(&self, key: &str) -> Option<f32> {
        self.meta(key).and_then(|v| v.to_f32().ok())
    }

    fn error(&self, msg: String) -> ModelError {
        ModelError::Format(format!("{}: {msg}", self.path.display()))
    }

    /// The model shape from `general.architecture` and its `<arch>.*` keys.
    pub fn config(&self) -> Result<ModelConfig, ModelError> {
        let arch = self
            .meta("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| self.error("metadata has no general.architecture".into()))?;
        if arch != "llama" {
            return Err(self.error(format!(
                "architecture `{arch}` is not supported in GGUF (llama family only)"
            )));
        }
        if self.content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(self.error(
                "per-dimension RoPE frequency factors (rope_freqs) are not supported".into(),
            ));
        }
        let k = |suffix: &str| format!("{arch}.{suffix}");
        let hidden = self.meta_usize(&k("embedding_length"))?;
        let heads = self.meta_usize(&k("attention.head_count"))?;
        let kv_heads = self
            .meta_usize(&k("attention.head_count_kv"))
            .unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || heads % kv_heads != 0 || hidden % heads != 0 {
            return Err(self.error(format!(
                "inconsistent heads: hidden {hidden}, heads {heads}, kv heads {kv_heads}"
            )));
        }
        let vocab_size = match self
            .meta("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
        {
            Some(tokens) => tokens.len(),
            None => self.meta_usize(&k("vocab_size"))?,
        };
        Ok(ModelConfig {
            arch: Arch::Llama,
            vocab_size,
            hidden,
            layers: self.meta_usize(&k("block_count"))?,
            heads,
            kv_heads,
            head_dim: self
                .meta_usize(&k("attention.key_length"))
                .unwrap_or(hidden / heads),
            ffn: self.meta_usize(&k("feed_forward_length"))?,
            norm_eps: self
                .meta_f32(&k("attention.layer_norm_rms_epsilon"))
                .unwrap_or(1e-5),
            rope_theta: self.meta_f32(&k("rope.freq_base")).unwrap_or(10_000.0),
            rope_scaling: None,
            max_positions: self.meta_usize(&k("context_length")).unwrap_or(4096),
            tie_embeddings: !self.content.tensor_infos.contains_key("output.weight"),
        })
    }
}

/// Maps an HF llama tensor name to its GGUF name.
fn gguf_name(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_owned());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let part = match tail {
        "input_layernorm.weight" => "attn_norm",
        "self_attn.q_proj.weight" => "attn_q",
        "self_attn.k_proj.weight" => "attn_k",
        "self_attn.v_proj.weight" => "attn_v",
        "self_attn.o_proj.weight" => "attn_output",
        "post_attention_layernorm.weight" => "ffn_norm",
        "mlp.gate_proj.weight" => "ffn_gate",
        "mlp.up_proj.weight" => "ffn_up",
        "mlp.down_proj.weight" => "ffn_down",
        _ => return None,
    };
    Some(format!("blk.{layer}.{part}.weight"))
}

/// Undoes llama.cpp's Q/K row permutation: its rows run `[head][i][pair]`, HF's `[head][pair][i]`.
fn unpermute_rows<T: Copy + Default>(w: &[T], heads: usize, cols: usize) -> Vec<T> {
    let rows = w.len() / cols;
    let head_rows = rows / heads;
    let half = head_rows / 2;
    let mut out = vec![T::default(); w.len()];
    for h in 0..heads {
        for i in 0..half {
            for pair in 0..2 {
                let src = h * head_rows + i * 2 + pair;
                let dst = h * head_rows + pair * half + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Reads llama tensors out of a GGUF file by their HF names.
pub struct GgufSource {
    file: GgufFile,
    heads: usize,
    kv_heads: usize,
}

impl GgufSource {
    pub fn new(file: GgufFile, cfg: &ModelConfig) -> Self {
        Self {
            file,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
        }
    }
}

impl GgufSource {
    /// The quantised tensor of an HF name, its shape checked.
    fn load(&mut self, name: &str, shape: &[usize]) -> Result<(String, QTensor), ModelError> {
        let gguf = gguf_name(name).ok_or_else(|| {
            self.file
                .error(format!("no GGUF tensor corresponds to `{name}`"))
        })?;
        let q = self
            .file
            .content
            .tensor(&mut self.file.reader, &gguf, &Device::Cpu)
            .map_err(|e| self.file.error(format!("tensor `{gguf}`: {e}")))?;
        if q.shape().dims() != shape {
            return Err(self.file.error(format!(
                "tensor `{gguf}` has shape {:?}, expected {shape:?}",
                q.shape().dims()
            )));
        }
        Ok((gguf, q))
    }

    /// Rows in HF order: llama.cpp permutes the rows of Q and K (`row_len` values per row).
    fn hf_rows<T: Copy + Default>(&self, name: &str, rows: Vec<T>, row_len: usize) -> Vec<T> {
        if name.ends_with("q_proj.weight") {
            unpermute_rows(&rows, self.heads, row_len)
        } else if name.ends_with("k_proj.weight") {
            unpermute_rows(&rows, self.kv_heads, row_len)
        } else {
            rows
        }
    }

    fn dequantized(&self, name: &str, gguf: &str, q: &QTensor) -> Result<Vec<f32>, ModelError> {
        let values = q
            .dequantize(&Device::Cpu)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| self.file.error(format!("dequantising `{gguf}`: {e}")))?;
        let cols = q.shape().dims().last().copied().unwrap_or(1);
        Ok(self.hf_rows(name, values, cols))
    }
}

impl TensorSource for GgufSource {
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let (gguf, q) = self.load(name, shape)?;
        self.dequantized(name, &gguf, &q)
    }

    fn linear_weight(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<(Vec<f32>, Option<QuantMatrix>), ModelError> {
        let (gguf, q) = self.load(name, shape)?;
        let values = self.dequantized(name, &gguf, &q)?;
        let kind = match q.dtype() {
            GgmlDType::Q4_0 => BlockKind::Q4_0,
            GgmlDType::Q4_1 => BlockKind::Q4_1,
            GgmlDType::Q8_0 => BlockKind::Q8_0,
            _ => return Ok((values, None)),
        };
        let (out, inner) = match shape {
            [out, inner] => (*out, *inner),
            _ => return Ok((values, None)),
        };
        let raw = q
            .data()
            .map_err(|e| self.file.error(format!("blocks of `{gguf}`: {e}")))?
            .into_owned();
        let row_bytes = raw.len() / out.max(1);
        let raw = self.hf_rows(name, raw, row_bytes);
        let packed = QuantMatrix::new(kind, out, inner, raw)
            .map_err(|e| self.file.error(format!("blocks of `{gguf}`: {e}")))?;
        Ok((values, Some(packed)))
    }

    fn contains(&self, name: &str) -> bool {
        gguf_name(name).is_some_and(|g| self.file.content.tensor_infos.contains_key(&g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permutation() {
        // One head of 4 rows × 1 col: HF rows [a0, a1, b0, b1] are stored by llama.cpp as
        // [a0, b0, a1, b1].
        let gguf = [0.0, 10.0, 1.0, 11.0];
        assert_eq!(unpermute_rows(&gguf, 1, 1), vec![0.0, 1.0, 10.0, 11.0]);
    }

    #[test]
    fn names_map_both_ways_we_need() {
        assert_eq!(
            gguf_name("model.layers.12.mlp.down_proj.weight").as_deref(),
            Some("blk.12.ffn_down.weight")
        );
        assert_eq!(
            gguf_name("model.embed_tokens.weight").as_deref(),
            Some("token_embd.weight")
        );
        assert_eq!(gguf_name("model.layers.x"), None);
    }
}
