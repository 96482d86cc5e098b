//! `oci://registry/repository[:tag|@sha256:…]`: an artifact pushed to an OCI registry (ORAS
//! style: one layer per file, named by the `org.opencontainers.image.title` annotation), read
//! through the OCI distribution API: `GET /v2/{repository}/manifests/{reference}`, then
//! `GET /v2/{repository}/blobs/{digest}` per layer, each verified against its digest. Anonymous
//! pulls use the registry's bearer-token challenge (`WWW-Authenticate: Bearer realm=…`). One
//! layer is a file; several are a directory. An image index resolves to its first manifest.
//! A manifest asked for by digest (`@sha256:…`, or an index's entry) must hash to that digest:
//! the registry is not trusted to serve what was pinned.
//! `localhost` / `127.0.0.1` registries are spoken to over plain HTTP, all others over HTTPS.
//!
//! Not exercised by the tests (no registry is reachable from CI); see docs/OPERATOR.md.

use reqwest::{StatusCode, Url};
use serde::Deserialize;

use super::digest::Sha256Digest;
use super::error::FetchError;
use super::plan::{Part, Plan, safe_relative_path};
use super::transfer::{Http, HttpGet, Source, check_status};

const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";

#[derive(Debug, Deserialize)]
struct Manifest {
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    digest: String,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// The plan for `oci://{registry}/{repository}` at `reference`.
pub async fn plan(
    client: &Http,
    registry: &str,
    repository: &str,
    reference: &str,
) -> Result<Plan, FetchError> {
    let scheme = if registry.starts_with("localhost") || registry.starts_with("127.0.0.1") {
        "http"
    } else {
        "https"
    };
    let base = format!("{scheme}://{registry}/v2/{repository}");
    let mut token = None;
    let mut manifest = get_manifest(client, &base, reference, &mut token).await?;
    if manifest.layers.is_empty()
        && let Some(first) = manifest.manifests.first()
    {
        let digest = first.digest.clone();
        manifest = get_manifest(client, &base, &digest, &mut token).await?;
    }
    let blob =
        |descriptor: &Descriptor| -> Result<Part, FetchError> {
            let hex = descriptor.digest.strip_prefix("sha256:").ok_or_else(|| {
                FetchError::Unreachable {
                    location: base.clone(),
                    detail: format!("unsupported layer digest {}", descriptor.digest),
                }
            })?;
            let url = parse_url(&format!("{base}/blobs/{}", descriptor.digest))?;
            Ok(Part {
                source: Source::Http(HttpGet::new(url).with_bearer(token.clone())),
                integrity: Some(Sha256Digest::from_hex(hex)?),
            })
        };
    match manifest.layers.as_slice() {
        [] => Err(FetchError::NotFound {
            location: format!("{base}/manifests/{reference}"),
            detail: "the manifest has no layers".into(),
        }),
        [single] => Ok(Plan::File(blob(single)?)),
        layers => {
            let mut files = Vec::new();
            for layer in layers {
                let title = layer
                    .annotations
                    .get(TITLE_ANNOTATION)
                    .filter(|t| safe_relative_path(t))
                    .ok_or_else(|| FetchError::Unreachable {
                        location: base.clone(),
                        detail: format!(
                            "layer {} has no safe {TITLE_ANNOTATION} annotation",
                            layer.digest
                        ),
                    })?;
                files.push((title.clone(), blob(layer)?));
            }
            Ok(Plan::Dir(files))
        }
    }
}

async fn get_manifest(
    client: &Http,
    base: &str,
    reference: &str,
    token: &mut Option<String>,
) -> Result<Manifest, FetchError> {
    let location = format!("{base}/manifests/{reference}");
    let unreachable = |detail: String| FetchError::Unreachable {
        location: location.clone(),
        detail,
    };
    let url = parse_url(&location)?;
    client.policy.check_host(&url).await?;
    let mut request = client
        .client
        .get(url)
        .header(reqwest::header::ACCEPT, MANIFEST_TYPES);
    if let Some(bearer) = token.as_deref() {
        request = request.bearer_auth(bearer);
    }
    let mut response = request
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if response.status() == StatusCode::UNAUTHORIZED && token.is_none() {
        let challenge = response
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        *token = Some(anonymous_token(client, &challenge, &location).await?);
        return Box::pin(get_manifest(client, base, reference, token)).await;
    }
    response = check_status(&location, response).await?;
    let bytes = response
        .bytes()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    if let Some(pinned) = reference.strip_prefix("sha256:") {
        let actual = Sha256Digest::of(&bytes);
        if Sha256Digest::from_hex(pinned)? != actual {
            return Err(FetchError::DigestMismatch {
                location,
                expected: pinned.to_owned(),
                actual: actual.to_hex(),
            });
        }
    }
    serde_json::from_slice(&bytes).map_err(|e| unreachable(format!("unexpected manifest: {e}")))
}

/// Answers a `Bearer realm="…",service="…",scope="…"` challenge with an anonymous token.
async fn anonymous_token(
    client: &Http,
    challenge: &str,
    location: &str,
) -> Result<String, FetchError> {
    let params = parse_challenge(challenge).ok_or_else(|| FetchError::AccessDenied {
        location: location.to_owned(),
        detail: format!("unsupported authentication challenge {challenge:?}"),
    })?;
    let mut url = parse_url(&params.realm)?;
    {
        let mut query = url.query_pairs_mut();
        if let Some(service) = &params.service {
            query.append_pair("service", service);
        }
        if let Some(scope) = &params.scope {
            query.append_pair("scope", scope);
        }
    }
    let realm = url.to_string();
    let answer: TokenAnswer = HttpGet::new(url)
        .send(client)
        .await?
        .json()
        .await
        .map_err(|e| FetchError::AccessDenied {
            location: realm.clone(),
            detail: format!("unexpected token answer: {e}"),
        })?;
    answer
        .token
        .or(answer.access_token)
        .ok_or_else(|| FetchError::AccessDenied {
            location: realm,
            detail: "the token service returned no token".into(),
        })
}

#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    realm: String,
    service: Option<String>,
    scope: Option<String>,
}

fn parse_challenge(header: &str) -> Option<Challenge> {
    let rest = header.trim().strip_prefix("Bearer ")?;
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    for pair in split_params(rest) {
        let (key, value) = pair.split_once('=')?;
        let value = value.trim().trim_matches('"').to_owned();
        match key.trim() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            "scope" => scope = Some(value),
            _ => {}
        }
    }
    Some(Challenge {
        realm: realm?,
        service,
        scope,
    })
}

/// Splits `a="x,y",b="z"` on the commas outside quotes.
fn split_params(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            ',' if !in_quotes => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

fn parse_url(text: &str) -> Result<Url, FetchError> {
    Url::parse(text).map_err(|e| FetchError::InvalidUri {
        uri: text.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_token_challenges() {
        let header = r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:org/model:pull,push""#;
        assert_eq!(
            parse_challenge(header),
            Some(Challenge {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:org/model:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge("Basic realm=\"x\""), None);
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
    }
}
