//! The operations both backends offer alike, listed once.
//!
//! [`backend_interface!`] takes the list and declares the [`Backend`]
//! trait, implements it for [`SqliteStore`] and [`PostgresStore`] (whose
//! own methods do the work), and gives [`Store`] a method of each name that
//! calls the backend in use. A backend that lacks one of them, or has it
//! with another signature, does not compile. What the backends do
//! differently (batches, retention, the hand-over to a publisher) is
//! written out in `mod.rs` and `retention.rs`.

use std::future::Future;
use std::time::Duration;

use super::{
    AttemptRecord, BulkRedelivery, ClaimedJob, DeliveryDetail, DeliveryFilter, DeliveryRow, EventFilter,
    IngestOutcome, JobClaim, JobRef, NewDelivery, NewEvent, OutboxItem, PostgresStore, RecordOutcome,
    SqliteStore, Store, StoreError, StoredAttempt, StoredEvent,
};
use crate::domain::EndpointId;

macro_rules! backend_interface {
    ($(
        $(#[$attr:meta])*
        async fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;
    )*) => {
        /// A store backend: what [`Store`] asks of each.
        pub trait Backend: Send + Sync {
            $(
                $(#[$attr])*
                fn $name(&self $(, $arg: $ty)*) -> impl Future<Output = $ret> + Send;
            )*
        }

        impl Backend for SqliteStore {
            $(
                fn $name(&self $(, $arg: $ty)*) -> impl Future<Output = $ret> + Send {
                    SqliteStore::$name(self $(, $arg)*)
                }
            )*
        }

        impl Backend for PostgresStore {
            $(
                fn $name(&self $(, $arg: $ty)*) -> impl Future<Output = $ret> + Send {
                    PostgresStore::$name(self $(, $arg)*)
                }
            )*
        }

        impl Store {
            $(
                $(#[$attr])*
                pub async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Store::Sqlite(s) => Backend::$name(s $(, $arg)*).await,
                        Store::Postgres(s) => Backend::$name(s $(, $arg)*).await,
                    }
                }
            )*
        }
    };
}

backend_interface! {
    async fn ping(&self) -> Result<(), StoreError>;

    async fn ingest(&self, new: NewEvent) -> Result<IngestOutcome, StoreError>;

    /// Leases up to `limit` due jobs, skipping endpoints in `busy`.
    async fn claim_due(&self, limit: usize, lease: Duration, busy: &[String]) -> Result<Vec<ClaimedJob>, StoreError>;

    /// When the earliest unleased pending job is due (epoch ms).
    async fn next_due_at(&self) -> Result<Option<i64>, StoreError>;

    async fn record_attempt(&self, record: AttemptRecord) -> Result<RecordOutcome, StoreError>;

    /// Gives leased jobs back (graceful shutdown), so another dispatcher can
    /// take them at once instead of waiting out the lease.
    async fn release(&self, delivery_ids: &[i64]) -> Result<(), StoreError>;

    /// Renews the leases of jobs this dispatcher still holds (waiting for a
    /// slot of their endpoint, or in an attempt) for another `lease`. Only
    /// live leases of pending jobs are renewed: one that ran out may be
    /// another dispatcher's now, and a finished job needs none.
    async fn extend_leases(&self, delivery_ids: &[i64], lease: Duration) -> Result<(), StoreError>;

    /// Puts a leased job aside for `hold` without an attempt: it stays
    /// pending at the same attempt and due time, leased to nobody until then,
    /// so that no claim, sweep or embedded worker takes it before. Returns
    /// its `next_attempt_at` (how long it has been due), or `None` if it is
    /// no longer pending at `attempt`.
    async fn defer(&self, job: JobRef, hold: Duration) -> Result<Option<i64>, StoreError>;

    async fn prune_nonces(&self, older_than_ms: i64) -> Result<u64, StoreError>;

    async fn count_pending(&self) -> Result<u64, StoreError>;

    async fn deliveries_for_event(&self, event_id: &str) -> Result<Vec<DeliveryRow>, StoreError>;

    async fn attempts_for_delivery(&self, delivery_id: i64) -> Result<Vec<StoredAttempt>, StoreError>;

    /// Leases up to `limit` unpublished outbox rows for publishing.
    async fn outbox_claim(&self, limit: usize, lease: Duration) -> Result<Vec<OutboxItem>, StoreError>;

    /// Removes outbox rows whose publishes the broker confirmed.
    async fn outbox_done(&self, outbox_ids: &[i64]) -> Result<(), StoreError>;

    async fn count_outbox(&self) -> Result<u64, StoreError>;

    /// Leases one specific job (RabbitMQ mode) if it is pending at that
    /// attempt, due, and nobody else holds it; otherwise says why not.
    async fn claim_job(&self, job: JobRef, lease: Duration) -> Result<JobClaim, StoreError>;

    /// Pending, unleased jobs due before `due_before_ms` (their queue message
    /// was lost, e.g. a crash between storing and publishing). Their due time
    /// is moved to now so that one sweep does not find them again at once.
    async fn requeue_overdue(&self, due_before_ms: i64, limit: usize) -> Result<Vec<JobRef>, StoreError>;

    async fn close(&self) -> ();

    /// Events matching `filter`, newest first, at most `filter.limit`.
    async fn list_events(&self, filter: &EventFilter) -> Result<Vec<StoredEvent>, StoreError>;

    async fn event(&self, event_id: &str) -> Result<Option<StoredEvent>, StoreError>;

    /// Every delivery of one event, oldest first.
    async fn delivery_details_for_event(&self, event_id: &str) -> Result<Vec<DeliveryDetail>, StoreError>;

    /// Dead deliveries that nothing redelivered yet, to any endpoint.
    async fn count_dead_unresolved(&self) -> Result<u64, StoreError>;

    /// Deliveries matching `filter`, newest first, at most `filter.limit`.
    async fn list_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<DeliveryDetail>, StoreError>;

    /// One new pending delivery of `event_id` to each of `endpoints`, due now,
    /// in one transaction. A dead delivery of the event to the same endpoint
    /// counts as redelivered by it. With `outbox` (RabbitMQ mode), also an
    /// outbox row that publishes the new jobs but not the event again.
    async fn redeliver_event(&self, event_id: &str, endpoints: &[EndpointId], outbox: bool) -> Result<Vec<NewDelivery>, StoreError>;

    /// For every dead delivery to one of `endpoints` not yet redelivered, a
    /// new pending delivery (same event, same endpoint), due now, in one
    /// transaction; with `outbox`, one jobs-only outbox row per event.
    /// At most `limit` (oldest first), so that a client can go in batches and
    /// show progress. Returns how many were created and how many are left.
    async fn redeliver_dead(&self, endpoints: &[EndpointId], outbox: bool, limit: Option<u32>) -> Result<BulkRedelivery, StoreError>;
}
