//! CPU kernels over `f32` row-major buffers. Each op checks its shapes in debug builds only:
//! callers (the model) own the shapes, these functions own the arithmetic.

mod activation;
mod attention;
mod matmul;
mod norm;
mod rope;

pub use activation::{gelu_tanh_inplace, silu_mul};
pub use attention::{AttentionShape, attend_causal};
pub use matmul::linear;
pub use norm::{layer_norm, rms_norm};
pub use rope::{RopeScaling, RopeTable};
