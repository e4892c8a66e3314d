//! SQLite backend. SQLite allows one writer at a time, so every write goes
//! through one connection, and ingress/attempt writes are *group committed*:
//! a writer task takes whatever has queued up while the previous batch was
//! committing and commits it as one transaction. Each caller is answered only
//! after the commit that contains its write, so durability is unchanged
//! (`synchronous = FULL`), but N concurrent callbacks cost one fsync, not N.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, oneshot};

use super::{
    classify_unclaimed, millis, now_ms, AttemptRecord, ClaimedJob, DeliveryRow, IngestOutcome, JobClaim,
    JobRef, NewEvent, NextStep, OutboxItem, RecordOutcome, StoreError, StoredAttempt, DUE_TOLERANCE_MS,
};
use crate::domain::EventId;

/// The most writes committed together; bounds one transaction's size and the
/// latency of the first write in it.
const MAX_BATCH: usize = 512;

enum WriteOp {
    Ingest(Box<NewEvent>, oneshot::Sender<Result<IngestOutcome, StoreError>>),
    Record(
        Box<AttemptRecord>,
        oneshot::Sender<Result<RecordOutcome, StoreError>>,
    ),
}

#[derive(Clone)]
pub struct SqliteStore {
    pub(super) write: SqlitePool,
    pub(super) read: SqlitePool,
    writer: mpsc::Sender<WriteOp>,
}

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(run_writer(write.clone(), rx));
        Ok(Self {
            write,
            read,
            writer: tx,
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

    pub async fn claim_due(
        &self,
        limit: usize,
        lease: Duration,
        busy: &[String],
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let now = now_ms();
        let lease_until = now.saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2));
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("UPDATE deliveries SET lease_until = ");
        q.push_bind(lease_until);
        q.push(" WHERE id IN (SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= ");
        q.push_bind(now);
        q.push(" AND lease_until <= ");
        q.push_bind(now);
        if !busy.is_empty() {
            q.push(" AND endpoint_id NOT IN (");
            let mut sep = q.separated(", ");
            for endpoint in busy {
                sep.push_bind(endpoint.as_str());
            }
            q.push(")");
        }
        q.push(" ORDER BY next_attempt_at LIMIT ");
        q.push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
        q.push(") RETURNING id, event_id, endpoint_id, attempts");
        let rows = q.build().fetch_all(&self.write).await?;
        let mut jobs = Vec::with_capacity(rows.len());
        for row in rows {
            let event_id: String = row.try_get("event_id")?;
            let attempts: i64 = row.try_get("attempts")?;
            let event = sqlx::query("SELECT payload, received_at FROM events WHERE id = ?1")
                .bind(&event_id)
                .fetch_one(&self.write)
                .await?;
            jobs.push(ClaimedJob {
                delivery_id: row.try_get("id")?,
                endpoint_id: row.try_get("endpoint_id")?,
                attempt: u32::try_from(attempts + 1).map_err(|_| StoreError::Corrupt("attempts".into()))?,
                payload: event.try_get("payload")?,
                received_at_ms: event.try_get("received_at")?,
                event_id,
            });
        }
        Ok(jobs)
    }

    pub async fn next_due_at(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT next_attempt_at FROM deliveries WHERE status = 'pending' AND lease_until <= ?1 \
             ORDER BY next_attempt_at LIMIT 1",
        )
        .bind(now_ms())
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
            QueryBuilder::new("UPDATE deliveries SET lease_until = 0 WHERE status = 'pending' AND id IN (");
        let mut sep = q.separated(", ");
        for id in delivery_ids {
            sep.push_bind(*id);
        }
        q.push(")");
        q.build().execute(&self.write).await?;
        Ok(())
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

    pub async fn deliveries_for_event(&self, event_id: &str) -> Result<Vec<DeliveryRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, event_id, endpoint_id, status, attempts, next_attempt_at, last_error \
             FROM deliveries WHERE event_id = ?1 ORDER BY id",
        )
        .bind(event_id)
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(DeliveryRow {
                    id: r.try_get("id")?,
                    event_id: r.try_get("event_id")?,
                    endpoint_id: r.try_get("endpoint_id")?,
                    status: r.try_get("status")?,
                    attempts: u32::try_from(r.try_get::<i64, _>("attempts")?).unwrap_or(0),
                    next_attempt_at_ms: r.try_get("next_attempt_at")?,
                    last_error: r.try_get("last_error")?,
                })
            })
            .collect()
    }

    pub async fn attempts_for_delivery(&self, delivery_id: i64) -> Result<Vec<StoredAttempt>, StoreError> {
        let rows = sqlx::query(
            "SELECT attempt, started_at, duration_ms, outcome, http_status, error \
             FROM attempts WHERE delivery_id = ?1 ORDER BY attempt",
        )
        .bind(delivery_id)
        .fetch_all(&self.read)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(StoredAttempt {
                    attempt: u32::try_from(r.try_get::<i64, _>("attempt")?).unwrap_or(0),
                    started_at_ms: r.try_get("started_at")?,
                    duration_ms: r.try_get("duration_ms")?,
                    outcome: r.try_get("outcome")?,
                    http_status: r
                        .try_get::<Option<i64>, _>("http_status")?
                        .and_then(|s| u16::try_from(s).ok()),
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }
}

impl SqliteStore {
    pub async fn outbox_claim(&self, limit: usize, lease: Duration) -> Result<Vec<OutboxItem>, StoreError> {
        let now = now_ms();
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
                "SELECT id, attempts FROM deliveries WHERE event_id = ?1 AND status = 'pending' ORDER BY id",
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
                publish_event: row.try_get("publish_event")?,
                outbox_id: row.try_get("id")?,
                event_id,
                routing_key: format!("{provider}.{event_type}"),
                payload: event.try_get("payload")?,
                jobs,
            });
        }
        Ok(items)
    }

    pub async fn outbox_done(&self, outbox_ids: &[i64]) -> Result<(), StoreError> {
        if outbox_ids.is_empty() {
            return Ok(());
        }
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("DELETE FROM outbox WHERE id IN (");
        let mut sep = q.separated(", ");
        for id in outbox_ids {
            sep.push_bind(*id);
        }
        q.push(")");
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
        let now = now_ms();
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
            return Ok(match state {
                None => JobClaim::Stale,
                Some(r) => classify_unclaimed(
                    job,
                    now,
                    &r.try_get::<String, _>("status")?,
                    r.try_get("attempts")?,
                    r.try_get("next_attempt_at")?,
                    r.try_get("lease_until")?,
                ),
            });
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
        let now = now_ms();
        let rows = sqlx::query(
            "UPDATE deliveries SET next_attempt_at = ?1 WHERE id IN (SELECT id FROM deliveries \
             WHERE status = 'pending' AND next_attempt_at < ?2 AND lease_until <= ?1 ORDER BY next_attempt_at LIMIT ?3) \
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

/// The single writer: commits queued writes in batches, answering each caller
/// after its batch is durable.
async fn run_writer(pool: SqlitePool, mut rx: mpsc::Receiver<WriteOp>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        match commit_batch(&pool, &batch).await {
            Ok(results) => {
                for (op, result) in batch.into_iter().zip(results) {
                    reply(op, Ok(result));
                }
            }
            // One bad write must not fail its neighbours: retry each alone,
            // so that only the failing one gets the error.
            Err(_) if batch.len() > 1 => {
                for op in batch {
                    let result = commit_batch(&pool, std::slice::from_ref(&op)).await;
                    let single = result.and_then(|mut r| r.pop().ok_or(StoreError::Closed));
                    reply(op, single);
                }
            }
            Err(e) => {
                for op in batch {
                    reply(op, Err(StoreError::Corrupt(format!("write failed: {e}"))));
                }
            }
        }
    }
}

enum OpResult {
    Ingest(IngestOutcome),
    Record(RecordOutcome),
}

fn reply(op: WriteOp, result: Result<OpResult, StoreError>) {
    // A caller that has gone away (its request was cancelled) needs no answer.
    match (op, result) {
        (WriteOp::Ingest(_, tx), Ok(OpResult::Ingest(r))) => {
            let _ = tx.send(Ok(r));
        }
        (WriteOp::Record(_, tx), Ok(OpResult::Record(r))) => {
            let _ = tx.send(Ok(r));
        }
        (WriteOp::Ingest(_, tx), Err(e)) => {
            let _ = tx.send(Err(e));
        }
        (WriteOp::Record(_, tx), Err(e)) => {
            let _ = tx.send(Err(e));
        }
        (WriteOp::Ingest(_, tx), Ok(_)) => {
            let _ = tx.send(Err(StoreError::Corrupt("mismatched write result".into())));
        }
        (WriteOp::Record(_, tx), Ok(_)) => {
            let _ = tx.send(Err(StoreError::Corrupt("mismatched write result".into())));
        }
    }
}

async fn commit_batch(pool: &SqlitePool, batch: &[WriteOp]) -> Result<Vec<OpResult>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut results = Vec::with_capacity(batch.len());
    for op in batch {
        let result = match op {
            WriteOp::Ingest(new, _) => OpResult::Ingest(ingest_in(&mut tx, new).await?),
            WriteOp::Record(rec, _) => OpResult::Record(record_in(&mut tx, rec).await?),
        };
        results.push(result);
    }
    tx.commit().await?;
    Ok(results)
}

