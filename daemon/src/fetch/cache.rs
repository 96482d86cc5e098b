//! The artifact cache of one namespace, shared by the replicas that mount it (a hostPath or a
//! PersistentVolumeClaim; an emptyDir holds one Pod's):
//!
//! ```text
//! <root>/sha256/<hex>        verified artifacts (a file or a directory), content-addressed
//! <root>/uri/<hex(scope,uri)> symlink to ../sha256/<hex> for artifacts fetched without a digest
//! <root>/used/<hex>          its modification time is the entry's last use (for eviction)
//! <root>/locks/<key>         one lock file per artifact: one replica downloads, the others wait
//! <root>/tmp/<key>           a download in progress, renamed into sha256/ once verified
//! <root>/tmp/<key>.state/    how to resume it (outside the artifact, so not part of its digest)
//! ```
//!
//! An unpinned artifact is keyed by its URI and a scope (the operator passes the namespace, and
//! the fetch image for `file://` URIs), so the same URI meaning different bytes elsewhere never
//! shares an entry. It must not download anything: it only stages, commits and links.

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
    /// The key of an artifact at `uri` as seen in `scope`, pinned to `sha256` if given.
    pub fn new(uri: &str, scope: &str, sha256: Option<Sha256Digest>) -> Self {
        match sha256 {
            Some(digest) => Self::Pinned(digest),
            None => Self::Uri(Sha256Digest::of(format!("{scope}\n{uri}").as_bytes())),
        }
    }

    /// A file name for this key (lock and staging files).
    pub fn file_name(&self) -> String {
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
        for sub in ["sha256", "uri", "used", "locks", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).map_err(FetchError::cache(&dir))?;
        }
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Blocks until this process holds the lock of `key` (an `flock` on `locks/<key>`).
    pub fn lock(&self, key: &CacheKey) -> Result<CacheLock, FetchError> {
        self.lock_named(&key.file_name(), true)?.ok_or_else(|| {
            FetchError::cache(self.root.join("locks"))(std::io::Error::other("lock"))
        })
    }

    /// Takes the lock `locks/<name>`, waiting for it when `wait`, else `None` if it is held.
    pub fn lock_named(&self, name: &str, wait: bool) -> Result<Option<CacheLock>, FetchError> {
        let path = self.root.join("locks").join(name);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(FetchError::cache(&path))?;
        match flock(&file, libc::LOCK_EX | if wait { 0 } else { libc::LOCK_NB }) {
            Ok(true) => Ok(Some(CacheLock { _file: file })),
            Ok(false) => Ok(None),
            Err(error) => Err(FetchError::cache(&path)(error)),
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

    /// The staging path of `key` and the directory of its resume state. What an earlier
    /// fetcher of the key left there is kept, to be resumed. Call with the key's lock held.
    pub fn staging(&self, key: &CacheKey) -> (PathBuf, PathBuf) {
        let tmp = self.root.join("tmp");
        let name = key.file_name();
        (tmp.join(&name), tmp.join(format!("{name}.state")))
    }

    /// Removes what dead fetchers left in `tmp/` more than `max_age` ago (a download nobody
    /// resumed); the staging of a key whose lock is held (a fetch in progress) stays.
    pub fn remove_stale_staging(&self, max_age: std::time::Duration) -> Result<(), FetchError> {
        let tmp = self.root.join("tmp");
        let entries = fs::read_dir(&tmp).map_err(FetchError::cache(&tmp))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if age.is_none_or(|age| age < max_age) {
                continue;
            }
            // `<key>`, `<key>.state`, or an older version's `<key>.<pid>`.
            let key = name.split('.').next().unwrap_or_default();
            let Some(_lock) = self.lock_named(key, false)? else {
                continue;
            };
            tracing::info!(path = %entry.path().display(), "removing a stale download");
            remove_path(&entry.path())?;
        }
        Ok(())
    }

    /// Removes the entry of `digest` (one that failed verification, or an eviction): it is
    /// renamed away first, so no reader sees it half-deleted.
    pub fn remove_entry(&self, digest: &Sha256Digest) -> Result<(), FetchError> {
        let entry = self.entry(digest);
        let doomed = self
            .root
            .join("tmp")
            .join(format!("removing-{digest}.{}", std::process::id()));
        match fs::rename(&entry, &doomed) {
            Ok(()) => remove_path(&doomed)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(FetchError::cache(&entry)(e)),
        }
        let _ = fs::remove_file(self.root.join("used").join(digest.to_hex()));
        Ok(())
    }

    /// Records that the entry of `digest` was used now (its `used/` stamp).
    pub fn touch(&self, digest: &Sha256Digest) -> Result<(), FetchError> {
        let stamp = self.root.join("used").join(digest.to_hex());
        File::create(&stamp)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()))
            .map_err(FetchError::cache(&stamp))
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

    /// The path of the entry of `digest`.
    pub fn entry(&self, digest: &Sha256Digest) -> PathBuf {
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

/// `flock(2)` with `operation`; `Ok(false)` when `LOCK_NB` found the lock held.
pub fn flock(file: &File, operation: i32) -> std::io::Result<bool> {
    loop {
        // SAFETY: flock on a file descriptor `file` owns for the whole call; no memory is
        // touched.
        let result = unsafe { libc::flock(file.as_raw_fd(), operation) };
        if result == 0 {
            return Ok(true);
        }
        let error = std::io::Error::last_os_error();
        match error.kind() {
            std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::WouldBlock => return Ok(false),
            _ => return Err(error),
        }
    }
}

/// Removes a file or a directory tree; a missing path is fine.
pub fn remove_path(path: &Path) -> Result<(), FetchError> {
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
