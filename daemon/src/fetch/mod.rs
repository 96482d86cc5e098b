//! `fused-daemon fetch`: bring one artifact (base weights or a patch tokenizer) into the
//! node-local, content-addressed cache, verify its SHA-256, and link it where the daemon will
//! read it. It runs as an init container of every daemon Pod, in the operator's own image;
//! replicas sharing a cache share one download (a lock per artifact) and one copy on disk.
//! Every cache hit is hashed again before it is linked; a broken download is resumed; an
//! artifact above `--max-bytes` is aborted and removed; link-local and metadata addresses are
//! refused; a size-capped cache evicts its least recently used entries that no daemon holds.
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
mod evict;
mod guard;
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
use std::time::Duration;

use clap::Args;

pub use cache::{Cache, CacheKey};
pub use digest::Sha256Digest;
pub use error::{
    FetchError, REASON_ACCESS_DENIED, REASON_CACHE_ERROR, REASON_DIGEST_MISMATCH,
    REASON_FORBIDDEN_ADDRESS, REASON_INVALID_DIGEST, REASON_INVALID_URI, REASON_NOT_FOUND,
    REASON_TOO_LARGE, REASON_UNREACHABLE,
};
pub use evict::{EntryHold, hold_entry};
pub use guard::AddressPolicy;
pub use uri::ArtifactUri;

use plan::{Part, Plan};
use transfer::{Budget, Http};

/// A download nobody has resumed for this long is removed at the start of a fetch.
pub const STALE_AFTER: Duration = Duration::from_secs(24 * 3600);

/// `fused-daemon fetch` flags.
#[derive(Debug, Clone, Args)]
pub struct FetchArgs {
    /// Artifact URI: file://, http(s)://, hf://, s3://, gs:// or oci://.
    #[arg(long)]
    pub uri: String,
    /// Expected SHA-256 (64 hex digits) of the file, or of a directory's manifest.
    #[arg(long)]
    pub sha256: Option<String>,
    /// Root of the artifact cache (the operator passes the namespace's directory of it).
    #[arg(long, default_value = "/var/cache/fusedmodel")]
    pub cache_dir: PathBuf,
    /// What besides the URI identifies an unpinned artifact's source (the operator passes the
    /// namespace, and the fetch image for file:// URIs): the same URI in another scope gets
    /// its own cache entry.
    #[arg(long, default_value = "")]
    pub scope: String,
    /// Symlink to create (or replace) pointing at the verified artifact in the cache.
    #[arg(long)]
    pub out_link: PathBuf,
    /// Where to write `Reason: message` on failure (Kubernetes: /dev/termination-log).
    #[arg(long)]
    pub termination_log: Option<PathBuf>,
    /// Largest artifact accepted, in bytes (a bigger one is aborted and its download removed).
    #[arg(long)]
    pub max_bytes: Option<u64>,
    /// Size cap of the cache in bytes: after the fetch, least recently used entries no daemon
    /// holds are evicted until it fits.
    #[arg(long)]
    pub cache_max_bytes: Option<u64>,
    /// An entry used by a fetch within this many seconds is never evicted.
    #[arg(long, default_value_t = 3600)]
    pub cache_min_idle_s: u64,
    /// Allow link-local and cloud metadata addresses (169.254.0.0/16, fe80::/10,
    /// fd00:ec2::254) as sources.
    #[arg(long)]
    pub allow_link_local: bool,
}

/// How a fetch behaves beyond what it fetches.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// See [`FetchArgs::scope`].
    pub scope: String,
    /// See [`FetchArgs::max_bytes`].
    pub max_bytes: Option<u64>,
    /// See [`FetchArgs::cache_max_bytes`].
    pub cache_max_bytes: Option<u64>,
    /// See [`FetchArgs::cache_min_idle_s`].
    pub cache_min_idle: Duration,
    /// Which addresses sources may have.
    pub policy: AddressPolicy,
}

impl From<&FetchArgs> for FetchOptions {
    fn from(args: &FetchArgs) -> Self {
        Self {
            scope: args.scope.clone(),
            max_bytes: args.max_bytes,
            cache_max_bytes: args.cache_max_bytes,
            cache_min_idle: Duration::from_secs(args.cache_min_idle_s),
            policy: AddressPolicy {
                allow_link_local: args.allow_link_local,
            },
        }
    }
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
        &FetchOptions::from(&args),
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
/// digest (or, unpinned, under its URI and scope) is hashed again and, when its bytes still
/// match, linked without touching the source; an entry that no longer matches is removed and
/// fetched again.
pub async fn fetch(
    uri: &str,
    sha256: Option<&str>,
    cache_dir: &Path,
    out_link: &Path,
    options: &FetchOptions,
) -> Result<Fetched, FetchError> {
    let parsed = ArtifactUri::parse(uri)?;
    let pinned = sha256.map(Sha256Digest::from_hex).transpose()?;
    let cache = Cache::open(cache_dir)?;
    let key = CacheKey::new(uri, &options.scope, pinned);
    let _lock = {
        let (cache, key) = (cache.clone(), key.clone());
        blocking(cache_dir, move || {
            cache.remove_stale_staging(STALE_AFTER)?;
            cache.lock(&key)
        })
        .await?
    };

    if let Some(path) = cache.lookup(&key) {
        let expected = match key {
            CacheKey::Pinned(digest) => digest,
            CacheKey::Uri(_) => digest_from_entry_name(&path)?,
        };
        let entry = path.clone();
        let actual = blocking(cache_dir, move || {
            Sha256Digest::of_entry(&entry).map_err(FetchError::cache(&entry))
        })
        .await;
        match actual {
            Ok(actual) if actual == expected => {
                return link(&cache, path, expected, out_link, false, options).await;
            }
            Ok(actual) => {
                tracing::warn!(path = %path.display(), %expected, %actual, "a cache entry no longer matches its digest: removing it and fetching again")
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "a cache entry cannot be verified: removing it and fetching again")
            }
        }
        cache.remove_entry(&expected)?;
    }

