//! What the cluster says about a FusedModel's replicas: the Deployment's rollout, and — from the
//! Pods of the current template — whether the artifacts were fetched and verified (init
//! container statuses and their `Reason: message` termination messages) and whether the Pods
//! found nodes (`PodScheduled`). Pure: it reads objects, it does not fetch them.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use crate::labels::TEMPLATE_HASH_ANNOTATION;
use crate::workload::GPU_RESOURCE;

/// Reason `fused-daemon fetch` writes when an artifact's SHA-256 differs from the spec's.
pub const ARTIFACT_DIGEST_MISMATCH: &str = "ArtifactDigestMismatch";
/// Reason used when a fetch failed without a `Reason: message` termination message.
pub const ARTIFACT_FETCH_FAILED: &str = "ArtifactFetchFailed";

/// The Deployment's rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// Every replica runs the current template and is available.
    Complete,
    /// Replicas are being created or replaced (the message says how far).
    InProgress(String),
    /// The Deployment exceeded its progress deadline.
    Stuck(String),
}

/// The artifacts, as the current Pods' fetch init containers report them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Artifacts {
    /// No current Pod has got far enough to tell.
    Unknown(String),
    /// Being fetched.
    Fetching(String),
    /// Fetched and verified in every current Pod.
    Ready,
    /// A fetch failed: the reason from its termination message, and the message.
    Failed {
        /// CamelCase reason (`ArtifactDigestMismatch`, `ArtifactUnreachable`, …).
        reason: String,
        /// What failed, with the Pod and container.
        message: String,
    },
}

/// Where the current Pods stand with the scheduler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scheduling {
    /// No replica is wanted.
    NoReplicas,
    /// Every current Pod is on a node.
    Scheduled,
    /// Some Pods wait for a node and the scheduler has not said why (yet).
    Pending(String),
    /// The scheduler found no node for a Pod; `insufficient_gpu` when GPUs were lacking.
    Unschedulable {
        /// The scheduler's message names `nvidia.com/gpu`.
        insufficient_gpu: bool,
        /// The scheduler's message.
        message: String,
    },
}

/// Everything the status is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Replicas of the Deployment (all templates).
    pub replicas: i32,
    /// Ready replicas of the Deployment.
    pub ready_replicas: i32,
    /// The rollout.
    pub rollout: Rollout,
    /// The artifacts.
    pub artifacts: Artifacts,
    /// The scheduling.
    pub scheduling: Scheduling,
}

/// Reads `deployment` (absent before the first apply) and the FusedModel's `pods`.
pub fn observe(deployment: Option<&Deployment>, pods: &[Pod], desired_replicas: i32) -> Observed {
    let status = deployment
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let template_hash = deployment.and_then(|d| {
        d.spec
            .as_ref()?
            .template
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(TEMPLATE_HASH_ANNOTATION)
            .cloned()
    });
    let current: Vec<&Pod> = pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
        .filter(|pod| {
            template_hash.is_some()
                && pod
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(TEMPLATE_HASH_ANNOTATION))
                    == template_hash.as_ref()
        })
        .collect();
    Observed {
        replicas: status.replicas.unwrap_or(0),
        ready_replicas: status.ready_replicas.unwrap_or(0),
        rollout: rollout(deployment),
        artifacts: artifacts(&current),
        scheduling: scheduling(&current, desired_replicas),
    }
}

/// `kubectl rollout status`'s reading of a Deployment.
fn rollout(deployment: Option<&Deployment>) -> Rollout {
    let Some(deployment) = deployment else {
        return Rollout::InProgress("the Deployment does not exist yet".into());
    };
    let status = deployment.status.clone().unwrap_or_default();
    let generation = deployment.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Rollout::InProgress(format!(
            "waiting for the Deployment controller to observe generation {generation}"
        ));
    }
    if let Some(condition) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return Rollout::Stuck(condition.message.clone().unwrap_or_default());
    }
    let desired = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let replicas = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    if updated < desired {
        Rollout::InProgress(format!(
            "{updated} of {desired} replicas run the current spec"
        ))
    } else if replicas > updated {
        Rollout::InProgress(format!(
            "{} old replicas are being replaced",
            replicas - updated
        ))
    } else if available < updated {
        Rollout::InProgress(format!("{available} of {updated} replicas are available"))
    } else {
        Rollout::Complete
    }
}

