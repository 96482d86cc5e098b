//! cuBLAS GEMMs for dense layers: `y[rows, out] = x[rows, in] · W[out, in]ᵀ` with bf16 `x` and `W`
//! (row-major, as checkpoints store `W`), fp32 accumulation, and `y` either bf16 or f32 — f32 can
//! accumulate into `y` (`y += x · Wᵀ`), which fuses the residual add into the GEMM.
//!
//! The handle owns a fixed workspace, so GEMMs allocate nothing and can be captured in graphs.

use std::ffi::c_void;

use cudarc::cublas::{result, sys};

use super::device::{DeviceBuffer, GpuDevice, no_panic};
use super::error::{CudaError, as_i32};

const WORKSPACE_BYTES: usize = 32 << 20;

/// The element type (and mode) of a GEMM's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmOut {
    Bf16,
    /// `accumulate`: `y += x · Wᵀ` instead of `y = x · Wᵀ`.
    F32 {
        accumulate: bool,
    },
}

/// A cuBLAS handle on the device's stream.
pub struct Blas {
    handle: sys::cublasHandle_t,
    _workspace: DeviceBuffer,
}

// SAFETY: the handle is used from one thread at a time (the owner's); cuBLAS handles may move
// between threads.
unsafe impl Send for Blas {}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blas")
    }
}

fn check(call: &'static str, status: sys::cublasStatus_t) -> Result<(), CudaError> {
    if status == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Blas {
            call,
            code: status as u32,
            name: format!("{status:?}"),
        })
    }
}

impl Blas {
    pub fn new(device: &GpuDevice) -> Result<Self, CudaError> {
        device.bind()?;
        let workspace = device.alloc(WORKSPACE_BYTES)?;
        no_panic("cuBLAS", || {
            let handle = result::create_handle().map_err(|e| CudaError::Blas {
                call: "cublasCreate",
                code: e.0 as u32,
                name: format!("{:?}", e.0),
            })?;
            let blas = Self {
                handle,
                _workspace: workspace,
            };
            // SAFETY: a live handle and the device's live stream.
            check("cublasSetStream", unsafe {
                sys::cublasSetStream_v2(blas.handle, device.stream().cu_stream() as _)
            })?;
            // SAFETY: the workspace lives as long as the handle (same struct).
            check("cublasSetWorkspace", unsafe {
                sys::cublasSetWorkspace_v2(
                    blas.handle,
                    blas._workspace.ptr() as *mut c_void,
                    blas._workspace.bytes(),
                )
            })?;
            Ok(blas)
        })
    }

    /// `y = x · Wᵀ` (or `y += x · Wᵀ`) for `x [rows, inner]`, `W [out, inner]`, `y [rows, out]`.
    ///
    /// # Safety
    /// The pointers must address device buffers of those shapes (bf16 `x`, `W`; `y` as `kind`).
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn linear(
        &self,
        x: u64,
        w: u64,
        y: u64,
        rows: usize,
        out: usize,
        inner: usize,
        kind: GemmOut,
    ) -> Result<(), CudaError> {
        if rows == 0 {
            return Ok(());
        }
        let (m, n, k) = (
            as_i32(out, "GEMM out")?,
            as_i32(rows, "GEMM rows")?,
            as_i32(inner, "GEMM inner")?,
        );
        let alpha = 1.0f32;
        let (beta, c_type) = match kind {
            GemmOut::Bf16 => (0.0f32, sys::cudaDataType::CUDA_R_16BF),
            GemmOut::F32 { accumulate } => (
                if accumulate { 1.0f32 } else { 0.0 },
                sys::cudaDataType::CUDA_R_32F,
            ),
        };
        // Column-major view: yᵀ[out, rows] = W[out, inner] (W stored as Wᵀ col-major, so op T)
        // · xᵀ[inner, rows].
        // SAFETY: per the contract; alpha/beta are host scalars (default pointer mode).
        check("cublasGemmEx", unsafe {
            sys::cublasGemmEx(
                self.handle,
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                m,
                n,
                k,
                (&alpha as *const f32).cast(),
                w as *const c_void,
                sys::cudaDataType::CUDA_R_16BF,
                k,
                x as *const c_void,
                sys::cudaDataType::CUDA_R_16BF,
                k,
                (&beta as *const f32).cast(),
                y as *mut c_void,
                c_type,
                m,
                sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        })
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        // SAFETY: our handle, destroyed once; errors leave only a leaked handle.
        let _ = unsafe { sys::cublasDestroy_v2(self.handle) };
    }
}
