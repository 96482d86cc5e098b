//! The daemon workload of one FusedModel: a Deployment whose Pods fetch the artifacts (the
//! init containers of [`crate::fetch_step`]) and then run `fused-daemon serve` with flags from
//! the spec, under the security contexts of [`crate::pod_security`]. Pure functions of the spec
//! and the operator's configuration; it must not call the API server.

use std::collections::BTreeMap;

use fused_crds::{FusedModel, FusedModelSpec, KvLayout, Quantization};
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction, Lifecycle,
    LifecycleHandler, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SecretKeySelector,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use crate::config::OperatorConfig;
use crate::error::{Error, Result};
use crate::fetch_step::{
    self, ARTIFACTS_VOLUME, MODEL_PATH, PATCH_TOKENIZER_PATH, artifacts_mount,
    read_only_cache_mount,
};
use crate::labels::{self, TEMPLATE_HASH_ANNOTATION};
use crate::pod_security;

/// Name of the serving container.
pub const DAEMON_CONTAINER: &str = "daemon";
/// Port the daemon serves the OpenAI API, `/health`, `/ready` and `/metrics` on.
pub const HTTP_PORT: i32 = 8000;
/// Name of [`HTTP_PORT`] on the container and the Service.
pub const HTTP_PORT_NAME: &str = "http";
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
/// Environment variable the daemon reads its API key from (`fused-daemon serve --api-key`).
pub const API_KEY_ENV: &str = "FUSED_API_KEY";
/// Where the serving container's writable scratch directory (an emptyDir) is mounted.
pub const SCRATCH_MOUNT: &str = "/tmp";

const SCRATCH_VOLUME: &str = "scratch";

/// The Deployment serving `model`.
pub fn deployment(model: &FusedModel, config: &OperatorConfig) -> Result<Deployment> {
    let (name, namespace) = labels::name_and_namespace(model)?;
    let mut template = pod_template(model, &name, &namespace, config)?;
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
    namespace: &str,
    config: &OperatorConfig,
) -> Result<PodTemplateSpec> {
    let spec = &model.spec;
    let mut volumes = vec![
        fetch_step::cache_volume(config)?,
        Volume {
            name: ARTIFACTS_VOLUME.into(),
            empty_dir: Some(Default::default()),
            ..Volume::default()
        },
        Volume {
            name: SCRATCH_VOLUME.into(),
            empty_dir: Some(Default::default()),
            ..Volume::default()
        },
    ];
    let init_containers = fetch_step::fetch_containers(model, namespace, config, &mut volumes)?;
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
            containers: vec![daemon_container(spec, name, namespace, config)],
            volumes: Some(volumes),
            node_selector: spec.resources.node_selector.clone(),
            tolerations: spec.resources.tolerations.clone(),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_S),
            security_context: Some(pod_security::pod_security_context(config.run_as_user)),
            // The daemon talks to no API server: no token in its Pods.
            automount_service_account_token: Some(false),
            ..PodSpec::default()
        }),
    })
}

