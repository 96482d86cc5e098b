//! How many replicas a FusedModel should have, from its signals — the HorizontalPodAutoscaler's
//! algorithm for `AverageValue` targets, so users get the behaviour they know: per signal
//! `ceil(sum / target)` unless the mean is within 10 % of the target; the highest signal wins;
//! replicas that are starting count as idle when scaling up (they will take load) and as on
//! target when scaling down (no decision on missing data); scale-up at once, at most doubling
//! (or +4) per decision; scale-down only to the highest recommendation of the stabilisation
//! window; and, with `minReplicas: 0`, zero after `scaleToZeroAfter` without traffic. Pure: time
//! comes in as an argument.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::autoscale::signals::Reading;

/// The HPA's tolerance: a mean within 10 % of its target changes nothing.
pub const TOLERANCE: f64 = 0.1;

/// The limits a decision respects.
#[derive(Debug, Clone, PartialEq)]
pub struct Bounds {
    /// `minReplicas`.
    pub min: i32,
    /// `maxReplicas`.
    pub max: i32,
    /// The scale-down stabilisation window.
    pub scale_down_window: Duration,
    /// Quiet time before zero (with `min == 0` and an activator to wake the model).
    pub scale_to_zero_after: Option<Duration>,
}

/// What the autoscaler sees this round.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation<'a> {
    /// Now.
    pub now: Instant,
    /// `spec.replicas`.
    pub replicas: i32,
    /// One reading per target.
    pub readings: &'a [Reading],
    /// Whether there was traffic since the last round.
    pub active: bool,
}

/// The decision: the replicas wanted and, when they differ from the current ones, why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Replicas wanted.
    pub replicas: i32,
    /// Why they differ from the current count (`None` when they do not).
    pub reason: Option<String>,
}

/// The memory a FusedModel's decisions need: recent recommendations (the stabilisation window)
/// and when it last saw traffic.
#[derive(Debug, Clone)]
pub struct History {
    recommendations: VecDeque<(Instant, i32)>,
    last_active: Instant,
    last_replicas: i32,
}

impl History {
    /// A history that starts now, as if traffic had just been seen (a restarted operator does
    /// not scale to zero before a full quiet period).
    pub fn new(now: Instant, replicas: i32) -> Self {
        Self {
            recommendations: VecDeque::new(),
            last_active: now,
            last_replicas: replicas,
        }
    }

    /// When traffic was last seen.
    pub fn last_active(&self) -> Instant {
        self.last_active
    }

    /// The decision for `observation` within `bounds`.
    pub fn decide(&mut self, observation: &Observation<'_>, bounds: &Bounds) -> Decision {
        let now = observation.now;
        let current = observation.replicas;
        // Waking from zero is traffic: the activator holds a request.
        if observation.active || (self.last_replicas == 0 && current > 0) {
            self.last_active = now;
        }
        self.last_replicas = current;
        if current == 0 {
            // At zero only the activator (a request) or a person scales up.
            self.recommendations.clear();
            return hold(current);
        }
        let floor = bounds.min.max(1);
        if let Some(quiet) = bounds.scale_to_zero_after
            && bounds.min == 0
            && now.saturating_duration_since(self.last_active) >= quiet
        {
            self.recommendations.clear();
            // What this decision writes: one replica in the next round is a wake-up (the
            // activator answered a request in between), not the replica this one removed.
            self.last_replicas = 0;
            return Decision {
                replicas: 0,
                reason: Some(format!(
                    "no request for {}: {current} → 0",
                    seconds(now.saturating_duration_since(self.last_active))
                )),
            };
        }
        let (raw, why) = recommend(observation);
        let recommended = raw.clamp(floor, bounds.max.max(floor));
        self.recommendations.push_back((now, recommended));
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > bounds.scale_down_window)
        {
            self.recommendations.pop_front();
        }
        let replicas = if recommended > current {
            recommended.min((current * 2).max(current + 4))
        } else {
            // Scale down only as far as every recommendation of the window allows.
            let highest = self
                .recommendations
                .iter()
                .map(|(_, r)| *r)
                .max()
                .unwrap_or(recommended);
            highest.min(current).max(recommended)
        };
        // Bounds changed under the current count: follow them.
        let replicas = replicas.clamp(floor, bounds.max.max(floor));
        if replicas == current {
            return hold(current);
        }
        let reason = match why {
            Some(why) => format!("{why}: {current} → {replicas}"),
            None => format!(
                "replicas outside [{floor}, {}]: {current} → {replicas}",
                bounds.max
            ),
        };
        Decision {
            replicas,
            reason: Some(reason),
        }
    }
}

fn hold(replicas: i32) -> Decision {
    Decision {
        replicas,
        reason: None,
    }
}

