//! HF safetensors checkpoints, single file or sharded (`model.safetensors.index.json`), any float
//! dtype converted to `f32` at load; FP8 (E4M3) matrices times their `_scale` tensor (vLLM's `fp8`
//! and `compressed-tensors` checkpoints: one scale per tensor or per output row).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};

use super::ModelError;
use super::checkpoint::fp8_row_scales;
use super::weights::TensorSource;

pub struct SafetensorsSource {
    dir: PathBuf,
    files: MmapedSafetensors,
    names: BTreeSet<String>,
}

impl SafetensorsSource {
    /// Opens `model.safetensors` or the shards listed by `model.safetensors.index.json` in `dir`.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| ModelError::Format(format!("{}: {e}", index.display())))?;
            let map = json["weight_map"]
                .as_object()
                .ok_or_else(|| ModelError::Format(format!("{}: no weight_map", index.display())))?;
            let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        for p in &paths {
            if !p.exists() {
                return Err(ModelError::Format(format!("{} is missing", p.display())));
            }
        }
        // SAFETY: the files are mapped read-only; a checkpoint changed under a running daemon is
        // outside what any loader can defend against (candle documents the same contract).
        let files = unsafe { MmapedSafetensors::multi(&paths) }
            .map_err(|e| ModelError::Format(format!("{}: {e}", dir.display())))?;
        let names = files.tensors().into_iter().map(|(n, _)| n).collect();
        Ok(Self {
            dir: dir.to_owned(),
            files,
            names,
        })
    }

    /// GPT-2 checkpoints may prefix every name with `transformer.`.
    fn resolve(&self, name: &str) -> Option<String> {
        [name.to_owned(), format!("transformer.{name}")]
            .into_iter()
            .find(|n| self.names.contains(n))
    }
}

impl TensorSource for SafetensorsSource {
    fn tensor(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let err = |msg: String| ModelError::Format(format!("{}: {msg}", self.dir.display()));
        let stored = self
            .resolve(name)
            .ok_or_else(|| err(format!("tensor `{name}` is missing")))?;
        let t = self
            .files
            .load(&stored, &Device::Cpu)
            .map_err(|e| err(format!("`{stored}`: {e}")))?;
        if t.dims() != shape {
            return Err(err(format!(
                "tensor `{stored}` has shape {:?}, expected {shape:?}",
                t.dims()
            )));
        }
        let fp8 = t.dtype() == DType::F8E4M3;
        let mut values = t
            .to_dtype(DType::F32)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| err(format!("`{stored}`: {e}")))?;
        if fp8 {
            let scale_name = format!("{stored}_scale");
            let [rows, cols] = shape else {
                return Err(err(format!("FP8 tensor `{stored}` is not a matrix")));
            };
            let scales = self
                .files
                .load(&scale_name, &Device::Cpu)
                .and_then(|t| t.to_dtype(DType::F32))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .map_err(|e| err(format!("FP8 tensor `{stored}` needs `{scale_name}`: {e}")))?;
            let scales = fp8_row_scales(scales, *rows, &scale_name)?;
            for (row, scale) in values.chunks_mut((*cols).max(1)).zip(scales) {
                row.iter_mut().for_each(|v| *v *= scale);
            }
        }
        Ok(values)
    }

    fn contains(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }
}
