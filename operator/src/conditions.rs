//! The FusedModel's status from what was observed: `observedGeneration`, replica counts, the
//! scale selector, the endpoint, and the conditions `Ready`, `Progressing`, `Degraded`,
//! `ArtifactsReady` and `Scheduled`, each with a CamelCase reason and the generation it
//! describes. `Ready` is False while a rollout is in progress. Pure: the caller writes it.

use fused_crds::{FusedModel, FusedModelStatus, condition_reason, condition_type};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::labels;
use crate::observe::{ARTIFACT_DIGEST_MISMATCH, Artifacts, Observed, Rollout, Scheduling};
use crate::service::endpoint;

/// Reasons the operator uses beyond those in `fused_crds::condition_reason`.
pub mod reason {
    /// The rollout finished: every replica runs the current spec.
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    /// The Deployment exceeded its progress deadline.
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    /// Nothing is wrong.
    pub const AS_EXPECTED: &str = "AsExpected";
    /// Artifacts fetched and their digests verified.
    pub const VERIFIED: &str = "Verified";
    /// Waiting for replicas to exist or to start fetching.
    pub const PENDING: &str = "Pending";
    /// Every replica is on a node.
    pub const ALL_SCHEDULED: &str = "AllReplicasScheduled";
    /// The scheduler found no node, for a reason other than GPUs.
    pub const UNSCHEDULABLE: &str = "Unschedulable";
    /// Replicas run the current spec but not all are ready.
    pub const REPLICAS_NOT_READY: &str = "ReplicasNotReady";
}

/// Reasons that mean someone has to act; their transitions are Warning events.
pub const WARNING_REASONS: &[&str] = &[
    condition_reason::INVALID_SPEC,
    condition_reason::INSUFFICIENT_GPU,
    reason::UNSCHEDULABLE,
    reason::PROGRESS_DEADLINE_EXCEEDED,
    ARTIFACT_DIGEST_MISMATCH,
];

/// What the spec checks found (empty: none) and what the cluster shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Findings<'a> {
    /// Spec problems (see `spec_check`).
    pub problems: &'a [String],
    /// The cluster's view.
    pub observed: &'a Observed,
}

/// The new status of `model`, keeping each condition's `lastTransitionTime` unless its status
/// changes (then `now`).
pub fn status(model: &FusedModel, findings: &Findings<'_>, now: Time) -> FusedModelStatus {
    let observed = findings.observed;
    let generation = model.metadata.generation;
    let name = model.metadata.name.clone().unwrap_or_default();
    let namespace = model.metadata.namespace.clone().unwrap_or_default();
    let mut status = model.status.clone().unwrap_or_default();
    status.observed_generation = generation;
    status.replicas = observed.replicas;
    status.ready_replicas = observed.ready_replicas;
    status.selector = Some(labels::selector_string(&name));
    status.endpoint = Some(endpoint(&name, &namespace));
    for condition in conditions(model.spec.replicas, findings, generation) {
        status.set_condition(condition, now.clone());
    }
    status
}

