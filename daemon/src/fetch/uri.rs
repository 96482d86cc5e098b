//! Artifact URIs: which source an artifact comes from, parsed from the FusedModel's
//! `baseModel.uri` / `patchTokenizer.uri`. Parsing only: no I/O here.

use std::path::PathBuf;

use super::error::FetchError;

/// A parsed artifact location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactUri {
    /// `file:///abs/path`: a file or directory visible to the fetcher.
    File(PathBuf),
    /// `http://…` or `https://…`: one file.
    Http(reqwest::Url),
    /// `hf://org/repo[@revision][/path]`: one file of a Hugging Face Hub repository, or the
    /// whole repository's checkpoint files when no path is given.
    Hf {
        /// `org/repo`.
        repo: String,
        /// Branch, tag or commit; `main` by default.
        revision: String,
        /// A file inside the repository, or `None` for the checkpoint files.
        path: Option<String>,
    },
    /// `s3://bucket/key`: one object.
    S3 {
        /// Bucket name.
        bucket: String,
        /// Object key.
        key: String,
    },
    /// `gs://bucket/object`: one object.
    Gs {
        /// Bucket name.
        bucket: String,
        /// Object name.
        object: String,
    },
    /// `oci://registry/repository[:tag|@sha256:…]`: an OCI artifact (ORAS-style layers).
    Oci {
        /// Registry host (and port).
        registry: String,
        /// Repository path inside the registry.
        repository: String,
        /// Tag or `sha256:…` manifest digest.
        reference: String,
    },
}

impl ArtifactUri {
    /// Parses `uri`; an unknown scheme or a malformed location is [`FetchError::InvalidUri`].
    pub fn parse(uri: &str) -> Result<Self, FetchError> {
        let invalid = |reason: &str| FetchError::InvalidUri {
            uri: uri.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| invalid("expected <scheme>://<location>"))?;
        if rest.is_empty() || rest.chars().any(char::is_whitespace) {
            return Err(invalid("the location is empty or contains whitespace"));
        }
        match scheme {
            "file" => {
                if !rest.starts_with('/') {
                    return Err(invalid(
                        "file:// needs an absolute path (file:///dir/file), not a host",
                    ));
                }
                Ok(Self::File(PathBuf::from(rest)))
            }
            "http" | "https" => reqwest::Url::parse(uri)
                .map(Self::Http)
                .map_err(|e| invalid(&e.to_string())),
            "hf" => parse_hf(rest).ok_or_else(|| {
                invalid("expected hf://<org>/<repo>[@<revision>][/<path in the repository>]")
            }),
            "s3" | "gs" => {
                let (bucket, key) = rest
                    .split_once('/')
                    .filter(|(bucket, key)| !bucket.is_empty() && !key.is_empty())
                    .ok_or_else(|| invalid("expected <scheme>://<bucket>/<object>"))?;
                let (bucket, key) = (bucket.to_owned(), key.to_owned());
                Ok(if scheme == "s3" {
                    Self::S3 { bucket, key }
                } else {
                    Self::Gs {
                        bucket,
                        object: key,
                    }
                })
            }
            "oci" => parse_oci(rest).ok_or_else(|| {
                invalid("expected oci://<registry>/<repository>[:<tag>|@sha256:<digest>]")
            }),
            "pvc" => Err(invalid(
                "pvc:// is mounted into the Pod by the operator and fetched as file:///pvc/<claim>/<path>",
            )),
            _ => Err(invalid(
                "unknown scheme (expected file, http, https, hf, s3, gs or oci)",
            )),
        }
    }
}

fn parse_hf(rest: &str) -> Option<ArtifactUri> {
    let mut parts = rest.splitn(3, '/');
    let org = parts.next().filter(|s| !s.is_empty())?;
    let repo_and_revision = parts.next().filter(|s| !s.is_empty())?;
    let path = parts.next().filter(|s| !s.is_empty()).map(str::to_owned);
    let (repo, revision) = match repo_and_revision.split_once('@') {
        Some((repo, revision)) if !repo.is_empty() && !revision.is_empty() => (repo, revision),
        Some(_) => return None,
        None => (repo_and_revision, "main"),
    };
    Some(ArtifactUri::Hf {
        repo: format!("{org}/{repo}"),
        revision: revision.to_owned(),
        path,
    })
}

