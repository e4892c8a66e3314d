//! The three writes that happen once per event or more (ingest, job claim,
//! attempt record) as multi-row statements, for the batcher. The claim and
//! the record are the single-row statements of `postgres.rs` over
//! `unnest`ed arrays, so the rules (the attempt order, lease checks) are the
//! same SQL; the ingest exists only here, and a lone ingest is a batch of
//! one.

use std::time::Duration;

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::batcher::{rounds, Batched};
use super::{claim_one, claimed_job, ingest_outcome, record_in, record_step};
use crate::store::{
    millis, AttemptRecord, ClaimedJob, IngestOutcome, JobClaim, JobRef, NewEvent, OutboxItem, RecordOutcome,
    StoreError, DUE_TOLERANCE_MS, OUTBOX_LEASE,
};

/// The ingest as data-modifying CTEs over arrays (every one of them runs to
/// completion, in one snapshot):
/// - `nonce`: a nonce already stored is a replay. A concurrent insert of the
///   same nonce waits for the other statement, then does nothing: exactly one
///   of them is accepted;
/// - `ev`: only for a fresh nonce (or none); a dedup identity already stored
///   makes it a duplicate (which still remembers its nonce, as in SQLite);
/// - `dl`, `ob`: the delivery jobs, in endpoint order, and the outbox row
///   (leased for `$13` ms: NULL, lease 0, for any publisher's scan; a lease
///   when it is handed to this process's publisher in memory), only for an
///   event inserted.
///
/// Nonces, due times and leases are on the database's clock (`db_now!`).
///
/// `$15`/`$16` list the delivery jobs as (1-based index of the event in the
/// batch, endpoint), in order. Returns, per input row in order, whether its
/// nonce was fresh, whether its event was inserted, and its outbox row and
/// job ids. The caller keeps requests that share a nonce or a dedup
/// identity in different statements, so each row's `RETURNING` is its own
/// and the joins back to `input` match at most one row. (Joins, not
/// `EXISTS` in the select list: that would scan the CTE once per row.)
const INGEST_MANY: &str = concat!(
    "\
    WITH input AS MATERIALIZED ( \
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
            $7::text[], $8::text[], $9::bytea[], $10::text[], $11::int8[], $12::text[], $14::bool[]) \
            WITH ORDINALITY AS i (id, account, provider, event_type, provider_trade_no, dedup_extra, \
                merchant_order_no, payload, raw_body, raw_headers, received_at, nonce, outbox, ord) \
    ), nonce AS ( \
        INSERT INTO nonces (account, nonce, seen_at) \
        SELECT account, nonce, ",
    db_now!(),
    " FROM input WHERE nonce IS NOT NULL ORDER BY ord \
        ON CONFLICT DO NOTHING RETURNING account, nonce \
    ), fresh AS MATERIALIZED ( \
        SELECT i.ord, (i.nonce IS NULL OR n.nonce IS NOT NULL) AS fresh \
        FROM input i LEFT JOIN nonce n ON n.account = i.account AND n.nonce = i.nonce \
    ), ev AS ( \
        INSERT INTO events (id, account, provider, event_type, provider_trade_no, dedup_extra, \
            merchant_order_no, payload, raw_body, raw_headers, received_at) \
        SELECT i.id, i.account, i.provider, i.event_type, i.provider_trade_no, i.dedup_extra, \
            i.merchant_order_no, i.payload, i.raw_body, i.raw_headers, i.received_at \
        FROM input i JOIN fresh f ON f.ord = i.ord WHERE f.fresh ORDER BY i.ord \
        ON CONFLICT DO NOTHING RETURNING id \
    ), dl AS ( \
        INSERT INTO deliveries (event_id, endpoint_id, status, attempts, next_attempt_at, lease_until, \
            created_at, updated_at) \
        SELECT i.id, d.endpoint_id, 'pending', 0, ",
    db_now!(),
    ", 0, ",
    db_now!(),
    ", ",
    db_now!(),
    " \
        FROM unnest($15::int8[], $16::text[]) WITH ORDINALITY AS d (idx, endpoint_id, ord) \
        JOIN input i ON i.ord = d.idx JOIN ev ON ev.id = i.id ORDER BY d.ord \
        RETURNING id, event_id \
    ), ob AS ( \
        INSERT INTO outbox (event_id, created_at, lease_until) \
        SELECT i.id, ",
    db_now!(),
    ", COALESCE(",
    db_now!(),
    " + $13::int8, 0) FROM input i JOIN ev ON ev.id = i.id WHERE i.outbox ORDER BY i.ord \
        RETURNING id, event_id \
    ), jobs AS ( \
        SELECT event_id, array_agg(id ORDER BY id) AS ids FROM dl GROUP BY event_id \
    ) \
    SELECT f.fresh, ev.id IS NOT NULL AS inserted, ob.id AS outbox_id, jobs.ids AS job_ids \
    FROM input i JOIN fresh f ON f.ord = i.ord LEFT JOIN ev ON ev.id = i.id \
    LEFT JOIN ob ON ob.event_id = i.id LEFT JOIN jobs ON jobs.event_id = i.id ORDER BY i.ord"
);

