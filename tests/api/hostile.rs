//! Hostile input at the ingress: each gets a clear answer, never a crash, and
//! the relay stays healthy.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

fn hmac_hex(parts: &[&[u8]]) -> String {
    payhook::crypto::hmac_sha256(DRYAD_SECRET.as_bytes(), parts)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Signs arbitrary bytes as dryad would, so that the body itself is what is
/// tested, not the signature.
fn dryad_signed(body: &[u8]) -> Vec<(String, String)> {
    let nonce = format!("n-{}", ulid::Ulid::new());
    let ts = chrono::Utc::now().timestamp_millis().to_string();
    vec![
        (
            "X-Signature".into(),
            hmac_hex(&[body, nonce.as_bytes(), ts.as_bytes()]),
        ),
        ("X-Nonce".into(), nonce),
        ("X-Timestamp".into(), ts),
    ]
}

fn outcome(app_metrics: &str, outcome: &str) -> f64 {
    metric_value(
        app_metrics,
        "payhook_ingress_requests_total",
        &[
            ("provider", "dryad"),
            ("account", "dryad-main"),
            ("outcome", outcome),
        ],
    )
}

#[tokio::test]
async fn malformed_bodies_get_clear_answers() {
    let app = spawn_app(Backend::Sqlite).await;
    let post = |body: Vec<u8>, signed: bool, content_type: &'static str| {
        let headers = if signed { dryad_signed(&body) } else { Vec::new() };
        let app = &app;
        async move {
            app.post_notify("dryad-main", content_type, &headers, body)
                .await
                .0
        }
    };
    // Authentic bytes that are not a notice: 400.
    assert_eq!(
        post(b"\xff\xfe{\"a\":1}".to_vec(), true, "application/json").await,
        400,
        "invalid UTF-8"
    );
    let deep = format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)).into_bytes();
    assert_eq!(
        post(deep.clone(), true, "application/json").await,
        400,
        "deep nesting, signed"
    );
    assert_eq!(
        post(deep, false, "application/json").await,
        401,
        "deep nesting, unsigned"
    );
    let huge = br#"{"orderId":1,"bizOrderId":"b","amount":1e400,"status":"SUCCEEDED"}"#.to_vec();
    assert_eq!(post(huge, true, "application/json").await, 400, "huge amount");
    let huge_id = br#"{"orderId":123456789012345678901234567890,"amount":1,"status":"SUCCEEDED"}"#.to_vec();
    assert_eq!(post(huge_id, true, "application/json").await, 400, "huge id");
    let negative = br#"{"orderId":1,"amount":-5,"status":"SUCCEEDED"}"#.to_vec();
    assert_eq!(
        post(negative, true, "application/json").await,
        400,
        "negative amount"
    );
    // The content type does not change what the signature covers: a genuine
    // notice labelled oddly is still genuine, garbage is still refused.
    let genuine = dryad_callback("ct1", 100, chrono::Utc::now());
    let (status, _) = app
        .post_notify("dryad-main", "text/plain", &genuine.headers, genuine.body.clone())
        .await;
    assert_eq!(status, 200, "signature, not Content-Type, decides");
    assert_eq!(post(b"<xml/>".to_vec(), false, "application/xml").await, 401);
    assert_eq!(
        post(b"--x\r\n".to_vec(), false, "multipart/form-data; boundary=x").await,
        401
    );

    let m = app.metrics().await;
    assert_eq!(outcome(&m, "bad_request"), 5.0);
    assert_eq!(outcome(&m, "bad_signature"), 3.0);
    app.merchant.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.merchant.received().len(),
        1,
        "only the genuine notice is delivered"
    );
}

#[tokio::test]
async fn duplicate_form_keys_are_refused() {
    let accounts = format!(
        "[[accounts]]\nid = \"cbb-x\"\nprovider = \"cbb\"\npublic_key_file = \"{}/sandbox-keys/cbb_platform_pub.pem\"\n",
        env!("CARGO_MANIFEST_DIR")
    );
    let app = spawn_app_with(TestOptions {
        accounts,
        ..TestOptions::default()
    })
    .await;
    let body = b"tradeNo=T1&tradeNo=T2&outTradeNo=O&status=SUCCESS&totalNumber=1.00&sign=abc".to_vec();
    let (status, answer) = app
        .post_notify("cbb-x", "application/x-www-form-urlencoded", &[], body)
        .await;
    assert_eq!((status, answer.as_str()), (400, "FAIL"));
}

