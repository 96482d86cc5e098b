//! The tensors of an HF safetensors checkpoint (one file or the shards of
//! `model.safetensors.index.json`), read from the headers alone: for each name its file, dtype,
//! shape and byte range. A loader then reads one tensor's bytes at a time, in chunks, straight
//! from the file (no mapping, no whole-checkpoint copy in host memory) and converts them to bf16
//! as they go.
//!
//! Must not: keep tensor data; it only knows where the data is.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use fused_kernels::cpu::e4m3_to_f32;
use half::{bf16, f16};
use serde::Deserialize;

use super::ModelError;

/// A checkpoint's float formats we read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Dtype {
    #[serde(rename = "BF16")]
    Bf16,
    #[serde(rename = "F16")]
    F16,
    #[serde(rename = "F32")]
    F32,
    /// FP8 codes of a matrix whose scales are the tensor `{name}_scale` (vLLM's `fp8` and
    /// `compressed-tensors` checkpoints).
    #[serde(rename = "F8_E4M3")]
    F8E4M3,
}

impl Dtype {
    pub fn bytes(self) -> usize {
        match self {
            Dtype::F8E4M3 => 1,
            Dtype::Bf16 | Dtype::F16 => 2,
            Dtype::F32 => 4,
        }
    }
}

/// The scale of each of `rows` rows of an FP8 matrix from the values of its `_scale` tensor
/// (`scale_name`): one for the whole tensor, or one per output row. Block-wise scales are
/// refused with the reason.
pub fn fp8_row_scales(
    values: Vec<f32>,
    rows: usize,
    scale_name: &str,
) -> Result<Vec<f32>, ModelError> {
    match values.len() {
        1 => Ok(vec![values[0]; rows]),
        n if n == rows => Ok(values),
        n => Err(ModelError::Format(format!(
            "`{scale_name}` holds {n} scales for {rows} rows: FP8 checkpoints with one scale per \
             tensor or per output row are read, block-wise scales are not"
        ))),
    }
}

/// Where one tensor lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    pub file: usize,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte offset of the data in its file.
    pub offset: u64,
    pub bytes: u64,
}

impl TensorEntry {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    files: Vec<File>,
    tensors: HashMap<String, TensorEntry>,
}

/// One header entry as the file states it (`data_offsets` relative to the data section).
#[derive(Debug, Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// Headers above this are refused (a real one is a few hundred KB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

impl Checkpoint {
    /// Reads the headers of `model.safetensors`, or of every shard the index lists, in `dir`.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if index.is_file() {
            let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
            #[derive(Deserialize)]
            struct Index {
                weight_map: HashMap<String, String>,
            }
            let parsed: Index = serde_json::from_str(&text)
                .map_err(|e| ModelError::Format(format!("{}: {e}", index.display())))?;
            let mut shards: Vec<String> = parsed.weight_map.into_values().collect();
            shards.sort();
            shards.dedup();
            for shard in &shards {
                if Path::new(shard).components().count() != 1 {
                    return Err(ModelError::Format(format!(
                        "{}: shard `{shard}` is not a file name in the checkpoint directory",
                        index.display()
                    )));
                }
            }
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            vec![dir.join("model.safetensors")]
        };
        let mut files = Vec::with_capacity(paths.len());
        let mut tensors = HashMap::new();
        for (file_index, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
            for (name, entry) in read_header(&file, path, file_index)? {
                if tensors.insert(name.clone(), entry).is_some() {
                    return Err(ModelError::Format(format!(
                        "{}: tensor `{name}` appears in two shards",
                        dir.display()
                    )));
                }
            }
            files.push(file);
        }
        Ok(Self {
            dir: dir.to_owned(),
            files,
            tensors,
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Bytes of tensor data in the checkpoint.
    pub fn total_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.bytes).sum()
    }

    /// `name`'s entry, checked to have `shape`.
    pub fn entry(&self, name: &str, shape: &[usize]) -> Result<&TensorEntry, ModelError> {
        let entry = self.tensors.get(name).ok_or_else(|| {
            ModelError::Format(format!(
                "{}: tensor `{name}` is missing",
                self.dir.display()
            ))
        })?;
        if entry.shape != shape {
            return Err(ModelError::Format(format!(
                "{}: tensor `{name}` has shape {:?}, expected {shape:?}",
                self.dir.display(),
                entry.shape
            )));
        }
        Ok(entry)
    }

    /// Reads `out.len()` bytes of `entry`'s data from byte `start` of the tensor.
    pub fn read(&self, entry: &TensorEntry, start: u64, out: &mut [u8]) -> Result<(), ModelError> {
        if start + out.len() as u64 > entry.bytes {
            return Err(ModelError::Format(format!(
                "{}: read past the end of a tensor",
                self.dir.display()
            )));
        }
        let file = &self.files[entry.file];
        file.read_exact_at(out, entry.offset + start)
            .map_err(|e| ModelError::io(&self.dir, e))
    }

    /// A whole (small) tensor as `f32` (norm weights).
    pub fn read_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let entry = self.entry(name, shape)?;
        let mut raw = vec![0u8; entry.bytes as usize];
        self.read(entry, 0, &mut raw)?;
        Ok(decode_f32(entry.dtype, &raw))
    }

    /// Whether tensor `name` holds FP8 codes.
    pub fn is_fp8(&self, name: &str) -> bool {
        self.tensors
            .get(name)
            .is_some_and(|t| t.dtype == Dtype::F8E4M3)
    }

    /// The scale of each of the `rows` rows of FP8 matrix `name`, from `{name}_scale`.
    pub fn fp8_scales(&self, name: &str, rows: usize) -> Result<Vec<f32>, ModelError> {
        let scale_name = format!("{name}_scale");
        let shape = match self.tensors.get(&scale_name) {
            Some(entry) => entry.shape.clone(),
            None => {
                return Err(ModelError::Format(format!(
                    "{}: FP8 tensor `{name}` has no `{scale_name}`",
                    self.dir.display()
                )));
            }
        };
        fp8_row_scales(self.read_f32(&scale_name, &shape)?, rows, &scale_name)
    }
}

