//! Retention in the store: deleting finished events past `[storage]
//! retention` with their deliveries and attempts, blanking raw callbacks past
//! `raw_retention`, and (SQLite) giving freed pages back to the file system.
//!
//! Every statement touches at most [`RETENTION_BATCH`] rows, so that no
//! single statement holds a burst of row locks and WAL (PostgreSQL) for
//! long; the caller loops batches, yielding between them
//! (`crate::retention`). On SQLite the writes run in the writer thread, a
//! few events at a time, and give way to waiting ingests
//! (`sqlite/upkeep.rs`, with the SQLite statements). Any number of processes may run the same
//! batches at once: PostgreSQL's picks skip rows another holds, SQLite
//! serializes writers, and a batch that finds its rows gone deletes nothing.
//!
//! Events are found by id, not `received_at`: event ids are ULIDs, ordered by
//! the time they were made, and the primary key is the only index on that
//! order (an index on `received_at` was dropped for the ingest's sake,
//! migrations 0004/0005). The id bound only narrows the scan; `received_at`
//! decides.

use sqlx::Row;

use super::admin_query::event_id_floor;
use super::sqlite::upkeep::{Upkeep, UpkeepDone};
use super::{Store, StoreError};

/// The most rows one statement deletes or blanks, and the most events one
/// batch picks.
pub const RETENTION_BATCH: usize = 1_000;

/// How far past the cut-off time the id range reaches: an event's id and its
/// `received_at` are both taken from the system clock of the process that
/// stored it, microseconds apart, so a minute is ample. An event whose id
/// were later than that would only be kept longer, never dropped early.
const ID_MARGIN_MS: i64 = 60_000;

/// With more unpublished outbox rows than this (a broker outage), deleting
/// events waits: the outbox's `event_id` has no index (it is written and
/// emptied on the ingest's hot path), so every deleted event would cost a
/// scan of the whole outbox for the foreign key check.
const OUTBOX_TOO_LONG: i64 = 10_000;

/// What one purge batch deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PurgeBatch {
    pub events: u64,
    pub deliveries: u64,
    pub attempts: u64,
    /// The highest event id picked: the next batch of the same pass starts
    /// after it, so that events kept for a pending delivery are read once
    /// per pass, not once per batch.
    pub last_id: Option<String>,
    /// The batch stopped before it ran out of events: the pass goes on.
    pub more: bool,
}

/// What one raw-blanking batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlankBatch {
    pub blanked: u64,
    /// The highest event id blanked, where the next batch starts.
    pub last_id: Option<String>,
    /// The batch stopped before it ran out of events: the pass goes on.
    pub more: bool,
}

/// The mark below which every event's raw callback is known to be blanked
/// (by time, less a margin).
const RAW_MARK: &str = "raw_blanked_through";

// --- PostgreSQL -------------------------------------------------------------

/// Finished events received before `$3`, ids in (`$1`, `$2`), oldest first.
/// Locked, and locked ones skipped: two processes purging at once take
/// different events, and a redelivery of a picked event (which would add a
/// pending delivery) waits for this transaction and then finds it gone.
const PG_PICK: &str = "SELECT e.id FROM events e \
     WHERE e.id > $1 AND e.id < $2 AND e.received_at < $3 \
     AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status = 'pending') \
     AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = e.id) \
     ORDER BY e.id LIMIT $4 FOR UPDATE OF e SKIP LOCKED";
const PG_DELETE_ATTEMPTS: &str = "DELETE FROM attempts WHERE (delivery_id, attempt) IN \
     (SELECT a.delivery_id, a.attempt FROM deliveries d JOIN attempts a ON a.delivery_id = d.id \
     WHERE d.event_id = ANY($1) LIMIT $2)";
/// Newest first: a redelivery (`redelivery_of`) always has a higher id than
/// the dead delivery it replaced, so it goes in the same or an earlier
/// statement and the self-reference never blocks a delete.
const PG_DELETE_DELIVERIES: &str = "DELETE FROM deliveries WHERE id IN \
     (SELECT id FROM deliveries WHERE event_id = ANY($1) ORDER BY id DESC LIMIT $2)";
const PG_DELETE_EVENTS: &str = "DELETE FROM events WHERE id = ANY($1)";
const PG_BLANK: &str = "UPDATE events SET raw_body = ''::bytea, raw_headers = '' WHERE id IN \
     (SELECT id FROM events WHERE id > $1 AND id < $2 AND received_at < $3 \
     AND (raw_headers <> '' OR octet_length(raw_body) > 0) \
     ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) RETURNING id";

// --- Both (`$n` in SQLite spelled `?n`) -------------------------------------

const OUTBOX_LENGTH: &str = "SELECT COUNT(*) FROM (SELECT 1 FROM outbox LIMIT $1) o";
const READ_MARK: &str = "SELECT at_ms FROM retention_marks WHERE name = $1";
/// Marks only move forward: two processes may set them in either order.
const WRITE_MARK: &str = "INSERT INTO retention_marks (name, at_ms) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET at_ms = EXCLUDED.at_ms WHERE EXCLUDED.at_ms > retention_marks.at_ms";

