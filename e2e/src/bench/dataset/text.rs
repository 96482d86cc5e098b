//! Plain domain text (one record per line, e.g. held-out medical descriptions): each prompt is
//! the consecutive non-empty lines from a seeded random line on, joined with newlines until the
//! prompt reaches `input_len` reference tokens (wrapping at the end of the file).

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{BenchPrompt, read_file};
use crate::bench::BenchError;
use crate::bench::tokens::RefTokenizer;

/// `count` prompts of about `input_len` tokens (never fewer; at most one line more) asking for
/// `output_len` tokens each.
pub fn sample(
    path: &Path,
    input_len: usize,
    output_len: usize,
    tokenizer: &RefTokenizer,
    count: usize,
    seed: u64,
) -> Result<Vec<BenchPrompt>, BenchError> {
    if input_len == 0 || output_len == 0 {
        return Err(BenchError::BadOption(
            "--text-input-len and --text-output-len must be at least 1".into(),
        ));
    }
    let content = read_file(path)?;
    let lines: Vec<&str> = content
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return Err(BenchError::Dataset {
            path: path.to_owned(),
            reason: "no non-empty line".into(),
        });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|_| {
            let start = rng.random_range(0..lines.len());
            let mut text = String::new();
            let mut prompt_len = 0;
            for line in lines.iter().cycle().skip(start).take(lines.len()) {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(line);
                prompt_len = tokenizer.count(&text)?;
                if prompt_len >= input_len {
                    break;
                }
            }
            Ok(BenchPrompt {
                text,
                prompt_len,
                output_len,
            })
        })
        .collect()
}
