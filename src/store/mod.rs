//! Durable state: events, delivery jobs, attempts, replay nonces, outbox.
//!
//! One `Store` type fronts both backends. SQLite (embedded default) funnels
//! writes through a single group-committing writer; PostgreSQL uses a pool and
//! `FOR UPDATE SKIP LOCKED`. Both keep the same tables and the same rules.

mod postgres;
mod sqlite;

use std::time::Duration;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

use crate::domain::{EndpointId, Event, EventId};

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}
use crate::telemetry::AttemptOutcome;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the store is shutting down")]
    Closed,
    #[error("corrupt row: {0}")]
    Corrupt(String),
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
    pub outcome: String,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryRow {
    pub id: i64,
    pub event_id: String,
    pub endpoint_id: String,
    pub status: String,
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
    /// Another dispatcher holds it.
    Taken,
    /// Already delivered, dead, or moved past this attempt.
    Stale,
}

/// A job this close to its due time counts as due: queue delays and clocks
/// are not exact to the millisecond, and waiting again would cost more.
pub const DUE_TOLERANCE_MS: i64 = 25;

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
        JobClaim::Taken
    } else if next_at > now + DUE_TOLERANCE_MS {
        JobClaim::NotDue { due_at_ms: next_at }
    } else {
        // Changed between the two statements: someone else got it.
        JobClaim::Taken
    }
}

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

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Opens the store named by `url` and runs its migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(SqliteStore::connect(url).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PostgresStore::connect(url).await?))
        } else {
            Err(StoreError::Corrupt(format!(
                "unsupported storage url scheme in `{}`",
                url.split(':').next().unwrap_or("")
            )))
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.ping().await,
            Store::Postgres(s) => s.ping().await,
        }
    }

    pub async fn ingest(&self, new: NewEvent) -> Result<IngestOutcome, StoreError> {
        match self {
            Store::Sqlite(s) => s.ingest(new).await,
            Store::Postgres(s) => s.ingest(new).await,
        }
    }

    /// Leases up to `limit` due jobs, skipping endpoints in `busy`.
    pub async fn claim_due(
        &self,
        limit: usize,
        lease: Duration,
        busy: &[String],
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        match self {
            Store::Sqlite(s) => s.claim_due(limit, lease, busy).await,
            Store::Postgres(s) => s.claim_due(limit, lease, busy).await,
        }
    }

    /// When the earliest unleased pending job is due (epoch ms).
    pub async fn next_due_at(&self) -> Result<Option<i64>, StoreError> {
        match self {
            Store::Sqlite(s) => s.next_due_at().await,
            Store::Postgres(s) => s.next_due_at().await,
        }
    }

    pub async fn record_attempt(&self, record: AttemptRecord) -> Result<RecordOutcome, StoreError> {
        match self {
            Store::Sqlite(s) => s.record_attempt(record).await,
            Store::Postgres(s) => s.record_attempt(record).await,
        }
    }

    /// Gives leased jobs back (graceful shutdown), so another dispatcher can
    /// take them at once instead of waiting out the lease.
    pub async fn release(&self, delivery_ids: &[i64]) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.release(delivery_ids).await,
            Store::Postgres(s) => s.release(delivery_ids).await,
        }
    }

    pub async fn prune_nonces(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.prune_nonces(older_than_ms).await,
            Store::Postgres(s) => s.prune_nonces(older_than_ms).await,
        }
    }

    pub async fn count_pending(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.count_pending().await,
            Store::Postgres(s) => s.count_pending().await,
        }
    }

    pub async fn deliveries_for_event(&self, event_id: &str) -> Result<Vec<DeliveryRow>, StoreError> {
        match self {
            Store::Sqlite(s) => s.deliveries_for_event(event_id).await,
            Store::Postgres(s) => s.deliveries_for_event(event_id).await,
        }
    }

    pub async fn attempts_for_delivery(&self, delivery_id: i64) -> Result<Vec<StoredAttempt>, StoreError> {
        match self {
            Store::Sqlite(s) => s.attempts_for_delivery(delivery_id).await,
            Store::Postgres(s) => s.attempts_for_delivery(delivery_id).await,
        }
    }

    /// Leases up to `limit` unpublished outbox rows for publishing.
    pub async fn outbox_claim(&self, limit: usize, lease: Duration) -> Result<Vec<OutboxItem>, StoreError> {
        match self {
            Store::Sqlite(s) => s.outbox_claim(limit, lease).await,
            Store::Postgres(s) => s.outbox_claim(limit, lease).await,
        }
    }

    /// Removes outbox rows whose publishes the broker confirmed.
    pub async fn outbox_done(&self, outbox_ids: &[i64]) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.outbox_done(outbox_ids).await,
            Store::Postgres(s) => s.outbox_done(outbox_ids).await,
        }
    }

    pub async fn count_outbox(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(s) => s.count_outbox().await,
            Store::Postgres(s) => s.count_outbox().await,
        }
    }

    /// Leases one specific job (RabbitMQ mode) if it is pending at that
    /// attempt, due, and nobody else holds it; otherwise says why not.
    pub async fn claim_job(&self, job: JobRef, lease: Duration) -> Result<JobClaim, StoreError> {
        match self {
            Store::Sqlite(s) => s.claim_job(job, lease).await,
            Store::Postgres(s) => s.claim_job(job, lease).await,
        }
    }

    /// Pending, unleased jobs due before `due_before_ms` (their queue message
    /// was lost, e.g. a crash between storing and publishing). Their due time
    /// is moved to now so that one sweep does not find them again at once.
    pub async fn requeue_overdue(&self, due_before_ms: i64, limit: usize) -> Result<Vec<JobRef>, StoreError> {
        match self {
            Store::Sqlite(s) => s.requeue_overdue(due_before_ms, limit).await,
            Store::Postgres(s) => s.requeue_overdue(due_before_ms, limit).await,
        }
    }

    pub async fn close(&self) {
        match self {
            Store::Sqlite(s) => s.close().await,
            Store::Postgres(s) => s.close().await,
        }
    }
}
