//! PostgreSQL backend ("Scaled" mode). Any number of ingress and dispatcher
//! processes share one database, so there is no single writer: each process
//! sends its concurrent ingests, job claims and attempt records as shared
//! multi-row statements, one transaction each, on a pooled connection
//! (`postgres/batcher.rs`), and jobs are leased with `FOR UPDATE SKIP
//! LOCKED`, so that concurrent dispatchers never take the same job and never
//! wait on each other's rows.
//!
//! Semantics are those of the SQLite backend, statement for statement; only
//! the way rows are picked under concurrency differs.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Row};

use super::{
    classify_unclaimed_row, millis, AttemptRecord, ClaimedJob, IngestOutcome, JobClaim, JobRef, NewEvent,
    NextStep, OutboxItem, RecordOutcome, StoreError, DUE_TOLERANCE_MS,
};
use crate::clock::Clock;
use crate::domain::EventId;

/// The database's clock in epoch ms, for SQL. In scaled mode many processes
/// on many machines share the rows, so leases, due times and the nonce
/// window are all read and written on this one clock: a process whose own
/// clock is off by minutes would otherwise take jobs others hold, or before
/// they are due, and prune nonces still inside their window. `now()` is the
/// transaction's start: one value for the whole statement, and stable, so
/// that index conditions can still use it.
macro_rules! db_now {
    () => {
        "(extract(epoch from now()) * 1000)::int8"
    };
}

/// How far the database's clock is ahead of the caller's, in ms, given the
/// caller's now (a parameter): the correction for the absolute times a
/// caller passes (a retry's due time, a cut-off) or gets back (when a job is
/// due or its lease ends). Clocks that agree within 1 s count as agreeing
/// (0): that is about a statement's latency, and keeps a caller's times
/// exact where nothing is skewed (so a retry may come up to that much early).
macro_rules! db_skew {
    ($caller_now:literal) => {
        concat!(
            "(CASE WHEN abs(",
            db_now!(),
            " - ",
            $caller_now,
            ") <= 1000 THEN 0 ELSE ",
            db_now!(),
            " - ",
            $caller_now,
            " END)"
        )
    };
}

mod batched;
mod batcher;

/// The hot statements' SQL, for the plan test in `tests/api/plans.rs` (which
/// needs a PostgreSQL server, so it is not a unit test of the library).
#[doc(hidden)]
pub mod hot_statements {
    pub use super::batched::{CLAIM_MANY, RECORD_MANY};
    pub use super::{RECORD, RELEASE};
}

use batched::{ClaimRequest, IngestRequest, Ingested};
use batcher::Batcher;

/// Concurrent batches per kind of write, and the most requests in one.
///
/// One lane: while its statement runs, the next batch gathers. Two lanes
/// halved the batches (more statements, each with its fixed cost) and ran
/// two ingests at once against the same index pages; measured in scaled mode
/// on two cores, one lane cut the ingest's statement time per event by a
/// quarter and e2e p99 at 1,500-2,500 callbacks/s by a third, with the same
/// or better throughput flat out (docs/benchmarks/history.md, 2026-12-02).
const BATCH_LANES: usize = 1;
const MAX_BATCH: usize = 256;

/// Gives back the leases of `$1`'s jobs that are still pending. Unlike the
/// claim and the record (`batched::CLAIM_MANY`), a literal status is safe
/// here: `deliveries_status (status, id)` matches both conditions, so no
/// plan prefers reading every pending job (the plan test checks it).
pub const RELEASE: &str = "UPDATE deliveries SET lease_until = 0 WHERE status = 'pending' AND id = ANY($1)";

/// Connections per process. Ingress transactions and dispatcher claims are
/// short, so a few connections serve many concurrent requests; many processes
/// share one server, whose `max_connections` (100 by default) bounds the sum.
const MAX_CONNECTIONS: u32 = 16;

