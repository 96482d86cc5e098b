//! The node-local artifact cache, shared by every daemon replica on a node (a hostPath):
//!
//! ```text
//! <root>/sha256/<hex>     verified artifacts (a file or a directory), never modified
//! <root>/uri/<hex(uri)>   symlink to ../sha256/<hex> for artifacts fetched without a pinned digest
//! <root>/locks/<key>      one lock file per artifact: one replica downloads, the others wait
//! <root>/tmp/<key>.<pid>  downloads in progress, renamed into sha256/ once verified
//! ```
//!
//! It must not download anything: it only stages, commits and links.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use super::digest::Sha256Digest;
use super::error::FetchError;

/// How an artifact is found in the cache: by its pinned digest, or by its URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheKey {
    /// The spec pins the digest: the entry is `sha256/<hex>`.
    Pinned(Sha256Digest),
    /// No digest pinned: the entry is whatever `uri/<hex(uri)>` points at.
    Uri(Sha256Digest),
}

impl CacheKey {
    /// The key of an artifact at `uri`, pinned to `sha256` if given.
    pub fn new(uri: &str, sha256: Option<Sha256Digest>) -> Self {
        match sha256 {
            Some(digest) => Self::Pinned(digest),
            None => Self::Uri(Sha256Digest::of(uri.as_bytes())),
        }
    }

    /// A file name for this key (lock and staging files).
    fn file_name(&self) -> String {
        match self {
            Self::Pinned(digest) => format!("sha256-{digest}"),
            Self::Uri(uri_digest) => format!("uri-{uri_digest}"),
        }
    }
}

/// The cache rooted at one directory.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// An exclusive lock on one artifact's key, released on drop (or when the process dies).
#[derive(Debug)]
pub struct CacheLock {
    _file: File,
}

impl Cache {
    /// Opens (creating its directories) the cache at `root`.
    pub fn open(root: &Path) -> Result<Self, FetchError> {
        for sub in ["sha256", "uri", "locks", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(FetchError::cache(&dir))?;
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// Blocks until this process holds the lock of `key` (an `flock` on `locks/<key>`).
    pub fn lock(&self, key: &CacheKey) -> Result<CacheLock, FetchError> {
        let path = self.root.join("locks").join(key.file_name());
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(FetchError::cache(&path))?;
        loop {
            // SAFETY: flock on a file descriptor this function owns; no memory is touched.
            let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if result == 0 {
                return Ok(CacheLock { _file: file });
            }
            let error = std::io::Error::last_os_error();
            if error.kind() != std::io::ErrorKind::Interrupted {
                return Err(FetchError::cache(&path)(error));
            }
        }
    }

    /// The verified entry for `key`, if present. Call with the key's lock held.
    pub fn lookup(&self, key: &CacheKey) -> Option<PathBuf> {
        let path = match key {
            CacheKey::Pinned(digest) => self.entry(digest),
            CacheKey::Uri(uri_digest) => fs::canonicalize(self.alias(uri_digest)).ok()?,
        };
        path.exists().then_some(path)
    }

    /// A fresh, empty staging path for `key` (earlier leftovers of this key, from a fetcher
    /// that died, are removed first). Call with the key's lock held.
    pub fn staging(&self, key: &CacheKey) -> Result<PathBuf, FetchError> {
        let tmp = self.root.join("tmp");
        let prefix = format!("{}.", key.file_name());
        let entries = fs::read_dir(&tmp).map_err(FetchError::cache(&tmp))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                remove_path(&entry.path())?;
            }
        }
        Ok(tmp.join(format!("{prefix}{}", std::process::id())))
    }

    /// Moves the verified `staged` file or directory into `sha256/<digest>` (keeping an entry
    /// that already exists) and, for an unpinned key, points `uri/<hex(uri)>` at it. Returns the
    /// entry's path.
    pub fn commit(
        &self,
        key: &CacheKey,
        staged: &Path,
        digest: &Sha256Digest,
    ) -> Result<PathBuf, FetchError> {
        let entry = self.entry(digest);
        if entry.exists() {
            remove_path(staged)?;
        } else {
            fs::rename(staged, &entry).map_err(FetchError::cache(&entry))?;
            sync_dir(&self.root.join("sha256"))?;
        }
        if let CacheKey::Uri(uri_digest) = key {
            let target = Path::new("..").join("sha256").join(digest.to_hex());
            replace_symlink(&target, &self.alias(uri_digest))?;
        }
        Ok(entry)
    }

    fn entry(&self, digest: &Sha256Digest) -> PathBuf {
        self.root.join("sha256").join(digest.to_hex())
    }

    fn alias(&self, uri_digest: &Sha256Digest) -> PathBuf {
        self.root.join("uri").join(uri_digest.to_hex())
    }
}

/// Points the symlink `link` at `target`, atomically replacing whatever was there.
pub fn replace_symlink(target: &Path, link: &Path) -> Result<(), FetchError> {
    if let Some(parent) = link.parent() {
        fs::create_dir_all(parent).map_err(FetchError::cache(parent))?;
    }
    let file_name = link
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = link.with_file_name(format!(".{file_name}.{}", std::process::id()));
    let _ = fs::remove_file(&temporary);
    symlink(target, &temporary).map_err(FetchError::cache(&temporary))?;
    fs::rename(&temporary, link).map_err(FetchError::cache(link))
}

fn remove_path(path: &Path) -> Result<(), FetchError> {
    let result = if path.is_dir() && !path.is_symlink() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(FetchError::cache(path)(e)),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), FetchError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(FetchError::cache(dir))
}
