//! Retention in the store: deleting finished events past `[storage]
//! retention` with their deliveries and attempts, blanking raw callbacks past
//! `raw_retention`, and (SQLite) giving freed pages back to the file system.
//!
//! Every statement touches at most [`RETENTION_BATCH`] rows, so that no
//! single statement holds the write lock (SQLite) or a burst of row locks
//! and WAL (PostgreSQL) for long; the caller loops batches, yielding between
//! them (`crate::retention`). Any number of processes may run the same
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
use super::{Store, StoreError};

/// The most rows one statement deletes or blanks, and the most events one
/// batch picks.
pub const RETENTION_BATCH: usize = 1_000;

/// Events one purge transaction (or one raw-blanking statement) takes on
/// SQLite. SQLite has one write lock,
/// and the ingest's group commit waits for a whole purge transaction: with
/// 1,000 events (and their deliveries and attempts) a transaction held it
/// about 65 ms on the 2-core machine, and ingest p99 during a purge rose
/// from 13 to 60 ms (BENCHMARKS.md, "Retention"). PostgreSQL locks rows, not
/// the store, and takes the full [`RETENTION_BATCH`].
const SQLITE_PURGE_EVENTS: usize = 200;

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
}

/// What one raw-blanking batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlankBatch {
    pub blanked: u64,
    /// The highest event id blanked, where the next batch starts.
    pub last_id: Option<String>,
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

// --- SQLite -----------------------------------------------------------------

/// As [`PG_PICK`]; SQLite runs one writer at a time, so no locking clause.
/// By event, not by the pending-jobs index SQLite would otherwise pick; the
/// outbox as a set built once, since `outbox.event_id` has no index.
const SQLITE_PICK: &str = "SELECT e.id FROM events e \
     WHERE e.id > ?1 AND e.id < ?2 AND e.received_at < ?3 \
     AND NOT EXISTS (SELECT 1 FROM deliveries d INDEXED BY deliveries_event \
         WHERE d.event_id = e.id AND d.status = 'pending') \
     AND e.id NOT IN (SELECT event_id FROM outbox) \
     ORDER BY e.id LIMIT ?4";
const SQLITE_DELETE_ATTEMPTS: &str = "DELETE FROM attempts WHERE rowid IN \
     (SELECT a.rowid FROM deliveries d INDEXED BY deliveries_event JOIN attempts a ON a.delivery_id = d.id \
     WHERE d.event_id IN (SELECT value FROM json_each(?1)) LIMIT ?2)";
/// Newest first, as [`PG_DELETE_DELIVERIES`].
const SQLITE_DELETE_DELIVERIES: &str = "DELETE FROM deliveries WHERE id IN \
     (SELECT id FROM deliveries INDEXED BY deliveries_event \
     WHERE event_id IN (SELECT value FROM json_each(?1)) ORDER BY id DESC LIMIT ?2)";
const SQLITE_DELETE_EVENTS: &str = "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?1))";
/// `length()` of a blob reads its size, not its bytes.
const SQLITE_BLANK: &str = "UPDATE events SET raw_body = x'', raw_headers = '' WHERE id IN \
     (SELECT id FROM events WHERE id > ?1 AND id < ?2 AND received_at < ?3 \
     AND (length(raw_body) > 0 OR raw_headers <> '') ORDER BY id LIMIT ?4) RETURNING id";

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

/// Pages given back per `incremental_vacuum` statement (4 KiB each): each
/// statement holds the write lock only briefly.
const VACUUM_PAGES: i64 = 2_048;

/// Runs a `DELETE … LIMIT chunk` for a batch's events in `tx` until it
/// deletes less than a chunk (each statement touches at most `chunk` rows),
/// and gives the rows deleted in all.
macro_rules! delete_chunked {
    ($tx:ident, $sql:expr, $events:expr, $chunk:expr) => {{
        let mut deleted = 0u64;
        loop {
            let n = sqlx::query($sql)
                .bind($events)
                .bind($chunk)
                .execute(&mut *$tx)
                .await?
                .rows_affected();
            deleted += n;
            if n < $chunk as u64 {
                break;
            }
        }
        deleted
    }};
}

/// One purge batch in `tx`: picks the events, deletes their attempts and
/// deliveries a chunk a statement, then the events, and commits, filling
/// `done`. `$list` turns the picked ids into the deletes' parameter.
/// Returns `done` at once when nothing was picked.
macro_rules! purge_batch {
    (
        $tx:ident, $done:ident, [$pick:expr, $after:expr, $bound:expr, $before:expr, $limit:expr],
        |$ids:ident| $list:expr,
        [$attempts:expr, $deliveries:expr, $events:expr], $chunk:expr
    ) => {{
        let $ids: Vec<String> = sqlx::query_scalar($pick)
            .bind($after)
            .bind($bound)
            .bind($before)
            .bind($limit)
            .fetch_all(&mut *$tx)
            .await?;
        if $ids.is_empty() {
            return Ok($done);
        }
        let list = $list;
        $done.attempts = delete_chunked!($tx, $attempts, &list, $chunk);
        $done.deliveries = delete_chunked!($tx, $deliveries, &list, $chunk);
        $done.events = sqlx::query($events)
            .bind(&list)
            .execute(&mut *$tx)
            .await?
            .rows_affected();
        $tx.commit().await?;
        $done.last_id = $ids.into_iter().max();
    }};
}

