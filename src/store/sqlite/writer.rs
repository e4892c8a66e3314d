//! The single SQLite writer: takes whatever writes queued up while the
//! previous batch was committing, commits them as one transaction, and
//! answers each caller only after that commit (`synchronous = FULL`).
//!
//! The writer is a thread of its own with its own connection (`rusqlite`),
//! not an async task on sqlx: sqlx runs every SQLite statement on a worker
//! thread and answers through a channel, so each statement cost two thread
//! hand-offs and a trip through the tokio scheduler, which made a batch take
//! about three times the SQLite work in it. Here a batch's statements run
//! back to back on one thread; callers wait on a oneshot channel as before.
//!
//! Within a batch, the writes of one kind share multi-row statements. Rows go
//! in chunks of a few fixed sizes, so the statements stay in the connection's
//! statement cache.
//! The outcome of every write is that of running them one by one in order:
//! the first write of a nonce or a dedup identity in a batch wins.
//!
//! The embedded dispatcher's claims of due jobs run here too, after the
//! batch's writes and in its transaction: a claim then costs no commit (and
//! fsync) of its own, and never waits for the one write connection.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::rows::{claim_in, ingest_many, record_many};
use crate::store::{AttemptRecord, ClaimedJob, IngestOutcome, NewEvent, RecordOutcome, StoreError};

/// The most writes committed together; bounds one transaction's size and the
/// latency of the first write in it.
pub(super) const MAX_BATCH: usize = 512;
/// The largest number of rows in one statement (11 columns for events: well
/// under SQLite's 32,766 parameters).
const MAX_ROWS: usize = 64;
/// Prepared statements kept by the writer's connection: one per kind of row
/// (six) and size (1 to `MAX_ROWS`), and the rest.
pub(super) const WRITER_STATEMENT_CACHE: usize = 6 * MAX_ROWS + 64;

/// A claim of due jobs (`SqliteStore::claim_due`).
pub(super) struct Claim {
    pub limit: usize,
    pub lease_ms: i64,
    /// Endpoints at their in-flight limit: their jobs are skipped.
    pub busy: Vec<String>,
}

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub(super) enum WriteOp {
    Ingest(Box<NewEvent>, Reply<IngestOutcome>),
    Record(Box<AttemptRecord>, Reply<RecordOutcome>),
    Claim(Box<Claim>, Reply<Vec<ClaimedJob>>),
}

/// Opens the writer's connection with the same settings as the sqlx pools
/// (WAL, `synchronous = FULL`, busy timeout, foreign keys).
pub(super) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "wal")?;
    conn.pragma_update(None, "synchronous", "full")?;
    conn.pragma_update(None, "foreign_keys", "on")?;
    // Statement journals (each multi-row statement of a batch has one) stay
    // in memory instead of spilling to temporary files.
    conn.pragma_update(None, "temp_store", "memory")?;
    conn.set_prepared_statement_cache_capacity(WRITER_STATEMENT_CACHE);
    Ok(conn)
}

/// Commits queued writes in batches until every sender is gone. Runs on a
/// thread of its own (it blocks).
pub(super) fn run_writer(mut conn: Connection, mut rx: mpsc::Receiver<WriteOp>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        match commit_batch(&mut conn, &batch) {
            Ok(results) => {
                for (op, result) in batch.into_iter().zip(results) {
                    reply(op, Ok(result));
                }
            }
            // One bad write must not fail its neighbours: retry each alone,
            // so that only the failing one gets the error.
            Err(_) if batch.len() > 1 => {
                for op in batch {
                    let result = commit_batch(&mut conn, std::slice::from_ref(&op));
                    let single = result.and_then(|mut r| r.pop().ok_or(StoreError::Closed));
                    reply(op, single);
                }
            }
            Err(e) => {
                for op in batch {
                    reply(op, Err(StoreError::WriteFailed(e.to_string())));
                }
            }
        }
    }
}

enum OpResult {
    Ingest(IngestOutcome),
    Record(RecordOutcome),
    Claim(Vec<ClaimedJob>),
}

fn reply(op: WriteOp, result: Result<OpResult, StoreError>) {
    // A caller that has gone away (its request was cancelled) needs no answer.
    let mismatch = || StoreError::Corrupt("mismatched write result".into());
    match (op, result) {
        (WriteOp::Ingest(_, tx), Ok(OpResult::Ingest(r))) => {
            let _ = tx.send(Ok(r));
        }
        (WriteOp::Record(_, tx), Ok(OpResult::Record(r))) => {
            let _ = tx.send(Ok(r));
        }
        (WriteOp::Claim(_, tx), Ok(OpResult::Claim(r))) => {
            let _ = tx.send(Ok(r));
        }
        (WriteOp::Ingest(_, tx), result) => {
            let _ = tx.send(Err(result.err().unwrap_or_else(mismatch)));
        }
        (WriteOp::Record(_, tx), result) => {
            let _ = tx.send(Err(result.err().unwrap_or_else(mismatch)));
        }
        (WriteOp::Claim(_, tx), result) => {
            let _ = tx.send(Err(result.err().unwrap_or_else(mismatch)));
        }
    }
}

fn commit_batch(conn: &mut Connection, batch: &[WriteOp]) -> Result<Vec<OpResult>, StoreError> {
    let mut ingests = Vec::new();
    let mut records = Vec::new();
    let mut claims = Vec::new();
    for op in batch {
        match op {
            WriteOp::Ingest(new, _) => ingests.push(&**new),
            WriteOp::Record(rec, _) => records.push(&**rec),
            WriteOp::Claim(claim, _) => claims.push(&**claim),
        }
    }
    // IMMEDIATE: take the write lock at BEGIN. Other connections (operator
    // redeliveries, lease releases) also write; a deferred transaction that
    // read first could then fail with SQLITE_BUSY_SNAPSHOT instead of waiting.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    // Ingests and attempts never touch the same rows: a job is only attempted
    // after the commit that created it. Claims come last, so that they see
    // the jobs this batch creates and the retries it schedules.
    let mut ingested = ingest_many(&tx, &ingests)?.into_iter();
    let mut recorded = record_many(&tx, &records)?.into_iter();
    let mut claimed = Vec::with_capacity(claims.len());
    for claim in claims {
        claimed.push(claim_in(&tx, claim)?);
    }
    let mut claimed = claimed.into_iter();
    tx.commit()?;
    batch
        .iter()
        .map(|op| {
            match op {
                WriteOp::Ingest(..) => ingested.next().map(OpResult::Ingest),
                WriteOp::Record(..) => recorded.next().map(OpResult::Record),
                WriteOp::Claim(..) => claimed.next().map(OpResult::Claim),
            }
            .ok_or_else(|| StoreError::Corrupt("missing write result".into()))
        })
        .collect()
}

/// `items` in chunks of `MAX_ROWS` and one of the rest: one statement per
/// kind for a typical batch. Every size is a statement of its own, prepared
/// once and then kept in the connection's statement cache
/// (`WRITER_STATEMENT_CACHE`).
pub(super) fn chunks<T>(items: &[T]) -> Vec<&[T]> {
    items.chunks(MAX_ROWS).collect()
}

#[cfg(test)]
mod tests {
    use super::{chunks, MAX_ROWS};

    #[test]
    fn chunks_keep_order() {
        let items: Vec<usize> = (0..(2 * MAX_ROWS + 13)).collect();
        let parts = chunks(&items);
        let sizes: Vec<usize> = parts.iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![MAX_ROWS, MAX_ROWS, 13]);
        assert_eq!(parts.concat(), items);
        assert!(chunks::<usize>(&[]).is_empty());
    }
}
