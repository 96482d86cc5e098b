//! Keeping the artifact cache under its size cap (`--cache-max-bytes`): after a fetch, the
//! least recently used entries that no daemon holds are removed until the cache fits. A
//! serving daemon holds a shared `flock` on each entry it serves ([`hold_entry`]) for as long
//! as it runs; an entry used by a fetch in the last `min_idle` is kept too, which covers a
//! daemon container between a crash and its restart (the links its Pod's fetch step made stay
//! valid). The entry just fetched is never evicted. It must not download anything.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::cache::{Cache, flock};
use super::digest::Sha256Digest;
use super::error::FetchError;

/// A shared lock on a cache entry, held while a daemon serves it.
#[derive(Debug)]
pub struct EntryHold {
    _file: File,
}

/// Holds `path` (a link into the cache, or any file or directory) until the hold is dropped:
/// eviction leaves it alone meanwhile. `None` when it cannot be opened or locked (nothing to
/// protect, or an eviction removing it right now).
pub fn hold_entry(path: &Path) -> Option<EntryHold> {
    let target = std::fs::canonicalize(path).ok()?;
    let file = File::open(&target).ok()?;
    match flock(&file, libc::LOCK_SH | libc::LOCK_NB) {
        Ok(true) => Some(EntryHold { _file: file }),
        _ => None,
    }
}

/// An entry of the cache, as eviction sees it.
#[derive(Debug)]
struct Entry {
    digest: Sha256Digest,
    path: PathBuf,
    bytes: u64,
    last_used: SystemTime,
}

/// Removes least recently used entries that nobody holds, other than `keep`, until the cache
/// holds at most `cap` bytes; returns the digests removed.
pub fn evict(
    cache: &Cache,
    cap: u64,
    keep: &Sha256Digest,
    min_idle: Duration,
) -> Result<Vec<Sha256Digest>, FetchError> {
    let _lock = cache.lock_named("evict", true)?;
    let mut entries = entries(cache)?;
    let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
    if total <= cap {
        return Ok(Vec::new());
    }
    entries.sort_by_key(|e| e.last_used);
    let now = SystemTime::now();
    let mut evicted = Vec::new();
    for entry in entries {
        if total <= cap {
            break;
        }
        let idle = now.duration_since(entry.last_used).unwrap_or_default();
        if entry.digest == *keep || idle < min_idle {
            continue;
        }
        let Ok(file) = File::open(&entry.path) else {
            continue;
        };
        // A daemon serving the entry holds a shared lock on it.
        if !flock(&file, libc::LOCK_EX | libc::LOCK_NB).map_err(FetchError::cache(&entry.path))? {
            continue;
        }
        tracing::info!(sha256 = %entry.digest, bytes = entry.bytes, idle_s = idle.as_secs(), "evicting a cache entry");
        cache.remove_entry(&entry.digest)?;
        remove_aliases(cache, &entry.digest)?;
        total -= entry.bytes;
        evicted.push(entry.digest);
    }
    if total > cap {
        tracing::warn!(
            bytes = total,
            cap,
            "the artifact cache stays above its cap: every other entry is in use"
        );
    }
    Ok(evicted)
}

fn entries(cache: &Cache) -> Result<Vec<Entry>, FetchError> {
    let dir = cache.root().join("sha256");
    let mut found = Vec::new();
    for item in std::fs::read_dir(&dir).map_err(FetchError::cache(&dir))? {
        let item = item.map_err(FetchError::cache(&dir))?;
        let Ok(digest) = Sha256Digest::from_hex(&item.file_name().to_string_lossy()) else {
            continue;
        };
        let path = item.path();
        let stamp = cache.root().join("used").join(digest.to_hex());
        let last_used = std::fs::metadata(&stamp)
            .or_else(|_| std::fs::metadata(&path))
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        found.push(Entry {
            digest,
            bytes: size(&path).map_err(FetchError::cache(&path))?,
            path,
            last_used,
        });
    }
    Ok(found)
}

fn size(path: &Path) -> std::io::Result<u64> {
    let metadata = std::fs::symlink_metadata(path)?;
    if !metadata.is_dir() {
        return Ok(metadata.len());
    }
    let mut total = 0;
    for item in std::fs::read_dir(path)? {
        total += size(&item?.path())?;
    }
    Ok(total)
}

/// Removes the `uri/` links to the entry of `digest`.
fn remove_aliases(cache: &Cache, digest: &Sha256Digest) -> Result<(), FetchError> {
    let dir = cache.root().join("uri");
    let hex = digest.to_hex();
    for item in std::fs::read_dir(&dir)
        .map_err(FetchError::cache(&dir))?
        .flatten()
    {
        let target = std::fs::read_link(item.path()).ok();
        if target.is_some_and(|t| t.file_name().is_some_and(|n| n.to_string_lossy() == hex)) {
            let _ = std::fs::remove_file(item.path());
        }
    }
    Ok(())
}
