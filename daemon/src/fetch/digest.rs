//! SHA-256 digests of artifacts: of one file, or of a directory as the digest of its manifest
//! (one `<hex>  <relative path>` line per file, sorted by path: what
//! `find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum` prints).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::error::FetchError;

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest([u8; 32]);

impl Sha256Digest {
    /// Parses 64 hex digits (either case).
    pub fn from_hex(text: &str) -> Result<Self, FetchError> {
        let invalid = || FetchError::InvalidDigest {
            digest: text.to_owned(),
        };
        let bytes = hex::decode(text).map_err(|_| invalid())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| invalid())?;
        Ok(Self(bytes))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    /// The digest of a directory from `(relative path, file digest)` pairs, in any order.
    pub fn of_manifest(files: &[(String, Sha256Digest)]) -> Self {
        let mut sorted: Vec<&(String, Sha256Digest)> = files.iter().collect();
        sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        let manifest: String = sorted
            .iter()
            .map(|(path, digest)| format!("{digest}  {path}\n"))
            .collect();
        Self::of(manifest.as_bytes())
    }

    /// The digest of what is at `path` now: a file's bytes, or a directory's manifest (every
    /// file below it; a symlink or anything but files and directories is an error, since the
    /// cache never holds one).
    pub fn of_entry(path: &Path) -> std::io::Result<Self> {
        let metadata = std::fs::symlink_metadata(path)?;
        if metadata.is_file() {
            return hash_file(path);
        }
        let mut files = Vec::new();
        collect_files(path, "", &mut files)?;
        let manifest = files
            .into_iter()
            .map(|(relative, file)| Ok((relative, hash_file(&file)?)))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Self::of_manifest(&manifest))
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

fn hash_file(path: &Path) -> std::io::Result<Sha256Digest> {
    let mut file = std::fs::File::open(path)?;
    let mut digest = StreamingDigest::default();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(digest.finish());
        }
        digest.update(&buffer[..read]);
    }
}

fn collect_files(
    dir: &Path,
    prefix: &str,
    files: &mut Vec<(String, PathBuf)>,
) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            collect_files(&entry.path(), &relative, files)?;
        } else if kind.is_file() {
            files.push((relative, entry.path()));
        } else {
            return Err(std::io::Error::other(format!(
                "{} is neither a file nor a directory",
                entry.path().display()
            )));
        }
    }
    Ok(())
}

/// A running SHA-256 over bytes as they stream past.
#[derive(Default)]
pub struct StreamingDigest(Sha256);

impl StreamingDigest {
    /// Adds `bytes`.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything added.
    pub fn finish(self) -> Sha256Digest {
        Sha256Digest(self.0.finalize().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        // sha256("") and sha256("abc") from FIPS 180-2.
        assert_eq!(
            Sha256Digest::of(b"").to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let mut streaming = StreamingDigest::default();
        streaming.update(b"a");
        streaming.update(b"bc");
        assert_eq!(
            streaming.finish().to_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn hex_round_trips_and_rejects_bad_input() {
        let digest = Sha256Digest::of(b"abc");
        assert_eq!(
            Sha256Digest::from_hex(&digest.to_hex().to_uppercase()).unwrap(),
            digest
        );
        for bad in ["", "abc", &"g".repeat(64), &"ab".repeat(33)] {
            let error = Sha256Digest::from_hex(bad).expect_err(bad);
            assert_eq!(error.reason(), "ArtifactInvalidDigest");
        }
    }

    #[test]
    fn manifest_digest_is_that_of_sorted_sha256sum_lines() {
        let a = Sha256Digest::of(b"a");
        let b = Sha256Digest::of(b"b");
        let expected = Sha256Digest::of(format!("{a}  a.json\n{b}  sub/b.bin\n").as_bytes());
        assert_eq!(
            Sha256Digest::of_manifest(&[("sub/b.bin".into(), b), ("a.json".into(), a)]),
            expected
        );
    }
}
