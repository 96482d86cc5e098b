//! End-to-end harnesses: a real kube-apiserver on loopback (`k8s`) for the CRD, operator and
//! chart tests, and the `fused-bench` serving benchmark client (`bench`).

pub mod bench;
pub mod k8s;

use std::path::PathBuf;

/// The workspace root (the directory holding `charts/`, `examples/`, `crds/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .expect("e2e/ always sits inside the workspace root")
}
