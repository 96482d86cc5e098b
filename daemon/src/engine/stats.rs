//! The per-request numbers vLLM's metrics report, from the engine's timestamps of one choice
//! (arrival, first scheduling, first and last token), and the bookkeeping of a request's `n`
//! choices until the last one ends (vLLM observes `n` and the longest generation per request).
//!
//! Must not: touch Prometheus (the worker hands the numbers to `Metrics`).

use std::time::Instant;

use crate::metrics::FinishedRequest;

/// When a choice reached each phase.
#[derive(Debug, Clone, Copy)]
pub(super) struct Phases {
    pub arrival: Instant,
    pub first_scheduled: Option<Instant>,
    pub first_token: Option<Instant>,
    pub last_token: Option<Instant>,
}

/// vLLM's intervals of a finished choice (`vllm/v1/metrics/stats.py`): queued = arrival to first
/// scheduling, prefill = first scheduling to first token, decode = first to last token,
/// inference = first scheduling to last token (preemptions inside each), and the mean time per
/// output token after the first. A phase never reached counts as zero length.
pub(super) fn finished(
    phases: Phases,
    now: Instant,
    prompt_tokens: usize,
    generation_tokens: usize,
    max_tokens: usize,
) -> FinishedRequest {
    let scheduled = phases.first_scheduled.unwrap_or(now);
    let first = phases.first_token.unwrap_or(now).max(scheduled);
    let last = phases.last_token.unwrap_or(now).max(first);
    let secs = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64();
    let decode = secs(first, last);
    FinishedRequest {
        e2e: secs(phases.arrival, now),
        queued: secs(phases.arrival, scheduled),
        prefill: secs(scheduled, first),
        decode,
        inference: secs(scheduled, last),
        time_per_output_token: if generation_tokens > 1 {
            decode / (generation_tokens - 1) as f64
        } else {
            0.0
        },
        prompt_tokens,
        generation_tokens,
        max_tokens,
    }
}

/// The choices of one request still running, and what the ended ones generated.
#[derive(Debug, Clone)]
pub(super) struct Group {
    pub n: usize,
    /// The request's `max_tokens` (after the server's default).
    pub max_tokens: usize,
    remaining: usize,
    max_generated: usize,
    any_finished: bool,
}

impl Group {
    pub fn new(n: usize, max_tokens: usize) -> Self {
        Group {
            n,
            max_tokens,
            remaining: n,
            max_generated: 0,
            any_finished: false,
        }
    }

    /// One choice ended (`finished`: by stop or length, not by abort or error) after
    /// generating `generated` tokens. Returns the longest generation once the last choice of
    /// a request that finished at least one ended.
    pub fn choice_ended(&mut self, generated: usize, finished: bool) -> Option<usize> {
        self.remaining = self.remaining.saturating_sub(1);
        self.max_generated = self.max_generated.max(generated);
        self.any_finished |= finished;
        (self.remaining == 0 && self.any_finished).then_some(self.max_generated)
    }

    pub fn is_done(&self) -> bool {
        self.remaining == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_phases_add_up_like_vllms() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let phases = Phases {
            arrival: t0,
            first_scheduled: Some(at(100)),
            first_token: Some(at(400)),
            last_token: Some(at(1400)),
        };
        let r = finished(phases, at(1500), 12, 11, 16);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(r.queued, 0.1) && close(r.prefill, 0.3) && close(r.decode, 1.0));
        assert!(close(r.inference, 1.3) && close(r.e2e, 1.5));
        assert!(close(r.time_per_output_token, 0.1));
        assert!(close(r.queued + r.inference, r.e2e - 0.1));
        assert_eq!(
            (r.prompt_tokens, r.generation_tokens, r.max_tokens),
            (12, 11, 16)
        );
    }

    #[test]
    fn one_token_or_none_has_no_time_per_output_token() {
        let t0 = Instant::now();
        let phases = Phases {
            arrival: t0,
            first_scheduled: Some(t0),
            first_token: Some(t0),
            last_token: Some(t0),
        };
        assert_eq!(finished(phases, t0, 3, 1, 1).time_per_output_token, 0.0);
        let never = Phases {
            arrival: t0,
            first_scheduled: None,
            first_token: None,
            last_token: None,
        };
        let r = finished(never, t0 + Duration::from_millis(5), 3, 0, 8);
        assert_eq!((r.prefill, r.decode, r.inference), (0.0, 0.0, 0.0));
        assert!((r.queued - 0.005).abs() < 1e-9);
    }

    #[test]
    fn a_group_reports_once_its_last_choice_ends() {
        let mut g = Group::new(3, 16);
        assert_eq!(g.choice_ended(5, true), None);
        assert_eq!(g.choice_ended(9, false), None);
        assert!(!g.is_done());
        assert_eq!(g.choice_ended(7, true), Some(9));
        assert!(g.is_done());
        let mut aborted = Group::new(1, 16);
        assert_eq!(aborted.choice_ended(4, false), None);
        assert!(aborted.is_done());
    }
}
