//! Test fixtures of the vocabulary patch: a hand-made toy tokenizer whose patch is known in
//! advance, and patches built from a slice of the real ICD-10-CM corpus for real tokenizers.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use super::artifact::PatchSpec;
use super::builder::{BuildOptions, build};
use super::corpus::{read_lines, tokenize};
use crate::tokenizer::{Codec, fixtures};

/// A scratch directory for one test, removed first if it exists.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fused-vocab-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A SentencePiece-style toy: `<unk> <s> </s> ▁ a b c d e f` (ids 0..=9) and merges
/// `▁a`(10) `bc`(11) `▁abc`(12) `de`(13) `▁f`(14) `def`(15).
pub fn toy_tokenizer_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(write_toy_tokenizer).clone()
}

fn write_toy_tokenizer() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fused-toy-tokenizer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir is writable");
    let vocab = [
        "<unk>", "<s>", "</s>", "▁", "a", "b", "c", "d", "e", "f", "▁a", "bc", "▁abc", "de", "▁f",
        "def",
    ];
    let vocab: serde_json::Map<String, serde_json::Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).to_owned(), i.into()))
        .collect();
    let special = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
        "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab,
            "merges": [["▁", "a"], ["b", "c"], ["▁a", "bc"], ["d", "e"], ["▁", "f"], ["de", "f"]]}
    });
    let config = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"});
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string())
        .expect("temp dir is writable");
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string())
        .expect("temp dir is writable");
    dir
}

pub fn toy_codec() -> Codec {
    Codec::from_hf_dir(&toy_tokenizer_dir()).expect("the toy tokenizer loads")
}

/// Builds a patch on the first `lines` lines of the ICD-10-CM training split.
pub fn icd10_patch(codec: &Codec, lines: usize, options: &BuildOptions) -> Option<PatchSpec> {
    let dir = fixtures::icd10_dir()?;
    let (mut text, files) = read_lines(&[dir.join("train.txt")]).expect("the corpus reads");
    text.truncate(lines);
    let corpus = tokenize(codec, &text, files, "test corpus").expect("the corpus tokenizes");
    Some(build(codec, &corpus, options).expect("the patch builds"))
}

/// The default build options with `swap` tokens.
pub fn options(swap: usize) -> BuildOptions {
    BuildOptions {
        swap,
        ..BuildOptions::default()
    }
}

fn patched(
    path: Option<PathBuf>,
    load: fn(&std::path::Path) -> crate::tokenizer::Result<Codec>,
) -> Option<(Arc<Codec>, PatchSpec)> {
    let base = load(&path?).expect("the base tokenizer loads");
    let spec = icd10_patch(&base, 20_000, &options(2000))?;
    let patch =
        super::patch::PatchTokenizer::from_spec(&spec, "test".into()).expect("the patch is valid");
    Some((
        Arc::new(base.with_patch(Arc::new(patch)).expect("the patch fits")),
        spec,
    ))
}

/// SmolLM2's codec with a small ICD-10-CM patch (default options, 2000 swaps), built once.
pub fn patched_smollm2() -> Option<(Arc<Codec>, PatchSpec)> {
    static PATCHED: OnceLock<Option<(Arc<Codec>, PatchSpec)>> = OnceLock::new();
    PATCHED
        .get_or_init(|| patched(fixtures::smollm2_gguf(), Codec::from_gguf_path))
        .clone()
}

/// Mistral-7B's codec with a small ICD-10-CM patch (default options, 2000 swaps), built once.
pub fn patched_mistral() -> Option<(Arc<Codec>, PatchSpec)> {
    static PATCHED: OnceLock<Option<(Arc<Codec>, PatchSpec)>> = OnceLock::new();
    PATCHED
        .get_or_init(|| patched(fixtures::mistral_dir(), Codec::from_hf_dir))
        .clone()
}
