//! PostgreSQL + RabbitMQ only: the topology, the events exchange, several
//! processes on one database and broker, and connection loss.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::helpers::*;

async fn broker() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("RabbitMQ reachable")
}

async fn declare_ok(conn: &Connection, queue: &str, durable: bool, args: FieldTable) -> bool {
    let channel: Channel = conn.create_channel().await.unwrap();
    let options = QueueDeclareOptions {
        durable,
        ..QueueDeclareOptions::default()
    };
    channel.queue_declare(queue.into(), options, args).await.is_ok()
}

fn quorum() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    t
}

#[tokio::test]
async fn the_topology_has_the_spec_names_and_properties() {
    let app = spawn_app_with(TestOptions {
        backend: Backend::Scaled,
        delivery:
            "retry_schedule = [\"0s\", \"1m\", \"5m\"]\nmax_retries = 3\nallow_private_targets = true\n"
                .into(),
        ..TestOptions::default()
    })
    .await;
    let p = app.prefix.clone().unwrap();
    let conn = broker().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.client
                .get(format!("{}/readyz", app.admin_url))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        })
        .await,
        "relay becomes ready once connected"
    );
    // Re-declaring with identical properties succeeds; with different ones the
    // broker refuses (PRECONDITION_FAILED). Together they pin the properties.
    // The dead queue is also bounded (the newest 10,000 jobs).
    let dead_args = payhook::queue::topology::Topology::dead_queue_arguments();
    for (q, args) in [
        (format!("{p}.deliveries"), quorum()),
        (format!("{p}.dead"), dead_args),
    ] {
        assert!(
            declare_ok(&conn, &q, true, args.clone()).await,
            "{q} is a durable quorum queue"
        );
        assert!(!declare_ok(&conn, &q, false, args).await, "{q} is durable");
        assert!(
            !declare_ok(&conn, &q, true, FieldTable::default()).await,
            "{q} is quorum"
        );
    }
    for (label, ms) in [("1m", 60_000i64), ("5m", 300_000)] {
        let q = format!("{p}.retry.{label}");
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from("")),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(format!("{p}.deliveries"))),
        );
        assert!(
            declare_ok(&conn, &q, true, args.clone()).await,
            "{q}: TTL {ms} ms, dead-lettered back"
        );
        let mut wrong_ttl = args.clone();
        wrong_ttl.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms + 1));
        assert!(
            !declare_ok(&conn, &q, true, wrong_ttl).await,
            "{q} has exactly TTL {ms}"
        );
    }
    // "0s" gets no queue: a zero delay goes straight back to deliveries.
    let ch = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    assert!(ch
        .queue_declare(format!("{p}.retry.0s").into(), passive, FieldTable::default())
        .await
        .is_err());
    let ch = conn.create_channel().await.unwrap();
    let durable_topic = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    assert!(ch
        .exchange_declare(
            format!("{p}.events").into(),
            ExchangeKind::Topic,
            durable_topic,
            FieldTable::default()
        )
        .await
        .is_ok());
    let ch = conn.create_channel().await.unwrap();
    assert!(ch
        .exchange_declare(
            format!("{p}.events").into(),
            ExchangeKind::Direct,
            durable_topic,
            FieldTable::default()
        )
        .await
        .is_err());
}

