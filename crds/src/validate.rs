//! Cross-field rules of a `FusedModelSpec` that a structural schema on Kubernetes 1.20 cannot
//! express (no CEL there), and values the API keeps valid for later but the daemon cannot serve
//! yet (`resources.gpus > 1`). The operator calls [`FusedModelSpec::validate`] and reports failures
//! as a `Degraded` condition with reason `InvalidSpec`; single-field limits stay in the schema.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use thiserror::Error;

use crate::spec::{FusedModelSpec, MetricSource, Quantization, WeightsFormat};

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
    /// Autoscaling by the operator or an HPA is set without any target metric.
    #[error(
        "spec.autoscaling needs a target: set one or more of targetWaitingRequests, targetRunningRequests, targetKvCacheUtilization, targetTokensPerSecond (or metricSource: external)"
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
    /// More than one GPU per replica: the daemon has no tensor parallelism yet.
    #[error(
        "spec.resources.gpus ({gpus}) must be 0 or 1: the daemon serves a model on one GPU (no tensor parallelism yet); run more replicas instead"
    )]
    TensorParallelismUnsupported {
        /// `resources.gpus`.
        gpus: i32,
    },
    /// FP8 weights asked for on a replica without a GPU.
    #[error(
        "spec.quantization fp8 needs spec.resources.gpus: 1 (FP8 weights run on the GPU; the CPU serves the checkpoint's own format)"
    )]
    QuantizationNeedsGpu,
    /// GGUF blocks asked for on weights that are not a GGUF file.
    #[error(
        "spec.quantization gguf keeps a GGUF file's blocks; spec.baseModel.format is safetensors (use none or fp8)"
    )]
    GgufQuantizationNeedsGgufWeights,
    /// `disruptionBudget.minAvailable` is neither a count nor a percentage.
    #[error(
        "spec.disruptionBudget.minAvailable ({value}) must be a count of at least 0 or a percentage from \"0%\" to \"100%\""
    )]
    InvalidMinAvailable {
        /// The value as written.
        value: String,
    },
}

/// Whether `value` is a PodDisruptionBudget count (≥ 0) or a percentage (`"0%"`..`"100%"`).
pub fn min_available_is_valid(value: &IntOrString) -> bool {
    match value {
        IntOrString::Int(count) => *count >= 0,
        IntOrString::String(text) => text
            .strip_suffix('%')
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u32>().ok())
            .is_some_and(|percent| percent <= 100),
    }
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
            if autoscaling.metric_source != MetricSource::External && !autoscaling.has_target() {
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
        if self.resources.gpus > 1 {
            errors.push(SpecError::TensorParallelismUnsupported {
                gpus: self.resources.gpus,
            });
        }
        if self.quantization == Quantization::Fp8 && self.resources.gpus == 0 {
            errors.push(SpecError::QuantizationNeedsGpu);
        }
        if self.quantization == Quantization::Gguf && self.base_model.format != WeightsFormat::Gguf
        {
            errors.push(SpecError::GgufQuantizationNeedsGgufWeights);
        }
        if let Some(budget) = &self.disruption_budget
            && !min_available_is_valid(&budget.min_available)
        {
            errors.push(SpecError::InvalidMinAvailable {
                value: match &budget.min_available {
                    IntOrString::Int(count) => count.to_string(),
                    IntOrString::String(text) => format!("{text:?}"),
                },
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
    use crate::spec::{AutoscalingSpec, BaseModel};
    use serde_json::json;

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
            target_kv_cache_utilization: Some(0.8),
            ..AutoscalingSpec::new(5, 2)
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
            target_waiting_requests: Some(4),
            ..AutoscalingSpec::new(0, 1)
        });
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn autoscaling_without_target_is_rejected() {
        let mut spec = minimal();
        spec.autoscaling = Some(AutoscalingSpec::new(1, 3));
        assert_eq!(spec.validate(), Err(vec![SpecError::NoAutoscalingTarget]));
        // Any one of the four signals is a target.
        for target in [
            AutoscalingSpec {
                target_running_requests: Some(8),
                ..AutoscalingSpec::new(1, 3)
            },
            AutoscalingSpec {
                target_tokens_per_second: Some(200),
                ..AutoscalingSpec::new(1, 3)
            },
        ] {
            spec.autoscaling = Some(target);
            assert_eq!(spec.validate(), Ok(()));
        }
        // KEDA or your own HPA brings its own targets.
        spec.autoscaling = Some(AutoscalingSpec {
            metric_source: MetricSource::External,
            ..AutoscalingSpec::new(1, 3)
        });
        assert_eq!(spec.validate(), Ok(()));
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

    #[test]
    fn more_than_one_gpu_is_refused_until_tensor_parallelism_exists() {
        let mut spec = minimal();
        for gpus in [0, 1] {
            spec.resources.gpus = gpus;
            assert_eq!(spec.validate(), Ok(()), "{gpus} GPU(s)");
        }
        spec.resources.gpus = 2;
        let errors = spec.validate().expect_err("two GPUs per replica");
        assert_eq!(
            errors,
            [SpecError::TensorParallelismUnsupported { gpus: 2 }]
        );
        assert!(
            errors[0].to_string().contains("spec.resources.gpus (2)")
                && errors[0].to_string().contains("tensor parallelism"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn min_available_is_a_count_or_a_percentage() {
        let mut spec = minimal();
        for (value, valid) in [
            (json!(0), true),
            (json!(2), true),
            (json!("0%"), true),
            (json!("50%"), true),
            (json!("100%"), true),
            (json!(-1), false),
            (json!("101%"), false),
            (json!("%"), false),
            (json!("50"), false),
            (json!("-5%"), false),
            (json!("half"), false),
        ] {
            spec.disruption_budget =
                Some(serde_json::from_value(json!({ "minAvailable": value })).expect("budget"));
            assert_eq!(spec.validate().is_ok(), valid, "minAvailable {value}");
        }
        let errors = spec.validate().expect_err("half");
        assert!(
            errors[0].to_string().contains("minAvailable (\"half\")"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn fp8_weights_need_a_gpu() {
        let mut spec = minimal();
        spec.quantization = Quantization::Fp8;
        spec.resources.gpus = 0;
        let errors = spec.validate().expect_err("fp8 on the CPU");
        assert_eq!(errors, [SpecError::QuantizationNeedsGpu]);
        assert!(errors[0].to_string().contains("spec.quantization fp8"));
        spec.resources.gpus = 1;
        assert_eq!(spec.validate(), Ok(()));
    }

    #[test]
    fn gguf_blocks_need_gguf_weights_and_run_on_either_device() {
        let mut spec = minimal();
        spec.quantization = Quantization::Gguf;
        for gpus in [0, 1] {
            spec.resources.gpus = gpus;
            spec.base_model.format = WeightsFormat::Gguf;
            assert_eq!(spec.validate(), Ok(()), "gguf weights, {gpus} GPUs");
            spec.base_model.format = WeightsFormat::Safetensors;
            let errors = spec.validate().expect_err("gguf blocks of safetensors");
            assert_eq!(errors, [SpecError::GgufQuantizationNeedsGgufWeights]);
            assert!(
                errors[0]
                    .to_string()
                    .contains("baseModel.format is safetensors")
            );
        }
    }
}
