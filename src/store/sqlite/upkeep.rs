//! Retention's writes on SQLite (`store/retention.rs`), run by the writer
//! thread (`writer.rs`) a small step at a time.
//!
//! SQLite has one write lock. A purge that took it from a connection of its
//! own held it for a whole transaction of 200 events (about 13 ms on the
//! 2-core machine), and every ingest that came meanwhile waited that long:
//! ingest p99 tripled while a purge of 1M old events ran (BENCHMARKS.md,
//! "Retention"). In the writer, a purge goes [`STEP_EVENTS`] events at a
//! time and looks at the writer's queue after each step: as soon as a write
//! waits, it stops, and the waiting writes join its transaction, so that
//! they share its commit (one fsync) and wait for at most one step.

use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::store::retention::{BlankBatch, PurgeBatch, RETENTION_BATCH};
use crate::store::StoreError;

/// Events one purge step picks and deletes (with their deliveries and
/// attempts): about 1–2 ms of work, the most an ingest waits for.
pub(super) const STEP_EVENTS: usize = 25;
/// Events one blanking step rewrites: a blank is one small update a row.
const STEP_BLANK: usize = 100;
/// Pages one `incremental_vacuum` step gives back (4 KiB each).
const STEP_PAGES: i64 = 256;
/// The longest one upkeep operation holds the writer even when nothing
/// waits: readers and other connections' writes (operator redeliveries,
/// lease releases) get the lock between operations.
const MAX_HOLD: Duration = Duration::from_millis(20);

/// One retention operation for the writer. Ids are event ids; `bound` is
/// the exclusive upper id, `after` the exclusive lower one.
pub(in crate::store) enum Upkeep {
    Purge {
        before_ms: i64,
        after: String,
        bound: String,
        limit: usize,
    },
    Blank {
        before_ms: i64,
        after: String,
        bound: String,
        limit: usize,
    },
    /// Gives up to `pages` free pages back to the file system.
    Reclaim { pages: i64 },
}

/// What an [`Upkeep`] did.
pub(in crate::store) enum UpkeepDone {
    Purged(PurgeBatch),
    Blanked(BlankBatch),
    /// Pages given back, and pages still free.
    Reclaimed(u64, u64),
}

/// Finished events received before `?3`, ids in (`?1`, `?2`), oldest first.
/// By event, not by the pending-jobs index SQLite would otherwise pick; the
/// outbox as a set built once, since `outbox.event_id` has no index.
const PICK: &str = "SELECT e.id FROM events e \
     WHERE e.id > ?1 AND e.id < ?2 AND e.received_at < ?3 \
     AND NOT EXISTS (SELECT 1 FROM deliveries d INDEXED BY deliveries_event \
         WHERE d.event_id = e.id AND d.status = 'pending') \
     AND e.id NOT IN (SELECT event_id FROM outbox) \
     ORDER BY e.id LIMIT ?4";
const DELETE_ATTEMPTS: &str = "DELETE FROM attempts WHERE rowid IN \
     (SELECT a.rowid FROM deliveries d INDEXED BY deliveries_event JOIN attempts a ON a.delivery_id = d.id \
     WHERE d.event_id IN (SELECT value FROM json_each(?1)) LIMIT ?2)";
/// Newest first: a redelivery (`redelivery_of`) always has a higher id than
/// the dead delivery it replaced, so it goes in the same or an earlier
/// statement and the self-reference never blocks a delete.
const DELETE_DELIVERIES: &str = "DELETE FROM deliveries WHERE id IN \
     (SELECT id FROM deliveries INDEXED BY deliveries_event \
     WHERE event_id IN (SELECT value FROM json_each(?1)) ORDER BY id DESC LIMIT ?2)";
const DELETE_EVENTS: &str = "DELETE FROM events WHERE id IN (SELECT value FROM json_each(?1))";
/// `length()` of a blob reads its size, not its bytes.
const BLANK: &str = "UPDATE events SET raw_body = x'', raw_headers = '' WHERE id IN \
     (SELECT id FROM events WHERE id > ?1 AND id < ?2 AND received_at < ?3 \
     AND (length(raw_body) > 0 OR raw_headers <> '') ORDER BY id LIMIT ?4) RETURNING id";

