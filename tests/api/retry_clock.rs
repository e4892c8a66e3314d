//! The retry schedule in its real minutes, on a manual clock: the relay's
//! one clock (`payhook::clock`) is injected into the store and the
//! dispatcher, so moving it on makes retries due without waiting for them.
//!
//! Embedded mode (SQLite): every due time there is on the injected clock. In
//! scaled mode the retries wait in RabbitMQ's delay queues, whose TTLs run in
//! real time, and PostgreSQL's rows are on the database's clock; the
//! schedule's delays there are covered with a short schedule
//! (`delivery.rs`).

use std::sync::Arc;
use std::time::Duration;

use payhook::clock::{Clock, FixedClock};

use crate::helpers::*;

/// Long enough for the embedded worker to look at the store (it does at
/// least every 250 ms): a retry that were due would have gone out.
const LOOK: Duration = Duration::from_millis(700);

async fn manual_clock_app(delivery: &str) -> (TestApp, Arc<FixedClock>) {
    let clock = Arc::new(FixedClock::new(chrono::Utc::now()));
    let app = spawn_app_with(TestOptions {
        backend: Backend::Sqlite,
        clock: Some(clock.clone()),
        delivery: delivery.into(),
        ..TestOptions::default()
    })
    .await;
    (app, clock)
}

/// Moves the clock to just before `delay` has passed and checks that the
/// merchant has still had `seen` attempts, then to `delay` and waits for
/// the next one.
async fn next_attempt_after(app: &TestApp, clock: &FixedClock, delay: Duration, seen: usize) {
    clock.advance(delay - Duration::from_secs(1));
    tokio::time::sleep(LOOK).await;
    assert_eq!(
        app.merchant.received().len(),
        seen,
        "an attempt came before its {delay:?} had passed"
    );
    clock.advance(Duration::from_secs(1));
    let got = app.merchant.wait_for(seen + 1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), seen + 1, "no attempt once {delay:?} had passed");
}

/// The default schedule (0s, 1m, 5m, 15m, 60m): each retry comes when the
/// clock reaches its time and not a second before, and after the last one
/// the delivery is dead.
#[tokio::test]
async fn the_default_schedule_runs_its_real_minutes_and_ends_dead() {
    let (app, clock) = manual_clock_app(
        "max_retries = 5\ntimeout = \"2s\"\nconcurrency = 16\nallow_private_targets = true\n",
    )
    .await;
    app.merchant.always_fail(true);
    let t0 = clock.now();
    let (status, _) = app
        .post_signed("dryad-main", &dryad_callback("RS-1", 100, t0))
        .await;
    assert_eq!(status, 200);
    // The first attempt, and the retry after "0s".
    assert_eq!(app.merchant.wait_for(2, Duration::from_secs(10)).await.len(), 2);

    for (seen, minutes) in [(2, 1), (3, 5), (4, 15), (5, 60)] {
        next_attempt_after(&app, &clock, Duration::from_secs(60 * minutes), seen).await;
    }

    let dead = app.wait_for_dead(1, Duration::from_secs(10)).await;
    assert_eq!(dead.len(), 1, "dead after the last retry");
    assert_eq!(dead[0]["attempts"], 6, "{}", dead[0]);
    // A day later nothing more is tried.
    clock.advance(Duration::from_secs(86_400));
    tokio::time::sleep(LOOK).await;
    assert_eq!(app.merchant.received().len(), 6);
}

/// `Retry-After: 600` after the first attempt holds the next one for ten
/// minutes, not the schedule's 0 s.
#[tokio::test]
async fn retry_after_holds_the_next_attempt_on_the_clock() {
    let (app, clock) =
        manual_clock_app("timeout = \"2s\"\nconcurrency = 16\nallow_private_targets = true\n").await;
    app.merchant.answer_next(503, "600");
    let t0 = clock.now();
    let (status, _) = app
        .post_signed("dryad-main", &dryad_callback("RS-2", 100, t0))
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.merchant.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    next_attempt_after(&app, &clock, Duration::from_secs(600), 1).await;
    let delivered = eventually(Duration::from_secs(10), || async {
        let (_, page) = app.admin_get("/admin/deliveries?status=delivered").await;
        page["deliveries"].as_array().is_some_and(|d| d.len() == 1)
    })
    .await;
    assert!(delivered, "delivered on the second attempt");
}
