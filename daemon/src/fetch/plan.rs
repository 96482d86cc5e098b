//! What an artifact URI turns into: one file, or a directory of files, each with where its bytes
//! come from and, when the source publishes one, the digest it must have. Dispatches to one
//! module per scheme; none of them writes anything.

use super::digest::Sha256Digest;
use super::error::FetchError;
use super::transfer::{Http, HttpGet, Source};
use super::uri::ArtifactUri;
use super::{hub, local, object_store, oci};

/// One file to transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Where its bytes come from.
    pub source: Source,
    /// The digest the source itself publishes for it (Hub LFS oid, OCI blob digest).
    pub integrity: Option<Sha256Digest>,
}

impl Part {
    /// A part with no digest published by the source.
    pub fn unverified(source: Source) -> Self {
        Self {
            source,
            integrity: None,
        }
    }
}

/// The files an artifact consists of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// A single file.
    File(Part),
    /// A directory: `(relative path, part)` pairs.
    Dir(Vec<(String, Part)>),
}

/// Resolves `uri` into a plan (listing a Hub repository or reading an OCI manifest when needed).
pub async fn resolve(uri: &ArtifactUri, client: &Http) -> Result<Plan, FetchError> {
    match uri {
        ArtifactUri::File(path) => local::plan(path),
        ArtifactUri::Http(url) => Ok(Plan::File(Part::unverified(Source::Http(HttpGet::new(
            url.clone(),
        ))))),
        ArtifactUri::Hf {
            repo,
            revision,
            path,
        } => hub::plan(client, repo, revision, path.as_deref()).await,
        ArtifactUri::S3 { bucket, key } => object_store::s3(bucket, key),
        ArtifactUri::Gs { bucket, object } => object_store::gcs(bucket, object),
        ArtifactUri::Oci {
            registry,
            repository,
            reference,
        } => oci::plan(client, registry, repository, reference).await,
    }
}

/// A relative path from a remote listing that stays inside the artifact's directory.
pub fn safe_relative_path(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

#[cfg(test)]
mod tests {
    use super::safe_relative_path;

    #[test]
    fn remote_paths_cannot_escape_the_artifact_directory() {
        assert!(safe_relative_path("config.json"));
        assert!(safe_relative_path("sub/model-00001.safetensors"));
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a"] {
            assert!(!safe_relative_path(bad), "{bad}");
        }
    }
}