fn sqlite_sql(pg: &str) -> String {
    pg.replace('$', "?")
}

fn limit_param(limit: usize) -> i64 {
    i64::try_from(limit.min(RETENTION_BATCH)).unwrap_or(1)
}

/// When an event id was made (epoch ms): its ULID's time.
fn event_id_time_ms(id: &str) -> Option<i64> {
    let ulid = ulid::Ulid::from_string(id.strip_prefix("evt_")?).ok()?;
    i64::try_from(ulid.timestamp_ms()).ok()
}

/// The id just past the last one that can have been made before `before_ms`.
fn id_bound(before_ms: i64) -> String {
    event_id_floor(before_ms.saturating_add(ID_MARGIN_MS))
}

/// Pages given back per [`reclaim_space`](Store::reclaim_space) call (4 KiB
/// each).
const VACUUM_PAGES: i64 = 2_048;

/// Runs a `DELETE … LIMIT chunk` for a batch's events in `tx` until it
/// deletes less than a chunk (each statement touches at most `chunk` rows),
/// and gives the rows deleted in all.
async fn pg_delete_chunked(
    tx: &mut sqlx::PgConnection,
    sql: &str,
    events: &[String],
    chunk: i64,
) -> Result<u64, StoreError> {
    let mut deleted = 0u64;
    loop {
        let n = sqlx::query(sql)
            .bind(events)
            .bind(chunk)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        deleted += n;
        if n < chunk as u64 {
            return Ok(deleted);
        }
    }
}

impl Store {
    /// Deletes up to `limit` (at most [`RETENTION_BATCH`]) events received
    /// before `before_ms` whose deliveries are all delivered or dead and
    /// that no outbox row still needs, with their deliveries and attempts,
    /// in one transaction; each statement removes at most
    /// [`RETENTION_BATCH`] rows. Only events with an id above `after` are
    /// looked at (`""`: all). Deletes nothing while the outbox is long
    /// (`OUTBOX_TOO_LONG`, 10,000 unpublished rows).
    pub async fn purge_expired(
        &self,
        before_ms: i64,
        after: &str,
        limit: usize,
    ) -> Result<PurgeBatch, StoreError> {
        if self.outbox_too_long().await? {
            return Ok(PurgeBatch::default());
        }
        let bound = id_bound(before_ms);
        let p = match self {
            Store::Sqlite(s) => {
                let op = Upkeep::Purge {
                    before_ms,
                    after: after.to_owned(),
                    bound,
                    limit: limit.min(RETENTION_BATCH),
                };
                return match s.upkeep(op).await? {
                    UpkeepDone::Purged(done) => Ok(done),
                    _ => Err(StoreError::Corrupt("mismatched upkeep result".into())),
                };
            }
            Store::Postgres(p) => p,
        };
        let limit = limit_param(limit);
        let chunk = limit_param(RETENTION_BATCH);
        let mut tx = p.pool.begin().await?;
        let ids: Vec<String> = sqlx::query_scalar(PG_PICK)
            .bind(after)
            .bind(&bound)
            .bind(before_ms)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        if ids.is_empty() {
            return Ok(PurgeBatch::default());
        }
        let mut done = PurgeBatch {
            attempts: pg_delete_chunked(&mut tx, PG_DELETE_ATTEMPTS, &ids, chunk).await?,
            deliveries: pg_delete_chunked(&mut tx, PG_DELETE_DELIVERIES, &ids, chunk).await?,
            more: ids.len() as i64 >= limit,
            ..PurgeBatch::default()
        };
        done.events = sqlx::query(PG_DELETE_EVENTS)
            .bind(&ids)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        done.last_id = ids.into_iter().max();
        Ok(done)
    }

    /// Blanks the raw body and headers of up to `limit` (at most
    /// [`RETENTION_BATCH`]) events received before `before_ms` that still
    /// have them, with ids above `after`, oldest first. The events stay.
    pub async fn blank_raw(
        &self,
        before_ms: i64,
        after: &str,
        limit: usize,
    ) -> Result<BlankBatch, StoreError> {
        let bound = id_bound(before_ms);
        let p = match self {
            Store::Sqlite(s) => {
                let op = Upkeep::Blank {
                    before_ms,
                    after: after.to_owned(),
                    bound,
                    limit: limit.min(RETENTION_BATCH),
                };
                return match s.upkeep(op).await? {
                    UpkeepDone::Blanked(done) => Ok(done),
                    _ => Err(StoreError::Corrupt("mismatched upkeep result".into())),
                };
            }
            Store::Postgres(p) => p,
        };
        let limit = limit_param(limit);
        let ids: Vec<String> = sqlx::query_scalar(PG_BLANK)
            .bind(after)
            .bind(&bound)
            .bind(before_ms)
            .bind(limit)
            .fetch_all(&p.pool)
            .await?;
        Ok(BlankBatch {
            blanked: ids.len() as u64,
            more: ids.len() as i64 >= limit,
            last_id: ids.into_iter().max(),
        })
    }

