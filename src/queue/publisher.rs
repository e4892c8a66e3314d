//! The outbox relay (ingress role): publishes stored events and their first
//! delivery jobs (or, for an operator's redelivery, only the new jobs), and
//! forgets an outbox row only after the broker confirmed every message for
//! it. A crash anywhere before that leaves the row, and it is published
//! again: at-least-once, never lost.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::{Broker, Session};
use super::{QueueTask, MAX_JOBS_PER_MESSAGE};
use crate::store::{JobRef, OutboxItem, Store, StoreError, OUTBOX_LEASE};
use crate::telemetry::Metrics;

const COMPONENT: &str = "outbox-publisher";
const BATCH: usize = 256;
/// The outbox is scanned at least this often while rows are handed over.
const SCAN_EVERY: Duration = Duration::from_secs(1);
const IDLE: Duration = Duration::from_millis(200);
/// Batches sent and waiting for their confirms at once.
const IN_FLIGHT: usize = 4;
/// A batch not confirmed within this is given up (and the channel reopened)
/// before its rows' leases (`OUTBOX_LEASE`) run out. A handed-off row's lease
/// started at its commit, so one that waited long in the hand-off queue may
/// be scanned and published again meanwhile: a duplicate, which consumers
/// tolerate by id, never a loss.
const CONFIRM_WAIT: Duration = Duration::from_secs(8);
/// Confirmed rows are deleted together, at most this long after their
/// confirms: one statement (and commit) for all the batches confirmed
/// meanwhile, where there was one per batch, which made deletes the most
/// numerous statement in scaled mode (docs/benchmarks/history.md, 2026-12-02). Far below
/// `OUTBOX_LEASE`, so no scan takes a confirmed row meanwhile.
const FORGET_AFTER: Duration = Duration::from_millis(50);
/// After the broker returned a job message (no queue took it), the pause
/// before the topology is declared again and the message sent again: a
/// queue deleted by hand comes back at once, and a topology that keeps
/// refusing messages is not hammered.
const RETURNED_PAUSE: Duration = Duration::from_secs(2);

/// Rows sent in a session that failed before their confirms came. The next
/// session sends them first, so that a dropped connection delays them by a
/// reconnect rather than by the rest of their lease (`OUTBOX_LEASE`, after
/// which any scan would take them). Some of them may have reached the broker:
/// sending them again is a duplicate, which consumers tolerate by id.
type Unsettled = Arc<Mutex<Vec<OutboxItem>>>;

pub struct OutboxPublisher {
    pub broker: Broker,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// Notified by the ingress after each commit.
    pub wake: Arc<Notify>,
    /// This process's committed outbox rows, handed over in memory by the
    /// ingress (`Store::ingest_for_publisher`), already leased to this
    /// publisher.
    pub handoff: Option<mpsc::Receiver<OutboxItem>>,
    pub shutdown: CancellationToken,
}

pub fn persistent(content_type: &str) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(ShortString::from(content_type))
}

/// Publishes one message and returns once the broker confirmed it.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<bool, lapin::Error> {
    let confirm = channel
        .basic_publish(
            ShortString::from(exchange),
            ShortString::from(routing_key),
            BasicPublishOptions::default(),
            body,
            properties,
        )
        .await?
        .await?;
    Ok(confirm.is_ack())
}

impl OutboxPublisher {
    pub async fn run(mut self) {
        self.broker.status.register(COMPONENT);
        let mut sources = Sources {
            handoff: self.handoff.take(),
            unsettled: Unsettled::default(),
            last_scan: None,
        };
        let (forget, confirmed) = mpsc::unbounded_channel();
        let forgetter = tokio::spawn(forget_confirmed(self.store.clone(), confirmed));
        let shared = Shared {
            confirms: TaskTracker::new(),
            returned: Arc::new(AtomicBool::new(false)),
            forget,
        };
        while !self.shutdown.is_cancelled() {
            let Some(session) = self.broker.open(COMPONENT, &self.shutdown).await else {
                break;
            };
            if let SessionEnd::Stop = self.publish(&session, &mut sources, &shared).await {
                break;
            }
        }
        shared.confirms.close();
        let _ = tokio::time::timeout(CONFIRM_WAIT, shared.confirms.wait()).await;
        // The last confirmed rows are deleted before the publisher ends (a
        // confirm wait still running keeps the channel open: its rows are
        // then published again after a restart, a tolerated duplicate).
        drop(shared);
        let _ = tokio::time::timeout(FORGET_AFTER + Duration::from_secs(5), forgetter).await;
        self.broker.mark_down(COMPONENT);
    }

