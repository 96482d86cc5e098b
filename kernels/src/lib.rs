//! Compute kernels: CPU reference ops (and, behind `cuda`, their CUDA twins).
