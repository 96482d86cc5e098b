//! Dense layers `y = x · Wᵀ` (`x [rows, inner]`, `W [out, inner]` bf16 or FP8 — an
//! [`Fp8Matrix`] — as checkpoints store `W`): the bandwidth-bound GEMV of `cu/gemv.cu` for a few
//! rows, cuBLAS ([`Blas::gemm`], bf16 only) for more, chosen in one place ([`Kernels::linear`];
//! [`Kernels::linear_dense`] expands FP8 weights to bf16 for cuBLAS when the rows are too many
//! for the GEMV). Both take a [`Linear`]: the operands, checked against the shape once. The
//! output's element type and whether it accumulates travel with the output buffer
//! ([`LinearOut`]), so a layer cannot write f32 into a bf16 buffer. The GEMV has two builds
//! ([`GemvBuild`] picks): a warp per weight row, split over warps to fill the SMs, and the
//! tensor-core one, whose warps multiply 16 weight rows by all the input rows at once.

use half::bf16;

use super::blas::Blas;
use super::blocks::{BlockFormat, check_q8_0};
use super::error::{CudaError, as_i32};
use super::fp8::Fp8Matrix;
use super::kernels::{GemvBlocks, Kernels, grid};
use super::launch::{Param, Value};
use super::memory::{DeviceSlice, DeviceSliceMut, DeviceView, DeviceViewMut, check_len};

/// Most rows [`Kernels::gemv`] takes (decode batches up to this use it instead of cuBLAS).
pub const GEMV_MAX_ROWS: usize = 8;

/// Which build of the GEMV runs a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GemvBuild {
    /// The tensor cores wherever the inner size allows, except bf16 weights at one row, where a
    /// warp per row reads as fast (at 2–8 rows the tensor cores read the weights 1.4–6× faster
    /// and FP8 ones 2–17×: H100, docs/BENCHMARKS.md "Ninth session").
    #[default]
    Auto,
    /// The tensor cores wherever the inner size allows.
    TensorCores,
    /// A warp per weight row.
    PerRow,
}

/// Inner sizes the tensor-core GEMV takes are multiples of these (`GEMV_MMA_K` in `cu/gemv.cu`:
/// 4 lanes × 16 bytes of a row per step).
const GEMV_MMA_K: usize = 32;
const GEMV_MMA_K_FP8: usize = 64;

/// A dense layer's weights as the kernels read them.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub enum LinearWeights<'a> {
    Bf16(DeviceSlice<'a, bf16>),
    /// E4M3 codes `[out, inner]` and a scale per row.
    Fp8 {
        codes: DeviceSlice<'a, u8>,
        scales: DeviceSlice<'a, f32>,
    },
    /// GGUF Q8_0: int8 codes `[out, inner]` and an f16 scale per 32 ([`BlockMatrix`]).
    Q8_0 {
        codes: DeviceSlice<'a, u8>,
        scales: DeviceSlice<'a, u16>,
    },
    /// GGUF Q4_K super-blocks, row-major ([`BlockMatrix`]).
    Q4_K {
        blocks: DeviceSlice<'a, u8>,
    },
}

impl LinearWeights<'_> {
    /// Fails unless the weights hold `rows` rows of `inner` values.
    fn check(&self, rows: usize, inner: usize) -> Result<(), CudaError> {
        match self {
            Self::Bf16(w) => check_len("linear weight", w.len(), rows * inner),
            Self::Fp8 { codes, scales } => {
                check_len("FP8 weight codes", codes.len(), rows * inner)?;
                check_len("FP8 weight scales", scales.len(), rows)
            }
            Self::Q8_0 { codes, scales } => {
                BlockFormat::Q8_0.check(rows, inner)?;
                check_q8_0(*codes, *scales, rows, inner)
            }
            Self::Q4_K { blocks } => {
                BlockFormat::Q4_K.check(rows, inner)?;
                check_len(
                    "Q4_K weight blocks",
                    blocks.len(),
                    BlockFormat::Q4_K.bytes(rows, inner),
                )
            }
        }
    }
}

