//! The statements of the writer's batches (see `writer.rs`): the ingests
//! and attempts of a batch in a few multi-row statements, and claims of due
//! jobs, all inside the batch's transaction.

use std::collections::{HashMap, HashSet};

use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};

use super::writer::{chunks, Claim};
use crate::domain::EventId;
use crate::store::{
    now_ms, AttemptRecord, ClaimedJob, IngestOutcome, NewEvent, NextStep, RecordOutcome, StoreError,
};

pub(super) async fn ingest_many(
    conn: &mut SqliteConnection,
    news: &[&NewEvent],
) -> Result<Vec<IngestOutcome>, StoreError> {
    let now = now_ms();
    let mut outcomes: Vec<Option<IngestOutcome>> = vec![None; news.len()];

    // Nonces: one already stored, or taken by an earlier write of this
    // batch, makes the callback a replay, and nothing else of it is written.
    let with_nonce: Vec<(usize, &str, &str)> = news
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            n.nonce
                .as_deref()
                .map(|nonce| (i, n.event.account.as_str(), nonce))
        })
        .collect();
    let mut fresh: HashSet<(String, String)> = HashSet::new();
    for chunk in chunks(&with_nonce) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO nonces (account, nonce, seen_at) ");
        q.push_values(chunk, |mut b, (_, account, nonce)| {
            b.push_bind(*account).push_bind(*nonce).push_bind(now);
        });
        q.push(" ON CONFLICT DO NOTHING RETURNING account, nonce");
        for row in q.build().fetch_all(&mut *conn).await? {
            fresh.insert((row.try_get("account")?, row.try_get("nonce")?));
        }
    }
    for (i, account, nonce) in &with_nonce {
        if !fresh.remove(&((*account).to_owned(), (*nonce).to_owned())) {
            outcomes[*i] = Some(IngestOutcome::Replayed);
        }
    }

    // Events: one whose dedup identity is already stored is a duplicate.
    let candidates: Vec<usize> = (0..news.len()).filter(|i| outcomes[*i].is_none()).collect();
    let mut inserted: HashSet<String> = HashSet::new();
    for chunk in chunks(&candidates) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO events (id, account, provider, event_type, provider_trade_no, dedup_extra, \
             merchant_order_no, payload, raw_body, raw_headers, received_at) ",
        );
        q.push_values(chunk, |mut b, i| {
            let new = news[*i];
            let ev = &new.event;
            b.push_bind(ev.id.as_str())
                .push_bind(ev.account.as_str())
                .push_bind(ev.provider.as_str())
                .push_bind(ev.event_type.as_str())
                .push_bind(ev.provider_trade_no.as_str())
                .push_bind(new.dedup_extra.as_str())
                .push_bind(ev.merchant_order_no.as_deref())
                .push_bind(new.payload.as_str())
                .push_bind(new.raw_body.as_slice())
                .push_bind(new.raw_headers.as_str())
                .push_bind(ev.received_at.timestamp_millis());
        });
        q.push(" ON CONFLICT DO NOTHING RETURNING id");
        for row in q.build().fetch_all(&mut *conn).await? {
            inserted.insert(row.try_get("id")?);
        }
    }
    for i in candidates {
        let new = news[i];
        let ev = &new.event;
        outcomes[i] = Some(if inserted.contains(ev.id.as_str()) {
            IngestOutcome::Accepted {
                jobs: new.endpoints.len(),
            }
        } else {
            let existing: Option<String> = sqlx::query_scalar(
                "SELECT id FROM events WHERE account = ?1 AND event_type = ?2 AND provider_trade_no = ?3 \
                 AND dedup_extra = ?4",
            )
            .bind(ev.account.as_str())
            .bind(ev.event_type.as_str())
            .bind(&ev.provider_trade_no)
            .bind(&new.dedup_extra)
            .fetch_optional(&mut *conn)
            .await?;
            IngestOutcome::Duplicate {
                existing: existing.and_then(|id| EventId::parse(&id).ok()),
            }
        });
    }

    // Delivery jobs and outbox rows of the accepted events, in batch order.
    let accepted: Vec<&NewEvent> = news
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, Some(IngestOutcome::Accepted { .. })))
        .map(|(n, _)| *n)
        .collect();
    let jobs: Vec<(&str, &str)> = accepted
        .iter()
        .flat_map(|n| n.endpoints.iter().map(|e| (n.event.id.as_str(), e.as_str())))
        .collect();
    for chunk in chunks(&jobs) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO deliveries (event_id, endpoint_id, status, attempts, next_attempt_at, lease_until, \
             created_at, updated_at) ",
        );
        q.push_values(chunk, |mut b, (event_id, endpoint)| {
            b.push_bind(*event_id)
                .push_bind(*endpoint)
                .push("'pending'")
                .push("0")
                .push_bind(now)
                .push("0")
                .push_bind(now)
                .push_bind(now);
        });
        q.build().execute(&mut *conn).await?;
    }
    let outbox: Vec<&str> = accepted
        .iter()
        .filter(|n| n.outbox)
        .map(|n| n.event.id.as_str())
        .collect();
    for chunk in chunks(&outbox) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("INSERT INTO outbox (event_id, created_at) ");
        q.push_values(chunk, |mut b, event_id| {
            b.push_bind(*event_id).push_bind(now);
        });
        q.build().execute(&mut *conn).await?;
    }
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| StoreError::Corrupt("ingest without outcome".into())))
        .collect()
}

