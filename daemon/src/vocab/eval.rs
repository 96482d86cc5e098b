//! Measures a patch on held-out text: token counts with and without it, encode throughput of
//! both (best of several passes, same process), and the exact round trip of every line.
//! Measurement only; it changes nothing.

use std::time::Instant;

use serde::Serialize;

use super::error::Result;
use crate::tokenizer::Codec;

/// Results on one text file.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub name: String,
    pub lines: usize,
    pub bytes: u64,
    pub base_tokens: usize,
    pub patched_tokens: usize,
    /// MB/s (10^6 bytes per second) of `Codec::encode`, one line per call, one thread.
    pub base_mb_s: f64,
    pub patched_mb_s: f64,
    /// Lines whose decode(encode(line)) differs from the line (must be 0).
    pub round_trip_failures: usize,
}

impl EvalReport {
    /// Fraction of base tokens saved by the patch.
    pub fn reduction(&self) -> f64 {
        if self.base_tokens == 0 {
            0.0
        } else {
            1.0 - self.patched_tokens as f64 / self.base_tokens as f64
        }
    }

    /// Patched throughput as a fraction of the base throughput.
    pub fn throughput_ratio(&self) -> f64 {
        if self.base_mb_s > 0.0 {
            self.patched_mb_s / self.base_mb_s
        } else {
            0.0
        }
    }
}

/// Encodes every line, `passes` times, returning (tokens, best MB/s).
fn encode_all(codec: &Codec, lines: &[String], bytes: u64, passes: usize) -> Result<(usize, f64)> {
    let mut best = f64::INFINITY;
    let mut tokens = 0;
    for _ in 0..passes.max(1) {
        let started = Instant::now();
        tokens = 0;
        for line in lines {
            tokens += codec.encode(line, false)?.len();
        }
        best = best.min(started.elapsed().as_secs_f64());
    }
    Ok((tokens, bytes as f64 / 1e6 / best.max(1e-9)))
}

/// Compares `base` with `patched` (the same base tokenizer with a patch applied) on `lines`.
pub fn evaluate(
    base: &Codec,
    patched: &Codec,
    name: &str,
    lines: &[String],
    passes: usize,
) -> Result<EvalReport> {
    let bytes: u64 = lines.iter().map(|l| l.len() as u64).sum();
    let (base_tokens, base_mb_s) = encode_all(base, lines, bytes, passes)?;
    let (patched_tokens, patched_mb_s) = encode_all(patched, lines, bytes, passes)?;
    let mut round_trip_failures = 0;
    for line in lines {
        if patched.decode(&patched.encode(line, false)?, false)? != *line {
            round_trip_failures += 1;
        }
    }
    Ok(EvalReport {
        name: name.to_owned(),
        lines: lines.len(),
        bytes,
        base_tokens,
        patched_tokens,
        base_mb_s,
        patched_mb_s,
        round_trip_failures,
    })
}
