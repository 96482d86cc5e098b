//! CPU kernels over `f32` row-major buffers (and GGUF's block-quantised weights, `quant`). Each op checks its shapes in debug builds only:
//! callers (the model) own the shapes, these functions own the arithmetic.

mod activation;
mod attention;
mod blocks;
mod fp8;
mod matmul;
mod norm;
mod quant;
mod rope;

pub use activation::{gelu_tanh_inplace, silu_mul};
pub use attention::{AttentionShape, attend_causal};
pub use blocks::{BlockKind, UNIT};
pub use fp8::{E4M3_MAX, e4m3_to_f32, round_to_e4m3};
pub use matmul::{add_bias, linear};
pub use norm::{layer_norm, rms_norm};
pub use quant::{QuantError, QuantMatrix};
pub use rope::{RopeScaling, RopeTable};
