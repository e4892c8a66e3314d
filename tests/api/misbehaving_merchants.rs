//! Merchant endpoints that misbehave, and outbound safety. The dispatcher
//! keeps going and well-behaved endpoints are unaffected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;

#[derive(Clone, Copy, Debug)]
enum Misbehaviour {
    /// Accepts, reads, never answers.
    Hang,
    /// Sends the status line one byte at a time, slowly.
    Drip,
    /// Accepts and resets the connection.
    Reset,
    /// Answers 200 with a 100 MB body.
    Huge,
}

/// Reads one request's head (we do not care about its body).
async fn read_head(stream: &mut TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
}

/// A raw TCP "merchant" that misbehaves; returns its URL and how many body
/// bytes it managed to write (for `Huge`).
async fn bad_merchant(kind: Misbehaviour) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                read_head(&mut stream).await;
                match kind {
                    Misbehaviour::Hang => tokio::time::sleep(Duration::from_secs(60)).await,
                    Misbehaviour::Drip => {
                        for b in b"HTTP/1.1 200 OK\r\n" {
                            if stream.write_all(&[*b]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(400)).await;
                        }
                    }
                    Misbehaviour::Reset => {
                        // Linger 0 makes the close a reset (RST), not a FIN.
                        #[allow(deprecated)]
                        let _ = stream.set_linger(Some(Duration::ZERO));
                        drop(stream);
                    }
                    Misbehaviour::Huge => {
                        let head = "HTTP/1.1 200 OK\r\nContent-Length: 104857600\r\n\r\n";
                        if stream.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = vec![b'x'; 64 * 1024];
                        for _ in 0..1600 {
                            match tokio::time::timeout(Duration::from_secs(3), stream.write_all(&chunk)).await
                            {
                                Ok(Ok(())) => {
                                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                                }
                                _ => return,
                            }
                        }
                    }
                }
            });
        }
    });
    (url, written)
}

fn endpoint(id: &str, url: &str) -> String {
    format!("[[endpoints]]\nid = \"{id}\"\nurl = \"{url}\"\nsecret = \"s\"\n")
}

async fn attempts(app: &TestApp, endpoint: &str, outcome: &str) -> f64 {
    app.counter(
        "payhook_delivery_attempts_total",
        &[("endpoint", endpoint), ("outcome", outcome)],
    )
    .await
}

async fn misbehaving_endpoints_do_not_hold_up_the_others(backend: Backend) {
    let (hang, _) = bad_merchant(Misbehaviour::Hang).await;
    let (drip, _) = bad_merchant(Misbehaviour::Drip).await;
    let (reset, _) = bad_merchant(Misbehaviour::Reset).await;
    let (huge, written) = bad_merchant(Misbehaviour::Huge).await;
    let redirect = Merchant::start().await;
    let client_error = Merchant::start().await;
    let server_error = Merchant::start().await;
    let throttled = Merchant::start().await;
    let redirect_target = Merchant::start().await;
    const EVENTS: usize = 5;
    for _ in 0..EVENTS {
        redirect.answer_next_with(302, "location", &redirect_target.url);
        client_error.answer_next_with(404, "x-reason", "nope");
        server_error.answer_next_with(502, "x-reason", "down");
        throttled.answer_next(429, "3600");
    }
    let extra = [
        endpoint("hang", &hang),
        endpoint("drip", &drip),
        endpoint("reset", &reset),
        endpoint("huge", &huge),
        endpoint("redirect", &redirect.url),
        endpoint("client-error", &client_error.url),
        endpoint("server-error", &server_error.url),
        endpoint("throttled", &throttled.url),
    ]
    .concat();
    let app = spawn_app_with(TestOptions {
        backend,
        delivery: "retry_schedule = [\"30s\"]\nmax_retries = 1\ntimeout = \"1s\"\nconcurrency = 64\nallow_private_targets = true\n"
            .into(),
        extra_endpoints: extra,
        ..TestOptions::default()
    })
    .await;
    let started = Instant::now();
    for i in 0..EVENTS {
        let signed = dryad_callback(&format!("mb{i}"), 100, chrono::Utc::now());
        assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    }
    // The well-behaved merchant gets everything at once, whatever the others do.
    let got = app.merchant.wait_for(EVENTS, Duration::from_secs(10)).await;
    assert_eq!(got.len(), EVENTS);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "good endpoint served in {:?}",
        started.elapsed()
    );

    let expect = [
        ("hang", "timeout"),
        ("drip", "timeout"),
        ("reset", "connect_error"),
        ("huge", "delivered"),
        ("redirect", "http_error"),
        ("client-error", "http_error"),
        ("server-error", "http_error"),
        ("throttled", "http_error"),
    ];
    for (endpoint, outcome) in expect {
        assert!(
            eventually(Duration::from_secs(15), || async {
                attempts(&app, endpoint, outcome).await >= EVENTS as f64
            })
            .await,
            "{endpoint}: {EVENTS} attempts ending {outcome}; metrics:\n{}",
            app.metrics().await
        );
    }
    assert!(
        redirect_target.received().is_empty(),
        "redirects are not followed"
    );
    // The 100 MB answer was not read: the merchant could write only what
    // the socket buffers took before the relay hung up.
    let huge_written = written.load(Ordering::Relaxed);
    assert!(
        huge_written < 32 * 1024 * 1024,
        "relay pulled {huge_written} bytes of a 100 MB answer"
    );
    // Retry-After: 3600 pushed the throttled retry an hour out, past the 30 s schedule.
    let event_id = got[0].json()["id"].as_str().unwrap().to_owned();
    let deliveries = app.store().deliveries_for_event(&event_id).await.unwrap();
    let throttled_row = deliveries.iter().find(|d| d.endpoint_id == "throttled").unwrap();
    let wait_ms = throttled_row.next_attempt_at_ms - now_ms();
    assert!(wait_ms > 3_500_000, "next attempt in {wait_ms} ms");
    let ready = app
        .client
        .get(format!("{}/healthz", app.admin_url))
        .send()
        .await
        .unwrap();
    assert!(ready.status().is_success());
}

