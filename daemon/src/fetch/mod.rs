//! `fused-daemon fetch`: bring one artifact (base weights or a patch tokenizer) into the
//! node-local, content-addressed cache, verify its SHA-256, and link it where the daemon will
//! read it. It runs as an init container of every daemon Pod; replicas on one node share one
//! download (a lock per artifact) and one copy on disk.
//!
//! On failure it writes `Reason: message` (e.g. `ArtifactDigestMismatch: …`) to the termination
//! log, which the operator reads back from the Pod's status. It must not load or interpret the
//! artifact: that is the daemon's job.
//!
//! Sources: `file://` and `http(s)://` (tested), `hf://`, `s3://`, `gs://`, `oci://` (written
//! against their public HTTP APIs, untested here: no route to them from CI).

mod cache;
mod digest;
mod error;
mod hub;
mod local;
mod object_store;
mod oci;
mod plan;
mod transfer;
mod uri;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use clap::Args;

pub use cache::{Cache, CacheKey};
pub use digest::Sha256Digest;
pub use error::{
    FetchError, REASON_ACCESS_DENIED, REASON_CACHE_ERROR, REASON_DIGEST_MISMATCH,
    REASON_INVALID_DIGEST, REASON_INVALID_URI, REASON_NOT_FOUND, REASON_UNREACHABLE,
};
pub use uri::ArtifactUri;

use plan::{Part, Plan};

/// `fused-daemon fetch` flags.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// Artifact URI: file://, http(s)://, hf://, s3://, gs:// or oci://.
    #[arg(long)]
    pub uri: String,
    /// Expected SHA-256 (64 hex digits) of the file, or of a directory's manifest.
    #[arg(long)]
    pub sha256: Option<String>,
    /// Root of the node-local cache shared by the replicas on this node.
    #[arg(long, default_value = "/var/cache/fusedmodel")]
    pub cache_dir: PathBuf,
    /// Symlink to create (or replace) pointing at the verified artifact in the cache.
    #[arg(long)]
    pub out_link: PathBuf,
    /// Where to write `Reason: message` on failure (Kubernetes: /dev/termination-log).
    #[arg(long)]
    pub termination_log: Option<PathBuf>,
}

/// What a fetch produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// The verified artifact in the cache (a file or a directory).
    pub path: PathBuf,
    /// Its SHA-256 (of the file, or of the directory's manifest).
    pub sha256: Sha256Digest,
    /// Whether it was transferred now (`false`: it was already in the cache).
    pub transferred: bool,
}

/// Runs `fused-daemon fetch`: fetches, and on failure writes the termination log.
pub fn run(args: FetchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(fetch(
        &args.uri,
        args.sha256.as_deref(),
        &args.cache_dir,
        &args.out_link,
    )) {
        Ok(fetched) => {
            tracing::info!(
                uri = %args.uri,
                sha256 = %fetched.sha256,
                path = %fetched.path.display(),
                link = %args.out_link.display(),
                transferred = fetched.transferred,
                "artifact ready"
            );
            Ok(())
        }
        Err(error) => {
            if let Some(log) = &args.termination_log
                && let Err(write_error) = std::fs::write(log, error.termination_message())
            {
                tracing::warn!(log = %log.display(), %write_error, "could not write the termination log");
            }
            Err(anyhow::Error::new(error).context(format!("fetching {}", args.uri)))
        }
    }
}

/// Fetches the artifact at `uri` into the cache at `cache_dir`, verifies it against `sha256`
/// (when given) and points `out_link` at it. An artifact already in the cache under its pinned
/// digest (or, unpinned, under its URI) is linked without touching the source.
pub async fn fetch(
    uri: &str,
    sha256: Option<&str>,
    cache_dir: &Path,
    out_link: &Path,
) -> Result<Fetched, FetchError> {
    let parsed = ArtifactUri::parse(uri)?;
    let pinned = sha256.map(Sha256Digest::from_hex).transpose()?;
    let cache = Cache::open(cache_dir)?;
    let key = CacheKey::new(uri, pinned);
    let lock_cache = cache.clone();
    let lock_key = key.clone();
    let _lock = tokio::task::spawn_blocking(move || lock_cache.lock(&lock_key))
        .await
        .map_err(|e| FetchError::Cache {
            path: cache_dir.to_owned(),
            source: std::io::Error::other(e),
        })??;

    if let Some(path) = cache.lookup(&key) {
        let sha256 = match key {
            CacheKey::Pinned(digest) => digest,
            CacheKey::Uri(_) => digest_from_entry_name(&path)?,
        };
        cache::replace_symlink(&path, out_link)?;
        return Ok(Fetched {
            path,
            sha256,
            transferred: false,
        });
    }

    let client = transfer::http_client()?;
    let plan = plan::resolve(&parsed, &client).await?;
    let staged = cache.staging(&key)?;
    let digest = match transfer_plan(&client, &plan, &staged).await {
        Ok(digest) => digest,
        Err(error) => {
            let _ = remove_staged(&staged);
            return Err(error);
        }
    };
    if let Some(expected) = pinned
        && expected != digest
    {
        let _ = remove_staged(&staged);
        return Err(FetchError::DigestMismatch {
            location: uri.to_owned(),
            expected: expected.to_hex(),
            actual: digest.to_hex(),
        });
    }
    let path = cache.commit(&key, &staged, &digest)?;
    cache::replace_symlink(&path, out_link)?;
    Ok(Fetched {
        path,
        sha256: digest,
        transferred: true,
    })
}

/// Transfers every part of `plan` under `staged`; returns the artifact's digest.
async fn transfer_plan(
    client: &reqwest::Client,
    plan: &Plan,
    staged: &Path,
) -> Result<Sha256Digest, FetchError> {
    match plan {
        Plan::File(part) => transfer_part(client, part, staged).await,
        Plan::Dir(files) => {
            let mut manifest = Vec::with_capacity(files.len());
            for (relative, part) in files {
                let digest = transfer_part(client, part, &staged.join(relative)).await?;
                manifest.push((relative.clone(), digest));
            }
            Ok(Sha256Digest::of_manifest(&manifest))
        }
    }
}

async fn transfer_part(
    client: &reqwest::Client,
    part: &Part,
    dest: &Path,
) -> Result<Sha256Digest, FetchError> {
    let digest = transfer::copy_to(client, &part.source, dest).await?;
    match part.integrity {
        Some(expected) if expected != digest => Err(FetchError::DigestMismatch {
            location: part.source.location(),
            expected: expected.to_hex(),
            actual: digest.to_hex(),
        }),
        _ => Ok(digest),
    }
}

fn remove_staged(staged: &Path) -> std::io::Result<()> {
    if staged.is_dir() {
        std::fs::remove_dir_all(staged)
    } else {
        std::fs::remove_file(staged)
    }
}

/// The digest of a cache entry from its name (`sha256/<hex>`).
fn digest_from_entry_name(path: &Path) -> Result<Sha256Digest, FetchError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Sha256Digest::from_hex(&name).map_err(|_| FetchError::Cache {
        path: path.to_owned(),
        source: std::io::Error::other("a cache entry whose name is not a SHA-256"),
    })
}
