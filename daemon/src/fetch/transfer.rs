//! Moving bytes from a source into a staging file while hashing them: a local copy or a
//! streaming HTTP(S) GET, with the HTTP status mapped to a [`FetchError`], a byte budget
//! (`--max-bytes`), and progress logged. An HTTP download that breaks off is resumed with a
//! `Range` request (validated by `If-Range` against the ETag or Last-Modified the first answer
//! carried, recorded in a state file beside the staging area, so a restarted fetch resumes
//! too); a source that cannot resume is downloaded again from zero. It must not decide where
//! files go in the cache.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::digest::{Sha256Digest, StreamingDigest};
use super::error::FetchError;
use super::guard::AddressPolicy;

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
    pub async fn send(&self, http: &Http) -> Result<reqwest::Response, FetchError> {
        let response = self.send_with(http, |r| r).await?;
        check_status(self.url.as_str(), response).await
    }

    /// Sends the request as `adjust` changes it, whatever the status of the answer.
    async fn send_with(
        &self,
        http: &Http,
        adjust: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, FetchError> {
        http.policy.check_host(&self.url).await?;
        let mut request = http.client.get(self.url.clone());
        if let Some(token) = &self.bearer {
            request = request.bearer_auth(token);
        }
        adjust(request).send().await.map_err(|e| {
            // A redirect the policy refused: say so, rather than "unreachable" (and no retry).
            if e.is_redirect()
                && let Some(Err(refused)) = e.url().map(|url| http.policy.check_url(url))
            {
                return refused;
            }
            FetchError::Unreachable {
                location: self.url.to_string(),
                detail: error_chain(&e),
            }
        })
    }
}

/// The HTTP client every source uses, and the addresses it may reach.
#[derive(Debug, Clone)]
pub struct Http {
    /// The client (its resolver and redirect policy enforce `policy`).
    pub client: reqwest::Client,
    /// Which addresses requests may go to.
    pub policy: AddressPolicy,
}

/// How many bytes an artifact may still take (`--max-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    limit: Option<u64>,
    used: u64,
}

impl Budget {
    /// A budget of `limit` bytes (`None`: unlimited).
    pub fn new(limit: Option<u64>) -> Self {
        Self { limit, used: 0 }
    }

    /// Counts `bytes` more of `location`; an error once past the limit.
    fn take(&mut self, location: &str, bytes: u64) -> Result<(), FetchError> {
        self.used += bytes;
        self.check(location, 0)
    }