    /// Publishes batches on one broker session until it fails (reconnect)
    /// or the publisher stops.
    async fn publish(&self, session: &Session, sources: &mut Sources, shared: &Shared) -> SessionEnd {
        // Cancelled by a confirm wait that failed: this session's channel
        // is unusable, and the loop reconnects.
        let failed = CancellationToken::new();
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut store_backoff = Duration::from_millis(100);
        loop {
            let permit = tokio::select! {
                permit = in_flight.clone().acquire_owned() => permit.ok(),
                _ = failed.cancelled() => None,
                _ = self.shutdown.cancelled() => return SessionEnd::Stop,
            };
            let Some(permit) = permit else {
                self.broker.mark_down(COMPONENT);
                return SessionEnd::Reconnect;
            };
            if failed.is_cancelled() {
                self.broker.mark_down(COMPONENT);
                return SessionEnd::Reconnect;
            }
            if shared.returned.swap(false, Ordering::AcqRel) {
                match self.declare_again(session, &failed).await {
                    Redeclared::Yes => {}
                    Redeclared::Stopping => return SessionEnd::Stop,
                    Redeclared::Failed => return SessionEnd::Reconnect,
                }
            }
            let items = match sources.gather(self).await {
                Ok(items) => {
                    store_backoff = Duration::from_millis(100);
                    items
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the outbox; retrying");
                    drop(permit);
                    self.idle(store_backoff, &failed).await;
                    store_backoff = (store_backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if items.is_empty() {
                drop(permit);
                // Each commit wakes this loop; otherwise it sleeps until
                // the next scan is due.
                self.idle(sources.idle_wait(), &failed).await;
                continue;
            }
            let pending = match self.send_batch(&session.channel, &items).await {
                Ok(pending) => pending,
                Err(e) => {
                    tracing::warn!(error = %e, "publishing failed; reconnecting");
                    requeue(&sources.unsettled, items);
                    self.broker.mark_down(COMPONENT);
                    return SessionEnd::Reconnect;
                }
            };
            // The next batch is claimed and sent while this one waits for
            // its confirms (a quorum queue's confirm waits for its log to
            // reach disk on a majority): the round trips overlap instead
            // of adding up.
            let after = shared.after_confirms(&self.metrics, &failed, &sources.unsettled);
            shared.confirms.spawn(async move {
                after.settle(items, pending).await;
                drop(permit);
            });
        }
    }

    /// Publishes every message of `items` without waiting for the broker.
    async fn send_batch(
        &self,
        channel: &Channel,
        items: &[OutboxItem],
    ) -> Result<PendingConfirms, lapin::Error> {
        let topology = &self.broker.topology;
        let exchange = ShortString::from(topology.events_exchange());
        let deliveries = ShortString::from(topology.deliveries_queue());
        let mut pending = Vec::new();
        for item in items {
            // A redelivery's row: the event was published when it was stored.
            if item.publish_event {
                let props =
                    persistent("application/json").with_message_id(ShortString::from(item.event_id.as_str()));
                let confirm = channel
                    .basic_publish(
                        exchange.clone(),
                        ShortString::from(item.routing_key.as_str()),
                        BasicPublishOptions::default(),
                        item.payload.as_bytes(),
                        props,
                    )
                    .await?;
                pending.push((vec![item.outbox_id], confirm));
            }
        }
        // The batch's delivery jobs travel together, up to
        // `MAX_JOBS_PER_MESSAGE` a message; a message's confirm covers the
        // rows of every job in it.
        let jobs: Vec<(i64, JobRef)> = items
            .iter()
            .flat_map(|item| item.jobs.iter().map(|job| (item.outbox_id, *job)))
            .collect();
        for chunk in jobs.chunks(MAX_JOBS_PER_MESSAGE) {
            let refs: Vec<JobRef> = chunk.iter().map(|(_, job)| *job).collect();
            let mut rows: Vec<i64> = chunk.iter().map(|(id, _)| *id).collect();
            rows.dedup();
            // Mandatory: a job message no queue takes (the deliveries queue
            // deleted or not declared) comes back instead of being confirmed
            // and dropped, and its rows stay (`confirmed_ids`).
            let confirm = channel
                .basic_publish(
                    ShortString::from(""),
                    deliveries.clone(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &QueueTask::for_jobs(refs).to_bytes(),
                    persistent("application/json"),
                )
                .await?;
            pending.push((rows, confirm));
        }
        Ok(pending)
    }

    /// Sleeps for `wait` (commits do not cut it short).
    /// Declares the topology again after messages came back unroutable
    /// (someone deleted a queue), once a short pause has passed.
    async fn declare_again(&self, session: &Session, failed: &CancellationToken) -> Redeclared {
        self.idle_until(RETURNED_PAUSE, failed).await;
        if self.shutdown.is_cancelled() {
            return Redeclared::Stopping;
        }
        if let Err(e) = self
            .broker
            .topology
            .declare(&session.connection, &session.channel)
            .await
        {
            tracing::warn!(error = %e, "cannot declare the topology again; reconnecting");
            self.broker.mark_down(COMPONENT);
            return Redeclared::Failed;
        }
        tracing::info!("topology declared again; sending the returned jobs again");
        Redeclared::Yes
    }

    /// Leases outbox rows (up to a batch with `items`) and adds those not
    /// already in `items`: a row sent again may be scanned too, once its
    /// lease ran out, and once in a batch is enough. (The outbox gauge is
    /// refreshed by the relay's upkeep timer, broker up or down.)
    async fn scan_into(&self, items: &mut Vec<OutboxItem>) -> Result<(), StoreError> {
        let scanned = self.store.outbox_claim(BATCH - items.len(), OUTBOX_LEASE).await?;
        let held: HashSet<i64> = items.iter().map(|i| i.outbox_id).collect();
        items.extend(scanned.into_iter().filter(|s| !held.contains(&s.outbox_id)));
        Ok(())
    }

    async fn idle_until(&self, wait: Duration, failed: &CancellationToken) {
        tokio::select! {
            _ = failed.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }

    async fn idle(&self, wait: Duration, failed: &CancellationToken) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = failed.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }
}

/// What became of a sent batch.
enum Settled {
    /// Every confirm came; the confirmed rows are being forgotten (a row the
    /// broker refused stays, and its lease runs out).
    Done,
    /// As `Done`, but the messages of these rows came back unroutable: they
    /// are to be sent again once the topology is declared again.
    Returned(HashSet<i64>),
    /// The confirms did not come: the channel is unusable, and the rows are
    /// to be sent again (they stay in the outbox meanwhile).
    Failed,
}

/// Where a batch's rows come from: rows sent but not settled (to send
/// again), rows this process just committed (in memory), and the outbox
/// table, which finds the rest (other processes' rows whose lease ran out,
/// redeliveries).
struct Sources {
    handoff: Option<mpsc::Receiver<OutboxItem>>,
    unsettled: Unsettled,
    /// When the outbox was last scanned; the first pass scans.
    last_scan: Option<Instant>,
}

impl Sources {
    /// Up to a batch of rows. The table is scanned, without a hand-off
    /// queue, whenever nothing is at hand, and with one at least every
    /// `SCAN_EVERY`. An error only when nothing at all could be gathered
    /// (handed-off rows are published even if the scan failed).
    async fn gather(&mut self, publisher: &OutboxPublisher) -> Result<Vec<OutboxItem>, StoreError> {
        let mut items = take_unsettled(&self.unsettled, BATCH);
        items.extend(take_handed_off(self.handoff.as_mut(), BATCH - items.len()));
        let scan_due = match (&self.handoff, self.last_scan) {
            (_, None) => true,
            (None, Some(_)) => items.is_empty(),
            (Some(_), Some(at)) => at.elapsed() >= SCAN_EVERY,
        };
        if scan_due && items.len() < BATCH {
            match publisher.scan_into(&mut items).await {
                Ok(()) => self.last_scan = Some(Instant::now()),
                Err(e) if items.is_empty() => return Err(e),
                Err(e) => tracing::warn!(error = %e, "cannot read the outbox; publishing what is at hand"),
            }
        }
        Ok(items)
    }

    /// How long an idle publisher sleeps: until the next scan is due (each
    /// commit wakes it sooner).
    fn idle_wait(&self) -> Duration {
        match (&self.handoff, self.last_scan) {
            (Some(_), Some(at)) => SCAN_EVERY.saturating_sub(at.elapsed()),
            _ => IDLE,
        }
    }
}

/// What outlives one broker session: the confirm waits of sent batches (on
/// shutdown they get a moment to finish, so that confirmed rows are
/// forgotten rather than republished), whether messages came back
/// unroutable (the topology is declared again before the next batch), and
/// where confirmed rows go to be deleted.
struct Shared {
    confirms: TaskTracker,
    returned: Arc<AtomicBool>,
    forget: mpsc::UnboundedSender<Vec<i64>>,
}

impl Shared {
    fn after_confirms(
        &self,
        metrics: &Arc<Metrics>,
        failed: &CancellationToken,
        unsettled: &Unsettled,
    ) -> AfterConfirms {
        AfterConfirms {
            forget: self.forget.clone(),
            metrics: metrics.clone(),
            failed: failed.clone(),
            unsettled: unsettled.clone(),
            returned: self.returned.clone(),
        }
    }
}

enum SessionEnd {
    Stop,
    Reconnect,
}

/// After [`OutboxPublisher::declare_again`].
enum Redeclared {
    Yes,
    Stopping,
    /// Reconnect.
    Failed,
}

/// What a batch's confirm wait acts on when it ends.
struct AfterConfirms {
    forget: mpsc::UnboundedSender<Vec<i64>>,
    metrics: Arc<Metrics>,
    /// Cancelled when the session's channel is unusable.
    failed: CancellationToken,
    unsettled: Unsettled,
    /// Set when messages came back unroutable.
    returned: Arc<AtomicBool>,
}

impl AfterConfirms {
    /// Waits for the batch's confirms: confirmed rows are forgotten,
    /// returned ones are sent again after the topology is declared again,
    /// and on a failure all are sent again on the next session.
    async fn settle(self, items: Vec<OutboxItem>, pending: PendingConfirms) {
        match settle_batch(&self.forget, &self.metrics, &items, pending).await {
            Settled::Done => {}
            Settled::Returned(ids) => {
                // Flagged before the rows are requeued, so that the loop
                // declares the topology before it sends them again.
                self.returned.store(true, Ordering::Release);
                requeue(
                    &self.unsettled,
                    items.into_iter().filter(|i| ids.contains(&i.outbox_id)).collect(),
                );
            }
            Settled::Failed => {
                // Requeued before the cancel, so that the next session finds
                // them.
                requeue(&self.unsettled, items);
                self.failed.cancel();
            }
        }
    }
}

/// Waits for a sent batch's confirms and has the rows they cover forgotten.
async fn settle_batch(
    forget: &mpsc::UnboundedSender<Vec<i64>>,
    metrics: &Metrics,
    items: &[OutboxItem],
    pending: PendingConfirms,
) -> Settled {
    match tokio::time::timeout(CONFIRM_WAIT, confirmed_ids(items, pending)).await {
        Ok(Ok((confirmed, returned))) => {
            // Redelivery rows publish jobs only, not their event.
            let count = items
                .iter()
                .filter(|i| i.publish_event && confirmed.contains(&i.outbox_id))
                .count() as u64;
            if forget.send(confirmed).is_err() {
                // Published but not forgotten: published again later
                // (a duplicate, which consumers tolerate by id).
                tracing::warn!("outbox rows published but not forgotten: the publisher is stopping");
            }
            metrics.events_published(count);
            if returned.is_empty() {
                Settled::Done
            } else {
                Settled::Returned(returned)
            }
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "waiting for publisher confirms failed; reconnecting");
            Settled::Failed
        }
        Err(_) => {
            // Left unconfirmed, the rows' leases would run out and another
            // claim publish them beside these.
            tracing::warn!("no publisher confirms within the outbox lease; reconnecting");
            Settled::Failed
        }
    }
}

/// Deletes confirmed outbox rows: those of every batch confirmed within
/// `FORGET_AFTER` of the first, in one statement. Ends when every sender is
/// gone, after deleting what it was given.
async fn forget_confirmed(store: Store, mut confirmed: mpsc::UnboundedReceiver<Vec<i64>>) {
    while let Some(mut ids) = confirmed.recv().await {
        let gather = tokio::time::sleep(FORGET_AFTER);
        tokio::pin!(gather);
        loop {
            tokio::select! {
                more = confirmed.recv() => match more {
                    Some(more) => ids.extend(more),
                    None => break,
                },
                _ = &mut gather => break,
            }
        }
        if let Err(e) = store.outbox_done(&ids).await {
            // Published but not deleted: published again once their lease
            // runs out (a duplicate, which consumers tolerate by id).
            tracing::warn!(error = %e, count = ids.len(), "cannot mark outbox rows published");
        }
    }
}

/// Keeps a failed batch's rows for the next session.
fn requeue(unsettled: &Unsettled, items: Vec<OutboxItem>) {
    // A poisoned lock only means a panic elsewhere while it was held; the
    // vector itself is still whole.
    let mut held = unsettled.lock().unwrap_or_else(|e| e.into_inner());
    held.extend(items);
}

/// Up to `limit` rows of failed batches, oldest first.
fn take_unsettled(unsettled: &Unsettled, limit: usize) -> Vec<OutboxItem> {
    let mut held = unsettled.lock().unwrap_or_else(|e| e.into_inner());
    let n = held.len().min(limit);
    held.drain(..n).collect()
}

/// Up to `limit` rows waiting in the hand-off queue, without waiting.
fn take_handed_off(handoff: Option<&mut mpsc::Receiver<OutboxItem>>, limit: usize) -> Vec<OutboxItem> {
    let mut items = Vec::new();
    if let Some(rx) = handoff {
        while items.len() < limit {
            match rx.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
    }
    items
}

/// The confirms a sent batch waits for, each with the outbox rows it covers.
type PendingConfirms = Vec<(Vec<i64>, PublisherConfirm)>;

/// Waits for every confirm of a batch. Returns the outbox ids whose messages
/// were all acknowledged and routed, and those with a message that came back
/// unroutable. A returned message is acked too (the broker sends
/// `basic.return`, then `basic.ack`): only the return tells it from one a
/// queue took, and its row must stay.
async fn confirmed_ids(
    items: &[OutboxItem],
    pending: PendingConfirms,
) -> Result<(Vec<i64>, HashSet<i64>), lapin::Error> {
    let mut refused = HashSet::new();
    let mut returned = HashSet::new();
    for (ids, confirm) in pending {
        match confirm.await? {
            Confirmation::Ack(None) => {}
            Confirmation::Ack(Some(message)) => {
                tracing::warn!(
                    reply_code = message.reply_code,
                    reply_text = %message.reply_text,
                    routing_key = %message.delivery.routing_key,
                    rows = ids.len(),
                    "the broker returned a job message: no queue took it (was the deliveries queue \
                     deleted?); its outbox rows stay and are sent again after the topology is \
                     declared again"
                );
                returned.extend(ids);
            }
            Confirmation::Nack(_) | Confirmation::NotRequested => refused.extend(ids),
        }
    }
    if !refused.is_empty() {
        tracing::warn!(
            count = refused.len(),
            "broker refused some publishes; they will be retried"
        );
    }
    let confirmed = items
        .iter()
        .map(|i| i.outbox_id)
        .filter(|id| !refused.contains(id) && !returned.contains(id))
        .collect();
    Ok((confirmed, returned))
}
