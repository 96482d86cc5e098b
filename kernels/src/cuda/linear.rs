//! Dense layers `y = x · Wᵀ` (`x [rows, inner]`, `W [out, inner]` bf16, as checkpoints store
//! `W`): the bandwidth-bound GEMV of `cu/gemv.cu` for a few rows, cuBLAS
//! ([`Blas::gemm`]) for more, chosen in one place ([`Kernels::linear`]). Both take a [`Linear`]:
//! the operands, checked against the shape once. The output's element type and whether it
//! accumulates travel with the output buffer ([`LinearOut`]), so a layer cannot write f32 into a
//! bf16 buffer.

use half::bf16;

use super::blas::Blas;
use super::error::{CudaError, as_i32};
use super::kernels::{Kernels, grid};
use super::launch::{Param, Value};
use super::memory::{DeviceSlice, DeviceSliceMut, DeviceView, DeviceViewMut, check_len};

/// Most rows [`Kernels::gemv`] takes (decode batches up to this use it instead of cuBLAS).
pub const GEMV_MAX_ROWS: usize = 8;

/// A dense layer's sizes: `rows` inputs of `inner` values against `out` weight rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    pub rows: usize,
    pub out: usize,
    pub inner: usize,
}

/// One dense layer's operands, checked against its shape: `x [rows, inner]` and `W [out,
/// inner]` bf16, `y [rows, out]` as [`LinearOut`] says. What [`Kernels::linear`],
/// [`Kernels::gemv`] and [`Blas::gemm`] take.
#[derive(Debug)]
pub struct Linear<'a> {
    pub(crate) x: DeviceSlice<'a, bf16>,
    pub(crate) w: DeviceSlice<'a, bf16>,
    pub(crate) y: LinearOut<'a>,
    pub(crate) shape: LinearShape,
}

impl<'a> Linear<'a> {
    /// Fails unless `x`, `w` and `y` hold what `shape` touches.
    pub fn new(
        x: &'a impl DeviceView<bf16>,
        w: &'a impl DeviceView<bf16>,
        y: LinearOut<'a>,
        shape: LinearShape,
    ) -> Result<Self, CudaError> {
        let (x, w) = (x.view(), w.view());
        let LinearShape { rows, out, inner } = shape;
        check_len("linear input", x.len(), rows * inner)?;
        check_len("linear weight", w.len(), out * inner)?;
        check_len("linear output", y.len(), rows * out)?;
        Ok(Self { x, w, y, shape })
    }
}

