//! Durable state: events, delivery jobs, attempts, replay nonces, outbox.
//!
//! One `Store` type fronts both backends. SQLite (embedded default) funnels
//! writes through a single group-committing writer; PostgreSQL uses a pool and
//! `FOR UPDATE SKIP LOCKED`, and batches a process's concurrent ingests,
//! claims and attempt records into shared statements (`postgres/batcher.rs`).
//! Both keep the same tables and the same rules.

mod postgres;
#[doc(hidden)]
pub use postgres::hot_statements;
mod admin_query;
mod backend;
mod endpoints;
mod postgres_admin;
mod retention;
mod sqlite;
mod sqlite_admin;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;

pub use backend::Backend;
pub use endpoints::{EndpointState, HealthReport, PausedBy};
pub use postgres::PostgresStore;
pub use retention::{BlankBatch, PurgeBatch, RETENTION_BATCH};
pub use sqlite::SqliteStore;

use crate::clock::{Clock, SystemClock};
use crate::domain::{EndpointId, Event, EventId};

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}
pub use crate::domain::{AttemptOutcome, DeliveryStatus};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The SQLite writer's own connection (`rusqlite`).
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the store is shutting down")]
    Closed,
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("storage.url: `{0}` is not a store payhook knows; use sqlite://FILE or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    /// The database could not be reached at start-up: where (never the
    /// password), what was tried, and the server's or the network's answer.
    #[error("cannot connect to PostgreSQL at {target}: {cause} (tried for {seconds} s)")]
    Unreachable {
        target: String,
        cause: String,
        seconds: u64,
    },
    #[error("cannot start the SQLite writer thread: {0}")]
    WriterThread(std::io::Error),
    #[error("SQLite write failed: {0}")]
    WriteFailed(String),
}

/// Everything one verified callback writes, in one transaction.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event: Event,
    pub payload: String,
    pub dedup_extra: String,
    pub raw_body: Vec<u8>,
    pub raw_headers: String,
    /// One delivery job per subscribed endpoint (empty for undeliverable types).
    pub endpoints: Vec<EndpointId>,
    /// A signed nonce to remember; a repeat within the window is a replay.
    pub nonce: Option<String>,
    /// Write an outbox row for the RabbitMQ publisher.
    pub outbox: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Stored for the first time, with this many delivery jobs.
    Accepted { jobs: usize },
    /// Same dedup identity as an event already stored.
    Duplicate { existing: Option<EventId> },
    /// The nonce was already used.
    Replayed,
}

/// A delivery job taken by a dispatcher, leased until it reports back.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub delivery_id: i64,
    pub event_id: String,
    pub endpoint_id: String,
    /// The attempt about to be made (1-based).
    pub attempt: u32,
    pub payload: String,
    pub received_at_ms: i64,
}

/// What happens to a job after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Delivered,
    RetryAt(i64),
    Dead,
}

#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub delivery_id: i64,
    pub attempt: u32,
    pub started_at_ms: i64,
    pub duration_ms: i64,
    pub outcome: AttemptOutcome,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    pub next: NextStep,
}

/// Whether the attempt's result was applied, or the job had moved on (its
/// lease expired and another dispatcher took it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordOutcome {
    Applied,
    Superseded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAttempt {
    pub attempt: u32,
    pub started_at_ms: i64,
    pub duration_ms: i64,
    pub outcome: AttemptOutcome,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    /// The start of the merchant's response body (a few hundred bytes at most).
    pub response_excerpt: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub id: i64,
    pub event_id: String,
    pub endpoint_id: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
}

/// One delivery job as the queue carries it: which delivery, which attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobRef {
    pub delivery_id: i64,
    pub attempt: u32,
}

/// What became of an attempt to take one specific job.
#[derive(Debug, Clone)]
pub enum JobClaim {
    /// Leased to the caller.
    Claimed(ClaimedJob),
    /// Pending, but not due until then (e.g. `Retry-After` was longer than
    /// the retry queue's delay).
    NotDue { due_at_ms: i64 },
    /// Another dispatcher holds it, until then (epoch ms).
    Taken { until_ms: i64 },
    /// Already delivered, dead, or moved past this attempt.
    Stale,
}

