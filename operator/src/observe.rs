//! What the cluster says about a FusedModel's replicas: the Deployment's rollout, and — from the
//! Pods of the current template — whether the artifacts were fetched and verified (init
//! container statuses and their `Reason: message` termination messages) and whether the Pods
//! found nodes (`PodScheduled`), and whether a container cannot run (the kubelet's waiting
//! reasons: an image it cannot pull, a daemon in a crash loop, with its termination message).
//! Pure: it reads objects, it does not fetch them.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};
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
    /// The first container of a current Pod that cannot run, if any.
    pub stalled: Option<Stalled>,
}

/// The kubelet's waiting reasons that need someone to act (it retries them with back-off).
pub const STALLED_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// A container that cannot run, as the kubelet reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// The kubelet's waiting reason (one of [`STALLED_REASONS`]).
    pub reason: String,
    /// The Pod, the container, the kubelet's message and, after a crash, the container's last
    /// termination message.
    pub message: String,
}

/// Reads `deployment` (absent before the first apply) and the FusedModel's `pods`.
pub fn observe(deployment: Option<&Deployment>, pods: &[Pod], desired_replicas: i32) -> Observed {
    let status = deployment
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let template_hash = deployment.and_then(template_hash);
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
        stalled: current.iter().find_map(|pod| stalled(pod)),
    }
}

/// The template hash annotation of a Deployment's Pod template.
pub fn template_hash(deployment: &Deployment) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(TEMPLATE_HASH_ANNOTATION)
        .cloned()
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
    } else if available < updated && !rollout_finished(&status) {
        Rollout::InProgress(format!("{available} of {updated} replicas are available"))
    } else {
        Rollout::Complete
    }
}

/// The Deployment controller says the new ReplicaSet became available: a replica that goes down
/// afterwards (a crash, a killed container) is not a rollout, it is a replica not ready.
fn rollout_finished(status: &DeploymentStatus) -> bool {
    status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing"
            && c.status == "True"
            && c.reason.as_deref() == Some("NewReplicaSetAvailable")
    })
}

/// Failed runs after which a container that is running again but not ready is still in its
/// crash loop: the kubelet's `CrashLoopBackOff` shows only between attempts, and the status would
/// otherwise flap with every attempt. One failure (a killed container restarting) is not a loop.
const CRASH_LOOP_RESTARTS: i32 = 2;