/// Where a dense layer writes, and how.
#[derive(Debug)]
pub enum LinearOut<'a> {
    /// `y = x · Wᵀ` in f32.
    F32(DeviceSliceMut<'a, f32>),
    /// `y += x · Wᵀ` in f32 (the residual add folded into the layer).
    AddF32(DeviceSliceMut<'a, f32>),
    /// `y = x · Wᵀ` rounded to bf16.
    Bf16(DeviceSliceMut<'a, bf16>),
}

impl<'a> LinearOut<'a> {
    /// `y = x · Wᵀ` into `y`.
    pub fn f32(y: &'a mut impl DeviceViewMut<f32>) -> Self {
        Self::F32(y.view_mut())
    }

    /// `y += x · Wᵀ` into `y`.
    pub fn add_f32(y: &'a mut impl DeviceViewMut<f32>) -> Self {
        Self::AddF32(y.view_mut())
    }

    /// `y = x · Wᵀ` into `y`, as bf16.
    pub fn bf16(y: &'a mut impl DeviceViewMut<bf16>) -> Self {
        Self::Bf16(y.view_mut())
    }

    /// Elements of the output.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(y) | Self::AddF32(y) => y.len(),
            Self::Bf16(y) => y.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn address(&self) -> u64 {
        match self {
            Self::F32(y) | Self::AddF32(y) => y.address(),
            Self::Bf16(y) => y.address(),
        }
    }

    /// The GEMV kernel's `mode`: what its `void* y` is and whether it accumulates.
    fn gemv_mode(&self) -> i32 {
        match self {
            Self::F32(_) => 0,
            Self::AddF32(_) => 1,
            Self::Bf16(_) => 2,
        }
    }
}

/// The GEMV's `void* y` parameter: typed by the [`LinearOut`] that fills it (and `mode`).
pub(crate) struct OutVoid;

impl Param for OutVoid {
    type Arg<'a> = LinearOut<'a>;
    fn value(arg: &LinearOut<'_>) -> Value {
        Value::U64(arg.address())
    }
}

/// The GEMV's `mode` for SwiGLU folded in (bf16 `y`, stacked `[gate; up]` weight rows).
const GEMV_MODE_SWIGLU: i32 = 3;

impl Kernels {
    /// Whether [`Kernels::gemv`] takes this shape: at most [`GEMV_MAX_ROWS`] rows and an
    /// `inner` size that is a multiple of 8 (its 16-byte loads).
    pub fn gemv_fits(rows: usize, inner: usize) -> bool {
        rows <= GEMV_MAX_ROWS && inner.is_multiple_of(8)
    }

    /// `y = x · Wᵀ`: the GEMV for a few rows, cuBLAS otherwise.
    pub fn linear(&self, blas: &Blas, layer: Linear<'_>) -> Result<(), CudaError> {
        if Self::gemv_fits(layer.shape.rows, layer.shape.inner) {
            self.gemv(layer)
        } else {
            blas.gemm(layer)
        }
    }

    /// `y = x · Wᵀ` for at most [`GEMV_MAX_ROWS`] rows (`inner` a multiple of 8), streaming W
    /// at memory bandwidth.
    pub fn gemv(&self, layer: Linear<'_>) -> Result<(), CudaError> {
        let mode = layer.y.gemv_mode();
        self.queue_gemv(layer, mode)
    }

    /// SwiGLU folded into the gate/up GEMV: `W [2 out, inner]` holds the gate rows, then the up
    /// rows, and `y [rows, out]` bf16 is `silu(x · W_gateᵀ) · (x · W_upᵀ)`.
    pub fn gemv_swiglu(
        &self,
        x: &impl DeviceView<bf16>,
        w: &impl DeviceView<bf16>,
        y: &mut impl DeviceViewMut<bf16>,
        shape: LinearShape,
    ) -> Result<(), CudaError> {
        // The stacked weight is checked as one layer of `2 out` rows, the output as `out` wide.
        let w = w.view();
        check_len("SwiGLU weight", w.len(), 2 * shape.out * shape.inner)?;
        let layer = Linear::new(x, &w, LinearOut::bf16(y), shape)?;
        self.queue_gemv(layer, GEMV_MODE_SWIGLU)
    }

    /// The GEMV launch of checked operands (`W` having `2 out` rows in SwiGLU mode).
    fn queue_gemv(&self, layer: Linear<'_>, mode: i32) -> Result<(), CudaError> {
        let Linear { x, w, y, shape } = layer;
        let LinearShape { rows, out, inner } = shape;
        if rows == 0 {
            return Ok(());
        }
        if !Self::gemv_fits(rows, inner) {
            return Err(CudaError::Invalid(format!(
                "gemv takes at most {GEMV_MAX_ROWS} rows and inner sizes that are multiples of 8, \
                 not {rows} x {inner}"
            )));
        }
        let bucket = match rows {
            1 => 0,
            2 => 1,
            3..=4 => 2,
            _ => 3,
        };
        let pair = usize::from(mode == GEMV_MODE_SWIGLU);
        let row_blocks = out.div_ceil(8);
        let ksplit = [1, 2, 4, 8]
            .into_iter()
            .find(|k| row_blocks * k >= self.gemv_min_blocks)
            .unwrap_or(8);
        let cfg = grid((out * ksplit).div_ceil(8), 1, 1, 256)?;
        let args = (
            x,
            w,
            y,
            as_i32(rows, "rows")?,
            as_i32(out, "out")?,
            as_i32(inner, "inner")?,
            mode,
            as_i32(ksplit, "ksplit")?,
        );
        // SAFETY: the kernel reads `rows × inner` of `x` and `out` (SwiGLU: `2 out`) weight rows
        // of `inner`, and writes `rows × out` of `y` in the type `mode` names (the variant of
        // `y`, or bf16 for SwiGLU): the extents `Linear::new` (and, for the stacked SwiGLU
        // weight, `gemv_swiglu`) checked.
        unsafe { self.queue(&self.gemv[4 * pair + bucket], cfg, args) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cuda::memory::fake_views;

    #[test]
    fn a_layer_is_checked_against_its_shape_and_its_output_names_the_gemv_mode() {
        let shape = LinearShape {
            rows: 2,
            out: 3,
            inner: 8,
        };
        let (x, _) = fake_views::<bf16>(0x100, 16);
        let (w, _) = fake_views::<bf16>(0x200, 24);
        let (short_w, _) = fake_views::<bf16>(0x200, 23);
        let y = || fake_views::<f32>(0x300, 6).1;
        assert!(Linear::new(&x, &w, LinearOut::F32(y()), shape).is_ok());
        assert!(Linear::new(&x, &short_w, LinearOut::F32(y()), shape).is_err());
        assert!(Linear::new(&x, &w, LinearOut::Bf16(fake_views(0x300, 5).1), shape).is_err());
        let modes = [
            LinearOut::F32(y()).gemv_mode(),
            LinearOut::AddF32(y()).gemv_mode(),
            LinearOut::Bf16(fake_views(0x300, 6).1).gemv_mode(),
        ];
        assert_eq!(modes, [0, 1, 2]);
        assert!(Kernels::gemv_fits(8, 16) && !Kernels::gemv_fits(9, 16));
        assert!(!Kernels::gemv_fits(1, 12));
    }
}