/// How early a job may be taken. Zero: `Retry-After` and the schedule say
/// "not before", so a job is never attempted before it is due (a queue
/// message that arrives a little early is parked again for the rest).
pub const DUE_TOLERANCE_MS: i64 = 0;

/// Why a job that was not claimed was not, from its row as read by
/// `SELECT status, attempts, next_attempt_at, lease_until` (no row: gone).
fn classify_unclaimed_row<R>(job: JobRef, now: i64, row: Option<R>) -> Result<JobClaim, StoreError>
where
    R: sqlx::Row,
    &'static str: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let Some(r) = row else {
        return Ok(JobClaim::Stale);
    };
    Ok(classify_unclaimed(
        job,
        now,
        &r.try_get::<String, _>("status")?,
        r.try_get("attempts")?,
        r.try_get("next_attempt_at")?,
        r.try_get("lease_until")?,
    ))
}

/// Why a job that was not claimed was not: read from its row.
fn classify_unclaimed(
    job: JobRef,
    now: i64,
    status: &str,
    attempts: i64,
    next_at: i64,
    lease_until: i64,
) -> JobClaim {
    if status != "pending" || attempts != i64::from(job.attempt) - 1 {
        JobClaim::Stale
    } else if lease_until > now {
        JobClaim::Taken {
            until_ms: lease_until,
        }
    } else if next_at > now + DUE_TOLERANCE_MS {
        JobClaim::NotDue { due_at_ms: next_at }
    } else {
        // Changed between the two statements: someone else just got it.
        JobClaim::Taken { until_ms: now }
    }
}

/// How long a claimed outbox row belongs to its publisher. A row handed to
/// the publisher in memory at ingest is leased for as long from its commit.
pub const OUTBOX_LEASE: Duration = Duration::from_secs(10);

/// A stored event waiting to be published to RabbitMQ, with the delivery jobs
/// it created.
#[derive(Debug, Clone)]
pub struct OutboxItem {
    pub outbox_id: i64,
    pub event_id: String,
    /// `{provider}.{type}`, e.g. `cbb.payment.succeeded`.
    pub routing_key: String,
    pub payload: String,
    pub jobs: Vec<JobRef>,
    /// Whether to publish the event to the events exchange. False for a
    /// redelivery's row, whose event was published when it was stored: only
    /// its (new) jobs go out.
    pub publish_event: bool,
}

#[derive(Clone)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Sqlite(_) => f.write_str("Store::Sqlite"),
            Store::Postgres(_) => f.write_str("Store::Postgres"),
        }
    }
}

impl Store {
    /// Opens the store named by `url` and runs its migrations, on the
    /// system clock.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        Self::connect_with_clock(url, Arc::new(SystemClock)).await
    }

    /// As [`connect`](Self::connect), with due times and leases on `clock`
    /// (see `crate::clock` for what stays on the system's).
    pub async fn connect_with_clock(url: &str, clock: Arc<dyn Clock>) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(SqliteStore::connect(url, clock).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PostgresStore::connect(url, clock).await?))
        } else {
            Err(StoreError::UnsupportedUrl(
                url.split(':').next().unwrap_or("").to_owned(),
            ))
        }
    }

    /// As [`ingest`](Self::ingest), and the new outbox row (if `new.outbox`
    /// and the event was stored), leased to the caller's publisher for a
    /// hand-over in memory (`app` wires it). PostgreSQL only; SQLite's rows
    /// are all found by the publisher's scan.
    pub async fn ingest_for_publisher(
        &self,
        new: NewEvent,
    ) -> Result<(IngestOutcome, Option<OutboxItem>), StoreError> {
        match self {
            Store::Sqlite(s) => Ok((s.ingest(new).await?, None)),
            Store::Postgres(s) => s.ingest_for_publisher(new).await,
        }
    }

    /// Ingests `batch` as if one after another, in order, but sharing
    /// commits (and, in PostgreSQL, statements) as concurrent ingests do
    /// under group commit: the batching made deterministic, so that its
    /// rules can be checked (a later request sees every earlier one).
    pub async fn ingest_all(&self, batch: Vec<NewEvent>) -> Vec<Result<IngestOutcome, StoreError>> {
        match self {
            // The writer takes its queue in order.
            Store::Sqlite(s) => join_all(batch.into_iter().map(|new| s.ingest(new))).await,
            Store::Postgres(s) => s.ingest_all(batch).await,
        }
    }

    /// `record_attempt` for each of `records`, as `ingest_all` does.
    pub async fn record_all(&self, records: Vec<AttemptRecord>) -> Vec<Result<RecordOutcome, StoreError>> {
        match self {
            Store::Sqlite(s) => join_all(records.into_iter().map(|rec| s.record_attempt(rec))).await,
            Store::Postgres(s) => s.record_all(records).await,
        }
    }

    /// `claim_job` for each of `jobs`, as `ingest_all` does.
    pub async fn claim_all(&self, jobs: &[JobRef], lease: Duration) -> Vec<Result<JobClaim, StoreError>> {
        match self {
            Store::Sqlite(s) => {
                let mut claims = Vec::with_capacity(jobs.len());
                for &job in jobs {
                    claims.push(s.claim_job(job, lease).await);
                }
                claims
            }
            Store::Postgres(s) => s.claim_all(jobs, lease).await,
        }
    }
}

