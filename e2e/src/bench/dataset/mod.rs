//! Benchmark prompts: what each request asks and how many tokens it should generate.
//!
//! Three sources, in `vllm bench serve`'s spirit: [`random`] token sequences of given lengths
//! (with a range ratio), a [`sharegpt`] conversation file, and plain domain [`text`] (e.g.
//! held-out medical text, to show what a domain patch tokenizer saves). Every prompt length is
//! counted with the client's reference tokenizer. Sampling is deterministic for a seed.

pub mod random;
pub mod sharegpt;
pub mod text;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::bench::BenchError;
use crate::bench::tokens::RefTokenizer;

/// One request of the benchmark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchPrompt {
    pub text: String,
    /// Tokens of `text` by the reference tokenizer.
    pub prompt_len: usize,
    /// `max_tokens` of the request.
    pub output_len: usize,
}

/// Which dataset (`--dataset-name`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DatasetName {
    /// Random token sequences of `--random-input-len` / `--random-output-len` tokens
    Random,
    /// A ShareGPT-format JSON file (`--dataset-path`): first human turn as the prompt, the
    /// answer's length as the output length
    Sharegpt,
    /// Plain text (`--dataset-path`): consecutive lines from seeded positions, joined up to
    /// `--text-input-len` tokens
    Text,
}

/// A dataset with its options.
#[derive(Debug, Clone)]
pub enum DatasetSpec {
    Random(random::RandomSpec),
    ShareGpt {
        path: PathBuf,
        /// Overrides the answers' lengths.
        output_len: Option<usize>,
    },
    Text {
        path: PathBuf,
        input_len: usize,
        output_len: usize,
    },
}

impl DatasetSpec {
    /// The name recorded in results.
    pub fn name(&self) -> DatasetName {
        match self {
            Self::Random(_) => DatasetName::Random,
            Self::ShareGpt { .. } => DatasetName::Sharegpt,
            Self::Text { .. } => DatasetName::Text,
        }
    }

    /// `count` prompts (fewer only if a file holds fewer usable entries; never zero).
    pub fn sample(
        &self,
        tokenizer: &RefTokenizer,
        count: usize,
        seed: u64,
    ) -> Result<Vec<BenchPrompt>, BenchError> {
        if count == 0 {
            return Err(BenchError::BadOption(
                "--num-prompts must be at least 1".into(),
            ));
        }
        match self {
            Self::Random(spec) => spec.sample(tokenizer, count, seed),
            Self::ShareGpt { path, output_len } => {
                sharegpt::sample(path, *output_len, tokenizer, count, seed)
            }
            Self::Text {
                path,
                input_len,
                output_len,
            } => text::sample(path, *input_len, *output_len, tokenizer, count, seed),
        }
    }
}

/// Reads a dataset file with its path in the error.
fn read_file(path: &std::path::Path) -> Result<String, BenchError> {
    std::fs::read_to_string(path).map_err(|e| BenchError::Dataset {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests;