/// An ingest as the batcher runs it.
pub(in crate::store) struct IngestRequest {
    pub new: NewEvent,
    /// Lease the outbox row to this process's publisher, and hand it over in
    /// memory ([`Ingested::handoff`]) instead of leaving it to the scan.
    pub handoff: bool,
}

pub(in crate::store) struct Ingested {
    pub outcome: IngestOutcome,
    /// The outbox row as the publisher needs it, for a handed-off ingest
    /// that wrote one.
    pub handoff: Option<OutboxItem>,
}

/// What the ingest statement says about one event.
struct IngestRow {
    fresh: bool,
    inserted: bool,
    outbox_id: Option<i64>,
    job_ids: Option<Vec<i64>>,
}

/// What two ingests may share, which keeps them out of one statement.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum IngestKey<'a> {
    /// Account, event type, provider trade number, dedup extra.
    Dedup(&'a str, &'a str, &'a str, &'a str),
    /// Account, nonce.
    Nonce(&'a str, &'a str),
}

impl Batched for IngestRequest {
    type Output = Ingested;

    async fn run_batch(
        pool: &PgPool,
        batch: &[Self],
        _now: i64,
    ) -> Vec<Option<Result<Ingested, StoreError>>> {
        let plan = rounds(batch, |req| {
            let new = &req.new;
            let ev = &new.event;
            let dedup = IngestKey::Dedup(
                ev.account.as_str(),
                ev.event_type.as_str(),
                &ev.provider_trade_no,
                &new.dedup_extra,
            );
            let nonce = new
                .nonce
                .as_deref()
                .map(|n| IngestKey::Nonce(ev.account.as_str(), n));
            std::iter::once(dedup).chain(nonce)
        });
        let mut outputs: Vec<Option<Result<Ingested, StoreError>>> =
            std::iter::repeat_with(|| None).take(batch.len()).collect();
        for round in plan {
            let items: Vec<&IngestRequest> = round.iter().map(|&i| &batch[i]).collect();
            // Each round is a statement and a commit of its own. One that
            // fails stops the batch: its requests and the later rounds' run
            // again alone, while those of the rounds before keep the answer
            // of their commit (run again, a stored callback would find its
            // own nonce and be refused as a replay).
            let Some(rows) = committed(ingest_statement(pool, &items).await, "ingest") else {
                break;
            };
            match ingest_rows(&rows, items.len()) {
                Ok(rows) => {
                    for ((&index, req), row) in round.iter().zip(&items).zip(rows) {
                        outputs[index] = Some(ingested(pool, req, row).await);
                    }
                }
                // Committed, but unreadable: an error for each (never a
                // second run of what is stored).
                Err(e) => {
                    for &index in &round {
                        outputs[index] = Some(Err(StoreError::Corrupt(e.to_string())));
                    }
                }
            }
        }
        outputs
    }

    async fn run_one(pool: &PgPool, one: &Self, _now: i64) -> Result<Ingested, StoreError> {
        let rows = ingest_rows(&ingest_statement(pool, &[one]).await?, 1)?;
        let row = rows
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::Corrupt("missing ingest result".into()))?;
        ingested(pool, one, row).await
    }
}

/// The outcome of `req`, and its outbox row for the publisher if handed off.
async fn ingested(pool: &PgPool, req: &IngestRequest, row: IngestRow) -> Result<Ingested, StoreError> {
    let outcome = ingest_outcome(pool, &req.new, row.fresh, row.inserted).await?;
    let handoff = match (req.handoff, row.outbox_id) {
        (true, Some(outbox_id)) => {
            let ev = &req.new.event;
            Some(OutboxItem {
                outbox_id,
                event_id: ev.id.as_str().to_owned(),
                routing_key: format!("{}.{}", ev.provider.as_str(), ev.event_type.as_str()),
                payload: req.new.payload.clone(),
                // Fresh jobs: their first attempt.
                jobs: row
                    .job_ids
                    .unwrap_or_default()
                    .into_iter()
                    .map(|delivery_id| JobRef {
                        delivery_id,
                        attempt: 1,
                    })
                    .collect(),
                publish_event: true,
            })
        }
        _ => None,
    };
    Ok(Ingested { outcome, handoff })
}

