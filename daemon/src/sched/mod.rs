//! Sarathi-Serve scheduling: per-iteration token budget, decodes first, chunked prefills fill
//! the rest. A pure function of (state, budget, KV accounting) → batch; no model, no threads.
