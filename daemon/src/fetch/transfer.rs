//! Moving bytes from a source into a staging file while hashing them: a local copy or a
//! streaming HTTP(S) GET, with the HTTP status mapped to a [`FetchError`] and progress logged.
//! It must not decide where files go in the cache.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{StatusCode, Url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::digest::{Sha256Digest, StreamingDigest};
use super::error::FetchError;

/// How often a download in progress is logged.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Attempts at a download that failed on the way (connection reset, 5xx).
const ATTEMPTS: u32 = 3;

/// Where one file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A path visible to this process.
    Local(PathBuf),
    /// An HTTP(S) GET.
    Http(HttpGet),
}

impl Source {
    /// The path or URL, for messages.
    pub fn location(&self) -> String {
        match self {
            Self::Local(path) => path.display().to_string(),
            Self::Http(get) => get.url.to_string(),
        }
    }
}

/// An HTTP(S) GET, optionally with a bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    /// The URL.
    pub url: Url,
    /// `Authorization: Bearer <token>`.
    pub bearer: Option<String>,
}

impl HttpGet {
    /// A plain GET of `url`.
    pub fn new(url: Url) -> Self {
        Self { url, bearer: None }
    }

    /// The same GET with a bearer token, when one is given.
    pub fn with_bearer(mut self, token: Option<String>) -> Self {
        self.bearer = token.filter(|t| !t.is_empty());
        self
    }

    /// Sends the request; a non-2xx answer becomes the matching [`FetchError`].
    pub async fn send(&self, client: &reqwest::Client) -> Result<reqwest::Response, FetchError> {
        let location = self.url.to_string();
        let mut request = client.get(self.url.clone());
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| FetchError::Unreachable {
            location: location.clone(),
            detail: error_chain(&e),
        })?;
        check_status(&location, response).await
    }
}

/// Maps a non-2xx response to the error a user can act on.
pub async fn check_status(
    location: &str,
    response: reqwest::Response,
) -> Result<reqwest::Response, FetchError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body: String = response
        .text()
        .await
        .unwrap_or_default()
        .chars()
        .take(200)
        .collect();
    let detail = format!("HTTP {status}: {}", body.trim());
    let location = location.to_owned();
    Err(match status {
        StatusCode::NOT_FOUND | StatusCode::GONE => FetchError::NotFound { location, detail },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            FetchError::AccessDenied { location, detail }
        }
        _ => FetchError::Unreachable { location, detail },
    })
}

/// The HTTP client every source uses (rustls, redirects followed, no overall timeout: weights
/// are large; a stalled connection fails after `read_timeout`).
pub fn http_client() -> Result<reqwest::Client, FetchError> {
    reqwest::Client::builder()
        .user_agent(concat!("fused-daemon-fetch/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| FetchError::Unreachable {
            location: "HTTP client".into(),
            detail: error_chain(&e),
        })
}

/// Copies `source` into the new file `dest`, returning the SHA-256 of the bytes written.
pub async fn copy_to(
    client: &reqwest::Client,
    source: &Source,
    dest: &Path,
) -> Result<Sha256Digest, FetchError> {
    match source {
        Source::Local(path) => copy_local(path, dest).await,
        Source::Http(get) => {
            let mut attempt = 1;
            loop {
                match download(client, get, dest).await {
                    Err(FetchError::Unreachable { location, detail }) if attempt < ATTEMPTS => {
                        tracing::warn!(%location, %detail, attempt, "download failed; retrying");
                        tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
                        attempt += 1;
                    }
                    result => return result,
                }
            }
        }
    }
}

async fn copy_local(path: &Path, dest: &Path) -> Result<Sha256Digest, FetchError> {
    let location = path.display().to_string();
    let mut input = tokio::fs::File::open(path).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            FetchError::NotFound {
                location: location.clone(),
                detail: "no such file".into(),
            }
        } else {
            FetchError::Unreachable {
                location: location.clone(),
                detail: e.to_string(),
            }
        }
    })?;
    let total = input.metadata().await.ok().map(|m| m.len());
    let mut output = create(dest).await?;
    let mut digest = StreamingDigest::default();
    let mut progress = Progress::new(&location, total);
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = input
            .read(&mut buffer)
            .await
            .map_err(|e| FetchError::Unreachable {
                location: location.clone(),
                detail: e.to_string(),
            })?;
        if read == 0 {
            break;
        }
        digest.update(&buffer[..read]);
        output
            .write_all(&buffer[..read])
            .await
            .map_err(FetchError::cache(dest))?;
        progress.advance(read);
    }
    finish(output, dest).await?;
    progress.done();
    Ok(digest.finish())
}

async fn download(
    client: &reqwest::Client,
    get: &HttpGet,
    dest: &Path,
) -> Result<Sha256Digest, FetchError> {
    let location = get.url.to_string();
    let response = get.send(client).await?;
    let total = response.content_length();
    let mut output = create(dest).await?;
    let mut digest = StreamingDigest::default();
    let mut progress = Progress::new(&location, total);
    let mut received = 0u64;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| FetchError::Unreachable {
            location: location.clone(),
            detail: format!("after {received} bytes: {}", error_chain(&e)),
        })?;
        digest.update(&chunk);
        output
            .write_all(&chunk)
            .await
            .map_err(FetchError::cache(dest))?;
        received += chunk.len() as u64;
        progress.advance(chunk.len());
    }
    if let Some(total) = total
        && total != received
    {
        return Err(FetchError::Unreachable {
            location,
            detail: format!("connection closed after {received} of {total} bytes"),
        });
    }
    finish(output, dest).await?;
    progress.done();
    Ok(digest.finish())
}

async fn create(dest: &Path) -> Result<tokio::fs::File, FetchError> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(FetchError::cache(parent))?;
    }
    tokio::fs::File::create(dest)
        .await
        .map_err(FetchError::cache(dest))
}

async fn finish(mut output: tokio::fs::File, dest: &Path) -> Result<(), FetchError> {
    output.flush().await.map_err(FetchError::cache(dest))?;
    output.sync_all().await.map_err(FetchError::cache(dest))
}

/// A reqwest error with its causes (connect refused, DNS, TLS), which `Display` alone hides.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Logs a transfer's progress at most every [`PROGRESS_EVERY`].
struct Progress<'a> {
    location: &'a str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_log: Instant,
}

impl<'a> Progress<'a> {
    fn new(location: &'a str, total: Option<u64>) -> Self {
        tracing::info!(location, bytes = total, "fetching");
        let now = Instant::now();
        Self {
            location,
            total,
            done: 0,
            started: now,
            last_log: now,
        }
    }

    fn advance(&mut self, bytes: usize) {
        self.done += bytes as u64;
        if self.last_log.elapsed() >= PROGRESS_EVERY {
            self.last_log = Instant::now();
            let percent = self
                .total
                .filter(|t| *t > 0)
                .map(|t| (self.done as f64 * 100.0 / t as f64).round());
            tracing::info!(
                location = self.location,
                bytes = self.done,
                total = self.total,
                percent,
                "fetching"
            );
        }
    }

    fn done(&self) {
        let seconds = self.started.elapsed().as_secs_f64();
        tracing::info!(
            location = self.location,
            bytes = self.done,
            seconds,
            mib_per_s = self.done as f64 / (1 << 20) as f64 / seconds.max(1e-9),
            "fetched"
        );
    }
}
