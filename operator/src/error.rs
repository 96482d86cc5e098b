//! The operator's one error type. Each variant has a short `metric_label` for
//! `fused_operator_reconcile_errors_total{error=…}`.

/// Why a reconcile (or the operator's start) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A call to the Kubernetes API failed.
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A desired object could not be turned into JSON (a bug, not bad input).
    #[error("serializing {what}: {source}")]
    Serialize {
        /// What was being serialized.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The object lacks a field the API server always sets.
    #[error("the FusedModel has no {0}")]
    MissingField(&'static str),
    /// The spec breaks a rule (caught by the spec checks before any object is built).
    #[error("invalid spec: {0}")]
    InvalidSpec(String),
    /// The operator's configuration is inconsistent (a flag needs another).
    #[error("operator configuration: {0}")]
    Config(String),
    /// A Lease operation of the leader election failed.
    #[error("leader election on Lease {lease}: {source}")]
    LeaderElection {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Serialize { .. } => "serialize",
            Self::MissingField(_) => "missing_field",
            Self::InvalidSpec(_) => "invalid_spec",
            Self::Config(_) => "config",
            Self::LeaderElection { .. } => "leader_election",
        }
    }

    /// A JSON serialization error about `what`.
    pub fn serialize(what: &'static str) -> impl FnOnce(serde_json::Error) -> Self {
        move |source| Self::Serialize { what, source }
    }
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
