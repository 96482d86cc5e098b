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
    /// The artifact is larger than the size limit (written by `fused-daemon fetch`).
    pub const ARTIFACT_TOO_LARGE: &str = "ArtifactTooLarge";
    /// The artifact's source is a link-local or metadata address (written by the fetch).
    pub const ARTIFACT_FORBIDDEN_ADDRESS: &str = "ArtifactForbiddenAddress";
}

/// Artifact failures that retrying cannot heal, only a spec change: they make `Degraded` True.
pub const DEGRADING_ARTIFACT_FAILURES: &[&str] = &[
    ARTIFACT_DIGEST_MISMATCH,
    reason::ARTIFACT_TOO_LARGE,
    reason::ARTIFACT_FORBIDDEN_ADDRESS,
];

/// Reasons that mean someone has to act; their transitions are Warning events.
pub const WARNING_REASONS: &[&str] = &[
    condition_reason::INVALID_SPEC,
    condition_reason::NAME_CONFLICT,
    condition_reason::INSUFFICIENT_GPU,
    reason::UNSCHEDULABLE,
    reason::PROGRESS_DEADLINE_EXCEEDED,
    ARTIFACT_DIGEST_MISMATCH,
];

/// What the spec checks found (empty: none), names held by objects that are not ours, and
/// what the cluster shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Findings<'a> {
    /// Spec problems (see `spec_check`).
    pub problems: &'a [String],
    /// Objects the operator would write that exist and are not owned by the FusedModel.
    pub conflicts: &'a [String],
    /// The cluster's view.
    pub observed: &'a Observed,
}

impl Findings<'_> {
    /// The spec problems as one message, if any.
    fn invalid(&self) -> Option<String> {
        (!self.problems.is_empty()).then(|| self.problems.join("; "))
    }

    /// The name conflicts as one message, if any.
    fn conflict(&self) -> Option<String> {
        (!self.conflicts.is_empty()).then(|| self.conflicts.join("; "))
    }

    /// The failed artifact's reason and message, if any.
    fn artifact_failure(&self) -> Option<(&str, String)> {
        match &self.observed.artifacts {
            Artifacts::Failed { reason, message } => Some((reason.as_str(), message.clone())),
            _ => None,
        }
    }

    /// The scheduler's refusal (`InsufficientGPU` or `Unschedulable`) and message, if any.
    fn unschedulable(&self) -> Option<(&'static str, String)> {
        match &self.observed.scheduling {
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
        }
    }
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
    status.ready = Some(format!(
        "{}/{}",
        observed.ready_replicas, model.spec.replicas
    ));
    status.selector = Some(labels::selector_string(&name));
    status.endpoint = Some(endpoint(&name, &namespace));
    let conditions = [
        ready(model.spec.replicas, findings),
        progressing(findings),
        degraded(findings),
        artifacts_ready(findings),
        scheduled(findings),
    ];
    for (type_, state, reason, message) in conditions {
        let condition = Condition {
            type_: type_.to_owned(),
            status: state.as_str().to_owned(),
            reason,
            message,
            observed_generation: generation,
            last_transition_time: Time(Default::default()),
        };
        status.set_condition(condition, now.clone());
    }
    status
}

