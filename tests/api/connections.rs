//! The server's connection bounds: a client holding half-sent requests, or idle
//! keep-alive connections, cannot keep others out.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{spawn_app_with, test_settings, TestApp};

/// The app's `host:port`.
fn socket(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_string()
}

/// Waits until the server closes `stream` (end of file or a reset); how long it took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Sends one complete `GET` and reads its answer; the status code.
async fn get_on(stream: &mut TcpStream, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nHost: wallet\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the server closed before answering");
        answer.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&answer);
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if answer.len() >= end + 4 + length {
                return text[9..12].parse().unwrap();
            }
        }
    }
}

#[tokio::test]
async fn half_sent_requests_beyond_the_cap_leave_room_for_others_and_are_closed_at_the_header_timeout(
) {
    let mut settings = test_settings().await;
    settings.connections.max_connections = 40;
    settings.connections.header_timeout = Duration::from_secs(2);
    let app = spawn_app_with(settings).await;
    app.funded_wallet("slow-u1", 10_000).await;

    // Two and a half times the cap, each a request line and one header, never finished.
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut stream = TcpStream::connect(socket(&app)).await.unwrap();
        stream
            .write_all(b"POST /api/v1/payments HTTP/1.1\r\nHost: wallet\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    // One more that keeps sending a header byte by byte: the clock runs from its first byte.
    // Timed from before the connection exists, so the server's clock cannot have
    // started earlier than ours.
    let trickled = Instant::now();
    let mut trickle = TcpStream::connect(socket(&app)).await.unwrap();
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();

    for round in 0..3 {
        let started = Instant::now();
        let health = app.get("/healthz").await;
        assert_eq!(health.status, StatusCode::OK);
        let paid = app.pay(&format!("slow-{round}"), "slow-u1", 100).await;
        assert_eq!(paid.status, StatusCode::CREATED, "{}", paid.text);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "/healthz and a payment took {:?} while the cap was full of half-sent requests",
            started.elapsed()
        );
        trickle.write_all(b"X").await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Every held connection is closed: the oldest evicted at the cap, the rest at the
    // header timeout (2 s), none left open.
    for stream in &mut held {
        let took = closed_within(stream, Duration::from_secs(5)).await;
        assert!(took.is_some(), "a half-sent request was still open 5 s on");
    }
    let took = closed_within(&mut trickle, Duration::from_secs(5)).await;
    assert!(took.is_some(), "the trickling request was never closed");
    let after = trickled.elapsed();
    // The server keeps each phase's start in whole milliseconds since its own start
    // (`src/http/serve.rs`), so its deadline may fall up to a millisecond before ours.
    assert!(
        after >= Duration::from_secs(2) - Duration::from_millis(1)
            && after < Duration::from_secs(4),
        "the trickling request was closed {after:?} after its first byte (header timeout 2 s)"
    );

    let metrics = app.get("/metrics").await.text;
    for reason in ["evicted", "header_timeout"] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("http_connections_closed_total{")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "connections closed for {reason} are counted:\n{metrics}"
        );
    }
    assert!(metrics.contains("http_connections_open "), "{metrics}");
    app.assert_ledger_invariants().await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_timeout_and_not_before() {
    let mut settings = test_settings().await;
    settings.connections.keep_alive_timeout = Duration::from_millis(1_500);
    settings.connections.header_timeout = Duration::from_millis(500);
    let app = spawn_app_with(settings).await;

    let mut stream = TcpStream::connect(socket(&app)).await.unwrap();
    assert_eq!(get_on(&mut stream, "/healthz").await, 200);
    // Idle longer than the header timeout but within the keep-alive timeout: still open.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(get_on(&mut stream, "/healthz").await, 200);
    let answered = Instant::now();
    let took = closed_within(&mut stream, Duration::from_secs(5))
        .await
        .expect("an idle keep-alive connection is closed");
    let after = answered.elapsed().max(took);
    assert!(
        after >= Duration::from_millis(1_300) && after < Duration::from_secs(4),
        "closed {after:?} after its last answer (keep-alive timeout 1.5 s)"
    );

    // A connection that never sends a byte is idle from the start.
    let mut silent = TcpStream::connect(socket(&app)).await.unwrap();
    let took = closed_within(&mut silent, Duration::from_secs(5))
        .await
        .expect("a silent connection is closed");
    assert!(
        took >= Duration::from_millis(1_300),
        "closed after {took:?}"
    );

    let metrics = app.get("/metrics").await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("http_connections_closed_total{")
                && l.contains("reason=\"idle_timeout\"")),
        "{metrics}"
    );
}
