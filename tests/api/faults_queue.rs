//! Scaled mode under faults: the broker's topology changed behind the
//! relay's back, a batched ingest whose later round fails, and a dispatcher
//! whose clock is minutes off. Real PostgreSQL and RabbitMQ throughout.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use lapin::options::{BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use payhook::app::{Application, BuildOptions, Role};
use payhook::queue::topology::{Topology, DEAD_MAX_LENGTH};
use payhook::store::{IngestOutcome, Store};
use tokio_util::sync::CancellationToken;

use crate::helpers::{
    amqp_url, dryad_callback, eventually, free_port, skip_or_fail, spawn_app, spawn_app_with, Backend,
    TestApp, TestOptions, ENDPOINT_SECRET,
};
use crate::pg_db::fresh_database;
use crate::store_conformance::new_event;

async fn broker_channel() -> (Connection, Channel) {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect to the test broker");
    let channel = conn.create_channel().await.expect("open a channel");
    (conn, channel)
}

async fn wait_ready(app: &TestApp) {
    let ready = eventually(Duration::from_secs(20), || async {
        app.client
            .get(format!("{}/readyz", app.admin_url))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    })
    .await;
    assert!(ready, "the relay connected to PostgreSQL and RabbitMQ");
}

/// Another process of the same relay (same database, prefix and config), in
/// `role`, in this test's runtime; stopped when the token is cancelled.
async fn start_second(app: &TestApp, role: Role) -> CancellationToken {
    let shutdown = CancellationToken::new();
    let second = Application::build(
        app.config(),
        BuildOptions {
            role,
            shutdown: shutdown.clone(),
            ..BuildOptions::default()
        },
    )
    .await
    .expect("second relay starts");
    tokio::spawn(second.run_until_stopped());
    shutdown
}

// ------------------------------------------------------ mandatory publishes

/// The deliveries queue is gone (deleted by an operator, or a broker that
/// lost it) while an ingress runs. The job message for a new callback is
/// unroutable: the broker returns it, its outbox row stays, and once the
/// topology is declared again it is sent again and delivered. Before, the
/// broker confirmed the unroutable message, the row was deleted and the job
/// waited for the sweeper.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unroutable_job_message_keeps_its_outbox_row_until_a_queue_takes_it() {
    let app = spawn_app_with(TestOptions {
        backend: Backend::Scaled,
        // No dispatcher here: its consumer would declare the queue again at
        // once when the broker cancels it.
        role: Role::Ingress,
        ..TestOptions::default()
    })
    .await;
    wait_ready(&app).await;
    let prefix = app.prefix.clone().expect("scaled app has a prefix");
    let (conn, channel) = broker_channel().await;
    channel
        .queue_delete(
            ShortString::from(format!("{prefix}.deliveries")),
            QueueDeleteOptions::default(),
        )
        .await
        .expect("delete the deliveries queue");

    let (status, body) = app
        .post_signed(
            "dryad-main",
            &dryad_callback("UNROUTED-1", 1200, chrono::Utc::now()),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Long enough for the publish, its confirm and the delete of a confirmed
    // row (at most 50 ms after it); shorter than the pause before a
    // returned message is sent again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        app.store().count_outbox().await.unwrap(),
        1,
        "the outbox row of a message no queue took stays"
    );

    // A dispatcher declares the topology (the queue is back) and consumes;
    // the returned job is sent again and delivered.
    let dispatcher = start_second(&app, Role::Dispatcher).await;
    let got = app.merchant.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "the returned job was sent again and delivered");
    assert_eq!(got[0].json()["provider_trade_no"], "UNROUTED-1");
    let store = app.store().clone();
    assert!(
        eventually(Duration::from_secs(10), || {
            let store = store.clone();
            async move { store.count_outbox().await.unwrap() == 0 }
        })
        .await,
        "the row is deleted once a queue took its message"
    );
    dispatcher.cancel();
    let _ = conn.close(200, ShortString::from("bye")).await;
}

// ---------------------------------------------------------- the dead queue

fn quorum_only() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Whether declaring `queue` with `args` on a fresh channel succeeds: the
/// broker accepts a declare only with the arguments the queue has.
async fn declares_with(conn: &Connection, queue: &str, args: FieldTable) -> Result<(), lapin::Error> {
    let channel = conn.create_channel().await.expect("open a channel");
    channel
        .queue_declare(ShortString::from(queue), durable(), args)
        .await
        .map(|_| ())
}