/// The HPA recommendation over all readings, and which signal decided it (`None`: no signal
/// asks for a change).
fn recommend(observation: &Observation<'_>) -> (i32, Option<String>) {
    let current = observation.replicas;
    let mut best: Option<(i32, String)> = None;
    for reading in observation.readings {
        let Some(mean) = reading.mean() else {
            continue;
        };
        let target = reading.target.value;
        let ratio = mean / target;
        if (ratio - 1.0).abs() <= TOLERANCE {
            continue;
        }
        // Replicas that did not report (starting, or their scrape failed).
        let missing = (current.max(0) as usize).saturating_sub(reading.replicas) as f64;
        let desired = if ratio > 1.0 {
            // Starting replicas count as idle: they will take load.
            let spread = reading.sum / (target * (reading.replicas as f64 + missing));
            if spread <= 1.0 + TOLERANCE {
                continue;
            }
            (reading.sum / target).ceil() as i32
        } else {
            // Missing replicas count as on target: never scale down on missing data.
            ((reading.sum + target * missing) / target).ceil() as i32
        };
        let why = format!(
            "{} {}/{} per replica",
            reading.target.signal.short(),
            decimal(mean),
            decimal(target)
        );
        if best.as_ref().is_none_or(|(r, _)| desired > *r) {
            best = Some((desired, why));
        }
    }
    match best {
        Some((replicas, why)) => (replicas, Some(why)),
        None => (current, None),
    }
}

