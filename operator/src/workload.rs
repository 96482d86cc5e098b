//! The daemon workload of one FusedModel: a Deployment whose Pods fetch the artifacts into the
//! node-local cache (init containers running `fused-daemon fetch`) and then run
//! `fused-daemon serve` with flags from the spec. Pure functions of the spec and the operator's
//! configuration; it must not call the API server.

use std::collections::BTreeMap;

use fused_crds::{FusedModel, FusedModelSpec, KvLayout};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, ExecAction, HTTPGetAction, HostPathVolumeSource,
    Lifecycle, LifecycleHandler, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use crate::config::OperatorConfig;
use crate::error::{Error, Result};
use crate::labels::{self, TEMPLATE_HASH_ANNOTATION};

/// Name of the serving container.
pub const DAEMON_CONTAINER: &str = "daemon";
/// Port the daemon serves the OpenAI API, `/health`, `/ready` and `/metrics` on.
pub const HTTP_PORT: i32 = 8000;
/// Name of [`HTTP_PORT`] on the container and the Service.
pub const HTTP_PORT_NAME: &str = "http";
/// Where the node-local cache is mounted in the Pod.
pub const CACHE_MOUNT: &str = "/var/cache/fusedmodel";
/// Per-Pod directory holding the links to the fetched artifacts.
pub const ARTIFACTS_MOUNT: &str = "/artifacts";
/// Link to the verified base model.
pub const MODEL_PATH: &str = "/artifacts/model";
/// Link to the verified patch tokenizer.
pub const PATCH_TOKENIZER_PATH: &str = "/artifacts/patch-tokenizer";
/// Where a `pvc://<claim>/<path>` artifact's claim is mounted (then `/pvc/<claim>/<path>`).
pub const PVC_MOUNT_ROOT: &str = "/pvc";
/// Init container fetching the base model.
pub const FETCH_MODEL: &str = "fetch-model";
/// Init container fetching the patch tokenizer.
pub const FETCH_PATCH_TOKENIZER: &str = "fetch-patch-tokenizer";
/// The file a failing fetch writes `Reason: message` to (the container's terminationMessagePath).
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// Extended resource the NVIDIA device plugin advertises.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// preStop sleep: time for endpoints to drop the Pod before the daemon stops accepting.
pub const PRE_STOP_SLEEP_S: i64 = 10;
/// `--drain-timeout-s`: time in-flight requests get to finish after SIGTERM.
pub const DRAIN_TIMEOUT_S: i64 = 120;
/// terminationGracePeriodSeconds: the preStop sleep, the drain, and a margin.
pub const TERMINATION_GRACE_S: i64 = PRE_STOP_SLEEP_S + DRAIN_TIMEOUT_S + 10;
/// Deployment progress deadline: downloading large weights takes a while.
pub const PROGRESS_DEADLINE_S: i32 = 1800;

const CACHE_VOLUME: &str = "artifact-cache";
const ARTIFACTS_VOLUME: &str = "artifacts";

/// An artifact as an init container fetches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSource {
    /// URI given to `fused-daemon fetch` (`pvc://` rewritten to `file:///pvc/…`).
    pub uri: String,
    /// PersistentVolumeClaim to mount read-only for a `pvc://` URI.
    pub claim: Option<String>,
}

/// How `fused-daemon fetch` reaches `uri`; a `pvc://` URI without a path inside the claim is an
/// error message.
pub fn fetch_source(uri: &str) -> Result<FetchSource, String> {
    let Some(rest) = uri.strip_prefix("pvc://") else {
        return Ok(FetchSource {
            uri: uri.to_owned(),
            claim: None,
        });
    };
    match rest.split_once('/') {
        Some((claim, path)) if !claim.is_empty() && !path.is_empty() => Ok(FetchSource {
            uri: format!("file://{PVC_MOUNT_ROOT}/{claim}/{path}"),
            claim: Some(claim.to_owned()),
        }),
        _ => Err(format!(
            "{uri}: expected pvc://<claim>/<path inside the claim>"
        )),
    }
}

