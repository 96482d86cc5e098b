//! cuBLAS GEMMs for dense layers: `y[rows, out] = x[rows, in] · W[out, in]ᵀ` with bf16 `x` and `W`
//! (row-major, as checkpoints store `W`), fp32 accumulation, and `y` either bf16 or f32 — f32 can
//! accumulate into `y` (`y += x · Wᵀ`), which fuses the residual add into the GEMM.
//!
//! The handle owns a fixed workspace, so GEMMs allocate nothing and can be captured in graphs.

use std::ffi::c_void;

use cudarc::cublas::{result, sys};

use super::device::{GpuDevice, no_panic};
use super::error::{CudaError, as_i32};
use super::linear::{Linear, LinearOut, LinearWeights};
use super::memory::DeviceBuffer;

const WORKSPACE_BYTES: usize = 32 << 20;

/// A cuBLAS handle on the device's stream.
pub struct Blas {
    handle: sys::cublasHandle_t,
    workspace: DeviceBuffer<u8>,
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
        let mut workspace = device.alloc::<u8>(WORKSPACE_BYTES)?;
        let workspace_address = workspace.view_mut().address();
        no_panic("cuBLAS", || {
            let handle = result::create_handle().map_err(|e| CudaError::Blas {
                call: "cublasCreate",
                code: e.0 as u32,
                name: format!("{:?}", e.0),
            })?;
            let blas = Self { handle, workspace };
            // SAFETY: a live handle and the device's live stream.
            check("cublasSetStream", unsafe {
                sys::cublasSetStream_v2(blas.handle, device.stream().cu_stream() as _)
            })?;
            // SAFETY: the workspace (`bytes()` long) lives as long as the handle (same struct) and
            // only cuBLAS uses it.
            check("cublasSetWorkspace", unsafe {
                sys::cublasSetWorkspace_v2(
                    blas.handle,
                    workspace_address as *mut c_void,
                    blas.workspace.bytes(),
                )
            })?;
            Ok(blas)
        })
    }

    /// `y = x · Wᵀ` with cuBLAS.
    pub fn gemm(&self, layer: Linear<'_>) -> Result<(), CudaError> {
        let Linear { x, w, y, shape } = layer;
        let LinearWeights::Bf16(w) = w else {
            return Err(CudaError::Invalid(
                "cuBLAS multiplies bf16 weights: FP8 ones go through Kernels::linear_dense".into(),
            ));
        };
        if shape.rows == 0 {
            return Ok(());
        }
        let (m, n, k) = (
            as_i32(shape.out, "GEMM out")?,
            as_i32(shape.rows, "GEMM rows")?,
            as_i32(shape.inner, "GEMM inner")?,
        );
        let alpha = 1.0f32;
        let (beta, c_type, y) = match &y {
            LinearOut::F32(y) => (0.0f32, sys::cudaDataType::CUDA_R_32F, y.address()),
            LinearOut::AddF32(y) => (1.0f32, sys::cudaDataType::CUDA_R_32F, y.address()),
            LinearOut::Bf16(y) => (0.0f32, sys::cudaDataType::CUDA_R_16BF, y.address()),
        };
        // Column-major view: yᵀ[out, rows] = W[out, inner] (W stored as Wᵀ col-major, so op T)
        // · xᵀ[inner, rows].
        // SAFETY: `x`, `w` and `y` hold `rows × inner`, `out × inner` and `rows × out` elements
        // of the types passed as their data types (`Linear::new` checked the extents; `c_type`
        // follows `y`'s variant), with leading dimensions `inner` and `out` as stored; alpha and
        // beta are host scalars (default pointer mode) that outlive the call, which only queues
        // the GEMM.
        check("cublasGemmEx", unsafe {
            sys::cublasGemmEx(
                self.handle,
                sys::cublasOperation_t::CUBLAS_OP_T,
                sys::cublasOperation_t::CUBLAS_OP_N,
                m,
                n,
                k,
                (&alpha as *const f32).cast(),
                w.address() as *const c_void,
                sys::cudaDataType::CUDA_R_16BF,
                k,
                x.address() as *const c_void,
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
