//! The one clock of a relay: signature freshness, the embedded store's due
//! times and leases, the retry schedule, auto-pause and retention's
//! cut-offs all read it. Injected (`AppOptions::clock`), so that tests can
//! replay a recorded callback at the instant it was signed, and run the
//! retry schedule's real minutes without waiting for them.
//!
//! Two times stay on the system clock on purpose: an event's id and
//! `received_at` (a ULID, and the record of when payhook really received a
//! notice; retention finds events by that id), and, in PostgreSQL, the
//! database's own clock, which every process of a scaled relay shares
//! (`store/postgres.rs`, `db_now!`); there the injected clock is only the
//! caller's side of the skew correction.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;

    /// Now, in milliseconds since the epoch (the store's unit).
    fn now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that stays where it is set.
#[derive(Debug)]
pub struct FixedClock(Mutex<DateTime<Utc>>);

impl FixedClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        Self(Mutex::new(at))
    }

    pub fn set(&self, at: DateTime<Utc>) {
        match self.0.lock() {
            Ok(mut guard) => *guard = at,
            Err(poisoned) => *poisoned.into_inner() = at,
        }
    }

    /// Moves the clock on by `by`.
    pub fn advance(&self, by: std::time::Duration) {
        let by = chrono::Duration::from_std(by).unwrap_or(chrono::Duration::MAX);
        self.set(self.now() + by);
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        match self.0.lock() {
            Ok(guard) => *guard,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }
}
