//! The fetch step of a daemon Pod: one init container per artifact running
//! `fused-daemon fetch` in the operator's fetch image (never `spec.image`), with the artifact
//! cache volume the operator's configuration picks, the namespace's own directory in it, the
//! credentials Secret of `spec.artifacts` as environment variables (the fetch step only), and
//! the size limit. Pure; it must not call the API server.

use fused_crds::FusedModel;
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvFromSource, HostPathVolumeSource,
    PersistentVolumeClaimVolumeSource, SecretEnvSource, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::config::{ArtifactCache, OperatorConfig};
use crate::error::{Error, Result};
use crate::pod_security;
use crate::workload::resources;

/// Where the artifact cache volume is mounted in the fetch containers.
pub const CACHE_MOUNT: &str = "/var/cache/fusedmodel";
/// Directory of the cache holding one namespace's entries (`<CACHE_MOUNT>/<this>/<namespace>`).
pub const TENANTS_DIR: &str = "tenants";
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
/// Name of the artifact cache volume.
pub const CACHE_VOLUME: &str = "artifact-cache";
/// Name of the per-Pod volume of links to the artifacts.
pub const ARTIFACTS_VOLUME: &str = "artifacts";

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

/// The namespace's directory of the cache, relative to the cache volume.
pub fn tenant_subpath(namespace: &str) -> String {
    format!("{TENANTS_DIR}/{namespace}")
}

/// The artifact cache volume the configuration asks for.
pub fn cache_volume(config: &OperatorConfig) -> Result<Volume> {
    let mut volume = Volume {
        name: CACHE_VOLUME.into(),
        ..Volume::default()
    };
    match config.artifact_cache {
        ArtifactCache::EmptyDir => {
            volume.empty_dir = Some(EmptyDirVolumeSource {
                size_limit: config
                    .cache_max_bytes
                    .map(|bytes| Quantity(bytes.to_string())),
                ..EmptyDirVolumeSource::default()
            });
        }
        ArtifactCache::Pvc => {
            let claim = config
                .cache_claim
                .clone()
                .ok_or_else(|| Error::Config("--artifact-cache pvc needs --cache-claim".into()))?;
            volume.persistent_volume_claim = Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim,
                read_only: None,
            });
        }
        ArtifactCache::HostPath => {
            volume.host_path = Some(HostPathVolumeSource {
                path: config.cache_host_path.clone(),
                type_: Some("DirectoryOrCreate".into()),
            });
        }
    }
    Ok(volume)
}

/// The read-only mount of the namespace's cache directory in the serving container, at the
/// path the fetch step's links point to.
pub fn read_only_cache_mount(namespace: &str) -> VolumeMount {
    let subpath = tenant_subpath(namespace);
    VolumeMount {
        name: CACHE_VOLUME.into(),
        mount_path: format!("{CACHE_MOUNT}/{subpath}"),
        sub_path: Some(subpath),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The per-Pod artifacts directory, read-write for the fetch step, read-only for the daemon.
// `readOnly: false` is left out: the API server omits it, and the live object must match.
pub fn artifacts_mount(read_only: bool) -> VolumeMount {
    VolumeMount {
        name: ARTIFACTS_VOLUME.into(),
        mount_path: ARTIFACTS_MOUNT.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// The init containers fetching `model`'s artifacts; volumes they need beyond the cache and
/// the artifacts directory (`pvc://` claims) are appended to `volumes`.
pub fn fetch_containers(
    model: &FusedModel,
    namespace: &str,
    config: &OperatorConfig,
    volumes: &mut Vec<Volume>,
) -> Result<Vec<Container>> {
    let spec = &model.spec;
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
    let artifacts_spec = spec.artifacts.clone().unwrap_or_default();
    let max_bytes = artifacts_spec
        .max_bytes
        .and_then(|bytes| u64::try_from(bytes).ok())
        .unwrap_or(config.max_artifact_bytes);
    let credentials = artifacts_spec.credentials_secret_ref.map(|secret| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.name,
                optional: None,
            }),
            ..EnvFromSource::default()
        }]
    });
    let mut containers = Vec::new();
    for (container, uri, sha256, out_link) in artifacts {
        let source = fetch_source(uri).map_err(Error::InvalidSpec)?;
        let mut mounts = vec![
            VolumeMount {
                name: CACHE_VOLUME.into(),
                mount_path: CACHE_MOUNT.into(),
                ..VolumeMount::default()
            },
            artifacts_mount(false),
        ];
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
        // file:// sources are read from the fetch image's filesystem: the image is part of
        // what the URI means, so it scopes the cache entry of an unpinned artifact.
        let scope = if source.uri.starts_with("file://") && source.claim.is_none() {
            format!("{namespace} {}", config.fetch_image())
        } else {
            namespace.to_owned()
        };
        let mut args = vec!["fetch".to_owned(), "--uri".into(), source.uri];
        if let Some(sha256) = sha256 {
            args.extend(["--sha256".into(), sha256.to_owned()]);
        }
        args.extend([
            "--cache-dir".into(),
            format!("{CACHE_MOUNT}/{}", tenant_subpath(namespace)),
            "--scope".into(),
            scope,
            "--out-link".into(),
            out_link.into(),
            "--termination-log".into(),
            TERMINATION_LOG.into(),
            "--max-bytes".into(),
            max_bytes.to_string(),
        ]);
        if let Some(cap) = config.cache_max_bytes {
            args.extend(["--cache-max-bytes".into(), cap.to_string()]);
        }
        if config.fetch_allow_link_local {
            args.push("--allow-link-local".into());
        }
        containers.push(Container {
            name: container.into(),
            image: Some(config.fetch_image().to_owned()),
            command: Some(vec!["fused-daemon".into()]),
            args: Some(args),
            env_from: credentials.clone(),
            volume_mounts: Some(mounts),
            resources: Some(resources(spec, false)),
            security_context: Some(pod_security::container_security_context()),
            termination_message_path: Some(TERMINATION_LOG.into()),
            termination_message_policy: Some("FallbackToLogsOnError".into()),
            ..Container::default()
        });
    }
    Ok(containers)
}