/// `{prefix}.dead` is declared bounded (the newest `DEAD_MAX_LENGTH`
/// jobs); and a broker that still has an older payhook's unbounded dead
/// queue does not keep the relay from connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dead_queue_is_bounded_and_an_old_unbounded_one_is_tolerated() {
    let mut app = spawn_app(Backend::Scaled).await;
    wait_ready(&app).await;
    let prefix = app.prefix.clone().expect("scaled app has a prefix");
    let dead = format!("{prefix}.dead");
    let (conn, channel) = broker_channel().await;

    let mut bounded = quorum_only();
    bounded.insert("x-max-length".into(), AMQPValue::LongLongInt(DEAD_MAX_LENGTH));
    bounded.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("drop-head")),
    );
    declares_with(&conn, &dead, bounded.clone())
        .await
        .expect("the dead queue has x-max-length and x-overflow = drop-head");
    let unbounded = declares_with(&conn, &dead, quorum_only()).await;
    assert!(
        unbounded.is_err(),
        "and is not the unbounded quorum queue of before"
    );
    assert_eq!(DEAD_MAX_LENGTH, 10_000);
    assert_eq!(bounded, Topology::dead_queue_arguments());

    // An older payhook's dead queue, without the bound: the relay still
    // connects (it warns, and uses the queue as it is) and delivers.
    channel
        .queue_delete(ShortString::from(dead.as_str()), QueueDeleteOptions::default())
        .await
        .expect("delete the dead queue");
    channel
        .queue_declare(ShortString::from(dead.as_str()), durable(), quorum_only())
        .await
        .expect("declare an unbounded dead queue");
    app.restart().await;
    wait_ready(&app).await;
    let (status, _) = app
        .post_signed(
            "dryad-main",
            &dryad_callback("OLD-DEAD-1", 700, chrono::Utc::now()),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.merchant.wait_for(1, Duration::from_secs(20)).await.len(), 1);
    let _ = conn.close(200, ShortString::from("bye")).await;
}

// ------------------------------------------------------ batched ingest rounds

/// A batch whose second round fails (a row PostgreSQL refuses: text cannot
/// hold NUL) after its first round committed. Each request gets the answer
/// of its own commit: the first was stored, so it is accepted (before, it
/// ran again alone, found its own nonce and was answered as a replay: a 401
/// for a stored Dryad callback); the refused one fails; the one that reuses
/// the stored nonce is a replay and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_round_does_not_rerun_the_ingests_of_committed_rounds() {
    let db = fresh_database().await;
    let store = Store::connect(&db.url).await.unwrap();
    let mut first = new_event("a", "T1", &["e1"]);
    first.nonce = Some("n1".into());
    // Same dedup identity as `first`: the second round.
    let mut refused = new_event("a", "T1", &["e1"]);
    refused.nonce = Some("n2".into());
    refused.raw_headers = "{\"x\":\"\u{0}\"}".to_owned();
    // Same nonce as `first`: the second round too.
    let mut replay = new_event("a", "T2", &["e1"]);
    replay.nonce = Some("n1".into());

    let outcomes = store
        .ingest_all(vec![first.clone(), refused.clone(), replay.clone()])
        .await;
    assert!(
        matches!(outcomes[0], Ok(IngestOutcome::Accepted { jobs: 1 })),
        "the stored request is answered as stored: {outcomes:?}"
    );
    assert!(outcomes[1].is_err(), "{outcomes:?}");
    assert!(matches!(outcomes[2], Ok(IngestOutcome::Replayed)), "{outcomes:?}");
    // What is stored matches the answers.
    assert_eq!(
        store
            .deliveries_for_event(first.event.id.as_str())
            .await
            .unwrap()
            .len(),
        1
    );
    for unstored in [&refused, &replay] {
        assert!(store
            .deliveries_for_event(unstored.event.id.as_str())
            .await
            .unwrap()
            .is_empty());
    }
    assert_eq!(store.count_pending().await.unwrap(), 1);
    store.close().await;
}

// ------------------------------------------------------------ skewed clocks

/// One POST as the watching merchant saw it.
#[derive(Debug, Clone)]
struct Seen {
    event: String,
    attempt: String,
    arrived: Instant,
    answered: Option<Instant>,
}

#[derive(Default)]
struct Watch {
    seen: Vec<Seen>,
    in_flight: HashMap<String, usize>,
    /// Events that had two POSTs in flight at once.
    overlaps: Vec<String>,
}