// ---------------------------------------------------------------------------
// Operator queries (`/admin/*`): listing, inspection and redelivery. The
// statements are in `admin_query.rs`, written once for both backends, and
// expanded in `sqlite_admin.rs` and `postgres_admin.rs`.

/// Which events to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    pub account: Option<String>,
    pub provider: Option<String>,
    pub event_type: Option<String>,
    pub merchant_order_no: Option<String>,
    /// Events whose id, provider trade number or merchant order number
    /// starts with this (exactly, case included).
    pub search: Option<String>,
    /// Received at or after this instant (epoch ms).
    pub received_since_ms: Option<i64>,
    /// Received before this instant (epoch ms).
    pub received_until_ms: Option<i64>,
    /// Keyset pagination: only events whose id sorts before this one (event
    /// ids are ULIDs, so this means "older").
    pub before: Option<String>,
    pub limit: usize,
}

/// A stored event: its identity and the JSON merchants receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub id: String,
    pub account: String,
    pub provider: String,
    pub event_type: String,
    /// The event JSON exactly as delivered.
    pub payload: String,
    pub received_at_ms: i64,
}

/// Which deliveries to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryFilter {
    pub status: Option<DeliveryStatus>,
    /// Only deliveries that no redelivery replaced: for dead ones, what is
    /// still to be resolved.
    pub unresolved: bool,
    /// Keyset pagination: only deliveries with a smaller id.
    pub before: Option<i64>,
    pub limit: usize,
}

/// A delivery row with what an operator needs to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryDetail {
    pub id: i64,
    pub event_id: String,
    pub endpoint_id: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at_ms: i64,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// The dead delivery this one redelivers, if any.
    pub redelivery_of: Option<i64>,
    /// The delivery that redelivered this (dead) one, if any.
    pub redelivered_as: Option<i64>,
}

/// A delivery created by a redelivery: pending, due now, attempt 1 next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    pub id: i64,
    pub event_id: String,
    pub endpoint_id: String,
}

impl Store {
    /// Every delivery of the given events, in delivery id order (at most a
    /// page of events: the list is one statement).
    pub async fn delivery_details_for_events(
        &self,
        event_ids: &[String],
    ) -> Result<Vec<DeliveryDetail>, StoreError> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Store::Sqlite(s) => s.delivery_details_for_events(event_ids).await,
            Store::Postgres(s) => s.delivery_details_for_events(event_ids).await,
        }
    }

    /// Which database this is, as operators name it.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }
}

/// What one bulk redelivery did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BulkRedelivery {
    /// New pending deliveries created by this call.
    pub redelivered: u64,
    /// Dead deliveries (to configured endpoints) still not redelivered.
    pub remaining: u64,
}

/// A stored delivery status, or `Corrupt` if the column holds something else.
pub(crate) fn delivery_status(text: &str) -> Result<DeliveryStatus, StoreError> {
    DeliveryStatus::parse(text).ok_or_else(|| StoreError::Corrupt(format!("delivery status `{text}`")))
}

/// A stored attempt outcome, or `Corrupt` if the column holds something else.
pub(crate) fn attempt_outcome(text: &str) -> Result<AttemptOutcome, StoreError> {
    AttemptOutcome::parse(text).ok_or_else(|| StoreError::Corrupt(format!("attempt outcome `{text}`")))
}