    /// An error if `more` bytes would not fit.
    fn check(&self, location: &str, more: u64) -> Result<(), FetchError> {
        match self.limit {
            Some(limit) if self.used.saturating_add(more) > limit => Err(FetchError::TooLarge {
                location: location.to_owned(),
                limit,
            }),
            _ => Ok(()),
        }
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

/// The HTTP client every source uses (rustls, up to 10 redirects none of which may go to a
/// forbidden address, no overall timeout: weights are large; a stalled connection fails after
/// `read_timeout`).
pub fn http_client(policy: AddressPolicy) -> Result<Http, FetchError> {
    let redirects = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            attempt.error("too many redirects")
        } else if let Err(refused) = policy.check_url(attempt.url()) {
            attempt.error(refused.to_string())
        } else {
            attempt.follow()
        }
    });
    let client = reqwest::Client::builder()
        .user_agent(concat!("fused-daemon-fetch/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(120))
        .dns_resolver(policy.resolver())
        .redirect(redirects)
        .build()
        .map_err(|e| FetchError::Unreachable {
            location: "HTTP client".into(),
            detail: error_chain(&e),
        })?;
    Ok(Http { client, policy })
}

/// Copies `source` into the file `dest` within `budget`, returning the SHA-256 of its bytes.
/// An HTTP transfer keeps what it resumes from in `state` (a file outside the artifact).
pub async fn copy_to(
    http: &Http,
    source: &Source,
    dest: &Path,
    state: &Path,
    budget: &mut Budget,
) -> Result<Sha256Digest, FetchError> {
    match source {
        Source::Local(path) => copy_local(path, dest, budget).await,
        Source::Http(get) => {
            let mut attempt = 1;
            loop {
                let mut attempt_budget = *budget;
                let result = download(http, get, dest, state, &mut attempt_budget).await;
                if result.is_ok() {
                    *budget = attempt_budget;
                }
                match result {
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

async fn copy_local(
    path: &Path,
    dest: &Path,
    budget: &mut Budget,
) -> Result<Sha256Digest, FetchError> {
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
    budget.check(&location, total.unwrap_or(0))?;
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
        budget.take(&location, read as u64)?;
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

/// What a resumable download left behind: where from, and the validator of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ResumeState {
    url: String,
    /// A strong ETag or a Last-Modified date, for `If-Range`.
    validator: String,
}

async fn download(
    http: &Http,
    get: &HttpGet,
    dest: &Path,
    state: &Path,
    budget: &mut Budget,
) -> Result<Sha256Digest, FetchError> {
    let location = get.url.to_string();
    let mut digest = StreamingDigest::default();
    let resume = resumable_prefix(get, dest, state, &mut digest).await;
    let response = match &resume {
        Some((offset, validator)) => {
            get.send_with(http, |r| {
                r.header(RANGE, format!("bytes={offset}-"))
                    .header(IF_RANGE, validator.as_str())
            })
            .await?
        }
        None => get.send_with(http, |r| r).await?,
    };
    let resumed_at = match (&resume, response.status()) {
        (Some((offset, _)), StatusCode::PARTIAL_CONTENT)
            if content_range_start(&response) == Some(*offset) =>
        {
            Some(*offset)
        }
        _ => None,
    };
    let response = if resumed_at.is_some() {
        response
    } else if resume.is_some() && !response.status().is_success() {
        // The range was refused (416, or an error): the next attempt starts from zero.
        let _ = tokio::fs::remove_file(state).await;
        return Err(FetchError::Unreachable {
            location,
            detail: format!("could not resume (HTTP {})", response.status()),
        });
    } else {
        // Not a continuation (the source changed, or ignores ranges): start from zero.
        digest = StreamingDigest::default();
        check_status(&location, response).await?
    };
    let offset = resumed_at.unwrap_or(0);
    budget.take(&location, offset)?;
    let total = response.content_length().map(|length| length + offset);
    budget.check(&location, total.unwrap_or(0).saturating_sub(offset))?;
    let mut output = if resumed_at.is_some() {
        tracing::info!(%location, bytes = offset, "resuming a download");
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(dest)
            .await
            .map_err(FetchError::cache(dest))?;
        file.set_len(offset)
            .await
            .map_err(FetchError::cache(dest))?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(FetchError::cache(dest))?;
        file
    } else {
        record_resume_state(get, &response, state).await?;
        create(dest).await?
    };
    let mut progress = Progress::new(&location, total);
    progress.done = offset;
    let mut received = offset;
    let mut body = response.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                // Flush what arrived: the next attempt resumes from it.
                let _ = output.flush().await;
                return Err(FetchError::Unreachable {
                    location: location.clone(),
                    detail: format!("after {received} bytes: {}", error_chain(&e)),
                });
            }
        };
        budget.take(&location, chunk.len() as u64)?;
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
        // Flush what arrived: the next attempt resumes from it.
        let _ = output.flush().await;
        return Err(FetchError::Unreachable {
            location,
            detail: format!("connection closed after {received} of {total} bytes"),
        });
    }
    finish(output, dest).await?;
    let _ = tokio::fs::remove_file(state).await;
    progress.done();
    Ok(digest.finish())
}

/// The bytes already in `dest` from an earlier attempt at the same URL, hashed into `digest`,
/// and the validator to resume with; `None` when there is nothing to resume.
async fn resumable_prefix(
    get: &HttpGet,
    dest: &Path,
    state: &Path,
    digest: &mut StreamingDigest,
) -> Option<(u64, String)> {
    let text = tokio::fs::read(state).await.ok()?;
    let saved: ResumeState = serde_json::from_slice(&text).ok()?;
    if saved.url != get.url.as_str() {
        return None;
    }
    let mut file = tokio::fs::File::open(dest).await.ok()?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut length = 0u64;
    loop {
        let read = file.read(&mut buffer).await.ok()?;
        if read == 0 {
            break;
        }
        digest.update(&buffer[..read]);
        length += read as u64;
    }
    (length > 0).then_some((length, saved.validator))
}

/// Records how to resume `response` (when its source says how to validate a range).
async fn record_resume_state(
    get: &HttpGet,
    response: &reqwest::Response,
    state: &Path,
) -> Result<(), FetchError> {
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    // A weak ETag cannot validate a range (RFC 9110, If-Range).
    let validator = header(ETAG)
        .filter(|etag| !etag.starts_with("W/"))
        .or_else(|| header(LAST_MODIFIED));
    let Some(validator) = validator else {
        let _ = tokio::fs::remove_file(state).await;
        return Ok(());
    };
    let saved = ResumeState {
        url: get.url.to_string(),
        validator,
    };
    if let Some(parent) = state.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(FetchError::cache(parent))?;
    }
    let json = serde_json::to_vec(&saved).map_err(|e| FetchError::Cache {
        path: state.to_owned(),
        source: std::io::Error::other(e),
    })?;
    tokio::fs::write(state, json)
        .await
        .map_err(FetchError::cache(state))
}

/// The first byte of a `Content-Range: bytes <first>-<last>/<total>` answer.
fn content_range_start(response: &reqwest::Response) -> Option<u64> {
    let value = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let range = value.strip_prefix("bytes ")?;
    range.split_once('-')?.0.trim().parse().ok()
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
