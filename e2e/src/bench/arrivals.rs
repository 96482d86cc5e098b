//! When requests are sent: the gaps between arrivals, as `vllm bench serve` draws them — gamma
//! distributed with shape `burstiness` and mean `1 / request_rate` (burstiness 1 is a Poisson
//! process; below 1 burstier, above 1 more regular), from a seeded generator; an infinite rate
//! sends everything at once (then `--max-concurrency` shapes the load).

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Gamma};

use crate::bench::BenchError;

/// A seeded source of inter-arrival gaps.
#[derive(Debug)]
pub struct ArrivalProcess {
    gamma: Option<Gamma<f64>>,
    rng: StdRng,
}

impl ArrivalProcess {
    /// `request_rate` in requests/s (`f64::INFINITY`: no gaps); `burstiness` > 0.
    pub fn new(request_rate: f64, burstiness: f64, seed: u64) -> Result<Self, BenchError> {
        if request_rate.is_nan() || request_rate <= 0.0 {
            return Err(BenchError::BadOption(format!(
                "--request-rate must be > 0 or inf, not {request_rate}"
            )));
        }
        if !(burstiness.is_finite() && burstiness > 0.0) {
            return Err(BenchError::BadOption(format!(
                "--burstiness must be a finite number > 0, not {burstiness}"
            )));
        }
        let gamma = if request_rate.is_infinite() {
            None
        } else {
            let scale = 1.0 / (request_rate * burstiness);
            Some(
                Gamma::new(burstiness, scale)
                    .map_err(|e| BenchError::BadOption(format!("arrival distribution: {e}")))?,
            )
        };
        Ok(Self {
            gamma,
            rng: StdRng::seed_from_u64(seed),
        })
    }

    /// Whether requests arrive at once (infinite rate).
    pub fn is_unpaced(&self) -> bool {
        self.gamma.is_none()
    }

    /// The gap before the next arrival.
    pub fn next_gap(&mut self) -> Duration {
        match &self.gamma {
            None => Duration::ZERO,
            Some(gamma) => Duration::from_secs_f64(gamma.sample(&mut self.rng)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(rate: f64, burstiness: f64, seed: u64, n: usize) -> Vec<f64> {
        let mut p = ArrivalProcess::new(rate, burstiness, seed).expect("valid options");
        (0..n).map(|_| p.next_gap().as_secs_f64()).collect()
    }

    fn mean_and_cv(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        (mean, sd / mean)
    }

    #[test]
    fn same_seed_same_gaps_other_seed_other_gaps() {
        assert_eq!(gaps(4.0, 1.0, 7, 100), gaps(4.0, 1.0, 7, 100));
        assert_ne!(gaps(4.0, 1.0, 7, 100), gaps(4.0, 1.0, 8, 100));
    }

    #[test]
    fn poisson_gaps_have_mean_one_over_rate_and_cv_one() {
        let (mean, cv) = mean_and_cv(&gaps(4.0, 1.0, 1, 40_000));
        assert!((mean - 0.25).abs() < 0.25 * 0.03, "mean {mean}");
        assert!((cv - 1.0).abs() < 0.03, "cv {cv}");
    }

    #[test]
    fn burstiness_sets_the_coefficient_of_variation() {
        // gamma with shape k has CV 1/sqrt(k): burstiness 0.25 -> 2, 4 -> 0.5; mean unchanged
        for (k, want_cv) in [(0.25, 2.0), (4.0, 0.5)] {
            let (mean, cv) = mean_and_cv(&gaps(2.0, k, 3, 60_000));
            assert!((mean - 0.5).abs() < 0.5 * 0.04, "k={k} mean {mean}");
            assert!((cv - want_cv).abs() < want_cv * 0.05, "k={k} cv {cv}");
        }
    }

    #[test]
    fn infinite_rate_sends_at_once_and_bad_options_are_refused() {
        let mut p = ArrivalProcess::new(f64::INFINITY, 1.0, 0).expect("inf is valid");
        assert!(p.is_unpaced());
        assert_eq!(p.next_gap(), Duration::ZERO);
        for (rate, burst) in [
            (0.0, 1.0),
            (-1.0, 1.0),
            (f64::NAN, 1.0),
            (1.0, 0.0),
            (1.0, f64::INFINITY),
        ] {
            assert!(
                ArrivalProcess::new(rate, burst, 0).is_err(),
                "{rate} {burst}"
            );
        }
    }
}