fn read_header(
    file: &File,
    path: &Path,
    file_index: usize,
) -> Result<Vec<(String, TensorEntry)>, ModelError> {
    let bad = |msg: String| ModelError::Format(format!("{}: {msg}", path.display()));
    let mut len = [0u8; 8];
    file.read_exact_at(&mut len, 0)
        .map_err(|e| ModelError::io(path, e))?;
    let header_bytes = u64::from_le_bytes(len);
    if header_bytes > MAX_HEADER_BYTES {
        return Err(bad(format!(
            "a header of {header_bytes} bytes is not a safetensors file"
        )));
    }
    let mut header = vec![0u8; header_bytes as usize];
    file.read_exact_at(&mut header, 8)
        .map_err(|e| ModelError::io(path, e))?;
    let file_bytes = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
    let data_start = 8 + header_bytes;
    let parsed: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let mut entries = Vec::new();
    for (name, value) in parsed {
        if name == "__metadata__" {
            continue;
        }
        let raw: HeaderEntry =
            serde_json::from_value(value).map_err(|e| bad(format!("`{name}`: {e}")))?;
        let dtype: Dtype = serde_json::from_value(serde_json::Value::String(raw.dtype.clone()))
            .map_err(|_| {
                bad(format!(
                    "`{name}` is {}; only BF16, F16, F32 and F8_E4M3 tensors are read",
                    raw.dtype
                ))
            })?;
        let [begin, end] = raw.data_offsets;
        let elements: u64 = raw.shape.iter().map(|&d| d as u64).product();
        if end < begin
            || end - begin != elements * dtype.bytes() as u64
            || data_start + end > file_bytes
        {
            return Err(bad(format!(
                "`{name}`: data offsets {begin}..{end} do not hold {elements} {:?} elements inside the file",
                dtype
            )));
        }
        entries.push((
            name,
            TensorEntry {
                file: file_index,
                dtype,
                shape: raw.shape,
                offset: data_start + begin,
                bytes: end - begin,
            },
        ));
    }
    Ok(entries)
}

/// Little-endian `dtype` values → `f32` (FP8: the codes' values, without their scales).
pub fn decode_f32(dtype: Dtype, raw: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F8E4M3 => raw.iter().map(|&c| e4m3_to_f32(c)).collect(),
        Dtype::Bf16 => raw
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    }
}

