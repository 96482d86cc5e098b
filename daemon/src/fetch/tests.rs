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
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone)]
struct Served {
    files: Arc<HashMap<String, Vec<u8>>>,
    requests: Arc<AtomicUsize>,
    delay: Duration,
}

impl TestServer {
    fn start(files: &[(&str, &[u8])], delay: Duration) -> Self {
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
        };
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
                    .route("/forbidden", get(|| async { StatusCode::FORBIDDEN }))
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

/// 3 MiB of deterministic, non-repeating bytes (several chunks of the stream).
fn weights() -> Vec<u8> {
    (0u32..3 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
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
    let bytes = weights();
    let server = TestServer::start(&[("model.gguf", &bytes)], Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let digest = Sha256Digest::of(&bytes).to_hex();
    let uri = server.url("files/model.gguf");

    let first_link = dir.path().join("pod-a/model");
    let first = fetch(&uri, Some(&digest), &cache_dir, &first_link)
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
    let second = fetch(&uri, Some(&digest), &cache_dir, &second_link)
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
    let bytes = weights();
    let server = TestServer::start(&[("model.gguf", &bytes)], Duration::from_millis(300));
    let dir = tempfile::tempdir().unwrap();
    let cache_dir = dir.path().join("cache");
    let digest = Sha256Digest::of(&bytes).to_hex();
    let uri = server.url("files/model.gguf");
    let replicas: Vec<_> = (0..4)
        .map(|replica| {
            let (uri, digest, cache_dir) = (uri.clone(), digest.clone(), cache_dir.clone());
            let link = dir.path().join(format!("pod-{replica}/model"));
            tokio::spawn(async move {
                let fetched = fetch(&uri, Some(&digest), &cache_dir, &link).await;
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

    let missing = fetch(&server.url("files/absent.gguf"), None, &cache_dir, &link)
        .await
        .expect_err("404");
    assert_eq!(missing.reason(), REASON_NOT_FOUND, "{missing}");
    assert!(missing.to_string().contains("absent.gguf"));

    let forbidden = fetch(&server.url("forbidden"), None, &cache_dir, &link)
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
    )
    .await
    .expect_err("nothing listens");
    assert_eq!(unreachable.reason(), REASON_UNREACHABLE, "{unreachable}");
    assert!(unreachable.to_string().contains(&port.to_string()));

    let bad_digest = fetch(&server.url("files/x"), Some("abc"), &cache_dir, &link)
        .await
        .expect_err("short digest");
    assert_eq!(bad_digest.reason(), REASON_INVALID_DIGEST);
    let bad_uri = fetch("pvc://claim/model.gguf", None, &cache_dir, &link)
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
    let first = fetch(&uri, None, &cache_dir, &link).await.unwrap();
    assert!(first.transferred);
    assert_eq!(first.sha256, Sha256Digest::of(&bytes));
    let again = fetch(&uri, None, &cache_dir, &link).await.unwrap();
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
    let fetched = fetch(&uri, Some(&expected), &cache_dir, &link)
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

    let missing = fetch("file:///nonexistent/model.gguf", None, &cache_dir, &link)
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
        out_link: dir.path().join("model"),
        termination_log: Some(log.clone()),
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
