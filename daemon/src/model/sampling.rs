//! Turning logits into the next token: an output constraint's mask, penalties, temperature,
//! top-k, top-p, min-p, seeded randomness, and log-probabilities with top-k alternatives.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::guide::TokenMask;

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
    /// `(token, bias)` added to the logits before anything else (OpenAI's `logit_bias`).
    pub logit_bias: Vec<(u32, f32)>,
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
            logit_bias: Vec::new(),
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
            && p.logit_bias.is_empty()
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
        self.sample_masked(logits, None)
    }

    /// Samples from one row of logits among the tokens `mask` allows (all without one), and
    /// records the token as output. Disallowed tokens are removed before anything else, so
    /// log-probabilities are those of the constrained distribution.
    pub fn sample_masked(&mut self, logits: &[f32], mask: Option<&TokenMask>) -> Sampled {
        let mut logits = logits.to_vec();
        if let Some(mask) = mask {
            mask.apply(&mut logits);
        }
        for &(token, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(token as usize) {
                *l += bias;
            }
        }
        self.apply_penalties(&mut logits);
        let (logprob_of, top) = match self.params.logprobs {
            Some(k) => {
                let lp = log_softmax(&logits);
                let top = top_k_indices(&lp, k)
                    .into_iter()
                    .filter(|&i| lp[i].is_finite())
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
        let (tokens, weights) = self.candidates(logits);
        let total: f32 = weights.iter().sum();
        let mut draw = self.rng.random::<f32>() * total;
        // Tokens of weight 0 (masked out, or beyond the float range) are never drawn.
        let mut last = None;
        for (&t, &w) in tokens.iter().zip(&weights).filter(|(_, w)| **w > 0.0) {
            draw -= w;
            if draw <= 0.0 {
                return t as usize;
            }
            last = Some(t as usize);
        }
        last.unwrap_or_else(|| argmax(logits))
    }

    /// The tokens the filters keep and their unnormalised probabilities `exp((l − max) / T)`.
    /// The filters, as vLLM applies them: top-k, then min-p (relative to the most likely
    /// token), then top-p (the smallest most-likely-first prefix whose share of the top-k mass
    /// reaches `top_p`). No full sort of the vocabulary: top-k and top-p select
    /// (`select_nth_unstable`) and sort only the head they keep; plain temperature sampling walks
    /// the row in index order.
    fn candidates(&self, logits: &[f32]) -> (Vec<u32>, Vec<f32>) {
        let p = &self.params;
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let desc = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        let mut tokens: Vec<u32> = (0..logits.len() as u32).collect();
        if p.top_k > 0 && p.top_k < tokens.len() {
            tokens.select_nth_unstable_by(p.top_k - 1, desc);
            tokens.truncate(p.top_k);
            tokens.sort_unstable_by(desc);
        }
        // One exp per kept token; `weights[i]` belongs to `tokens[i]` from here on.
        let mut weights: Vec<f32> = tokens
            .iter()
            .map(|&t| ((logits[t as usize] - max) / p.temperature).exp())
            .collect();
        let mass: f32 = weights.iter().sum();
        if p.min_p > 0.0 {
            // The most likely token weighs exp(0) = 1, so it always stays.
            let keep = |(t, w): &(u32, f32)| *w >= p.min_p || logits[*t as usize] == max;
            (tokens, weights) = tokens.into_iter().zip(weights).filter(keep).unzip();
        }
        if p.top_p < 1.0 {
            let mut pairs: Vec<(u32, f32)> = tokens.into_iter().zip(weights).collect();
            top_p_prefix(&mut pairs, mass, p.top_p);
            (tokens, weights) = pairs.into_iter().unzip();
        }
        (tokens, weights)
    }
}

/// Shrinks `(token, weight)` pairs to the smallest heaviest-first prefix whose weight reaches
/// `top_p · mass`, sorted: selects and sorts a head of 64, 512, 4096 … pairs until the head
/// reaches it.
fn top_p_prefix(pairs: &mut Vec<(u32, f32)>, mass: f32, top_p: f32) {
    let desc = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut head = pairs.len().min(64);
    loop {
        if head < pairs.len() {
            pairs.select_nth_unstable_by(head - 1, desc);
        }
        pairs[..head].sort_unstable_by(desc);
        let mut cumulative = 0.0;
        for i in 0..head {
            cumulative += pairs[i].1 / mass;
            if cumulative >= top_p {
                pairs.truncate(i + 1);
                return;
            }
        }
        if head == pairs.len() {
            return;
        }
        head = (head * 8).min(pairs.len());
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
            SamplingParams {
                logit_bias: vec![(3, 1.0)],
                ..SamplingParams::greedy()
            },
        ] {
            assert!(!Sampler::new(p.clone(), &[]).is_plain_greedy(), "{p:?}");
        }
    }

    #[test]
    fn logit_bias_moves_the_pick() {
        let logits = [0.0, 3.0, 2.0];
        let mut s = Sampler::new(
            SamplingParams {
                logit_bias: vec![(1, -100.0), (7, 5.0)],
                ..SamplingParams::greedy()
            },
            &[],
        );
        assert_eq!(
            s.sample(&logits).token,
            2,
            "token 1 banned; 7 is outside the row"
        );
        let mut s = Sampler::new(
            SamplingParams {
                logit_bias: vec![(0, 3.5)],
                ..params(|p| p.temperature = 0.01)
            },
            &[],
        );
        assert_eq!(s.sample(&logits).token, 0);
    }

    #[test]
    fn a_mask_limits_every_pick_to_allowed_tokens() {
        let Some(codec) = crate::tokenizer::fixtures::smollm2() else {
            return;
        };
        let guides = crate::guide::Guides::new(codec.clone()).unwrap();
        let spec = crate::guide::GuideSpec::Choice(vec!["yes".into(), "no".into()]);
        let mask = guides.compile(&spec).unwrap().mask().unwrap();
        let allowed: Vec<u32> = (0..codec.vocab_size() as u32)
            .filter(|&t| mask.allows(t))
            .collect();
        assert!(!allowed.is_empty() && allowed.len() < 10, "{allowed:?}");
        // The row favours a token the mask forbids, by far.
        let mut logits = vec![0.0f32; codec.vocab_size() + 64];
        logits[0] = 50.0;
        *logits.last_mut().unwrap() = 60.0;
        for p in [
            SamplingParams::greedy(),
            params(|p| p.temperature = 1.0),
            params(|p| {
                p.top_k = 3;
                p.logprobs = Some(2);
            }),
        ] {
            let mut s = Sampler::new(p.clone(), &[]);
            for _ in 0..50 {
                let out = s.sample_masked(&logits, Some(&mask));
                assert!(allowed.contains(&out.token), "{p:?}: {}", out.token);
                assert!(out.logprob.is_none_or(f32::is_finite));
            }
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

    /// The filters as the first version applied them, over a full sort: the reference
    /// distribution (token → probability).
    fn reference(logits: &[f32], p: &SamplingParams) -> std::collections::BTreeMap<u32, f64> {
        let mut order: Vec<usize> = (0..logits.len()).collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        if p.top_k > 0 {
            order.truncate(p.top_k);
        }
        let max = f64::from(logits[order[0]]);
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| ((f64::from(logits[i]) - max) / f64::from(p.temperature)).exp())
            .collect();
        let mass: f64 = weights.iter().sum();
        let mut keep = order.len();
        if p.min_p > 0.0 {
            keep = weights
                .iter()
                .take_while(|&&w| w >= f64::from(p.min_p))
                .count();
        }
        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            for (i, w) in weights[..keep].iter().enumerate() {
                cumulative += w / mass;
                if cumulative >= f64::from(p.top_p) {
                    keep = i + 1;
                    break;
                }
            }
        }
        let kept: f64 = weights[..keep].iter().sum();
        order[..keep]
            .iter()
            .zip(&weights)
            .map(|(&i, w)| (i as u32, w / kept))
            .collect()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]
        #[test]
        fn filters_keep_the_reference_distribution(
            raw in proptest::collection::vec(0u8..=255, 2..300),
            temperature in 0.05f32..3.0,
            top_k in proptest::prop_oneof![proptest::strategy::Just(0usize), 1usize..80],
            top_p in proptest::prop_oneof![proptest::strategy::Just(1.0f32), 0.05f32..1.0],
            min_p in proptest::prop_oneof![proptest::strategy::Just(0.0f32), 0.001f32..1.0],
        ) {
            // Distinct logits, so that no filter boundary falls between equal values.
            let n = raw.len() as f32;
            let logits: Vec<f32> = raw
                .iter()
                .enumerate()
                .map(|(i, &r)| f32::from(r) / 16.0 + i as f32 / (n * 32.0))
                .collect();
            let p = SamplingParams { temperature, top_k, top_p, min_p, ..SamplingParams::default() };
            let want = reference(&logits, &p);
            let (tokens, weights) = Sampler::new(p.clone(), &[]).candidates(&logits);
            let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
            let got: std::collections::BTreeMap<u32, f64> = tokens
                .iter()
                .zip(&weights)
                .map(|(&t, &w)| (t, f64::from(w) / total))
                .collect();
            proptest::prop_assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{:?}", p
            );
            for (t, q) in &want {
                proptest::prop_assert!((got[t] - q).abs() < 1e-4, "token {}: {} vs {}", t, got[t], q);
            }
        }
    }

    #[test]
    fn temperature_sampling_follows_the_softmax() {
        let logits = [1.0f32, 2.0, 0.5, 3.0, -1.0];
        let p = params(|p| p.temperature = 0.7);
        let mut s = Sampler::new(p, &[]);
        let draws = 40_000;
        let mut counts = [0usize; 5];
        for _ in 0..draws {
            counts[s.sample(&logits).token as usize] += 1;
        }
        let weights: Vec<f64> = logits
            .iter()
            .map(|&l| (f64::from(l - 3.0) / 0.7).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        for (i, (&c, w)) in counts.iter().zip(&weights).enumerate() {
            let (seen, want) = (c as f64 / draws as f64, w / total);
            // Binomial sd at 40,000 draws is at most 0.0025; 0.012 is beyond 4.5 sd.
            assert!(
                (seen - want).abs() < 0.012,
                "token {i}: {seen:.4} vs {want:.4}"
            );
        }
    }
}
