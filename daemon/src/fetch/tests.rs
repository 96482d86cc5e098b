//! The fetcher against a real HTTP server on loopback (axum) and real files: digests verified,
//! a mismatch refused with `ArtifactDigestMismatch`, concurrent replicas sharing one download,
//! HTTP errors mapped to reasons, directories hashed as `sha256sum` manifests, and the
//! termination log written by `run`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::get;

use super::*;

/// An HTTP server on a loopback port serving `files` at `/files/<name>` (after `delay`),
/// 403 at `/forbidden`, 404 elsewhere; counts the file requests it answered. It runs on its
/// own thread and runtime, so sync and async tests can use it alike.
struct TestServer {
    base: String,
    requests: Arc<AtomicUsize>,
    ranges: Arc<std::sync::Mutex<Vec<Option<String>>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Served {
    files: Arc<HashMap<String, Vec<u8>>>,
    requests: Arc<AtomicUsize>,
    delay: Duration,
    /// How many more `/ranged/` answers break off after `break_after` bytes.
    breaks: Arc<AtomicUsize>,
    break_after: usize,
    /// The `Range` header of every `/ranged/` request.
    ranges: Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

impl TestServer {
    fn start(files: &[(&str, &[u8])], delay: Duration) -> Self {
        Self::start_breaking(files, delay, 0, 0)
    }

    /// A server whose first `breaks` answers on `/ranged/` break off after `break_after` bytes.
    fn start_breaking(
        files: &[(&str, &[u8])],
        delay: Duration,
        breaks: usize,
        break_after: usize,
    ) -> Self {
        let requests = Arc::new(AtomicUsize::new(0));
        let served = Served {
            files: Arc::new(
                files
                    .iter()
                    .map(|(name, bytes)| ((*name).to_owned(), bytes.to_vec()))
                    .collect(),
            ),
            requests: requests.clone(),
            delay,
            breaks: Arc::new(AtomicUsize::new(breaks)),
            break_after,
            ranges: Arc::default(),
        };
        let ranges = served.ranges.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = axum::Router::new()
                    .route("/files/{name}", get(serve_file))
                    .route("/ranged/{name}", get(serve_ranged))
                    .route("/stream/{name}", get(serve_stream))
                    .route("/v2/model/manifests/{reference}", get(serve_manifest))
                    .route("/v2/model/blobs/{digest}", get(serve_blob))
                    .route("/forbidden", get(|| async { StatusCode::FORBIDDEN }))
                    .route(
                        "/to-metadata",
                        get(|| async {
                            axum::response::Redirect::temporary(
                                "http://169.254.169.254/latest/meta-data/",
                            )
                        }),
                    )
                    .with_state(served);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            base,
            requests,
            ranges,
            stop: Some(stop),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve_file(
    State(served): State<Served>,
    UrlPath(name): UrlPath<String>,
) -> Result<Vec<u8>, StatusCode> {
    let bytes = served
        .files
        .get(&name)
        .ok_or(StatusCode::NOT_FOUND)?
        .clone();
    served.requests.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(served.delay).await;
    Ok(bytes)
}

/// `/ranged/<name>`: a file with a strong ETag that honours `Range: bytes=N-` under a matching
/// `If-Range`, streamed in 64 KiB chunks; while `breaks` lasts, an answer breaks off (the
/// connection is dropped) after `break_after` bytes of its body.
async fn serve_ranged(
    State(served): State<Served>,
    UrlPath(name): UrlPath<String>,
    headers: axum::http::HeaderMap,
) -> Result<axum::response::Response, StatusCode> {
    let bytes = served
        .files
        .get(&name)
        .ok_or(StatusCode::NOT_FOUND)?
        .clone();
    served.requests.fetch_add(1, Ordering::SeqCst);
    let etag = format!("\"{}\"", Sha256Digest::of(&bytes));
    let range = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    served.ranges.lock().unwrap().push(range.clone());
    let if_range_ok = headers
        .get("if-range")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag);
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok())
        .filter(|_| if_range_ok)
        .unwrap_or(0);
    let breaking = served
        .breaks
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let body: Vec<u8> = bytes[start..].to_vec();
    let cut = if breaking {
        served.break_after.min(body.len())
    } else {
        body.len()
    };
    let mut chunks: Vec<Result<Vec<u8>, std::io::Error>> = body[..cut]
        .chunks(64 << 10)
        .map(|c| Ok(c.to_vec()))
        .collect();
    if breaking {
        chunks.push(Err(std::io::Error::other("connection dropped by the test")));
    }
    let mut response = axum::response::Response::builder()
        .header("etag", &etag)
        .header("content-length", body.len().to_string());
    response = if start > 0 {
        response.status(StatusCode::PARTIAL_CONTENT).header(
            "content-range",
            format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()),
        )
    } else {
        response.status(StatusCode::OK)
    };
    Ok(response
        .body(axum::body::Body::from_stream(futures::stream::iter(chunks)))
        .unwrap())
}

/// `/stream/<name>`: the file without a Content-Length (chunked).
async fn serve_stream(
    State(served): State<Served>,
    UrlPath(name): UrlPath<String>,
) -> Result<axum::body::Body, StatusCode> {
    let bytes = served
        .files
        .get(&name)
        .ok_or(StatusCode::NOT_FOUND)?
        .clone();
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        bytes.chunks(64 << 10).map(|c| Ok(c.to_vec())).collect();
    Ok(axum::body::Body::from_stream(futures::stream::iter(chunks)))
}

/// `/v2/model/manifests/<reference>`: the file named `manifest` (whatever the reference).
async fn serve_manifest(State(served): State<Served>) -> Result<Vec<u8>, StatusCode> {
    served
        .files
        .get("manifest")
        .cloned()
        .ok_or(StatusCode::NOT_FOUND)
}

/// `/v2/model/blobs/<digest>`: the file named by its digest.
async fn serve_blob(
    State(served): State<Served>,
    UrlPath(digest): UrlPath<String>,
) -> Result<Vec<u8>, StatusCode> {
    served
        .files
        .get(&digest)
        .cloned()
        .ok_or(StatusCode::NOT_FOUND)
}

/// 3 MiB of deterministic, non-repeating bytes (several chunks of the stream).
fn weights() -> Vec<u8> {
    (0u32..3 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// [`weights`] served at `files/model.gguf` (after `delay`), a scratch directory with the cache
/// at `cache/` in it, and the weights' digest.
struct Fixture {
    bytes: Vec<u8>,
    server: TestServer,
    dir: tempfile::TempDir,
    cache_dir: std::path::PathBuf,
    digest: String,
    uri: String,
}

fn served_weights(delay: Duration) -> Fixture {
    let bytes = weights();
    let server = TestServer::start(&[("model.gguf", &bytes)], delay);
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let digest = Sha256Digest::of(&bytes).to_hex();
    let uri = server.url("files/model.gguf");
    Fixture {
        bytes,
        server,
        dir,
        cache_dir,
        digest,
        uri,
    }
}

fn opts() -> FetchOptions {
    FetchOptions::default()
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test]
async fn http_artifact_is_verified_cached_and_linked() {
    let Fixture {
        bytes,
        server,
        dir,
        cache_dir,
        digest,
        uri,
    } = served_weights(Duration::ZERO);

    let first_link = dir.path().join("pod-a/model");
    let first = fetch(&uri, Some(&digest), &cache_dir, &first_link, &opts())
        .await
        .unwrap();
    assert!(first.transferred);
    assert_eq!(first.sha256.to_hex(), digest);
    assert_eq!(first.path, cache_dir.join("sha256").join(&digest));
    assert_eq!(std::fs::read(&first_link).unwrap(), bytes);
    assert_eq!(std::fs::read_link(&first_link).unwrap(), first.path);
    assert_eq!(server.requests(), 1);
    assert!(entries(&cache_dir.join("tmp")).is_empty());

    // A second replica on the node: linked from the cache, the source is not asked again.
    let second_link = dir.path().join("pod-b/model");
    let second = fetch(&uri, Some(&digest), &cache_dir, &second_link, &opts())
        .await
        .unwrap();
    assert!(!second.transferred);
    assert_eq!(second.path, first.path);
    assert_eq!(std::fs::read(&second_link).unwrap(), bytes);
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn wrong_digest_is_a_typed_mismatch_and_leaves_nothing_behind() {
    let bytes = weights();
    let server = TestServer::start(&[("model.gguf", &bytes)], Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let wrong = Sha256Digest::of(b"something else").to_hex();
    let link = dir.path().join("model");
    let error = fetch(
        &server.url("files/model.gguf"),
        Some(&wrong),
        &cache_dir,
        &link,
        &opts(),
    )
    .await
    .expect_err("the digest differs");
    match &error {
        FetchError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &Sha256Digest::of(&bytes).to_hex());
        }
        other => panic!("expected a digest mismatch, got {other:?}"),
    }
    assert_eq!(error.reason(), REASON_DIGEST_MISMATCH);
    assert!(
        error
            .termination_message()
            .starts_with("ArtifactDigestMismatch: ")
    );
    println!("termination message: {}", error.termination_message());
    assert!(entries(&cache_dir.join("sha256")).is_empty());
    assert!(entries(&cache_dir.join("tmp")).is_empty());
    assert!(!link.exists() && !link.is_symlink());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_fetching_at_once_share_one_download() {
    let Fixture {
        bytes,
        server,
        dir,
        cache_dir,
        digest,
        uri,
    } = served_weights(Duration::from_millis(300));
    let replicas: Vec<_> = (0..4)
        .map(|replica| {
            let (uri, digest, cache_dir) = (uri.clone(), digest.clone(), cache_dir.clone());
            let link = dir.path().join(format!("pod-{replica}/model"));
            tokio::spawn(async move {
                let fetched = fetch(&uri, Some(&digest), &cache_dir, &link, &opts()).await;
                (fetched, link)
            })
        })
        .collect();
    let mut transferred = 0;
    for replica in replicas {
        let (fetched, link) = replica.await.unwrap();
        transferred += usize::from(fetched.unwrap().transferred);
        assert_eq!(std::fs::read(&link).unwrap(), bytes);
    }
    assert_eq!(transferred, 1, "exactly one replica downloads");
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn http_failures_name_their_reason() {
    let server = TestServer::start(&[], Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let link = dir.path().join("model");

    let missing = fetch(
        &server.url("files/absent.gguf"),
        None,
        &cache_dir,
        &link,
        &opts(),
    )
    .await
    .expect_err("404");
    assert_eq!(missing.reason(), REASON_NOT_FOUND, "{missing}");
    assert!(missing.to_string().contains("absent.gguf"));

    let forbidden = fetch(&server.url("forbidden"), None, &cache_dir, &link, &opts())
        .await
        .expect_err("403");
    assert_eq!(forbidden.reason(), REASON_ACCESS_DENIED, "{forbidden}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let unreachable = fetch(
        &format!("http://127.0.0.1:{port}/model.gguf"),
        None,
        &cache_dir,
        &link,
        &opts(),
    )
    .await
    .expect_err("nothing listens");
    assert_eq!(unreachable.reason(), REASON_UNREACHABLE, "{unreachable}");
    assert!(unreachable.to_string().contains(&port.to_string()));

    let bad_digest = fetch(
        &server.url("files/x"),
        Some("abc"),
        &cache_dir,
        &link,
        &opts(),
    )
    .await
    .expect_err("short digest");
    assert_eq!(bad_digest.reason(), REASON_INVALID_DIGEST);
    let bad_uri = fetch("pvc://claim/model.gguf", None, &cache_dir, &link, &opts())
        .await
        .expect_err("pvc is mounted, not fetched");
    assert_eq!(bad_uri.reason(), REASON_INVALID_URI);
}

#[tokio::test]
async fn unpinned_artifacts_are_cached_by_uri() {
    let bytes = b"patch tokenizer json".to_vec();
    let server = TestServer::start(&[("patch.json", &bytes)], Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let uri = server.url("files/patch.json");
    let link = dir.path().join("patch");
    let first = fetch(&uri, None, &cache_dir, &link, &opts()).await.unwrap();
    assert!(first.transferred);
    assert_eq!(first.sha256, Sha256Digest::of(&bytes));
    let again = fetch(&uri, None, &cache_dir, &link, &opts()).await.unwrap();
    assert!(!again.transferred);
    assert_eq!(again.sha256, first.sha256);
    assert_eq!(std::fs::read(&link).unwrap(), bytes);
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn file_directories_are_hashed_like_sha256sum_manifests() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("checkpoint");
    std::fs::create_dir_all(source.join("tokenizer")).unwrap();
    std::fs::write(source.join("config.json"), b"{\"layers\": 2}").unwrap();
    std::fs::write(source.join("model.safetensors"), weights()).unwrap();
    std::fs::write(source.join("tokenizer/tokenizer.json"), b"{}").unwrap();
    // The digest a user computes with coreutils, as docs/OPERATOR.md says.
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(
            "find . -type f -printf '%P\\n' | LC_ALL=C sort | xargs -d '\\n' sha256sum | sha256sum",
        )
        .current_dir(&source)
        .output()
        .unwrap();
    assert!(output.status.success());
    let expected = String::from_utf8(output.stdout).unwrap()[..64].to_owned();

    let cache_dir = dir.path().join("cache");
    let link = dir.path().join("model");
    let uri = format!("file://{}", source.display());
    let fetched = fetch(&uri, Some(&expected), &cache_dir, &link, &opts())
        .await
        .unwrap();
    assert_eq!(fetched.sha256.to_hex(), expected);
    assert_eq!(
        std::fs::read(link.join("tokenizer/tokenizer.json")).unwrap(),
        b"{}"
    );
    assert_eq!(
        std::fs::read(link.join("model.safetensors")).unwrap(),
        weights()
    );

    let missing = fetch(
        "file:///nonexistent/model.gguf",
        None,
        &cache_dir,
        &link,
        &opts(),
    )
    .await
    .expect_err("no such file");
    assert_eq!(missing.reason(), REASON_NOT_FOUND);
}

#[test]
fn run_writes_the_reason_to_the_termination_log() {
    let bytes = weights();
    let server = TestServer::start(&[("model.gguf", &bytes)], Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("termination-log");
    let args = FetchArgs {
        uri: server.url("files/model.gguf"),
        sha256: Some("0".repeat(64)),
        cache_dir: dir.path().join("cache"),
        scope: "ns".into(),
        out_link: dir.path().join("model"),
        termination_log: Some(log.clone()),
        max_bytes: None,
        cache_max_bytes: None,
        cache_min_idle_s: 3600,
        allow_link_local: false,
    };
    let error = run(args.clone()).expect_err("wrong digest");
    assert!(format!("{error:#}").contains("SHA-256"), "{error:#}");
    let message = std::fs::read_to_string(&log).unwrap();
    assert!(
        message.starts_with("ArtifactDigestMismatch: ") && message.contains(&"0".repeat(64)),
        "{message}"
    );

    let good = FetchArgs {
        sha256: Some(Sha256Digest::of(&bytes).to_hex()),
        ..args
    };
    std::fs::remove_file(&log).unwrap();
    run(good).unwrap();
    assert!(!log.exists(), "success writes no termination message");
}

#[tokio::test]
async fn a_tampered_cache_entry_is_hashed_again_and_fetched_anew() {
    let Fixture {
        bytes,
        server,
        dir,
        cache_dir,
        digest,
        uri,
    } = served_weights(Duration::ZERO);
    let link = dir.path().join("pod-a/model");
    let first = fetch(&uri, Some(&digest), &cache_dir, &link, &opts())
        .await
        .unwrap();
    // Someone with write access to the cache rewrites the entry in place.
    let mut tampered = bytes.clone();
    tampered[1000] ^= 0xff;
    std::fs::write(&first.path, &tampered).unwrap();

    let link = dir.path().join("pod-b/model");
    let second = fetch(&uri, Some(&digest), &cache_dir, &link, &opts())
        .await
        .unwrap();
    assert!(second.transferred, "the tampered entry is not served");
    assert_eq!(std::fs::read(&link).unwrap(), bytes);
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn unpinned_artifacts_are_scoped_by_namespace_and_source() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let source = dir.path().join("model.gguf");
    let uri = format!("file://{}", source.display());
    let scoped = |scope: &str| FetchOptions {
        scope: scope.into(),
        ..FetchOptions::default()
    };
    // Two teams' images hold different files at the same path.
    std::fs::write(&source, b"team a's weights").unwrap();
    let link_a = dir.path().join("a/model");
    fetch(
        &uri,
        None,
        &cache_dir,
        &link_a,
        &scoped("team-a registry/a:1"),
    )
    .await
    .unwrap();
    std::fs::write(&source, b"team b's weights").unwrap();
    let link_b = dir.path().join("b/model");
    let b = fetch(
        &uri,
        None,
        &cache_dir,
        &link_b,
        &scoped("team-b registry/b:1"),
    )
    .await
    .unwrap();
    assert!(b.transferred, "another scope does not share the entry");
    assert_eq!(std::fs::read(&link_b).unwrap(), b"team b's weights");
    assert_eq!(std::fs::read(&link_a).unwrap(), b"team a's weights");
    // Within a scope, the entry is reused.
    let again = fetch(
        &uri,
        None,
        &cache_dir,
        &link_a,
        &scoped("team-a registry/a:1"),
    )
    .await
    .unwrap();
    assert!(!again.transferred);
    assert_eq!(std::fs::read(&link_a).unwrap(), b"team a's weights");
}

#[tokio::test]
async fn an_artifact_over_max_bytes_is_aborted_and_its_download_removed() {
    let bytes = weights();
    let server = TestServer::start(&[("model.gguf", &bytes)], Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let link = dir.path().join("model");
    let limited = FetchOptions {
        max_bytes: Some(1 << 20),
        ..FetchOptions::default()
    };
    // Announced by Content-Length, and only found out while streaming (chunked).
    for path in ["files/model.gguf", "stream/model.gguf"] {
        let error = fetch(&server.url(path), None, &cache_dir, &link, &limited)
            .await
            .expect_err("3 MiB > 1 MiB");
        assert_eq!(error.reason(), REASON_TOO_LARGE, "{error}");
        assert!(error.to_string().contains("1048576"), "{error}");
        assert_eq!(entries(&cache_dir.join("tmp")), Vec::<String>::new());
        assert!(entries(&cache_dir.join("sha256")).is_empty());
    }
    let source = dir.path().join("local.bin");
    std::fs::write(&source, &bytes).unwrap();
    let error = fetch(
        &format!("file://{}", source.display()),
        None,
        &cache_dir,
        &link,
        &limited,
    )
    .await
    .expect_err("3 MiB > 1 MiB");
    assert_eq!(error.reason(), REASON_TOO_LARGE);
    assert_eq!(entries(&cache_dir.join("tmp")), Vec::<String>::new());
}

#[tokio::test]
async fn link_local_and_metadata_addresses_are_refused() {
    let server = TestServer::start(&[], Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let link = dir.path().join("model");
    for uri in [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/".to_owned(),
        "http://[fd00:ec2::254]/latest/meta-data/".to_owned(),
        server.url("to-metadata"),
    ] {
        let started = std::time::Instant::now();
        let error = fetch(&uri, None, &cache_dir, &link, &opts())
            .await
            .expect_err("refused");
        println!("{uri}: {error}");
        assert!(
            error.reason() == REASON_FORBIDDEN_ADDRESS
                || error
                    .to_string()
                    .contains("link-local or cloud metadata address"),
            "{uri}: {error}"
        );
        if !uri.contains("to-metadata") {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "refused before any connection attempt"
            );
        }
    }
}

#[tokio::test]
async fn an_oci_manifest_fetched_by_digest_must_hash_to_it() {
    let layer = b"patch tokenizer bytes".to_vec();
    let layer_digest = format!("sha256:{}", Sha256Digest::of(&layer));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "layers": [{"mediaType": "application/octet-stream", "digest": layer_digest, "size": layer.len()}]
    }))
    .unwrap();
    let server = TestServer::start(
        &[("manifest", &manifest), (&layer_digest, &layer)],
        Duration::ZERO,
    );
    let registry = server.base.trim_start_matches("http://").to_owned();
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let link = dir.path().join("patch");

    // Pinned to the manifest the registry serves: fetched, and the layer verified.
    let good = format!(
        "oci://{registry}/model@sha256:{}",
        Sha256Digest::of(&manifest)
    );
    let fetched = fetch(&good, None, &cache_dir, &link, &opts())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&link).unwrap(), layer);
    assert_eq!(fetched.sha256, Sha256Digest::of(&layer));

    // Pinned to another manifest: the registry's answer is refused.
    let other = Sha256Digest::of(b"the manifest that was pinned");
    let error = fetch(
        &format!("oci://{registry}/model@sha256:{other}"),
        None,
        &cache_dir,
        &dir.path().join("other"),
        &opts(),
    )
    .await
    .expect_err("the manifest does not hash to the pinned digest");
    assert_eq!(error.reason(), REASON_DIGEST_MISMATCH, "{error}");
    assert!(error.to_string().contains(&other.to_hex()), "{error}");
}

#[tokio::test]
async fn a_broken_download_resumes_where_it_stopped() {
    let bytes = weights();
    // The first two attempts break off after 1 MiB more each.
    let server = TestServer::start_breaking(&[("model.gguf", &bytes)], Duration::ZERO, 2, 1 << 20);
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let digest = Sha256Digest::of(&bytes).to_hex();
    let link = dir.path().join("model");
    let uri = server.url("ranged/model.gguf");
    let fetched = fetch(&uri, Some(&digest), &cache_dir, &link, &opts())
        .await
        .unwrap();
    assert!(fetched.transferred);
    assert_eq!(std::fs::read(&link).unwrap(), bytes);
    let ranges = server.ranges.lock().unwrap().clone();
    println!("Range headers: {ranges:?}");
    let starts: Vec<u64> = ranges
        .iter()
        .skip(1)
        .map(|r| {
            r.as_deref()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.strip_suffix('-'))
                .and_then(|r| r.parse().ok())
                .unwrap_or_else(|| panic!("a resumed request: {ranges:?}"))
        })
        .collect();
    assert_eq!(ranges.len(), 3, "{ranges:?}");
    assert_eq!(ranges[0], None, "the first request is for everything");
    // Each attempt continues where the bytes that reached the client end (at most the
    // 1 MiB each broken answer sent).
    assert!(starts[0] > 512 << 10 && starts[0] <= 1 << 20, "{ranges:?}");
    assert!(
        starts[1] > starts[0] + (512 << 10) && starts[1] <= starts[0] + (1 << 20),
        "{ranges:?}"
    );
    assert!(entries(&cache_dir.join("tmp")).is_empty());

    // A fetcher that died (a restarted Pod) resumes from what it left in the cache.
    let server =
        TestServer::start_breaking(&[("model.gguf", &bytes)], Duration::ZERO, 3, (1 << 20) - 5);
    let cache_dir = dir.path().join("cache-2");
    let uri = server.url("ranged/model.gguf");
    // The first fetch gives up after its three attempts, 15 bytes short.
    let error = fetch(&uri, Some(&digest), &cache_dir, &link, &opts())
        .await
        .expect_err("three broken attempts");
    assert_eq!(error.reason(), REASON_UNREACHABLE);
    assert!(
        !entries(&cache_dir.join("tmp")).is_empty(),
        "kept to resume"
    );
    let fetched = fetch(&uri, Some(&digest), &cache_dir, &link, &opts())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&link).unwrap(), bytes);
    assert_eq!(fetched.sha256.to_hex(), digest);
    let ranges = server.ranges.lock().unwrap().clone();
    println!("Range headers: {ranges:?}");
    assert_eq!(
        ranges.len(),
        4,
        "three broken attempts, then one resumed: {ranges:?}"
    );
    let last: u64 = ranges[3]
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse().ok())
        .expect("the restarted fetch resumes");
    assert!(last > 3 * (512 << 10), "resumed at {last}");
}