#[derive(Clone)]
pub struct PostgresStore {
    pub(super) pool: PgPool,
    ingests: Batcher<IngestRequest>,
    records: Batcher<AttemptRecord>,
    claims: Batcher<ClaimRequest>,
    /// The caller's side of the skew correction (`db_skew!`): the clock the
    /// dispatcher's due times are on.
    clock: Arc<dyn Clock>,
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// The 1-based attempt that follows `attempts` recorded ones.
fn next_attempt(attempts: i64) -> Result<u32, StoreError> {
    u32::try_from(attempts.saturating_add(1)).map_err(|_| StoreError::Corrupt("attempts".into()))
}

fn claimed_job(row: &PgRow) -> Result<ClaimedJob, StoreError> {
    Ok(ClaimedJob {
        delivery_id: row.try_get("id")?,
        event_id: row.try_get("event_id")?,
        endpoint_id: row.try_get("endpoint_id")?,
        attempt: next_attempt(row.try_get("attempts")?)?,
        payload: row.try_get("payload")?,
        received_at_ms: row.try_get("received_at")?,
    })
}

fn job_ref(row: &PgRow) -> Result<JobRef, StoreError> {
    Ok(JobRef {
        delivery_id: row.try_get("id")?,
        attempt: next_attempt(row.try_get("attempts")?)?,
    })
}

/// How long start-up waits for PostgreSQL to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects once, so that a failure names the server (host, port, database,
/// user; never the password) and the cause: refused, no such database, a
/// wrong password, or no answer within [`CONNECT_TIMEOUT`].
async fn reachable(options: &PgConnectOptions) -> Result<(), StoreError> {
    use sqlx::ConnectOptions;
    let target = format!(
        "{}:{} (database `{}`, user `{}`)",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("(default)"),
        options.get_username()
    );
    let unreachable = |cause: String| StoreError::Unreachable {
        target: target.clone(),
        cause,
        seconds: CONNECT_TIMEOUT.as_secs(),
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
            Ok(())
        }
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable("no answer".to_owned())),
    }
}

