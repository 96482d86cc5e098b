//! GGUF checkpoints (llama.cpp's format; `llama` and `qwen2`): the config from metadata, tensors
//! dequantised to `f32` at load (F32, F16, Q8_0, Q4_0, Q4_1 and the other types candle reads),
//! `llama`'s Q/K rows un-permuted from llama.cpp's interleaved RoPE layout back to the HF layout
//! the forward pass uses (`qwen2`'s are stored in HF order).

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
        let family = match arch.as_str() {
            "llama" => Arch::Llama,
            "qwen2" => Arch::Qwen2,
            _ => {
                return Err(self.error(format!(
                    "architecture `{arch}` is not supported in GGUF (llama, qwen2)"
                )));
            }
        };
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
            arch: family,
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
    let (module, kind) = tail.rsplit_once('.')?;
    let part = match (module, kind) {
        ("input_layernorm", "weight") => "attn_norm",
        ("self_attn.q_proj", _) => "attn_q",
        ("self_attn.k_proj", _) => "attn_k",
        ("self_attn.v_proj", _) => "attn_v",
        ("self_attn.o_proj", "weight") => "attn_output",
        ("post_attention_layernorm", "weight") => "ffn_norm",
        ("mlp.gate_proj", "weight") => "ffn_gate",
        ("mlp.up_proj", "weight") => "ffn_up",
        ("mlp.down_proj", "weight") => "ffn_down",
        _ => return None,
    };
    matches!(kind, "weight" | "bias").then(|| format!("blk.{layer}.{part}.{kind}"))
}

/// llama.cpp's Q/K row order: for each row as stored (`[head][i][pair]`), the HF row it holds
/// (`[head][pair][i]`), as `(stored, hf)` pairs over `rows` rows of `heads` heads.
fn llama_cpp_rows(rows: usize, heads: usize) -> impl Iterator<Item = (usize, usize)> {
    let head_rows = rows / heads;
    let half = head_rows / 2;
    (0..heads).flat_map(move |h| {
        (0..half).flat_map(move |i| {
            (0..2).map(move |pair| {
                (
                    h * head_rows + i * 2 + pair,
                    h * head_rows + pair * half + i,
                )
            })
        })
    })
}

/// Undoes llama.cpp's Q/K row permutation.
fn unpermute_rows<T: Copy + Default>(w: &[T], heads: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); w.len()];
    for (stored, hf) in llama_cpp_rows(w.len() / cols, heads) {
        out[hf * cols..(hf + 1) * cols].copy_from_slice(&w[stored * cols..(stored + 1) * cols]);
    }
    out
}

/// Reads Llama-family tensors out of a GGUF file by their HF names.
pub struct GgufSource {
    file: GgufFile,
    heads: usize,
    kv_heads: usize,
    /// llama.cpp's converter permutes Q/K rows for `llama` (its RoPE pairs adjacent values)
    /// and leaves `qwen2`'s in HF order (NeoX RoPE, as HF's).
    permuted: bool,
    /// See [`GgufSource::blocks_only`].
    blocks_only: bool,
}

impl GgufSource {
    pub fn new(file: GgufFile, cfg: &ModelConfig) -> Self {
        Self {
            file,
            heads: cfg.heads,
            kv_heads: cfg.kv_heads,
            permuted: cfg.arch == Arch::Llama,
            blocks_only: false,
        }
    }

