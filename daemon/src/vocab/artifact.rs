//! The patch artifact on disk: a directory holding
//! - `patch.json` ([`PatchSpec`], versioned): base tokenizer identity and digest, build options and
//!   corpus provenance, removed tokens with their decompositions, n-grams in selection order with
//!   their ids, the full id map and the remapped special ids; its sha256 is the artifact digest;
//! - `embeddings.safetensors` (after `vocab init-embeddings`): `ids` `[n]` u32, `input_rows` and
//!   `output_rows` `[n, hidden]` f32 — the new rows of the input embedding and of the LM head, in
//!   `ngrams` order; `patch.json` records its sha256, so the digest covers both files.
//!
//! Loading validates everything (a bijective id map, decompositions into kept tokens, ...) and
//! turns every problem into a clear error; this module does no tokenizing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::base_vocab::WordMarker;
use super::corpus::CorpusFile;
use super::error::{Result, VocabError};
use super::matcher::MatchRule;
use super::ngrams::OverlapCorrection;
use crate::tokenizer::SpecialIds;

pub const FORMAT: &str = "fusedmodel.vocab-patch";
pub const VERSION: u32 = 1;
pub const PATCH_FILE: &str = "patch.json";
pub const EMBEDDINGS_FILE: &str = "embeddings.safetensors";

/// Contents of `patch.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PatchSpec {
    pub format: String,
    pub version: u32,
    pub base: BaseInfo,
    pub build: BuildInfo,
    pub match_rule: MatchRule,
    /// Special ids of the patched vocabulary.
    pub special_ids: SpecialIds,
    /// Removed base tokens, in removal order.
    pub removed: Vec<RemovedEntry>,
    /// Added n-grams, in selection order (the order `first_selected` matching tries them).
    pub ngrams: Vec<NgramEntry>,
    /// Base id → patched id (`null`: removed). With the added n-gram ids it covers every patched
    /// id exactly once.
    pub id_map: Vec<Option<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<EmbeddingsInfo>,
}

/// The base tokenizer the patch belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaseInfo {
    /// `Codec::base_digest` of the base tokenizer.
    pub digest: String,
    /// Where it was loaded from (`gguf:<name>`, `hf:<dir>`), for humans.
    pub source: String,
    pub vocab_size: usize,
    pub word_marker: WordMarker,
}

