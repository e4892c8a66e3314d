//! WAL checkpoints on a thread of their own, so that the writer never waits
//! for one.
//!
//! By default SQLite checkpoints in the connection whose commit took the WAL
//! past 1,000 pages: that commit copies those pages into the database file
//! and syncs it before its callers get their answer. On a large file, with
//! retention deleting rows all over it, that was a stall of tens of
//! milliseconds in the ingest's tail. The writer's connection therefore does
//! not checkpoint (`wal_autocheckpoint = 0`); after each commit it nudges this
//! thread, which checkpoints (`PASSIVE`: alongside the writer and readers,
//! never blocking them) and then rests [`REST`] before it looks for the next
//! nudge, so that under load the WAL holds about that long's writes. Without
//! writes it sleeps on its channel: no timer runs.

use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::store::StoreError;

/// The least time between two checkpoints.
const REST: Duration = Duration::from_millis(100);

/// The writer's side: a nudge after each commit, dropped when one is already
/// waiting.
pub(super) struct Nudge(SyncSender<()>);

impl Nudge {
    pub(super) fn after_commit(&self) {
        let _ = self.0.try_send(());
    }
}

/// Opens the checkpointer's connection and starts its thread.
pub(super) fn start_checkpointer(path: &Path) -> Result<Nudge, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("payhook-sqlite-checkpoint".into())
        .spawn(move || run(&conn, &rx))
        .map_err(StoreError::WriterThread)?;
    Ok(Nudge(tx))
}

fn run(conn: &Connection, nudges: &Receiver<()>) {
    // Until the writer (every sender) is gone. A nudge that came during the
    // rest waits in the channel (it holds one), so a busy store gets a
    // checkpoint every `REST`, and an idle one none.
    while nudges.recv().is_ok() {
        if let Err(e) = checkpoint(conn) {
            tracing::warn!(error = %e, "WAL checkpoint failed; the next commit tries again");
        }
        std::thread::sleep(REST);
    }
}

fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}
