//! FusedModel serving daemon.
//!
//! A request flows `server` → `engine` → `sched` → `kv` → `model`, with no back-edges:
//! - [`server`]: the OpenAI-compatible HTTP API and Prometheus metrics;
//! - [`engine`]: the thread that owns model and KV and runs one batch per iteration;
//! - [`sched`]: Sarathi-Serve scheduling (chunked prefill, stall-free batching);
//! - [`kv`]: vAttention KV memory (virtually contiguous, pages mapped on demand);
//! - [`model`]: weights and the batched forward pass;
//! - [`tokenizer`] and [`vocab`]: text ↔ ids, with the AdaptiVocab domain patch;
//! - [`guide`]: structured outputs (llguidance token masks over the served vocabulary).

pub mod engine;
pub mod eval;
pub mod fetch;
pub mod guide;
pub mod kv;
pub mod metrics;
pub mod model;
pub mod otlp;
pub mod sched;
pub mod serve;
pub mod server;
pub mod tokenizer;
pub mod vllm_flags;
pub mod vocab;