/// One statement (and commit) for requests with no key in common: an error
/// means nothing of it was stored.
async fn ingest_statement(pool: &PgPool, items: &[&IngestRequest]) -> Result<Vec<PgRow>, StoreError> {
    let n = items.len();
    // One lease for the batch: all its requests come from one store, which
    // hands off all or none.
    let lease = items.iter().any(|r| r.handoff).then(|| millis(OUTBOX_LEASE));
    let mut cols = IngestColumns::with_capacity(n);
    for (index, req) in items.iter().enumerate() {
        let new = &req.new;
        let ev = &new.event;
        cols.ids.push(ev.id.as_str());
        cols.accounts.push(ev.account.as_str());
        cols.providers.push(ev.provider.as_str());
        cols.event_types.push(ev.event_type.as_str());
        cols.trade_nos.push(&ev.provider_trade_no);
        cols.dedup_extras.push(&new.dedup_extra);
        cols.merchant_order_nos.push(ev.merchant_order_no.as_deref());
        cols.payloads.push(&new.payload);
        cols.raw_bodies.push(&new.raw_body);
        cols.raw_headers.push(&new.raw_headers);
        cols.received_ats.push(ev.received_at.timestamp_millis());
        cols.nonces.push(new.nonce.as_deref());
        cols.outbox.push(new.outbox);
        let ordinal = i64::try_from(index + 1).map_err(|_| StoreError::Corrupt("batch size".into()))?;
        for endpoint in &new.endpoints {
            cols.job_events.push(ordinal);
            cols.job_endpoints.push(endpoint.as_str());
        }
    }
    let rows = sqlx::query(INGEST_MANY)
        .bind(cols.ids)
        .bind(cols.accounts)
        .bind(cols.providers)
        .bind(cols.event_types)
        .bind(cols.trade_nos)
        .bind(cols.dedup_extras)
        .bind(cols.merchant_order_nos)
        .bind(cols.payloads)
        .bind(cols.raw_bodies)
        .bind(cols.raw_headers)
        .bind(cols.received_ats)
        .bind(cols.nonces)
        .bind(lease)
        .bind(cols.outbox)
        .bind(cols.job_events)
        .bind(cols.job_endpoints)
        .fetch_all(pool)
        .await?;
    Ok(rows)
}

/// The committed ingest statement's rows, one per request.
fn ingest_rows(rows: &[PgRow], n: usize) -> Result<Vec<IngestRow>, StoreError> {
    if rows.len() != n {
        return Err(StoreError::Corrupt("ingest batch result".into()));
    }
    rows.iter()
        .map(|r| {
            Ok(IngestRow {
                fresh: r.try_get("fresh")?,
                inserted: r.try_get("inserted")?,
                outbox_id: r.try_get("outbox_id")?,
                job_ids: r.try_get("job_ids")?,
            })
        })
        .collect()
}

/// The ingest statement's arrays, one element per event (jobs: per job).
struct IngestColumns<'a> {
    ids: Vec<&'a str>,
    accounts: Vec<&'a str>,
    providers: Vec<&'a str>,
    event_types: Vec<&'a str>,
    trade_nos: Vec<&'a str>,
    dedup_extras: Vec<&'a str>,
    merchant_order_nos: Vec<Option<&'a str>>,
    payloads: Vec<&'a str>,
    raw_bodies: Vec<&'a [u8]>,
    raw_headers: Vec<&'a str>,
    received_ats: Vec<i64>,
    nonces: Vec<Option<&'a str>>,
    outbox: Vec<bool>,
    job_events: Vec<i64>,
    job_endpoints: Vec<&'a str>,
}

impl IngestColumns<'_> {
    fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            accounts: Vec::with_capacity(n),
            providers: Vec::with_capacity(n),
            event_types: Vec::with_capacity(n),
            trade_nos: Vec::with_capacity(n),
            dedup_extras: Vec::with_capacity(n),
            merchant_order_nos: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
            raw_bodies: Vec::with_capacity(n),
            raw_headers: Vec::with_capacity(n),
            received_ats: Vec::with_capacity(n),
            nonces: Vec::with_capacity(n),
            outbox: Vec::with_capacity(n),
            job_events: Vec::with_capacity(n),
            job_endpoints: Vec::with_capacity(n),
        }
    }
}

