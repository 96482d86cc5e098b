//! ShareGPT-format conversations (`[{"conversations": [{"from": "human", "value": …},
//! {"from": "gpt", "value": …}, …]}, …]`): the first turn is the prompt and the second turn's
//! token count the output length, filtered like vLLM (both ≥ 4 tokens, prompt ≤ 1024, prompt +
//! output ≤ 2048) and shuffled with the seed.

use std::path::Path;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Deserialize;

use super::{BenchPrompt, read_file};
use crate::bench::BenchError;
use crate::bench::tokens::RefTokenizer;

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    conversations: Vec<Turn>,
}

#[derive(Deserialize)]
struct Turn {
    value: String,
}

/// `count` prompts from the file at `path` (entries reused in order if it holds fewer).
pub fn sample(
    path: &Path,
    output_len: Option<usize>,
    tokenizer: &RefTokenizer,
    count: usize,
    seed: u64,
) -> Result<Vec<BenchPrompt>, BenchError> {
    let bad = |reason: String| BenchError::Dataset {
        path: path.to_owned(),
        reason,
    };
    let mut entries: Vec<Entry> = serde_json::from_str(&read_file(path)?)
        .map_err(|e| bad(format!("not a ShareGPT JSON array: {e}")))?;
    entries.retain(|e| e.conversations.len() >= 2);
    entries.shuffle(&mut StdRng::seed_from_u64(seed));
    let mut prompts = Vec::with_capacity(count);
    for entry in &entries {
        if prompts.len() == count {
            break;
        }
        let prompt = &entry.conversations[0].value;
        let prompt_len = tokenizer.count(prompt)?;
        let answer_len = match output_len {
            Some(len) => len,
            None => tokenizer.count(&entry.conversations[1].value)?,
        };
        let keep = (4..=1024).contains(&prompt_len)
            && prompt_len + answer_len <= 2048
            && (output_len.is_some() || answer_len >= 4);
        if keep && answer_len > 0 {
            prompts.push(BenchPrompt {
                text: prompt.clone(),
                prompt_len,
                output_len: answer_len,
            });
        }
    }
    if prompts.is_empty() {
        return Err(bad(
            "no conversation passes the filters (two turns, prompt 4..=1024 tokens, \
             answer >= 4, both <= 2048)"
                .into(),
        ));
    }
    let usable = prompts.len();
    let reused: Vec<BenchPrompt> = (usable..count)
        .map(|i| prompts[i % usable].clone())
        .collect();
    prompts.extend(reused);
    Ok(prompts)
}
