//! Locates the executables the harness runs: kube-apiserver and kube-controller-manager from
//! `$FUSED_K8S_DIR` (default `/opt/k8s/bin`), etcd, openssl, kubectl and helm from there or
//! `PATH`. It never installs anything: a missing binary is an error naming the setup script.

use std::path::{Path, PathBuf};

use super::error::{ClusterError, Result};

/// Default directory of the Kubernetes binaries built by `scripts/setup-k8s.sh`.
pub const DEFAULT_K8S_BIN_DIR: &str = "/opt/k8s/bin";

/// The directory holding kube-apiserver and friends: `$FUSED_K8S_DIR` or `/opt/k8s/bin`.
pub fn k8s_bin_dir() -> PathBuf {
    std::env::var_os("FUSED_K8S_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_K8S_BIN_DIR))
}

/// Finds `name` in the k8s binary directory, then on `PATH`.
pub fn locate(name: &'static str) -> Result<PathBuf> {
    let mut dirs = vec![k8s_bin_dir()];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| ClusterError::MissingBinary {
            name,
            searched: dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
}

/// Finds `name` only in the k8s binary directory (the control-plane binaries built there).
pub fn locate_in_k8s_dir(name: &'static str) -> Result<PathBuf> {
    locate_in(&k8s_bin_dir(), name)
}

fn locate_in(dir: &Path, name: &'static str) -> Result<PathBuf> {
    let candidate = dir.join(name);
    if is_executable(&candidate) {
        Ok(candidate)
    } else {
        Err(ClusterError::MissingBinary {
            name,
            searched: format!("{} ($FUSED_K8S_DIR)", dir.display()),
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_names_the_setup_script() {
        let dir = tempfile::tempdir().expect("temp dir");
        let message = locate_in(dir.path(), "kube-apiserver")
            .expect_err("empty dir")
            .to_string();
        assert!(message.contains("kube-apiserver not found"), "{message}");
        assert!(message.contains("run scripts/setup-k8s.sh"), "{message}");
    }

    #[test]
    fn a_non_executable_file_is_not_a_binary() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("etcd"), "#!/bin/sh\n").expect("write");
        assert!(locate_in(dir.path(), "etcd").is_err());
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("etcd"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");
        assert_eq!(
            locate_in(dir.path(), "etcd").expect("executable now"),
            dir.path().join("etcd")
        );
    }
}
