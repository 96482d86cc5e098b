//! The one error type of the Kubernetes test harness. Messages say what to do next (for a
//! missing binary: run `scripts/setup-k8s.sh`).

use std::path::PathBuf;

/// Why the harness could not start a cluster or apply an object. Every message includes its
/// cause, and `Debug` prints the message, so a test's `expect` shows what to do (e.g. which
/// script to run).
#[derive(thiserror::Error)]
pub enum ClusterError {
    /// A required executable is missing.
    #[error(
        "{name} not found (looked in {searched}); run scripts/setup-k8s.sh to install the Kubernetes test binaries"
    )]
    MissingBinary {
        /// Executable name.
        name: &'static str,
        /// Where it was looked for.
        searched: String,
    },
    /// Spawning or running a local command failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A helper command (openssl, kubectl, ...) exited unsuccessfully.
    #[error("{command} failed ({status}): {stderr}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Its standard error.
        stderr: String,
    },
    /// A control-plane process exited early or never became ready.
    #[error("{component} did not become ready: {reason}; last log lines of {log}:\n{log_tail}")]
    NotReady {
        /// etcd, kube-apiserver or kube-controller-manager.
        component: &'static str,
        /// What went wrong.
        reason: String,
        /// The component's log file.
        log: PathBuf,
        /// Its last lines.
        log_tail: String,
    },
    /// Building the kubeconfig or client failed.
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig {
        /// Path of the kubeconfig.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// A YAML document could not be parsed or lacked apiVersion/kind/name.
    #[error("invalid manifest: {0}")]
    Manifest(String),
    /// The API server answered an error.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The error from the API.
        #[source]
        source: Box<kube::Error>,
    },
    /// A wait ran out of time.
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        seconds: u64,
    },
}

impl std::fmt::Debug for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

impl ClusterError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }

    /// Wraps an API error with what was being done.
    pub(crate) fn api(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let what = what.into();
        move |source| Self::Api {
            what,
            source: Box::new(source),
        }
    }
}

/// Result of harness operations.
pub type Result<T, E = ClusterError> = std::result::Result<T, E>;
