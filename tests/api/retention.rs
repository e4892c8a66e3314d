//! Retention (`[storage] retention` and `raw_retention`): finished events
//! past the retention go with their deliveries and attempts, an event with a
//! pending delivery stays, raw callbacks are blanked earlier, a backlog of
//! more than one batch drains in one pass, and SQLite gives the pages back.
//!
//! Time is moved with the relay's injected clock, which retention's cut-offs
//! are taken from: events are stored now and then made "old".

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use payhook::clock::FixedClock;
use payhook::domain::{
    AccountId, AmountFen, DeliveryStatus, EndpointId, Event, EventId, EventType, Notification, ProviderKind,
};
use payhook::retention::Retention;
use payhook::store::{EventFilter, NewEvent, Store};
use payhook::telemetry::Metrics;
use sqlx::Connection;

use crate::helpers::*;

const DELETED: &str = "payhook_retention_deleted_total";

/// The id of the event stored for `dryad_callback(order, ..)`.
async fn event_id(store: &Store, order: &str) -> Option<String> {
    let filter = EventFilter {
        merchant_order_no: Some(format!("M-{order}")),
        limit: 10,
        ..EventFilter::default()
    };
    let events = store.list_events(&filter).await.unwrap();
    events.first().map(|e| e.id.clone())
}

