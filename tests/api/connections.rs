//! The ingress bounds connections and requests, and closes connections that
//! send nothing or sit idle, over HTTP/1 and HTTP/2 (h2c) alike.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{eventually, spawn_app_with, TestApp, TestOptions};

/// The HTTP/2 client preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const EMPTY_SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

async fn app_with_server(server: &str) -> TestApp {
    spawn_app_with(TestOptions {
        server: server.to_owned(),
        ..TestOptions::default()
    })
    .await
}

fn ingress_addr(app: &TestApp) -> String {
    app.ingress_url.trim_start_matches("http://").to_owned()
}

/// Reads and discards until the server closes the connection (EOF or an
/// error such as a reset); false if it is still open at `deadline`.
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Sends one bodiless request on a keep-alive HTTP/1.1 connection and
/// returns the response head (status line and headers).
async fn http1_exchange(stream: &mut TcpStream, path: &str) -> String {
    let request = format!("POST {path} HTTP/1.1\r\nHost: relay\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    read_head(stream, Duration::from_secs(5))
        .await
        .expect("a response")
}

/// The response head, once `\r\n\r\n` has arrived (bodies here are short and
/// come in the same segment; they are not needed).
async fn read_head(stream: &mut TcpStream, wait: Duration) -> Option<String> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&got).into_owned())
}

#[tokio::test]
async fn silent_and_preface_only_connections_are_closed() {
    let app = app_with_server("request_timeout = \"1s\"\nidle_timeout = \"2s\"\n").await;
    let addr = ingress_addr(&app);
    let mut silent = Vec::new();
    let mut preface_only = Vec::new();
    let mut half_preface = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(&addr).await.unwrap());
        let mut h2 = TcpStream::connect(&addr).await.unwrap();
        h2.write_all(H2_PREFACE).await.unwrap();
        h2.write_all(&EMPTY_SETTINGS).await.unwrap();
        preface_only.push(h2);
    }
    for _ in 0..5 {
        // Bytes that still match the preface keep version detection waiting.
        let mut partial = TcpStream::connect(&addr).await.unwrap();
        partial.write_all(&H2_PREFACE[..10]).await.unwrap();
        half_preface.push(partial);
    }
    let deadline = Instant::now() + Duration::from_secs(6);
    for (kind, streams) in [
        ("silent", &mut silent),
        ("preface + SETTINGS", &mut preface_only),
        ("half a preface", &mut half_preface),
    ] {
        for (i, stream) in streams.iter_mut().enumerate() {
            assert!(
                closed_by(stream, deadline).await,
                "{kind} connection {i} still open after 6s with request_timeout = 1s"
            );
        }
    }
    // The relay still serves.
    let (status, _) = app.post_notify("nope", "text/plain", &[], Vec::new()).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn an_idle_http1_keep_alive_connection_is_closed() {
    // A long request timeout, so that only the idle timeout can close it.
    let app = app_with_server("request_timeout = \"30s\"\nidle_timeout = \"1s\"\n").await;
    let mut stream = TcpStream::connect(ingress_addr(&app)).await.unwrap();
    let head = http1_exchange(&mut stream, "/notify/nope").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    assert!(!head.to_ascii_lowercase().contains("connection: close"), "{head}");
    let idle_from = Instant::now();
    assert!(
        closed_by(&mut stream, idle_from + Duration::from_secs(5)).await,
        "an idle keep-alive connection outlived idle_timeout = 1s by 4s"
    );
    let idle_for = idle_from.elapsed();
    assert!(
        idle_for >= Duration::from_millis(800),
        "closed after {idle_for:?}, before the idle timeout"
    );
}

#[tokio::test]
async fn an_idle_h2c_connection_is_closed_after_its_last_request() {
    let app = app_with_server("request_timeout = \"30s\"\nidle_timeout = \"1s\"\n").await;
    let tcp = TcpStream::connect(ingress_addr(&app)).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = hyper::Request::post(format!("{}/notify/nope", app.ingress_url))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let _ = response.into_body().collect().await;
    let idle_from = Instant::now();
    // The client's connection future ends when the server closes (GOAWAY,
    // then the socket), even though the client keeps its sender alive.
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(
        ended.is_ok(),
        "an idle h2c connection outlived idle_timeout = 1s by 4s"
    );
    assert!(idle_from.elapsed() >= Duration::from_millis(800));
    drop(sender);
}

#[tokio::test]
async fn beyond_max_in_flight_requests_get_503_with_retry_after() {
    let app = app_with_server("request_timeout = \"10s\"\nmax_in_flight = 1\n").await;
    // One request that stays in flight: its body is promised but not sent.
    let mut slow = TcpStream::connect(ingress_addr(&app)).await.unwrap();
    slow.write_all(
        b"POST /notify/dryad-main HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"a\":",
    )
    .await
    .unwrap();
    // Give the relay a moment to parse the head and start the handler.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let response = app
        .client
        .post(format!("{}/notify/dryad-main", app.ingress_url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );

    // Once the slow request ends, requests are served again.
    drop(slow);
    let served = eventually(Duration::from_secs(5), || async {
        app.post_notify("nope", "text/plain", &[], Vec::new()).await.0 == 404
    })
    .await;
    assert!(served, "requests still refused after the slow one ended");
}

#[tokio::test]
async fn beyond_max_connections_new_connections_wait() {
    let app =
        app_with_server("request_timeout = \"10s\"\nidle_timeout = \"30s\"\nmax_connections = 2\n").await;
    let addr = ingress_addr(&app);
    // Two connections take both slots (each answered, so each is accepted).
    let mut first = TcpStream::connect(&addr).await.unwrap();
    let mut second = TcpStream::connect(&addr).await.unwrap();
    assert!(http1_exchange(&mut first, "/notify/nope")
        .await
        .starts_with("HTTP/1.1 404"));
    assert!(http1_exchange(&mut second, "/notify/nope")
        .await
        .starts_with("HTTP/1.1 404"));

    // A third connects (the kernel's backlog) but is not served...
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(b"POST /notify/nope HTTP/1.1\r\nHost: relay\r\nContent-Length: 0\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_head(&mut third, Duration::from_millis(800)).await,
        None,
        "a third connection was served with max_connections = 2"
    );
    // ...until an earlier one closes.
    drop(first);
    let head = read_head(&mut third, Duration::from_secs(5))
        .await
        .expect("the waiting connection is served once a slot frees");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    // The remaining connection was never disturbed.
    assert!(http1_exchange(&mut second, "/notify/nope")
        .await
        .starts_with("HTTP/1.1 404"));
}

#[test]
fn limits_are_validated_with_the_key_named() {
    let parse = |text: &str| {
        payhook::config::Config::from_toml_str(text, std::path::Path::new("."), &|_| None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(parse("[server]\nmax_connections = 0\n").contains("server.max_connections"));
    assert!(parse("[server]\nmax_in_flight = 0\n").contains("server.max_in_flight"));
    assert!(parse("[server]\nidle_timeout = \"0s\"\n").contains("server.idle_timeout"));
    assert!(parse("[server]\nidle_timeout = \"soon\"\n").contains("server.idle_timeout"));
    let c = payhook::config::Config::from_toml_str("", std::path::Path::new("."), &|_| None).unwrap();
    assert_eq!(c.server.max_connections, 10_000);
    assert_eq!(c.server.max_in_flight, 1024);
    assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
}