fn step(rec: &AttemptRecord, now: i64) -> (&'static str, i64) {
    match rec.next {
        NextStep::Delivered => ("delivered", now),
        NextStep::RetryAt(at) => ("pending", at),
        NextStep::Dead => ("dead", now),
    }
}

pub(super) async fn record_many(
    conn: &mut SqliteConnection,
    recs: &[&AttemptRecord],
) -> Result<Vec<RecordOutcome>, StoreError> {
    let distinct: HashSet<i64> = recs.iter().map(|r| r.delivery_id).collect();
    if distinct.len() != recs.len() {
        // Two attempts at one job in a batch (a lease ran out meanwhile):
        // one by one, so that the first is applied and the second superseded.
        let mut out = Vec::with_capacity(recs.len());
        for rec in recs {
            out.push(record_one(conn, rec).await?);
        }
        return Ok(out);
    }
    let now = now_ms();
    for chunk in chunks(recs) {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome, http_status, \
             error, response_excerpt) ",
        );
        q.push_values(chunk, |mut b, rec| {
            b.push_bind(rec.delivery_id)
                .push_bind(i64::from(rec.attempt))
                .push_bind(rec.started_at_ms)
                .push_bind(rec.duration_ms)
                .push_bind(rec.outcome.as_str())
                .push_bind(rec.http_status.map(i64::from))
                .push_bind(rec.error.as_deref())
                .push_bind(rec.response_excerpt.as_deref());
        });
        q.push(" ON CONFLICT DO NOTHING");
        q.build().execute(&mut *conn).await?;
    }
    // Applied only if nobody has moved the job on since this attempt was
    // claimed (attempt n may only follow n-1).
    let mut applied: HashSet<i64> = HashSet::new();
    for chunk in chunks(recs) {
        let mut q: QueryBuilder<Sqlite> =
            QueryBuilder::new("WITH v (id, status, attempt, next_at, error) AS (");
        q.push_values(chunk, |mut b, rec| {
            let (status, next_at) = step(rec, now);
            b.push_bind(rec.delivery_id)
                .push_bind(status)
                .push_bind(i64::from(rec.attempt))
                .push_bind(next_at)
                .push_bind(rec.error.as_deref());
        });
        q.push(
            ") UPDATE deliveries SET status = v.status, attempts = v.attempt, next_attempt_at = v.next_at, \
             lease_until = 0, updated_at = ",
        );
        q.push_bind(now);
        q.push(
            ", last_error = v.error FROM v WHERE deliveries.id = v.id AND deliveries.status = 'pending' \
             AND deliveries.attempts = v.attempt - 1 RETURNING deliveries.id",
        );
        for row in q.build().fetch_all(&mut *conn).await? {
            applied.insert(row.try_get(0)?);
        }
    }
    Ok(recs
        .iter()
        .map(|r| {
            if applied.contains(&r.delivery_id) {
                RecordOutcome::Applied
            } else {
                RecordOutcome::Superseded
            }
        })
        .collect())
}