/// The stored raw body's and headers' lengths, read straight from the
/// database (no API shows them).
async fn raw_lengths(app: &TestApp, backend: Backend, id: &str) -> (i64, i64) {
    match backend {
        Backend::Sqlite => {
            let url = format!("sqlite://{}?mode=ro", app.sqlite_file().display());
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let row: (i64, i64) =
                sqlx::query_as("SELECT length(raw_body), length(raw_headers) FROM events WHERE id = ?1")
                    .bind(id)
                    .fetch_one(&mut conn)
                    .await
                    .unwrap();
            row
        }
        Backend::Scaled => {
            let url = app.config().storage.url;
            let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
            let row: (i64, i64) = sqlx::query_as(
                "SELECT octet_length(raw_body)::int8, length(raw_headers)::int8 FROM events WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&mut conn)
            .await
            .unwrap();
            row
        }
    }
}

async fn counter(app: &TestApp, what: &str) -> f64 {
    app.counter(DELETED, &[("what", what)]).await
}

/// Delivered, dead and pending events, all of them stored now; the relay's
/// own retention loop (every 2 s with a 20 s retention) runs as time moves.
async fn finished_events_go_and_pending_ones_stay(backend: Backend) {
    let start = Utc::now();
    let clock = Arc::new(FixedClock::new(start));
    let app = spawn_app_with(TestOptions {
        backend,
        clock: Some(clock.clone()),
        storage: "retention = \"20s\"\nraw_retention = \"10s\"\n".into(),
        ..TestOptions::default()
    })
    .await;
    let store = app.store().clone();

    // Delivered at once.
    let (status, _) = app
        .post_signed("dryad-main", &dryad_callback("ret-ok", 100, start))
        .await;
    assert_eq!(status, 200);
    app.merchant.wait_for(1, Duration::from_secs(10)).await;
    // Dead after its retries.
    app.merchant.always_fail(true);
    let (status, _) = app
        .post_signed("dryad-main", &dryad_callback("ret-dead", 100, start))
        .await;
    assert_eq!(status, 200);
    // Its retries (50 to 150 ms apart) come due as the clock moves on.
    let mut dead = Vec::new();
    for _ in 0..75 {
        clock.advance(Duration::from_millis(200));
        dead = app.wait_for_dead(1, Duration::from_millis(200)).await;
        if !dead.is_empty() {
            break;
        }
    }
    assert_eq!(dead.len(), 1);
    // Pending: the merchant asks for two hours' pause (the clock moves one).
    app.merchant.always_fail(false);
    app.merchant.answer_next(503, "7200");
    let before = app.merchant.received().len();
    let (status, _) = app
        .post_signed("dryad-main", &dryad_callback("ret-wait", 100, start))
        .await;
    assert_eq!(status, 200);
    app.merchant.wait_for(before + 1, Duration::from_secs(10)).await;

    let ok = event_id(&store, "ret-ok").await.expect("stored");
    let dead = event_id(&store, "ret-dead").await.expect("stored");
    let wait = event_id(&store, "ret-wait").await.expect("stored");
    let wait_ok = eventually(Duration::from_secs(10), || async {
        let ds = store.deliveries_for_event(&wait).await.unwrap();
        ds.len() == 1 && ds[0].status == DeliveryStatus::Pending && ds[0].attempts == 1
    })
    .await;
    assert!(wait_ok, "the third event waits with one attempt made");
    let delivered_ok = eventually(Duration::from_secs(10), || async {
        let ds = store.deliveries_for_event(&ok).await.unwrap();
        ds.len() == 1 && ds[0].status == DeliveryStatus::Delivered
    })
    .await;
    assert!(delivered_ok);
    for id in [&ok, &dead, &wait] {
        let (body, headers) = raw_lengths(&app, backend, id).await;
        assert!(body > 0 && headers > 0, "{id}: raw kept while young");
    }
    let mut latest = 0;
    for id in [&ok, &dead, &wait] {
        latest = latest.max(store.event(id).await.unwrap().unwrap().received_at_ms);
    }
    let latest = DateTime::<Utc>::from_timestamp_millis(latest).unwrap();

    // Past raw_retention (10 s), within retention (20 s): raw blanked, all kept.
    app.set_clock(latest + chrono::Duration::seconds(11));
    let blanked = eventually(Duration::from_secs(15), || async {
        counter(&app, "raw").await >= 3.0
    })
    .await;
    assert!(blanked, "{}", app.metrics().await);
    assert_eq!(counter(&app, "raw").await, 3.0);
    for id in [&ok, &dead, &wait] {
        assert!(store.event(id).await.unwrap().is_some(), "{id} kept");
        assert_eq!(raw_lengths(&app, backend, id).await, (0, 0), "{id}: raw blanked");
    }
    assert_eq!(counter(&app, "events").await, 0.0);
    let dead_delivery = store.deliveries_for_event(&dead).await.unwrap()[0].id;
    assert_eq!(store.attempts_for_delivery(dead_delivery).await.unwrap().len(), 4);

    // An hour later: the finished ones go, with their deliveries and attempts.
    app.set_clock(latest + chrono::Duration::hours(1));
    let purged = eventually(Duration::from_secs(15), || async {
        counter(&app, "events").await >= 2.0
    })
    .await;
    assert!(purged, "{}", app.metrics().await);
    assert_eq!(counter(&app, "events").await, 2.0);
    assert_eq!(counter(&app, "deliveries").await, 2.0);
    assert_eq!(counter(&app, "attempts").await, 5.0, "1 delivered + 4 dead");
    for id in [&ok, &dead] {
        assert!(store.event(id).await.unwrap().is_none(), "{id} deleted");
        assert!(store.deliveries_for_event(id).await.unwrap().is_empty());
    }
    assert!(store
        .attempts_for_delivery(dead_delivery)
        .await
        .unwrap()
        .is_empty());
    let kept = store.deliveries_for_event(&wait).await.unwrap();
    assert!(
        store.event(&wait).await.unwrap().is_some(),
        "a pending event is never deleted"
    );
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].status, DeliveryStatus::Pending);
    assert_eq!(store.attempts_for_delivery(kept[0].id).await.unwrap().len(), 1);
    // The admin API no longer finds them.
    let (status, _) = app.admin_get(&format!("/admin/events/{ok}")).await;
    assert_eq!(status, 404);
    let text = app.metrics().await;
    assert!(text.contains(&format!("# HELP {DELETED} ")), "{text}");
}

/// A stored payment for `dryad-main` as the ingress makes it, with the
/// merchant order `M-{trade}`, no endpoint and a small raw callback.
fn dryad_event(trade: &str) -> NewEvent {
    let mut n = Notification::new(
        EventType::PaymentSucceeded,
        trade.to_owned(),
        AmountFen::from_fen(100).unwrap(),
    );
    n.merchant_order_no = Some(format!("M-{trade}"));
    let event = Event::new(
        EventId::generate(),
        ProviderKind::Dryad,
        AccountId::parse("dryad-main").unwrap(),
        n,
        Utc::now(),
    );
    NewEvent {
        payload: serde_json::to_string(&event).unwrap(),
        event,
        dedup_extra: String::new(),
        raw_body: b"raw".to_vec(),
        raw_headers: "{}".into(),
        endpoints: Vec::new(),
        nonce: None,
        outbox: false,
    }
}