/// The Deployment serving `model`.
pub fn deployment(model: &FusedModel, config: &OperatorConfig) -> Result<Deployment> {
    let (name, _) = labels::name_and_namespace(model)?;
    let mut template = pod_template(model, &name, config)?;
    let hash = template_hash(&template)?;
    template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(TEMPLATE_HASH_ANNOTATION.to_owned(), hash);
    Ok(Deployment {
        metadata: labels::child_metadata(model)?,
        spec: Some(DeploymentSpec {
            replicas: Some(model.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(labels::selector(&name)),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            progress_deadline_seconds: Some(PROGRESS_DEADLINE_S),
            revision_history_limit: Some(3),
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// The digest of a Pod template (first 16 hex digits of its JSON's SHA-256).
pub fn template_hash(template: &PodTemplateSpec) -> Result<String> {
    let json = serde_json::to_vec(template).map_err(Error::serialize("the Pod template"))?;
    Ok(hex::encode(&Sha256::digest(&json)[..8]))
}

fn pod_template(
    model: &FusedModel,
    name: &str,
    config: &OperatorConfig,
) -> Result<PodTemplateSpec> {
    let spec = &model.spec;
    let image = spec
        .image
        .clone()
        .unwrap_or_else(|| config.daemon_image.clone());
    let mut volumes = vec![
        Volume {
            name: CACHE_VOLUME.into(),
            host_path: Some(HostPathVolumeSource {
                path: config.cache_host_path.clone(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Volume::default()
        },
        Volume {
            name: ARTIFACTS_VOLUME.into(),
            empty_dir: Some(Default::default()),
            ..Volume::default()
        },
    ];
    let mut init_containers = Vec::new();
    let mut artifacts = vec![(
        FETCH_MODEL,
        &spec.base_model.uri,
        spec.base_model.sha256.as_deref(),
        MODEL_PATH,
    )];
    if let Some(patch) = &spec.patch_tokenizer {
        artifacts.push((
            FETCH_PATCH_TOKENIZER,
            &patch.uri,
            Some(patch.sha256.as_str()),
            PATCH_TOKENIZER_PATH,
        ));
    }
    for (container, uri, sha256, out_link) in artifacts {
        let source = fetch_source(uri).map_err(Error::InvalidSpec)?;
        let mut mounts = vec![cache_mount(false), artifacts_mount(false)];
        if let Some(claim) = &source.claim {
            let volume = format!("pvc-{}", volumes.len());
            volumes.push(Volume {
                name: volume.clone(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: claim.clone(),
                    read_only: Some(true),
                }),
                ..Volume::default()
            });
            mounts.push(VolumeMount {
                name: volume,
                mount_path: format!("{PVC_MOUNT_ROOT}/{claim}"),
                read_only: Some(true),
                ..VolumeMount::default()
            });
        }
        let mut args = vec!["fetch".to_owned(), "--uri".into(), source.uri];
        if let Some(sha256) = sha256 {
            args.extend(["--sha256".into(), sha256.to_owned()]);
        }
        args.extend([
            "--cache-dir".into(),
            CACHE_MOUNT.into(),
            "--out-link".into(),
            out_link.into(),
            "--termination-log".into(),
            TERMINATION_LOG.into(),
        ]);
        init_containers.push(Container {
            name: container.into(),
            image: Some(image.clone()),
            command: Some(vec!["fused-daemon".into()]),
            args: Some(args),
            volume_mounts: Some(mounts),
            resources: Some(resources(spec, false)),
            security_context: Some(security_context()),
            termination_message_path: Some(TERMINATION_LOG.into()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Container::default()
        });
    }
    let http_get = |path: &str| HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::String(HTTP_PORT_NAME.into()),
        ..HTTPGetAction::default()
    };
    let daemon = Container {
        name: DAEMON_CONTAINER.into(),
        image: Some(image),
        command: Some(vec!["fused-daemon".into()]),
        args: Some(daemon_args(spec, name)),
        ports: Some(vec![ContainerPort {
            name: Some(HTTP_PORT_NAME.into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // Loading weights can take many minutes: liveness starts once /health first answers.
        startup_probe: Some(Probe {
            http_get: Some(http_get("/health")),
            period_seconds: Some(10),
            failure_threshold: Some(180),
            timeout_seconds: Some(5),
            ..Probe::default()
        }),
        readiness_probe: Some(Probe {
            http_get: Some(http_get("/ready")),
            period_seconds: Some(5),
            failure_threshold: Some(2),
            timeout_seconds: Some(3),
            ..Probe::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(http_get("/health")),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            timeout_seconds: Some(5),
            ..Probe::default()
        }),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec!["sleep".into(), PRE_STOP_SLEEP_S.to_string()]),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        resources: Some(resources(spec, true)),
        security_context: Some(security_context()),
        volume_mounts: Some(vec![cache_mount(true), artifacts_mount(true)]),
        // A daemon that exits on a fatal error says why on its last log lines: they become the
        // container's termination message, which the status reports.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    };
    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels::labels(name)),
            annotations: Some(BTreeMap::from([
                ("prometheus.io/scrape".to_owned(), "true".to_owned()),
                ("prometheus.io/port".to_owned(), HTTP_PORT.to_string()),
                ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
            ])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            init_containers: Some(init_containers),
            containers: vec![daemon],
            volumes: Some(volumes),
            node_selector: spec.resources.node_selector.clone(),
            tolerations: spec.resources.tolerations.clone(),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_S),
            ..PodSpec::default()
        }),
    })
}

/// `fused-daemon serve` flags for `spec` (see `fused-daemon serve --help`).
pub fn daemon_args(spec: &FusedModelSpec, name: &str) -> Vec<String> {
    let device = if spec.resources.gpus > 0 {
        "cuda"
    } else {
        "cpu"
    };
    let layout = match spec.kv_cache.layout {
        KvLayout::PerLayer => "perLayer",
        KvLayout::Interleaved => "interleaved",
    };
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--host".into(),
        "0.0.0.0".into(),
        "--port".into(),
        HTTP_PORT.to_string(),
        "--model".into(),
        MODEL_PATH.into(),
        "--device".into(),
        device.into(),
        "--kv-block-size".into(),
        spec.kv_cache.block_size.to_string(),
        "--kv-layout".into(),
        layout.into(),
        // The daemon has one number for KV slots and running sequences; the schedulers' limit
        // is the binding one (validate() keeps it at most kvCache.maxSeqs).
        "--max-seqs".into(),
        spec.scheduler.max_num_seqs.to_string(),
    ];
    if let Some(max_context) = spec.kv_cache.max_context_len {
        args.extend(["--max-context".into(), max_context.to_string()]);
    }
    args.extend([
        "--token-budget".into(),
        spec.scheduler.token_budget.to_string(),
        "--max-queue".into(),
        spec.scheduler.max_queue.to_string(),
        "--served-model-name".into(),
        spec.served_model_name
            .clone()
            .unwrap_or_else(|| name.to_owned()),
        "--drain-timeout-s".into(),
        DRAIN_TIMEOUT_S.to_string(),
    ]);
    if spec.patch_tokenizer.is_some() {
        args.extend(["--patch-tokenizer".into(), PATCH_TOKENIZER_PATH.into()]);
    }
    if device == "cuda" {
        args.extend([
            "--gpu-memory-utilization".into(),
            spec.kv_cache.gpu_memory_utilization.to_string(),
        ]);
    }
    args
}

/// Requests and limits of one container: CPU and memory from the spec, GPUs for the daemon.
fn resources(spec: &FusedModelSpec, with_gpus: bool) -> ResourceRequirements {
    let mut amounts = BTreeMap::new();
    if let Some(cpu) = &spec.resources.cpu {
        amounts.insert("cpu".to_owned(), cpu.clone());
    }
    if let Some(memory) = &spec.resources.memory {
        amounts.insert("memory".to_owned(), memory.clone());
    }
    if with_gpus && spec.resources.gpus > 0 {
        amounts.insert(
            GPU_RESOURCE.to_owned(),
            Quantity(spec.resources.gpus.to_string()),
        );
    }
    let amounts = (!amounts.is_empty()).then_some(amounts);
    ResourceRequirements {
        requests: amounts.clone(),
        limits: amounts,
        ..ResourceRequirements::default()
    }
}

fn security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        ..SecurityContext::default()
    }
}

// `readOnly: false` is left out: the API server omits it, and the live object must match.
fn cache_mount(read_only: bool) -> VolumeMount {
    VolumeMount {
        name: CACHE_VOLUME.into(),
        mount_path: CACHE_MOUNT.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn artifacts_mount(read_only: bool) -> VolumeMount {
    VolumeMount {
        name: ARTIFACTS_VOLUME.into(),
        mount_path: ARTIFACTS_MOUNT.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fused_crds::FusedModelSpec;

    fn model(spec: serde_json::Value) -> FusedModel {
        let spec: FusedModelSpec = serde_json::from_value(spec).expect("test spec parses");
        let mut model = FusedModel::new("m", spec);
        model.metadata.namespace = Some("ns".into());
        model.metadata.uid = Some("uid-1".into());
        model
    }

    fn pod_spec(deployment: &Deployment) -> PodSpec {
        deployment
            .spec
            .clone()
            .and_then(|s| s.template.spec)
            .expect("a pod spec")
    }

    #[test]
    fn spec_image_overrides_the_operator_image_in_every_container() {
        let config = OperatorConfig::with_daemon_image("operator/default:1");
        let base = serde_json::json!({"baseModel": {"uri": "file:///m.gguf", "format": "gguf"}});
        let default = pod_spec(&deployment(&model(base.clone()), &config).expect("builds"));
        assert_eq!(
            default.containers[0].image.as_deref(),
            Some("operator/default:1")
        );
        let mut custom = base;
        custom["image"] = "team/daemon:dev".into();
        let custom = pod_spec(&deployment(&model(custom), &config).expect("builds"));
        let images: Vec<_> = custom
            .init_containers
            .iter()
            .flatten()
            .chain(&custom.containers)
            .map(|c| c.image.as_deref())
            .collect();
        assert_eq!(images, [Some("team/daemon:dev"), Some("team/daemon:dev")]);
    }

    #[test]
    fn pvc_artifacts_mount_their_claim_read_only() {
        let config = OperatorConfig::with_daemon_image("d:1");
        let spec = serde_json::json!({"baseModel": {"uri": "pvc://weights/llama/7b", "format": "safetensors"}});
        let pod = pod_spec(&deployment(&model(spec), &config).expect("builds"));
        let fetch = &pod.init_containers.as_ref().expect("init containers")[0];
        let args = fetch.args.clone().expect("args");
        assert!(
            args.windows(2)
                .any(|w| w == ["--uri", "file:///pvc/weights/llama/7b"]),
            "{args:?}"
        );
        let claim = pod
            .volumes
            .iter()
            .flatten()
            .find_map(|v| v.persistent_volume_claim.as_ref())
            .expect("a PVC volume");
        assert_eq!(
            (claim.claim_name.as_str(), claim.read_only),
            ("weights", Some(true))
        );
        assert!(
            fetch
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.mount_path == "/pvc/weights" && m.read_only == Some(true))
        );
        assert_eq!(
            fetch_source("pvc://only-claim"),
            Err("pvc://only-claim: expected pvc://<claim>/<path inside the claim>".into())
        );
    }

    #[test]
    fn the_template_hash_changes_with_the_template_only() {
        let config = OperatorConfig::with_daemon_image("d:1");
        let spec = serde_json::json!({"baseModel": {"uri": "file:///m.gguf", "format": "gguf"}});
        let hash = |model: &FusedModel| {
            deployment(model, &config)
                .expect("builds")
                .spec
                .and_then(|s| s.template.metadata)
                .and_then(|m| m.annotations)
                .and_then(|a| a.get(TEMPLATE_HASH_ANNOTATION).cloned())
                .expect("a template hash")
        };
        let one = model(spec.clone());
        let mut scaled = spec.clone();
        scaled["replicas"] = 5.into();
        let mut bigger_pages = spec;
        bigger_pages["kvCache"] = serde_json::json!({"blockSize": 4194304});
        assert_eq!(hash(&one), hash(&model(scaled)), "scaling is no rollout");
        assert_ne!(hash(&one), hash(&model(bigger_pages)));
    }
}