/// The serving container: `spec.image` (or the daemon image), the cache and the artifacts
/// read-only, a scratch emptyDir, and the API key from its Secret.
fn daemon_container(
    spec: &FusedModelSpec,
    name: &str,
    namespace: &str,
    config: &OperatorConfig,
) -> Container {
    let http_get = |path: &str| HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::String(HTTP_PORT_NAME.into()),
        ..HTTPGetAction::default()
    };
    let mut env = vec![EnvVar {
        // Compiled GPU kernels go to the scratch directory: the root filesystem is read-only.
        name: "FUSED_KERNEL_CACHE".into(),
        value: Some(format!("{SCRATCH_MOUNT}/fused-kernels")),
        ..EnvVar::default()
    }];
    if let Some(secret) = &spec.api_key_secret_ref {
        env.push(EnvVar {
            name: API_KEY_ENV.into(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret.name.clone(),
                    key: secret.key.clone(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    Container {
        name: DAEMON_CONTAINER.into(),
        image: Some(
            spec.image
                .clone()
                .unwrap_or_else(|| config.daemon_image.clone()),
        ),
        command: Some(vec!["fused-daemon".into()]),
        args: Some(daemon_args(spec, name)),
        env: Some(env),
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
        resources: Some(daemon_resources(spec, &config.gpu_daemon_memory)),
        security_context: Some(pod_security::container_security_context()),
        volume_mounts: Some(vec![
            read_only_cache_mount(namespace),
            artifacts_mount(true),
            VolumeMount {
                name: SCRATCH_VOLUME.into(),
                mount_path: SCRATCH_MOUNT.into(),
                ..VolumeMount::default()
            },
        ]),
        // A daemon that exits on a fatal error says why on its last log lines: they become the
        // container's termination message, which the status reports.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Container::default()
    }
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
        // The flag named like the field (vLLM's, the daemon's alias of `--max-seqs`). The daemon
        // has one number for KV slots and running sequences; the scheduler's limit is the
        // binding one (validate() keeps it at most kvCache.maxSeqs).
        "--max-num-seqs".into(),
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
    match spec.quantization {
        Quantization::None => {}
        Quantization::Fp8 => args.extend(["--quantization".into(), "fp8".into()]),
        Quantization::Gguf => args.extend(["--quantization".into(), "gguf".into()]),
    }
    if device == "cuda" {
        args.extend([
            "--gpu-memory-utilization".into(),
            spec.kv_cache.gpu_memory_utilization.to_string(),
        ]);
    }
    args
}

/// The daemon container's requests and limits: [`resources`] with its GPUs, and for a GPU
/// replica whose spec sets no memory, `gpu_memory` (the operator's `--gpu-daemon-memory`) as a
/// request only.
fn daemon_resources(spec: &FusedModelSpec, gpu_memory: &str) -> ResourceRequirements {
    let mut amounts = resources(spec, true);
    if spec.resources.gpus > 0 && spec.resources.memory.is_none() && !gpu_memory.is_empty() {
        let requests = amounts.requests.get_or_insert_with(BTreeMap::new);
        requests.insert("memory".to_owned(), Quantity(gpu_memory.to_owned()));
    }
    amounts
}

/// Requests and limits of one container: CPU and memory from the spec, GPUs for the daemon.
pub(crate) fn resources(spec: &FusedModelSpec, with_gpus: bool) -> ResourceRequirements {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ArtifactCache;
    use crate::fetch_step::fetch_source;
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

    fn containers(pod: &PodSpec) -> Vec<&Container> {
        pod.init_containers
            .iter()
            .flatten()
            .chain(&pod.containers)
            .collect()
    }

    #[test]
    fn the_fetch_step_runs_the_operator_image_whatever_spec_image_says() {
        let mut config = OperatorConfig::with_daemon_image("operator/default:1");
        config.fetch_image = Some("operator/fetch:1".into());
        let mut spec = serde_json::json!({
            "baseModel": {"uri": "file:///m.gguf", "format": "gguf"},
            "patchTokenizer": {"uri": "file:///p", "sha256": "a".repeat(64)}
        });
        let default = pod_spec(&deployment(&model(spec.clone()), &config).expect("builds"));
        spec["image"] = "team/daemon:dev".into();
        let custom = pod_spec(&deployment(&model(spec), &config).expect("builds"));
        let images = |pod: &PodSpec| -> Vec<(String, Option<String>)> {
            containers(pod)
                .iter()
                .map(|c| (c.name.clone(), c.image.clone()))
                .collect()
        };
        let fetch = |daemon: &str| {
            vec![
                (
                    "fetch-model".to_owned(),
                    Some("operator/fetch:1".to_owned()),
                ),
                (
                    "fetch-patch-tokenizer".to_owned(),
                    Some("operator/fetch:1".to_owned()),
                ),
                ("daemon".to_owned(), Some(daemon.to_owned())),
            ]
        };
        assert_eq!(images(&default), fetch("operator/default:1"));
        assert_eq!(images(&custom), fetch("team/daemon:dev"));
        // Without --fetch-image, the fetch step runs the configured daemon image.
        config.fetch_image = None;
        let custom = serde_json::json!({"image": "team/daemon:dev",
            "baseModel": {"uri": "file:///m.gguf", "format": "gguf"}});
        let pod = pod_spec(&deployment(&model(custom), &config).expect("builds"));
        assert_eq!(
            pod.init_containers.expect("init")[0].image.as_deref(),
            Some("operator/default:1")
        );
    }

    #[test]
    fn only_the_fetch_step_writes_the_cache_and_only_its_namespace_directory() {
        let base = serde_json::json!({"baseModel": {"uri": "file:///m.gguf", "format": "gguf"}});
        for cache in [
            ArtifactCache::EmptyDir,
            ArtifactCache::Pvc,
            ArtifactCache::HostPath,
        ] {
            let mut config = OperatorConfig::with_daemon_image("d:1");
            config.artifact_cache = cache;
            config.cache_claim = Some("model-cache".into());
            let pod = pod_spec(&deployment(&model(base.clone()), &config).expect("builds"));
            let fetch = &pod.init_containers.as_ref().expect("init")[0];
            let args = fetch.args.clone().expect("args");
            assert!(
                args.windows(2)
                    .any(|w| w == ["--cache-dir", "/var/cache/fusedmodel/tenants/ns"]),
                "{args:?}"
            );
            let daemon = &pod.containers[0];
            let cache_mounts: Vec<&VolumeMount> = daemon
                .volume_mounts
                .iter()
                .flatten()
                .filter(|m| m.name == "artifact-cache")
                .collect();
            assert_eq!(cache_mounts.len(), 1, "{cache:?}");
            assert_eq!(cache_mounts[0].read_only, Some(true));
            assert_eq!(cache_mounts[0].sub_path.as_deref(), Some("tenants/ns"));
            assert_eq!(
                cache_mounts[0].mount_path,
                "/var/cache/fusedmodel/tenants/ns"
            );
            assert!(
                daemon
                    .volume_mounts
                    .iter()
                    .flatten()
                    .filter(|m| m.name != "scratch")
                    .all(|m| m.read_only == Some(true)),
                "the serving container writes only its scratch directory"
            );
            let volume = &pod.volumes.as_ref().expect("volumes")[0];
            match cache {
                ArtifactCache::EmptyDir => assert!(volume.empty_dir.is_some()),
                ArtifactCache::Pvc => assert_eq!(
                    volume
                        .persistent_volume_claim
                        .as_ref()
                        .map(|c| c.claim_name.as_str()),
                    Some("model-cache")
                ),
                ArtifactCache::HostPath => assert!(volume.host_path.is_some()),
            }
        }
    }

    #[test]
    fn a_gpu_daemon_requests_the_streaming_footprint_unless_the_spec_sets_memory() {
        let daemon = |resources: serde_json::Value, config: &OperatorConfig| {
            let spec = serde_json::json!({
                "baseModel": {"uri": "pvc://weights/m.gguf", "format": "gguf"},
                "resources": resources,
            });
            let pod = pod_spec(&deployment(&model(spec), config).expect("builds"));
            let container = pod.containers.into_iter().next().expect("the daemon");
            let amounts = container.resources.expect("resources");
            let get = |map: &Option<BTreeMap<String, Quantity>>, key: &str| {
                map.as_ref().and_then(|m| m.get(key)).map(|q| q.0.clone())
            };
            (
                get(&amounts.requests, "memory"),
                get(&amounts.limits, "memory"),
                get(&amounts.requests, GPU_RESOURCE),
            )
        };
        let mut config = OperatorConfig::with_daemon_image("d:1");
        let gpu = serde_json::json!({"gpus": 1});
        assert_eq!(
            daemon(gpu.clone(), &config),
            (Some("2Gi".into()), None, Some("1".into())),
            "a request by default, no limit"
        );
        assert_eq!(
            daemon(serde_json::json!({"gpus": 1, "memory": "24Gi"}), &config),
            (Some("24Gi".into()), Some("24Gi".into()), Some("1".into())),
            "the spec's memory wins, as request and limit"
        );
        assert_eq!(
            daemon(serde_json::json!({"gpus": 0}), &config),
            (None, None, None),
            "a CPU replica holds its weights in host memory: no footprint to assume"
        );
        config.gpu_daemon_memory = String::new();
        assert_eq!(daemon(gpu, &config), (None, None, Some("1".into())));
        for bad in ["lots", "0", "-1Gi"] {
            config.gpu_daemon_memory = bad.into();
            assert!(config.check().is_err(), "{bad}");
        }
        config.gpu_daemon_memory = "512Mi".into();
        assert_eq!(config.check(), Ok(()));
    }

    #[test]
    fn daemon_pods_meet_the_restricted_pod_security_standard() {
        let spec = serde_json::json!({
            "baseModel": {"uri": "pvc://weights/m.gguf", "format": "gguf"},
            "patchTokenizer": {"uri": "https://x/p", "sha256": "a".repeat(64)},
            "resources": {"gpus": 1}
        });
        let mut config = OperatorConfig::with_daemon_image("d:1");
        config.cache_claim = Some("cache".into());
        for cache in [ArtifactCache::EmptyDir, ArtifactCache::Pvc] {
            config.artifact_cache = cache;
            let pod = pod_spec(&deployment(&model(spec.clone()), &config).expect("builds"));
            assert_eq!(
                pod_security::restricted_violations(&pod),
                Vec::<String>::new(),
                "{cache:?}"
            );
            let context = pod.security_context.clone().expect("pod context");
            assert_eq!(context.run_as_user, Some(65532));
            assert_eq!(context.fs_group, Some(65532));
            for container in containers(&pod) {
                let context = container.security_context.clone().expect("context");
                assert_eq!(context.read_only_root_filesystem, Some(true));
            }
        }
        // hostPath is the operator's opt-in: the one rule it breaks is the volume type.
        config.artifact_cache = ArtifactCache::HostPath;
        let pod = pod_spec(&deployment(&model(spec), &config).expect("builds"));
        assert_eq!(
            pod_security::restricted_violations(&pod),
            [
                "volume artifact-cache: type hostPath is not allowed (only configMap, csi, \
              downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected, secret)"
            ]
        );
        // And the checker does catch what the operator used to write.
        let mut old = pod.clone();
        old.security_context = None;
        for container in old.init_containers.iter_mut().flatten() {
            container.security_context = None;
        }
        let found = pod_security::restricted_violations(&old);
        assert!(
            found
                .iter()
                .any(|v| v.contains("initContainer fetch-model: runAsNonRoot")),
            "{found:?}"
        );
    }

    #[test]
    fn secrets_reach_the_containers_as_references_never_as_values() {
        let spec = serde_json::json!({
            "baseModel": {"uri": "hf://org/model", "format": "safetensors"},
            "apiKeySecretRef": {"name": "model-api-key", "key": "token"},
            "artifacts": {"credentialsSecretRef": {"name": "hub-credentials"}, "maxBytes": 1000}
        });
        let config = OperatorConfig::with_daemon_image("d:1");
        let pod = pod_spec(&deployment(&model(spec), &config).expect("builds"));
        let daemon = &pod.containers[0];
        let api_key = daemon
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "FUSED_API_KEY")
            .expect("the API key variable");
        assert_eq!(api_key.value, None);
        let selector = api_key
            .value_from
            .as_ref()
            .and_then(|v| v.secret_key_ref.as_ref())
            .expect("a secretKeyRef");
        assert_eq!(
            (selector.name.as_str(), selector.key.as_str()),
            ("model-api-key", "token")
        );
        assert!(
            daemon.env_from.is_none(),
            "credentials are for fetching only"
        );
        let fetch = &pod.init_containers.as_ref().expect("init")[0];
        let from = fetch.env_from.clone().expect("credentials");
        assert_eq!(
            from[0].secret_ref.as_ref().map(|s| s.name.as_str()),
            Some("hub-credentials")
        );
        assert!(
            fetch
                .env
                .iter()
                .flatten()
                .all(|e| e.name != "FUSED_API_KEY"),
            "the fetch step does not see the API key"
        );
        let args = fetch.args.clone().expect("args");
        assert!(
            args.windows(2).any(|w| w == ["--max-bytes", "1000"]),
            "{args:?}"
        );
        for container in containers(&pod) {
            let args = container.args.clone().unwrap_or_default().join(" ");
            assert!(!args.contains("--api-key"), "{args}");
        }
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