/// `count` events stored through the store's ingest (as the HTTP ingress
/// stores them), each with a delivery to the test merchant and a raw body
/// of `raw_bytes`.
async fn store_events(app: &TestApp, backend: Backend, count: usize, raw_bytes: usize) {
    let merchant = EndpointId::parse("merchant").unwrap();
    let batch: Vec<NewEvent> = (0..count)
        .map(|i| NewEvent {
            raw_body: vec![b'r'; raw_bytes],
            raw_headers: "{\"x-signature\":\"s\"}".into(),
            endpoints: vec![merchant.clone()],
            outbox: backend == Backend::Scaled,
            ..dryad_event(&format!("bulk-{i}"))
        })
        .collect();
    for chunk in batch.chunks(200) {
        for outcome in app.store().ingest_all(chunk.to_vec()).await {
            assert!(outcome.is_ok(), "{outcome:?}");
        }
    }
    let store = app.store().clone();
    let delivered = eventually(Duration::from_secs(60), || async {
        store.count_pending().await.unwrap() == 0 && store.count_outbox().await.unwrap() == 0
    })
    .await;
    assert!(delivered, "all {count} delivered");
}

/// A retention pass as the relay runs it, on the relay's store, with the
/// clock at `now`; its own metrics.
fn pass_at(app: &TestApp, now: DateTime<Utc>) -> (Retention, Arc<Metrics>) {
    let config = app.config();
    let metrics = Metrics::new();
    let retention = Retention {
        store: app.store().clone(),
        metrics: metrics.clone(),
        clock: Arc::new(FixedClock::new(now)),
        retention: config.storage.retention,
        raw_retention: config.storage.raw_retention,
        shutdown: tokio_util::sync::CancellationToken::new(),
    };
    (retention, metrics)
}