/// What holds a dense layer's weights: bf16 device memory, or an [`Fp8Matrix`].
pub trait WeightView {
    fn weights(&self) -> LinearWeights<'_>;
}

impl<V: DeviceView<bf16>> WeightView for V {
    fn weights(&self) -> LinearWeights<'_> {
        LinearWeights::Bf16(self.view())
    }
}

impl WeightView for Fp8Matrix {
    fn weights(&self) -> LinearWeights<'_> {
        LinearWeights::Fp8 {
            codes: self.codes().view(),
            scales: self.scales().view(),
        }
    }
}

/// A dense layer's sizes: `rows` inputs of `inner` values against `out` weight rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearShape {
    pub rows: usize,
    pub out: usize,
    pub inner: usize,
}

/// One dense layer's operands, checked against its shape: `x [rows, inner]` bf16, `W [out,
/// inner]` ([`LinearWeights`]), `y [rows, out]` as [`LinearOut`] says. What [`Kernels::linear`],
/// [`Kernels::gemv`] and [`Blas::gemm`] take.
#[derive(Debug)]
pub struct Linear<'a> {
    pub(crate) x: DeviceSlice<'a, bf16>,
    pub(crate) w: LinearWeights<'a>,
    pub(crate) y: LinearOut<'a>,
    pub(crate) shape: LinearShape,
}