async fn a_slow_endpoint_cannot_take_every_slot(backend: Backend) {
    // A merchant that takes 2 s per request, and a fast one.
    let slow_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_url = format!("http://{}/hook", slow_listener.local_addr().unwrap());
    let in_flight = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(0));
    {
        let (in_flight, peak) = (in_flight.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = slow_listener.accept().await else {
                    return;
                };
                let (in_flight, peak) = (in_flight.clone(), peak.clone());
                tokio::spawn(async move {
                    read_head(&mut stream).await;
                    let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                        .await;
                });
            }
        });
    }
    let app = spawn_app_with(TestOptions {
        backend,
        delivery: "retry_schedule = [\"100ms\"]\nmax_retries = 3\ntimeout = \"5s\"\nconcurrency = 4\nper_endpoint_concurrency = 2\nallow_private_targets = true\n".into(),
        extra_endpoints: endpoint("slow", &slow_url),
        ..TestOptions::default()
    })
    .await;
    const EVENTS: usize = 8;
    let started = Instant::now();
    for i in 0..EVENTS {
        let signed = dryad_callback(&format!("slow{i}"), 100, chrono::Utc::now());
        assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    }
    // 8 slow jobs would fill all 4 slots for 4 s; the fast merchant must not wait.
    let got = app.merchant.wait_for(EVENTS, Duration::from_secs(10)).await;
    assert_eq!(got.len(), EVENTS);
    let fast_done = started.elapsed();
    assert!(
        fast_done < Duration::from_millis(1500),
        "fast endpoint starved: {fast_done:?}"
    );
    assert!(
        eventually(Duration::from_secs(20), || async {
            attempts(&app, "slow", "delivered").await >= EVENTS as f64
        })
        .await
    );
    assert!(
        peak.load(Ordering::SeqCst) <= 2,
        "at most 2 in flight to one endpoint"
    );
}

crate::on_both_backends!(
    misbehaving_endpoints_do_not_hold_up_the_others,
    a_slow_endpoint_cannot_take_every_slot
);

#[tokio::test]
async fn private_and_local_targets_are_refused() {
    let local = Merchant::start().await;
    let port = local
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let targets = [
        ("loopback", format!("http://127.0.0.1:{port}/hook")),
        ("localhost", format!("http://localhost:{port}/hook")),
        ("ipv6-loopback", format!("http://[::1]:{port}/hook")),
        ("metadata", "http://169.254.169.254/latest/meta-data/".to_owned()),
        ("private", "http://10.0.0.1/hook".to_owned()),
        ("mapped", format!("http://[::ffff:127.0.0.1]:{port}/hook")),
    ];
    let extra: String = targets.iter().map(|(id, url)| endpoint(id, url)).collect();
    let app = spawn_app_with(TestOptions {
        delivery:
            "retry_schedule = [\"30s\"]\nmax_retries = 1\ntimeout = \"1s\"\nallow_private_targets = false\n"
                .into(),
        extra_endpoints: extra,
        ..TestOptions::default()
    })
    .await;
    assert_eq!(
        app.post_signed("dryad-main", &dryad_callback("ssrf", 1, chrono::Utc::now()))
            .await
            .0,
        200
    );
    for (id, _) in &targets {
        assert!(
            eventually(Duration::from_secs(10), || async {
                attempts(&app, id, "refused_target").await == 1.0
            })
            .await,
            "{id} refused; metrics:\n{}",
            app.metrics().await
        );
    }
    // The built-in test merchant is on 127.0.0.1 too: refused as well.
    assert!(
        eventually(Duration::from_secs(5), || async {
            attempts(&app, "merchant", "refused_target").await == 1.0
        })
        .await
    );
    assert!(local.received().is_empty());
    assert!(app.merchant.received().is_empty());
}
