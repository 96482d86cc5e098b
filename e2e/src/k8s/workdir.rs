//! Work directories of test clusters under `$TMPDIR/fused-e2e/`.
//!
//! A cluster's directory (etcd data, credentials, logs, kubeconfig) is removed when the cluster
//! is dropped. Directories left by a test process that died (or kept a cluster in a `static`)
//! are swept by the next cluster start: each records its owner's PID, and a directory whose
//! owner no longer runs is deleted. Directories of live processes are never touched.

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::error::{ClusterError, Result};

const OWNER_FILE: &str = "owner.pid";

/// Root of all cluster work directories.
pub fn root() -> PathBuf {
    std::env::temp_dir().join("fused-e2e")
}

/// Creates a fresh cluster directory owned by this process, after sweeping stale ones.
pub fn create() -> Result<TempDir> {
    let root = root();
    std::fs::create_dir_all(&root)
        .map_err(ClusterError::io(format!("creating {}", root.display())))?;
    sweep_stale(&root);
    let dir = tempfile::Builder::new()
        .prefix("cluster-")
        .tempdir_in(&root)
        .map_err(ClusterError::io(format!(
            "creating a work directory in {}",
            root.display()
        )))?;
    std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
        .map_err(ClusterError::io("recording the work directory's owner"))?;
    Ok(dir)
}

/// Removes the directories under `root` whose owner process has exited.
fn sweep_stale(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for dir in entries.flatten().map(|e| e.path()) {
        let Some(owner) = std::fs::read_to_string(dir.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{owner}")).exists()
            && let Err(e) = std::fs::remove_dir_all(&dir)
        {
            eprintln!("fused-e2e: removing stale {}: {e}", dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_removes_dead_owners_only() {
        let root = tempfile::tempdir().expect("temp dir");
        let live = root.path().join("live");
        let dead = root.path().join("dead");
        let unowned = root.path().join("unowned");
        for dir in [&live, &dead, &unowned] {
            std::fs::create_dir(dir).expect("mkdir");
        }
        std::fs::write(live.join(OWNER_FILE), std::process::id().to_string()).expect("write");
        // A process that has exited and been reaped: its PID has no /proc entry.
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let dead_pid = child.id();
        child.wait().expect("reap true");
        std::fs::write(dead.join(OWNER_FILE), dead_pid.to_string()).expect("write");

        sweep_stale(root.path());
        assert!(live.exists(), "the live owner's directory stays");
        assert!(
            unowned.exists(),
            "a directory without an owner file is left alone"
        );
        assert_eq!(
            dead.exists(),
            Path::new(&format!("/proc/{dead_pid}")).exists()
        );
    }
}