impl<'a> Linear<'a> {
    /// Fails unless `x`, `w` and `y` hold what `shape` touches.
    pub fn new(
        x: &'a impl DeviceView<bf16>,
        w: &'a impl WeightView,
        y: LinearOut<'a>,
        shape: LinearShape,
    ) -> Result<Self, CudaError> {
        let (x, w) = (x.view(), w.weights());
        let LinearShape { rows, out, inner } = shape;
        check_len("linear input", x.len(), rows * inner)?;
        w.check(out, inner)?;
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
    /// Whether [`Kernels::gemv`] takes bf16 weights of this shape: at most [`GEMV_MAX_ROWS`]
    /// rows and an `inner` size that is a multiple of 8 (its 16-byte loads).
    pub fn gemv_fits(rows: usize, inner: usize) -> bool {
        rows <= GEMV_MAX_ROWS && inner.is_multiple_of(8)
    }

    /// Whether [`Kernels::gemv`] takes these weights at this shape (FP8: `inner` a multiple of
    /// 16).
    pub fn gemv_takes(w: &LinearWeights<'_>, rows: usize, inner: usize) -> bool {
        match w {
            LinearWeights::Bf16(_) => Self::gemv_fits(rows, inner),
            LinearWeights::Fp8 { .. } => rows <= GEMV_MAX_ROWS && inner.is_multiple_of(16),
            // Rows are whole blocks (checked with the weights).
            LinearWeights::Q8_0 { .. } | LinearWeights::Q4_K { .. } => rows <= GEMV_MAX_ROWS,
        }
    }

    /// `y = x · Wᵀ`: the GEMV for a few rows, cuBLAS otherwise (bf16 weights; FP8 weights of
    /// more rows than the GEMV takes need [`Kernels::linear_dense`]).
    pub fn linear(&self, blas: &Blas, layer: Linear<'_>) -> Result<(), CudaError> {
        if Self::gemv_takes(&layer.w, layer.shape.rows, layer.shape.inner) {
            self.gemv(layer)
        } else {
            blas.gemm(layer)
        }
    }

    /// [`Kernels::linear`], with FP8 weights of more rows than the GEMV takes expanded to bf16
    /// in `dense` (at least `out × inner` values) for cuBLAS.
    pub fn linear_dense(
        &self,
        blas: &Blas,
        layer: Linear<'_>,
        dense: &mut impl DeviceViewMut<bf16>,
    ) -> Result<(), CudaError> {
        let Linear { x, w, y, shape } = layer;
        match w {
            LinearWeights::Fp8 { codes, scales }
                if !Self::gemv_takes(&w, shape.rows, shape.inner) =>
            {
                self.dequantize(codes, scales, shape.out, shape.inner, dense.view_mut())?;
                let w = LinearWeights::Bf16(dense.view());
                blas.gemm(Linear { x, w, y, shape })
            }
            LinearWeights::Q8_0 { .. } | LinearWeights::Q4_K { .. }
                if !Self::gemv_takes(&w, shape.rows, shape.inner) =>
            {
                self.expand_blocks(w, shape.out, shape.inner, dense.view_mut())?;
                let w = LinearWeights::Bf16(dense.view());
                blas.gemm(Linear { x, w, y, shape })
            }
            _ => self.linear(blas, Linear { x, w, y, shape }),
        }
    }

    /// `y = x · Wᵀ` with the GEMV (rows as [`Kernels::gemv_takes`] allows), streaming W at
    /// memory bandwidth.
    pub fn gemv(&self, layer: Linear<'_>) -> Result<(), CudaError> {
        let mode = layer.y.gemv_mode();
        self.queue_gemv(layer, mode)
    }

    /// SwiGLU folded into the gate/up GEMV: `W [2 out, inner]` holds the gate rows, then the up
    /// rows, and `y [rows, out]` bf16 is `silu(x · W_gateᵀ) · (x · W_upᵀ)`.
    pub fn gemv_swiglu(
        &self,
        x: &impl DeviceView<bf16>,
        w: &impl WeightView,
        y: &mut impl DeviceViewMut<bf16>,
        shape: LinearShape,
    ) -> Result<(), CudaError> {
        let (x, w) = (x.view(), w.weights());
        // The stacked weight is checked as one layer of `2 out` rows, the output as `out` wide.
        w.check(2 * shape.out, shape.inner)?;
        check_len("SwiGLU input", x.len(), shape.rows * shape.inner)?;
        let y = LinearOut::bf16(y);
        check_len("SwiGLU output", y.len(), shape.rows * shape.out)?;
        self.queue_gemv(Linear { x, w, y, shape }, GEMV_MODE_SWIGLU)
    }

    /// Warps (1, 2, 4 or 8) that split each of `units` (rows, or 16-row tiles) of a GEMV whose
    /// blocks hold 8 warps: the fewest that give the grid `gemv_min_blocks` blocks.
    fn gemv_ksplit(&self, units: usize) -> usize {
        [1, 2, 4, 8]
            .into_iter()
            .find(|k| (units * k).div_ceil(8) >= self.gemv_min_blocks)
            .unwrap_or(8)
    }

    /// The GEMV launch of checked operands (`W` having `2 out` rows in SwiGLU mode).
    fn queue_gemv(&self, layer: Linear<'_>, mode: i32) -> Result<(), CudaError> {
        let Linear { x, w, y, shape } = layer;
        let LinearShape { rows, out, inner } = shape;
        if rows == 0 {
            return Ok(());
        }
        if !Self::gemv_takes(&w, rows, inner) {
            return Err(CudaError::Invalid(format!(
                "the GEMV takes at most {GEMV_MAX_ROWS} rows and inner sizes that are multiples \
                 of 8 (16 for FP8 weights), not {rows} x {inner}"
            )));
        }
        let bucket = match rows {
            1 => 0,
            2 => 1,
            3..=4 => 2,
            _ => 3,
        };
        let kernel = 4 * usize::from(mode == GEMV_MODE_SWIGLU) + bucket;
        let (mma_k, fp8) = match w {
            LinearWeights::Bf16(_) => (GEMV_MMA_K, false),
            LinearWeights::Fp8 { .. } => (GEMV_MMA_K_FP8, true),
            // A warp per weight row, decoding the blocks in registers.
            LinearWeights::Q8_0 { codes, scales } => {
                let layer = Linear { x, w, y, shape };
                return self.queue_gemv_blocks(
                    &self.gemv_q8_0[kernel],
                    layer,
                    codes,
                    Some(scales),
                    mode,
                );
            }
            LinearWeights::Q4_K { blocks } => {
                let layer = Linear { x, w, y, shape };
                return self.queue_gemv_blocks(&self.gemv_q4_k[kernel], layer, blocks, None, mode);
            }
        };
        let mma = inner.is_multiple_of(mma_k)
            && match self.gemv_build {
                GemvBuild::Auto => fp8 || rows > 1,
                GemvBuild::TensorCores => true,
                GemvBuild::PerRow => false,
            };
        let (rows, out_i, inner) = (
            as_i32(rows, "rows")?,
            as_i32(out, "out")?,
            as_i32(inner, "inner")?,
        );
        // SAFETY (every launch): the kernel reads `rows × inner` of `x` and `out` (SwiGLU:
        // `2 out`) weight rows of `inner` (FP8: and their scales), and writes `rows × out` of
        // `y` in the type `mode` names (the variant of `y`, or bf16 for SwiGLU): the extents
        // `Linear::new` or `gemv_swiglu` checked. No build touches more for any grid.
        if mma {
            let tiles = out.div_ceil(16);
            let ksplit = self.gemv_ksplit(tiles);
            let cfg = grid((tiles * ksplit).div_ceil(8), 1, 1, 256)?;
            let (ksplit, pair) = (
                as_i32(ksplit, "ksplit")?,
                usize::from(mode == GEMV_MODE_SWIGLU),
            );
            return match w {
                LinearWeights::Bf16(w) => {
                    let args = (x, w, y, rows, out_i, inner, mode, ksplit);
                    unsafe { self.queue(&self.gemv_mma_bf16[pair], cfg, args) }
                }
                LinearWeights::Fp8 { codes, scales } => {
                    let args = (x, codes, scales, y, rows, out_i, inner, mode, ksplit);
                    unsafe { self.queue(&self.gemv_mma_fp8[pair], cfg, args) }
                }
                LinearWeights::Q8_0 { .. } | LinearWeights::Q4_K { .. } => unreachable_blocks(),
            };
        }
        let ksplit = self.gemv_ksplit(out);
        let cfg = grid((out * ksplit).div_ceil(8), 1, 1, 256)?;
        let ksplit = as_i32(ksplit, "ksplit")?;
        match w {
            LinearWeights::Bf16(w) => {
                let args = (x, w, y, rows, out_i, inner, mode, ksplit);
                unsafe { self.queue(&self.gemv[kernel], cfg, args) }
            }
            LinearWeights::Fp8 { codes, scales } => {
                let args = (x, codes, scales, y, rows, out_i, inner, mode, ksplit);
                unsafe { self.queue(&self.gemv_fp8[kernel], cfg, args) }
            }
            LinearWeights::Q8_0 { .. } | LinearWeights::Q4_K { .. } => unreachable_blocks(),
        }
    }
}

impl Kernels {
    /// The block GEMV (a warp per weight row) of checked operands; `data` and `scales` are the
    /// layer's weights as the kernel takes them.
    fn queue_gemv_blocks(
        &self,
        kernel: &GemvBlocks,
        layer: Linear<'_>,
        data: DeviceSlice<'_, u8>,
        scales: Option<DeviceSlice<'_, u16>>,
        mode: i32,
    ) -> Result<(), CudaError> {
        let Linear { x, y, shape, .. } = layer;
        let cfg = grid(shape.out.div_ceil(8), 1, 1, 256)?;
        let args = (
            x,
            data,
            scales,
            y,
            as_i32(shape.rows, "rows")?,
            as_i32(shape.out, "out")?,
            as_i32(shape.inner, "inner")?,
            mode,
        );
        // SAFETY: the kernel reads `rows × inner` of `x` and `out` (SwiGLU: `2 out`) weight rows
        // of whole blocks (Q8_0: codes and a scale per 32; Q4_K: super-blocks), and writes
        // `rows × out` of `y` in the type `mode` names: the extents `Linear::new` or
        // `gemv_swiglu` checked with the weights.
        unsafe { self.queue(kernel, cfg, args) }
    }
}

/// Block weights launch their own GEMV before the bf16 and FP8 builds are chosen.
fn unreachable_blocks() -> Result<(), CudaError> {
    Err(CudaError::Invalid(
        "block weights reached the bf16/FP8 GEMV dispatch".into(),
    ))
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
