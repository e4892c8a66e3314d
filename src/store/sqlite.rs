//! SQLite backend. SQLite allows one writer at a time, so every write goes
//! through one connection, and ingress/attempt writes are *group committed*:
//! a writer task takes whatever has queued up while the previous batch was
//! committing and commits it as one transaction. Each caller is answered only
//! after the commit that contains its write, so durability is unchanged
//! (`synchronous = FULL`), but N concurrent callbacks cost one fsync, not N.
//! The writer (`sqlite/writer.rs`) also writes a batch's rows with a few
//! multi-row statements rather than one statement per row.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::{
    classify_unclaimed_row, millis, AttemptRecord, ClaimedJob, IngestOutcome, JobClaim, JobRef, NewEvent,
    OutboxItem, RecordOutcome, StoreError, DUE_TOLERANCE_MS,
};

mod rows;
pub(super) mod upkeep;
mod writer;

use writer::{open_writer, run_writer, Claim, WriteOp, MAX_BATCH};

use crate::clock::Clock;
use std::sync::Arc;

#[derive(Clone)]
pub struct SqliteStore {
    pub(super) write: SqlitePool,
    pub(super) read: SqlitePool,
    writer: mpsc::Sender<WriteOp>,
    /// Due times, leases and operator cut-offs are on this clock.
    pub(super) clock: Arc<dyn Clock>,
}