async fn ingest_in(conn: &mut SqliteConnection, new: &NewEvent) -> Result<IngestOutcome, StoreError> {
    let now = now_ms();
    let ev = &new.event;
    if let Some(nonce) = &new.nonce {
        let r = sqlx::query(
            "INSERT INTO nonces (account, nonce, seen_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
        )
        .bind(ev.account.as_str())
        .bind(nonce)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        if r.rows_affected() == 0 {
            return Ok(IngestOutcome::Replayed);
        }
    }
    let inserted = sqlx::query(
        "INSERT INTO events (id, account, provider, event_type, provider_trade_no, dedup_extra, \
         merchant_order_no, payload, raw_body, raw_headers, received_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT DO NOTHING",
    )
    .bind(ev.id.as_str())
    .bind(ev.account.as_str())
    .bind(ev.provider.as_str())
    .bind(ev.event_type.as_str())
    .bind(&ev.provider_trade_no)
    .bind(&new.dedup_extra)
    .bind(ev.merchant_order_no.as_deref())
    .bind(&new.payload)
    .bind(&new.raw_body)
    .bind(&new.raw_headers)
    .bind(ev.received_at.timestamp_millis())
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() == 0 {
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT id FROM events WHERE account = ?1 AND event_type = ?2 AND provider_trade_no = ?3 AND dedup_extra = ?4",
        )
        .bind(ev.account.as_str())
        .bind(ev.event_type.as_str())
        .bind(&ev.provider_trade_no)
        .bind(&new.dedup_extra)
        .fetch_optional(&mut *conn)
        .await?;
        return Ok(IngestOutcome::Duplicate {
            existing: existing.and_then(|id| EventId::parse(&id).ok()),
        });
    }
    for endpoint in &new.endpoints {
        sqlx::query(
            "INSERT INTO deliveries (event_id, endpoint_id, status, attempts, next_attempt_at, lease_until, \
             created_at, updated_at) VALUES (?1, ?2, 'pending', 0, ?3, 0, ?3, ?3)",
        )
        .bind(ev.id.as_str())
        .bind(endpoint.as_str())
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    if new.outbox {
        sqlx::query("INSERT INTO outbox (event_id, created_at) VALUES (?1, ?2)")
            .bind(ev.id.as_str())
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    Ok(IngestOutcome::Accepted {
        jobs: new.endpoints.len(),
    })
}

async fn record_in(conn: &mut SqliteConnection, rec: &AttemptRecord) -> Result<RecordOutcome, StoreError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome, http_status, error, \
         response_excerpt) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT DO NOTHING",
    )
    .bind(rec.delivery_id)
    .bind(i64::from(rec.attempt))
    .bind(rec.started_at_ms)
    .bind(rec.duration_ms)
    .bind(rec.outcome.as_str())
    .bind(rec.http_status.map(i64::from))
    .bind(rec.error.as_deref())
    .bind(rec.response_excerpt.as_deref())
    .execute(&mut *conn)
    .await?;
    let (status, next_at) = match rec.next {
        NextStep::Delivered => ("delivered", now),
        NextStep::RetryAt(at) => ("pending", at),
        NextStep::Dead => ("dead", now),
    };
    // Applied only if nobody has moved the job on since this attempt was
    // claimed (attempt n may only follow n-1).
    let r = sqlx::query(
        "UPDATE deliveries SET status = ?1, attempts = ?2, next_attempt_at = ?3, lease_until = 0, \
         updated_at = ?4, last_error = ?5 WHERE id = ?6 AND status = 'pending' AND attempts = ?7",
    )
    .bind(status)
    .bind(i64::from(rec.attempt))
    .bind(next_at)
    .bind(now)
    .bind(rec.error.as_deref())
    .bind(rec.delivery_id)
    .bind(i64::from(rec.attempt) - 1)
    .execute(&mut *conn)
    .await?;
    Ok(if r.rows_affected() == 1 {
        RecordOutcome::Applied
    } else {
        RecordOutcome::Superseded
    })
}
