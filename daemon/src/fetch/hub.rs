//! `hf://org/repo[@revision][/path]`: the Hugging Face Hub's public HTTP API. A path names one
//! file (`GET {endpoint}/{repo}/resolve/{revision}/{path}`); no path means the repository's
//! checkpoint files (config, tokenizer and safetensors files, listed by
//! `GET {endpoint}/api/models/{repo}/tree/{revision}?recursive=true`), each verified against the
//! LFS SHA-256 the Hub publishes. `$HF_ENDPOINT` overrides the endpoint, `$HF_TOKEN` is sent as a
//! bearer token for gated or private repositories.
//!
//! Not exercised by the tests (no route to the Hub from CI); see docs/OPERATOR.md.

use reqwest::Url;
use serde::Deserialize;

use super::digest::Sha256Digest;
use super::error::FetchError;
use super::plan::{Part, Plan, safe_relative_path};
use super::transfer::{Http, HttpGet, Source};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// File names of a checkpoint directory the daemon loads (`config.json`, tokenizer files,
/// safetensors shards and their index); other files (PyTorch `.bin`, ONNX, GGUF variants) are
/// skipped.
fn is_checkpoint_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.ends_with(".json")
        || name.ends_with(".safetensors")
        || name == "tokenizer.model"
        || name == "merges.txt"
        || name == "vocab.txt"
}

#[derive(Debug, Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    lfs: Option<LfsInfo>,
}

#[derive(Debug, Deserialize)]
struct LfsInfo {
    oid: String,
}

/// The plan for `hf://{repo}@{revision}[/{path}]`.
pub async fn plan(
    client: &Http,
    repo: &str,
    revision: &str,
    path: Option<&str>,
) -> Result<Plan, FetchError> {
    let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| DEFAULT_ENDPOINT.to_owned());
    let token = std::env::var("HF_TOKEN").ok();
    let file = |relative: &str| -> Result<HttpGet, FetchError> {
        let url = url(
            &endpoint,
            &[repo, "resolve", revision, relative].join("/"),
            &[],
        )?;
        Ok(HttpGet::new(url).with_bearer(token.clone()))
    };
    if let Some(path) = path {
        return Ok(Plan::File(Part::unverified(Source::Http(file(path)?))));
    }
    let listing = url(
        &endpoint,
        &format!("api/models/{repo}/tree/{revision}"),
        &[("recursive", "true")],
    )?;
    let location = listing.to_string();
    let response = HttpGet::new(listing)
        .with_bearer(token.clone())
        .send(client)
        .await?;
    let entries: Vec<TreeEntry> = response.json().await.map_err(|e| FetchError::Unreachable {
        location: location.clone(),
        detail: format!("unexpected repository listing: {e}"),
    })?;
    let mut files = Vec::new();
    for entry in entries {
        if entry.kind != "file" || !is_checkpoint_file(&entry.path) {
            continue;
        }
        if !safe_relative_path(&entry.path) {
            return Err(FetchError::Unreachable {
                location,
                detail: format!("the listing names an unsafe path {:?}", entry.path),
            });
        }
        let integrity = entry
            .lfs
            .map(|lfs| Sha256Digest::from_hex(&lfs.oid))
            .transpose()?;
        let source = Source::Http(file(&entry.path)?);
        files.push((entry.path, Part { source, integrity }));
    }
    if files.is_empty() {
        return Err(FetchError::NotFound {
            location,
            detail: "no config, tokenizer or safetensors files in the repository".into(),
        });
    }
    Ok(Plan::Dir(files))
}

fn url(endpoint: &str, path: &str, query: &[(&str, &str)]) -> Result<Url, FetchError> {
    let text = format!("{}/{path}", endpoint.trim_end_matches('/'));
    let mut url = Url::parse(&text).map_err(|e| FetchError::InvalidUri {
        uri: text.clone(),
        reason: e.to_string(),
    })?;
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::is_checkpoint_file;

    #[test]
    fn keeps_only_what_the_daemon_loads() {
        for keep in [
            "config.json",
            "tokenizer.json",
            "model-00001-of-00002.safetensors",
            "model.safetensors.index.json",
            "tokenizer.model",
        ] {
            assert!(is_checkpoint_file(keep), "{keep}");
        }
        for skip in [
            "pytorch_model.bin",
            "README.md",
            "onnx/model.onnx",
            ".gitattributes",
        ] {
            assert!(!is_checkpoint_file(skip), "{skip}");
        }
    }
}
