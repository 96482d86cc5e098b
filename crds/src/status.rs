//! The `FusedModel` observed state (`status`) and its condition vocabulary.
//!
//! Holds the status shape the operator writes (by server-side apply) and the condition types
//! and reasons it may use, plus small helpers to read and upsert conditions. It must not decide
//! what a condition should be: that is the operator's job.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a `FusedModel`, written by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FusedModelStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Daemon replicas that exist (scale subresource `statusReplicasPath`).
    #[serde(default)]
    pub replicas: i32,
    /// Daemon replicas that serve requests.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Ready replicas out of the desired ones (`spec.replicas`), as `kubectl get deployment`
    /// prints them: `1/2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Label selector of the replicas' Pods, in string form (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Base URL of the OpenAI-compatible endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// What the autoscaler saw and did (with `spec.autoscaling`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
    /// Current conditions, one per type (`Ready`, `Progressing`, `Degraded`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The autoscaler's view of a FusedModel: each signal's current value against its target, the
/// replicas it wants, and its last change of the replica count and why.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// Who reads the signals (`operator`, `customMetrics`, `external`).
    pub metric_source: String,
    /// Each target signal: its current mean per ready replica and its target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signals: Vec<SignalStatus>,
    /// Replicas whose `/metrics` were read for `signals`.
    #[serde(default)]
    pub scraped_replicas: i32,
    /// Replicas the autoscaler wants now.
    #[serde(default)]
    pub desired_replicas: i32,
    /// When it last changed the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Why it last changed the replica count (`signal current/target: from → to`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// When a replica last had a request waiting or running, or the activator held one (the
    /// clock of `scaleToZeroAfter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_time: Option<Time>,
    /// One line for `kubectl get fm -o wide`: `waiting 3.5/2 kv 0.41/0.8`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// One autoscaling signal: a vLLM series, its current mean per ready replica, and its target.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignalStatus {
    /// The signal, by the series it is read from (`vllm:num_requests_waiting`, ...).
    pub name: String,
    /// Current mean per ready replica, as a decimal (`2.5`); absent before the first scrape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Target mean per replica, as a decimal.
    pub target: String,
}

/// Condition types a `FusedModel` reports.
pub mod condition_type {
    /// The endpoint serves requests with the desired spec.
    pub const READY: &str = "Ready";
    /// A rollout or scale change is under way.
    pub const PROGRESSING: &str = "Progressing";
    /// Something is wrong and needs attention (the reason says what).
    pub const DEGRADED: &str = "Degraded";
    /// Weights and patch tokenizer are downloaded and their digests verified.
    pub const ARTIFACTS_READY: &str = "ArtifactsReady";
    /// The daemon has loaded the weights.
    pub const WEIGHTS_LOADED: &str = "WeightsLoaded";
    /// The daemon has reserved its KV region.
    pub const KV_CACHE_READY: &str = "KVCacheReady";
    /// Every replica has been placed on a node.
    pub const SCHEDULED: &str = "Scheduled";
}

/// CamelCase reasons used in conditions.
pub mod condition_reason {
    /// All replicas serve requests.
    pub const AVAILABLE: &str = "Available";
    /// Replicas are being created or replaced.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Scaled to zero: no replica runs until a request arrives.
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    /// No node has the GPUs a replica asks for.
    pub const INSUFFICIENT_GPU: &str = "InsufficientGPU";
    /// The spec breaks a rule the schema cannot express (see the message).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Downloading an artifact.
    pub const DOWNLOADING: &str = "Downloading";
    /// An artifact's SHA-256 differs from the spec.
    pub const DIGEST_MISMATCH: &str = "DigestMismatch";
    /// The patch tokenizer was built for another base tokenizer.
    pub const TOKENIZER_MISMATCH: &str = "TokenizerMismatch";
    /// An object the operator would write exists and is not owned by this FusedModel.
    pub const NAME_CONFLICT: &str = "NameConflict";
}

impl FusedModelStatus {
    /// The condition of type `type_`, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the condition `type_` is present with status `"True"`.
    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }

    /// Inserts or replaces the condition of the same type. `lastTransitionTime` is kept from the
    /// existing condition when the status did not change (Kubernetes convention), else set to
    /// `now`.
    pub fn set_condition(&mut self, mut condition: Condition, now: Time) {
        match self
            .conditions
            .iter_mut()
            .find(|c| c.type_ == condition.type_)
        {
            Some(existing) => {
                condition.last_transition_time = if existing.status == condition.status {
                    existing.last_transition_time.clone()
                } else {
                    now
                };
                *existing = condition;
            }
            None => {
                condition.last_transition_time = now;
                self.conditions.push(condition);
            }
        }
    }
}

/// A condition with the given type, status (`true` → `"True"`), reason and message, observed
/// at `generation`; `lastTransitionTime` is filled in by [`FusedModelStatus::set_condition`].
pub fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time: Time(Default::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(
            k8s_openapi::jiff::Timestamp::from_second(seconds)
                .expect("small seconds are a valid timestamp"),
        )
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_is_unchanged() {
        let mut status = FusedModelStatus::default();
        status.set_condition(
            condition(
                condition_type::READY,
                false,
                condition_reason::ROLLING_OUT,
                "starting",
                Some(1),
            ),
            at(100),
        );
        status.set_condition(
            condition(
                condition_type::READY,
                false,
                condition_reason::INSUFFICIENT_GPU,
                "no GPU",
                Some(2),
            ),
            at(200),
        );
        let ready = status
            .condition(condition_type::READY)
            .expect("Ready was set");
        assert_eq!(status.conditions.len(), 1);
        assert_eq!(ready.last_transition_time, at(100));
        assert_eq!(ready.reason, condition_reason::INSUFFICIENT_GPU);
        assert_eq!(ready.observed_generation, Some(2));
        assert!(!status.is_true(condition_type::READY));

        status.set_condition(
            condition(
                condition_type::READY,
                true,
                condition_reason::AVAILABLE,
                "serving",
                Some(2),
            ),
            at(300),
        );
        let ready = status
            .condition(condition_type::READY)
            .expect("Ready was set");
        assert_eq!(ready.last_transition_time, at(300));
        assert!(status.is_true(condition_type::READY));
    }

    #[test]
    fn set_condition_adds_each_type_once() {
        let mut status = FusedModelStatus::default();
        for type_ in [
            condition_type::PROGRESSING,
            condition_type::READY,
            condition_type::PROGRESSING,
        ] {
            status.set_condition(
                condition(type_, true, condition_reason::ROLLING_OUT, "", None),
                at(1),
            );
        }
        let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, [condition_type::PROGRESSING, condition_type::READY]);
        assert!(status.condition(condition_type::DEGRADED).is_none());
    }
}