/// Little-endian `dtype` values → little-endian bf16 bytes in `out` (`raw.len() / dtype.bytes()`
/// values; rounding to nearest, as the host loader's `bf16::from_f32`; FP8 codes unscaled).
pub fn to_bf16_bytes(dtype: Dtype, raw: &[u8], out: &mut [u8]) {
    match dtype {
        Dtype::Bf16 => out[..raw.len()].copy_from_slice(raw),
        Dtype::F16 | Dtype::F32 | Dtype::F8E4M3 => {
            for (value, dst) in decode_f32(dtype, raw)
                .into_iter()
                .zip(out.chunks_exact_mut(2))
            {
                dst.copy_from_slice(&bf16::from_f32(value).to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file holding `tensors` (name, dtype, shape, little-endian bytes).
    fn write(path: &Path, tensors: &[(&str, &str, Vec<usize>, Vec<u8>)]) {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let begin = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                (*name).into(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let header = serde_json::to_vec(&header).expect("json");
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(&header);
        file.extend_from_slice(&data);
        std::fs::write(path, file).expect("write");
    }

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn sharded_headers_locate_every_tensor_and_data_converts_to_bf16() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = [1.5f32, -2.0, 3.25, 0.1];
        let b: Vec<u8> = [0.5f32, -0.75]
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_le_bytes())
            .collect();
        write(
            &dir.path().join("one.safetensors"),
            &[("a", "F32", vec![2, 2], f32_bytes(&a))],
        );
        write(
            &dir.path().join("two.safetensors"),
            &[("b", "F16", vec![2], b)],
        );
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "one.safetensors", "b": "two.safetensors"}}"#,
        )
        .expect("index");
        let ckpt = Checkpoint::open(dir.path()).expect("opens");
        assert_eq!(ckpt.total_bytes(), 16 + 4);
        assert_eq!(ckpt.read_f32("b", &[2]).expect("b"), vec![0.5, -0.75]);
        let entry = ckpt.entry("a", &[2, 2]).expect("a");
        let mut raw = vec![0u8; 8];
        ckpt.read(entry, 8, &mut raw).expect("second half");
        let mut out = vec![0u8; 4];
        to_bf16_bytes(entry.dtype, &raw, &mut out);
        let back: Vec<f32> = out
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        assert_eq!(back, vec![3.25, bf16::from_f32(0.1).to_f32()]);
        assert!(matches!(ckpt.entry("a", &[4]), Err(ModelError::Format(_))));
        assert!(matches!(ckpt.entry("c", &[1]), Err(ModelError::Format(_))));
        assert!(
            ckpt.read(entry, 12, &mut raw).is_err(),
            "no read past a tensor"
        );
    }

    #[test]
    fn fp8_matrices_read_as_codes_with_a_scale_per_tensor_or_per_row() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Codes 0x38 = 1.0, 0xb8 = -1.0, 0x40 = 2.0, 0x01 = 2^-9.
        let codes = vec![0x38u8, 0xb8, 0x40, 0x01];
        write(
            &dir.path().join("model.safetensors"),
            &[
                ("a.weight", "F8_E4M3", vec![2, 2], codes.clone()),
                ("a.weight_scale", "F32", vec![], f32_bytes(&[0.5])),
                ("b.weight", "F8_E4M3", vec![2, 2], codes.clone()),
                ("b.weight_scale", "F32", vec![2, 1], f32_bytes(&[0.5, 4.0])),
                ("c.weight", "F8_E4M3", vec![2, 2], codes.clone()),
                (
                    "c.weight_scale",
                    "F32",
                    vec![3],
                    f32_bytes(&[1.0, 1.0, 1.0]),
                ),
                ("d.weight", "F8_E4M3", vec![2, 2], codes),
            ],
        );
        let ckpt = Checkpoint::open(dir.path()).expect("opens");
        assert!(ckpt.is_fp8("a.weight") && !ckpt.is_fp8("a.weight_scale"));
        let entry = ckpt.entry("a.weight", &[2, 2]).expect("a");
        assert_eq!(entry.bytes, 4);
        let mut raw = vec![0u8; 4];
        ckpt.read(entry, 0, &mut raw).expect("codes");
        assert_eq!(
            decode_f32(entry.dtype, &raw),
            vec![1.0, -1.0, 2.0, 2f32.powi(-9)]
        );
        assert_eq!(ckpt.fp8_scales("a.weight", 2).expect("a"), vec![0.5, 0.5]);
        assert_eq!(ckpt.fp8_scales("b.weight", 2).expect("b"), vec![0.5, 4.0]);
        let err = ckpt.fp8_scales("c.weight", 2).expect_err("block-wise");
        assert!(err.to_string().contains("block-wise"), "{err}");
        let err = ckpt.fp8_scales("d.weight", 2).expect_err("no scale");
        assert!(err.to_string().contains("has no `d.weight_scale`"), "{err}");
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(
            &dir.path().join("model.safetensors"),
            &[("i", "I64", vec![1], vec![0; 8])],
        );
        let err = Checkpoint::open(dir.path()).expect_err("I64 is not a float");
        assert!(
            err.to_string().contains("only BF16, F16, F32 and F8_E4M3"),
            "{err}"
        );
        write(
            &dir.path().join("model.safetensors"),
            &[("x", "F32", vec![3], vec![0; 8])],
        );
        let err = Checkpoint::open(dir.path()).expect_err("8 bytes are not 3 f32");
        assert!(err.to_string().contains("data offsets"), "{err}");
        std::fs::write(dir.path().join("model.safetensors"), u64::MAX.to_le_bytes())
            .expect("write");
        assert!(Checkpoint::open(dir.path()).is_err());
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "../elsewhere.safetensors"}}"#,
        )
        .expect("index");
        let err = Checkpoint::open(dir.path()).expect_err("a shard outside the directory");
        assert!(err.to_string().contains("not a file name"), "{err}");
    }
}
