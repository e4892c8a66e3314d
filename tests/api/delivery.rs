//! Retries, dead deliveries, Retry-After, restarts and pickup latency.

use std::time::Duration;

use payhook::domain::DeliveryStatus;

use crate::helpers::*;

async fn deliveries_of(app: &TestApp, event_id: &str) -> Vec<payhook::store::DeliveryRow> {
    app.store().deliveries_for_event(event_id).await.unwrap()
}

async fn failures_are_retried_on_the_schedule_until_delivered(backend: Backend) {
    let app = spawn_app(backend).await;
    app.merchant.fail_next(&[500, 503]);
    let signed = dryad_callback("5001", 700, chrono::Utc::now());
    assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);

    let got = app.merchant.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3);
    let attempts: Vec<&str> = got.iter().map(|r| r.header("x-payhook-attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    // Every copy carries the same event id.
    let ids: Vec<String> = got
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.iter().all(|id| *id == ids[0]));
    assert!(got.iter().all(|r| r.header("webhook-id") == ids[0]));
    // Schedule: 50 ms before retry 1, 100 ms before retry 2.
    let gap1 = got[1].at - got[0].at;
    let gap2 = got[2].at - got[1].at;
    assert!(gap1 >= Duration::from_millis(50), "first retry after {gap1:?}");
    assert!(gap2 >= Duration::from_millis(100), "second retry after {gap2:?}");
    assert!(
        gap1 < Duration::from_secs(1) && gap2 < Duration::from_secs(1),
        "{gap1:?} {gap2:?}"
    );

    assert!(
        eventually(Duration::from_secs(2), || async {
            deliveries_of(&app, &ids[0]).await.first().map(|d| d.status) == Some(DeliveryStatus::Delivered)
        })
        .await
    );
    let delivery = &deliveries_of(&app, &ids[0]).await[0];
    assert_eq!(delivery.attempts, 3);
    let stored = app.store().attempts_for_delivery(delivery.id).await.unwrap();
    let outcomes: Vec<(&str, Option<u16>)> = stored
        .iter()
        .map(|a| (a.outcome.as_str(), a.http_status))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("http_error", Some(500)),
            ("http_error", Some(503)),
            ("delivered", Some(200))
        ]
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.merchant.received().len(), 3, "nothing after the confirmation");
    let m = app.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            "payhook_delivery_attempts_total",
            &[("endpoint", "merchant"), ("outcome", "http_error")]
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &m,
            "payhook_delivery_attempts_total",
            &[("endpoint", "merchant"), ("outcome", "delivered")]
        ),
        1.0
    );
}

async fn exhausted_retries_end_as_a_dead_delivery(backend: Backend) {
    let app = spawn_app(backend).await;
    app.merchant.always_fail(true);
    let signed = dryad_callback("5002", 700, chrono::Utc::now());
    assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    // max_retries = 3: the first attempt and three retries.
    let got = app.merchant.wait_for(4, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 4);
    let id = got[0].json()["id"].as_str().unwrap().to_owned();
    assert!(
        eventually(Duration::from_secs(3), || async {
            deliveries_of(&app, &id).await.first().map(|d| d.status) == Some(DeliveryStatus::Dead)
        })
        .await
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(app.merchant.received().len(), 4, "no attempt after the last");
    assert_eq!(
        app.counter("payhook_deliveries_dead_total", &[("endpoint", "merchant")])
            .await,
        1.0
    );
}

async fn retry_after_pushes_the_next_attempt_later(backend: Backend) {
    let app = spawn_app(backend).await;
    app.merchant.answer_next(429, "1");
    let signed = dryad_callback("5003", 700, chrono::Utc::now());
    assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    let got = app.merchant.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(1000),
        "Retry-After: 1 honoured, got {gap:?}"
    );
}

async fn a_pending_delivery_survives_a_restart(backend: Backend) {
    let mut app = spawn_app_with(TestOptions {
        delivery:
            "retry_schedule = [\"1500ms\"]\nmax_retries = 3\ntimeout = \"2s\"\nallow_private_targets = true\n"
                .into(),
        backend,
        ..TestOptions::default()
    })
    .await;
    app.merchant.fail_next(&[500]);
    let signed = dryad_callback("5004", 700, chrono::Utc::now());
    assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    assert_eq!(app.merchant.wait_for(1, Duration::from_secs(5)).await.len(), 1);
    // The retry is due in 1.5 s; stop now, while it is pending.
    app.stop().await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    assert_eq!(
        app.merchant.received().len(),
        1,
        "nothing is delivered while stopped"
    );
    app.restart().await;
    let got = app.merchant.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2, "the pending retry is delivered after the restart");
    assert_eq!(got[1].header("x-payhook-attempt"), "2");
    assert_eq!(got[0].json()["id"], got[1].json()["id"]);
}

async fn new_jobs_are_picked_up_promptly(backend: Backend) {
    let app = spawn_app(backend).await;
    for i in 0..5 {
        let signed = dryad_callback(&format!("600{i}"), 100, chrono::Utc::now());
        let sent = std::time::Instant::now();
        assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
        let got = app.merchant.wait_for(i + 1, Duration::from_secs(5)).await;
        let latency = got[i].at.saturating_duration_since(sent);
        // Generous for a loaded CI machine; a once-per-second poll would miss it.
        assert!(
            latency < Duration::from_millis(400),
            "callback {i} delivered after {latency:?}"
        );
        tokio::time::sleep(Duration::from_millis(137)).await;
    }
}

async fn only_subscribed_endpoints_receive_an_event(backend: Backend) {
    let other = Merchant::start().await;
    let app = spawn_app_with(TestOptions {
        extra_endpoints: format!(
            "[[endpoints]]\nid = \"refunds-only\"\nurl = \"{}\"\nsecret = \"s\"\nevents = [\"refund.*\"]\n",
            other.url
        ),
        backend,
        ..TestOptions::default()
    })
    .await;
    assert_eq!(
        app.post_signed("dryad-main", &dryad_callback("7001", 1, chrono::Utc::now()))
            .await
            .0,
        200
    );
    assert_eq!(app.merchant.wait_for(1, Duration::from_secs(5)).await.len(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        other.received().is_empty(),
        "a refunds-only endpoint gets no payment event"
    );
}

crate::on_both_backends!(
    failures_are_retried_on_the_schedule_until_delivered,
    exhausted_retries_end_as_a_dead_delivery,
    retry_after_pushes_the_next_attempt_later,
    a_pending_delivery_survives_a_restart,
    new_jobs_are_picked_up_promptly,
    only_subscribed_endpoints_receive_an_event
);
