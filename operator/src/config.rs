//! What the operator is configured with: the daemon image and the image policy for
//! `spec.image`, the image of the fetch step, where artifacts are cached (and how much), the
//! user the Pods run as, the GPU memory it assumes per GPU (for spec checks), and which
//! namespace it watches. The binary's flags flatten this; tests build it directly.

use clap::{Args, ValueEnum};

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
        }
    }

    /// Checks that flags which need each other are given together.
    pub fn check(&self) -> Result<(), String> {
        if self.artifact_cache == ArtifactCache::Pvc && self.cache_claim.is_none() {
            return Err("--artifact-cache pvc needs --cache-claim <name>".into());
        }
        if self.run_as_user <= 0 {
            return Err(format!(
                "--run-as-user {} must be a non-root user id",
                self.run_as_user
            ));
        }
        Ok(())
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
}
