//! The statements of the writer's batches (see `writer.rs`): the ingests
//! and attempts of a batch in a few multi-row statements, and claims of due
//! jobs, all inside the batch's transaction. Synchronous (`rusqlite`): the
//! writer owns its connection on a thread of its own.

use std::collections::{HashMap, HashSet};

use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{params_from_iter, Connection};

use super::writer::{chunks, Claim};
use crate::domain::EventId;
use crate::store::{AttemptRecord, ClaimedJob, IngestOutcome, NewEvent, NextStep, RecordOutcome, StoreError};

type Param<'a> = ToSqlOutput<'a>;

fn text(s: &str) -> Param<'_> {
    ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
}

fn opt_text(s: Option<&str>) -> Param<'_> {
    s.map_or(ToSqlOutput::Owned(Value::Null), text)
}

fn int<'a>(n: i64) -> Param<'a> {
    ToSqlOutput::Owned(Value::Integer(n))
}

fn opt_int<'a>(n: Option<i64>) -> Param<'a> {
    ToSqlOutput::Owned(n.map_or(Value::Null, Value::Integer))
}

fn blob(b: &[u8]) -> Param<'_> {
    ToSqlOutput::Borrowed(ValueRef::Blob(b))
}

/// `head` followed by `rows` groups of `row` (e.g. `(?, ?, ?)`), comma-separated.
fn multi_row(head: &str, row: &str, rows: usize, tail: &str) -> String {
    let mut sql = String::with_capacity(head.len() + rows * (row.len() + 2) + tail.len());
    sql.push_str(head);
    for i in 0..rows {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(row);
    }
    sql.push_str(tail);
    sql
}

/// Runs a statement (cached per SQL text) and maps every returned row.
fn query_rows<T>(
    conn: &Connection,
    sql: &str,
    params: &[Param<'_>],
    mut map: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params_from_iter(params.iter()))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(map(row)?);
    }
    Ok(out)
}

/// The first column of every returned row.
fn returning<T: rusqlite::types::FromSql>(
    conn: &Connection,
    sql: &str,
    params: &[Param<'_>],
) -> Result<Vec<T>, StoreError> {
    query_rows(conn, sql, params, |row| row.get(0))
}

fn execute(conn: &Connection, sql: &str, params: &[Param<'_>]) -> Result<usize, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    Ok(stmt.execute(params_from_iter(params.iter()))?)
}

pub(super) fn ingest_many(
    conn: &Connection,
    news: &[&NewEvent],
    now: i64,
) -> Result<Vec<IngestOutcome>, StoreError> {
    let mut outcomes: Vec<Option<IngestOutcome>> = vec![None; news.len()];
    mark_replays(conn, news, now, &mut outcomes)?;
    insert_events(conn, news, &mut outcomes)?;
    // Delivery jobs and outbox rows of the accepted events, in batch order.
    let accepted: Vec<&NewEvent> = news
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, Some(IngestOutcome::Accepted { .. })))
        .map(|(n, _)| *n)
        .collect();
    insert_jobs(conn, &accepted, now)?;
    outcomes
        .into_iter()
        .map(|o| o.ok_or_else(|| StoreError::Corrupt("ingest without outcome".into())))
        .collect()
}

/// Nonces: one already stored, or taken by an earlier write of this batch,
/// makes the callback a replay, and nothing else of it is written.
fn mark_replays(
    conn: &Connection,
    news: &[&NewEvent],
    now: i64,
    outcomes: &mut [Option<IngestOutcome>],
) -> Result<(), StoreError> {
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
        let sql = multi_row(
            "INSERT INTO nonces (account, nonce, seen_at) VALUES ",
            "(?, ?, ?)",
            chunk.len(),
            " ON CONFLICT DO NOTHING RETURNING account, nonce",
        );
        let mut params = Vec::with_capacity(chunk.len() * 3);
        for (_, account, nonce) in chunk {
            params.extend([text(account), text(nonce), int(now)]);
        }
        fresh.extend(query_rows(conn, &sql, &params, |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?);
    }
    for (i, account, nonce) in &with_nonce {
        if !fresh.remove(&((*account).to_owned(), (*nonce).to_owned())) {
            outcomes[*i] = Some(IngestOutcome::Replayed);
        }
    }
    Ok(())
}