impl SqliteStore {
    pub async fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Statement journals (each multi-row statement of a batch has
            // one) stay in memory instead of spilling to temporary files.
            .pragma("temp_store", "memory");
        // No ping before each acquire: the database is a local file, and a
        // ping is one more hand-off to sqlx's worker thread per batch.
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(30))
            // Retention deletes old rows; with incremental auto-vacuum the
            // freed pages can be given back to the file system. It takes
            // effect only on a new file (before its first table), which
            // is why sqlx sets it before `journal_mode`.
            .connect_with(options.clone().auto_vacuum(SqliteAutoVacuum::Incremental))
            .await?;
        enable_incremental_vacuum(&write).await?;
        sqlx::migrate!("./migrations/sqlite").run(&write).await?;
        // The group-commit writer: its own connection on its own thread,
        // opened after the migrations so that it sees the schema.
        let conn = open_writer(options.get_filename())?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await?;
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        let writer_clock = clock.clone();
        std::thread::Builder::new()
            .name("payhook-sqlite-writer".into())
            .spawn(move || run_writer(conn, rx, writer_clock))
            .map_err(StoreError::WriterThread)?;
        Ok(Self {
            write,
            read,
            writer: tx,
            clock,
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    pub async fn ingest(&self, new: NewEvent) -> Result<IngestOutcome, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(WriteOp::Ingest(Box::new(new), tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn record_attempt(&self, record: AttemptRecord) -> Result<RecordOutcome, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(WriteOp::Record(Box::new(record), tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Retention's writes (`upkeep.rs`), run by the writer, which lets
    /// waiting writes go ahead of them.
    pub(super) async fn upkeep(&self, upkeep: upkeep::Upkeep) -> Result<upkeep::UpkeepDone, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.writer
            .send(WriteOp::Upkeep(Box::new(upkeep), tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs in the writer, in the transaction of a batch: no commit (and
    /// fsync) of its own, and no waiting for the writer's connection.
    pub async fn claim_due(
        &self,
        limit: usize,
        lease: Duration,
        busy: &[String],
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let (tx, rx) = oneshot::channel();
        let claim = Claim {
            limit,
            lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2),
            busy: busy.to_vec(),
        };
        self.writer
            .send(WriteOp::Claim(Box::new(claim), tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn next_due_at(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT next_attempt_at FROM deliveries INDEXED BY deliveries_due \
             WHERE status = 'pending' AND lease_until <= ?1 AND endpoint_id NOT IN (SELECT endpoint_id \
             FROM endpoint_state WHERE paused_at IS NOT NULL) ORDER BY next_attempt_at LIMIT 1",
        )
        .bind(self.clock.now_ms())
        .fetch_optional(&self.read)
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get(0)?),
            None => None,
        })
    }

    pub async fn release(&self, delivery_ids: &[i64]) -> Result<(), StoreError> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("UPDATE deliveries SET lease_until = 0 WHERE status = 'pending' AND id");
        push_id_list(&mut q, delivery_ids);
        q.build().execute(&self.write).await?;
        Ok(())
    }

    pub async fn extend_leases(&self, delivery_ids: &[i64], lease: Duration) -> Result<(), StoreError> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("UPDATE deliveries SET lease_until = ");
        q.push_bind(now.saturating_add(millis(lease)));
        q.push(" WHERE status = 'pending' AND lease_until > ");
        q.push_bind(now);
        q.push(" AND id");
        push_id_list(&mut q, delivery_ids);
        q.build().execute(&self.write).await?;
        Ok(())
    }

    pub async fn defer(&self, job: JobRef, hold: Duration) -> Result<Option<i64>, StoreError> {
        let due: Option<i64> = sqlx::query_scalar(
            "UPDATE deliveries SET lease_until = ?3 \
             WHERE id = ?1 AND status = 'pending' AND attempts = ?2 RETURNING next_attempt_at",
        )
        .bind(job.delivery_id)
        .bind(i64::from(job.attempt) - 1)
        .bind(self.clock.now_ms().saturating_add(millis(hold)))
        .fetch_optional(&self.write)
        .await?;
        Ok(due)
    }

    pub async fn prune_nonces(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        let r = sqlx::query("DELETE FROM nonces WHERE seen_at < ?1")
            .bind(older_than_ms)
            .execute(&self.write)
            .await?;
        Ok(r.rows_affected())
    }

    pub async fn count_pending(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
            .fetch_one(&self.read)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

impl SqliteStore {
    pub async fn outbox_claim(&self, limit: usize, lease: Duration) -> Result<Vec<OutboxItem>, StoreError> {
        let now = self.clock.now_ms();
        let rows = sqlx::query(
            "UPDATE outbox SET lease_until = ?1 WHERE id IN \
             (SELECT id FROM outbox WHERE lease_until <= ?2 ORDER BY id LIMIT ?3) \
             RETURNING id, event_id, publish_event",
        )
        .bind(now.saturating_add(millis(lease)))
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.write)
        .await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            let event_id: String = row.try_get("event_id")?;
            let event = sqlx::query("SELECT provider, event_type, payload FROM events WHERE id = ?1")
                .bind(&event_id)
                .fetch_one(&self.write)
                .await?;
            let jobs = sqlx::query(
                // By event: left to itself SQLite reads every pending job instead.
                "SELECT id, attempts FROM deliveries INDEXED BY deliveries_event \
                 WHERE event_id = ?1 AND status = 'pending' ORDER BY id",
            )
            .bind(&event_id)
            .fetch_all(&self.write)
            .await?
            .into_iter()
            .map(|r| {
                Ok(JobRef {
                    delivery_id: r.try_get("id")?,
                    attempt: u32::try_from(r.try_get::<i64, _>("attempts")? + 1).unwrap_or(1),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let provider: String = event.try_get("provider")?;
            let event_type: String = event.try_get("event_type")?;
            items.push(OutboxItem {
                outbox_id: row.try_get("id")?,
                event_id,
                routing_key: format!("{provider}.{event_type}"),
                payload: event.try_get("payload")?,
                jobs,
                publish_event: row.try_get("publish_event")?,
            });
        }
        Ok(items)
    }

    pub async fn outbox_done(&self, outbox_ids: &[i64]) -> Result<(), StoreError> {
        if outbox_ids.is_empty() {
            return Ok(());
        }
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("DELETE FROM outbox WHERE id");
        push_id_list(&mut q, outbox_ids);
        q.build().execute(&self.write).await?;
        Ok(())
    }

    pub async fn count_outbox(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(&self.read)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub async fn claim_job(&self, job: JobRef, lease: Duration) -> Result<JobClaim, StoreError> {
        let now = self.clock.now_ms();
        let row = sqlx::query(
            "UPDATE deliveries SET lease_until = ?1 WHERE id = ?2 AND status = 'pending' AND attempts = ?3 \
             AND lease_until <= ?4 AND next_attempt_at <= ?5 RETURNING event_id, endpoint_id",
        )
        .bind(now.saturating_add(millis(lease)))
        .bind(job.delivery_id)
        .bind(i64::from(job.attempt) - 1)
        .bind(now)
        .bind(now.saturating_add(DUE_TOLERANCE_MS))
        .fetch_optional(&self.write)
        .await?;
        let Some(row) = row else {
            let state = sqlx::query(
                "SELECT status, attempts, next_attempt_at, lease_until FROM deliveries WHERE id = ?1",
            )
            .bind(job.delivery_id)
            .fetch_optional(&self.write)
            .await?;
            return classify_unclaimed_row(job, now, state);
        };
        let event_id: String = row.try_get("event_id")?;
        let event = sqlx::query("SELECT payload, received_at FROM events WHERE id = ?1")
            .bind(&event_id)
            .fetch_one(&self.write)
            .await?;
        Ok(JobClaim::Claimed(ClaimedJob {
            delivery_id: job.delivery_id,
            endpoint_id: row.try_get("endpoint_id")?,
            attempt: job.attempt,
            payload: event.try_get("payload")?,
            received_at_ms: event.try_get("received_at")?,
            event_id,
        }))
    }

    pub async fn requeue_overdue(&self, due_before_ms: i64, limit: usize) -> Result<Vec<JobRef>, StoreError> {
        let now = self.clock.now_ms();
        let rows = sqlx::query(
            "UPDATE deliveries SET next_attempt_at = ?1 WHERE id IN (SELECT id FROM deliveries INDEXED BY deliveries_due \
             WHERE status = 'pending' AND next_attempt_at < ?2 AND lease_until <= ?1 AND endpoint_id NOT IN \
             (SELECT endpoint_id FROM endpoint_state WHERE paused_at IS NOT NULL) ORDER BY next_attempt_at LIMIT ?3) \
             RETURNING id, attempts",
        )
        .bind(now)
        .bind(due_before_ms)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.write)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(JobRef {
                    delivery_id: r.try_get("id")?,
                    attempt: u32::try_from(r.try_get::<i64, _>("attempts")? + 1).unwrap_or(1),
                })
            })
            .collect()
    }
}

/// A file made before retention (or by another tool) has `auto_vacuum =
/// NONE`: freed pages would stay in the file for ever. Switching needs one
/// `VACUUM`, which rewrites the file; done once, at start-up, before the
/// writer and readers open their connections.
async fn enable_incremental_vacuum(write: &SqlitePool) -> Result<(), StoreError> {
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum").fetch_one(write).await?;
    // 2 = INCREMENTAL. A new, empty file already has it from the connect
    // options.
    if mode == 2 {
        return Ok(());
    }
    let pages: i64 = sqlx::query_scalar("PRAGMA page_count").fetch_one(write).await?;
    tracing::info!(
        auto_vacuum = mode,
        pages,
        "SQLite file has auto_vacuum off: switching to INCREMENTAL with a one-off VACUUM \
         (rewrites the file once) so that retention can give freed pages back"
    );
    let started = std::time::Instant::now();
    sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
        .execute(write)
        .await?;
    sqlx::query("VACUUM").execute(write).await?;
    tracing::info!(
        took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "SQLite VACUUM done; auto_vacuum is INCREMENTAL"
    );
    Ok(())
}

/// ` IN (?, ?, …)` with `ids` bound.
fn push_id_list(q: &mut QueryBuilder<'_, Sqlite>, ids: &[i64]) {
    q.push(" IN (");
    let mut sep = q.separated(", ");
    for id in ids {
        sep.push_bind(*id);
    }
    q.push(")");
}