/// `RECORD` over arrays: per input row in order, whether its update applied.
/// `$10` and `$11` as in `RECORD`: due times on the caller's clock (NULL:
/// the database's now), and the caller's now.
/// Written, like `CLAIM_MANY`, so that the rows are found by id whatever the
/// statistics (`d.id = ANY($1)`, and the status compared with `r.open`).
pub const RECORD_MANY: &str = concat!(
    "\
    WITH input AS MATERIALIZED ( \
        SELECT *, 'pending'::text AS open \
        FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::text[], $6::int8[], \
            $7::text[], $8::text[], $9::text[], $10::int8[]) \
            WITH ORDINALITY AS r (delivery_id, attempt, started_at, duration_ms, outcome, http_status, \
                error, response_excerpt, status, next_at, ord) \
    ), a AS ( \
        INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome, http_status, error, \
            response_excerpt) \
        SELECT delivery_id, attempt, started_at, duration_ms, outcome, http_status, error, response_excerpt \
        FROM input ORDER BY ord ON CONFLICT DO NOTHING \
    ), u AS ( \
        UPDATE deliveries d SET status = r.status, attempts = r.attempt, \
            next_attempt_at = COALESCE(r.next_at + ",
    db_skew!("$11::int8"),
    ", ",
    db_now!(),
    "), lease_until = 0, updated_at = ",
    db_now!(),
    ", last_error = r.error \
        FROM input r \
        WHERE d.id = ANY($1) AND d.id = r.delivery_id AND d.status = r.open \
        AND d.attempts = r.attempt - 1 \
        RETURNING d.id \
    ) \
    SELECT u.id IS NOT NULL AS applied FROM input r LEFT JOIN u ON u.id = r.delivery_id ORDER BY r.ord"
);

impl Batched for AttemptRecord {
    type Output = RecordOutcome;

