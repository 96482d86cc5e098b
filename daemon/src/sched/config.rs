//! Scheduler configuration: token budget (fixed or auto), sequence and queue limits, policy.
//!
//! Must not: hold any state of a running scheduler; validation only checks the numbers.

use std::time::Duration;

/// How batches are composed; see the module documentation of [`crate::sched`] for the exact
/// semantics of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Sarathi-Serve: decodes first, then chunked prefills fill the token budget (stall-free).
    Sarathi,
    /// vLLM v0 style: whole prefills run alone as soon as one can be admitted; decodes stall.
    PrefillFirst,
    /// Orca-like: decodes first, then whole (unchunked) prefills in the same batch.
    DecodeFirst,
}

impl Policy {
    /// The policy's name as the daemon's `--scheduler` flag spells it.
    pub fn name(self) -> &'static str {
        match self {
            Policy::Sarathi => "sarathi",
            Policy::PrefillFirst => "prefill-first",
            Policy::DecodeFirst => "decode-first",
        }
    }
}

impl std::str::FromStr for Policy {
    type Err = ConfigError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "sarathi" => Ok(Policy::Sarathi),
            "prefill-first" => Ok(Policy::PrefillFirst),
            "decode-first" => Ok(Policy::DecodeFirst),
            other => Err(ConfigError::UnknownPolicy(other.to_string())),
        }
    }
}

/// Tokens (prefill + decode) one iteration may process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TokenBudget {
    /// Always this many tokens.
    Fixed(usize),
    /// The largest budget in `min..=max` whose predicted iteration time stays under
    /// `tbt_target`, predicted from iteration times the engine reports
    /// ([`crate::sched::Scheduler::observe_iteration`]). Starts at `min` until enough
    /// iterations have been observed.
    Auto {
        tbt_target: Duration,
        min: usize,
        max: usize,
    },
}

impl TokenBudget {
    /// The smallest budget this setting can ever give.
    pub fn floor(&self) -> usize {
        match *self {
            TokenBudget::Fixed(tokens) => tokens,
            TokenBudget::Auto { min, .. } => min,
        }
    }
}

/// Everything the scheduler is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    pub token_budget: TokenBudget,
    /// Most sequences holding KV at once (decoding or mid-prefill).
    pub max_num_seqs: usize,
    /// Most requests waiting for admission; [`crate::sched::Scheduler::add`] refuses beyond it.
    pub max_queue: usize,
    pub policy: Policy,
}

impl SchedulerConfig {
    /// Sarathi-Serve's defaults: budget 512, 128 sequences.
    pub fn sarathi_default() -> Self {
        SchedulerConfig {
            token_budget: TokenBudget::Fixed(512),
            max_num_seqs: 128,
            max_queue: 1024,
            policy: Policy::Sarathi,
        }
    }

    /// Checks the numbers make a scheduler that can always make progress.
    ///
    /// The budget must cover one decode token of every sequence that may run (as vLLM requires
    /// `max_num_batched_tokens >= max_num_seqs`), otherwise decodes could starve.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_num_seqs == 0 {
            return Err(ConfigError::ZeroMaxNumSeqs);
        }
        if self.max_queue == 0 {
            return Err(ConfigError::ZeroMaxQueue);
        }
        if let TokenBudget::Auto {
            tbt_target,
            min,
            max,
        } = self.token_budget
        {
            if min > max {
                return Err(ConfigError::AutoRange { min, max });
            }
            if tbt_target.is_zero() {
                return Err(ConfigError::ZeroTbtTarget);
            }
        }
        let floor = self.token_budget.floor();
        if floor < self.max_num_seqs {
            return Err(ConfigError::BudgetBelowMaxNumSeqs {
                budget: floor,
                max_num_seqs: self.max_num_seqs,
            });
        }
        Ok(())
    }
}

/// A configuration the scheduler refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("maxNumSeqs must be at least 1")]
    ZeroMaxNumSeqs,
    #[error("maxQueue must be at least 1")]
    ZeroMaxQueue,
    #[error("auto token budget needs min <= max, got min {min} and max {max}")]
    AutoRange { min: usize, max: usize },
    #[error("auto token budget needs a TBT target above zero")]
    ZeroTbtTarget,
    #[error(
        "token budget {budget} is below maxNumSeqs {max_num_seqs}: every running sequence \
         needs one decode token per iteration"
    )]
    BudgetBelowMaxNumSeqs { budget: usize, max_num_seqs: usize },
    #[error("unknown scheduler policy {0:?} (expected sarathi, prefill-first or decode-first)")]
    UnknownPolicy(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_sarathi() {
        let config = SchedulerConfig::sarathi_default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.policy, Policy::Sarathi);
        assert_eq!(config.token_budget, TokenBudget::Fixed(512));
    }

    #[test]
    fn budget_below_max_num_seqs_is_refused() {
        let config = SchedulerConfig {
            token_budget: TokenBudget::Fixed(64),
            ..SchedulerConfig::sarathi_default()
        };
        assert_eq!(
            config.validate(),
            Err(ConfigError::BudgetBelowMaxNumSeqs {
                budget: 64,
                max_num_seqs: 128
            })
        );
    }

    #[test]
    fn bad_auto_settings_are_refused() {
        let auto = |tbt_target, min, max| SchedulerConfig {
            token_budget: TokenBudget::Auto {
                tbt_target,
                min,
                max,
            },
            ..SchedulerConfig::sarathi_default()
        };
        let target = Duration::from_millis(50);
        assert_eq!(
            auto(target, 1024, 512).validate(),
            Err(ConfigError::AutoRange {
                min: 1024,
                max: 512
            })
        );
        assert_eq!(
            auto(Duration::ZERO, 256, 512).validate(),
            Err(ConfigError::ZeroTbtTarget)
        );
        assert_eq!(auto(target, 256, 4096).validate(), Ok(()));
    }

    #[test]
    fn zero_limits_are_refused() {
        let base = SchedulerConfig::sarathi_default();
        let no_seqs = SchedulerConfig {
            max_num_seqs: 0,
            ..base.clone()
        };
        assert_eq!(no_seqs.validate(), Err(ConfigError::ZeroMaxNumSeqs));
        let no_queue = SchedulerConfig {
            max_queue: 0,
            ..base
        };
        assert_eq!(no_queue.validate(), Err(ConfigError::ZeroMaxQueue));
    }

    #[test]
    fn policy_names_round_trip() {
        for policy in [Policy::Sarathi, Policy::PrefillFirst, Policy::DecodeFirst] {
            assert_eq!(policy.name().parse::<Policy>(), Ok(policy));
        }
        assert_eq!(
            "fcfs".parse::<Policy>(),
            Err(ConfigError::UnknownPolicy("fcfs".to_string()))
        );
    }
}
