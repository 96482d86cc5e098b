//! What the operator is configured with: the daemon image, the node-local artifact cache, the
//! GPU memory it assumes per GPU (for spec checks), and which namespace it watches. The binary's
//! flags flatten this; tests build it directly.

use clap::Args;

/// The daemon image used when a FusedModel sets no `spec.image`.
pub const DEFAULT_DAEMON_IMAGE: &str = concat!(
    "ghcr.io/fusedmodel/fused-daemon:",
    env!("CARGO_PKG_VERSION")
);
/// Default node-local hostPath of the artifact cache.
pub const DEFAULT_CACHE_HOST_PATH: &str = "/var/cache/fusedmodel";

/// Settings every reconcile reads.
#[derive(Debug, Clone, Args)]
pub struct OperatorConfig {
    /// Daemon image for FusedModels without `spec.image`.
    #[arg(long, env = "FUSED_DAEMON_IMAGE", default_value = DEFAULT_DAEMON_IMAGE)]
    pub daemon_image: String,
    /// Node-local directory (hostPath) where replicas on a node share downloaded artifacts.
    #[arg(long, default_value = DEFAULT_CACHE_HOST_PATH)]
    pub cache_host_path: String,
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
            cache_host_path: DEFAULT_CACHE_HOST_PATH.to_owned(),
            gpu_memory_mib: 81920,
            watch_namespace: None,
        }
    }
}
