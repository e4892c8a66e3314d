//! What a bench run sets up and takes down outside the relay: a scratch
//! PostgreSQL database, a RabbitMQ prefix, and a retry backlog seeded
//! straight into the database before the relay starts.

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, PgConnection, SqliteConnection};

use super::BenchError;
use crate::queue::topology::Topology;
use crate::store::Store;

/// Rows inserted per statement while seeding.
const SEED_BATCH: u64 = 50_000;
/// Seeded retries fall due this far ahead, so none is attempted during a run.
const BACKLOG_DUE_IN_MS: i64 = 30 * 24 * 3600 * 1000;

/// A database created for one run on the server of an admin URL.
pub struct ScratchDatabase {
    pub url: String,
    name: String,
    admin_url: String,
}

impl ScratchDatabase {
    /// Creates `payhook_bench_<ulid>` next to the database of `admin_url`.
    pub async fn create(admin_url: &str) -> Result<Self, BenchError> {
        let name = format!("payhook_bench_{}", ulid::Ulid::new().to_string().to_lowercase());
        let mut admin = PgConnection::connect(admin_url).await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await?;
        let _ = admin.close().await;
        let mut url =
            url::Url::parse(admin_url).map_err(|e| BenchError::Usage(format!("--postgres: {e}")))?;
        url.set_path(&format!("/{name}"));
        Ok(Self {
            url: url.to_string(),
            name,
            admin_url: admin_url.to_owned(),
        })
    }

    pub async fn drop_database(self) -> Result<(), BenchError> {
        let mut admin = PgConnection::connect(&self.admin_url).await?;
        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name))
            .execute(&mut admin)
            .await?;
        let _ = admin.close().await;
        Ok(())
    }
}

/// Deletes the exchange and queues of `prefix`.
/// The server's settings that do not come from its built-in defaults
/// (configuration files, `ALTER SYSTEM`, command line), as `name = value`.
pub async fn postgres_settings(url: &str) -> Result<std::collections::BTreeMap<String, String>, BenchError> {
    let mut conn = PgConnection::connect(url).await?;
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, current_setting(name) FROM pg_settings \
         WHERE source NOT IN ('default', 'override', 'client', 'session') ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await?;
    let _ = conn.close().await;
    Ok(rows.into_iter().collect())
}

pub async fn delete_topology(amqp_url: &str, prefix: &str, schedule: &[Duration]) -> Result<(), BenchError> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let topology = Topology::new(prefix, schedule);
    let conn = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    for queue in topology.all_queues() {
        channel
            .queue_delete(queue.into(), QueueDeleteOptions::default())
            .await?;
    }
    channel
        .exchange_delete(
            topology.events_exchange().into(),
            ExchangeDeleteOptions::default(),
        )
        .await?;
    let _ = conn.close(200, "bench done".into()).await;
    Ok(())
}

/// Stand-in text for the seeded events' payload and raw body. Smaller than a
/// real event (about 1 KB): the backlog is about index sizes and the
/// queries that walk pending jobs, and a million full events would only make
/// seeding slower.
fn filler(len: usize) -> String {
    "x".repeat(len)
}

/// Seeds `count` pending retries for `endpoint`: one event and one delivery
/// each, as after a failed first attempt, due 30 days from now. Runs the
/// migrations first, and leaves the database as a long-running one would be
/// (vacuumed, analyzed, checkpointed).
pub async fn seed_backlog(url: &str, endpoint: &str, count: u64) -> Result<Seeded, BenchError> {
    let started = Instant::now();
    Store::connect(url).await?.close().await;
    let rows = BacklogRows {
        endpoint,
        now: chrono::Utc::now().timestamp_millis(),
        payload: filler(256),
        raw: filler(128).into_bytes(),
    };
    let not_checkpointed = if url.starts_with("sqlite:") {
        seed_sqlite(url, &rows, count).await?;
        // Closing the last connection has checkpointed the WAL.
        None
    } else {
        seed_postgres(url, &rows, count).await?
    };
    Ok(Seeded {
        took: started.elapsed(),
        not_checkpointed,
    })
}

/// What every seeded row has in common.
struct BacklogRows<'a> {
    endpoint: &'a str,
    now: i64,
    payload: String,
    raw: Vec<u8>,
}

/// Seeding's batches: rows `lo..=hi` for each, numbered from 1.
fn seed_batches(count: u64) -> impl Iterator<Item = (i64, i64)> {
    (1..=count)
        .step_by(usize::try_from(SEED_BATCH).unwrap_or(usize::MAX))
        .map(move |from| (to_i64(from), to_i64((from + SEED_BATCH - 1).min(count))))
}

