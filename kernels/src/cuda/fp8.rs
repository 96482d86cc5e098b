//! FP8 weights (E4M3, one f32 scale per output row: vLLM's `--quantization fp8` layout) made on
//! the device from bf16 ones ([`Fp8Matrix::quantize`]), read in registers by the GEMV
//! ([`Kernels::linear`]) and expanded back to bf16 for GEMMs of many rows
//! ([`Kernels::dequantize_fp8`]). The host decoding ([`e4m3_to_f32`]) is what checks compare
//! against; [`round_to_e4m3`] is what a host model quantized like the device's holds.

use half::bf16;

pub use crate::cpu::{E4M3_MAX, e4m3_to_f32, round_to_e4m3};

use super::device::GpuDevice;
use super::error::{CudaError, as_i32};
use super::kernels::{Kernels, grid};
use super::memory::{
    DeviceBuffer, DeviceSlice, DeviceSliceMut, DeviceView, DeviceViewMut, check_len,
};

/// A matrix `[out, inner]` as E4M3 codes and a scale per row: `w[o, i] ≈ scale[o] ·
/// e4m3(codes[o, i])`. `inner` is a multiple of 16 (the GEMV's 16-byte loads).
pub struct Fp8Matrix {
    codes: DeviceBuffer<u8>,
    scales: DeviceBuffer<f32>,
    out: usize,
    inner: usize,
}

impl std::fmt::Debug for Fp8Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fp8Matrix([{}, {}])", self.out, self.inner)
    }
}

/// FP8 rows are read in 16-byte chunks.
fn check_inner(inner: usize) -> Result<(), CudaError> {
    if inner.is_multiple_of(16) {
        Ok(())
    } else {
        Err(CudaError::Invalid(format!(
            "FP8 weights need rows of a multiple of 16 values, not {inner}"
        )))
    }
}

impl Fp8Matrix {
    /// Quantizes `w [out, inner]` bf16 on the device: each row scaled so its largest magnitude
    /// is [`E4M3_MAX`], rounded to nearest even.
    pub fn quantize(
        device: &GpuDevice,
        kernels: &Kernels,
        w: &impl DeviceView<bf16>,
        out: usize,
        inner: usize,
    ) -> Result<Self, CudaError> {
        let w = w.view();
        check_len("FP8 source matrix", w.len(), out * inner)?;
        check_inner(inner)?;
        let mut matrix = Self {
            codes: device.alloc(out * inner)?,
            scales: device.alloc(out)?,
            out,
            inner,
        };
        if out > 0 {
            let args = (
                w,
                matrix.codes.view_mut(),
                matrix.scales.view_mut(),
                as_i32(inner, "inner")?,
            );
            // SAFETY: block `o < out` reads row `o` of `w` (`inner` values) and writes row `o` of
            // the codes and `scales[o]`: the lengths checked and allocated above.
            unsafe { kernels.queue(&kernels.quantize_fp8, grid(out, 1, 1, 256)?, args)? };
        }
        Ok(matrix)
    }

    /// A matrix from codes and per-row scales made elsewhere (an FP8 checkpoint's).
    pub fn from_parts(
        codes: DeviceBuffer<u8>,
        scales: DeviceBuffer<f32>,
        out: usize,
        inner: usize,
    ) -> Result<Self, CudaError> {
        check_len("FP8 weight codes", codes.len(), out * inner)?;
        check_len("FP8 weight scales", scales.len(), out)?;
        check_inner(inner)?;
        Ok(Self {
            codes,
            scales,
            out,
            inner,
        })
    }

    pub fn out(&self) -> usize {
        self.out
    }

    pub fn inner(&self) -> usize {
        self.inner
    }

    /// Device bytes held (codes and scales).
    pub fn bytes(&self) -> usize {
        self.codes.bytes() + self.scales.bytes()
    }

    /// The E4M3 codes `[out, inner]`.
    pub fn codes(&self) -> &DeviceBuffer<u8> {
        &self.codes
    }

    /// The scale of each row.
    pub fn scales(&self) -> &DeviceBuffer<f32> {
        &self.scales
    }
}

impl Kernels {
    /// `w = scale · e4m3(codes)` as bf16 into the first `out × inner` elements of `w`.
    pub fn dequantize_fp8(
        &self,
        m: &Fp8Matrix,
        w: &mut impl DeviceViewMut<bf16>,
    ) -> Result<(), CudaError> {
        let (codes, scales) = (m.codes.view(), m.scales.view());
        self.dequantize(codes, scales, m.out, m.inner, w.view_mut())
    }

    /// [`Kernels::dequantize_fp8`] of checked codes (`out × inner`, `inner` a multiple of 16)
    /// and scales (`out`).
    pub(crate) fn dequantize(
        &self,
        codes: DeviceSlice<'_, u8>,
        scales: DeviceSlice<'_, f32>,
        out: usize,
        inner: usize,
        w: DeviceSliceMut<'_, bf16>,
    ) -> Result<(), CudaError> {
        let n = out * inner;
        check_len("FP8 codes", codes.len(), n)?;
        check_len("FP8 scales", scales.len(), out)?;
        check_len("dense weight buffer", w.len(), n)?;
        if !inner.is_multiple_of(16) {
            return Err(CudaError::Invalid(format!(
                "FP8 rows hold a multiple of 16 values, not {inner}"
            )));
        }
        if n == 0 {
            return Ok(());
        }
        let cfg = grid(self.stride_blocks(n / 16, 256), 1, 1, 256)?;
        let args = (
            codes,
            scales,
            w,
            as_i32(out, "out")?,
            as_i32(inner, "inner")?,
        );
        // SAFETY: the kernel reads `out × inner` codes and `out` scales and writes `out × inner`
        // values of `w`: the lengths checked above.
        unsafe { self.queue(&self.dequantize_fp8, cfg, args) }
    }
}