/// How the patch was built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    pub tool: String,
    pub swap: usize,
    pub max_n: usize,
    pub cross_word: bool,
    pub min_count: u32,
    pub overlap: OverlapCorrection,
    pub corpus: Vec<CorpusFile>,
    pub corpus_lines: usize,
    pub corpus_base_tokens: usize,
    pub corpus_patched_tokens: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemovedEntry {
    pub id: u32,
    pub token: String,
    /// Occurrences in the corpus.
    pub count: u64,
    /// Kept base ids whose concatenation is this token.
    pub decomposition: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NgramEntry {
    /// Patched id.
    pub id: u32,
    /// Kept base ids, in order.
    pub parts: Vec<u32>,
    /// The parts' vocabulary strings concatenated, for humans.
    pub text: String,
    /// Occurrences in the corpus before overlap correction.
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbeddingsInfo {
    pub file: String,
    pub sha256: String,
    pub hidden: usize,
    /// The model the rows were computed from.
    pub model: String,
}

/// New rows for the input embedding and the LM head, one per n-gram (in `ngrams` order).
#[derive(Debug, Clone, PartialEq)]
pub struct NewRows {
    pub ids: Vec<u32>,
    pub hidden: usize,
    /// `[ids.len(), hidden]`, row-major.
    pub input: Vec<f32>,
    /// `[ids.len(), hidden]`, row-major.
    pub output: Vec<f32>,
}

/// A loaded, validated patch artifact.
#[derive(Debug, Clone)]
pub struct PatchArtifact {
    pub dir: PathBuf,
    pub spec: PatchSpec,
    /// sha256 (hex) of `patch.json`.
    pub digest: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// `sha256:abc…` and `abc…` name the same digest.
fn same_digest(a: &str, b: &str) -> bool {
    let strip = |d: &str| d.trim().trim_start_matches("sha256:").to_ascii_lowercase();
    strip(a) == strip(b)
}

impl PatchArtifact {
    /// Loads `dir/patch.json` (or `dir` itself when it is the JSON file), validates it, and
    /// checks its digest against `expected` when given.
    pub fn load(path: &Path, expected: Option<&str>) -> Result<Self> {
        let (dir, file) = if path.is_dir() {
            (path.to_owned(), path.join(PATCH_FILE))
        } else {
            (
                path.parent().unwrap_or(Path::new(".")).to_owned(),
                path.to_owned(),
            )
        };
        let bytes = std::fs::read(&file).map_err(VocabError::io(&file))?;
        let digest = sha256_hex(&bytes);
        if let Some(expected) = expected
            && !same_digest(expected, &digest)
        {
            return Err(VocabError::DigestMismatch {
                path: file,
                expected: expected.to_owned(),
                actual: digest,
            });
        }
        let bad = |reason: String| VocabError::BadArtifact {
            path: file.clone(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if value.get("format").and_then(|f| f.as_str()) != Some(FORMAT) {
            return Err(bad(format!("`format` is not \"{FORMAT}\"")));
        }
        let version = value
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        if version != u64::from(VERSION) {
            return Err(VocabError::UnsupportedVersion {
                path: file,
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: VERSION,
            });
        }
        let spec: PatchSpec = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        spec.validate().map_err(bad)?;
        Ok(Self { dir, spec, digest })
    }

    /// Writes `dir/patch.json` (creating `dir`) and returns the artifact digest.
    pub fn save(dir: &Path, spec: &PatchSpec) -> Result<String> {
        spec.validate().map_err(|reason| VocabError::BadArtifact {
            path: dir.join(PATCH_FILE),
            reason,
        })?;
        std::fs::create_dir_all(dir).map_err(VocabError::io(dir))?;
        let mut bytes = serde_json::to_vec_pretty(spec).map_err(|e| VocabError::BadArtifact {
            path: dir.join(PATCH_FILE),
            reason: e.to_string(),
        })?;
        bytes.push(b'\n');
        write_atomically(&dir.join(PATCH_FILE), &bytes)?;
        Ok(sha256_hex(&bytes))
    }

    /// The new embedding / LM-head rows, checked against `patch.json`.
    pub fn load_rows(&self) -> Result<NewRows> {
        let info = self
            .spec
            .embeddings
            .as_ref()
            .ok_or_else(|| VocabError::BadArtifact {
                path: self.dir.join(PATCH_FILE),
                reason: "no embedding rows yet (run `fused-daemon vocab init-embeddings`)".into(),
            })?;
        let path = self.dir.join(&info.file);
        let bad = |reason: String| VocabError::BadArtifact {
            path: path.clone(),
            reason,
        };
        inside_dir(&self.dir, &path).map_err(bad)?;
        let bytes = std::fs::read(&path).map_err(VocabError::io(&path))?;
        let actual = sha256_hex(&bytes);
        if !same_digest(&info.sha256, &actual) {
            return Err(VocabError::DigestMismatch {
                path,
                expected: info.sha256.clone(),
                actual,
            });
        }
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .map_err(|e| bad(e.to_string()))?;
        let get = |name: &str| {
            tensors
                .get(name)
                .ok_or_else(|| bad(format!("tensor `{name}` is missing")))
        };
        let n = self.spec.ngrams.len();
        let ids: Vec<u32> = get("ids")?
            .to_vec1()
            .map_err(|e| bad(format!("`ids`: {e}")))?;
        let rows = |name: &str| -> Result<Vec<f32>> {
            let t = get(name)?;
            if t.dims() != [n, info.hidden] {
                return Err(bad(format!(
                    "`{name}` has shape {:?}, expected [{n}, {}]",
                    t.dims(),
                    info.hidden
                )));
            }
            t.to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .map_err(|e| bad(format!("`{name}`: {e}")))
        };
        let expected_ids: Vec<u32> = self.spec.ngrams.iter().map(|g| g.id).collect();
        if ids != expected_ids {
            return Err(bad("`ids` do not match the n-grams of patch.json".into()));
        }
        Ok(NewRows {
            ids,
            hidden: info.hidden,
            input: rows("input_rows")?,
            output: rows("output_rows")?,
        })
    }
}

/// Writes `dir/embeddings.safetensors`; returns what `patch.json` records about it.
pub fn save_rows(dir: &Path, rows: &NewRows, model: String) -> Result<EmbeddingsInfo> {
    let path = dir.join(EMBEDDINGS_FILE);
    let to_tensor = |data: &[f32]| {
        Tensor::from_slice(data, (rows.ids.len(), rows.hidden), &Device::Cpu)
            .map_err(|e| VocabError::Weights(e.to_string()))
    };
    let tensors: HashMap<String, Tensor> = [
        (
            "ids".to_owned(),
            Tensor::from_slice(&rows.ids, rows.ids.len(), &Device::Cpu)
                .map_err(|e| VocabError::Weights(e.to_string()))?,
        ),
        ("input_rows".to_owned(), to_tensor(&rows.input)?),
        ("output_rows".to_owned(), to_tensor(&rows.output)?),
    ]
    .into();
    let tmp = dir.join(format!("{EMBEDDINGS_FILE}.part"));
    candle_core::safetensors::save(&tensors, &tmp)
        .map_err(|e| VocabError::Weights(e.to_string()))?;
    // Readable like patch.json, so a daemon running as another user can load a copied artifact.
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(VocabError::io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(VocabError::io(&path))?;
    let bytes = std::fs::read(&path).map_err(VocabError::io(&path))?;
    Ok(EmbeddingsInfo {
        file: EMBEDDINGS_FILE.to_owned(),
        sha256: sha256_hex(&bytes),
        hidden: rows.hidden,
        model,
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("json.part");
    std::fs::write(&tmp, bytes).map_err(VocabError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(VocabError::io(path))
}

impl PatchSpec {
    /// Structural checks: everything the runtime relies on. Returns the first problem found.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("`format` is {:?}, not {FORMAT:?}", self.format));
        }
        let size = self.base.vocab_size;
        if self.id_map.len() != size {
            return Err(format!(
                "`id_map` has {} entries for a vocabulary of {size}",
                self.id_map.len()
            ));
        }
        let mut owner = vec![false; size];
        let mut claim = |id: u32, what: &str| -> std::result::Result<(), String> {
            match owner.get_mut(id as usize) {
                None => Err(format!(
                    "{what} uses id {id}, outside the vocabulary of {size}"
                )),
                Some(true) => Err(format!("{what} uses id {id}, which is already taken")),
                Some(slot) => {
                    *slot = true;
                    Ok(())
                }
            }
        };
        for (base, patched) in self.id_map.iter().enumerate() {
            if let Some(p) = patched {
                claim(*p, &format!("base token {base}"))?;
            }
        }
        for g in &self.ngrams {
            claim(g.id, "an n-gram")?;
        }
        if let Some(free) = owner.iter().position(|taken| !taken) {
            return Err(format!(
                "patched id {free} is used by nothing (the vocabulary must stay full)"
            ));
        }
        let kept = |id: u32| self.id_map.get(id as usize).is_some_and(Option::is_some);
        let removed_ids: std::collections::HashSet<u32> =
            self.removed.iter().map(|r| r.id).collect();
        for (base, patched) in self.id_map.iter().enumerate() {
            if patched.is_none() && !removed_ids.contains(&(base as u32)) {
                return Err(format!(
                    "base token {base} is unmapped but not listed as removed"
                ));
            }
        }
        for r in &self.removed {
            if kept(r.id) {
                return Err(format!(
                    "removed token {} is still mapped in `id_map`",
                    r.id
                ));
            }
            if r.decomposition.is_empty() || !r.decomposition.iter().all(|&p| kept(p)) {
                return Err(format!(
                    "removed token {} must decompose into kept tokens",
                    r.id
                ));
            }
        }
        for g in &self.ngrams {
            if g.parts.len() < 2 || !g.parts.iter().all(|&p| kept(p)) {
                return Err(format!(
                    "n-gram {} must have at least two parts, all kept tokens",
                    g.id
                ));
            }
        }
        for id in self.special_ids.all() {
            if id as usize >= size {
                return Err(format!("special id {id} is outside the vocabulary"));
            }
        }
        if let Some(e) = &self.embeddings {
            if e.hidden == 0 {
                return Err("`embeddings.hidden` is zero".into());
            }
            if !is_plain_file_name(&e.file) {
                return Err(format!(
                    "`embeddings.file` {:?} must be a plain file name inside the patch directory \
                     (no path, no `..`)",
                    e.file
                ));
            }
        }
        Ok(())
    }
}

/// A file name with no directory part: not empty, not `.` or `..`, no slash, backslash or NUL.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Checks that `path` is a regular file whose real location (symlinks resolved) is directly
/// in `dir`'s real location: a symlink in the patch directory must not lead out of it.
fn inside_dir(dir: &Path, path: &Path) -> std::result::Result<(), String> {
    let real_dir = std::fs::canonicalize(dir).map_err(|e| e.to_string())?;
    let real = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    if real.parent() != Some(real_dir.as_path()) {
        return Err(format!(
            "resolves to {}, outside the patch directory {}",
            real.display(),
            real_dir.display()
        ));
    }
    if !real.is_file() {
        return Err("is not a regular file".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::builder::{BuildOptions, build};
    use crate::vocab::corpus::tokenize;
    use crate::vocab::fixtures;

    fn toy_spec() -> PatchSpec {
        let codec = fixtures::toy_codec();
        let lines: Vec<String> = ["de", "de", "cab", "cab"].map(str::to_owned).to_vec();
        build(
            &codec,
            &tokenize(&codec, &lines, Vec::new(), "toy").unwrap(),
            &BuildOptions::paper(2),
        )
        .unwrap()
    }

    #[test]
    fn save_then_load_gives_the_same_patch_and_digest() {
        let dir = fixtures::scratch_dir("roundtrip");
        let spec = toy_spec();
        let digest = PatchArtifact::save(&dir, &spec).unwrap();
        let loaded = PatchArtifact::load(&dir, Some(&digest)).unwrap();
        assert_eq!(loaded.spec, spec);
        assert_eq!(loaded.digest, digest);
        // The JSON file itself works as the path too, and a `sha256:` prefix is accepted.
        let by_file =
            PatchArtifact::load(&dir.join(PATCH_FILE), Some(&format!("sha256:{digest}"))).unwrap();
        assert_eq!(by_file.dir, dir);
        let bytes = std::fs::read(dir.join(PATCH_FILE)).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&bytes)),
            digest,
            "the digest is sha256sum of patch.json"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tampering_and_wrong_digests_are_refused() {
        let dir = fixtures::scratch_dir("tamper");
        let digest = PatchArtifact::save(&dir, &toy_spec()).unwrap();
        let err = PatchArtifact::load(&dir, Some(&"0".repeat(64))).unwrap_err();
        assert!(matches!(err, VocabError::DigestMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&digest));

        let path = dir.join(PATCH_FILE);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("\"version\": 1", "\"version\": 7")).unwrap();
        let err = PatchArtifact::load(&dir, None).unwrap_err();
        assert!(
            matches!(
                err,
                VocabError::UnsupportedVersion {
                    found: 7,
                    supported: 1,
                    ..
                }
            ),
            "{err}"
        );

        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(
            PatchArtifact::load(&dir, None).unwrap_err(),
            VocabError::BadArtifact { .. }
        ));
        std::fs::remove_dir_all(&dir).unwrap();
        let err = PatchArtifact::load(&dir, None).unwrap_err();
        assert!(matches!(err, VocabError::Io { .. }), "{err}");
    }

    #[test]
    fn validation_catches_broken_maps() {
        let good = toy_spec();
        assert_eq!(good.validate(), Ok(()));
        let mut dup = good.clone();
        dup.id_map[3] = Some(4);
        assert!(dup.validate().unwrap_err().contains("already taken"));
        let mut hole = good.clone();
        hole.ngrams.pop();
        assert!(hole.validate().unwrap_err().contains("used by nothing"));
        let mut removed_part = good.clone();
        removed_part.ngrams[0].parts = vec![3, 12];
        assert!(removed_part.validate().unwrap_err().contains("kept tokens"));
        let mut short = good.clone();
        short.ngrams[0].parts = vec![3];
        assert!(short.validate().is_err());
        let mut unlisted = good.clone();
        unlisted.removed.pop();
        assert!(
            unlisted
                .validate()
                .unwrap_err()
                .contains("not listed as removed")
        );
        let mut outside = good;
        outside.id_map.push(Some(99));
        assert!(
            outside
                .validate()
                .unwrap_err()
                .contains("entries for a vocabulary")
        );
    }

    #[test]
    fn the_embeddings_file_is_a_plain_name_inside_the_patch_directory() {
        let good = toy_spec();
        let with_file = |file: &str| {
            let mut spec = good.clone();
            spec.embeddings = Some(EmbeddingsInfo {
                file: file.into(),
                sha256: "0".repeat(64),
                hidden: 3,
                model: "toy".into(),
            });
            spec
        };
        assert_eq!(with_file(EMBEDDINGS_FILE).validate(), Ok(()));
        for bad in [
            "",
            ".",
            "..",
            "/etc/passwd",
            "../x",
            "sub/rows.safetensors",
            "a\\b",
        ] {
            let error = with_file(bad).validate().expect_err(bad);
            assert!(error.contains("plain file name"), "{bad}: {error}");
        }

        // A symlink named like the embeddings file, leading out of the directory, is refused
        // even when the file it points to has the recorded digest.
        let dir = fixtures::scratch_dir("symlink-out");
        let outside = fixtures::scratch_dir("symlink-target");
        std::fs::create_dir_all(&outside).unwrap();
        let rows = NewRows {
            ids: good.ngrams.iter().map(|g| g.id).collect(),
            hidden: 3,
            input: vec![0.5; 3 * good.ngrams.len()],
            output: vec![-0.5; 3 * good.ngrams.len()],
        };
        let info = save_rows(&outside, &rows, "toy".into()).unwrap();
        let mut spec = good;
        spec.embeddings = Some(info);
        PatchArtifact::save(&dir, &spec).unwrap();
        std::os::unix::fs::symlink(outside.join(EMBEDDINGS_FILE), dir.join(EMBEDDINGS_FILE))
            .unwrap();
        let error = PatchArtifact::load(&dir, None)
            .unwrap()
            .load_rows()
            .expect_err("the rows live outside the patch");
        assert!(
            error.to_string().contains("outside the patch directory"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn rows_round_trip_through_safetensors_and_are_checked() {
        let dir = fixtures::scratch_dir("rows");
        let mut spec = toy_spec();
        PatchArtifact::save(&dir, &spec).unwrap();
        let rows = NewRows {
            ids: spec.ngrams.iter().map(|g| g.id).collect(),
            hidden: 3,
            input: (0..6).map(|x| x as f32).collect(),
            output: (0..6).map(|x| -(x as f32)).collect(),
        };
        let no_rows = PatchArtifact::load(&dir, None)
            .unwrap()
            .load_rows()
            .unwrap_err();
        assert!(no_rows.to_string().contains("init-embeddings"), "{no_rows}");
        spec.embeddings = Some(save_rows(&dir, &rows, "toy".into()).unwrap());
        PatchArtifact::save(&dir, &spec).unwrap();
        assert_eq!(
            PatchArtifact::load(&dir, None)
                .unwrap()
                .load_rows()
                .unwrap(),
            rows
        );
        let meta = std::fs::metadata(dir.join(EMBEDDINGS_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
            0o644
        );

        std::fs::write(dir.join(EMBEDDINGS_FILE), b"garbage").unwrap();
        let err = PatchArtifact::load(&dir, None)
            .unwrap()
            .load_rows()
            .unwrap_err();
        assert!(matches!(err, VocabError::DigestMismatch { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
