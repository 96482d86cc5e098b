//! What the operator is configured with: the daemon image and the image policy for
//! `spec.image`, the image of the fetch step, where artifacts are cached (and how much), the
//! user the Pods run as, the GPU memory it assumes per GPU (for spec checks), which namespace it
//! watches, how often the autoscaler runs, where the activator is, and the default disruption
//! budget of the replicas. The binary's flags flatten this; tests build it directly.

use clap::{Args, ValueEnum};
use fused_crds::validate::min_available_is_valid;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// The daemon image used when a FusedModel sets no `spec.image`.
pub const DEFAULT_DAEMON_IMAGE: &str = concat!(
    "ghcr.io/fusedmodel/fused-daemon:",
    env!("CARGO_PKG_VERSION")
);
/// Default node-local hostPath of the artifact cache (with `--artifact-cache hostPath`).
pub const DEFAULT_CACHE_HOST_PATH: &str = "/var/cache/fusedmodel";
/// Default user and group of every container of a daemon Pod (the images' non-root user).
pub const DEFAULT_RUN_AS_USER: i64 = 65532;
/// Default largest artifact a fetch accepts: 256 GiB (a 70B model in bf16 is ~140 GB).
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 256 << 30;
/// Default `--model-min-available`: one replica stays up through a node drain.
pub const DEFAULT_MODEL_MIN_AVAILABLE: &str = "1";

/// Host memory a GPU daemon requests by default. The daemon streams weights to the device through
/// 128 MiB of page-locked staging: loading a 13.5 GB checkpoint peaked at 0.29 GB of host RSS on
/// the H200 (docs/BENCHMARKS.md), so its host memory does not grow with the model.
pub const DEFAULT_GPU_DAEMON_MEMORY: &str = "2Gi";

/// Where the Pods of a FusedModel keep fetched artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "camelCase")]
pub enum ArtifactCache {
    /// A per-Pod emptyDir: nothing shared, every Pod downloads (restricted Pod Security).
    EmptyDir,
    /// A PersistentVolumeClaim named by `--cache-claim` in each FusedModel's namespace,
    /// shared by the replicas that mount it (restricted Pod Security).
    Pvc,
    /// A hostPath on each node (`--cache-host-path`), shared by the replicas on the node; a
    /// hostPath volume fails the baseline and restricted Pod Security Standards.
    HostPath,
}

