//! CUDA twins of the [`cpu`](crate::cpu) kernels (feature `cuda`), for bf16 weights and a bf16
//! KV region on the GPU, with an `f32` residual stream.
//!
//! Nothing is needed at build time: cudarc loads `libcuda`, `libnvrtc` and `libcublas` at run
//! time, and the `.cu` sources in `cu/` are compiled by NVRTC for the device's architecture when
//! [`Kernels::load`] runs (the cubin is cached on disk, keyed by source hash and architecture).
//! [`GpuDevice::open`] says "no GPU" as an error, never a panic, so callers can fall back to CPU.
//!
//! - [`device`]: context, stream, copies; [`memory`]: typed device memory ([`DeviceBuffer<T>`],
//!   views that know their length, [`Indices`] checked against a bound);
//! - [`compile`]: NVRTC → cubin, with the on-disk cache; [`kernels`]: the loaded kernels, each
//!   typed by its C prototype;
//! - [`launch`]: the one launch helper (`cuLaunchKernelEx`, programmatic dependent launch on
//!   sm_90 and later), type-checked against the prototypes;
//! - [`fp8`]: E4M3 weights with a scale per row (quantized and expanded on the device);
//!   [`blocks`]: GGUF's Q8_0 and Q4_K blocks, read as stored (expanded on the device for GEMMs);
//! - [`elementwise`], [`linear`], [`attention`]: the wrappers, which check every operand's
//!   length against the shape they are given — [`linear`] picks the GEMV or [`blas`] (cuBLAS);
//!   [`attention`] holds [`DeviceBatch`], the one place a caller vouches for the KV region's
//!   addresses and for indices in device memory;
//! - [`graph`]: CUDA graph capture and replay; [`persist`]: the persistent decode kernel (every
//!   layer of a one-sequence decode step in one cooperative launch).
//!
//! Must not: know about models, sequences or the KV manager.

mod attention;
mod blas;
mod blocks;
mod compile;
mod device;
mod elementwise;
mod error;
mod fp8;
mod graph;
mod kernels;
mod launch;
mod linear;
mod memory;
mod persist;
mod staging;

pub use attention::{
    BatchArrays, BatchShape, DecodeSplits, DeviceBatch, LayerBatch, PREFILL_TILE_ROWS, RopeTables,
};
pub use blas::Blas;
pub use blocks::{BlockFormat, BlockMatrix};
pub use compile::{CacheStatus, compile_cubin};
pub use device::{GpuDevice, GpuTimer};
pub use elementwise::{FillElement, NormRows, PositionEmbedding};
pub use error::CudaError;
pub use fp8::{E4M3_MAX, Fp8Matrix, e4m3_to_f32, round_to_e4m3};
pub use graph::Graph;
pub use kernels::{Kernels, SOURCES};
pub use linear::{
    GEMV_MAX_ROWS, GemvBuild, Linear, LinearOut, LinearShape, LinearWeights, WeightView,
};
pub use memory::{
    DeviceBuffer, DeviceSlice, DeviceSliceMut, DeviceView, DeviceViewMut, Element, IndexBuffer,
    Indices, Positions,
};
pub use persist::{PersistentLayer, PersistentProgram, PersistentShape, StageTime};
pub use staging::PinnedStaging;
