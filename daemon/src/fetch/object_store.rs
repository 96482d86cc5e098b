//! `s3://bucket/key` and `gs://bucket/object`: anonymous GETs of public objects through each
//! store's public HTTP API. S3: `https://{bucket}.s3[.{AWS_REGION}].amazonaws.com/{key}`, or
//! path-style under `$AWS_ENDPOINT_URL_S3` / `$AWS_ENDPOINT_URL` (MinIO, Ceph, R2). GCS:
//! `https://storage.googleapis.com/{bucket}/{object}` (or `$STORAGE_EMULATOR_HOST`), with
//! `$GOOGLE_OAUTH_ACCESS_TOKEN` sent as a bearer token when set. Signed S3 requests (SigV4) are
//! not implemented: private S3 objects need a presigned `https://` URI instead.
//!
//! Not exercised by the tests (no route to the stores from CI); see docs/OPERATOR.md.

use reqwest::Url;

use super::error::FetchError;
use super::plan::{Part, Plan};
use super::transfer::{HttpGet, Source};

/// The plan for `s3://{bucket}/{key}`.
pub fn s3(bucket: &str, key: &str) -> Result<Plan, FetchError> {
    let custom = std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .ok();
    let url = match custom {
        Some(endpoint) => object_url(&endpoint, &[bucket], key)?,
        None => {
            let host = match std::env::var("AWS_REGION") {
                Ok(region) if !region.is_empty() => format!("{bucket}.s3.{region}.amazonaws.com"),
                _ => format!("{bucket}.s3.amazonaws.com"),
            };
            object_url(&format!("https://{host}"), &[], key)?
        }
    };
    Ok(Plan::File(Part::unverified(Source::Http(HttpGet::new(
        url,
    )))))
}

/// The plan for `gs://{bucket}/{object}`.
pub fn gcs(bucket: &str, object: &str) -> Result<Plan, FetchError> {
    let endpoint = std::env::var("STORAGE_EMULATOR_HOST")
        .unwrap_or_else(|_| "https://storage.googleapis.com".to_owned());
    let url = object_url(&endpoint, &[bucket], object)?;
    let token = std::env::var("GOOGLE_OAUTH_ACCESS_TOKEN").ok();
    Ok(Plan::File(Part::unverified(Source::Http(
        HttpGet::new(url).with_bearer(token),
    ))))
}

/// `{endpoint}/{prefix…}/{key}` with every segment percent-encoded.
fn object_url(endpoint: &str, prefix: &[&str], key: &str) -> Result<Url, FetchError> {
    let invalid = |reason: String| FetchError::InvalidUri {
        uri: format!("{endpoint} + {key}"),
        reason,
    };
    let mut url = Url::parse(endpoint).map_err(|e| invalid(e.to_string()))?;
    url.path_segments_mut()
        .map_err(|()| invalid("the endpoint cannot hold a path".into()))?
        .pop_if_empty()
        .extend(prefix.iter().copied())
        .extend(key.split('/'));
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::object_url;

    #[test]
    fn object_urls_are_percent_encoded_per_segment() {
        let url = object_url("https://storage.example/", &["bucket"], "dir/a b#1.json").unwrap();
        assert_eq!(
            url.as_str(),
            "https://storage.example/bucket/dir/a%20b%231.json"
        );
    }
}
