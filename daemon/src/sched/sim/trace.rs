//! Arrival traces for the simulator: Poisson streams of requests with uniform prompt and output
//! lengths, deterministic for a seed.
//!
//! Must not: know about the scheduler; a trace is only arrival times and lengths.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One class of requests: Poisson arrivals, uniform lengths (inclusive ranges).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestClass {
    /// Mean arrivals per second.
    pub rate_per_s: f64,
    pub prompt_tokens: (usize, usize),
    pub output_tokens: (usize, usize),
}

/// A trace: every class generates arrivals over `duration_s` seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    pub duration_s: f64,
    pub seed: u64,
    pub classes: Vec<RequestClass>,
}

/// One request of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceRequest {
    pub arrival_s: f64,
    pub prompt_tokens: usize,
    /// Tokens generated before the request finishes (as with `--ignore-eos`).
    pub output_tokens: usize,
    /// Index of the class in [`TraceConfig::classes`].
    pub class: usize,
}

/// A trace that cannot be generated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraceError {
    #[error("trace duration must be a positive number of seconds, got {0}")]
    Duration(f64),
    #[error("class {class}: arrival rate must be a positive number, got {rate}")]
    Rate { class: usize, rate: f64 },
    #[error("class {class}: {what} range {min}..={max} must be non-empty and start above zero")]
    Range {
        class: usize,
        what: &'static str,
        min: usize,
        max: usize,
    },
}

impl TraceConfig {
    /// Steady decode streams (short prompts, long outputs) with long prompts arriving among
    /// them (long prompts, short outputs): the workload where prefills stall decodes. At
    /// `load` 1.0 (12 streams/s, 4.8 long prompts/s) the Mistral-7B/H200 cost model is busy
    /// about 90 % of the time under Sarathi with budget 512.
    pub fn decodes_with_long_prompts(duration_s: f64, seed: u64, load: f64) -> Self {
        TraceConfig {
            duration_s,
            seed,
            classes: vec![
                RequestClass {
                    rate_per_s: 12.0 * load,
                    prompt_tokens: (128, 512),
                    output_tokens: (128, 512),
                },
                RequestClass {
                    rate_per_s: 4.8 * load,
                    prompt_tokens: (2048, 4096),
                    output_tokens: (32, 128),
                },
            ],
        }
    }

    fn validate(&self) -> Result<(), TraceError> {
        if !(self.duration_s > 0.0 && self.duration_s.is_finite()) {
            return Err(TraceError::Duration(self.duration_s));
        }
        for (class, spec) in self.classes.iter().enumerate() {
            if !(spec.rate_per_s > 0.0 && spec.rate_per_s.is_finite()) {
                return Err(TraceError::Rate {
                    class,
                    rate: spec.rate_per_s,
                });
            }
            for (what, (min, max)) in [
                ("prompt", spec.prompt_tokens),
                ("output", spec.output_tokens),
            ] {
                if min == 0 || min > max {
                    return Err(TraceError::Range {
                        class,
                        what,
                        min,
                        max,
                    });
                }
            }
        }
        Ok(())
    }

    /// All arrivals of all classes, in time order. The same config gives the same trace.
    pub fn generate(&self) -> Result<Vec<TraceRequest>, TraceError> {
        self.validate()?;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut requests = Vec::new();
        for (class, spec) in self.classes.iter().enumerate() {
            let mut clock_s = 0.0;
            loop {
                // Exponential inter-arrival time; 1 − u lies in (0, 1], so ln is finite.
                let unit: f64 = rng.random();
                clock_s += -(1.0 - unit).ln() / spec.rate_per_s;
                if clock_s >= self.duration_s {
                    break;
                }
                requests.push(TraceRequest {
                    arrival_s: clock_s,
                    prompt_tokens: rng.random_range(spec.prompt_tokens.0..=spec.prompt_tokens.1),
                    output_tokens: rng.random_range(spec.output_tokens.0..=spec.output_tokens.1),
                    class,
                });
            }
        }
        requests.sort_by(|a, b| a.arrival_s.total_cmp(&b.arrival_s));
        Ok(requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_trace_other_seed_other_trace() {
        let config = TraceConfig::decodes_with_long_prompts(30.0, 7, 1.0);
        let first = config.generate().expect("valid");
        assert_eq!(first, config.generate().expect("valid"));
        let other = TraceConfig { seed: 8, ..config }.generate().expect("valid");
        assert_ne!(first, other);
    }

    #[test]
    fn arrivals_are_ordered_in_range_and_near_the_rate() {
        let config = TraceConfig::decodes_with_long_prompts(200.0, 1, 1.0);
        let trace = config.generate().expect("valid");
        assert!(
            trace
                .windows(2)
                .all(|pair| pair[0].arrival_s <= pair[1].arrival_s)
        );
        for (class, spec) in config.classes.iter().enumerate() {
            let members: Vec<_> = trace.iter().filter(|r| r.class == class).collect();
            let expected = spec.rate_per_s * config.duration_s;
            let count = members.len() as f64;
            // Poisson: 5 standard deviations.
            assert!(
                (count - expected).abs() < 5.0 * expected.sqrt(),
                "{count} vs {expected}"
            );
            assert!(members.iter().all(|r| {
                (spec.prompt_tokens.0..=spec.prompt_tokens.1).contains(&r.prompt_tokens)
                    && (spec.output_tokens.0..=spec.output_tokens.1).contains(&r.output_tokens)
                    && r.arrival_s < config.duration_s
            }));
        }
    }

    #[test]
    fn bad_configs_are_refused() {
        let good = TraceConfig::decodes_with_long_prompts(10.0, 1, 1.0);
        let zero_time = TraceConfig {
            duration_s: 0.0,
            ..good.clone()
        };
        assert_eq!(zero_time.generate(), Err(TraceError::Duration(0.0)));
        let mut no_rate = good.clone();
        no_rate.classes[1].rate_per_s = f64::NAN;
        assert!(matches!(
            no_rate.generate(),
            Err(TraceError::Rate { class: 1, .. })
        ));
        let mut empty = good;
        empty.classes[0].output_tokens = (5, 4);
        assert!(matches!(
            empty.generate(),
            Err(TraceError::Range {
                class: 0,
                what: "output",
                min: 5,
                max: 4
            })
        ));
    }
}