/// Events not replayed: one whose dedup identity is already stored is a
/// duplicate (answered with the stored event's id), the rest are accepted.
fn insert_events(
    conn: &Connection,
    news: &[&NewEvent],
    outcomes: &mut [Option<IngestOutcome>],
) -> Result<(), StoreError> {
    let candidates: Vec<usize> = (0..news.len()).filter(|i| outcomes[*i].is_none()).collect();
    let mut inserted: HashSet<String> = HashSet::new();
    for chunk in chunks(&candidates) {
        let sql = multi_row(
            "INSERT INTO events (id, account, provider, event_type, provider_trade_no, dedup_extra, \
             merchant_order_no, payload, raw_body, raw_headers, received_at) VALUES ",
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            chunk.len(),
            " ON CONFLICT DO NOTHING RETURNING id",
        );
        let mut params = Vec::with_capacity(chunk.len() * 11);
        for i in chunk {
            let new = news[*i];
            let ev = &new.event;
            params.extend([
                text(ev.id.as_str()),
                text(ev.account.as_str()),
                text(ev.provider.as_str()),
                text(ev.event_type.as_str()),
                text(&ev.provider_trade_no),
                text(&new.dedup_extra),
                opt_text(ev.merchant_order_no.as_deref()),
                text(&new.payload),
                blob(&new.raw_body),
                text(&new.raw_headers),
                int(ev.received_at.timestamp_millis()),
            ]);
        }
        inserted.extend(returning::<String>(conn, &sql, &params)?);
    }
    for i in candidates {
        let new = news[i];
        let ev = &new.event;
        outcomes[i] = Some(if inserted.contains(ev.id.as_str()) {
            IngestOutcome::Accepted {
                jobs: new.endpoints.len(),
            }
        } else {
            let existing: Vec<String> = returning(
                conn,
                "SELECT id FROM events WHERE account = ?1 AND event_type = ?2 AND provider_trade_no = ?3 \
                 AND dedup_extra = ?4",
                &[
                    text(ev.account.as_str()),
                    text(ev.event_type.as_str()),
                    text(&ev.provider_trade_no),
                    text(&new.dedup_extra),
                ],
            )?;
            IngestOutcome::Duplicate {
                existing: existing.first().and_then(|id| EventId::parse(id).ok()),
            }
        });
    }
    Ok(())
}

/// The accepted events' delivery jobs and (RabbitMQ mode) outbox rows.
fn insert_jobs(conn: &Connection, accepted: &[&NewEvent], now: i64) -> Result<(), StoreError> {
    let jobs: Vec<(&str, &str)> = accepted
        .iter()
        .flat_map(|n| n.endpoints.iter().map(|e| (n.event.id.as_str(), e.as_str())))
        .collect();
    for chunk in chunks(&jobs) {
        let sql = multi_row(
            "INSERT INTO deliveries (event_id, endpoint_id, status, attempts, next_attempt_at, lease_until, \
             created_at, updated_at) VALUES ",
            "(?, ?, 'pending', 0, ?, 0, ?, ?)",
            chunk.len(),
            "",
        );
        let mut params = Vec::with_capacity(chunk.len() * 5);
        for (event_id, endpoint) in chunk {
            params.extend([text(event_id), text(endpoint), int(now), int(now), int(now)]);
        }
        execute(conn, &sql, &params)?;
    }
    let outbox: Vec<&str> = accepted
        .iter()
        .filter(|n| n.outbox)
        .map(|n| n.event.id.as_str())
        .collect();
    for chunk in chunks(&outbox) {
        let sql = multi_row(
            "INSERT INTO outbox (event_id, created_at) VALUES ",
            "(?, ?)",
            chunk.len(),
            "",
        );
        let mut params = Vec::with_capacity(chunk.len() * 2);
        for event_id in chunk {
            params.extend([text(event_id), int(now)]);
        }
        execute(conn, &sql, &params)?;
    }
    Ok(())
}

fn step(rec: &AttemptRecord, now: i64) -> (&'static str, i64) {
    match rec.next {
        NextStep::Delivered => ("delivered", now),
        NextStep::RetryAt(at) => ("pending", at),
        NextStep::Dead => ("dead", now),
    }
}

fn attempt_params(rec: &AttemptRecord) -> [Param<'_>; 8] {
    [
        int(rec.delivery_id),
        int(i64::from(rec.attempt)),
        int(rec.started_at_ms),
        int(rec.duration_ms),
        text(rec.outcome.as_str()),
        opt_int(rec.http_status.map(i64::from)),
        opt_text(rec.error.as_deref()),
        opt_text(rec.response_excerpt.as_deref()),
    ]
}

const INSERT_ATTEMPTS: &str =
    "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, outcome, \
                               http_status, error, response_excerpt) VALUES ";

