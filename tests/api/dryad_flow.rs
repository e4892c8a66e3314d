//! A dryad callback from the provider's POST to the merchant's receipt.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::helpers::*;

fn hmac_hex(key: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    hex::encode(mac.finalize().into_bytes())
}

async fn signed_callback_reaches_the_merchant_with_both_signatures(backend: Backend) {
    let app = spawn_app(backend).await;
    let signed = dryad_callback("1001", 10001, chrono::Utc::now());
    let (status, body) = app.post_signed("dryad-main", &signed).await;
    assert_eq!((status, body.as_str()), (200, ""));

    let got = app.merchant.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    let d = &got[0];
    let event = d.json();
    assert_eq!(event["type"], "payment.succeeded");
    assert_eq!(event["provider"], "dryad");
    assert_eq!(event["account"], "dryad-main");
    assert_eq!(event["provider_trade_no"], "1001");
    assert_eq!(event["merchant_order_no"], "M-1001");
    assert_eq!(event["amount"], 10001);
    assert_eq!(event["currency"], "CNY");
    assert_eq!(event["channel"], "WECHAT");
    assert!(event["refund_no"].is_null());
    assert!(event["id"].as_str().unwrap().starts_with("evt_"));
    assert_eq!(event["raw"]["orderId"], "1001");

    // Seed 004's scheme: hex HMAC-SHA256(secret bytes, body ++ nonce ++ timestamp).
    let expected = hmac_hex(
        ENDPOINT_SECRET.as_bytes(),
        &[
            &d.body,
            d.header("x-nonce").as_bytes(),
            d.header("x-timestamp").as_bytes(),
        ],
    );
    assert_eq!(d.header("x-signature"), expected);
    // Standard Webhooks: base64 HMAC with the whsec_ key over "{id}.{ts}.{body}".
    assert_eq!(d.header("webhook-id"), event["id"].as_str().unwrap());
    let key = base64::engine::general_purpose::STANDARD
        .decode(ENDPOINT_SECRET.trim_start_matches("whsec_"))
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", d.header("webhook-id"), d.header("webhook-timestamp")).as_bytes());
    mac.update(&d.body);
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(d.header("webhook-signature"), format!("v1,{sig}"));
    assert_eq!(d.header("x-payhook-attempt"), "1");
    assert_eq!(d.header("content-type"), "application/json");
    let ts_ms: i64 = d.header("x-timestamp").parse().unwrap();
    let ts_s: i64 = d.header("webhook-timestamp").parse().unwrap();
    assert_eq!(ts_ms / 1000, ts_s);

    assert_eq!(
        app.counter(
            "payhook_ingress_requests_total",
            &[
                ("provider", "dryad"),
                ("account", "dryad-main"),
                ("outcome", "accepted")
            ]
        )
        .await,
        1.0
    );
    assert!(
        eventually(Duration::from_secs(2), || async {
            app.counter(
                "payhook_delivery_attempts_total",
                &[("endpoint", "merchant"), ("outcome", "delivered")],
            )
            .await
                == 1.0
        })
        .await
    );
}

async fn a_duplicate_is_acknowledged_but_not_delivered_twice(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = chrono::Utc::now();
    let first = dryad_callback("2002", 500, now);
    // The provider retries the same notice with a fresh nonce.
    let again = dryad_callback("2002", 500, now + chrono::Duration::seconds(60));
    assert_ne!(first.headers, again.headers);
    assert_eq!(app.post_signed("dryad-main", &first).await, (200, String::new()));
    assert_eq!(app.post_signed("dryad-main", &again).await, (200, String::new()));
    app.merchant.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.merchant.received().len(), 1);
    let dup = app
        .counter(
            "payhook_ingress_requests_total",
            &[
                ("provider", "dryad"),
                ("account", "dryad-main"),
                ("outcome", "duplicate"),
            ],
        )
        .await;
    assert_eq!(dup, 1.0);
}