#[tokio::test]
async fn stale_downloads_are_removed_at_start_fresh_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let tmp = cache_dir.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let old = tmp.join(format!("uri-{}.4242", "a".repeat(64)));
    let fresh = tmp.join(format!("uri-{}", "b".repeat(64)));
    std::fs::write(&old, vec![0u8; 4096]).unwrap();
    std::fs::write(&fresh, vec![0u8; 4096]).unwrap();
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(48 * 3600);
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(two_days_ago)
        .unwrap();
    let source = dir.path().join("m.bin");
    std::fs::write(&source, b"weights").unwrap();
    fetch(
        &format!("file://{}", source.display()),
        None,
        &cache_dir,
        &dir.path().join("model"),
        &opts(),
    )
    .await
    .unwrap();
    assert!(
        !old.exists(),
        "a download abandoned two days ago is removed"
    );
    assert!(fresh.exists(), "a recent one may still be resumed");
}

#[tokio::test]
async fn a_capped_cache_evicts_the_least_recently_used_entry_nobody_holds() {
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let capped = FetchOptions {
        cache_max_bytes: Some(3_500_000),
        cache_min_idle: Duration::ZERO,
        ..FetchOptions::default()
    };
    let mut digests = Vec::new();
    let mut hold = None;
    for name in ["a", "b", "c", "d"] {
        let source = dir.path().join(name);
        std::fs::write(&source, vec![name.as_bytes()[0]; 1_000_000]).unwrap();
        let link = dir.path().join(format!("pod-{name}/model"));
        let result = fetch(
            &format!("file://{}", source.display()),
            None,
            &cache_dir,
            &link,
            &capped,
        )
        .await
        .unwrap();
        digests.push(result.sha256.to_hex());
        if name == "a" {
            // `a` is served by a running daemon.
            hold = Some(hold_entry(&link).expect("the daemon's hold"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The fourth entry pushed the cache over 3.5 MB: `b`, the least recently used entry
    // nobody holds, went.
    let left = entries(&cache_dir.join("sha256"));
    assert!(left.contains(&digests[0]), "held by a daemon: kept");
    assert!(
        !left.contains(&digests[1]),
        "least recently used, unheld: evicted"
    );
    assert!(
        left.contains(&digests[2]) && left.contains(&digests[3]),
        "{left:?}"
    );
    assert_eq!(left.len(), 3, "{left:?}");
    drop(hold);
}
