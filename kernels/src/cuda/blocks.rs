//! GGUF's Q8_0 and Q4_K weights kept in their blocks on the device ([`BlockMatrix`]): read
//! directly by the GEMV for a few rows ([`Kernels::linear`]) and expanded to bf16 for cuBLAS past
//! that ([`Kernels::dequantize_blocks`]). A Q8_0 matrix is split at upload into its codes and its
//! f16 scales (the 34-byte blocks are not 16-byte aligned; the bytes stay the same); a Q4_K one is
//! uploaded as stored. The host's [`QuantMatrix`](crate::cpu::QuantMatrix) decodes the same bytes
//! and is what checks compare against.

use half::bf16;

use crate::cpu::{BlockKind, UNIT};

use super::device::GpuDevice;
use super::error::{CudaError, as_i32};
use super::kernels::{Kernels, grid};
use super::linear::{LinearWeights, WeightView};
use super::memory::{DeviceBuffer, DeviceSlice, DeviceSliceMut, DeviceViewMut, check_len};

/// The block formats the device reads.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    /// Codes `[out, inner]` int8 and a scale (f16) per 32.
    Q8_0,
    /// ggml's 144-byte super-blocks of 256 weights.
    Q4_K,
}

impl BlockFormat {
    /// The format of a host block kind, if the device reads it.
    pub fn of(kind: BlockKind) -> Option<Self> {
        match kind {
            BlockKind::Q8_0 => Some(Self::Q8_0),
            BlockKind::Q4_K => Some(Self::Q4_K),
            _ => None,
        }
    }

    /// Weights per block: rows are whole blocks.
    pub fn block_weights(self) -> usize {
        match self {
            Self::Q8_0 => 32,
            Self::Q4_K => 256,
        }
    }

    /// Device bytes of an `[out, inner]` matrix.
    pub fn bytes(self, out: usize, inner: usize) -> usize {
        match self {
            Self::Q8_0 => out * inner + out * inner / 32 * 2,
            Self::Q4_K => out * inner / 256 * 144,
        }
    }

    pub(crate) fn check(self, out: usize, inner: usize) -> Result<(), CudaError> {
        if inner.is_multiple_of(self.block_weights()) {
            Ok(())
        } else {
            Err(CudaError::Invalid(format!(
                "{self:?} rows are whole {}-weight blocks; {out} rows of {inner} are not",
                self.block_weights()
            )))
        }
    }
}

/// An `[out, inner]` matrix of one block format on the device.
pub struct BlockMatrix {
    format: BlockFormat,
    /// Q8_0: the codes; Q4_K: the super-blocks.
    data: DeviceBuffer<u8>,
    /// Q8_0: an f16 scale per 32 codes, row-major; Q4_K: empty.
    scales: DeviceBuffer<u16>,
    out: usize,
    inner: usize,
}

impl std::fmt::Debug for BlockMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BlockMatrix({:?} [{}, {}])",
            self.format, self.out, self.inner
        )
    }
}

impl BlockMatrix {
    /// Uploads `blocks`, the GGUF bytes of an `[out, inner]` matrix of `format`.
    pub fn upload(
        device: &GpuDevice,
        format: BlockFormat,
        out: usize,
        inner: usize,
        blocks: &[u8],
    ) -> Result<Self, CudaError> {
        format.check(out, inner)?;
        let per_block = match format {
            BlockFormat::Q8_0 => 34,
            BlockFormat::Q4_K => 144,
        };
        let expected = out * inner / format.block_weights() * per_block;
        if blocks.len() != expected {
            return Err(CudaError::Invalid(format!(
                "{format:?} data for [{out}, {inner}] is {expected} bytes, not {}",
                blocks.len()
            )));
        }
        let (data, scales) = match format {
            BlockFormat::Q8_0 => {
                let (codes, scales) = split_q8_0(blocks);
                (device.upload_new(&codes)?, device.upload_new(&scales)?)
            }
            BlockFormat::Q4_K => (device.upload_new(blocks)?, device.alloc(0)?),
        };
        Ok(Self {
            format,
            data,
            scales,
            out,
            inner,
        })
    }

