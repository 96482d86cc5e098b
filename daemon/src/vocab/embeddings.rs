//! New embedding rows for the added n-grams, computed from the base model's weights with
//! AdaptiVocab's exponential weighting: an input-embedding row is the weighted mean of its parts'
//! rows with the last part heaviest (⅓, ⅔ for two parts; 1/7, 2/7, 4/7 for three), an LM-head row
//! the same with the first part heaviest. Reads weights; never changes them.

use std::path::Path;

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device};

use super::artifact::{NewRows, PatchSpec};
use super::error::{Result, VocabError};
use crate::model::checkpoint::Checkpoint;
use crate::model::layout::{self, MatrixPlan};
use crate::model::{Arch, ModelConfig};
use crate::tokenizer::Codec;

/// The input embedding and LM head of a model, dequantized to f32, row-major `[rows, hidden]`.
#[derive(Debug)]
pub struct ModelMatrices {
    /// Model name, recorded in the patch.
    pub name: String,
    /// Digest of the model's own tokenizer.
    pub tokenizer_digest: String,
    pub rows: usize,
    pub hidden: usize,
    pub embedding: Vec<f32>,
    /// `None` when the LM head is tied to the embedding.
    pub head: Option<Vec<f32>>,
}

impl ModelMatrices {
    /// The matrices of `path`: a GGUF file, or a safetensors checkpoint directory.
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::from_safetensors(path)
        } else {
            Self::from_gguf(path)
        }
    }

    /// The matrices of a Llama-family safetensors checkpoint directory (`config.json`, the
    /// tokenizer, `model.safetensors` or its shards), read tensor by tensor from the files: the
    /// rest of the checkpoint is never read.
    pub fn from_safetensors(dir: &Path) -> Result<Self> {
        let weights = |e: crate::model::ModelError| VocabError::Weights(e.to_string());
        let config = ModelConfig::from_hf_json(&dir.join("config.json")).map_err(weights)?;
        if !matches!(config.arch, Arch::Llama | Arch::Qwen2) {
            return Err(VocabError::Weights(format!(
                "{}: init-embeddings reads Llama-family safetensors checkpoints; this one is {} \
                 (convert it to GGUF, or pass its GGUF)",
                dir.display(),
                config.arch.name()
            )));
        }
        let codec = Codec::from_path(dir)?;
        let checkpoint = Checkpoint::open(dir).map_err(weights)?;
        let plan = layout::llama(&config);
        // The embedding and the LM head are one checkpoint tensor each.
        let tensor = |plan: &MatrixPlan| plan.parts.first().map(|part| part.name.clone());
        let (Some(embed_name), Some(head_name)) = (tensor(&plan.embed), tensor(&plan.lm_head))
        else {
            return Err(VocabError::Weights(
                "no embedding tensor in the layout".into(),
            ));
        };
        let shape = [config.vocab_size, config.hidden];
        let embedding = checkpoint.read_f32(&embed_name, &shape).map_err(weights)?;
        let head = if plan.head_is_separate(&config, checkpoint.contains(&head_name)) {
            Some(checkpoint.read_f32(&head_name, &shape).map_err(weights)?)
        } else {
            None
        };
        Ok(Self {
            name: codec.source().to_owned(),
            tokenizer_digest: codec.base_digest().to_owned(),
            rows: config.vocab_size,
            hidden: config.hidden,
            embedding,
            head,
        })
    }

    /// `token_embd.weight` and `output.weight` (absent: tied) of a GGUF model.
    pub fn from_gguf(path: &Path) -> Result<Self> {
        let weights =
            |e: candle_core::Error| VocabError::Weights(format!("{}: {e}", path.display()));
        let mut file = std::fs::File::open(path).map_err(VocabError::io(path))?;
        let content = gguf_file::Content::read(&mut file).map_err(weights)?;
        let codec = Codec::from_gguf(&content)?;
        let mut matrix = |name: &str| -> Result<Option<(usize, usize, Vec<f32>)>> {
            if !content.tensor_infos.contains_key(name) {
                return Ok(None);
            }
            let t = content
                .tensor(&mut file, name, &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(weights)?;
            let (rows, hidden) = t.dims2().map_err(weights)?;
            let data = t.flatten_all().and_then(|t| t.to_vec1()).map_err(weights)?;
            Ok(Some((rows, hidden, data)))
        };
        let (rows, hidden, embedding) = matrix("token_embd.weight")?.ok_or_else(|| {
            VocabError::Weights(format!("{}: no `token_embd.weight` tensor", path.display()))
        })?;
        let head = match matrix("output.weight")? {
            Some((r, h, data)) if (r, h) == (rows, hidden) => Some(data),
            Some((r, h, _)) => {
                return Err(VocabError::Weights(format!(
                    "`output.weight` is [{r}, {h}] but `token_embd.weight` is [{rows}, {hidden}]"
                )));
            }
            None => None,
        };
        Ok(Self {
            name: codec.source().to_owned(),
            tokenizer_digest: codec.base_digest().to_owned(),
            rows,
            hidden,
            embedding,
            head,
        })
    }
}

