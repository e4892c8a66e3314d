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
//!
//! So do retention's deletes (`upkeep.rs`). They go first in a transaction,
//! a small step at a time, and stop as soon as another write waits; the
//! writes that came meanwhile join the same transaction.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::rows::{claim_in, ingest_many, record_many};
use super::upkeep::{upkeep_in, Upkeep, UpkeepDone};
use crate::clock::Clock;
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
    Upkeep(Box<Upkeep>, Reply<UpkeepDone>),
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
/// thread of its own (it blocks). Due times and leases are on `clock`.
pub(super) fn run_writer(mut conn: Connection, mut rx: mpsc::Receiver<WriteOp>, clock: Arc<dyn Clock>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        take_waiting(&mut batch, &mut rx);
        match commit_batch(&mut conn, &mut batch, clock.now_ms(), Some(&mut rx)) {
            Ok(results) => {
                for (op, result) in batch.into_iter().zip(results) {
                    reply(op, result);
                }
            }
            // One bad write must not fail its neighbours: retry each alone,
            // so that only the failing one gets the error.
            Err(_) if batch.len() > 1 => {
                for op in batch {
                    let mut alone = vec![op];
                    let result = commit_batch(&mut conn, &mut alone, clock.now_ms(), None);
                    let single = result.and_then(|mut r| r.pop().unwrap_or(Err(StoreError::Closed)));
                    if let Some(op) = alone.pop() {
                        reply(op, single);
                    }
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

/// Moves the writes that are waiting into `batch`, up to [`MAX_BATCH`].
fn take_waiting(batch: &mut Vec<WriteOp>, rx: &mut mpsc::Receiver<WriteOp>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
}

enum OpResult {
    Ingest(IngestOutcome),
    Record(RecordOutcome),
    Claim(Vec<ClaimedJob>),
    Upkeep(UpkeepDone),
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
        (WriteOp::Upkeep(_, tx), Ok(OpResult::Upkeep(r))) => {
            let _ = tx.send(Ok(r));
        }
        (WriteOp::Claim(_, tx), result) => {
            let _ = tx.send(Err(result.err().unwrap_or_else(mismatch)));
        }
        (WriteOp::Upkeep(_, tx), result) => {
            let _ = tx.send(Err(result.err().unwrap_or_else(mismatch)));
        }
    }
}

/// Commits `batch` as one transaction, its times taken as `now`. `Err`: the
/// transaction did not commit, and nothing of it is stored. `Ok`: it did,
/// with each write's result, in order.
///
/// With `waiting`, upkeep in the batch gives way to the writes that come
/// meanwhile, and those join `batch` and this transaction.
fn commit_batch(
    conn: &mut Connection,
    batch: &mut Vec<WriteOp>,
    now: i64,
    waiting: Option<&mut mpsc::Receiver<WriteOp>>,
) -> Result<Vec<Result<OpResult, StoreError>>, StoreError> {
    // IMMEDIATE: take the write lock at BEGIN. Other connections (operator
    // redeliveries, lease releases) also write; a deferred transaction that
    // read first could then fail with SQLITE_BUSY_SNAPSHOT instead of waiting.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results: Vec<Option<OpResult>> = Vec::new();
    // Upkeep first, so that the writes it gives way to wait for one step of
    // it, not for all of it.
    let write_waits = || waiting.as_deref().is_some_and(|rx| !rx.is_empty());
    run_upkeep(&tx, batch, &mut results, &write_waits)?;
    if let (true, Some(rx)) = (results.iter().any(Option::is_some), waiting) {
        take_waiting(batch, rx);
        // Upkeep among the writes that joined goes one step, and gives way.
        run_upkeep(&tx, batch, &mut results, &|| true)?;
    }
    results.resize_with(batch.len(), || None);
    let mut ingests = Vec::new();
    let mut records = Vec::new();
    let mut claims = Vec::new();
    for (i, op) in batch.iter().enumerate() {
        match op {
            WriteOp::Ingest(new, _) => ingests.push((i, &**new)),
            WriteOp::Record(rec, _) => records.push((i, &**rec)),
            WriteOp::Claim(claim, _) => claims.push((i, &**claim)),
            WriteOp::Upkeep(..) => {}
        }
    }
    // Ingests and attempts never touch the same rows: a job is only attempted
    // after the commit that created it. Claims come last, so that they see
    // the jobs this batch creates and the retries it schedules.
    let news: Vec<&NewEvent> = ingests.iter().map(|(_, n)| *n).collect();
    for ((i, _), outcome) in ingests.iter().zip(ingest_many(&tx, &news, now)?) {
        results[*i] = Some(OpResult::Ingest(outcome));
    }
    let recs: Vec<&AttemptRecord> = records.iter().map(|(_, r)| *r).collect();
    for ((i, _), outcome) in records.iter().zip(record_many(&tx, &recs, now)?) {
        results[*i] = Some(OpResult::Record(outcome));
    }
    for (i, claim) in claims {
        results[i] = Some(OpResult::Claim(claim_in(&tx, claim, now)?));
    }
    tx.commit()?;
    // Committed: whatever happens now, no write of this batch runs again.
    Ok(results
        .into_iter()
        .map(|r| r.ok_or_else(|| StoreError::Corrupt("missing write result".into())))
        .collect())
}

/// Runs the upkeep operations of `batch` that have no result yet (from
/// `results.len()` on), recording theirs at their places.
fn run_upkeep(
    tx: &Connection,
    batch: &[WriteOp],
    results: &mut Vec<Option<OpResult>>,
    give_way: &dyn Fn() -> bool,
) -> Result<(), StoreError> {
    for op in &batch[results.len()..] {
        results.push(match op {
            WriteOp::Upkeep(upkeep, _) => Some(OpResult::Upkeep(upkeep_in(tx, upkeep, give_way)?)),
            _ => None,
        });
    }
    Ok(())
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

#[cfg(test)]
mod upkeep_tests {
    use chrono::Utc;
    use tokio::sync::{mpsc, oneshot};

    use super::{commit_batch, open_writer, OpResult, WriteOp};
    use crate::domain::{AccountId, AmountFen, Event, EventId, EventType, Notification, ProviderKind};
    use crate::store::sqlite::upkeep::{Upkeep, UpkeepDone, STEP_EVENTS};
    use crate::store::{IngestOutcome, NewEvent, SqliteStore};

    fn event(trade: &str) -> NewEvent {
        let n = Notification::new(
            EventType::PaymentSucceeded,
            trade.to_owned(),
            AmountFen::from_fen(100).expect("amount"),
        );
        let account = AccountId::parse("dryad-main").expect("account id");
        let event = Event::new(EventId::generate(), ProviderKind::Dryad, account, n, Utc::now());
        NewEvent {
            payload: serde_json::to_string(&event).expect("json"),
            event,
            dedup_extra: String::new(),
            raw_body: b"raw".to_vec(),
            raw_headers: "{}".into(),
            endpoints: Vec::new(),
            nonce: None,
            outbox: false,
        }
    }

    fn purge_op(
        limit: usize,
    ) -> (
        WriteOp,
        oneshot::Receiver<Result<UpkeepDone, crate::store::StoreError>>,
    ) {
        let (reply, answer) = oneshot::channel();
        let purge = Upkeep::Purge {
            before_ms: Utc::now().timestamp_millis() + 60_000,
            after: String::new(),
            bound: "evt_ZZZZZZZZZZZZZZZZZZZZZZZZZZ".into(),
            limit,
        };
        (WriteOp::Upkeep(Box::new(purge), reply), answer)
    }

    /// A purge step that finds an ingest waiting stops after one step, and
    /// the ingest is committed in the purge's transaction. Upkeep that
    /// joins with the waiting writes runs too (one step), and every write
    /// gets its own result.
    #[tokio::test]
    async fn a_purge_gives_way_to_a_waiting_ingest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("payhook.db");
        let clock = std::sync::Arc::new(crate::clock::SystemClock);
        let store = SqliteStore::connect(&format!("sqlite://{}", path.display()), clock)
            .await
            .expect("store");
        for i in 0..(4 * STEP_EVENTS) {
            let outcome = store.ingest(event(&format!("old-{i}"))).await.expect("ingest");
            assert_eq!(outcome, IngestOutcome::Accepted { jobs: 0 });
        }

        let mut conn = open_writer(&path).expect("writer connection");
        let (tx, mut rx) = mpsc::channel(4);
        let (ingest_reply, _ingest_answer) = oneshot::channel();
        tx.send(WriteOp::Ingest(Box::new(event("new")), ingest_reply))
            .await
            .expect("queued");
        let (second, _second_answer) = purge_op(1_000);
        tx.send(second).await.expect("queued");
        let (first, _first_answer) = purge_op(1_000);
        let mut batch = vec![first];
        let now = Utc::now().timestamp_millis();
        let results: Vec<OpResult> = commit_batch(&mut conn, &mut batch, now, Some(&mut rx))
            .expect("committed")
            .into_iter()
            .collect::<Result<_, _>>()
            .expect("a result for every write");

        assert_eq!(batch.len(), 3, "the waiting writes joined the transaction");
        match &results[..] {
            [OpResult::Upkeep(UpkeepDone::Purged(first)), OpResult::Ingest(ingested), OpResult::Upkeep(UpkeepDone::Purged(second))] =>
            {
                assert_eq!(first.events, STEP_EVENTS as u64, "one step, then it gave way");
                assert!(first.more, "{first:?}");
                assert_eq!(ingested, &IngestOutcome::Accepted { jobs: 0 });
                assert_eq!(second.events, STEP_EVENTS as u64, "the one that joined: one step");
                assert!(second.more, "{second:?}");
            }
            _ => panic!("unexpected results"),
        }
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM events", [], |row| row.get(0))
            .expect("count");
        assert_eq!(left, (2 * STEP_EVENTS + 1) as i64);
    }
}