/// A condition before its generation and time are filled in: type, status, reason, message.
pub type Draft = (&'static str, State, String, String);

/// `Ready`: the first thing that stops the endpoint from serving the current spec.
pub fn ready(desired: i32, findings: &Findings<'_>) -> Draft {
    let observed = findings.observed;
    let (state, reason, message): (State, &str, String) = if let Some(message) = findings.invalid()
    {
        (State::False, condition_reason::INVALID_SPEC, message)
    } else if let Some(message) = findings.conflict() {
        (State::False, condition_reason::NAME_CONFLICT, message)
    } else if let Some((reason, message)) = findings.artifact_failure() {
        (State::False, reason, message)
    } else if let Some((reason, message)) = findings.unschedulable() {
        (State::False, reason, message)
    } else if let Some(stalled) = &observed.stalled {
        // A container that cannot run (image, crash loop), as the kubelet reports it.
        (
            State::False,
            stalled.reason.as_str(),
            stalled.message.clone(),
        )
    } else if let Rollout::Stuck(message) = &observed.rollout {
        (
            State::False,
            reason::PROGRESS_DEADLINE_EXCEEDED,
            message.clone(),
        )
    } else if let Rollout::InProgress(message) = &observed.rollout {
        (State::False, condition_reason::ROLLING_OUT, message.clone())
    } else if desired == 0 {
        (
            State::False,
            condition_reason::SCALED_TO_ZERO,
            "no replica runs: scale the FusedModel up to serve".into(),
        )
    } else if observed.ready_replicas < desired {
        (
            State::False,
            reason::REPLICAS_NOT_READY,
            format!(
                "{} of {desired} replicas are ready",
                observed.ready_replicas
            ),
        )
    } else {
        (
            State::True,
            condition_reason::AVAILABLE,
            format!(
                "{} of {desired} replicas serve requests",
                observed.ready_replicas
            ),
        )
    };
    (condition_type::READY, state, reason.to_owned(), message)
}

/// `Progressing`: True while a rollout is under way.
pub fn progressing(findings: &Findings<'_>) -> Draft {
    let (state, reason, message) = match (findings.invalid(), &findings.observed.rollout) {
        (Some(message), _) => (State::False, condition_reason::INVALID_SPEC, message),
        (None, Rollout::InProgress(message)) => {
            (State::True, condition_reason::ROLLING_OUT, message.clone())
        }
        (None, Rollout::Stuck(message)) => (
            State::False,
            reason::PROGRESS_DEADLINE_EXCEEDED,
            message.clone(),
        ),
        (None, Rollout::Complete) => (
            State::False,
            reason::ROLLOUT_COMPLETE,
            "every replica runs the current spec".into(),
        ),
    };
    (
        condition_type::PROGRESSING,
        state,
        reason.to_owned(),
        message,
    )
}

/// `Degraded`: True when someone has to act (a bad spec, a name conflict, an artifact failure
/// only a spec change heals, a container that cannot run, a stuck rollout).
pub fn degraded(findings: &Findings<'_>) -> Draft {
    let (state, reason, message) = if let Some(message) = findings.invalid() {
        (State::True, condition_reason::INVALID_SPEC, message)
    } else if let Some(message) = findings.conflict() {
        (State::True, condition_reason::NAME_CONFLICT, message)
    } else if let Some((reason, message)) = findings
        .artifact_failure()
        .filter(|(reason, _)| DEGRADING_ARTIFACT_FAILURES.contains(reason))
    {
        (State::True, reason, message)
    } else if let Some(stalled) = &findings.observed.stalled {
        // A container that cannot run (image, crash loop): the kubelet retries, someone acts.
        (
            State::True,
            stalled.reason.as_str(),
            stalled.message.clone(),
        )
    } else if let Rollout::Stuck(message) = &findings.observed.rollout {
        (
            State::True,
            reason::PROGRESS_DEADLINE_EXCEEDED,
            message.clone(),
        )
    } else {
        (
            State::False,
            reason::AS_EXPECTED,
            "nothing needs attention".into(),
        )
    };
    (condition_type::DEGRADED, state, reason.to_owned(), message)
}

/// `ArtifactsReady`: True once every current replica fetched and verified its artifacts.
pub fn artifacts_ready(findings: &Findings<'_>) -> Draft {
    let (state, reason, message): (State, &str, String) = match &findings.observed.artifacts {
        Artifacts::Ready => (
            State::True,
            reason::VERIFIED,
            "every replica of the current spec has its artifacts, digests verified".into(),
        ),
        Artifacts::Failed { reason, message } => (State::False, reason, message.clone()),
        Artifacts::Fetching(message) => {
            (State::False, condition_reason::DOWNLOADING, message.clone())
        }
        Artifacts::Unknown(message) => (State::Unknown, reason::PENDING, message.clone()),
    };
    (
        condition_type::ARTIFACTS_READY,
        state,
        reason.to_owned(),
        message,
    )
}

/// `Scheduled`: True once every current replica is on a node (or none is wanted).
pub fn scheduled(findings: &Findings<'_>) -> Draft {
    let (state, reason, message): (State, &str, String) = match &findings.observed.scheduling {
        Scheduling::NoReplicas => (
            State::True,
            condition_reason::SCALED_TO_ZERO,
            "no replica is wanted".into(),
        ),
        Scheduling::Scheduled => (
            State::True,
            reason::ALL_SCHEDULED,
            "every replica of the current spec is on a node".into(),
        ),
        Scheduling::Pending(message) => (State::False, reason::PENDING, message.clone()),
        Scheduling::Unschedulable { .. } => {
            let (reason, message) = findings.unschedulable().unwrap_or_default();
            (State::False, reason, message)
        }
    };
    (condition_type::SCHEDULED, state, reason.to_owned(), message)
}

/// A condition's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// `True`.
    True,
    /// `False`.
    False,
    /// `Unknown`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::Stalled;

    fn observed_with(artifacts: Artifacts) -> Observed {
        Observed {
            replicas: 1,
            ready_replicas: 0,
            rollout: Rollout::InProgress("starting".into()),
            artifacts,
            scheduling: Scheduling::Scheduled,
            stalled: None,
        }
    }

    #[test]
    fn a_container_that_cannot_run_degrades_and_is_why_it_is_not_ready() {
        let mut observed = observed_with(Artifacts::Ready);
        observed.stalled = Some(Stalled {
            reason: "ImagePullBackOff".into(),
            message: "Pod p, container daemon: ImagePullBackOff".into(),
        });
        let findings = Findings {
            problems: &[],
            conflicts: &[],
            observed: &observed,
        };
        let (_, state, reason, message) = degraded(&findings);
        assert_eq!((state, reason.as_str()), (State::True, "ImagePullBackOff"));
        assert_eq!(message, "Pod p, container daemon: ImagePullBackOff");
        let (_, state, reason, _) = ready(1, &findings);
        assert_eq!((state, reason.as_str()), (State::False, "ImagePullBackOff"));
    }

    #[test]
    fn only_failures_a_spec_change_heals_degrade() {
        for (reason, degrades) in [
            (ARTIFACT_DIGEST_MISMATCH, true),
            (reason::ARTIFACT_TOO_LARGE, true),
            (reason::ARTIFACT_FORBIDDEN_ADDRESS, true),
            ("ArtifactUnreachable", false),
            ("ArtifactAccessDenied", false),
        ] {
            let observed = observed_with(Artifacts::Failed {
                reason: reason.into(),
                message: "m".into(),
            });
            let findings = Findings {
                problems: &[],
                conflicts: &[],
                observed: &observed,
            };
            let (_, state, degraded_reason, _) = degraded(&findings);
            assert_eq!(state == State::True, degrades, "{reason}");
            if degrades {
                assert_eq!(degraded_reason, reason);
            }
            let (_, state, ready_reason, _) = ready(1, &findings);
            assert_eq!((state, ready_reason.as_str()), (State::False, reason));
        }
    }
}
