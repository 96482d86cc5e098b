//! Turning logits into the next token: penalties, temperature, top-k, top-p, min-p, seeded
//! randomness, and log-probabilities with top-k alternatives.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A request's sampling parameters (already validated by the server).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: f32,
    /// 0 means off.
    pub top_k: usize,
    pub min_p: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    pub repetition_penalty: f32,
    pub seed: Option<u64>,
    /// Alternatives to report per sampled token (`None`: no logprobs).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            seed: None,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

/// The chosen token and, when asked, its log-probability and the top alternatives
/// (log-probabilities of the model's distribution before sampling filters, after penalties).
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    pub logprob: Option<f32>,
    pub top: Vec<(u32, f32)>,
}

/// Per-request sampling state: the random stream and the counts the penalties need.
#[derive(Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Occurrences of each token in the output so far (presence/frequency penalties).
    output_counts: std::collections::HashMap<u32, u32>,
    /// Tokens of prompt and output (repetition penalty).
    seen: std::collections::HashSet<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams, prompt: &[u32]) -> Self {
        let rng = match params.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        Self {
            params,
            rng,
            output_counts: Default::default(),
            seen: prompt.iter().copied().collect(),
        }
    }

    /// Whether [`Sampler::sample`] would pick the first largest logit of the raw row: greedy,
    /// no penalties, no log-probabilities. Such a request can take the model's own pick.
    pub fn is_plain_greedy(&self) -> bool {
        let p = &self.params;
        p.temperature <= 0.0
            && p.logprobs.is_none()
            && p.repetition_penalty == 1.0
            && p.presence_penalty == 0.0
            && p.frequency_penalty == 0.0
    }

    /// Records `token`, picked by the model for a plain greedy request, as output.
    pub fn record(&mut self, token: u32) -> Sampled {
        *self.output_counts.entry(token).or_default() += 1;
        self.seen.insert(token);
        Sampled {
            token,
            logprob: None,
            top: Vec::new(),
        }
    }

    /// Samples from one row of logits and records the token as output.
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        let mut logits = logits.to_vec();
        self.apply_penalties(&mut logits);
        let (logprob_of, top) = match self.params.logprobs {
            Some(k) => {
                let lp = log_softmax(&logits);
                let top = top_k_indices(&lp, k)
                    .into_iter()
                    .map(|i| (i as u32, lp[i]))
                    .collect();
                (Some(lp), top)
            }
            None => (None, Vec::new()),
        };
        let token = if self.params.temperature <= 0.0 {
            argmax(&logits)
        } else {
            self.sample_filtered(&logits)
        };
        Sampled {
            logprob: logprob_of.map(|lp| lp[token]),
            top,
            ..self.record(token as u32)
        }
    }

    fn apply_penalties(&self, logits: &mut [f32]) {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in &self.seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 {
                        *l / p.repetition_penalty
                    } else {
                        *l * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&t, &count) in &self.output_counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * count as f32;
                }
            }
        }
    }

    fn sample_filtered(&mut self, logits: &[f32]) -> usize {
        let p = &self.params;
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if p.top_k > 0 {
            order.truncate(p.top_k);
        }
        let max = logits[order[0]];
        let mut probs: Vec<f32> = order
            .iter()
            .map(|&i| ((logits[i] - max) / p.temperature).exp())
            .collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            probs.truncate(keep);
        }
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            let mut keep = probs.len();
            for (i, q) in probs.iter().enumerate() {
                cumulative += q;
                if cumulative >= p.top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        let total: f32 = probs.iter().sum();
        let mut draw = self.rng.random::<f32>() * total;
        for (i, q) in probs.iter().enumerate() {
            draw -= q;
            if draw <= 0.0 {
                return order[i];
            }
        }
        order[probs.len() - 1]
    }
}

pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 { (i, v) } else { best }
        })
        .0
}

pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let log_total = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln();
    logits.iter().map(|l| l - max - log_total).collect()
}

fn top_k_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    let k = k.min(values.len());
    if k == 0 {
        return Vec::new();
    }
    order.select_nth_unstable_by(k - 1, |&a, &b| values[b].total_cmp(&values[a]));
    order.truncate(k);
    order.sort_unstable_by(|&a, &b| values[b].total_cmp(&values[a]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            seed: Some(7),
            ..SamplingParams::default()
        };
        f(&mut p);
        p
    }

    #[test]
    fn greedy_picks_the_max_and_reports_logprobs() {
        let mut s = Sampler::new(
            SamplingParams {
                logprobs: Some(2),
                ..SamplingParams::greedy()
            },
            &[],
        );
        let out = s.sample(&[0.0, 3.0, 1.0]);
        assert_eq!(out.token, 1);
        assert_eq!(out.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        let lp = out.logprob.unwrap();
        assert!(lp < 0.0 && lp > -0.2, "{lp}");
    }

    #[test]
    fn only_plain_greedy_requests_may_take_the_models_pick() {
        assert!(Sampler::new(SamplingParams::greedy(), &[]).is_plain_greedy());
        for p in [
            SamplingParams::default(),
            SamplingParams {
                logprobs: Some(0),
                ..SamplingParams::greedy()
            },
            SamplingParams {
                repetition_penalty: 1.1,
                ..SamplingParams::greedy()
            },
            SamplingParams {
                presence_penalty: 0.5,
                ..SamplingParams::greedy()
            },
            SamplingParams {
                frequency_penalty: -0.5,
                ..SamplingParams::greedy()
            },
        ] {
            assert!(!Sampler::new(p.clone(), &[]).is_plain_greedy(), "{p:?}");
        }
    }

    #[test]
    fn a_recorded_pick_counts_for_later_penalties() {
        let mut s = Sampler::new(
            SamplingParams {
                frequency_penalty: 2.0,
                ..SamplingParams::greedy()
            },
            &[],
        );
        assert_eq!(s.record(1).token, 1);
        // Without the recorded token, 1 (3.0) beats 2 (2.0); with it, 1 is penalised to 1.0.
        assert_eq!(s.sample(&[0.0, 3.0, 2.0]).token, 2);
    }

    #[test]
    fn same_seed_same_tokens_and_top_k_one_is_greedy() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.3).sin()).collect();
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p, &[]);
            (0..20).map(|_| s.sample(&logits).token).collect::<Vec<_>>()
        };
        assert_eq!(run(params(|_| {})), run(params(|_| {})));
        let top1 = run(params(|p| p.top_k = 1));
        assert!(top1.iter().all(|&t| t as usize == argmax(&logits)));
    }

    #[test]
    fn filters_exclude_unlikely_tokens() {
        let logits = [5.0, 4.9, -10.0, -10.0];
        for p in [
            params(|p| p.top_p = 0.5),
            params(|p| p.min_p = 0.5),
            params(|p| p.top_k = 2),
        ] {
            let mut s = Sampler::new(p, &[]);
            for _ in 0..100 {
                assert!(s.sample(&logits).token < 2);
            }
        }
    }

    #[test]
    fn penalties_push_repeated_tokens_down() {
        let logits = [1.0, 0.9];
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.frequency_penalty = 1.0;
            }),
            &[],
        );
        assert_eq!(s.sample(&logits).token, 0);
        assert_eq!(
            s.sample(&logits).token,
            1,
            "token 0 was penalised after its first use"
        );
        let mut s = Sampler::new(
            params(|p| {
                p.temperature = 0.0;
                p.repetition_penalty = 2.0;
            }),
            &[0],
        );
        assert_eq!(s.sample(&logits).token, 1, "prompt token 0 is penalised");
    }
}
