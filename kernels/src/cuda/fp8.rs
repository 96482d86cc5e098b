//! FP8 weights (E4M3, one f32 scale per output row: vLLM's `--quantization fp8` layout) made on
//! the device from bf16 ones ([`Fp8Matrix::quantize`]), read in registers by the GEMV
//! ([`Kernels::linear`]) and expanded back to bf16 for GEMMs of many rows
//! ([`Kernels::dequantize_fp8`]). The host decoding ([`e4m3_to_f32`]) is what checks compare
//! against; [`round_to_e4m3`] is what a host model quantized like the device's holds.

use half::bf16;

use super::device::GpuDevice;
use super::error::{CudaError, as_i32};
use super::kernels::{Kernels, grid};
use super::memory::{
    DeviceBuffer, DeviceSlice, DeviceSliceMut, DeviceView, DeviceViewMut, check_len,
};

/// Largest finite E4M3 value: a row's largest magnitude is scaled onto it.
pub const E4M3_MAX: f32 = 448.0;

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
        if !inner.is_multiple_of(16) {
            return Err(CudaError::Invalid(format!(
                "FP8 weights need rows of a multiple of 16 values, not {inner}"
            )));
        }
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

/// One E4M3 code as a float (sign, 4 exponent bits of bias 7, 3 mantissa bits; `0x7f` and
/// `0xff` are NaN; no infinities).
pub fn e4m3_to_f32(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = i32::from((code >> 3) & 0x0f);
    let mantissa = f32::from(code & 0x07);
    if code & 0x7f == 0x7f {
        return f32::NAN;
    }
    let magnitude = if exponent == 0 {
        mantissa / 8.0 * 2f32.powi(-6)
    } else {
        (1.0 + mantissa / 8.0) * 2f32.powi(exponent - 7)
    };
    sign * magnitude
}

/// `x` rounded to the nearest E4M3 value (ties to the even code), saturated to ±[`E4M3_MAX`]:
/// what `quantize_fp8_rows` stores for `x` = weight / scale, decoded.
pub fn round_to_e4m3(x: f32) -> f32 {
    let magnitude = x.abs().min(E4M3_MAX);
    // Codes 0..=0x7e are the finite non-negative values, in increasing order.
    let above = (0u8..=0x7e)
        .find(|&c| e4m3_to_f32(c) >= magnitude)
        .unwrap_or(0x7e);
    let code = if above == 0 {
        0
    } else {
        let (lo, hi) = (e4m3_to_f32(above - 1), e4m3_to_f32(above));
        match (magnitude - lo).total_cmp(&(hi - magnitude)) {
            std::cmp::Ordering::Less => above - 1,
            std::cmp::Ordering::Greater => above,
            std::cmp::Ordering::Equal if above % 2 == 0 => above,
            std::cmp::Ordering::Equal => above - 1,
        }
    };
    e4m3_to_f32(code).copysign(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_to_e4m3_picks_the_nearest_value_and_ties_to_even() {
        assert_eq!(round_to_e4m3(1.0), 1.0);
        assert_eq!(round_to_e4m3(1.06), 1.0);
        assert_eq!(round_to_e4m3(1.07), 1.125);
        // Halfway between 1.0 (code 0x38, even) and 1.125 (0x39): the even code.
        assert_eq!(round_to_e4m3(1.0625), 1.0);
        // Halfway between 1.125 (0x39) and 1.25 (0x3a, even).
        assert_eq!(round_to_e4m3(1.1875), 1.25);
        assert_eq!(round_to_e4m3(-3.0e3), -E4M3_MAX);
        assert_eq!(round_to_e4m3(1e-4), 0.0);
        assert_eq!(round_to_e4m3(-0.5), -0.5);
    }

    #[test]
    fn e4m3_codes_decode_to_the_format_values() {
        assert_eq!(e4m3_to_f32(0x00), 0.0);
        assert_eq!(e4m3_to_f32(0x38), 1.0);
        assert_eq!(e4m3_to_f32(0xb8), -1.0);
        assert_eq!(e4m3_to_f32(0x7e), E4M3_MAX);
        assert_eq!(e4m3_to_f32(0x01), 2f32.powi(-9));
        assert_eq!(e4m3_to_f32(0x08), 2f32.powi(-6));
        assert!(e4m3_to_f32(0x7f).is_nan() && e4m3_to_f32(0xff).is_nan());
        // Monotone over the positive codes.
        let values: Vec<f32> = (0..0x7f).map(e4m3_to_f32).collect();
        assert!(values.windows(2).all(|w| w[0] < w[1]));
    }
}
