//! `fused-bench`: measures any OpenAI-compatible server the way `vllm bench serve` does, so every
//! performance claim of the project comes with a command that reproduces it.
//!
//! A run takes prompts from a [`dataset`] (random lengths, a ShareGPT file, plain domain text),
//! sends them as streaming requests ([`client`]; with `--multi-turn`, as the turns of chat
//! [`conversation`]s, each turn extending the last) on an arrival process ([`arrivals`]: Poisson or
//! gamma with a seed, or a fixed concurrency) driven by [`runner`], optionally watches the
//! server's Prometheus gauges ([`scrape`]), and reduces the per-request timings to vLLM's metrics
//! ([`summary`]: TTFT, TPOT, ITL, E2E latency, throughput, goodput), written as a JSON result and
//! a console table ([`report`]) and drawn as PNG charts ([`plot`]).
//!
//! Must not: take any latency on the server's word (every time is measured at the client), or
//! know anything about the server beyond the OpenAI HTTP API and, when asked, `/metrics`.

pub mod arrivals;
pub mod cli;
pub mod client;
pub mod conversation;
pub mod dataset;
pub mod error;
pub mod plot;
pub mod report;
pub mod runner;
pub mod scrape;
pub mod server_tokens;
pub mod sse;
pub mod stats;
pub mod summary;
pub mod tokens;

pub use error::BenchError;