    /// Random blocks (benchmarks, dummy weights): random quants, and scales (d, and Q4_K's
    /// dmin) of 4e-4 so the weights spread about as a small model's do.
    pub fn random(
        device: &GpuDevice,
        format: BlockFormat,
        out: usize,
        inner: usize,
        seed: u64,
    ) -> Result<Self, CudaError> {
        format.check(out, inner)?;
        let (block_bytes, scales): (usize, &[usize]) = match format {
            BlockFormat::Q8_0 => (34, &[0]),
            BlockFormat::Q4_K => (144, &[0, 2]),
        };
        let mut state = seed;
        let mut next = || {
            // SplitMix64.
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let mut bytes = vec![0u8; out * inner / format.block_weights() * block_bytes];
        for chunk in bytes.chunks_mut(8) {
            let r = next().to_le_bytes();
            chunk.copy_from_slice(&r[..chunk.len()]);
        }
        let scale = half::f16::from_f32(4e-4).to_bits().to_le_bytes();
        for block in bytes.chunks_exact_mut(block_bytes) {
            for &at in scales {
                block[at..at + 2].copy_from_slice(&scale);
            }
        }
        Self::upload(device, format, out, inner, &bytes)
    }

    pub fn format(&self) -> BlockFormat {
        self.format
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn inner(&self) -> usize {
        self.inner
    }

    /// Device bytes held.
    pub fn bytes(&self) -> usize {
        self.data.bytes() + self.scales.bytes()
    }
}

/// A Q8_0 matrix's 34-byte blocks (`d: f16, qs: [i8; 32]`) as its codes and its scales.
fn split_q8_0(blocks: &[u8]) -> (Vec<u8>, Vec<u16>) {
    let n = blocks.len() / 34;
    let mut codes = Vec::with_capacity(n * 32);
    let mut scales = Vec::with_capacity(n);
    for block in blocks.chunks_exact(34) {
        scales.push(u16::from_le_bytes([block[0], block[1]]));
        codes.extend_from_slice(&block[2..]);
    }
    (codes, scales)
}

impl WeightView for BlockMatrix {
    fn weights(&self) -> LinearWeights<'_> {
        match self.format {
            BlockFormat::Q8_0 => LinearWeights::Q8_0 {
                codes: self.data.view(),
                scales: self.scales.view(),
            },
            BlockFormat::Q4_K => LinearWeights::Q4_K {
                blocks: self.data.view(),
            },
        }
    }
}

impl Kernels {
    /// The matrix as bf16 into the first `out × inner` elements of `w`.
    pub fn dequantize_blocks(
        &self,
        m: &BlockMatrix,
        w: &mut impl DeviceViewMut<bf16>,
    ) -> Result<(), CudaError> {
        self.expand_blocks(m.weights(), m.out, m.inner, w.view_mut())
    }