async fn forged_stale_replayed_and_truncated_callbacks_are_refused(backend: Backend) {
    let app = spawn_app(backend).await;
    let now = chrono::Utc::now();
    let series = |outcome: &'static str| {
        [
            ("provider", "dryad"),
            ("account", "dryad-main"),
            ("outcome", outcome),
        ]
    };

    // Forged: the signature is for other bytes.
    let mut forged = dryad_callback("3001", 100, now);
    forged.body = String::from_utf8(forged.body)
        .unwrap()
        .replace("100", "999")
        .into_bytes();
    let (status, _) = app.post_signed("dryad-main", &forged).await;
    assert_eq!(status, 401);

    // Stale: signed ten minutes ago (the window is 300 s).
    let stale = dryad_callback("3002", 100, now - chrono::Duration::minutes(10));
    assert_eq!(app.post_signed("dryad-main", &stale).await.0, 401);

    // Replayed: the very same request twice.
    let original = dryad_callback("3003", 100, now);
    assert_eq!(app.post_signed("dryad-main", &original).await.0, 200);
    assert_eq!(app.post_signed("dryad-main", &original).await.0, 401);

    // Truncated body with the original headers.
    let mut truncated = dryad_callback("3004", 100, now);
    truncated.body.truncate(truncated.body.len() / 2);
    assert_eq!(app.post_signed("dryad-main", &truncated).await.0, 401);

    // Authentic but not a notice: 400.
    let secret = DRYAD_SECRET.as_bytes();
    let body = b"[1,2,3]".to_vec();
    let ts = now.timestamp_millis().to_string();
    let sig = hmac_hex(secret, &[&body, b"n-x", ts.as_bytes()]);
    let headers = vec![
        ("X-Signature".to_owned(), sig),
        ("X-Nonce".to_owned(), "n-x".to_owned()),
        ("X-Timestamp".to_owned(), ts),
    ];
    assert_eq!(
        app.post_notify("dryad-main", "application/json", &headers, body)
            .await
            .0,
        400
    );

    // Unknown account and oversized body.
    assert_eq!(app.post_signed("nobody", &original).await.0, 404);
    let big = vec![b'x'; 70_000];
    assert_eq!(
        app.post_notify("dryad-main", "application/json", &[], big)
            .await
            .0,
        413
    );

    app.merchant.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered = app.merchant.received();
    assert_eq!(delivered.len(), 1, "only the one genuine callback is delivered");
    assert_eq!(delivered[0].json()["provider_trade_no"], "3003");

    assert_eq!(
        app.counter("payhook_ingress_requests_total", &series("bad_signature"))
            .await,
        3.0
    );
    assert_eq!(
        app.counter("payhook_ingress_requests_total", &series("stale"))
            .await,
        1.0
    );
    assert_eq!(
        app.counter("payhook_ingress_requests_total", &series("bad_request"))
            .await,
        1.0
    );
    assert_eq!(
        app.counter("payhook_ingress_requests_total", &series("too_large"))
            .await,
        1.0
    );
    assert_eq!(
        app.counter("payhook_ingress_requests_total", &series("accepted"))
            .await,
        1.0
    );
    assert_eq!(
        app.counter(
            "payhook_ingress_requests_total",
            &[
                ("provider", "unknown"),
                ("account", "unknown"),
                ("outcome", "unknown_account")
            ]
        )
        .await,
        1.0
    );
}

async fn health_readiness_and_metrics_answer(backend: Backend) {
    let app = spawn_app(backend).await;
    // Ready once the store (and, scaled, every broker connection) is up.
    assert!(
        eventually(Duration::from_secs(15), || async {
            let resp = app
                .client
                .get(format!("{}/readyz", app.admin_url))
                .send()
                .await
                .unwrap();
            resp.status().as_u16() == 200
        })
        .await
    );
    for path in ["/healthz", "/metrics"] {
        let resp = app
            .client
            .get(format!("{}{path}", app.admin_url))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200, "{path}");
    }
    app.post_signed("dryad-main", &dryad_callback("4001", 1, chrono::Utc::now()))
        .await;
    let text = app.metrics().await;
    for name in [
        "payhook_ingress_requests_total",
        "payhook_ingress_duration_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}

crate::on_both_backends!(
    signed_callback_reaches_the_merchant_with_both_signatures,
    a_duplicate_is_acknowledged_but_not_delivered_twice,
    forged_stale_replayed_and_truncated_callbacks_are_refused,
    health_readiness_and_metrics_answer
);
