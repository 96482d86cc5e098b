//! The model layer: weights (GGUF, HF safetensors, dummy), the batched varlen forward pass over
//! the KV region, and sampling. CPU ops come from `fused-kernels`.
//!
//! Must not: schedule, own KV memory, or know about HTTP.

pub mod checkpoint;
pub mod config;
pub mod cuda;
pub mod dense_kv;
pub mod dummy;
pub mod forward;
pub mod gguf;
pub mod layout;
pub mod progress;
pub mod safetensors;
pub mod sampling;
pub mod tp;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fused_kernels::cpu::RopeTable;

pub use config::{Arch, ModelConfig};
pub use forward::{Logits, LogitsWanted, SeqChunk};
use tp::{Communicator, Shard};
use weights::{TensorSource, Weights};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad model config: {0}")]
    Config(String),
    #[error("bad checkpoint: {0}")]
    Format(String),
    #[error("{0}")]
    Input(String),
    #[error("not enough memory: {0}")]
    Memory(String),
    #[error("GPU: {0}")]
    Device(String),
}

impl ModelError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// What the engine runs each iteration: the CPU [`Model`] or, with feature `cuda`, the GPU model
/// ([`cuda::GpuModel`]). Both read and write K/V through [`KvAccess`](crate::kv::KvAccess).
pub trait Forward: Send {
    fn config(&self) -> &ModelConfig;
    /// Bytes of one element of the K/V this model writes to the KV region (its K/V dtype).
    fn kv_element_bytes(&self) -> usize;
    /// Scores only the first `ids` rows of the LM head: the ids the tokenizer decodes, when the
    /// model has more rows (a padded vocabulary). Rows of logits are then `ids` wide and a
    /// greedy pick ([`LogitsWanted::Greedy`]) is among them: the engine samples what it gets.
    fn limit_output_ids(&mut self, ids: usize);
    /// How the served weights are held, named as vLLM names the method: `none`, `fp8` or
    /// `gguf` (`fused_model_info`'s `quantization` label).
    fn quantization(&self) -> &'static str;
    /// One batched varlen pass; see [`Model::forward`] for the contract.
    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        kv: &dyn crate::kv::KvAccess,
    ) -> Result<Logits, ModelError>;
}

impl Forward for Model {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// f32: the CPU pass writes K/V as it computes them.
    fn kv_element_bytes(&self) -> usize {
        size_of::<f32>()
    }

    /// The head's product covers the first `ids` rows only (a prefix of its matrix).
    fn limit_output_ids(&mut self, ids: usize) {
        self.output_ids = ids.clamp(1, self.config.vocab_size);
    }

    /// `gguf` when the matrices are served from a GGUF's blocks (the CPU decode reads them).
    fn quantization(&self) -> &'static str {
        let packed = (self.weights.blocks.iter())
            .flat_map(weights::Block::linears)
            .any(|l| l.packed.is_some());
        if packed { "gguf" } else { "none" }
    }

    fn forward(
        &mut self,
        chunks: &[SeqChunk<'_>],
        kv: &dyn crate::kv::KvAccess,
    ) -> Result<Logits, ModelError> {
        Model::forward(self, chunks, kv)
    }
}

/// A loaded model: its shape, its weights and its position tables; for a tensor-parallel rank,
/// its slice of them and the group it sums its partial results with.
pub struct Model {
    pub config: ModelConfig,
    pub weights: Weights,
    rope: Option<RopeTable>,
    group: Option<Arc<dyn Communicator>>,
    /// Rows of the LM head that are scored (see `Forward::limit_output_ids`).
    output_ids: usize,
}

impl Model {
    pub fn new(config: ModelConfig, weights: Weights) -> Self {
        let rope = config.arch.rotary().then(|| {
            RopeTable::new(
                config.head_dim,
                config.rope_theta,
                config.rope_scaling,
                config.max_positions,
            )
        });
        Self {
            output_ids: config.vocab_size,
            config,
            weights,
            rope,
            group: None,
        }
    }

    /// Rank `group.rank()` of this model sharded over `group.world()` ranks (see [`tp`]).
    pub fn shard(&self, group: Arc<dyn Communicator>) -> Result<Self, ModelError> {
        let shard = Shard {
            rank: group.rank(),
            world: group.world(),
        };
        let config = shard.config(&self.config)?;
        let weights = shard.weights(&self.config, &self.weights)?;
        Ok(Self {
            group: Some(group),
            output_ids: self.output_ids,
            ..Self::new(config, weights)
        })
    }

    /// Loads weights from `src` after checking they fit in memory.
    pub fn load(config: ModelConfig, src: &mut dyn TensorSource) -> Result<Self, ModelError> {
        check_fits_in_memory(&config)?;
        let weights = Weights::load(&config, src)?;
        Ok(Self::new(config, weights))
    }

    /// Loads an HF directory (`config.json` + safetensors).
    pub fn load_hf_dir(dir: &Path) -> Result<Self, ModelError> {
        let config = ModelConfig::from_hf_json(&dir.join("config.json"))?;
        let mut src = safetensors::SafetensorsSource::open(dir)?;
        Self::load(config, &mut src)
    }

    /// Loads a GGUF file that is already open (its metadata may also feed the tokenizer).
    pub fn load_gguf(file: gguf::GgufFile) -> Result<Self, ModelError> {
        let config = file.config()?;
        let mut src = gguf::GgufSource::new(file, &config);
        Self::load(config, &mut src)
    }

    /// Seeded random weights of the given shape.
    pub fn dummy(config: ModelConfig, seed: u64) -> Result<Self, ModelError> {
        Self::load(config, &mut dummy::DummySource::new(seed))
    }
}

/// Refuses a model whose `f32` weights cannot fit in the memory available now, instead of
/// letting the allocator abort the process.
fn check_fits_in_memory(cfg: &ModelConfig) -> Result<(), ModelError> {
    let needed = cfg.parameter_count() as u64 * 4;
    let available = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find(|l| l.starts_with("MemAvailable:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    match available {
        Some(avail) if needed > avail => Err(ModelError::Memory(format!(
            "{} parameters need {:.1} GiB as f32 on CPU, {:.1} GiB available",
            cfg.parameter_count(),
            needed as f64 / (1u64 << 30) as f64,
            avail as f64 / (1u64 << 30) as f64
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