    /// [`Kernels::dequantize_blocks`] of the weights of a layer (Q8_0 or Q4_K; others are
    /// refused).
    pub(crate) fn expand_blocks(
        &self,
        weights: LinearWeights<'_>,
        out: usize,
        inner: usize,
        w: DeviceSliceMut<'_, bf16>,
    ) -> Result<(), CudaError> {
        let n = out * inner;
        check_len("dense weight buffer", w.len(), n)?;
        let (o, i) = (as_i32(out, "out")?, as_i32(inner, "inner")?);
        match weights {
            LinearWeights::Q8_0 { codes, scales } => {
                BlockFormat::Q8_0.check(out, inner)?;
                check_q8_0(codes, scales, out, inner)?;
                if n == 0 {
                    return Ok(());
                }
                let cfg = grid(self.stride_blocks(n / 16, 256), 1, 1, 256)?;
                // SAFETY: the kernel reads `out × inner` codes and `out × inner / 32` scales and
                // writes `out × inner` values of `w`: the lengths checked above.
                unsafe { self.queue(&self.dequantize_q8_0, cfg, (codes, scales, w, o, i)) }
            }
            LinearWeights::Q4_K { blocks } => {
                BlockFormat::Q4_K.check(out, inner)?;
                check_len(
                    "Q4_K blocks",
                    blocks.len(),
                    BlockFormat::Q4_K.bytes(out, inner),
                )?;
                if n == 0 {
                    return Ok(());
                }
                let cfg = grid(self.stride_blocks(n / 32, 256), 1, 1, 256)?;
                // SAFETY: the kernel reads `out × inner / 256` super-blocks of 144 bytes and
                // writes `out × inner` values of `w`: the lengths checked above.
                unsafe { self.queue(&self.dequantize_q4_k, cfg, (blocks, w, o, i)) }
            }
            other => Err(CudaError::Invalid(format!(
                "dequantize_blocks takes Q8_0 or Q4_K weights, not {other:?}"
            ))),
        }
    }
}

/// `dequantize_gguf_units`' code of a host block format.
fn kind_code(kind: BlockKind) -> i32 {
    match kind {
        BlockKind::Q4_0 => 0,
        BlockKind::Q4_1 => 1,
        BlockKind::Q5_0 => 2,
        BlockKind::Q5_1 => 3,
        BlockKind::Q8_0 => 4,
        BlockKind::Q4_K => 5,
        BlockKind::Q5_K => 6,
        BlockKind::Q6_K => 7,
    }
}

impl Kernels {
    /// GGUF blocks of any format the host reads (`kind`, a whole number of blocks) expanded to
    /// bf16 into `w`, which takes exactly the weights they hold: the values of the host's
    /// [`QuantMatrix::dequantize`](crate::cpu::QuantMatrix::dequantize) of the same bytes, bit for bit, rounded
    /// to bf16. What a GGUF matrix that the device does not keep in its blocks goes through on
    /// its way to a bf16 or FP8 layer: the blocks cross PCIe, not bf16.
    pub fn expand_gguf(
        &self,
        kind: BlockKind,
        blocks: DeviceSlice<'_, u8>,
        w: DeviceSliceMut<'_, bf16>,
    ) -> Result<(), CudaError> {
        let block_bytes = kind.block_bytes();
        if !blocks.len().is_multiple_of(block_bytes) {
            return Err(CudaError::Invalid(format!(
                "{kind:?} data is whole {block_bytes}-byte blocks, not {} bytes",
                blocks.len()
            )));
        }
        let units = blocks.len() / block_bytes * kind.units();
        if w.len() != units * UNIT {
            return Err(CudaError::Invalid(format!(
                "{units} units of {kind:?} expand into {} weights, not {}",
                units * UNIT,
                w.len()
            )));
        }
        if units == 0 {
            return Ok(());
        }
        let cfg = grid(self.stride_blocks(units, 256), 1, 1, 256)?;
        let args = (
            blocks,
            w,
            kind_code(kind),
            as_i32(block_bytes, "block bytes")?,
            as_i32(kind.units(), "units per block")?,
            i64::try_from(units).map_err(|_| CudaError::Invalid("too many units".into()))?,
        );
        // SAFETY: the kernel reads `units / block_units` blocks of `block_bytes` (the length of
        // `blocks`) and writes `32 units` values (the length of `w`), both checked above.
        unsafe { self.queue(&self.dequantize_gguf, cfg, args) }
    }
}

/// Q8_0 operands hold `out × inner` codes and a scale per 32 of them.
pub(crate) fn check_q8_0(
    codes: DeviceSlice<'_, u8>,
    scales: DeviceSlice<'_, u16>,
    out: usize,
    inner: usize,
) -> Result<(), CudaError> {
    check_len("Q8_0 codes", codes.len(), out * inner)?;
    check_len("Q8_0 scales", scales.len(), out * inner / 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_q8_0_block_splits_into_its_scale_and_codes() {
        let mut blocks = vec![0x34, 0x12];
        blocks.extend(0..32u8);
        blocks.extend([0xcd, 0xab]);
        blocks.extend(100..132u8);
        let (codes, scales) = split_q8_0(&blocks);
        assert_eq!(scales, [0x1234, 0xabcd]);
        assert_eq!(codes, (0..32u8).chain(100..132).collect::<Vec<_>>());
    }

    #[test]
    fn formats_say_which_rows_and_bytes_they_take() {
        assert_eq!(BlockFormat::of(BlockKind::Q4_K), Some(BlockFormat::Q4_K));
        assert_eq!(BlockFormat::of(BlockKind::Q6_K), None);
        assert_eq!(BlockFormat::Q8_0.bytes(2, 64), 2 * 64 + 2 * 2 * 2);
        assert_eq!(BlockFormat::Q4_K.bytes(2, 512), 4 * 144);
        assert!(BlockFormat::Q4_K.check(3, 256).is_ok());
        let err = BlockFormat::Q4_K
            .check(3, 288)
            .expect_err("not whole super-blocks");
        assert!(err.to_string().contains("256-weight"), "{err}");
    }
}