/// Weights of `n` parts, last heaviest: 2^i / (2^n − 1).
fn exponential_weights(n: usize) -> Vec<f32> {
    let total = (1u64 << n.min(62)) - 1;
    (0..n)
        .map(|i| (1u64 << i.min(62)) as f32 / total as f32)
        .collect()
}

fn weighted_row(
    matrix: &[f32],
    hidden: usize,
    parts: &[u32],
    weights: impl Iterator<Item = f32>,
    out: &mut Vec<f32>,
) {
    let start = out.len();
    out.resize(start + hidden, 0.0);
    for (&part, w) in parts.iter().zip(weights) {
        let row = &matrix[part as usize * hidden..(part as usize + 1) * hidden];
        for (o, x) in out[start..].iter_mut().zip(row) {
            *o += w * x;
        }
    }
}

/// Computes the new rows for every n-gram of `spec` from `model`'s matrices.
pub fn init_rows(spec: &PatchSpec, model: &ModelMatrices) -> Result<NewRows> {
    if model.tokenizer_digest != spec.base.digest {
        return Err(VocabError::BaseMismatch {
            patch_base: spec.base.digest.clone(),
            patch_source: spec.base.source.clone(),
            model_base: model.tokenizer_digest.clone(),
            model_source: model.name.clone(),
        });
    }
    if model.rows < spec.base.vocab_size {
        return Err(VocabError::Weights(format!(
            "the embedding has {} rows, fewer than the vocabulary's {}",
            model.rows, spec.base.vocab_size
        )));
    }
    let head = model.head.as_deref().unwrap_or(&model.embedding);
    let hidden = model.hidden;
    let mut input = Vec::with_capacity(spec.ngrams.len() * hidden);
    let mut output = Vec::with_capacity(spec.ngrams.len() * hidden);
    for g in &spec.ngrams {
        let w = exponential_weights(g.parts.len());
        weighted_row(
            &model.embedding,
            hidden,
            &g.parts,
            w.iter().copied(),
            &mut input,
        );
        weighted_row(head, hidden, &g.parts, w.iter().rev().copied(), &mut output);
    }
    Ok(NewRows {
        ids: spec.ngrams.iter().map(|g| g.id).collect(),
        hidden,
        input,
        output,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_match_the_paper() {
        let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
        assert!(close(&exponential_weights(2), &[1.0 / 3.0, 2.0 / 3.0]));
        assert!(close(
            &exponential_weights(3),
            &[1.0 / 7.0, 2.0 / 7.0, 4.0 / 7.0]
        ));
        assert!((exponential_weights(9).iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn rows_are_weighted_means_input_last_heaviest_head_first_heaviest() {
        // Two rows of hidden 2: e0 = [3, 0], e1 = [0, 3]; head h0 = [1, 1], h1 = [4, 4].
        let mut row = Vec::new();
        weighted_row(
            &[3.0, 0.0, 0.0, 3.0],
            2,
            &[0, 1],
            exponential_weights(2).into_iter(),
            &mut row,
        );
        assert_eq!(row, vec![1.0, 2.0]);
        weighted_row(
            &[1.0, 1.0, 4.0, 4.0],
            2,
            &[0, 1],
            exponential_weights(2).into_iter().rev(),
            &mut row,
        );
        assert_eq!(row[2..], [2.0, 2.0]);
    }
}

#[cfg(test)]
mod real_model_tests {
    use super::*;
    use crate::model::safetensors::SafetensorsSource;
    use crate::model::weights::TensorSource;
    use crate::vocab::artifact::{PatchArtifact, save_rows};
    use crate::vocab::fixtures;
    use crate::vocab::serving::load_for_serving;

    /// The whole path: build → init-embeddings from the real GGUF → load for serving → remap.
    #[test]
    fn rows_from_the_real_model_serve() {
        let (Some((_, mut spec)), Some(gguf)) = (
            fixtures::patched_smollm2(),
            crate::tokenizer::fixtures::smollm2_gguf(),
        ) else {
            return;
        };
        let model = ModelMatrices::from_gguf(&gguf).unwrap();
        assert_eq!((model.rows, model.hidden), (49152, 576));
        assert!(
            model.head.is_none(),
            "SmolLM2 ties its LM head to the embedding"
        );
        let rows = init_rows(&spec, &model).unwrap();
        let g = spec.ngrams.iter().position(|g| g.parts.len() == 2).unwrap();
        let (a, b) = (
            spec.ngrams[g].parts[0] as usize,
            spec.ngrams[g].parts[1] as usize,
        );
        for j in [0, 17, 575] {
            let (ea, eb) = (model.embedding[a * 576 + j], model.embedding[b * 576 + j]);
            assert!((rows.input[g * 576 + j] - (ea / 3.0 + 2.0 * eb / 3.0)).abs() < 1e-5);
            assert!((rows.output[g * 576 + j] - (2.0 * ea / 3.0 + eb / 3.0)).abs() < 1e-5);
        }

        let dir = fixtures::scratch_dir("serve");
        PatchArtifact::save(&dir, &spec).unwrap();
        spec.embeddings = Some(save_rows(&dir, &rows, model.name.clone()).unwrap());
        let digest = PatchArtifact::save(&dir, &spec).unwrap();
        let codec = Codec::from_gguf_path(&gguf).unwrap();
        let (patched, served) = load_for_serving(&dir, Some(&digest), codec).unwrap();
        assert_eq!(served.rows, rows);
        let (embedding, head) = served
            .tokenizer
            .remap_embedding_and_head(&model.embedding, &model.embedding, model.rows, &served.rows)
            .unwrap();
        let id = spec.ngrams[g].id as usize;
        assert_eq!(embedding[id * 576..][..576], rows.input[g * 576..][..576]);
        assert_eq!(head[id * 576..][..576], rows.output[g * 576..][..576]);
        assert_eq!(patched.decode(&[spec.ngrams[g].id], false).unwrap(), {
            let base = Codec::from_gguf_path(&gguf).unwrap();
            base.decode(&spec.ngrams[g].parts, false).unwrap()
        });

        // A model whose tokenizer differs is refused before any row is computed.
        let mut other = model;
        other.tokenizer_digest = "sha256:other".into();
        assert!(matches!(
            init_rows(&spec, &other),
            Err(VocabError::BaseMismatch { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A Llama safetensors checkpoint directory (config.json, tokenizer, weights) gives the
    /// matrices a memory-mapped read of the same file gives, and rows for its tokenizer's patch.
    #[test]
    fn rows_from_a_safetensors_checkpoint() {
        let (Some((_, spec)), Some(tokenizer)) = (
            fixtures::patched_mistral(),
            crate::tokenizer::fixtures::mistral_dir(),
        ) else {
            return;
        };
        let dir = fixtures::scratch_dir("safetensors");
        std::fs::create_dir_all(&dir).unwrap();
        for entry in std::fs::read_dir(&tokenizer).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
        let config = ModelConfig {
            vocab_size: 32_000,
            tie_embeddings: false,
            ..ModelConfig::preset("tiny-llama").unwrap()
        };
        crate::model::dummy::save_safetensors(&config, 7, &dir).unwrap();
        let model = ModelMatrices::open(&dir).unwrap();
        assert_eq!((model.rows, model.hidden), (32_000, config.hidden));
        let mut mapped = SafetensorsSource::open(&dir).unwrap();
        let shape = [32_000, config.hidden];
        assert_eq!(
            model.embedding,
            mapped.tensor("model.embed_tokens.weight", &shape).unwrap()
        );
        assert_eq!(
            model.head,
            Some(mapped.tensor("lm_head.weight", &shape).unwrap()),
            "an untied LM head is read"
        );
        let rows = init_rows(&spec, &model).unwrap();
        assert_eq!(rows.ids.len(), spec.ngrams.len());
        assert_eq!(rows.input.len(), spec.ngrams.len() * config.hidden);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
