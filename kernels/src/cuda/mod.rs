//! CUDA twins of the [`cpu`](crate::cpu) kernels (feature `cuda`), for bf16 weights and a bf16
//! KV region on the GPU, with an `f32` residual stream.
//!
//! Nothing is needed at build time: cudarc loads `libcuda`, `libnvrtc` and `libcublas` at run
//! time, and the `.cu` sources in `cu/` are compiled by NVRTC for the device's architecture when
//! [`Kernels::load`] runs (the cubin is cached on disk, keyed by source hash and architecture).
//! [`GpuDevice::open`] says "no GPU" as an error, never a panic, so callers can fall back to CPU.
//!
//! - [`device`]: context, stream, device memory and copies;
//! - [`compile`]: NVRTC → cubin, with the on-disk cache;
//! - [`ops`]: typed launches of every kernel;
//! - [`launch`]: `cuLaunchKernelEx` with programmatic dependent launch (sm_90 and later);
//! - [`blas`]: cuBLAS bf16 GEMMs (`y = x · Wᵀ`, optionally accumulated into `f32`);
//! - [`graph`]: CUDA graph capture and replay.
//!
//! Must not: know about models, sequences or the KV manager; pointers are plain device
//! addresses (`u64`) whose validity the caller guarantees.

mod blas;
mod compile;
mod device;
mod error;
mod graph;
mod launch;
mod ops;

pub use blas::{Blas, GemmOut};
pub use compile::{CacheStatus, compile_cubin};
pub use device::{DeviceBuffer, GpuDevice, GpuTimer};
pub use error::CudaError;
pub use graph::Graph;
pub use ops::{
    AttentionBatch, DecodeSplits, GEMV_MAX_ROWS, GemvOut, GemvShape, Kernels, PREFILL_TILE_ROWS,
    SOURCES,
};