    /// For a model the GPU serves: a block's matrix stored in a block format comes back as its
    /// blocks alone, with no f32 copy (the device expands the blocks itself), so the host holds
    /// the file's bytes rather than four bytes a weight. The embedding and the head keep their
    /// f32 values (a vocabulary patch rewrites them on the host).
    pub fn blocks_only(self) -> Self {
        Self {
            blocks_only: true,
            ..self
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
        if !self.permuted {
            rows
        } else if name.ends_with("q_proj.weight") {
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
        let (Some(kind), [out, inner]) = (block_kind(q.dtype()), shape) else {
            return Ok((self.dequantized(name, &gguf, &q)?, None));
        };
        let (out, inner) = (*out, *inner);
        let values = if self.blocks_only && name.starts_with("model.layers.") {
            Vec::new()
        } else {
            self.dequantized(name, &gguf, &q)?
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

/// The format of a GGUF tensor type the CPU multiplies from its blocks; `None` for the others
/// (F32, F16 and the rarer quantizations), which run from their f32 values.
fn block_kind(dtype: GgmlDType) -> Option<BlockKind> {
    Some(match dtype {
        GgmlDType::Q4_0 => BlockKind::Q4_0,
        GgmlDType::Q4_1 => BlockKind::Q4_1,
        GgmlDType::Q5_0 => BlockKind::Q5_0,
        GgmlDType::Q5_1 => BlockKind::Q5_1,
        GgmlDType::Q8_0 => BlockKind::Q8_0,
        GgmlDType::Q4K => BlockKind::Q4_K,
        GgmlDType::Q5K => BlockKind::Q5_K,
        GgmlDType::Q6K => BlockKind::Q6_K,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::dense_kv::DenseKv;
    use crate::model::tests::{max_diff, prefill_all};
    use crate::model::{Model, dummy};
    use candle_core::Tensor;
    use candle_core::quantized::gguf_file;

    /// llama.cpp's converter's Q/K permutation for `llama` (what `unpermute_rows` undoes).
    fn permute_rows(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
        let mut out = vec![0.0; w.len()];
        for (stored, hf) in llama_cpp_rows(w.len() / cols, heads) {
            out[stored * cols..(stored + 1) * cols].copy_from_slice(&w[hf * cols..(hf + 1) * cols]);
        }
        out
    }

    /// The dummy model `(cfg, seed)` written as llama.cpp's converter writes a checkpoint of its
    /// architecture: its tensor names and metadata keys, `llama`'s Q/K rows permuted, f32.
    fn write_gguf(cfg: &ModelConfig, seed: u64, path: &Path) {
        write_gguf_as(cfg, seed, path, |_| GgmlDType::F32);
    }

    /// As [`write_gguf`], each matrix in the format `format` gives its GGUF name (1-D tensors
    /// stay f32, as llama.cpp keeps norms).
    fn write_gguf_as(cfg: &ModelConfig, seed: u64, path: &Path, format: fn(&str) -> GgmlDType) {
        let arch = cfg.arch.name();
        let mut tensors = Vec::new();
        for (name, (values, shape)) in dummy::tensors(cfg, seed).expect("dummy tensors") {
            let cols = shape.last().copied().unwrap_or(1);
            let values = match (cfg.arch, name.rsplit('.').nth(1)) {
                (Arch::Llama, Some("q_proj")) if name.ends_with("weight") => {
                    permute_rows(&values, cfg.heads, cols)
                }
                (Arch::Llama, Some("k_proj")) if name.ends_with("weight") => {
                    permute_rows(&values, cfg.kv_heads, cols)
                }
                _ => values,
            };
            let tensor = Tensor::from_vec(values, shape.as_slice(), &Device::Cpu).expect("tensor");
            let gguf = gguf_name(&name).unwrap_or_else(|| panic!("no GGUF name for {name}"));
            let dtype = if shape.len() == 2 {
                format(&gguf)
            } else {
                GgmlDType::F32
            };
            let q = QTensor::quantize(&tensor, dtype).expect("quantizes");
            tensors.push((gguf, q));
        }
        let count = |n: usize| Value::U32(n as u32);
        let metadata = [
            (
                "general.architecture".to_owned(),
                Value::String(arch.to_owned()),
            ),
            (format!("{arch}.vocab_size"), count(cfg.vocab_size)),
            (format!("{arch}.embedding_length"), count(cfg.hidden)),
            (format!("{arch}.block_count"), count(cfg.layers)),
            (format!("{arch}.attention.head_count"), count(cfg.heads)),
            (
                format!("{arch}.attention.head_count_kv"),
                count(cfg.kv_heads),
            ),
            (format!("{arch}.feed_forward_length"), count(cfg.ffn)),
            (format!("{arch}.context_length"), count(cfg.max_positions)),
            (
                format!("{arch}.attention.layer_norm_rms_epsilon"),
                Value::F32(cfg.norm_eps),
            ),
            (format!("{arch}.rope.freq_base"), Value::F32(cfg.rope_theta)),
        ];
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        let mut file = File::create(path).expect("create the GGUF");
        gguf_file::write(&mut file, &metadata, &tensors).expect("write the GGUF");
    }

    #[test]
    fn llama_and_qwen2_ggufs_as_llama_cpp_writes_them_load_as_the_same_models() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["tiny-llama", "tiny-qwen2"] {
            let cfg = ModelConfig::preset(name).expect("a preset");
            let path = dir.path().join(format!("{name}.gguf"));
            write_gguf(&cfg, 7, &path);
            let file = GgufFile::open(&path).expect("opens");
            assert_eq!(file.config().expect("config"), cfg, "{name}");
            let loaded = Model::load_gguf(file).expect("loads");
            let reference = Model::dummy(cfg.clone(), 7).expect("dummy");
            let prompt: Vec<u32> = (0..11)
                .map(|i| (i * 53 + 7) % cfg.vocab_size as u32)
                .collect();
            let logits = |model: &Model| {
                prefill_all(model, &DenseKv::new(&model.config, 1, 32), 0, &prompt).concat()
            };
            let (got, want) = (logits(&loaded), logits(&reference));
            let worst = max_diff(&got, &want);
            assert!(worst <= 1e-6, "{name}: max |dlogit| {worst}");
            // Without undoing llama.cpp's permutation (or undoing one that is not there) the
            // model is another one.
            let mut wrong = GgufSource::new(GgufFile::open(&path).expect("opens"), &cfg);
            wrong.permuted = !wrong.permuted;
            let scrambled = Model::load(cfg.clone(), &mut wrong).expect("loads");
            let off = max_diff(&logits(&scrambled), &want);
            assert!(
                off > 1e-3,
                "{name}: the permutation makes no difference ({off})"
            );
        }
    }

    /// A Q4_K_M-style file (Q4_K for most matrices, Q6_K for V, down and the head, Q5_0 for O)
    /// keeps every matrix's blocks, mixed stacks (QKV) included, and decodes like its f32 values.
    #[test]
    fn a_k_quant_mix_decodes_from_its_blocks_like_its_f32_values() {
        let cfg = ModelConfig {
            hidden: 256,
            head_dim: 64,
            ffn: 512,
            ..ModelConfig::preset("tiny-llama").expect("a preset")
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k-mix.gguf");
        write_gguf_as(&cfg, 3, &path, |name| {
            if name.contains("attn_v") || name.contains("ffn_down") || name == "output.weight" {
                GgmlDType::Q6K
            } else if name.contains("attn_output") {
                GgmlDType::Q5_0
            } else {
                GgmlDType::Q4K
            }
        });
        let load = || Model::load_gguf(GgufFile::open(&path).expect("opens")).expect("loads");
        let packed = load();
        assert_eq!(packed.weights.packed_count(), 4 * cfg.layers + 1);
        let qkv = packed.weights.blocks[0].linears()[0].packed.as_ref();
        assert_eq!(
            qkv.map(QuantMatrix::kinds),
            Some(vec![BlockKind::Q4_K, BlockKind::Q6_K]),
            "Q and K in Q4_K, V in Q6_K"
        );
        let mut plain = load();
        plain.weights.drop_packed();
        crate::model::tests::assert_blocks_decode_like_f32(&packed, &plain, &[1, 3, 8]);
    }

    /// Each block format decodes as candle's ggml port does (an implementation of its own):
    /// a tensor quantized by candle, read as our blocks, gives candle's dequantized values.
    #[test]
    fn every_packed_format_decodes_as_ggml_does() {
        let (out, inner) = (5, 512);
        let values: Vec<f32> = (0..out * inner)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i % 7) as f32))
            .collect();
        let tensor = Tensor::from_vec(values, (out, inner), &Device::Cpu).expect("tensor");
        let formats = [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ];
        for dtype in formats {
            let q = QTensor::quantize(&tensor, dtype).expect("quantizes");
            let want: Vec<f32> = q
                .dequantize(&Device::Cpu)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .expect("dequantizes");
            let kind = block_kind(dtype).expect("packed");
            let bytes = q.data().expect("blocks").into_owned();
            let ours = QuantMatrix::new(kind, out, inner, bytes)
                .expect("sized")
                .dequantize();
            let worst = max_diff(&ours, &want);
            let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(worst <= 1e-6 * scale, "{dtype:?}: max |Δ| {worst}");
        }
        assert_eq!(block_kind(GgmlDType::F16), None);
    }

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
        assert_eq!(
            gguf_name("model.layers.3.self_attn.k_proj.bias").as_deref(),
            Some("blk.3.attn_k.bias")
        );
        assert_eq!(gguf_name("model.layers.3.self_attn.o_proj.bias"), None);
    }
}