/// More than a batch (1,000 rows a statement) of expired events: one pass
/// takes them all, in several batches.
async fn a_backlog_drains_in_one_pass(backend: Backend) {
    // The default retention (30 days): the relay's own loop deletes nothing
    // of events stored now, and its next pass is a minute away.
    let app = spawn_app(backend).await;
    store_events(&app, backend, 1_250, 64).await;

    let (retention, metrics) = pass_at(&app, Utc::now() + chrono::Duration::days(31));
    let report = retention.pass().await.unwrap();
    assert_eq!(report.events, 1_250, "{report:?}");
    assert_eq!(report.deliveries, 1_250);
    assert_eq!(report.attempts, 1_250);
    assert_eq!(report.raw, 0, "deleted events are not blanked as well");
    assert!(
        report.batches >= 3,
        "several purge batches, then the raw pass: {report:?}"
    );
    let text = metrics.render();
    assert_eq!(
        metric_value(&text, DELETED, &[("what", "events")]),
        1_250.0,
        "{text}"
    );
    assert_eq!(metric_value(&text, DELETED, &[("what", "deliveries")]), 1_250.0);
    assert_eq!(metric_value(&text, DELETED, &[("what", "attempts")]), 1_250.0);
    let left = app
        .store()
        .list_events(&EventFilter {
            limit: 10,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
    // A second pass finds nothing.
    let again = retention.pass().await.unwrap();
    assert_eq!((again.events, again.raw), (0, 0));

    // Raw blanking goes in batches too, and a later pass starts where the
    // last one finished.
    store_events(&app, backend, 1_100, 64).await;
    let (retention, metrics) = pass_at(&app, Utc::now() + chrono::Duration::days(8));
    let report = retention.pass().await.unwrap();
    assert_eq!((report.events, report.raw), (0, 1_100), "{report:?}");
    assert_eq!(
        metric_value(&metrics.render(), DELETED, &[("what", "raw")]),
        1_100.0
    );
    let again = retention.pass().await.unwrap();
    assert_eq!(again.raw, 0);
}

/// SQLite: new files use incremental auto-vacuum, an old file without it is
/// converted at start-up, and a purge gives its pages back.
#[tokio::test]
async fn sqlite_gives_freed_pages_back() {
    let mut app = spawn_app(Backend::Sqlite).await;
    let (mode, _, _) = app.store().sqlite_pages().await.unwrap().unwrap();
    assert_eq!(mode, 2, "auto_vacuum = INCREMENTAL on a new file");

    // A file from before (auto_vacuum = NONE) is converted once.
    app.stop().await;
    {
        let url = format!("sqlite://{}", app.sqlite_file().display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("PRAGMA auto_vacuum = NONE")
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("VACUUM").execute(&mut conn).await.unwrap();
        let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(mode, 0);
        conn.close().await.unwrap();
    }
    app.restart().await;
    let (mode, _, _) = app.store().sqlite_pages().await.unwrap().unwrap();
    assert_eq!(mode, 2, "converted at start-up");

    // About 6 MB of raw bodies, then all of it deleted.
    store_events(&app, Backend::Sqlite, 1_500, 4_000).await;
    let (_, full, _) = app.store().sqlite_pages().await.unwrap().unwrap();
    let (retention, _) = pass_at(&app, Utc::now() + chrono::Duration::days(31));
    let report = retention.pass().await.unwrap();
    assert_eq!(report.events, 1_500);
    assert!(report.pages_freed > 0, "{report:?}");
    let (_, after, free) = app.store().sqlite_pages().await.unwrap().unwrap();
    assert_eq!(free, 0, "no free page left in the file");
    assert!(
        after * 4 < full,
        "the file shrank: {full} pages before the purge, {after} after"
    );
}

/// An event still in the outbox (RabbitMQ mode, not yet published) is kept
/// whatever its deliveries; one that needs nothing more goes. SQLite with
/// the embedded queue has no publisher, so the outbox row stays put.
#[tokio::test]
async fn an_event_the_outbox_still_needs_is_kept() {
    let app = spawn_app(Backend::Sqlite).await;
    // No endpoint: nothing pending, so only the outbox can keep it.
    let new = |trade: &str, outbox: bool| NewEvent {
        outbox,
        ..dryad_event(trade)
    };
    let queued = new("queued", true);
    let done = new("done", false);
    let (queued_id, done_id) = (queued.event.id.to_string(), done.event.id.to_string());
    for outcome in app.store().ingest_all(vec![queued, done]).await {
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    assert_eq!(app.store().count_outbox().await.unwrap(), 1);

    let (retention, _) = pass_at(&app, Utc::now() + chrono::Duration::days(31));
    let report = retention.pass().await.unwrap();
    assert_eq!(report.events, 1, "{report:?}");
    assert!(app.store().event(&done_id).await.unwrap().is_none());
    assert!(
        app.store().event(&queued_id).await.unwrap().is_some(),
        "an event the outbox still needs stays"
    );
}

#[test]
fn retention_settings_are_checked() {
    let check = |storage: &str| {
        payhook::config::Config::from_toml_str(
            &format!("[storage]\n{storage}"),
            std::path::Path::new("."),
            &|_| None,
        )
        .map(|c| (c.storage.retention, c.storage.raw_retention))
        .map_err(|e| e.to_string())
    };
    let day = Duration::from_secs(86_400);
    assert_eq!(check(""), Ok((30 * day, 7 * day)));
    assert_eq!(
        check("retention = \"12h\"\nraw_retention = \"90m\"\n"),
        Ok((Duration::from_secs(12 * 3600), Duration::from_secs(90 * 60)))
    );
    let e = check("retention = \"1d\"\nraw_retention = \"2d\"\n").unwrap_err();
    assert!(e.starts_with("storage.raw_retention:"), "{e}");
    let e = check("retention = \"0s\"\n").unwrap_err();
    assert!(e.starts_with("storage.retention:"), "{e}");
    let e = check("retention = \"forever\"\n").unwrap_err();
    assert!(e.starts_with("storage.retention:"), "{e}");
}

crate::on_both_backends!(
    finished_events_go_and_pending_ones_stay,
    a_backlog_drains_in_one_pass
);