async fn record_one(conn: &mut SqliteConnection, rec: &AttemptRecord) -> Result<RecordOutcome, StoreError> {
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
    let (status, next_at) = step(rec, now);
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

/// Leases up to `claim.limit` due jobs, skipping busy endpoints, and reads
/// their events.
pub(super) async fn claim_in(
    conn: &mut SqliteConnection,
    claim: &Claim,
) -> Result<Vec<ClaimedJob>, StoreError> {
    let (limit, busy) = (claim.limit, &claim.busy);
    let now = now_ms();
    let lease_until = now.saturating_add(claim.lease_ms);
    // `INDEXED BY`: the partial index of pending jobs by due time. Left to
    // itself (no ANALYZE statistics) SQLite picks `deliveries_status`
    // and sorts every pending row, which with a large retry backlog
    // (pending jobs due much later) costs a full scan per claim.
    let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("UPDATE deliveries SET lease_until = ");
    q.push_bind(lease_until);
    q.push(
        " WHERE id IN (SELECT id FROM deliveries INDEXED BY deliveries_due \
         WHERE status = 'pending' AND next_attempt_at <= ",
    );
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
    q.push(") RETURNING id, event_id, endpoint_id, attempts, next_attempt_at");
    let rows = q.build().fetch_all(&mut *conn).await?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let mut leased = Vec::with_capacity(rows.len());
    for row in rows {
        let event_id: String = row.try_get("event_id")?;
        let attempts: i64 = row.try_get("attempts")?;
        let due: i64 = row.try_get("next_attempt_at")?;
        let delivery_id: i64 = row.try_get("id")?;
        let endpoint_id: String = row.try_get("endpoint_id")?;
        leased.push((due, delivery_id, event_id, endpoint_id, attempts));
    }
    // RETURNING does not keep the subquery's order: earliest due first.
    leased.sort_by_key(|(due, id, ..)| (*due, *id));
    // The events, all in one statement (not one per job, and not as a
    // subquery of RETURNING, which SQLite runs as a scan of `events`).
    let ids: Vec<&str> = leased
        .iter()
        .map(|(_, _, event_id, ..)| event_id.as_str())
        .collect();
    let ids = serde_json::to_string(&ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut events = HashMap::new();
    for row in sqlx::query(
        "SELECT id, payload, received_at FROM events WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(ids)
    .fetch_all(&mut *conn)
    .await?
    {
        let id: String = row.try_get("id")?;
        let payload: String = row.try_get("payload")?;
        let received_at: i64 = row.try_get("received_at")?;
        events.insert(id, (payload, received_at));
    }
    leased
        .into_iter()
        .map(|(_, delivery_id, event_id, endpoint_id, attempts)| {
            let (payload, received_at_ms) = events
                .get(&event_id)
                .cloned()
                .ok_or_else(|| StoreError::Corrupt(format!("delivery of missing event {event_id}")))?;
            Ok(ClaimedJob {
                delivery_id,
                endpoint_id,
                attempt: u32::try_from(attempts + 1).map_err(|_| StoreError::Corrupt("attempts".into()))?,
                payload,
                received_at_ms,
                event_id,
            })
        })
        .collect()
}