fn parse_oci(rest: &str) -> Option<ArtifactUri> {
    let (registry, path) = rest.split_once('/')?;
    if registry.is_empty() || path.is_empty() {
        return None;
    }
    let (repository, reference) = match path.split_once('@') {
        Some((repository, digest)) => {
            digest.strip_prefix("sha256:")?;
            (repository, digest.to_owned())
        }
        None => {
            let last_slash = path.rfind('/').map_or(0, |i| i + 1);
            match path[last_slash..].rfind(':') {
                Some(colon) => (
                    &path[..last_slash + colon],
                    path[last_slash + colon + 1..].to_owned(),
                ),
                None => (path, "latest".to_owned()),
            }
        }
    };
    if repository.is_empty() || reference.is_empty() {
        return None;
    }
    Some(ArtifactUri::Oci {
        registry: registry.to_owned(),
        repository: repository.to_owned(),
        reference,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        assert_eq!(
            ArtifactUri::parse("file:///models/m.gguf").unwrap(),
            ArtifactUri::File("/models/m.gguf".into())
        );
        assert!(matches!(
            ArtifactUri::parse("https://example.org/a/b.gguf").unwrap(),
            ArtifactUri::Http(url) if url.path() == "/a/b.gguf"
        ));
        assert_eq!(
            ArtifactUri::parse("hf://meta-llama/Llama-2-7b-hf").unwrap(),
            ArtifactUri::Hf {
                repo: "meta-llama/Llama-2-7b-hf".into(),
                revision: "main".into(),
                path: None
            }
        );
        assert_eq!(
            ArtifactUri::parse("hf://org/repo@v1.0/sub/dir/model.gguf").unwrap(),
            ArtifactUri::Hf {
                repo: "org/repo".into(),
                revision: "v1.0".into(),
                path: Some("sub/dir/model.gguf".into())
            }
        );
        assert_eq!(
            ArtifactUri::parse("s3://bucket/patches/p.json").unwrap(),
            ArtifactUri::S3 {
                bucket: "bucket".into(),
                key: "patches/p.json".into()
            }
        );
        assert_eq!(
            ArtifactUri::parse("gs://bucket/o").unwrap(),
            ArtifactUri::Gs {
                bucket: "bucket".into(),
                object: "o".into()
            }
        );
        assert_eq!(
            ArtifactUri::parse("oci://registry.example:5000/team/model:v2").unwrap(),
            ArtifactUri::Oci {
                registry: "registry.example:5000".into(),
                repository: "team/model".into(),
                reference: "v2".into()
            }
        );
        assert_eq!(
            ArtifactUri::parse("oci://ghcr.io/org/model").unwrap(),
            ArtifactUri::Oci {
                registry: "ghcr.io".into(),
                repository: "org/model".into(),
                reference: "latest".into()
            }
        );
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            ArtifactUri::parse(&format!("oci://ghcr.io/org/model@{digest}")).unwrap(),
            ArtifactUri::Oci {
                registry: "ghcr.io".into(),
                repository: "org/model".into(),
                reference: digest
            }
        );
    }

    #[test]
    fn rejects_malformed_uris_with_the_reason() {
        for (uri, needle) in [
            ("models/m.gguf", "<scheme>://"),
            ("file://host/m.gguf", "absolute path"),
            ("hf://only-org", "hf://<org>/<repo>"),
            ("hf://org/repo@", "hf://<org>/<repo>"),
            ("s3://bucket", "<bucket>/<object>"),
            ("oci://ghcr.io/org/model@md5:00", "oci://<registry>"),
            ("pvc://claim/m.gguf", "mounted into the Pod"),
            ("ftp://host/m", "unknown scheme"),
        ] {
            let error = ArtifactUri::parse(uri).expect_err(uri);
            assert_eq!(error.reason(), "ArtifactInvalidUri", "{uri}");
            assert!(error.to_string().contains(needle), "{uri}: {error}");
        }
    }
}