#[tokio::test]
async fn oversized_bodies_are_refused_with_or_without_a_length() {
    let app = spawn_app(Backend::Sqlite).await;
    let big = vec![b'{'; 70_000];
    assert_eq!(
        app.post_notify("dryad-main", "application/json", &[], big.clone())
            .await
            .0,
        413
    );
    // Chunked: no Content-Length to refuse up front; the read limit stops it.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = big.chunks(1000).map(|c| Ok(c.to_vec())).collect();
    let resp = app
        .client
        .post(format!("{}/notify/dryad-main", app.ingress_url))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert_eq!(outcome(&app.metrics().await, "too_large"), 2.0);
}

#[tokio::test]
async fn slow_senders_are_cut_off() {
    let app = spawn_app_with(TestOptions {
        server: "request_timeout = \"1s\"\n".into(),
        ..TestOptions::default()
    })
    .await;
    let addr = app.ingress_url.trim_start_matches("http://").to_owned();

    // Slowloris headers: never finish them.
    let started = Instant::now();
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /notify/dryad-main HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            // Keep dripping a header byte now and then, as slowloris does.
            let _ = slow.write_all(b"X").await;
            match tokio::time::timeout(Duration::from_millis(300), slow.read(&mut buf)).await {
                Ok(r) => return r,
                Err(_) => continue,
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server closed a connection that never finished its headers"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "cut off after ~1 s, took {:?}",
        started.elapsed()
    );

    // Slow body: headers promise 100 bytes, 10 arrive.
    let mut slow = TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"POST /notify/dryad-main HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "slow body answered {answer:?}"
    );

    // Meanwhile the relay serves others.
    let ok = app
        .post_signed("dryad-main", &dryad_callback("slow-ok", 1, chrono::Utc::now()))
        .await;
    assert_eq!(ok.0, 200);
}

#[tokio::test]
async fn nothing_is_echoed_so_nothing_can_be_injected() {
    let app = spawn_app(Backend::Sqlite).await;
    let resp = app
        .client
        .post(format!("{}/notify/x%0D%0ASet-Cookie:%20evil=1", app.ingress_url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    assert!(resp.headers().get("set-cookie").is_none());
    assert_eq!(resp.text().await.unwrap(), "unknown account");
    // A refused callback's answer is fixed text, whatever the input said.
    let mut forged = dryad_callback("inj", 1, chrono::Utc::now());
    forged.headers[0].1 = "evil-value".to_owned();
    let (status, body) = app.post_signed("dryad-main", &forged).await;
    assert_eq!(status, 401);
    assert!(!body.contains("evil"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_forgeries_deliver_nothing_and_leave_memory_flat() {
    use futures_util::StreamExt;
    let merchant = Merchant::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[storage]\nurl = \"sqlite://{}\"\n[delivery]\nallow_private_targets = true\n\
         [[accounts]]\nid = \"dryad-main\"\nprovider = \"dryad\"\nsecret = \"{DRYAD_SECRET}\"\n\
         [[endpoints]]\nid = \"m\"\nurl = \"{}\"\nsecret = \"s\"\n",
        dir.path().join("p.db").display(),
        merchant.url
    );
    let relay = RelayProcess::start(&config, dir.path()).await;
    let client = reqwest::Client::new();
    let forge = |i: usize| {
        let mut s = dryad_callback(&format!("f{i}"), 100, chrono::Utc::now());
        s.headers[0].1 = "0".repeat(64);
        s
    };
    let burst = |range: std::ops::Range<usize>| {
        let client = client.clone();
        let url = format!("{}/notify/dryad-main", relay.ingress_url);
        futures_util::stream::iter(range)
            .map(move |i| {
                let client = client.clone();
                let url = url.clone();
                let s = forge(i);
                async move {
                    let mut req = client.post(url).body(s.body);
                    for (k, v) in s.headers {
                        req = req.header(k, v);
                    }
                    req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
                }
            })
            .buffer_unordered(64)
            .collect::<Vec<u16>>()
    };
    // Warm up (connections, allocator), then measure across the burst.
    assert!(burst(0..1000).await.iter().all(|s| *s == 401));
    let before = relay.rss_kib();
    let statuses = burst(1000..11_000).await;
    let after = relay.rss_kib();
    assert!(
        statuses.iter().all(|s| *s == 401),
        "every forgery refused with 401"
    );
    let grown_mib = after.saturating_sub(before) / 1024;
    println!("RSS before {before} KiB, after {after} KiB");
    assert!(
        grown_mib < 20,
        "memory grew {grown_mib} MiB over 10,000 forgeries"
    );
    let metrics = relay.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "payhook_ingress_requests_total",
            &[
                ("provider", "dryad"),
                ("account", "dryad-main"),
                ("outcome", "bad_signature")
            ]
        ),
        11_000.0
    );
    let health = client
        .get(format!("{}/healthz", relay.admin_url))
        .send()
        .await
        .unwrap();
    assert!(health.status().is_success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(merchant.received().is_empty(), "no forgery delivered");
}
