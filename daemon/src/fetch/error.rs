//! Why an artifact could not be fetched, with the CamelCase reason the operator shows in the
//! FusedModel's conditions. The init container writes `Reason: message` to its termination log;
//! the operator reads the reason back from the Pod's status, so the reason strings here are an
//! interface: change them only together with the operator.

use std::path::PathBuf;

/// Reason written for a SHA-256 that differs from the one pinned in the spec (or by the source).
pub const REASON_DIGEST_MISMATCH: &str = "ArtifactDigestMismatch";
/// Reason written when the source cannot be reached (DNS, connect, TLS, 5xx, truncated body).
pub const REASON_UNREACHABLE: &str = "ArtifactUnreachable";
/// Reason written when the source answers that the artifact does not exist.
pub const REASON_NOT_FOUND: &str = "ArtifactNotFound";
/// Reason written when the source refuses access (401/403).
pub const REASON_ACCESS_DENIED: &str = "ArtifactAccessDenied";
/// Reason written for a URI this fetcher cannot parse or does not handle.
pub const REASON_INVALID_URI: &str = "ArtifactInvalidUri";
/// Reason written for a `--sha256` that is not 64 hex digits.
pub const REASON_INVALID_DIGEST: &str = "ArtifactInvalidDigest";
/// Reason written when the node-local cache cannot be written.
pub const REASON_CACHE_ERROR: &str = "ArtifactCacheError";
/// Reason written when the artifact is larger than `--max-bytes`.
pub const REASON_TOO_LARGE: &str = "ArtifactTooLarge";
/// Reason written when the source is (or resolves to) a link-local or metadata address.
pub const REASON_FORBIDDEN_ADDRESS: &str = "ArtifactForbiddenAddress";

/// Why fetching an artifact failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The URI is malformed or uses a scheme the fetcher does not handle.
    #[error("{uri}: {reason}")]
    InvalidUri {
        /// The URI as given.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The pinned digest is not 64 hex digits.
    #[error("--sha256 {digest:?} is not 64 hex digits")]
    InvalidDigest {
        /// The digest as given.
        digest: String,
    },
    /// The source says the artifact does not exist.
    #[error("{location}: not found ({detail})")]
    NotFound {
        /// URL or path that was asked for.
        location: String,
        /// The source's answer.
        detail: String,
    },
    /// The source refuses access.
    #[error(
        "{location}: access denied ({detail}); public artifacts need no credentials, private ones a token (see docs/OPERATOR.md)"
    )]
    AccessDenied {
        /// URL that was asked for.
        location: String,
        /// The source's answer.
        detail: String,
    },
    /// The source cannot be reached or broke off.
    #[error("{location}: unreachable ({detail})")]
    Unreachable {
        /// URL or path that was asked for.
        location: String,
        /// What failed.
        detail: String,
    },
    /// The bytes' SHA-256 differs from the expected one.
    #[error("{location}: SHA-256 is {actual}, expected {expected}")]
    DigestMismatch {
        /// What was hashed.
        location: String,
        /// The pinned digest.
        expected: String,
        /// The digest of what arrived.
        actual: String,
    },
    /// The artifact is larger than the limit; what was downloaded was removed.
    #[error(
        "{location}: the artifact exceeds the limit of {limit} bytes (--max-bytes, spec.artifacts.maxBytes)"
    )]
    TooLarge {
        /// What was being transferred.
        location: String,
        /// The limit in bytes.
        limit: u64,
    },
    /// The source is a link-local or cloud metadata address.
    #[error(
        "{location}: {address} is a link-local or cloud metadata address, which artifacts may not come from (the operator's --fetch-allow-link-local allows it)"
    )]
    ForbiddenAddress {
        /// The URL.
        location: String,
        /// The address it is, or resolves to.
        address: String,
    },
    /// Reading or writing the node-local cache failed.
    #[error("cache {path}: {source}")]
    Cache {
        /// The file or directory involved.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// The CamelCase reason the operator puts in the FusedModel's conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidUri { .. } => REASON_INVALID_URI,
            Self::InvalidDigest { .. } => REASON_INVALID_DIGEST,
            Self::NotFound { .. } => REASON_NOT_FOUND,
            Self::AccessDenied { .. } => REASON_ACCESS_DENIED,
            Self::Unreachable { .. } => REASON_UNREACHABLE,
            Self::DigestMismatch { .. } => REASON_DIGEST_MISMATCH,
            Self::Cache { .. } => REASON_CACHE_ERROR,
            Self::TooLarge { .. } => REASON_TOO_LARGE,
            Self::ForbiddenAddress { .. } => REASON_FORBIDDEN_ADDRESS,
        }
    }

    /// The Kubernetes termination message: `Reason: message`, cut to the 4096 bytes the
    /// kubelet keeps.
    pub fn termination_message(&self) -> String {
        let mut message = format!("{}: {self}", self.reason());
        if message.len() > 4096 {
            let mut end = 4096;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        message
    }

    /// Whether a later attempt may resume what was transferred so far (a broken connection),
    /// so the staged bytes are kept.
    pub fn resumable(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    /// A cache I/O error on `path`.
    pub(crate) fn cache(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Cache { path, source }
    }
}
