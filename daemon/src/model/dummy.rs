//! Dummy weights (`--load-format dummy`): seeded random values of the right shapes, so a 7B-shape
//! benchmark needs no download. Each tensor's values depend only on (seed, name), not on load
//! order. [`save_safetensors`] writes a dummy model as an HF checkpoint for reference tools.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::ModelError;
use super::config::ModelConfig;
use super::weights::TensorSource;

/// Tensors handed out by name: values and shape.
pub(crate) type Recorded = HashMap<String, (Vec<f32>, Vec<usize>)>;

pub struct DummySource {
    seed: u64,
    /// Tensors handed out, kept when saving a checkpoint.
    record: Option<Recorded>,
}

impl DummySource {
    pub fn new(seed: u64) -> Self {
        Self { seed, record: None }
    }

    fn recording(seed: u64) -> Self {
        Self {
            seed,
            record: Some(HashMap::new()),
        }
    }
}

impl TensorSource for DummySource {
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let digest = Sha256::new()
            .chain_update(self.seed.to_le_bytes())
            .chain_update(name)
            .finalize();
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&digest);
        let mut rng = StdRng::from_seed(seed);
        let len: usize = shape.iter().product();
        let is_norm = name.contains("norm") || name.contains(".ln_") || name.starts_with("ln_");
        let values: Vec<f32> = if is_norm && name.ends_with("weight") {
            (0..len).map(|_| rng.random_range(0.8..1.2)).collect()
        } else if name.ends_with("bias") {
            (0..len).map(|_| rng.random_range(-0.02..0.02)).collect()
        } else {
            // Uniform with the variance of N(0, 0.02²)... scaled up a little so logits spread.
            let bound = 0.02 * 3f32.sqrt() * 2.0;
            (0..len).map(|_| rng.random_range(-bound..bound)).collect()
        };
        if let Some(record) = &mut self.record {
            record.insert(name.to_owned(), (values.clone(), shape.to_vec()));
        }
        Ok(values)
    }

    fn contains(&self, _name: &str) -> bool {
        false
    }
}

/// Every tensor of the dummy model `(cfg, seed)` by its HF name, as a checkpoint holds it.
pub(crate) fn tensors(cfg: &ModelConfig, seed: u64) -> Result<Recorded, ModelError> {
    let mut src = DummySource::recording(seed);
    super::weights::Weights::load(cfg, &mut src)?;
    Ok(src.record.unwrap_or_default())
}

/// Writes `config.json` and `model.safetensors` (f32) of the dummy model `(cfg, seed)` into `dir`.
pub fn save_safetensors(cfg: &ModelConfig, seed: u64, dir: &Path) -> Result<(), ModelError> {
    let record = tensors(cfg, seed)?;
    let mut tensors = HashMap::new();
    for (name, (values, shape)) in record {
        let t = Tensor::from_vec(values, shape, &Device::Cpu)
            .map_err(|e| ModelError::Format(e.to_string()))?;
        tensors.insert(name, t);
    }
    write_checkpoint(cfg, &tensors, dir)
}

/// Writes `config.json` for `cfg` and `tensors` as `model.safetensors` into `dir`.
pub fn write_checkpoint(
    cfg: &ModelConfig,
    tensors: &HashMap<String, Tensor>,
    dir: &Path,
) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
    let st = dir.join("model.safetensors");
    candle_core::safetensors::save(tensors, &st)
        .map_err(|e| ModelError::Format(format!("{}: {e}", st.display())))?;
    let config = dir.join("config.json");
    let json = serde_json::to_string_pretty(&cfg.to_hf_json())
        .map_err(|e| ModelError::Format(e.to_string()))?;
    std::fs::write(&config, json).map_err(|e| ModelError::io(&config, e))
}

/// A dummy model's tensors as an FP8 checkpoint holds them and as they decode.
pub struct Fp8Checkpoint {
    /// Block matrices as E4M3 codes, each with its `_scale` tensor; the rest as they are.
    pub fp8: HashMap<String, Tensor>,
    /// The same tensors with each block matrix as its codes times their scales.
    pub decoded: HashMap<String, Tensor>,
    /// Matrices stored as FP8.
    pub quantized: usize,
}

/// The dummy model `(cfg, seed)` as an FP8 checkpoint: every block matrix as E4M3 codes with a
/// `_scale` tensor (per output row `[rows, 1]` and per tensor `[]` alternating, as vLLM's `fp8`
/// and `compressed-tensors` checkpoints store them).
pub fn fp8_checkpoint(cfg: &ModelConfig, seed: u64) -> Result<Fp8Checkpoint, ModelError> {
    let format = |e: candle_core::Error| ModelError::Format(e.to_string());
    let tensor = |values: Vec<f32>, shape: Vec<usize>| {
        Tensor::from_vec(values, shape, &Device::Cpu).map_err(format)
    };
    let (mut fp8, mut decoded) = (HashMap::new(), HashMap::new());
    let mut quantized = 0;
    let mut names: Vec<_> = tensors(cfg, seed)?.into_iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, (values, shape)) in names {
        let (true, &[rows, cols]) = (name.contains(".layers."), &shape[..]) else {
            decoded.insert(name.clone(), tensor(values.clone(), shape.clone())?);
            fp8.insert(name, tensor(values, shape)?);
            continue;
        };
        let largest = |row: &[f32]| row.iter().fold(0f32, |m, v| m.max(v.abs())) / 448.0;
        let scales: Vec<f32> = if quantized % 2 == 0 {
            values.chunks(cols.max(1)).map(largest).collect()
        } else {
            vec![largest(&values)]
        };
        quantized += 1;
        let scale_of = |i: usize| scales[if scales.len() == 1 { 0 } else { i / cols }];
        let scaled = values.iter().enumerate().map(|(i, v)| v / scale_of(i));
        let codes = tensor(scaled.collect(), shape.clone())?
            .to_dtype(DType::F8E4M3)
            .map_err(format)?;
        let back = (codes.to_dtype(DType::F32))
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(format)?;
        let values = back.iter().enumerate().map(|(i, v)| v * scale_of(i));
        decoded.insert(name.clone(), tensor(values.collect(), shape)?);
        let scale_shape = if scales.len() == 1 {
            vec![]
        } else {
            vec![rows, 1]
        };
        fp8.insert(format!("{name}_scale"), tensor(scales, scale_shape)?);
        fp8.insert(name, codes);
    }
    Ok(Fp8Checkpoint {
        fp8,
        decoded,
        quantized,
    })
}
