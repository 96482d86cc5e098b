//! A domain corpus as base-token sequences: one sequence per non-blank line, tokenized in
//! parallel with a progress bar over the bytes, stored flat (ids + offsets) to stay compact.

use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::{Result, VocabError};
use crate::tokenizer::Codec;

/// Lines tokenized per parallel task (and per progress-bar tick).
const CHUNK_LINES: usize = 512;

/// Where a corpus file came from, recorded in the patch for reproducibility.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// Token sequences, flat: sequence `i` is `ids[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Clone, Default)]
pub struct TokenSequences {
    ids: Vec<u32>,
    offsets: Vec<usize>,
}

impl TokenSequences {
    pub fn new() -> Self {
        Self {
            ids: Vec::new(),
            offsets: vec![0],
        }
    }

    pub fn push(&mut self, seq: &[u32]) {
        self.ids.extend_from_slice(seq);
        self.offsets.push(self.ids.len());
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Total tokens over all sequences.
    pub fn total_tokens(&self) -> usize {
        self.ids.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u32]> + '_ {
        self.offsets.windows(2).map(|w| &self.ids[w[0]..w[1]])
    }

    /// Rewrites every sequence token by token (`f` appends the replacement of one id).
    pub fn map_tokens(&self, mut f: impl FnMut(u32, &mut Vec<u32>)) -> Self {
        let mut out = Self {
            ids: Vec::with_capacity(self.ids.len()),
            offsets: Vec::with_capacity(self.offsets.len()),
        };
        out.offsets.push(0);
        for seq in self.iter() {
            for &id in seq {
                f(id, &mut out.ids);
            }
            out.offsets.push(out.ids.len());
        }
        out
    }
}

/// A tokenized corpus with its provenance.
#[derive(Debug)]
pub struct Corpus {
    pub files: Vec<CorpusFile>,
    pub lines: usize,
    pub bytes: u64,
    pub sequences: TokenSequences,
}

/// Reads `paths` and returns their non-blank lines (newlines stripped) and provenance.
pub fn read_lines(paths: &[PathBuf]) -> Result<(Vec<String>, Vec<CorpusFile>)> {
    let mut lines = Vec::new();
    let mut files = Vec::with_capacity(paths.len());
    for path in paths {
        let bytes = std::fs::read(path).map_err(VocabError::io(path))?;
        let text = String::from_utf8(bytes).map_err(|e| VocabError::Io {
            path: path.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8: {e}")),
        })?;
        files.push(CorpusFile {
            name: file_name(path),
            bytes: text.len() as u64,
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
        });
        lines.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(str::to_owned),
        );
    }
    Ok((lines, files))
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Tokenizes lines with the base tokenizer (no special tokens), in parallel, showing progress on
/// stderr when it is a terminal.
pub fn tokenize(
    codec: &Codec,
    lines: &[String],
    files: Vec<CorpusFile>,
    label: &str,
) -> Result<Corpus> {
    let bytes: u64 = lines.iter().map(|l| l.len() as u64 + 1).sum();
    if lines.is_empty() {
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        return Err(VocabError::EmptyCorpus(names.join(", ")));
    }
    let bar = ProgressBar::new(bytes).with_message(label.to_owned());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let chunks: Vec<Vec<Vec<u32>>> = lines
        .par_chunks(CHUNK_LINES)
        .map(|chunk| {
            let seqs = chunk
                .iter()
                .map(|line| codec.encode_base(line, false))
                .collect::<Result<Vec<_>, _>>();
            bar.inc(chunk.iter().map(|l| l.len() as u64 + 1).sum());
            seqs
        })
        .collect::<Result<_, _>>()?;
    bar.finish_and_clear();
    let mut sequences = TokenSequences::new();
    for seq in chunks.iter().flatten() {
        sequences.push(seq);
    }
    Ok(Corpus {
        files,
        lines: lines.len(),
        bytes,
        sequences,
    })
}