pub(super) fn record_many(
    conn: &Connection,
    recs: &[&AttemptRecord],
    now: i64,
) -> Result<Vec<RecordOutcome>, StoreError> {
    let distinct: HashSet<i64> = recs.iter().map(|r| r.delivery_id).collect();
    if distinct.len() != recs.len() {
        // Two attempts at one job in a batch (a lease ran out meanwhile):
        // one by one, so that the first is applied and the second superseded.
        return recs.iter().map(|rec| record_one(conn, rec, now)).collect();
    }
    for chunk in chunks(recs) {
        let sql = multi_row(
            INSERT_ATTEMPTS,
            "(?, ?, ?, ?, ?, ?, ?, ?)",
            chunk.len(),
            " ON CONFLICT DO NOTHING",
        );
        let params: Vec<Param<'_>> = chunk.iter().flat_map(|rec| attempt_params(rec)).collect();
        execute(conn, &sql, &params)?;
    }
    // Applied only if nobody has moved the job on since this attempt was
    // claimed (attempt n may only follow n-1).
    let mut applied: HashSet<i64> = HashSet::new();
    for chunk in chunks(recs) {
        let sql = multi_row(
            "WITH v (id, status, attempt, next_at, error) AS (VALUES ",
            "(?, ?, ?, ?, ?)",
            chunk.len(),
            ") UPDATE deliveries SET status = v.status, attempts = v.attempt, next_attempt_at = v.next_at, \
             lease_until = 0, updated_at = ?, last_error = v.error FROM v WHERE deliveries.id = v.id \
             AND deliveries.status = 'pending' AND deliveries.attempts = v.attempt - 1 RETURNING deliveries.id",
        );
        let mut params = Vec::with_capacity(chunk.len() * 5 + 1);
        for rec in chunk {
            let (status, next_at) = step(rec, now);
            params.extend([
                int(rec.delivery_id),
                text(status),
                int(i64::from(rec.attempt)),
                int(next_at),
                opt_text(rec.error.as_deref()),
            ]);
        }
        params.push(int(now));
        applied.extend(returning::<i64>(conn, &sql, &params)?);
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

fn record_one(conn: &Connection, rec: &AttemptRecord, now: i64) -> Result<RecordOutcome, StoreError> {
    let sql = format!("{INSERT_ATTEMPTS}(?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING");
    execute(conn, &sql, &attempt_params(rec))?;
    let (status, next_at) = step(rec, now);
    let changed = execute(
        conn,
        "UPDATE deliveries SET status = ?1, attempts = ?2, next_attempt_at = ?3, lease_until = 0, \
         updated_at = ?4, last_error = ?5 WHERE id = ?6 AND status = 'pending' AND attempts = ?7",
        &[
            text(status),
            int(i64::from(rec.attempt)),
            int(next_at),
            int(now),
            opt_text(rec.error.as_deref()),
            int(rec.delivery_id),
            int(i64::from(rec.attempt) - 1),
        ],
    )?;
    Ok(if changed == 1 {
        RecordOutcome::Applied
    } else {
        RecordOutcome::Superseded
    })
}

/// Leases up to `claim.limit` due jobs, skipping busy endpoints, and reads
/// their events.
pub(super) fn claim_in(conn: &Connection, claim: &Claim, now: i64) -> Result<Vec<ClaimedJob>, StoreError> {
    let (limit, busy) = (claim.limit, &claim.busy);
    let lease_until = now.saturating_add(claim.lease_ms);
    // `INDEXED BY`: the partial index of pending jobs by due time. Left to
    // itself (no ANALYZE statistics) SQLite picks `deliveries_status`
    // and sorts every pending row, which with a large retry backlog
    // (pending jobs due much later) costs a full scan per claim.
    let mut sql = String::from(
        "UPDATE deliveries SET lease_until = ? WHERE id IN (SELECT id FROM deliveries INDEXED BY deliveries_due \
         WHERE status = 'pending' AND next_attempt_at <= ? AND lease_until <= ?",
    );
    let mut params = vec![int(lease_until), int(now), int(now)];
    if !busy.is_empty() {
        sql.push_str(" AND endpoint_id NOT IN (");
        for (i, endpoint) in busy.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            params.push(text(endpoint));
        }
        sql.push(')');
    }
    sql.push_str(
        " ORDER BY next_attempt_at LIMIT ?) RETURNING id, event_id, endpoint_id, attempts, next_attempt_at",
    );
    params.push(int(i64::try_from(limit).unwrap_or(i64::MAX)));
    // (due, delivery id, event id, endpoint id, attempts so far)
    let mut leased: Vec<(i64, i64, String, String, i64)> = query_rows(conn, &sql, &params, |row| {
        Ok((row.get(4)?, row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
    })?;
    if leased.is_empty() {
        return Ok(Vec::new());
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
    let events: HashMap<String, (String, i64)> = query_rows(
        conn,
        "SELECT id, payload, received_at FROM events WHERE id IN (SELECT value FROM json_each(?1))",
        &[text(&ids)],
        |row| Ok((row.get(0)?, (row.get(1)?, row.get(2)?))),
    )?
    .into_iter()
    .collect();
    leased
        .into_iter()
        .map(|(_, delivery_id, event_id, endpoint_id, attempts)| {
            // Cloned, not removed: two jobs (endpoints) may share an event.
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
