//! The GPU forward pass (feature `cuda`): bf16 (or FP8, `--quantization fp8`) weights in device
//! memory, the KV region in GPU
//! virtual memory (vAttention), cuBLAS GEMMs and the fused kernels of `fused_kernels::cuda`, CUDA
//! graphs for decode iterations. [`plan`] (how a batch is laid out for the kernels) is plain host
//! code and always compiled, so it is tested without a GPU; `pass` is the forward pass itself,
//! step for step the CPU's `Model::forward`; `model` drives it (plan, upload, graphs, logits).
//!
//! Must not: schedule, sample, or own the KV region (the KV manager does).

pub mod plan;

#[cfg(feature = "cuda")]
mod model;
#[cfg(feature = "cuda")]
mod pass;
#[cfg(feature = "cuda")]
mod scratch;
#[cfg(feature = "cuda")]
mod weights;

#[cfg(feature = "cuda")]
pub use model::{GpuModel, GpuOptions, VocabMatrix};
#[cfg(feature = "cuda")]
pub use weights::WeightFormat;

#[cfg(feature = "cuda")]
impl From<fused_kernels::cuda::CudaError> for super::ModelError {
    fn from(error: fused_kernels::cuda::CudaError) -> Self {
        Self::Device(error.to_string())
    }
}
