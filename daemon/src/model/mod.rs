//! The model layer: weights (GGUF, safetensors, dummy), the batched varlen forward pass, sampling.

pub mod kv_access;