impl PostgresStore {
    pub async fn connect(url: &str, clock: Arc<dyn Clock>) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?.application_name("payhook");
        // One plain connection first: a pool that cannot connect reports only
        // "pool timed out", naming neither the server nor why.
        reachable(&options).await?;
        // No ping before each acquire: it was a sixth of the relay's CPU and
        // one more round trip per statement. A connection the server dropped
        // fails its next statement instead (the provider gets a 503 and
        // retries; a dispatcher retries the write) and is then discarded.
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        // Takes an advisory lock, so processes starting together migrate once.
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self {
            ingests: Batcher::start(pool.clone(), clock.clone(), BATCH_LANES, MAX_BATCH),
            records: Batcher::start(pool.clone(), clock.clone(), BATCH_LANES, MAX_BATCH),
            claims: Batcher::start(pool.clone(), clock.clone(), BATCH_LANES, MAX_BATCH),
            pool,
            clock,
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// One statement, so one round trip and its own transaction: the nonce,
    /// the event, its delivery jobs and the outbox row are written together
    /// or not at all, and committed before the result comes back. Concurrent
    /// ingests share that statement (`postgres/batcher.rs`).
    pub async fn ingest(&self, new: NewEvent) -> Result<IngestOutcome, StoreError> {
        let request = IngestRequest { new, handoff: false };
        Ok(self.ingests.run(request).await?.outcome)
    }

    /// As [`ingest`](Self::ingest), with a new outbox row written leased to
    /// the caller's publisher and returned, so that the caller can hand it
    /// over in memory and the publisher need not read the row back. The row
    /// stays the record: if the hand-over fails or the process dies, the
    /// lease runs out and any publisher's scan takes it.
    pub async fn ingest_for_publisher(
        &self,
        new: NewEvent,
    ) -> Result<(IngestOutcome, Option<OutboxItem>), StoreError> {
        let request = IngestRequest {
            handoff: new.outbox,
            new,
        };
        let Ingested { outcome, handoff } = self.ingests.run(request).await?;
        Ok((outcome, handoff))
    }

    /// One statement, as `ingest`: the attempt and the job's next step.
    pub async fn record_attempt(&self, record: AttemptRecord) -> Result<RecordOutcome, StoreError> {
        self.records.run(record).await
    }

    pub async fn claim_due(
        &self,
        limit: usize,
        lease: Duration,
        busy: &[String],
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        // Rows another dispatcher is claiming right now are locked: skip them
        // rather than wait, and never hand out a row twice (a row whose lease
        // was set by a transaction that committed meanwhile is re-checked
        // against `lease_until <= now` before it is locked). Due and leased
        // by the database's clock.
        let rows = sqlx::query(concat!(
            "WITH picked AS MATERIALIZED ( \
                 SELECT id FROM deliveries \
                 WHERE status = 'pending' AND next_attempt_at <= ",
            db_now!(),
            " AND lease_until <= ",
            db_now!(),
            " AND endpoint_id <> ALL($1) \
                 ORDER BY next_attempt_at LIMIT $2 \
                 FOR UPDATE SKIP LOCKED \
             ), upd AS ( \
                 UPDATE deliveries d SET lease_until = ",
            db_now!(),
            " + $3 FROM picked WHERE d.id = picked.id \
                 RETURNING d.id, d.event_id, d.endpoint_id, d.attempts, d.next_attempt_at \
             ) \
             SELECT upd.id, upd.event_id, upd.endpoint_id, upd.attempts, e.payload, e.received_at \
             FROM upd JOIN events e ON e.id = upd.event_id \
             ORDER BY upd.next_attempt_at, upd.id"
        ))
        .bind(busy)
        .bind(limit_param(limit))
        .bind(millis(lease))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(claimed_job).collect()
    }

    pub async fn next_due_at(&self) -> Result<Option<i64>, StoreError> {
        // On the caller's clock: it waits until then by its own.
        let at: Option<i64> = sqlx::query_scalar(concat!(
            "SELECT next_attempt_at - ",
            db_skew!("$1::int8"),
            " FROM deliveries WHERE status = 'pending' AND lease_until <= ",
            db_now!(),
            " AND endpoint_id NOT IN (SELECT endpoint_id FROM endpoint_state WHERE paused_at IS NOT NULL) \
             ORDER BY next_attempt_at LIMIT 1"
        ))
        .bind(self.clock.now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(at)
    }

    pub async fn release(&self, delivery_ids: &[i64]) -> Result<(), StoreError> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(RELEASE)
            .bind(delivery_ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn extend_leases(&self, delivery_ids: &[i64], lease: Duration) -> Result<(), StoreError> {
        if delivery_ids.is_empty() {
            return Ok(());
        }
        // Leases are on the database's clock, as the claims that set them.
        sqlx::query(concat!(
            "UPDATE deliveries SET lease_until = ",
            db_now!(),
            " + $2 WHERE status = 'pending' AND id = ANY($1) AND lease_until > ",
            db_now!()
        ))
        .bind(delivery_ids)
        .bind(millis(lease))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn defer(&self, job: JobRef, hold: Duration) -> Result<Option<i64>, StoreError> {
        // Leased on the database's clock; the due time comes back on the
        // caller's, which compares it with its own now.
        let due: Option<i64> = sqlx::query_scalar(concat!(
            "UPDATE deliveries SET lease_until = ",
            db_now!(),
            " + $3 WHERE id = $1 AND status = 'pending' AND attempts = $2 RETURNING next_attempt_at - ",
            db_skew!("$4::int8")
        ))
        .bind(job.delivery_id)
        .bind(i64::from(job.attempt) - 1)
        .bind(millis(hold))
        .bind(self.clock.now_ms())
        .fetch_optional(&self.pool)
        .await?;
        Ok(due)
    }

    pub async fn prune_nonces(&self, older_than_ms: i64) -> Result<u64, StoreError> {
        // The cut-off is on the caller's clock; `seen_at` on the database's.
        let r = sqlx::query(concat!(
            "DELETE FROM nonces WHERE seen_at < $1::int8 + ",
            db_skew!("$2::int8")
        ))
        .bind(older_than_ms)
        .bind(self.clock.now_ms())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    pub async fn count_pending(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub async fn outbox_claim(&self, limit: usize, lease: Duration) -> Result<Vec<OutboxItem>, StoreError> {
        // One statement: lease the rows, and read each one's event and its
        // pending jobs (as two arrays in the same order) from one snapshot.
        // The jobs are found by event only, and filtered on status in the
        // aggregate: with `status = 'pending'` in the WHERE clause the planner
        // ANDs in the partial index of *all* pending jobs, which costs a scan
        // of the whole retry backlog per outbox row.
        let rows = sqlx::query(concat!(
            "WITH picked AS MATERIALIZED ( \
                 SELECT id FROM outbox WHERE lease_until <= ",
            db_now!(),
            " ORDER BY id LIMIT $1 \
                 FOR UPDATE SKIP LOCKED \
             ), upd AS ( \
                 UPDATE outbox o SET lease_until = ",
            db_now!(),
            " + $2 FROM picked WHERE o.id = picked.id \
                 RETURNING o.id, o.event_id, o.publish_event \
             ) \
             SELECT upd.id, upd.event_id, upd.publish_event, e.provider, e.event_type, e.payload, \
                 COALESCE(j.job_ids, '{}') AS job_ids, COALESCE(j.job_attempts, '{}') AS job_attempts \
             FROM upd JOIN events e ON e.id = upd.event_id \
             CROSS JOIN LATERAL ( \
                 SELECT array_agg(d.id ORDER BY d.id) FILTER (WHERE d.status = 'pending') AS job_ids, \
                     array_agg(d.attempts ORDER BY d.id) FILTER (WHERE d.status = 'pending') AS job_attempts \
                 FROM deliveries d WHERE d.event_id = upd.event_id \
             ) j \
             ORDER BY upd.id"
        ))
        .bind(limit_param(limit))
        .bind(millis(lease))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let ids: Vec<i64> = row.try_get("job_ids")?;
                let attempts: Vec<i64> = row.try_get("job_attempts")?;
                if ids.len() != attempts.len() {
                    return Err(StoreError::Corrupt("outbox jobs".into()));
                }
                let jobs = ids
                    .into_iter()
                    .zip(attempts)
                    .map(|(delivery_id, attempts)| JobRef {
                        delivery_id,
                        attempt: u32::try_from(attempts.saturating_add(1)).unwrap_or(1),
                    })
                    .collect();
                let provider: String = row.try_get("provider")?;
                let event_type: String = row.try_get("event_type")?;
                Ok(OutboxItem {
                    outbox_id: row.try_get("id")?,
                    event_id: row.try_get("event_id")?,
                    routing_key: format!("{provider}.{event_type}"),
                    payload: row.try_get("payload")?,
                    jobs,
                    publish_event: row.try_get("publish_event")?,
                })
            })
            .collect()
    }

    pub async fn outbox_done(&self, outbox_ids: &[i64]) -> Result<(), StoreError> {
        if outbox_ids.is_empty() {
            return Ok(());
        }
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(outbox_ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn count_outbox(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// `requests` as one batch, in order (`Store::ingest_all`).
    pub async fn ingest_all(&self, requests: Vec<NewEvent>) -> Vec<Result<IngestOutcome, StoreError>> {
        let requests: Vec<IngestRequest> = requests
            .into_iter()
            .map(|new| IngestRequest { new, handoff: false })
            .collect();
        batcher::run_batched(&self.pool, &requests, self.clock.now_ms())
            .await
            .into_iter()
            .map(|r| r.map(|ingested| ingested.outcome))
            .collect()
    }

    /// `records` as one batch, in order (`Store::record_all`).
    pub async fn record_all(&self, records: Vec<AttemptRecord>) -> Vec<Result<RecordOutcome, StoreError>> {
        batcher::run_batched(&self.pool, &records, self.clock.now_ms()).await
    }

    /// `jobs` claimed as one batch, in order (`Store::claim_all`).
    pub async fn claim_all(&self, jobs: &[JobRef], lease: Duration) -> Vec<Result<JobClaim, StoreError>> {
        let requests: Vec<ClaimRequest> = jobs.iter().map(|&job| ClaimRequest { job, lease }).collect();
        batcher::run_batched(&self.pool, &requests, self.clock.now_ms()).await
    }

    /// Concurrent claims share one statement (`postgres/batcher.rs`).
    pub async fn claim_job(&self, job: JobRef, lease: Duration) -> Result<JobClaim, StoreError> {
        self.claims.run(ClaimRequest { job, lease }).await
    }

    pub async fn requeue_overdue(&self, due_before_ms: i64, limit: usize) -> Result<Vec<JobRef>, StoreError> {
        // The cut-off is on the caller's clock; leases and the new due time
        // on the database's.
        let rows = sqlx::query(concat!(
            "WITH picked AS MATERIALIZED ( \
                 SELECT id, next_attempt_at AS due FROM deliveries \
                 WHERE status = 'pending' AND next_attempt_at < $1::int8 + ",
            db_skew!("$3::int8"),
            " AND lease_until <= ",
            db_now!(),
            " AND endpoint_id NOT IN (SELECT endpoint_id FROM endpoint_state WHERE paused_at IS NOT NULL) \
                 ORDER BY next_attempt_at LIMIT $2 \
                 FOR UPDATE SKIP LOCKED \
             ) \
             UPDATE deliveries d SET next_attempt_at = ",
            db_now!(),
            " FROM picked WHERE d.id = picked.id \
             RETURNING d.id, d.attempts, picked.due"
        ))
        .bind(due_before_ms)
        .bind(limit_param(limit))
        .bind(self.clock.now_ms())
        .fetch_all(&self.pool)
        .await?;
        // RETURNING follows no order: republish in the order the jobs became
        // due (a resumed endpoint's backlog goes out oldest first).
        let mut due: Vec<(i64, JobRef)> = rows
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>("due")?, job_ref(r)?)))
            .collect::<Result<_, StoreError>>()?;
        due.sort_by_key(|(at, job)| (*at, job.delivery_id));
        Ok(due.into_iter().map(|(_, job)| job).collect())
    }
}

/// Takes one specific job: the single-row path, and the batch's fallback
/// for a job the batch did not take (which says why).
async fn claim_one(pool: &PgPool, job: JobRef, lease: Duration, now: i64) -> Result<JobClaim, StoreError> {
    // A concurrent claim of the same row waits for the first to commit,
    // then re-checks the conditions against the leased row and fails.
    let row = sqlx::query(concat!(
        "WITH upd AS ( \
             UPDATE deliveries SET lease_until = ",
        db_now!(),
        " + $1 \
             WHERE id = $2 AND status = 'pending' AND attempts = $3 AND lease_until <= ",
        db_now!(),
        " AND next_attempt_at <= ",
        db_now!(),
        " + $4 \
             RETURNING id, event_id, endpoint_id, attempts \
         ) \
         SELECT upd.id, upd.event_id, upd.endpoint_id, upd.attempts, e.payload, e.received_at \
         FROM upd JOIN events e ON e.id = upd.event_id"
    ))
    .bind(millis(lease))
    .bind(job.delivery_id)
    .bind(i64::from(job.attempt) - 1)
    .bind(DUE_TOLERANCE_MS)
    .fetch_optional(pool)
    .await?;
    if let Some(row) = row {
        return Ok(JobClaim::Claimed(claimed_job(&row)?));
    }
    // Why not, with the times on the caller's clock (it parks the job until
    // then by its own), and compared with the database's now on that clock.
    let state = sqlx::query(concat!(
        "SELECT status, attempts, next_attempt_at - ",
        db_skew!("$2::int8"),
        " AS next_attempt_at, lease_until - ",
        db_skew!("$2::int8"),
        " AS lease_until, ",
        db_now!(),
        " - ",
        db_skew!("$2::int8"),
        " AS now_ms FROM deliveries WHERE id = $1"
    ))
    .bind(job.delivery_id)
    .bind(now)
    .fetch_optional(pool)
    .await?;
    let now = match &state {
        Some(row) => row.try_get("now_ms")?,
        None => now,
    };
    classify_unclaimed_row(job, now, state)
}

/// What an ingest statement's two flags mean for `new` (a duplicate also
/// names the stored event, which takes one more read).
async fn ingest_outcome(
    pool: &PgPool,
    new: &NewEvent,
    fresh: bool,
    inserted: bool,
) -> Result<IngestOutcome, StoreError> {
    Ok(if !fresh {
        IngestOutcome::Replayed
    } else if inserted {
        IngestOutcome::Accepted {
            jobs: new.endpoints.len(),
        }
    } else {
        IngestOutcome::Duplicate {
            existing: existing_event(pool, new).await?,
        }
    })
}

/// The stored event with `new`'s dedup identity. READ COMMITTED: this
/// statement sees the row the conflicting transaction committed.
async fn existing_event(pool: &PgPool, new: &NewEvent) -> Result<Option<EventId>, StoreError> {
    let ev = &new.event;
    let existing: Option<String> = sqlx::query_scalar(
        "SELECT id FROM events WHERE account = $1 AND event_type = $2 AND provider_trade_no = $3 \
         AND dedup_extra = $4",
    )
    .bind(ev.account.as_str())
    .bind(ev.event_type.as_str())
    .bind(&ev.provider_trade_no)
    .bind(&new.dedup_extra)
    .fetch_optional(pool)
    .await?;
    Ok(existing.and_then(|id| EventId::parse(&id).ok()))
}

/// The attempt and the job's next step, as data-modifying CTEs. The update
/// applies only if nobody has moved the job on since this attempt was
/// claimed (attempt n may only follow n-1); a concurrent record of the same
/// attempt waits on the row lock, re-checks `attempts`, and is superseded.
///
/// `$10` is the retry's due time on the caller's clock, whose now is `$11`
/// (see `db_skew!`); NULL for "now" (delivered, dead).
pub const RECORD: &str = concat!(
    "\
    WITH a AS ( \
        INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome, http_status, error, \
            response_excerpt) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING \
    ), u AS ( \
        UPDATE deliveries SET status = $9, attempts = $2, next_attempt_at = COALESCE($10::int8 + ",
    db_skew!("$11::int8"),
    ", ",
    db_now!(),
    "), lease_until = 0, \
            updated_at = ",
    db_now!(),
    ", last_error = $7 \
        WHERE id = $1 AND status = 'pending' AND attempts = $12 RETURNING 1 \
    ) \
    SELECT count(*) AS applied FROM u"
);

async fn record_in(pool: &PgPool, rec: &AttemptRecord, now: i64) -> Result<RecordOutcome, StoreError> {
    let (status, next_at) = record_step(rec);
    let applied: i64 = sqlx::query_scalar(RECORD)
        .bind(rec.delivery_id)
        .bind(i64::from(rec.attempt))
        .bind(rec.started_at_ms)
        .bind(rec.duration_ms)
        .bind(rec.outcome.as_str())
        .bind(rec.http_status.map(i64::from))
        .bind(rec.error.as_deref())
        .bind(rec.response_excerpt.as_deref())
        .bind(status)
        .bind(next_at)
        .bind(now)
        .bind(i64::from(rec.attempt) - 1)
        .fetch_one(pool)
        .await?;
    Ok(if applied == 1 {
        RecordOutcome::Applied
    } else {
        RecordOutcome::Superseded
    })
}

/// The job's status and next due time after `rec`: a retry's on the
/// caller's clock, `None` for the database's now.
fn record_step(rec: &AttemptRecord) -> (&'static str, Option<i64>) {
    match rec.next {
        NextStep::Delivered => ("delivered", None),
        NextStep::RetryAt(at) => ("pending", Some(at)),
        NextStep::Dead => ("dead", None),
    }
}