/// Fails each event's first POST with a 500 after `FIRST_HOLD`, answers
/// later ones with 200 after `LATER_HOLD`; notes POSTs of one event that
/// overlap.
const FIRST_HOLD: Duration = Duration::from_secs(6);
const LATER_HOLD: Duration = Duration::from_secs(2);

async fn watching_merchant(State(watch): State<Arc<Mutex<Watch>>>, headers: HeaderMap) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let event = header("webhook-id");
    let (index, first) = {
        let mut w = watch.lock().unwrap();
        let first = !w.seen.iter().any(|s| s.event == event);
        let in_flight = w.in_flight.entry(event.clone()).or_default();
        *in_flight += 1;
        if *in_flight > 1 {
            w.overlaps.push(event.clone());
        }
        w.seen.push(Seen {
            event: event.clone(),
            attempt: header("x-payhook-attempt"),
            arrived: Instant::now(),
            answered: None,
        });
        (w.seen.len() - 1, first)
    };
    tokio::time::sleep(if first { FIRST_HOLD } else { LATER_HOLD }).await;
    let mut w = watch.lock().unwrap();
    w.seen[index].answered = Some(Instant::now());
    if let Some(n) = w.in_flight.get_mut(&event) {
        *n -= 1;
    }
    if first {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

/// `payhook serve --role dispatcher` under `faketime`, its clock ten
/// minutes ahead.
struct SkewedDispatcher {
    child: std::process::Child,
    admin_url: String,
    log: std::path::PathBuf,
}

impl SkewedDispatcher {
    fn start(config_text: &str, dir: &Path) -> Self {
        let config = dir.join("skewed.toml");
        std::fs::write(&config, config_text).unwrap();
        let log = dir.join("skewed.log");
        let admin = format!("127.0.0.1:{}", free_port());
        let child = std::process::Command::new("faketime")
            // Only the wall clock: leases, due times and signatures read it;
            // timers keep the real monotonic clock.
            .args(["--exclude-monotonic", "-m", "-f", "+10m"])
            .arg(env!("CARGO_BIN_EXE_payhook"))
            .args(["serve", "--role", "dispatcher", "--config"])
            .arg(&config)
            .env("PAYHOOK_LISTEN", format!("127.0.0.1:{}", free_port()))
            .env("PAYHOOK_ADMIN_LISTEN", &admin)
            .env("PAYHOOK_LOG", "info")
            .env("PAYHOOK_LOG_FORMAT", "json")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the skewed dispatcher under faketime");
        Self {
            child,
            admin_url: format!("http://{admin}"),
            log,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for SkewedDispatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn faketime_available() -> bool {
    std::process::Command::new("faketime")
        .args(["-f", "+10m", "true"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Publishes `copies` messages for attempt `attempt` of `delivery_id` to the
/// deliveries queue: duplicates, as at-least-once delivery makes them (a
/// redelivery after a lost ack, a sweep).
async fn publish_copies(channel: &Channel, prefix: &str, delivery_id: i64, attempt: u32, copies: usize) {
    let body =
        serde_json::json!({"task": "deliver", "delivery_id": delivery_id, "attempt": attempt}).to_string();
    for _ in 0..copies {
        channel
            .basic_publish(
                ShortString::from(""),
                ShortString::from(format!("{prefix}.deliveries")),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
}

/// A second dispatcher whose clock is ten minutes ahead works beside a
/// normal one on the same database and queues. Leases and due times are the
/// database's, so it takes no job the other holds (the merchant never sees
/// two POSTs of one job at once) and no retry before its time (the retry
/// comes the schedule's delay after the failed attempt, by the real clock),
/// even when duplicate messages for both reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dispatcher_with_a_skewed_clock_takes_no_held_job_and_no_early_retry() {
    if !faketime_available() {
        skip_or_fail("the skewed-clock dispatcher test", "`faketime` is not installed");
        return;
    }
    const RETRY: Duration = Duration::from_secs(12);
    const EVENTS: usize = 3;
    let watch = Arc::new(Mutex::new(Watch::default()));
    let router = Router::new()
        .route("/hook", post(watching_merchant))
        .with_state(watch.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let watched_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    // A timeout well within the lease (timeout + 5 s) and the first hold.
    let app = spawn_app_with(TestOptions {
        backend: Backend::Scaled,
        delivery: "retry_schedule = [\"12s\"]\nmax_retries = 2\ntimeout = \"10s\"\nconcurrency = 16\n\
                   allow_private_targets = true\n"
            .into(),
        extra_endpoints: format!(
            "[[endpoints]]\nid = \"watched\"\nurl = \"{watched_url}\"\nsecret = \"{ENDPOINT_SECRET}\"\n\
             accounts = [\"*\"]\nevents = [\"*\"]\n"
        ),
        ..TestOptions::default()
    })
    .await;
    wait_ready(&app).await;
    let prefix = app.prefix.clone().expect("scaled app has a prefix");

    // The first attempts, taken by the normal dispatcher (the only one yet).
    let mut events = Vec::new();
    for i in 0..EVENTS {
        let (status, _) = app
            .post_signed(
                "dryad-main",
                &dryad_callback(&format!("SKEW-{i}"), 900 + i as i64, chrono::Utc::now()),
            )
            .await;
        assert_eq!(status, 200);
    }
    assert!(
        eventually(Duration::from_secs(10), || async {
            watch.lock().unwrap().seen.len() >= EVENTS
        })
        .await,
        "the first attempts reached the merchant"
    );
    for seen in watch.lock().unwrap().seen.iter() {
        events.push(seen.event.clone());
    }
    let mut watched = Vec::new();
    for event in &events {
        let rows = app.store().deliveries_for_event(event).await.unwrap();
        let row = rows
            .iter()
            .find(|r| r.endpoint_id == "watched")
            .expect("a delivery to the watched endpoint");
        watched.push(row.id);
    }

    // The skewed dispatcher joins while those attempts are in flight.
    let dir = tempfile::tempdir().unwrap();
    let skewed = SkewedDispatcher::start(&app.config_text, dir.path());
    let client = reqwest::Client::new();
    let ready = eventually(Duration::from_secs(15), || async {
        client
            .get(format!("{}/readyz", skewed.admin_url))
            .send()
            .await
            .map(|r| r.status().is_success())
            .unwrap_or(false)
    })
    .await;
    assert!(ready, "the skewed dispatcher came up; log:\n{}", skewed.logs());

    // Duplicates of the held first attempts: round-robin hands some of them
    // to the skewed dispatcher, whose clock says the leases ran out.
    let (conn, channel) = broker_channel().await;
    for &id in &watched {
        publish_copies(&channel, &prefix, id, 1, 4).await;
    }
    // Once the first attempts failed, duplicates of the retries: by the
    // skewed clock they are long due.
    assert!(
        eventually(Duration::from_secs(20), || async {
            let w = watch.lock().unwrap();
            w.seen.iter().filter(|s| s.answered.is_some()).count() >= EVENTS
        })
        .await,
        "the first attempts were answered"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    for &id in &watched {
        publish_copies(&channel, &prefix, id, 2, 4).await;
    }

    // Every event is delivered by its second attempt.
    let delivered = eventually(Duration::from_secs(45), || async {
        let w = watch.lock().unwrap();
        events.iter().all(|e| {
            w.seen
                .iter()
                .filter(|s| &s.event == e && s.answered.is_some())
                .count()
                >= 2
        })
    })
    .await;
    // A moment for any late duplicate attempt to show.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (overlaps, seen) = {
        let w = watch.lock().unwrap();
        (w.overlaps.clone(), w.seen.clone())
    };
    assert!(
        overlaps.is_empty(),
        "two POSTs of one job at once (a held job taken again) for {:?}; seen: {:#?}",
        overlaps,
        seen
    );
    assert!(delivered, "every event delivered by its retry; seen: {seen:#?}");
    for event in &events {
        let mut posts: Vec<&Seen> = seen.iter().filter(|s| &s.event == event).collect();
        posts.sort_by_key(|s| s.arrived);
        let attempts: Vec<&str> = posts.iter().map(|s| s.attempt.as_str()).collect();
        assert_eq!(
            attempts,
            ["1", "2"],
            "one POST per attempt for {event}: {posts:#?}"
        );
        let failed_at = posts[0].answered.expect("the first attempt was answered");
        let waited = posts[1].arrived.saturating_duration_since(failed_at);
        // The schedule's delay, by the real clock (a little slack for the
        // moment between the merchant's answer and the dispatcher's clock
        // reading).
        assert!(
            waited + Duration::from_millis(250) >= RETRY,
            "the retry of {event} came {waited:?} after the failure, before the {RETRY:?} of the schedule"
        );
    }
    let _ = conn.close(200, ShortString::from("bye")).await;
}