/// `value` with at most three decimals and no trailing zeros (`2.5`, `0.413`, `4`).
pub fn decimal(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

fn seconds(duration: Duration) -> String {
    format!("{} s", duration.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autoscale::signals::{Signal, Target};

    fn reading(signal: Signal, target: f64, values: &[f64]) -> Reading {
        Reading {
            target: Target {
                signal,
                value: target,
            },
            sum: values.iter().sum(),
            replicas: values.len(),
        }
    }

    fn bounds(min: i32, max: i32) -> Bounds {
        Bounds {
            min,
            max,
            scale_down_window: Duration::from_secs(60),
            scale_to_zero_after: Some(Duration::from_secs(300)),
        }
    }

    fn observe<'a>(now: Instant, replicas: i32, readings: &'a [Reading]) -> Observation<'a> {
        Observation {
            now,
            replicas,
            readings,
            active: true,
        }
    }

    #[test]
    fn scales_up_to_ceil_of_sum_over_target_and_names_the_signal() {
        let t0 = Instant::now();
        let mut history = History::new(t0, 1);
        let readings = [reading(Signal::Waiting, 2.0, &[7.0])];
        let decision = history.decide(&observe(t0, 1, &readings), &bounds(1, 10));
        assert_eq!(decision.replicas, 4);
        assert_eq!(
            decision.reason.as_deref(),
            Some("waiting 7/2 per replica: 1 → 4")
        );
    }

    #[test]
    fn within_tolerance_nothing_changes() {
        let t0 = Instant::now();
        let mut history = History::new(t0, 2);
        let readings = [reading(Signal::KvUtilization, 0.8, &[0.84, 0.8])];
        let decision = history.decide(&observe(t0, 2, &readings), &bounds(1, 10));
        assert_eq!(decision, hold(2));
    }

    #[test]
    fn the_hungriest_signal_wins_and_max_caps() {
        let t0 = Instant::now();
        let mut history = History::new(t0, 2);
        let readings = [
            reading(Signal::Waiting, 4.0, &[5.0, 5.0]),
            reading(Signal::Running, 2.0, &[6.0, 6.0]),
        ];
        let decision = history.decide(&observe(t0, 2, &readings), &bounds(1, 5));
        assert_eq!(decision.replicas, 5, "running asks 6, max is 5");
        assert!(
            decision
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("running 6/2")),
            "{decision:?}"
        );
    }

    #[test]
    fn starting_replicas_absorb_load_before_more_are_added() {
        let t0 = Instant::now();
        let mut history = History::new(t0, 3);
        // One ready replica with 5 waiting, two starting: 5 / (2 × 3) < 1.1 — wait for them.
        let readings = [reading(Signal::Waiting, 2.0, &[5.0])];
        assert_eq!(
            history.decide(&observe(t0, 3, &readings), &bounds(1, 10)),
            hold(3)
        );
    }

    #[test]
    fn scale_up_is_at_most_double_or_plus_four() {
        let t0 = Instant::now();
        let mut history = History::new(t0, 1);
        let readings = [reading(Signal::Waiting, 1.0, &[40.0])];
        assert_eq!(
            history
                .decide(&observe(t0, 1, &readings), &bounds(1, 100))
                .replicas,
            5
        );
        let readings = [reading(Signal::Waiting, 1.0, &[40.0; 10])];
        assert_eq!(
            history
                .decide(&observe(t0, 10, &readings), &bounds(1, 100))
                .replicas,
            20
        );
    }

    #[test]
    fn scale_down_waits_for_the_stabilisation_window() {
        let t0 = Instant::now();
        let mut history = History::new(t0, 4);
        let busy = [reading(Signal::Waiting, 2.0, &[2.0; 4])];
        assert_eq!(
            history.decide(&observe(t0, 4, &busy), &bounds(1, 10)),
            hold(4)
        );
        let idle = [reading(Signal::Waiting, 2.0, &[0.0; 4])];
        for seconds in [10, 30, 59] {
            let now = t0 + Duration::from_secs(seconds);
            assert_eq!(
                history.decide(&observe(now, 4, &idle), &bounds(1, 10)),
                hold(4),
                "{seconds} s: the window still holds a recommendation of 4"
            );
        }
        let later = t0 + Duration::from_secs(61);
        let decision = history.decide(&observe(later, 4, &idle), &bounds(1, 10));
        assert_eq!(decision.replicas, 1);
        assert_eq!(
            decision.reason.as_deref(),
            Some("waiting 0/2 per replica: 4 → 1")
        );
    }

    #[test]
    fn missing_replicas_count_as_on_target_when_scaling_down() {
        let t0 = Instant::now();
        let mut history = History::new(t0, 4);
        // Two of four replicas reported 0; the two others count as 2 each: ceil(4 / 2) = 2.
        let readings = [reading(Signal::Waiting, 2.0, &[0.0, 0.0])];
        let mut b = bounds(1, 10);
        b.scale_down_window = Duration::ZERO;
        assert_eq!(history.decide(&observe(t0, 4, &readings), &b).replicas, 2);
    }

    #[test]
    fn zero_after_quiet_and_only_with_min_zero() {
        let t0 = Instant::now();
        let idle = [reading(Signal::Waiting, 2.0, &[0.0])];
        let quiet = |now| Observation {
            active: false,
            ..observe(now, 1, &idle)
        };
        let mut history = History::new(t0, 1);
        assert_eq!(
            history.decide(&quiet(t0 + Duration::from_secs(299)), &bounds(0, 3)),
            hold(1)
        );
        let decision = history.decide(&quiet(t0 + Duration::from_secs(300)), &bounds(0, 3));
        assert_eq!(decision.replicas, 0);
        assert_eq!(
            decision.reason.as_deref(),
            Some("no request for 300 s: 1 → 0")
        );

        let mut floor_one = History::new(t0, 1);
        assert_eq!(
            floor_one.decide(&quiet(t0 + Duration::from_secs(900)), &bounds(1, 3)),
            hold(1),
            "minReplicas 1 never reaches zero"
        );
        let mut no_activator = History::new(t0, 1);
        let mut b = bounds(0, 3);
        b.scale_to_zero_after = None;
        assert_eq!(
            no_activator.decide(&quiet(t0 + Duration::from_secs(900)), &b),
            hold(1),
            "without an activator nothing could wake it"
        );
    }

    #[test]
    fn waking_from_zero_restarts_the_quiet_clock() {
        let t0 = Instant::now();
        let mut history = History::new(t0, 0);
        let none: [Reading; 0] = [];
        let at_zero = Observation {
            active: false,
            ..observe(t0 + Duration::from_secs(1000), 0, &none)
        };
        assert_eq!(history.decide(&at_zero, &bounds(0, 3)), hold(0));
        // The activator set one replica; it is starting (nothing sampled).
        let woken = Observation {
            active: false,
            ..observe(t0 + Duration::from_secs(1001), 1, &none)
        };
        assert_eq!(history.decide(&woken, &bounds(0, 3)), hold(1));
        assert_eq!(history.last_active(), t0 + Duration::from_secs(1001));
    }

    #[test]
    fn a_wake_up_right_after_the_scale_to_zero_is_traffic() {
        // The round that decides zero still sees one replica; the activator wakes the model
        // before the next round sees zero: that one replica must not be taken away again.
        let t0 = Instant::now();
        let idle = [reading(Signal::Waiting, 2.0, &[0.0])];
        let mut history = History::new(t0, 1);
        let quiet = Observation {
            active: false,
            ..observe(t0 + Duration::from_secs(300), 1, &idle)
        };
        assert_eq!(history.decide(&quiet, &bounds(0, 3)).replicas, 0);
        let none: [Reading; 0] = [];
        let woken = Observation {
            active: false,
            ..observe(t0 + Duration::from_secs(305), 1, &none)
        };
        assert_eq!(history.decide(&woken, &bounds(0, 3)), hold(1));
        assert_eq!(history.last_active(), t0 + Duration::from_secs(305));
    }

    #[test]
    fn decimals_are_short() {
        assert_eq!(decimal(2.5), "2.5");
        assert_eq!(decimal(4.0), "4");
        assert_eq!(decimal(0.41349), "0.413");
        assert_eq!(decimal(0.0), "0");
    }
}