fn artifacts(current: &[&Pod]) -> Artifacts {
    if current.is_empty() {
        return Artifacts::Unknown("no replica of the current spec exists".into());
    }
    let mut failures = Vec::new();
    let mut fetching = None;
    let mut all_ready = true;
    for pod in current {
        let pod_name = pod.metadata.name.as_deref().unwrap_or("?");
        let status = pod.status.clone().unwrap_or_default();
        let initialized = status
            .conditions
            .iter()
            .flatten()
            .any(|c| (c.type_ == "Initialized" || c.type_ == "Ready") && c.status == "True");
        let fetches: Vec<&ContainerStatus> = status
            .init_container_statuses
            .iter()
            .flatten()
            .filter(|c| c.name.starts_with("fetch-"))
            .collect();
        for container in &fetches {
            if let Some((reason, message)) = failure(container) {
                failures.push((
                    reason,
                    format!(
                        "Pod {pod_name}, init container {}: {message}",
                        container.name
                    ),
                ));
            } else if container
                .state
                .as_ref()
                .is_some_and(|s| s.running.is_some())
            {
                fetching
                    .get_or_insert_with(|| format!("Pod {pod_name} is running {}", container.name));
            }
        }
        let fetched = !fetches.is_empty()
            && fetches.iter().all(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some_and(|t| t.exit_code == 0)
            });
        all_ready &= initialized || fetched;
    }
    // A digest mismatch is reported first: it needs a spec change, the others may heal.
    failures.sort_by_key(|(reason, _)| reason != ARTIFACT_DIGEST_MISMATCH);
    if let Some((reason, message)) = failures.into_iter().next() {
        Artifacts::Failed { reason, message }
    } else if all_ready {
        Artifacts::Ready
    } else if let Some(message) = fetching {
        Artifacts::Fetching(message)
    } else {
        Artifacts::Unknown("waiting for the replicas to start fetching".into())
    }
}

/// The reason and message of a failed fetch container (now, or in its last run).
fn failure(container: &ContainerStatus) -> Option<(String, String)> {
    let terminated = [container.state.as_ref(), container.last_state.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|s| s.terminated.as_ref())
        .find(|t| t.exit_code != 0)?;
    let text = terminated.message.clone().unwrap_or_default();
    let text = text.trim();
    match text.split_once(": ") {
        Some((reason, message))
            if !reason.is_empty() && reason.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            Some((reason.to_owned(), message.to_owned()))
        }
        _ => Some((
            ARTIFACT_FETCH_FAILED.to_owned(),
            if text.is_empty() {
                format!("exited with code {}", terminated.exit_code)
            } else {
                text.to_owned()
            },
        )),
    }
}

fn scheduling(current: &[&Pod], desired_replicas: i32) -> Scheduling {
    if desired_replicas == 0 {
        return Scheduling::NoReplicas;
    }
    let mut pending = 0;
    for pod in current {
        let status = pod.status.clone().unwrap_or_default();
        let scheduled = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled");
        match scheduled {
            Some(c) if c.status == "False" && c.reason.as_deref() == Some("Unschedulable") => {
                let message = c.message.clone().unwrap_or_default();
                return Scheduling::Unschedulable {
                    insufficient_gpu: message.contains(GPU_RESOURCE),
                    message,
                };
            }
            Some(c) if c.status == "True" => {}
            _ if pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.as_ref())
                .is_some() => {}
            _ => pending += 1,
        }
    }
    if current.is_empty() {
        Scheduling::Pending("no replica of the current spec exists yet".into())
    } else if pending > 0 {
        Scheduling::Pending(format!(
            "{pending} of {} replicas wait for a node",
            current.len()
        ))
    } else {
        Scheduling::Scheduled
    }
}