fn conditions(desired: i32, findings: &Findings<'_>, generation: Option<i64>) -> Vec<Condition> {
    let observed = findings.observed;
    let make = |type_: &str, state: State, reason: &str, message: String| Condition {
        type_: type_.to_owned(),
        status: state.as_str().to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: Time(Default::default()),
    };
    let invalid = (!findings.problems.is_empty()).then(|| findings.problems.join("; "));
    let artifact_failure = match &observed.artifacts {
        Artifacts::Failed { reason, message } => Some((reason.as_str(), message.clone())),
        _ => None,
    };
    let unschedulable = match &observed.scheduling {
        Scheduling::Unschedulable {
            insufficient_gpu,
            message,
        } => Some((
            if *insufficient_gpu {
                condition_reason::INSUFFICIENT_GPU
            } else {
                reason::UNSCHEDULABLE
            },
            message.clone(),
        )),
        _ => None,
    };

    // Ready: the first thing that stops the endpoint from serving the current spec.
    let ready = if let Some(message) = &invalid {
        make(
            condition_type::READY,
            State::False,
            condition_reason::INVALID_SPEC,
            message.clone(),
        )
    } else if let Some((reason, message)) = &artifact_failure {
        make(condition_type::READY, State::False, reason, message.clone())
    } else if let Some((reason, message)) = &unschedulable {
        make(condition_type::READY, State::False, reason, message.clone())
    } else if let Some(stalled) = &observed.stalled {
        make(
            condition_type::READY,
            State::False,
            &stalled.reason,
            stalled.message.clone(),
        )
    } else if let Rollout::Stuck(message) = &observed.rollout {
        make(
            condition_type::READY,
            State::False,
            reason::PROGRESS_DEADLINE_EXCEEDED,
            message.clone(),
        )
    } else if let Rollout::InProgress(message) = &observed.rollout {
        make(
            condition_type::READY,
            State::False,
            condition_reason::ROLLING_OUT,
            message.clone(),
        )
    } else if desired == 0 {
        make(
            condition_type::READY,
            State::False,
            condition_reason::SCALED_TO_ZERO,
            "no replica runs: scale the FusedModel up to serve".into(),
        )
    } else if observed.ready_replicas < desired {
        make(
            condition_type::READY,
            State::False,
            reason::REPLICAS_NOT_READY,
            format!(
                "{} of {desired} replicas are ready",
                observed.ready_replicas
            ),
        )
    } else {
        make(
            condition_type::READY,
            State::True,
            condition_reason::AVAILABLE,
            format!(
                "{} of {desired} replicas serve requests",
                observed.ready_replicas
            ),
        )
    };

    let progressing = match (&invalid, &observed.rollout) {
        (Some(message), _) => make(
            condition_type::PROGRESSING,
            State::False,
            condition_reason::INVALID_SPEC,
            message.clone(),
        ),
        (None, Rollout::InProgress(message)) => make(
            condition_type::PROGRESSING,
            State::True,
            condition_reason::ROLLING_OUT,
            message.clone(),
        ),
        (None, Rollout::Stuck(message)) => make(
            condition_type::PROGRESSING,
            State::False,
            reason::PROGRESS_DEADLINE_EXCEEDED,
            message.clone(),
        ),
        (None, Rollout::Complete) => make(
            condition_type::PROGRESSING,
            State::False,
            reason::ROLLOUT_COMPLETE,
            "every replica runs the current spec".into(),
        ),
    };

    let degraded = if let Some(message) = &invalid {
        make(
            condition_type::DEGRADED,
            State::True,
            condition_reason::INVALID_SPEC,
            message.clone(),
        )
    } else if let Some((ARTIFACT_DIGEST_MISMATCH, message)) = &artifact_failure {
        make(
            condition_type::DEGRADED,
            State::True,
            ARTIFACT_DIGEST_MISMATCH,
            message.clone(),
        )
    } else if let Some(stalled) = &observed.stalled {
        // A container that cannot run (image, crash loop): the kubelet retries, someone acts.
        make(
            condition_type::DEGRADED,
            State::True,
            &stalled.reason,
            stalled.message.clone(),
        )
    } else if let Rollout::Stuck(message) = &observed.rollout {
        make(
            condition_type::DEGRADED,
            State::True,
            reason::PROGRESS_DEADLINE_EXCEEDED,
            message.clone(),
        )
    } else {
        make(
            condition_type::DEGRADED,
            State::False,
            reason::AS_EXPECTED,
            "nothing needs attention".into(),
        )
    };

    let artifacts = match &observed.artifacts {
        Artifacts::Ready => make(
            condition_type::ARTIFACTS_READY,
            State::True,
            reason::VERIFIED,
            "every replica of the current spec has its artifacts, digests verified".into(),
        ),
        Artifacts::Failed { reason, message } => make(
            condition_type::ARTIFACTS_READY,
            State::False,
            reason,
            message.clone(),
        ),
        Artifacts::Fetching(message) => make(
            condition_type::ARTIFACTS_READY,
            State::False,
            condition_reason::DOWNLOADING,
            message.clone(),
        ),
        Artifacts::Unknown(message) => make(
            condition_type::ARTIFACTS_READY,
            State::Unknown,
            reason::PENDING,
            message.clone(),
        ),
    };

    let scheduled = match &observed.scheduling {
        Scheduling::NoReplicas => make(
            condition_type::SCHEDULED,
            State::True,
            condition_reason::SCALED_TO_ZERO,
            "no replica is wanted".into(),
        ),
        Scheduling::Scheduled => make(
            condition_type::SCHEDULED,
            State::True,
            reason::ALL_SCHEDULED,
            "every replica of the current spec is on a node".into(),
        ),
        Scheduling::Pending(message) => make(
            condition_type::SCHEDULED,
            State::False,
            reason::PENDING,
            message.clone(),
        ),
        Scheduling::Unschedulable { .. } => {
            let (reason, message) = unschedulable.clone().unwrap_or_default();
            make(condition_type::SCHEDULED, State::False, reason, message)
        }
    };

    vec![ready, progressing, degraded, artifacts, scheduled]
}

#[derive(Debug, Clone, Copy)]
enum State {
    True,
    False,
    Unknown,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}