/// Settings every reconcile reads.
#[derive(Debug, Clone, Args)]
pub struct OperatorConfig {
    /// Daemon image for FusedModels without `spec.image`.
    #[arg(long, env = "FUSED_DAEMON_IMAGE", default_value = DEFAULT_DAEMON_IMAGE)]
    pub daemon_image: String,
    /// Image of the artifact fetch step (`fused-daemon fetch`), whatever `spec.image` says
    /// (default: the daemon image).
    #[arg(long, env = "FUSED_FETCH_IMAGE")]
    pub fetch_image: Option<String>,
    /// Images a FusedModel may name in `spec.image`, besides the daemon image (repeat the flag
    /// or separate with commas; a trailing `*` matches any suffix, e.g. `registry.corp/ml/*`).
    #[arg(long = "allowed-image", value_delimiter = ',')]
    pub allowed_images: Vec<String>,
    /// Let a FusedModel run any `spec.image` (single-tenant clusters only).
    #[arg(long)]
    pub allow_any_image: bool,
    /// Where fetched artifacts are kept: `emptyDir` (per Pod), `pvc` or `hostPath`.
    #[arg(long, value_enum, default_value = "emptyDir")]
    pub artifact_cache: ArtifactCache,
    /// Node-local directory of `--artifact-cache hostPath`; it must be writable by
    /// `--run-as-user`.
    #[arg(long, default_value = DEFAULT_CACHE_HOST_PATH)]
    pub cache_host_path: String,
    /// PersistentVolumeClaim of `--artifact-cache pvc`, in each FusedModel's namespace.
    #[arg(long)]
    pub cache_claim: Option<String>,
    /// Size cap of the artifact cache in bytes: beyond it the least recently used entries no
    /// Pod holds are evicted (and the emptyDir gets this sizeLimit). Default: no cap.
    #[arg(long)]
    pub cache_max_bytes: Option<u64>,
    /// Largest artifact a fetch accepts, in bytes; `spec.artifacts.maxBytes` may only lower it.
    #[arg(long, default_value_t = DEFAULT_MAX_ARTIFACT_BYTES)]
    pub max_artifact_bytes: u64,
    /// Let fetches reach link-local and cloud metadata addresses (169.254.0.0/16,
    /// fd00:ec2::254); refused by default.
    #[arg(long)]
    pub fetch_allow_link_local: bool,
    /// User and group id every container of a daemon Pod runs as (non-root).
    #[arg(long, default_value_t = DEFAULT_RUN_AS_USER)]
    pub run_as_user: i64,
    /// Memory of one GPU in MiB, for the check that a replica's KV budget holds a page per
    /// sequence (default 81920: an 80 GiB GPU; set it to your smallest GPU).
    #[arg(long, default_value_t = 81920)]
    pub gpu_memory_mib: u64,
    /// Watch FusedModels in this namespace only (default: all namespaces).
    #[arg(long, env = "FUSED_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Seconds between two rounds of the autoscaler (read every replica's `/metrics`, decide,
    /// scale).
    #[arg(long, default_value_t = 5)]
    pub autoscale_interval_s: u64,
    /// The activator's Service, `namespace/name`: a scale-to-zero FusedModel's Service points at
    /// its ready endpoints while no replica serves. Without it no FusedModel goes to zero
    /// (nothing would wake it).
    #[arg(long, env = "FUSED_ACTIVATOR_SERVICE")]
    pub activator_service: Option<String>,
    /// The PodDisruptionBudget of each FusedModel that sets no `spec.disruptionBudget`: replicas
    /// that must stay up through node drains, a count (`1`) or a percentage (`50%`); `0` writes
    /// none.
    #[arg(long, default_value = DEFAULT_MODEL_MIN_AVAILABLE)]
    pub model_min_available: String,
    /// Memory request of a GPU replica's daemon container when its FusedModel sets no
    /// `spec.resources.memory` (a request, no limit: the scheduler places the Pod by it, nothing
    /// kills it for a burst); empty: none.
    #[arg(long, default_value = DEFAULT_GPU_DAEMON_MEMORY)]
    pub gpu_daemon_memory: String,
}

impl OperatorConfig {
    /// The defaults of the flags, with `daemon_image` set.
    pub fn with_daemon_image(daemon_image: impl Into<String>) -> Self {
        Self {
            daemon_image: daemon_image.into(),
            fetch_image: None,
            allowed_images: Vec::new(),
            allow_any_image: false,
            artifact_cache: ArtifactCache::EmptyDir,
            cache_host_path: DEFAULT_CACHE_HOST_PATH.to_owned(),
            cache_claim: None,
            cache_max_bytes: None,
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
            fetch_allow_link_local: false,
            run_as_user: DEFAULT_RUN_AS_USER,
            gpu_memory_mib: 81920,
            watch_namespace: None,
            autoscale_interval_s: 5,
            activator_service: None,
            model_min_available: DEFAULT_MODEL_MIN_AVAILABLE.to_owned(),
            gpu_daemon_memory: DEFAULT_GPU_DAEMON_MEMORY.to_owned(),
        }
    }