impl Store {
    /// How many events one retention batch ([`purge_expired`](Self::purge_expired),
    /// [`blank_raw`](Self::blank_raw)) should take on this store.
    pub fn retention_batch_events(&self) -> usize {
        match self {
            Store::Sqlite(_) => SQLITE_PURGE_EVENTS,
            Store::Postgres(_) => RETENTION_BATCH,
        }
    }

    /// Deletes up to `limit` (at most [`RETENTION_BATCH`]) events received
    /// before `before_ms` whose deliveries are all delivered or dead and
    /// that no outbox row still needs, with their deliveries and attempts,
    /// in one transaction; each statement removes at most
    /// [`RETENTION_BATCH`] rows. Only events with an id above `after` are
    /// looked at (`""`: all). Deletes nothing while the outbox is long (see
    /// [`OUTBOX_TOO_LONG`]).
    pub async fn purge_expired(
        &self,
        before_ms: i64,
        after: &str,
        limit: usize,
    ) -> Result<PurgeBatch, StoreError> {
        if self.outbox_too_long().await? {
            return Ok(PurgeBatch::default());
        }
        let limit = limit_param(limit);
        let chunk = limit_param(RETENTION_BATCH);
        let bound = id_bound(before_ms);
        let mut done = PurgeBatch::default();
        match self {
            Store::Sqlite(s) => {
                // IMMEDIATE: the write lock from the start, so that the pick
                // and the deletes see one state of the store, and waiting
                // for the group-commit writer goes through the busy timeout.
                let mut tx = s.write.begin_with("BEGIN IMMEDIATE").await?;
                purge_batch!(
                    tx,
                    done,
                    [SQLITE_PICK, after, &bound, before_ms, limit],
                    // SQLite takes the batch's ids as one JSON array.
                    |ids| serde_json::to_string(&ids).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    [
                        SQLITE_DELETE_ATTEMPTS,
                        SQLITE_DELETE_DELIVERIES,
                        SQLITE_DELETE_EVENTS
                    ],
                    chunk
                );
            }
            Store::Postgres(p) => {
                let mut tx = p.pool.begin().await?;
                purge_batch!(
                    tx,
                    done,
                    [PG_PICK, after, &bound, before_ms, limit],
                    |ids| ids.as_slice(),
                    [PG_DELETE_ATTEMPTS, PG_DELETE_DELIVERIES, PG_DELETE_EVENTS],
                    chunk
                );
            }
        }
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
        let limit = limit_param(limit);
        let bound = id_bound(before_ms);
        let ids: Vec<String> = match self {
            Store::Sqlite(s) => {
                sqlx::query_scalar(SQLITE_BLANK)
                    .bind(after)
                    .bind(&bound)
                    .bind(before_ms)
                    .bind(limit)
                    .fetch_all(&s.write)
                    .await?
            }
            Store::Postgres(p) => {
                sqlx::query_scalar(PG_BLANK)
                    .bind(after)
                    .bind(&bound)
                    .bind(before_ms)
                    .bind(limit)
                    .fetch_all(&p.pool)
                    .await?
            }
        };
        Ok(BlankBatch {
            blanked: ids.len() as u64,
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

    /// SQLite: gives up to [`VACUUM_PAGES`] of the file's free pages back
    /// to the file system (`auto_vacuum = INCREMENTAL`) in one statement,
    /// and returns how many went and how many are still free; the caller
    /// repeats, pausing between (each statement holds the write lock).
    /// PostgreSQL: nothing (its own vacuum makes the space reusable).
    pub async fn reclaim_space(&self) -> Result<(u64, u64), StoreError> {
        let Store::Sqlite(s) = self else {
            return Ok((0, 0));
        };
        let free: i64 = sqlx::query_scalar("PRAGMA freelist_count")
            .fetch_one(&s.write)
            .await?;
        if free <= 0 {
            return Ok((0, 0));
        }
        sqlx::query(&format!("PRAGMA incremental_vacuum({})", free.min(VACUUM_PAGES)))
            .execute(&s.write)
            .await?;
        let left: i64 = sqlx::query_scalar("PRAGMA freelist_count")
            .fetch_one(&s.write)
            .await?;
        let pages = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok((pages(free - left), pages(left)))
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
        for sql in [
            SQLITE_PICK,
            SQLITE_DELETE_ATTEMPTS,
            SQLITE_DELETE_DELIVERIES,
            SQLITE_BLANK,
        ] {
            assert!(!sql.contains('$'), "{sql}");
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