    async fn run_batch(
        pool: &PgPool,
        batch: &[Self],
        now: i64,
    ) -> Vec<Option<Result<RecordOutcome, StoreError>>> {
        let mut outcomes: Vec<Option<Result<RecordOutcome, StoreError>>> =
            std::iter::repeat_with(|| None).take(batch.len()).collect();
        for round in rounds(batch, |rec| [rec.delivery_id]) {
            let items: Vec<&AttemptRecord> = round.iter().map(|&i| &batch[i]).collect();
            let steps: Vec<(&str, Option<i64>)> = items.iter().map(|rec| record_step(rec)).collect();
            let rows = sqlx::query(RECORD_MANY)
                .bind(items.iter().map(|r| r.delivery_id).collect::<Vec<_>>())
                .bind(items.iter().map(|r| i64::from(r.attempt)).collect::<Vec<_>>())
                .bind(items.iter().map(|r| r.started_at_ms).collect::<Vec<_>>())
                .bind(items.iter().map(|r| r.duration_ms).collect::<Vec<_>>())
                .bind(items.iter().map(|r| r.outcome.as_str()).collect::<Vec<_>>())
                .bind(
                    items
                        .iter()
                        .map(|r| r.http_status.map(i64::from))
                        .collect::<Vec<_>>(),
                )
                .bind(items.iter().map(|r| r.error.as_deref()).collect::<Vec<_>>())
                .bind(
                    items
                        .iter()
                        .map(|r| r.response_excerpt.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(steps.iter().map(|s| s.1).collect::<Vec<_>>())
                .bind(now)
                .fetch_all(pool)
                .await;
            // As for ingests: a round that failed stored nothing, and it and
            // the later rounds run again alone; earlier rounds keep the
            // answer of their commit.
            let Some(rows) = committed(rows, "write") else {
                break;
            };
            if rows.len() != items.len() {
                for &index in &round {
                    outcomes[index] = Some(Err(StoreError::Corrupt("record batch result".into())));
                }
                continue;
            }
            for (&index, row) in round.iter().zip(&rows) {
                outcomes[index] = Some(match row.try_get::<bool, _>("applied") {
                    Ok(true) => Ok(RecordOutcome::Applied),
                    Ok(false) => Ok(RecordOutcome::Superseded),
                    Err(e) => Err(e.into()),
                });
            }
        }
        outcomes
    }

    async fn run_one(pool: &PgPool, one: &Self, now: i64) -> Result<RecordOutcome, StoreError> {
        record_in(pool, one, now).await
    }
}

/// A request to take one specific job (`PostgresStore::claim_job`).
pub(super) struct ClaimRequest {
    pub job: JobRef,
    pub lease: Duration,
}

/// `claim_job`'s lease over arrays: the jobs it took (any order). A job not
/// taken here goes through `claim_one`, which tries once more and says why.
///
/// The statement is written so that its only sensible plan reads the
/// requested rows by id, whatever the table's statistics say:
/// - `d.id = ANY($1)` repeats the join: with the join alone, PostgreSQL
///   could hash-join the whole partial index of due jobs;
/// - the status is compared with the input's `open` column (a join clause),
///   not with the literal `'pending'`: a literal would let the planner prove
///   `deliveries_due`'s predicate and scan that index whole. It did whenever
///   the statistics were stale or missing (never analyzed: autovacuum off,
///   or a backlog that grew since the last `ANALYZE`), because it then
///   guesses that 0.5 % of jobs are pending: an attempt record for 3 jobs
///   read 19,711 index entries and 788 heap pages.
///
/// `$3` holds each lease's length in ms and `$4` the due tolerance: leases
/// and due times are on the database's clock.
pub const CLAIM_MANY: &str = concat!(
    "\
    WITH input AS MATERIALIZED ( \
        SELECT *, 'pending'::text AS open \
        FROM unnest($1::int8[], $2::int8[], $3::int8[]) AS j (id, attempts, lease_ms) \
    ), upd AS ( \
        UPDATE deliveries d SET lease_until = ",
    db_now!(),
    " + j.lease_ms FROM input j \
        WHERE d.id = ANY($1) AND d.id = j.id AND d.status = j.open AND d.attempts = j.attempts \
        AND d.lease_until <= ",
    db_now!(),
    " AND d.next_attempt_at <= ",
    db_now!(),
    " + $4::int8 \
        RETURNING d.id, d.event_id, d.endpoint_id, d.attempts \
    ) \
    SELECT upd.id, upd.event_id, upd.endpoint_id, upd.attempts, e.payload, e.received_at \
    FROM upd JOIN events e ON e.id = upd.event_id"
);

impl Batched for ClaimRequest {
    type Output = JobClaim;

    async fn run_batch(pool: &PgPool, batch: &[Self], now: i64) -> Vec<Option<Result<JobClaim, StoreError>>> {
        let mut outcomes: Vec<Option<Result<JobClaim, StoreError>>> =
            std::iter::repeat_with(|| None).take(batch.len()).collect();
        for round in rounds(batch, |c| [c.job.delivery_id]) {
            let items: Vec<&ClaimRequest> = round.iter().map(|&i| &batch[i]).collect();
            let rows = sqlx::query(CLAIM_MANY)
                .bind(items.iter().map(|c| c.job.delivery_id).collect::<Vec<_>>())
                .bind(
                    items
                        .iter()
                        .map(|c| i64::from(c.job.attempt) - 1)
                        .collect::<Vec<_>>(),
                )
                .bind(items.iter().map(|c| millis(c.lease)).collect::<Vec<_>>())
                .bind(DUE_TOLERANCE_MS)
                .fetch_all(pool)
                .await;
            // As for ingests: a round that failed leased nothing, and it and
            // the later rounds run again alone; earlier rounds keep their
            // leases and answers.
            let Some(rows) = committed(rows, "write") else {
                break;
            };
            let claimed: Result<std::collections::HashMap<i64, ClaimedJob>, StoreError> = rows
                .iter()
                .map(|row| claimed_job(row).map(|job| (job.delivery_id, job)))
                .collect();
            let mut claimed = match claimed {
                Ok(claimed) => claimed,
                Err(e) => {
                    // Leased, but unreadable: the leases run out.
                    for &index in &round {
                        outcomes[index] = Some(Err(StoreError::Corrupt(e.to_string())));
                    }
                    continue;
                }
            };
            for (&index, item) in round.iter().zip(&items) {
                outcomes[index] = Some(match claimed.remove(&item.job.delivery_id) {
                    Some(job) => Ok(JobClaim::Claimed(job)),
                    // Not taken: why is the single path's business.
                    None => claim_one(pool, item.job, item.lease, now).await,
                });
            }
        }
        outcomes
    }

    async fn run_one(pool: &PgPool, one: &Self, now: i64) -> Result<JobClaim, StoreError> {
        claim_one(pool, one.job, one.lease, now).await
    }
}

/// A round's rows, or `None` when its statement failed: then it stored
/// nothing, and its requests (and the later rounds') run again alone. The
/// failure is logged, since a failing round costs the batch its grouping.
fn committed<T, E: std::fmt::Display>(rows: Result<T, E>, what: &'static str) -> Option<T> {
    match rows {
        Ok(rows) => Some(rows),
        Err(e) => {
            tracing::warn!(error = %e, what, "a batched statement failed; its requests run again alone");
            None
        }
    }
}