    let http = transfer::http_client(options.policy)?;
    let plan = plan::resolve(&parsed, &http).await?;
    let (staged, state) = cache.staging(&key);
    if staged.exists() && staged.is_dir() != matches!(plan, Plan::Dir(_)) {
        cache::remove_path(&staged)?;
    }
    let mut budget = Budget::new(options.max_bytes);
    let digest = match transfer_plan(&http, &plan, &staged, &state, &mut budget).await {
        Ok(digest) => digest,
        Err(error) => {
            // A broken connection keeps what arrived, for the next attempt to resume.
            if !error.resumable() {
                remove_staged(&staged, &state)?;
            }
            return Err(error);
        }
    };
    if let Some(expected) = pinned
        && expected != digest
    {
        remove_staged(&staged, &state)?;
        return Err(FetchError::DigestMismatch {
            location: uri.to_owned(),
            expected: expected.to_hex(),
            actual: digest.to_hex(),
        });
    }
    let path = cache.commit(&key, &staged, &digest)?;
    cache::remove_path(&state)?;
    link(&cache, path, digest, out_link, true, options).await
}

/// Points `out_link` at the verified entry, records its use, and keeps the cache under its cap.
async fn link(
    cache: &Cache,
    path: PathBuf,
    sha256: Sha256Digest,
    out_link: &Path,
    transferred: bool,
    options: &FetchOptions,
) -> Result<Fetched, FetchError> {
    cache::replace_symlink(&path, out_link)?;
    cache.touch(&sha256)?;
    if let Some(cap) = options.cache_max_bytes {
        let (cache, min_idle) = (cache.clone(), options.cache_min_idle);
        let evicted = blocking(cache.root().to_owned().as_path(), move || {
            evict::evict(&cache, cap, &sha256, min_idle)
        })
        .await;
        if let Err(error) = evicted {
            tracing::warn!(%error, "evicting from the artifact cache");
        }
    }
    Ok(Fetched {
        path,
        sha256,
        transferred,
    })
}

/// Runs blocking cache work (locks, hashing, eviction) off the async runtime.
async fn blocking<T: Send + 'static>(
    cache_dir: &Path,
    work: impl FnOnce() -> Result<T, FetchError> + Send + 'static,
) -> Result<T, FetchError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| FetchError::Cache {
            path: cache_dir.to_owned(),
            source: std::io::Error::other(e),
        })?
}

/// Transfers every part of `plan` under `staged` within `budget`; returns the artifact's digest.
async fn transfer_plan(
    http: &Http,
    plan: &Plan,
    staged: &Path,
    state: &Path,
    budget: &mut Budget,
) -> Result<Sha256Digest, FetchError> {
    match plan {
        Plan::File(part) => transfer_part(http, part, staged, &state.join("file"), budget).await,
        Plan::Dir(files) => {
            let mut manifest = Vec::with_capacity(files.len());
            for (relative, part) in files {
                let part_state = state.join(Sha256Digest::of(relative.as_bytes()).to_hex());
                let digest =
                    transfer_part(http, part, &staged.join(relative), &part_state, budget).await?;
                manifest.push((relative.clone(), digest));
            }
            Ok(Sha256Digest::of_manifest(&manifest))
        }
    }
}

async fn transfer_part(
    http: &Http,
    part: &Part,
    dest: &Path,
    state: &Path,
    budget: &mut Budget,
) -> Result<Sha256Digest, FetchError> {
    let digest = transfer::copy_to(http, &part.source, dest, state, budget).await?;
    match part.integrity {
        Some(expected) if expected != digest => Err(FetchError::DigestMismatch {
            location: part.source.location(),
            expected: expected.to_hex(),
            actual: digest.to_hex(),
        }),
        _ => Ok(digest),
    }
}

fn remove_staged(staged: &Path, state: &Path) -> Result<(), FetchError> {
    cache::remove_path(staged)?;
    cache::remove_path(state)
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