    /// Checks that flags which need each other are given together.
    pub fn check(&self) -> Result<(), String> {
        if self.artifact_cache == ArtifactCache::Pvc && self.cache_claim.is_none() {
            return Err("--artifact-cache pvc needs --cache-claim <name>".into());
        }
        if self.autoscale_interval_s == 0 {
            return Err("--autoscale-interval-s must be at least 1".into());
        }
        if let Some(service) = &self.activator_service
            && self.activator().is_none()
        {
            return Err(format!(
                "--activator-service {service:?} must be <namespace>/<name>"
            ));
        }
        if self.model_min_available().is_none() {
            return Err(format!(
                "--model-min-available {:?} must be a count (1) or a percentage (50%)",
                self.model_min_available
            ));
        }
        if !self.gpu_daemon_memory.is_empty()
            && crate::quantity::parse(&self.gpu_daemon_memory).is_none_or(|bytes| bytes <= 0.0)
        {
            return Err(format!(
                "--gpu-daemon-memory {:?} must be a positive quantity (2Gi) or empty",
                self.gpu_daemon_memory
            ));
        }
        if self.run_as_user <= 0 {
            return Err(format!(
                "--run-as-user {} must be a non-root user id",
                self.run_as_user
            ));
        }
        Ok(())
    }

    /// The activator's Service as `(namespace, name)`, when one is configured.
    pub fn activator(&self) -> Option<(&str, &str)> {
        let (namespace, name) = self.activator_service.as_deref()?.split_once('/')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains('/'))
            .then_some((namespace, name))
    }

    /// `--model-min-available` as a PodDisruptionBudget value, or `None` if it is neither a count
    /// nor a percentage.
    pub fn model_min_available(&self) -> Option<IntOrString> {
        let text = self.model_min_available.trim();
        let value = match text.parse::<i32>() {
            Ok(count) => IntOrString::Int(count),
            Err(_) => IntOrString::String(text.to_owned()),
        };
        min_available_is_valid(&value).then_some(value)
    }

    /// The image of the fetch step.
    pub fn fetch_image(&self) -> &str {
        self.fetch_image.as_deref().unwrap_or(&self.daemon_image)
    }

    /// Whether the image policy lets a FusedModel run `image`.
    pub fn image_allowed(&self, image: &str) -> bool {
        self.allow_any_image
            || image == self.daemon_image
            || self
                .allowed_images
                .iter()
                .any(|allowed| match allowed.strip_suffix('*') {
                    Some(prefix) => image.starts_with(prefix),
                    None => image == allowed,
                })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_daemon_image_is_allowed_by_default() {
        let mut config = OperatorConfig::with_daemon_image("ghcr.io/f/daemon:1");
        assert!(config.image_allowed("ghcr.io/f/daemon:1"));
        assert!(!config.image_allowed("evil.example/daemon:1"));
        assert!(!config.image_allowed("ghcr.io/f/daemon:2"));
        config.allowed_images = vec!["registry.corp/ml/*".into(), "team/exact:3".into()];
        assert!(config.image_allowed("registry.corp/ml/daemon:dev"));
        assert!(config.image_allowed("team/exact:3"));
        assert!(!config.image_allowed("team/exact:4"));
        assert!(!config.image_allowed("registry.corp/other/x"));
        config.allow_any_image = true;
        assert!(config.image_allowed("evil.example/daemon:1"));
    }

    #[test]
    fn the_activator_service_is_namespace_slash_name() {
        let mut config = OperatorConfig::with_daemon_image("d:1");
        assert_eq!(config.activator(), None);
        config.activator_service = Some("fused-system/fused-operator-activator".into());
        assert_eq!(
            config.activator(),
            Some(("fused-system", "fused-operator-activator"))
        );
        assert!(config.check().is_ok());
        for bad in ["activator", "/a", "ns/", "a/b/c"] {
            config.activator_service = Some(bad.into());
            assert!(config.check().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_default_disruption_budget_is_a_count_or_a_percentage() {
        let mut config = OperatorConfig::with_daemon_image("d:1");
        assert_eq!(config.model_min_available(), Some(IntOrString::Int(1)));
        config.model_min_available = "50%".into();
        assert_eq!(
            config.model_min_available(),
            Some(IntOrString::String("50%".into()))
        );
        assert!(config.check().is_ok());
        for bad in ["-1", "150%", "half", ""] {
            config.model_min_available = bad.into();
            let error = config.check().expect_err(bad);
            assert!(error.contains("--model-min-available"), "{error}");
        }
    }
}
