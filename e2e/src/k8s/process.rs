//! A control-plane child process that cannot outlive the test process.
//!
//! Each component runs under a tiny `sh` guard: the guard starts the component, and a watcher
//! kills exactly that component (SIGKILL) when the guard's stdin pipe closes, which happens on
//! [`GuardedProcess::stop`], on drop, and when the test process dies for any reason (even
//! SIGKILL or a `static` never dropped). The guard exits with the component's status, so a
//! crashed component is visible through [`GuardedProcess::exited`]. Nothing else is ever
//! signalled.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};

use super::error::{ClusterError, Result};

/// The guard: run "$@" with stdin from /dev/null; a watcher holding the parent's pipe on fd 3
/// kills it when the pipe reaches EOF; remove `$FUSED_GUARD_SCRATCH` (if set) once the component
/// is gone; exit with the component's status.
const GUARD_SCRIPT: &str = r#"exec 3<&0
"$@" </dev/null 3<&- &
component=$!
( read -r _ <&3; kill -9 "$component" 2>/dev/null ) &
watcher=$!
exec 3<&-
wait "$component"; status=$?
kill "$watcher" 2>/dev/null
[ -n "$FUSED_GUARD_SCRATCH" ] && rm -rf -- "$FUSED_GUARD_SCRATCH"
exit "$status""#;

/// A running component (etcd, kube-apiserver, ...) with its log file.
#[derive(Debug)]
pub struct GuardedProcess {
    name: &'static str,
    guard: Child,
    lifeline: Option<ChildStdin>,
    log: PathBuf,
}

impl GuardedProcess {
    /// Starts `program args...` under the guard, stdout and stderr written to `log`.
    pub fn spawn(name: &'static str, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        Self::spawn_with_scratch(name, program, args, log, None)
    }

    /// Like [`spawn`](Self::spawn); `scratch` (e.g. etcd's data directory) is deleted by the
    /// guard as soon as the component is gone, even if the test process died.
    pub fn spawn_with_scratch(
        name: &'static str,
        program: &Path,
        args: &[String],
        log: &Path,
        scratch: Option<&Path>,
    ) -> Result<Self> {
        let log_file =
            File::create(log).map_err(ClusterError::io(format!("creating {}", log.display())))?;
        let log_err = log_file
            .try_clone()
            .map_err(ClusterError::io(format!("duplicating {}", log.display())))?;
        let mut guard = Command::new("sh")
            .arg("-c")
            .arg(GUARD_SCRIPT)
            .arg(format!("fused-guard-{name}"))
            .arg(program)
            .args(args)
            .env("FUSED_GUARD_SCRATCH", scratch.unwrap_or(Path::new("")))
            .stdin(Stdio::piped())
            .stdout(log_file)
            .stderr(log_err)
            .spawn()
            .map_err(ClusterError::io(format!(
                "starting {name} ({})",
                program.display()
            )))?;
        let lifeline = guard.stdin.take();
        Ok(Self {
            name,
            guard,
            lifeline,
            log: log.to_owned(),
        })
    }

    /// Component name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Path of the component's log.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// The exit status if the component has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.guard.try_wait().ok().flatten()
    }

    /// The last `lines` lines of the component's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A `NotReady` error for this component with `reason` and its log tail.
    pub fn not_ready(&self, reason: impl Into<String>) -> ClusterError {
        ClusterError::NotReady {
            component: self.name,
            reason: reason.into(),
            log: self.log.clone(),
            log_tail: self.log_tail(20),
        }
    }

    /// Kills the component (and only it) and reaps its guard. Idempotent.
    pub fn stop(&mut self) {
        // Closing the lifeline makes the watcher kill the component; the guard then exits.
        self.lifeline = None;
        if let Err(e) = self.guard.wait() {
            eprintln!("fused-e2e: waiting for the {} guard: {e}", self.name);
        }
    }
}

impl Drop for GuardedProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sleeper(dir: &Path) -> GuardedProcess {
        GuardedProcess::spawn(
            "sleep",
            Path::new("/bin/sleep"),
            &["300".into()],
            &dir.join("sleep.log"),
        )
        .expect("sleep starts")
    }

    #[test]
    fn stop_kills_the_component() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut process = sleeper(dir.path());
        assert!(process.exited().is_none(), "sleep 300 is still running");
        let started = std::time::Instant::now();
        process.stop();
        let status = process.exited().expect("the guard was reaped");
        assert!(
            !status.success(),
            "a killed component does not exit 0: {status}"
        );
        assert!(started.elapsed().as_secs() < 10, "stop returned promptly");
    }

    #[test]
    fn the_component_dies_when_the_owner_process_dies() {
        // The owner here is `sleep 0.3`, holding the write end of the guard's stdin; when it
        // exits the kernel closes the pipe, exactly as when a test process dies.
        let started = std::time::Instant::now();
        let status = Command::new("sh")
            .arg("-c")
            .arg(r#"sleep 0.3 | sh -c "$GUARD" fused-guard-test /bin/sleep 300"#)
            .env("GUARD", GUARD_SCRIPT)
            .stderr(Stdio::null())
            .status()
            .expect("sh runs");
        assert!(
            !status.success(),
            "sleep 300 was killed, not finished: {status}"
        );
        assert!(
            started.elapsed().as_secs() < 30,
            "the guard did not wait for sleep 300"
        );
    }

    #[test]
    fn scratch_is_removed_once_the_component_is_gone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch).expect("mkdir scratch");
        std::fs::write(scratch.join("data"), "x").expect("write scratch");
        let mut process = GuardedProcess::spawn_with_scratch(
            "sleep",
            Path::new("/bin/sleep"),
            &["300".into()],
            &dir.path().join("sleep.log"),
            Some(&scratch),
        )
        .expect("sleep starts");
        assert!(scratch.exists(), "scratch stays while the component runs");
        process.stop();
        assert!(!scratch.exists(), "scratch is removed after the component");
    }

    #[test]
    fn a_crashed_component_is_reported_with_its_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut process = GuardedProcess::spawn(
            "failing",
            Path::new("/bin/sh"),
            &["-c".into(), "echo boom >&2; exit 3".into()],
            &dir.path().join("failing.log"),
        )
        .expect("sh starts");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let status = loop {
            if let Some(status) = process.exited() {
                break status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the guard exits when its component does"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(status.code(), Some(3));
        assert_eq!(process.log_tail(5), "boom");
    }
}
