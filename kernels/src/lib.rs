//! Compute kernels of the forward pass.
//!
//! [`cpu`] holds the reference implementations, written for clarity first and speed second;
//! they are what the daemon runs on CPU and what every CUDA twin is tested against. [`cuda`]
//! (feature `cuda`) holds the GPU kernels, compiled at run time by NVRTC; [`compare`] the error
//! measure their checks use.

pub mod compare;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
