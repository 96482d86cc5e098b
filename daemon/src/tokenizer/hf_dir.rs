//! Loads the base tokenizer from a Hugging Face style directory: `tokenizer.json`, plus
//! `tokenizer_config.json` (chat template, BOS/EOS names), `chat_template.jinja`, and
//! `generation_config.json` / `config.json` (EOS ids used to stop generation).
//!
//! Only the files a tokenizer needs are read; weights are not this module's business.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;
use tokenizers::Tokenizer;

use super::error::{Result, TokenizerError};
use super::{BaseParts, SpecialIds};

fn read_json(path: &Path) -> Result<Option<Json>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| TokenizerError::Json {
                path: path.to_owned(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(TokenizerError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn bad_config(path: &Path, reason: impl Into<String>) -> TokenizerError {
    TokenizerError::BadConfig {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// A special token named in `tokenizer_config.json`: a string or `{"content": ...}`.
fn token_name(value: Option<&Json>) -> Option<&str> {
    match value? {
        Json::String(s) => Some(s),
        Json::Object(map) => map.get("content").and_then(Json::as_str),
        _ => None,
    }
}

/// `eos_token_id` / `bos_token_id` in a config: an integer or a list of integers.
fn config_ids(config: Option<&Json>, key: &str, path: &Path) -> Result<Vec<u32>> {
    let to_id = |v: &Json| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| bad_config(path, format!("`{key}` holds {v}, not a token id")))
    };
    match config.and_then(|c| c.get(key)) {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(items)) => items.iter().map(to_id).collect(),
        Some(v) => Ok(vec![to_id(v)?]),
    }
}

/// The chat template: `chat_template.jinja`, else `tokenizer_config.json`'s `chat_template`
/// (a string, or a list of named templates of which `default` is taken).
fn chat_template(
    dir: &Path,
    tokenizer_config: Option<&Json>,
    config_path: &Path,
) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(text) => return Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(TokenizerError::Io {
                path: jinja,
                source,
            });
        }
    }
    match tokenizer_config.and_then(|c| c.get("chat_template")) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(Json::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template").and_then(Json::as_str))
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| {
                bad_config(
                    config_path,
                    "`chat_template` is a list without a `default` entry",
                )
            }),
        Some(other) => Err(bad_config(
            config_path,
            format!("`chat_template` is {other}, not a string"),
        )),
    }
}

pub(crate) fn base_parts(dir: &Path) -> Result<BaseParts> {
    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer =
        Tokenizer::from_file(&tokenizer_path).map_err(|e| TokenizerError::BadConfig {
            path: tokenizer_path.clone(),
            reason: e.to_string(),
        })?;
    let tc_path: PathBuf = dir.join("tokenizer_config.json");
    let tokenizer_config = read_json(&tc_path)?;
    let gen_path = dir.join("generation_config.json");
    let generation_config = read_json(&gen_path)?;
    let cfg_path = dir.join("config.json");
    let config = read_json(&cfg_path)?;

    let named_id = |key: &str| -> Result<Option<u32>> {
        match token_name(tokenizer_config.as_ref().and_then(|c| c.get(key))) {
            None => Ok(None),
            Some(name) => tokenizer.token_to_id(name).map(Some).ok_or_else(|| {
                bad_config(
                    &tc_path,
                    format!("`{key}` {name:?} is not in the vocabulary"),
                )
            }),
        }
    };

    // Stop ids: generation_config.json, else config.json, else tokenizer_config.json's eos_token.
    let mut eos = config_ids(generation_config.as_ref(), "eos_token_id", &gen_path)?;
    if eos.is_empty() {
        eos = config_ids(config.as_ref(), "eos_token_id", &cfg_path)?;
    }
    if eos.is_empty() {
        eos.extend(named_id("eos_token")?);
    }
    let bos = match named_id("bos_token")? {
        Some(id) => Some(id),
        None => config_ids(config.as_ref(), "bos_token_id", &cfg_path)?
            .first()
            .copied(),
    };
    let vocab_size = tokenizer.get_vocab_size(true);
    let specials = SpecialIds {
        bos,
        eos,
        pad: named_id("pad_token")?,
        unk: named_id("unk_token")?,
    };
    for id in specials.all() {
        if id as usize >= vocab_size {
            return Err(bad_config(
                dir,
                format!("special id {id} is outside the vocabulary of {vocab_size}"),
            ));
        }
    }
    Ok(BaseParts {
        chat_template: chat_template(dir, tokenizer_config.as_ref(), &tc_path)?,
        tokenizer,
        specials,
        vocab_size,
    })
}