/// The first container of `pod` waiting for a [`STALLED_REASONS`] reason, or started again but
/// not ready after [`CRASH_LOOP_RESTARTS`] failed runs. Fetch containers in a crash loop are left
/// to [`artifacts`], which reads their `Artifact…` reasons.
fn stalled(pod: &Pod) -> Option<Stalled> {
    let status = pod.status.as_ref()?;
    let pod_name = pod.metadata.name.as_deref().unwrap_or("?");
    let inits = status.init_container_statuses.iter().flatten();
    let mains = status.container_statuses.iter().flatten();
    inits.chain(mains).find_map(|container| {
        let state = container.state.as_ref()?;
        let last_failure = container
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .filter(|t| t.exit_code != 0);
        let (reason, detail) = match &state.waiting {
            Some(waiting) => (
                waiting.reason.as_deref()?,
                waiting.message.clone().unwrap_or_default(),
            ),
            None if !container.ready
                && container.restart_count >= CRASH_LOOP_RESTARTS
                && last_failure.is_some() =>
            {
                (
                    "CrashLoopBackOff",
                    format!(
                        "started again after {} restarts, not ready",
                        container.restart_count
                    ),
                )
            }
            None => return None,
        };
        if !STALLED_REASONS.contains(&reason)
            || (reason == "CrashLoopBackOff" && container.name.starts_with("fetch-"))
        {
            return None;
        }
        let mut message = format!("Pod {pod_name}, container {}: {reason}", container.name);
        if !detail.is_empty() {
            message.push_str(&format!(" ({detail})"));
        }
        if let Some(last) = last_failure {
            let said = last.message.as_deref().map(str::trim).unwrap_or_default();
            message.push_str(&format!("; it exited with code {}", last.exit_code));
            if !said.is_empty() {
                message.push_str(&format!(": {said}"));
            }
        }
        Some(Stalled {
            reason: reason.to_owned(),
            message,
        })
    })
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

/// The reason and message of a failed fetch container (now, or in its last run): the
/// `Artifact…` reason `fused-daemon fetch` wrote, or [`ARTIFACT_FETCH_FAILED`] for any other
/// termination message (a crash, an out-of-memory kill).
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
            if reason.starts_with("Artifact")
                && reason.chars().all(|c| c.is_ascii_alphanumeric()) =>
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

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec};
    use serde_json::json;

    fn pod(hash: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("p-{hash}"), "annotations": {TEMPLATE_HASH_ANNOTATION: hash}},
            "status": status,
        }))
        .expect("test Pod")
    }

    fn deployment(hash: &str, generation: i64, status: DeploymentStatus) -> Deployment {
        let mut deployment = Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                ..DeploymentSpec::default()
            }),
            status: Some(status),
            ..Deployment::default()
        };
        deployment.metadata.generation = Some(generation);
        let spec = deployment.spec.as_mut().expect("set above");
        spec.template.metadata = Some(Default::default());
        spec.template
            .metadata
            .as_mut()
            .expect("set above")
            .annotations = Some([(TEMPLATE_HASH_ANNOTATION.to_owned(), hash.to_owned())].into());
        deployment
    }

    fn failed_fetch(message: &str) -> serde_json::Value {
        json!({"initContainerStatuses": [{"name": "fetch-model", "ready": false, "restartCount": 2,
            "image": "i", "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "message": message}}}]})
    }

    #[test]
    fn fetch_failures_carry_the_reason_of_the_termination_message() {
        let current = deployment("new", 1, DeploymentStatus::default());
        let pods = [
            pod(
                "new",
                failed_fetch("ArtifactUnreachable: http://x: unreachable (refused)"),
            ),
            pod(
                "new",
                failed_fetch("ArtifactDigestMismatch: file:///m: SHA-256 is a, expected b"),
            ),
        ];
        let observed = observe(Some(&current), &pods, 1);
        assert_eq!(
            observed.artifacts,
            Artifacts::Failed {
                reason: ARTIFACT_DIGEST_MISMATCH.into(),
                message:
                    "Pod p-new, init container fetch-model: file:///m: SHA-256 is a, expected b"
                        .into()
            },
            "a mismatch is reported before other failures"
        );
        let unparsable = [pod("new", failed_fetch("panic: something"))];
        match observe(Some(&current), &unparsable, 1).artifacts {
            Artifacts::Failed { reason, .. } => assert_eq!(reason, ARTIFACT_FETCH_FAILED),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn pods_of_an_older_template_are_not_judged() {
        let current = deployment("new", 1, DeploymentStatus::default());
        let old = [pod("old", failed_fetch("ArtifactDigestMismatch: x"))];
        assert!(matches!(
            observe(Some(&current), &old, 1).artifacts,
            Artifacts::Unknown(_)
        ));
    }

    #[test]
    fn gpu_shortage_is_told_apart_from_other_scheduling_failures() {
        let current = deployment("h", 1, DeploymentStatus::default());
        let unschedulable = |message: &str| {
            pod(
                "h",
                json!({"conditions": [{"type": "PodScheduled", "status": "False",
                    "reason": "Unschedulable", "message": message}]}),
            )
        };
        let gpu = [unschedulable(
            "0/4 nodes are available: 4 Insufficient nvidia.com/gpu.",
        )];
        assert!(matches!(
            observe(Some(&current), &gpu, 1).scheduling,
            Scheduling::Unschedulable {
                insufficient_gpu: true,
                ..
            }
        ));
        let taint = [unschedulable(
            "0/4 nodes are available: 4 node(s) had taint {x}.",
        )];
        assert!(matches!(
            observe(Some(&current), &taint, 1).scheduling,
            Scheduling::Unschedulable {
                insufficient_gpu: false,
                ..
            }
        ));
        assert_eq!(
            observe(Some(&current), &gpu, 0).scheduling,
            Scheduling::NoReplicas
        );
    }

    #[test]
    fn containers_that_cannot_run_are_reported_with_their_last_message() {
        let current = deployment("h", 1, DeploymentStatus::default());
        let waiting = |name: &str, reason: &str, last: serde_json::Value| {
            json!({"name": name, "ready": false, "restartCount": 3, "image": "i", "imageID": "",
                "state": {"waiting": {"reason": reason, "message": "back-off 40s"}},
                "lastState": last})
        };
        let crashed = json!({"terminated": {"exitCode": 1, "message": "Error: not a GGUF file\n"}});
        let pods = [pod(
            "h",
            json!({"containerStatuses": [waiting("daemon", "CrashLoopBackOff", crashed.clone())]}),
        )];
        assert_eq!(
            observe(Some(&current), &pods, 1).stalled,
            Some(Stalled {
                reason: "CrashLoopBackOff".into(),
                message: "Pod p-h, container daemon: CrashLoopBackOff (back-off 40s); it exited \
                          with code 1: Error: not a GGUF file"
                    .into(),
            })
        );
        let pull = [pod(
            "h",
            json!({"initContainerStatuses": [waiting("fetch-model", "ImagePullBackOff", json!({}))]}),
        )];
        assert!(matches!(
            observe(Some(&current), &pull, 1).stalled,
            Some(Stalled { reason, .. }) if reason == "ImagePullBackOff"
        ));
        // A crash-looping fetch is an artifact failure (its own reason), a starting container
        // or an old template's Pod is nothing.
        let fetch_loop = [pod(
            "h",
            json!({"initContainerStatuses": [waiting("fetch-model", "CrashLoopBackOff", crashed)]}),
        )];
        let starting = [pod(
            "h",
            json!({"containerStatuses": [waiting("daemon", "ContainerCreating", json!({}))]}),
        )];
        let old = [pod(
            "old",
            json!({"containerStatuses": [waiting("daemon", "ErrImagePull", json!({}))]}),
        )];
        for pods in [&fetch_loop[..], &starting, &old] {
            assert_eq!(observe(Some(&current), pods, 1).stalled, None, "{pods:?}");
        }
        // Between back-offs the container runs again: still the loop after two failures, not
        // after one (a killed daemon restarting), and not once it is ready.
        let running = |restarts: i32, ready: bool| {
            pod(
                "h",
                json!({"containerStatuses": [{"name": "daemon", "ready": ready,
                    "restartCount": restarts, "image": "i", "imageID": "",
                    "state": {"running": {}},
                    "lastState": {"terminated": {"exitCode": 1, "message": "Error: x"}}}]}),
            )
        };
        assert!(matches!(
            observe(Some(&current), &[running(2, false)], 1).stalled,
            Some(Stalled { reason, message }) if reason == "CrashLoopBackOff"
                && message.ends_with("(started again after 2 restarts, not ready); it exited with code 1: Error: x")
        ));
        assert_eq!(
            observe(Some(&current), &[running(1, false)], 1).stalled,
            None
        );
        assert_eq!(
            observe(Some(&current), &[running(5, true)], 1).stalled,
            None
        );
    }

    #[test]
    fn a_replica_lost_after_the_rollout_finished_is_no_rollout() {
        let condition = |reason: &str| DeploymentCondition {
            type_: "Progressing".into(),
            status: "True".into(),
            reason: Some(reason.into()),
            ..DeploymentCondition::default()
        };
        let status = |reason: &str| DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(2),
            updated_replicas: Some(2),
            available_replicas: Some(1),
            conditions: Some(vec![condition(reason)]),
            ..DeploymentStatus::default()
        };
        let mut finished = deployment("h", 1, status("NewReplicaSetAvailable"));
        finished.spec.as_mut().expect("a spec").replicas = Some(2);
        assert_eq!(observe(Some(&finished), &[], 2).rollout, Rollout::Complete);
        let mut scaling = deployment("h", 1, status("ReplicaSetUpdated"));
        scaling.spec.as_mut().expect("a spec").replicas = Some(2);
        assert!(matches!(
            observe(Some(&scaling), &[], 2).rollout,
            Rollout::InProgress(m) if m.contains("1 of 2 replicas are available")
        ));
    }

    #[test]
    fn rollout_follows_kubectl_rollout_status() {
        let status =
            |observed: i64, updated: i32, replicas: i32, available: i32| DeploymentStatus {
                observed_generation: Some(observed),
                updated_replicas: Some(updated),
                replicas: Some(replicas),
                available_replicas: Some(available),
                ..DeploymentStatus::default()
            };
        let rollout = |s| observe(Some(&deployment("h", 2, s)), &[], 1).rollout;
        assert!(
            matches!(rollout(status(1, 1, 1, 1)), Rollout::InProgress(m) if m.contains("generation 2"))
        );
        assert!(
            matches!(rollout(status(2, 0, 1, 1)), Rollout::InProgress(m) if m.contains("0 of 1"))
        );
        assert!(
            matches!(rollout(status(2, 1, 2, 1)), Rollout::InProgress(m) if m.contains("old replicas"))
        );
        assert!(
            matches!(rollout(status(2, 1, 1, 0)), Rollout::InProgress(m) if m.contains("available"))
        );
        assert_eq!(rollout(status(2, 1, 1, 1)), Rollout::Complete);
        assert!(matches!(
            observe(None, &[], 1).rollout,
            Rollout::InProgress(_)
        ));
    }
}
