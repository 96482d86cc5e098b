//! CPU kernels over `f32` row-major buffers (and GGUF's block-quantised weights, `quant`). Each op checks its shapes in debug builds only:
//! callers (the model) own the shapes, these functions own the arithmetic.

mod activation;
mod attention;
mod matmul;
mod norm;
mod quant;
mod rope;

pub use activation::{gelu_tanh_inplace, silu_mul};
pub use attention::{AttentionShape, attend_causal};
pub use matmul::{add_bias, linear};
pub use norm::{layer_norm, rms_norm};
pub use quant::{BlockKind, QuantError, QuantMatrix};
pub use rope::{RopeScaling, RopeTable};