    /// Where raw blanking may start: a little below the last event a
    /// finished pass (of any process) blanked, or `""` when none has.
    pub async fn raw_blanked_from(&self) -> Result<String, StoreError> {
        let at: Option<i64> = match self {
            Store::Sqlite(s) => {
                sqlx::query_scalar(&sqlite_sql(READ_MARK))
                    .bind(RAW_MARK)
                    .fetch_optional(&s.read)
                    .await?
            }
            Store::Postgres(p) => {
                sqlx::query_scalar(READ_MARK)
                    .bind(RAW_MARK)
                    .fetch_optional(&p.pool)
                    .await?
            }
        };
        // Below the mark, every event received before that pass's cut-off
        // was blanked. Ids made up to a margin before it may belong to
        // events received after the cut-off (or stored by another process
        // an instant later), so those are looked at again.
        Ok(at
            .map(|ms| event_id_floor(ms.saturating_sub(2 * ID_MARGIN_MS)))
            .unwrap_or_default())
    }

    /// Records how far a finished [`blank_raw`](Self::blank_raw) pass got:
    /// the last event it blanked. The mark is that event's id time, not the
    /// pass's cut-off: taken from the data, it can never be ahead of events
    /// stored later, whatever the clocks did.
    pub async fn set_raw_blanked(&self, last_blanked: &str) -> Result<(), StoreError> {
        let Some(at_ms) = event_id_time_ms(last_blanked) else {
            return Ok(());
        };
        match self {
            Store::Sqlite(s) => {
                sqlx::query(&sqlite_sql(WRITE_MARK))
                    .bind(RAW_MARK)
                    .bind(at_ms)
                    .execute(&s.write)
                    .await?;
            }
            Store::Postgres(p) => {
                sqlx::query(WRITE_MARK)
                    .bind(RAW_MARK)
                    .bind(at_ms)
                    .execute(&p.pool)
                    .await?;
            }
        }
        Ok(())
    }

    async fn outbox_too_long(&self) -> Result<bool, StoreError> {
        let n: i64 = match self {
            Store::Sqlite(s) => {
                sqlx::query_scalar(&sqlite_sql(OUTBOX_LENGTH))
                    .bind(OUTBOX_TOO_LONG + 1)
                    .fetch_one(&s.read)
                    .await?
            }
            Store::Postgres(p) => {
                sqlx::query_scalar(OUTBOX_LENGTH)
                    .bind(OUTBOX_TOO_LONG + 1)
                    .fetch_one(&p.pool)
                    .await?
            }
        };
        Ok(n > OUTBOX_TOO_LONG)
    }

    /// SQLite: gives up to `VACUUM_PAGES` (2,048) of the file's free pages back
    /// to the file system (`auto_vacuum = INCREMENTAL`), in the writer and
    /// giving way to waiting writes, and returns how many went and how many
    /// are still free; the caller repeats, pausing between.
    /// PostgreSQL: nothing (its own vacuum makes the space reusable).
    pub async fn reclaim_space(&self) -> Result<(u64, u64), StoreError> {
        let Store::Sqlite(s) = self else {
            return Ok((0, 0));
        };
        match s.upkeep(Upkeep::Reclaim { pages: VACUUM_PAGES }).await? {
            UpkeepDone::Reclaimed(freed, left) => Ok((freed, left)),
            _ => Err(StoreError::Corrupt("mismatched upkeep result".into())),
        }
    }

    /// SQLite: the file's `auto_vacuum` mode (0 none, 1 full, 2
    /// incremental), page count and free pages, for tests and benchmarks.
    pub async fn sqlite_pages(&self) -> Result<Option<(i64, i64, i64)>, StoreError> {
        let Store::Sqlite(s) = self else {
            return Ok(None);
        };
        let mut conn = s.write.acquire().await?;
        let mode: i64 = sqlx::query("PRAGMA auto_vacuum")
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&mut *conn)
            .await?;
        let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
            .fetch_one(&mut *conn)
            .await?;
        Ok(Some((mode, pages, free)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_statements_have_sqlite_placeholders() {
        for sql in [OUTBOX_LENGTH, READ_MARK, WRITE_MARK] {
            assert!(!sqlite_sql(sql).contains('$'), "{sql}");
        }
    }

    #[test]
    fn the_id_bound_covers_the_margin() {
        let at = 1_700_000_000_000;
        let made_at_cutoff = format!("evt_{}", ulid::Ulid::from_parts(at as u64, u128::MAX >> 48));
        assert!(made_at_cutoff < id_bound(at));
        let made_later = format!("evt_{}", ulid::Ulid::from_parts((at + ID_MARGIN_MS) as u64, 1));
        assert!(made_later > id_bound(at));
    }

    #[test]
    fn an_id_tells_its_time() {
        let id = format!("evt_{}", ulid::Ulid::from_parts(1_700_000_000_123, 42));
        assert_eq!(event_id_time_ms(&id), Some(1_700_000_000_123));
        assert_eq!(event_id_time_ms("evt_nonsense"), None);
        assert_eq!(event_id_time_ms(&event_id_floor(5_000)), Some(5_000));
    }

    #[test]
    fn limits_are_capped() {
        assert_eq!(limit_param(5), 5);
        assert_eq!(limit_param(1_000_000), RETENTION_BATCH as i64);
    }
}
