//! Cross-field rules of a `FusedModelSpec` that a structural schema on Kubernetes 1.20 cannot
//! express (no CEL there). The operator calls [`FusedModelSpec::validate`] and reports failures
//! as a `Degraded` condition with reason `InvalidSpec`; single-field limits stay in the schema.

use thiserror::Error;

use crate::spec::FusedModelSpec;

/// A cross-field rule the spec breaks; the message names the fields involved.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SpecError {
    /// `autoscaling.minReplicas` is above `autoscaling.maxReplicas`.
    #[error(
        "spec.autoscaling.minReplicas ({min}) must not exceed spec.autoscaling.maxReplicas ({max})"
    )]
    MinReplicasAboveMax {
        /// `autoscaling.minReplicas`.
        min: i32,
        /// `autoscaling.maxReplicas`.
        max: i32,
    },
    /// Autoscaling is set without any target metric.
    #[error(
        "spec.autoscaling needs a target: set targetKvCacheUtilization and/or targetWaitingRequests"
    )]
    NoAutoscalingTarget,
    /// The token budget cannot give every running sequence its decode token.
    #[error(
        "spec.scheduler.tokenBudget ({budget}) must be at least spec.scheduler.maxNumSeqs ({max_num_seqs}): every running decode needs one token of the budget"
    )]
    TokenBudgetBelowMaxNumSeqs {
        /// `scheduler.tokenBudget`.
        budget: i32,
        /// `scheduler.maxNumSeqs`.
        max_num_seqs: i32,
    },
    /// The scheduler may run more sequences than the KV cache has slots for.
    #[error(
        "spec.scheduler.maxNumSeqs ({max_num_seqs}) must not exceed spec.kvCache.maxSeqs ({kv_slots})"
    )]
    MaxNumSeqsAboveKvSlots {
        /// `scheduler.maxNumSeqs`.
        max_num_seqs: i32,
        /// `kvCache.maxSeqs`.
        kv_slots: i32,
    },
}

impl FusedModelSpec {
    /// Checks the cross-field rules; returns every rule broken, in a stable order.
    pub fn validate(&self) -> Result<(), Vec<SpecError>> {
        let mut errors = Vec::new();
        if let Some(autoscaling) = &self.autoscaling {
            if autoscaling.min_replicas > autoscaling.max_replicas {
                errors.push(SpecError::MinReplicasAboveMax {
                    min: autoscaling.min_replicas,
                    max: autoscaling.max_replicas,
                });
            }
            if autoscaling.target_kv_cache_utilization.is_none()
                && autoscaling.target_waiting_requests.is_none()
            {
                errors.push(SpecError::NoAutoscalingTarget);
            }
        }
        let scheduler = &self.scheduler;
        if scheduler.token_budget < scheduler.max_num_seqs {
            errors.push(SpecError::TokenBudgetBelowMaxNumSeqs {
                budget: scheduler.token_budget,
                max_num_seqs: scheduler.max_num_seqs,
            });
        }
        if let Some(kv_slots) = self.kv_cache.max_seqs
            && scheduler.max_num_seqs > kv_slots
        {
            errors.push(SpecError::MaxNumSeqsAboveKvSlots {
                max_num_seqs: scheduler.max_num_seqs,
                kv_slots,
            });
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{AutoscalingSpec, BaseModel, WeightsFormat};

    fn spec_from_json(value: serde_json::Value) -> FusedModelSpec {
        serde_json::from_value(value).expect("test spec is well-formed")
    }

    fn minimal() -> FusedModelSpec {
        spec_from_json(serde_json::json!({
            "baseModel": {"uri": "file:///models/m.gguf", "format": "gguf"}
        }))
    }

    #[test]
    fn defaults_pass() {
        let spec = minimal();
        assert_eq!(
            spec.base_model,
            BaseModel {
                uri: "file:///models/m.gguf".into(),
                format: WeightsFormat::Gguf,
                sha256: None
            }
        );
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn min_replicas_above_max_is_rejected() {
        let mut spec = minimal();
        spec.autoscaling = Some(AutoscalingSpec {
            min_replicas: 5,
            max_replicas: 2,
            target_kv_cache_utilization: Some(0.8),
            target_waiting_requests: None,
        });
        let errors = spec.validate().expect_err("min > max must fail");
        assert_eq!(errors, [SpecError::MinReplicasAboveMax { min: 5, max: 2 }]);
        assert!(
            errors[0]
                .to_string()
                .contains("spec.autoscaling.minReplicas")
        );
    }

    #[test]
    fn scale_to_zero_with_a_target_passes() {
        let mut spec = minimal();
        spec.autoscaling = Some(AutoscalingSpec {
            min_replicas: 0,
            max_replicas: 1,
            target_kv_cache_utilization: None,
            target_waiting_requests: Some(4),
        });
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn autoscaling_without_target_is_rejected() {
        let mut spec = minimal();
        spec.autoscaling = Some(AutoscalingSpec {
            min_replicas: 1,
            max_replicas: 3,
            target_kv_cache_utilization: None,
            target_waiting_requests: None,
        });
        assert_eq!(spec.validate(), Err(vec![SpecError::NoAutoscalingTarget]));
    }

    #[test]
    fn scheduler_and_kv_slot_rules_are_all_reported() {
        let mut spec = minimal();
        spec.scheduler.token_budget = 64;
        spec.scheduler.max_num_seqs = 256;
        spec.kv_cache.max_seqs = Some(128);
        let errors = spec.validate().expect_err("two rules are broken");
        assert_eq!(
            errors,
            [
                SpecError::TokenBudgetBelowMaxNumSeqs {
                    budget: 64,
                    max_num_seqs: 256
                },
                SpecError::MaxNumSeqsAboveKvSlots {
                    max_num_seqs: 256,
                    kv_slots: 128
                },
            ]
        );
        assert!(errors[1].to_string().contains("spec.kvCache.maxSeqs"));
    }
}
