//! Random prompts: token ids drawn uniformly from the ordinary vocabulary, decoded to text and
//! re-encoded until the text is the wanted number of tokens, like vLLM's random dataset. Lengths
//! are uniform in `[len·(1−r), len·(1+r)]` for range ratio `r`. Optionally a fraction of the
//! prompts is long (a mixed trace: long prompts arriving among short ones, where a scheduler
//! that prefills a whole prompt at once stalls every running decode).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::BenchPrompt;
use crate::bench::BenchError;
use crate::bench::tokens::RefTokenizer;

/// Options of the random dataset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomSpec {
    pub input_len: usize,
    pub output_len: usize,
    /// 0 ≤ r < 1.
    pub range_ratio: f64,
    /// Tokens of one random prefix shared by every prompt (prefix-cache studies).
    pub prefix_len: usize,
    /// Long prompts mixed in, if any.
    pub long: Option<LongMix>,
}

/// Each prompt is long with probability `fraction`, its length drawn around `input_len` (same
/// range ratio) instead of the ordinary input length.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LongMix {
    /// 0 < fraction ≤ 1.
    pub fraction: f64,
    pub input_len: usize,
}

impl RandomSpec {
    /// `count` prompts for `seed`.
    pub fn sample(
        &self,
        tokenizer: &RefTokenizer,
        count: usize,
        seed: u64,
    ) -> Result<Vec<BenchPrompt>, BenchError> {
        if !(0.0..1.0).contains(&self.range_ratio) {
            return Err(BenchError::BadOption(format!(
                "--random-range-ratio must be in [0, 1), not {}",
                self.range_ratio
            )));
        }
        if self.output_len == 0 {
            return Err(BenchError::BadOption(
                "--random-output-len must be at least 1".into(),
            ));
        }
        if let Some(long) = self.long
            && !(long.fraction > 0.0 && long.fraction <= 1.0)
        {
            return Err(BenchError::BadOption(format!(
                "--random-long-fraction must be in (0, 1], not {}",
                long.fraction
            )));
        }
        let mut rng = StdRng::seed_from_u64(seed);
        let prefix = random_ids(tokenizer, &mut rng, self.prefix_len);
        (0..count)
            .map(|_| {
                let len = match self.long {
                    Some(long) if rng.random_bool(long.fraction) => long.input_len,
                    _ => self.input_len,
                };
                let input_len = self.draw_len(&mut rng, len).max(1);
                let output_len = self.draw_len(&mut rng, self.output_len).max(1);
                let mut ids = prefix.clone();
                ids.extend(random_ids(tokenizer, &mut rng, input_len));
                let (text, prompt_len) =
                    text_of_length(tokenizer, &mut rng, ids, self.prefix_len + input_len)?;
                Ok(BenchPrompt {
                    text,
                    prompt_len,
                    output_len,
                })
            })
            .collect()
    }

    fn draw_len(&self, rng: &mut StdRng, len: usize) -> usize {
        let low = (len as f64 * (1.0 - self.range_ratio)).floor() as usize;
        let high = (len as f64 * (1.0 + self.range_ratio)).ceil() as usize;
        if high <= low {
            low
        } else {
            rng.random_range(low..=high)
        }
    }
}

fn random_ids(tokenizer: &RefTokenizer, rng: &mut StdRng, len: usize) -> Vec<u32> {
    let pool = tokenizer.text_ids();
    (0..len)
        .map(|_| pool[rng.random_range(0..pool.len())])
        .collect()
}

/// Decodes `ids` and adjusts them until the text re-encodes to `target` tokens (a few rounds:
/// decoding and re-encoding can merge or split tokens). Returns the text and its real length.
fn text_of_length(
    tokenizer: &RefTokenizer,
    rng: &mut StdRng,
    mut ids: Vec<u32>,
    target: usize,
) -> Result<(String, usize), BenchError> {
    let mut text = tokenizer.decode(&ids)?;
    for _ in 0..8 {
        let encoded = tokenizer.encode(&text)?;
        if encoded.len() == target {
            return Ok((text, target));
        }
        ids = encoded;
        if ids.len() > target {
            ids.truncate(target);
        } else {
            ids.extend(random_ids(tokenizer, rng, target - ids.len()));
        }
        text = tokenizer.decode(&ids)?;
    }
    let len = tokenizer.count(&text)?;
    Ok((text, len))
}
