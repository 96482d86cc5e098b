//! The HTTP accept loop against hostile clients, on loopback with short limits: a client that
//! sends headers too slowly is disconnected, connections beyond the cap are closed at once while
//! those within it are served, and a client that stops reading a response is disconnected after
//! the write timeout.

// Test scaffolding: a failed setup step is a failed test.
#![allow(clippy::unwrap_used)]

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use fused_daemon::server::listener::{ConnectionLimits, serve};
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// `/ok` answers "ok"; `/endless` streams 64 KiB chunks forever.
fn app() -> Router {
    Router::new().route("/ok", get(|| async { "ok" })).route(
        "/endless",
        get(|| async {
            let chunk = axum::body::Bytes::from(vec![b'x'; 64 << 10]);
            let stream = futures::stream::repeat(chunk).map(Ok::<_, std::io::Error>);
            Body::from_stream(stream)
        }),
    )
}

struct Server {
    addr: std::net::SocketAddr,
    refused: Arc<AtomicUsize>,
}

async fn start(limits: ConnectionLimits) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = refused.clone();
    tokio::spawn(serve(
        listener,
        app(),
        limits,
        move || {
            counter.fetch_add(1, Ordering::SeqCst);
        },
        std::future::pending(),
    ));
    Server { addr, refused }
}

fn limits(max_connections: usize, header_s: u64, write_s: u64) -> ConnectionLimits {
    ConnectionLimits {
        max_connections,
        header_read_timeout: Duration::from_secs(header_s),
        write_timeout: Duration::from_secs(write_s),
    }
}

/// Reads until the server closes the connection; `None` if it is still open after `within`.
async fn closed_within(socket: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = vec![0; 1 << 16];
    loop {
        let left = within.checked_sub(started.elapsed())?;
        match tokio::time::timeout(left, socket.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset => {
                return Some(started.elapsed());
            }
            Ok(Err(e)) => panic!("read failed: {e}"),
        }
    }
}

async fn get_ok(addr: std::net::SocketAddr) -> bool {
    let Ok(mut socket) = TcpStream::connect(addr).await else {
        return false;
    };
    let request = b"GET /ok HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
    if socket.write_all(request).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), socket.read_to_end(&mut response));
    matches!(read.await, Ok(Ok(_))) && response.ends_with(b"ok")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    let server = start(limits(64, 1, 30)).await;
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let closed = closed_within(&mut slow, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "the slow-header connection is still open after 5 s"
    );
    // An idle keep-alive connection is closed the same way.
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let closed = closed_within(&mut idle, Duration::from_secs(5)).await;
    assert!(
        closed.is_some(),
        "the idle connection is still open after 5 s"
    );
    assert!(get_ok(server.addr).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_are_closed_and_capacity_returns() {
    let server = start(limits(8, 2, 30)).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Give the loop time to accept all eight.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut extra = TcpStream::connect(server.addr).await.unwrap();
    let closed = closed_within(&mut extra, Duration::from_secs(1)).await;
    assert!(closed.is_some(), "the ninth connection is served");
    assert!(server.refused.load(Ordering::SeqCst) >= 1);
    // The held connections time out (no headers), and the server serves again.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !get_ok(server.addr).await {
        assert!(Instant::now() < deadline, "capacity never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_after_the_write_timeout() {
    let server = start(limits(64, 30, 1)).await;
    let socket = TcpSocket::new_v4().unwrap();
    // A small receive buffer, so the server's writes block soon.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut reader = socket.connect(server.addr).await.unwrap();
    reader
        .write_all(b"GET /endless HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Do not read for a while: buffers fill, the server's write stalls past its timeout.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let closed = closed_within(&mut reader, Duration::from_secs(10)).await;
    assert!(
        closed.is_some(),
        "the server still streams to a client that stopped reading"
    );
}