/// Runs `op` in the writer's open transaction, a step at a time, until it
/// is done, has done its `limit`, has held the writer for [`MAX_HOLD`], or
/// `give_way` says a write is waiting. At least one step always runs, so
/// that retention makes progress under any traffic.
pub(super) fn upkeep_in(
    conn: &Connection,
    op: &Upkeep,
    give_way: &dyn Fn() -> bool,
) -> Result<UpkeepDone, StoreError> {
    let started = Instant::now();
    let stop = || give_way() || started.elapsed() >= MAX_HOLD;
    Ok(match op {
        Upkeep::Purge {
            before_ms,
            after,
            bound,
            limit,
        } => UpkeepDone::Purged(purge(conn, (*before_ms, after, bound, *limit), &stop)?),
        Upkeep::Blank {
            before_ms,
            after,
            bound,
            limit,
        } => UpkeepDone::Blanked(blank(conn, (*before_ms, after, bound, *limit), &stop)?),
        Upkeep::Reclaim { pages } => {
            let (freed, left) = reclaim(conn, *pages, &stop)?;
            UpkeepDone::Reclaimed(freed, left)
        }
    })
}

type Range<'a> = (i64, &'a str, &'a str, usize);

fn sql_int(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn purge(
    conn: &Connection,
    (before_ms, after, bound, limit): Range<'_>,
    stop: &dyn Fn() -> bool,
) -> Result<PurgeBatch, StoreError> {
    let mut done = PurgeBatch::default();
    let mut after = after.to_owned();
    let mut picked = 0;
    loop {
        let want = STEP_EVENTS.min(limit - picked);
        let ids = event_ids(conn, PICK, (before_ms, &after, bound, want))?;
        let Some(last) = ids.iter().max().cloned() else {
            return Ok(done);
        };
        picked += ids.len();
        // The step's ids as one JSON array (`json_each`).
        let list = serde_json::to_string(&ids).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        done.attempts += delete_chunked(conn, DELETE_ATTEMPTS, &list)?;
        done.deliveries += delete_chunked(conn, DELETE_DELIVERIES, &list)?;
        done.events += conn.prepare_cached(DELETE_EVENTS)?.execute([&list])? as u64;
        done.last_id = Some(last.clone());
        after = last;
        if ids.len() < want {
            return Ok(done);
        }
        if picked >= limit || stop() {
            done.more = true;
            return Ok(done);
        }
    }
}

/// The event ids `sql` (`PICK` or `BLANK`) returns for a range.
fn event_ids(
    conn: &Connection,
    sql: &str,
    (before_ms, after, bound, want): Range<'_>,
) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let ids = stmt
        .query_map(rusqlite::params![after, bound, before_ms, sql_int(want)], |row| {
            row.get(0)
        })?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

/// Repeats a `DELETE … LIMIT` until it deletes less than
/// [`RETENTION_BATCH`] rows, so that no statement touches more.
fn delete_chunked(conn: &Connection, sql: &str, list: &str) -> Result<u64, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut deleted = 0;
    loop {
        let n = stmt.execute(rusqlite::params![list, sql_int(RETENTION_BATCH)])?;
        deleted += n as u64;
        if n < RETENTION_BATCH {
            return Ok(deleted);
        }
    }
}

fn blank(
    conn: &Connection,
    (before_ms, after, bound, limit): Range<'_>,
    stop: &dyn Fn() -> bool,
) -> Result<BlankBatch, StoreError> {
    let mut done = BlankBatch::default();
    let mut after = after.to_owned();
    loop {
        let want = STEP_BLANK.min(limit - usize::try_from(done.blanked).unwrap_or(limit));
        let ids = event_ids(conn, BLANK, (before_ms, &after, bound, want))?;
        let Some(last) = ids.iter().max().cloned() else {
            return Ok(done);
        };
        done.blanked += ids.len() as u64;
        done.last_id = Some(last.clone());
        after = last;
        if ids.len() < want {
            return Ok(done);
        }
        if done.blanked >= limit as u64 || stop() {
            done.more = true;
            return Ok(done);
        }
    }
}

fn free_pages(conn: &Connection) -> Result<i64, StoreError> {
    Ok(conn.query_row("PRAGMA freelist_count", [], |row| row.get(0))?)
}

fn reclaim(conn: &Connection, pages: i64, stop: &dyn Fn() -> bool) -> Result<(u64, u64), StoreError> {
    let as_count = |n: i64| u64::try_from(n).unwrap_or(0);
    let first = free_pages(conn)?;
    let mut free = first;
    while free > 0 && first - free < pages {
        let step = STEP_PAGES.min(free).min(pages - (first - free));
        // Stepped to the end: `incremental_vacuum` frees one page a step.
        let mut stmt = conn.prepare(&format!("PRAGMA incremental_vacuum({step})"))?;
        let mut rows = stmt.query([])?;
        while rows.next()?.is_some() {}
        drop(rows);
        let left = free_pages(conn)?;
        // Nothing moved: the next pass tries again rather than spin.
        if left >= free || stop() {
            free = left;
            break;
        }
        free = left;
    }
    Ok((as_count(first - free), as_count(free)))
}