const SQLITE_SEED_EVENTS: &str =
    "WITH RECURSIVE seq(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?2) \
     INSERT INTO events (id, account, provider, event_type, provider_trade_no, dedup_extra, \
     merchant_order_no, payload, raw_body, raw_headers, received_at) \
     SELECT 'evt_' || printf('%026d', i), 'bench-backlog', 'dryad', 'payment.succeeded', \
     'BACKLOG' || i, '', 'BACKLOG' || i, ?3, ?4, '{}', ?5 FROM seq";
const SQLITE_SEED_DELIVERIES: &str =
    "WITH RECURSIVE seq(i) AS (SELECT ?1 UNION ALL SELECT i + 1 FROM seq WHERE i < ?2) \
     INSERT INTO deliveries (event_id, endpoint_id, status, attempts, next_attempt_at, \
     lease_until, created_at, updated_at, last_error) \
     SELECT 'evt_' || printf('%026d', i), ?3, 'pending', 1, ?4, 0, ?5, ?5, 'HTTP 503' FROM seq";
const PG_SEED_EVENTS: &str =
    "INSERT INTO events (id, account, provider, event_type, provider_trade_no, dedup_extra, \
     merchant_order_no, payload, raw_body, raw_headers, received_at) \
     SELECT 'evt_' || lpad(i::text, 26, '0'), 'bench-backlog', 'dryad', 'payment.succeeded', \
     'BACKLOG' || i, '', 'BACKLOG' || i, $3, $4, '{}', $5 FROM generate_series($1::bigint, $2::bigint) i";
const PG_SEED_DELIVERIES: &str =
    "INSERT INTO deliveries (event_id, endpoint_id, status, attempts, next_attempt_at, \
     lease_until, created_at, updated_at, last_error) \
     SELECT 'evt_' || lpad(i::text, 26, '0'), $3, 'pending', 1, $4, 0, $5, $5, 'HTTP 503' \
     FROM generate_series($1::bigint, $2::bigint) i";

/// Inserts one batch's events and deliveries in `tx` (`$events` and
/// `$deliveries` take the same parameters in both backends).
macro_rules! seed_batch {
    ($tx:ident, $events:expr, $deliveries:expr, $rows:expr, $lo:expr, $hi:expr) => {{
        let due = $rows.now + BACKLOG_DUE_IN_MS;
        sqlx::query($events)
            .bind($lo)
            .bind($hi)
            .bind(&$rows.payload)
            .bind(&$rows.raw)
            .bind($rows.now)
            .execute(&mut *$tx)
            .await?;
        sqlx::query($deliveries)
            .bind($lo)
            .bind($hi)
            .bind($rows.endpoint)
            .bind(due)
            .bind($rows.now)
            .execute(&mut *$tx)
            .await?;
    }};
}

async fn seed_sqlite(url: &str, rows: &BacklogRows<'_>, count: u64) -> Result<(), BenchError> {
    let mut conn = SqliteConnection::connect_with(&SqliteConnectOptions::from_str(url)?).await?;
    for (lo, hi) in seed_batches(count) {
        let mut tx = conn.begin().await?;
        seed_batch!(tx, SQLITE_SEED_EVENTS, SQLITE_SEED_DELIVERIES, rows, lo, hi);
        tx.commit().await?;
    }
    let _ = conn.close().await;
    Ok(())
}

/// Returns why `CHECKPOINT` failed, if it did.
async fn seed_postgres(url: &str, rows: &BacklogRows<'_>, count: u64) -> Result<Option<String>, BenchError> {
    let mut conn = PgConnection::connect(url).await?;
    for (lo, hi) in seed_batches(count) {
        let mut tx = conn.begin().await?;
        seed_batch!(tx, PG_SEED_EVENTS, PG_SEED_DELIVERIES, rows, lo, hi);
        tx.commit().await?;
    }
    // A backlog that built up over hours would have been vacuumed and
    // analyzed by autovacuum, and its pages written out by checkpoints
    // long ago. Seeded in seconds, it leaves shared_buffers full of
    // dirty pages, which the relay's backends would otherwise write out
    // during the run (measured with 1M: ~10,000 pages in a 4 s run).
    sqlx::raw_sql("VACUUM (ANALYZE)").execute(&mut conn).await?;
    let not_checkpointed = sqlx::raw_sql("CHECKPOINT")
        .execute(&mut conn)
        .await
        .err()
        .map(|e| e.to_string());
    let _ = conn.close().await;
    Ok(not_checkpointed)
}

/// How seeding went.
pub struct Seeded {
    pub took: Duration,
    /// Why `CHECKPOINT` failed, if it did (it needs a superuser or
    /// `pg_checkpoint`): the run then also writes out the seeding's pages.
    pub not_checkpointed: Option<String>,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
