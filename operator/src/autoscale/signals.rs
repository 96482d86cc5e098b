//! The autoscaling signals of a FusedModel: which series each target reads, and their current
//! values from the replicas' samples — per-replica means of the gauges, and generated tokens per
//! second from each replica's counter between two scrapes (a replica's first scrape has no rate
//! yet). Pure, apart from the per-replica counter memory it keeps.

use std::collections::HashMap;
use std::time::Instant;

use fused_crds::AutoscalingSpec;

use crate::scrape::{GENERATION_TOKENS, KV_USAGE, RUNNING, Sample, WAITING};

/// A signal the autoscaler can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Waiting requests per replica.
    Waiting,
    /// Running requests per replica.
    Running,
    /// KV-cache utilisation per replica.
    KvUtilization,
    /// Generated tokens per second per replica.
    TokensPerSecond,
}

impl Signal {
    /// The series it is read from.
    pub fn series(self) -> &'static str {
        match self {
            Self::Waiting => WAITING,
            Self::Running => RUNNING,
            Self::KvUtilization => KV_USAGE,
            Self::TokensPerSecond => GENERATION_TOKENS,
        }
    }

    /// Its short name in summaries and reasons.
    pub fn short(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Running => "running",
            Self::KvUtilization => "kv",
            Self::TokensPerSecond => "tokens/s",
        }
    }
}

/// A signal and its target mean per replica.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Target {
    /// The signal.
    pub signal: Signal,
    /// Its target mean per replica.
    pub value: f64,
}

/// The targets `spec` sets, in a stable order.
pub fn targets(spec: &AutoscalingSpec) -> Vec<Target> {
    let mut targets = Vec::new();
    let mut add = |signal, value: Option<f64>| {
        if let Some(value) = value {
            targets.push(Target { signal, value });
        }
    };
    add(Signal::Waiting, spec.target_waiting_requests.map(f64::from));
    add(Signal::Running, spec.target_running_requests.map(f64::from));
    add(Signal::KvUtilization, spec.target_kv_cache_utilization);
    add(
        Signal::TokensPerSecond,
        spec.target_tokens_per_second.map(f64::from),
    );
    targets
}

/// A signal's sum over the replicas that reported it, and how many did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// The signal and its target.
    pub target: Target,
    /// Sum of the replicas' values.
    pub sum: f64,
    /// Replicas that reported a value.
    pub replicas: usize,
}

impl Reading {
    /// Mean per reporting replica (`None` without any).
    pub fn mean(&self) -> Option<f64> {
        (self.replicas > 0).then(|| self.sum / self.replicas as f64)
    }
}

/// Each replica's last counters, for rates between scrapes.
#[derive(Debug, Default)]
pub struct Counters {
    last: HashMap<String, (Instant, f64, f64)>,
}

/// What a round of samples says beyond the readings.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// One reading per target.
    pub readings: Vec<Reading>,
    /// Whether any replica had a request waiting or running, or processed a token since its
    /// last scrape (traffic, for scale to zero).
    pub active: bool,
}

impl Counters {
    /// The readings of `targets` from `samples` (replica id, time, sample), remembering the
    /// counters for the next round; replicas not in `samples` are forgotten.
    pub fn round(&mut self, targets: &[Target], samples: &[(String, Instant, Sample)]) -> Round {
        let mut active = false;
        let mut rates = Vec::new();
        let mut next = HashMap::new();
        for (replica, at, sample) in samples {
            active |= sample.waiting > 0.0 || sample.running > 0.0;
            if let Some((then, generated, prompted)) = self.last.get(replica) {
                let seconds = at.saturating_duration_since(*then).as_secs_f64();
                // A counter that went down is a restarted daemon: no rate this round.
                if sample.generation_tokens >= *generated && sample.prompt_tokens >= *prompted {
                    active |=
                        sample.generation_tokens > *generated || sample.prompt_tokens > *prompted;
                    if seconds > 0.0 {
                        rates.push((sample.generation_tokens - generated) / seconds);
                    }
                }
            }
            next.insert(
                replica.clone(),
                (*at, sample.generation_tokens, sample.prompt_tokens),
            );
        }
        self.last = next;
        let readings = targets
            .iter()
            .map(|target| {
                let values: Vec<f64> = match target.signal {
                    Signal::Waiting => samples.iter().map(|s| s.2.waiting).collect(),
                    Signal::Running => samples.iter().map(|s| s.2.running).collect(),
                    Signal::KvUtilization => samples.iter().map(|s| s.2.kv_usage).collect(),
                    Signal::TokensPerSecond => rates.clone(),
                };
                Reading {
                    target: *target,
                    sum: values.iter().sum(),
                    replicas: values.len(),
                }
            })
            .collect();
        Round { readings, active }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(waiting: f64, generated: f64) -> Sample {
        Sample {
            waiting,
            running: 0.0,
            kv_usage: 0.5,
            generation_tokens: generated,
            prompt_tokens: 10.0,
        }
    }

    #[test]
    fn targets_follow_the_spec() {
        let spec = AutoscalingSpec {
            target_waiting_requests: Some(4),
            target_tokens_per_second: Some(300),
            ..AutoscalingSpec::new(0, 3)
        };
        let signals: Vec<(Signal, f64)> = targets(&spec)
            .into_iter()
            .map(|t| (t.signal, t.value))
            .collect();
        assert_eq!(
            signals,
            [(Signal::Waiting, 4.0), (Signal::TokensPerSecond, 300.0)]
        );
    }

    #[test]
    fn gauges_are_means_and_tokens_are_rates_between_scrapes() {
        let spec = AutoscalingSpec {
            target_waiting_requests: Some(2),
            target_kv_cache_utilization: Some(0.8),
            target_tokens_per_second: Some(100),
            ..AutoscalingSpec::new(1, 3)
        };
        let targets = targets(&spec);
        let mut counters = Counters::default();
        let t0 = Instant::now();
        let first = counters.round(
            &targets,
            &[
                ("a".into(), t0, sample(3.0, 100.0)),
                ("b".into(), t0, sample(1.0, 50.0)),
            ],
        );
        assert_eq!(first.readings[0].mean(), Some(2.0));
        assert_eq!(first.readings[1].mean(), Some(0.5));
        assert_eq!(first.readings[2].mean(), None, "no rate on a first scrape");
        assert!(first.active, "requests are waiting");

        let t1 = t0 + Duration::from_secs(2);
        let second = counters.round(
            &targets,
            &[
                ("a".into(), t1, sample(0.0, 300.0)),
                ("c".into(), t1, sample(0.0, 7.0)),
            ],
        );
        assert_eq!(
            second.readings[2].mean(),
            Some(100.0),
            "a made 200 tokens in 2 s; c is new"
        );
        assert!(second.active, "a generated tokens since the last scrape");

        let t2 = t1 + Duration::from_secs(2);
        let quiet = counters.round(
            &targets,
            &[
                ("a".into(), t2, sample(0.0, 300.0)),
                ("c".into(), t2, sample(0.0, 7.0)),
            ],
        );
        assert!(!quiet.active);
        assert_eq!(quiet.readings[2].mean(), Some(0.0));
        // A restarted daemon (its counter went down) gives no rate.
        let restarted = counters.round(&targets, &[("a".into(), t2, sample(0.0, 3.0))]);
        assert_eq!(restarted.readings[2].replicas, 0);
    }
}