#[tokio::test]
async fn a_queue_bound_to_the_events_exchange_gets_each_event_once() {
    let app = spawn_app(Backend::Scaled).await;
    let p = app.prefix.clone().unwrap();
    let conn = broker().await;
    let ch = conn.create_channel().await.unwrap();
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let q = ch
        .queue_declare("".into(), exclusive, FieldTable::default())
        .await
        .unwrap();
    // The topology is declared when the relay connects (then it is ready).
    assert!(eventually(Duration::from_secs(15), || relay_ready(&app)).await);
    ch.queue_bind(
        q.name().clone(),
        format!("{p}.events").into(),
        "dryad.payment.*".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let now = chrono::Utc::now();
    for i in 0..5 {
        let signed = dryad_callback(&format!("ev{i}"), 100 + i, now);
        assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    }
    // A provider retry of the first: acknowledged, no second event.
    let again = dryad_callback("ev0", 100, now + chrono::Duration::seconds(5));
    assert_eq!(app.post_signed("dryad-main", &again).await.0, 200);

    let mut consumer = ch
        .basic_consume(
            q.name().clone(),
            "t".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 6 && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(1500), consumer.next()).await {
            Ok(Some(Ok(d))) => {
                d.ack(BasicAckOptions::default()).await.unwrap();
                let event: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
                seen.push((d.routing_key.to_string(), event));
            }
            _ => break,
        }
    }
    assert_eq!(seen.len(), 5, "five events, the repeat not published again");
    assert!(seen.iter().all(|(rk, _)| rk == "dryad.payment.succeeded"));
    let trade_nos: HashSet<String> = seen
        .iter()
        .map(|(_, e)| e["provider_trade_no"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(trade_nos.len(), 5);
    // The same ids the merchant receives.
    let delivered = app.merchant.wait_for(5, Duration::from_secs(10)).await;
    let delivered_ids: HashSet<String> = delivered
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    let published_ids: HashSet<String> = seen
        .iter()
        .map(|(_, e)| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(delivered_ids, published_ids);
}

#[tokio::test]
async fn lost_database_connections_are_survived() {
    let app = spawn_app(Backend::Scaled).await;
    let db = app.database_name().unwrap();
    assert_eq!(
        app.post_signed("dryad-main", &dryad_callback("pg1", 1, chrono::Utc::now()))
            .await
            .0,
        200
    );
    // Refuse new connections and cut the existing ones: the store is down.
    admin_sql(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false")).await;
    admin_sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
    ))
    .await;
    let (status, _) = app
        .post_signed("dryad-main", &dryad_callback("pg2", 1, chrono::Utc::now()))
        .await;
    assert_eq!(
        status, 503,
        "the provider is told to retry when nothing can be stored"
    );
    let ready = app
        .client
        .get(format!("{}/readyz", app.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status().as_u16(),
        503,
        "/readyz is red while the store is down"
    );
    admin_sql(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true")).await;
    // The provider retries; now it is stored and delivered.
    let retried = dryad_callback("pg2", 1, chrono::Utc::now());
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.post_signed("dryad-main", &retried).await.0 == 200
        })
        .await
    );
    let got = app.merchant.wait_for(2, Duration::from_secs(15)).await;
    let trades: HashSet<String> = got
        .iter()
        .map(|r| r.json()["provider_trade_no"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(trades, HashSet::from(["pg1".to_owned(), "pg2".to_owned()]));
}

async fn relay_ready(app: &TestApp) -> bool {
    app.client
        .get(format!("{}/readyz", app.admin_url))
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
}

async fn admin_sql(sql: &str) {
    use sqlx::Connection as _;
    let url = std::env::var("PAYHOOK_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(sql).execute(&mut conn).await.unwrap();
}

/// Picks a free port on 127.0.0.1 (for processes that need a fixed address).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingress_and_two_dispatcher_processes_deliver_everything_once() {
    const CALLBACKS: usize = 2000;
    // The harness app only provides the database, prefix, merchant and config;
    // the relay under test is four real `payhook` processes.
    let app = spawn_app_with(TestOptions {
        backend: Backend::Scaled,
        role: payhook::app::Role::Dispatcher,
        ..TestOptions::default()
    })
    .await;
    let mut app = app;
    app.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("payhook.toml");
    std::fs::write(&config_path, &app.config_text).unwrap();
    let mut processes = Vec::new();
    let mut ingress_urls = Vec::new();
    for role in ["ingress", "ingress", "dispatcher", "dispatcher"] {
        let listen = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_payhook"))
            .args(["serve", "--role", role, "--config"])
            .arg(&config_path)
            .env("PAYHOOK_LISTEN", &listen)
            .env("PAYHOOK_ADMIN_LISTEN", &admin)
            .env("PAYHOOK_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        processes.push(Process(child));
        if role == "ingress" {
            ingress_urls.push(format!("http://{listen}"));
        }
    }
    let client = reqwest::Client::new();
    for url in &ingress_urls {
        let ready = eventually(Duration::from_secs(20), || async {
            client
                .post(format!("{url}/notify/none"))
                .send()
                .await
                .map(|r| r.status().as_u16() == 404)
                .unwrap_or(false)
        })
        .await;
        assert!(ready, "{url} came up");
    }
    let now = chrono::Utc::now();
    let signed: Vec<_> = (0..CALLBACKS)
        .map(|i| dryad_callback(&format!("mp{i}"), 100, now))
        .collect();
    let sent = futures_util::stream::iter(signed.into_iter().enumerate())
        .map(|(i, s)| {
            let client = client.clone();
            let url = format!("{}/notify/dryad-main", ingress_urls[i % 2]);
            async move {
                let mut req = client
                    .post(url)
                    .header("content-type", s.content_type)
                    .body(s.body.clone());
                for (k, v) in &s.headers {
                    req = req.header(k.as_str(), v.as_str());
                }
                req.send().await.map(|r| r.status().as_u16()).unwrap_or(0)
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<u16>>()
        .await;
    assert!(sent.iter().all(|s| *s == 200), "every callback acknowledged");

    let got = app.merchant.wait_for(CALLBACKS, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = if got.len() >= CALLBACKS {
        app.merchant.received()
    } else {
        got
    };
    let mut per_event: HashMap<String, usize> = HashMap::new();
    for r in &got {
        *per_event.entry(r.header("webhook-id").to_owned()).or_default() += 1;
    }
    assert_eq!(per_event.len(), CALLBACKS, "every event delivered");
    let repeats: Vec<_> = per_event.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeats.is_empty(), "delivered more than once: {repeats:?}");
    drop(processes);
}

/// The outbox publisher sends a batch's first delivery jobs in few messages
/// (`MAX_JOBS_PER_MESSAGE` jobs each); a dispatcher runs every job of such a
/// message, acks it once all are stored, and a copy of it delivered again
/// (a republished batch, a redelivery after a crash) repeats none of them.
#[tokio::test]
async fn grouped_delivery_jobs_are_each_delivered_once() {
    use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
    use payhook::app::Role;
    use payhook::queue::{QueueTask, MAX_JOBS_PER_MESSAGE};
    use payhook::store::IngestOutcome;

    const EVENTS: usize = 40;
    // No publisher runs in a dispatcher: the events' outbox rows wait, as
    // during a broker outage, and the next publisher's first scan takes them
    // all in one batch.
    let mut app = spawn_app_with(TestOptions {
        backend: Backend::Scaled,
        role: Role::Dispatcher,
        ..TestOptions::default()
    })
    .await;
    let mut stored = HashSet::new();
    for i in 0..EVENTS {
        let mut new =
            crate::store_conformance::new_event("dryad-main", &format!("grouped-{i}"), &["merchant"]);
        new.outbox = true;
        stored.insert(new.event.id.to_string());
        let outcome = app.store().ingest(new).await.unwrap();
        assert_eq!(outcome, IngestOutcome::Accepted { jobs: 1 });
    }
    app.restart_as(Role::Ingress).await;

    let p = app.prefix.clone().unwrap();
    let conn = broker().await;
    let channel = conn.create_channel().await.unwrap();
    let deliveries = format!("{p}.deliveries");
    let mut messages = Vec::new();
    let mut jobs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while jobs.len() < EVENTS && Instant::now() < deadline {
        let got = channel
            .basic_get(deliveries.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        let Some(message) = got else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let task = QueueTask::from_bytes(&message.delivery.data).expect("a readable task");
        jobs.extend_from_slice(task.jobs());
        messages.push(message.delivery.data.clone());
    }
    let distinct: HashSet<i64> = jobs.iter().map(|j| j.delivery_id).collect();
    assert_eq!(jobs.len(), EVENTS, "every first job published once");
    assert_eq!(distinct.len(), EVENTS);
    assert!(jobs.iter().all(|j| j.attempt == 1), "first attempts: {jobs:?}");
    assert_eq!(
        messages.len(),
        EVENTS.div_ceil(MAX_JOBS_PER_MESSAGE),
        "one batch's jobs travel in as few messages as the cap allows"
    );

    // Every message twice: the second copies must find their jobs done.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for body in messages.iter().chain(messages.iter()) {
        let confirm = channel
            .basic_publish(
                "".into(),
                deliveries.as_str().into(),
                BasicPublishOptions::default(),
                body,
                lapin::BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }
    app.restart_as(Role::Dispatcher).await;
    let got = app.merchant.wait_for(EVENTS, Duration::from_secs(30)).await;
    assert_eq!(got.len(), EVENTS, "every grouped job delivered");
    // Every message must end acked. A stop returns the ones still unacked
    // (copies whose jobs were parked a moment, originals whose last record
    // was in flight) to the queue, and the next dispatcher finds their jobs
    // stale and acks them.
    let mut ready = u32::MAX;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        app.stop().await;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        ready = channel
            .queue_declare(deliveries.as_str().into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count();
        if ready == 0 {
            break;
        }
        app.restart_as(Role::Dispatcher).await;
    }
    assert_eq!(ready, 0, "every message acked");
    let received = app.merchant.received();
    let per_event: HashSet<String> = received
        .iter()
        .map(|r| r.header("webhook-id").to_owned())
        .collect();
    assert_eq!(received.len(), EVENTS, "no job delivered twice");
    assert_eq!(per_event, stored, "each stored event delivered");
}
