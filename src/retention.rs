//! Retention at run time: a task that keeps the store flat under steady
//! traffic. Every [`pass_interval`] it deletes the events past `[storage]
//! retention` whose deliveries are all delivered or dead (with those
//! deliveries and their attempts), blanks the raw callbacks past
//! `raw_retention`, and on SQLite gives the freed pages back to the file
//! system. Counted in `payhook_retention_deleted_total{what}`.
//!
//! A pass goes in batches of at most `RETENTION_BATCH` (1,000) rows per
//! statement until a batch runs out of events, so a backlog (a first start
//! on an old store) drains in one pass. On SQLite a batch runs in the
//! writer thread and stops early for waiting ingests. Between batches it waits as long as the
//! batch took: the ingest's writes get the store at least half the time.
//! The SQL is in `store/retention.rs`.
//!
//! Whichever process delivers runs it (`--role all` or `dispatcher`); two at
//! once only share the work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::{Store, StoreError, RETENTION_BATCH};
use crate::telemetry::Metrics;

/// The longest time between two passes, whatever the retention.
const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest (a retention of seconds, in tests): no busy loop.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The shortest pause between two batches of a pass.
const MIN_BATCH_GAP: Duration = Duration::from_millis(5);
/// Each pause is this many times as long as the batch before it: retention
/// takes at most a tenth of the store's write time. The ingest's p99 during
/// a large purge follows this share of the two cores (BENCHMARKS.md,
/// "Retention (SQLite)": 9.6-11.7 ms at 3, 7.3-7.4 ms at 9, 3.2-3.5 ms with
/// no purge), and a purge needs no speed: at 9 it still deletes some
/// thousands of events a second, far more than any steady traffic adds.
const PAUSE_FACTOR: u32 = 9;

/// How often a pass runs: a tenth of the retention, so that nothing stays
/// much past it, and at least every minute, so that each pass has little
/// to do and the store's size stays flat.
pub fn pass_interval(retention: Duration) -> Duration {
    (retention / 10).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassReport {
    pub events: u64,
    pub deliveries: u64,
    pub attempts: u64,
    /// Events whose raw body and headers were blanked.
    pub raw: u64,
    /// SQLite pages given back to the file system.
    pub pages_freed: u64,
    /// Batches (statements' transactions) the pass took.
    pub batches: u64,
}

pub struct Retention {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// "Now" for the cut-offs: injected, so that tests can move it.
    pub clock: Arc<dyn Clock>,
    pub retention: Duration,
    pub raw_retention: Duration,
    pub shutdown: CancellationToken,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

impl Retention {
    /// Runs a pass every [`pass_interval`] until shutdown. A failed pass is
    /// logged and the next one tries again: nothing it left half done is
    /// inconsistent (each batch is one transaction).
    pub async fn run(self) {
        let mut tick = tokio::time::interval(pass_interval(self.retention));
        // After a long pass, the next starts an interval later, not at once.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            let started = Instant::now();
            match self.pass().await {
                Ok(r) if r.events + r.raw > 0 => tracing::debug!(
                    events = r.events,
                    deliveries = r.deliveries,
                    attempts = r.attempts,
                    raw = r.raw,
                    pages_freed = r.pages_freed,
                    batches = r.batches,
                    took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    "retention pass"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention pass failed; the next one tries again"),
            }
        }
    }

    /// One pass: deletes, then blanks, then (SQLite) gives pages back.
    pub async fn pass(&self) -> Result<PassReport, StoreError> {
        let now = self.clock.now().timestamp_millis();
        let mut report = PassReport::default();
        self.purge(now.saturating_sub(millis(self.retention)), &mut report)
            .await?;
        // Stopped mid-way: nothing more (blanking events the purge did not
        // get to yet would be wasted work).
        if self.shutdown.is_cancelled() {
            return Ok(report);
        }
        self.blank(now.saturating_sub(millis(self.raw_retention)), &mut report)
            .await?;
        if report.events + report.raw > 0 && !self.shutdown.is_cancelled() {
            self.reclaim(&mut report).await?;
        }
        Ok(report)
    }

    /// SQLite: gives the freed pages back, a bounded number per statement.
    async fn reclaim(&self, report: &mut PassReport) -> Result<(), StoreError> {
        loop {
            let started = Instant::now();
            let (freed, left) = self.store.reclaim_space().await?;
            report.pages_freed += freed;
            // Nothing moved (the file is busy, or nothing was free): the
            // next pass tries again rather than spin.
            if freed == 0 || left == 0 {
                return Ok(());
            }
            if !self.pause(started.elapsed()).await {
                return Ok(());
            }
        }
    }

    async fn purge(&self, before_ms: i64, report: &mut PassReport) -> Result<(), StoreError> {
        let mut after = String::new();
        loop {
            let started = Instant::now();
            let batch = self
                .store
                .purge_expired(before_ms, &after, RETENTION_BATCH)
                .await?;
            report.batches += 1;
            report.events += batch.events;
            report.deliveries += batch.deliveries;
            report.attempts += batch.attempts;
            self.metrics.retention_deleted("events", batch.events);
            self.metrics.retention_deleted("deliveries", batch.deliveries);
            self.metrics.retention_deleted("attempts", batch.attempts);
            match batch.last_id {
                Some(last) if batch.more => after = last,
                _ => return Ok(()),
            }
            if !self.pause(started.elapsed()).await {
                return Ok(());
            }
        }
    }

    async fn blank(&self, before_ms: i64, report: &mut PassReport) -> Result<(), StoreError> {
        // Where the last finished pass (of any process) got to.
        let mut after = self.store.raw_blanked_from().await?;
        let mut last_blanked = None;
        loop {
            let started = Instant::now();
            let batch = self.store.blank_raw(before_ms, &after, RETENTION_BATCH).await?;
            report.batches += 1;
            report.raw += batch.blanked;
            self.metrics.retention_deleted("raw", batch.blanked);
            let full = batch.more;
            if let Some(last) = batch.last_id {
                after.clone_from(&last);
                last_blanked = Some(last);
            }
            if !full {
                // Done: the next pass starts about here.
                return match last_blanked {
                    Some(last) => self.store.set_raw_blanked(&last).await,
                    None => Ok(()),
                };
            }
            if !self.pause(started.elapsed()).await {
                return Ok(());
            }
        }
    }

    /// Waits between two batches [`PAUSE_FACTOR`] times as long as the last
    /// one took (at least [`MIN_BATCH_GAP`]), whatever the traffic. False on
    /// shutdown.
    async fn pause(&self, batch_took: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep((batch_took * PAUSE_FACTOR).max(MIN_BATCH_GAP)) => true,
            _ = self.shutdown.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_run_at_least_every_minute() {
        let day = Duration::from_secs(86_400);
        assert_eq!(pass_interval(30 * day), MAX_INTERVAL);
        assert_eq!(pass_interval(Duration::from_secs(120)), Duration::from_secs(12));
        assert_eq!(pass_interval(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(pass_interval(Duration::from_millis(10)), MIN_INTERVAL);
    }
}
