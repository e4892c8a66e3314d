//! The dispatcher in RabbitMQ mode: consumes delivery jobs with manual acks
//! and a bounded prefetch, and acks each only after its attempt (and the
//! message for its next step) is stored.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::Channel;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::Broker;
use super::publisher::{persistent, publish_confirmed};
use super::QueueTask;
use crate::dispatch::Deliverer;
use crate::store::{now_ms, JobClaim, JobRef, NextStep, RecordOutcome};

const COMPONENT: &str = "delivery-consumer";
const SWEEPER: &str = "overdue-sweeper";

pub struct DeliveryConsumer {
    pub broker: Broker,
    pub deliverer: Deliverer,
    pub shutdown: CancellationToken,
}

fn ms_duration(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

impl DeliveryConsumer {
    pub async fn run(self) {
        self.broker.status.register(COMPONENT);
        self.broker.status.register(SWEEPER);
        let sweeper = tokio::spawn(sweep_overdue(
            self.broker.clone(),
            self.deliverer.clone(),
            self.shutdown.clone(),
        ));
        let concurrency = self.deliverer.delivery.concurrency;
        let slots = Arc::new(Semaphore::new(concurrency));
        let tasks = TaskTracker::new();
        let per_endpoint = EndpointSlots::new(self.deliverer.delivery.per_endpoint_concurrency);
        let mut last_session = None;
        'connect: while !self.shutdown.is_cancelled() {
            let Some(session) = self.broker.open(COMPONENT, &self.shutdown).await else {
                break;
            };
            let prefetch = u16::try_from(concurrency).unwrap_or(u16::MAX);
            let consumer = async {
                session
                    .channel
                    .basic_qos(prefetch, BasicQosOptions::default())
                    .await?;
                session
                    .channel
                    .basic_consume(
                        ShortString::from(self.broker.topology.deliveries_queue()),
                        ShortString::from(format!("payhook-{}", ulid::Ulid::new())),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await
            }
            .await;
            let mut consumer = match consumer {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start consuming; reconnecting");
                    self.broker.mark_down(COMPONENT);
                    continue;
                }
            };
            // What every message of this session needs, shared.
            let handling = Arc::new(Handling {
                broker: self.broker.clone(),
                deliverer: self.deliverer.clone(),
                per_endpoint: per_endpoint.clone(),
                channel: session.channel.clone(),
                slots: slots.clone(),
                tasks: tasks.clone(),
                shutdown: self.shutdown.clone(),
            });
            loop {
                let next = tokio::select! {
                    next = consumer.next() => next,
                    _ = self.shutdown.cancelled() => {
                        last_session = Some(session);
                        break 'connect;
                    }
                };
                match next {
                    Some(Ok(delivery)) => {
                        tasks.spawn(handle_message(handling.clone(), delivery));
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "consumer failed; reconnecting");
                        break;
                    }
                    None => {
                        tracing::warn!("consumer stream ended; reconnecting");
                        break;
                    }
                }
            }
            self.broker.mark_down(COMPONENT);
        }
        // Shutdown: in-flight attempts finish and ack on the still-open
        // channel; anything unacked returns to the queue when it closes.
        tasks.close();
        let grace = self.deliverer.delivery.timeout + Duration::from_secs(2);
        let _ = tokio::time::timeout(grace, tasks.wait()).await;
        if let Some(session) = last_session {
            let _ = session.connection.close(200, "shutdown".into()).await;
        }
        let _ = sweeper.await;
        self.broker.mark_down(COMPONENT);
    }
}

async fn ack(delivery: &Delivery) {
    if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone: the broker redelivers, and the store check
        // makes the repeat harmless.
        tracing::warn!(error = %e, "ack failed");
    }
}

async fn requeue(delivery: &Delivery) {
    // A short pause so a store outage does not become a hot redelivery loop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let options = BasicNackOptions {
        requeue: true,
        ..BasicNackOptions::default()
    };
    if let Err(e) = delivery.acker.nack(options).await {
        tracing::warn!(error = %e, "nack failed");
    }
}

/// Publishes `job` to run after `wait` (via a retry queue, or directly).
async fn park(broker: &Broker, channel: &Channel, job: JobRef, wait: Duration) -> Result<bool, lapin::Error> {
    let queue = broker.topology.queue_for_wait(wait);
    if queue == broker.topology.deliveries_queue() && !wait.is_zero() {
        // Due in a moment (at most `PARK_SLACK`): wait here rather than
        // cycle through the queue, so the job is never taken early.
        tokio::time::sleep(wait.min(super::topology::PARK_SLACK)).await;
    }
    publish_confirmed(
        channel,
        "",
        &queue,
        &QueueTask::Deliver(job).to_bytes(),
        persistent("application/json"),
    )
    .await
}

/// In-flight attempts per endpoint, so that one slow merchant cannot hold
/// every slot of the prefetch.
#[derive(Clone)]
struct EndpointSlots {
    limit: usize,
    in_flight: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

/// A taken slot; given back on drop.
struct EndpointSlot {
    slots: EndpointSlots,
    endpoint: String,
}

impl EndpointSlots {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            in_flight: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, usize>> {
        match self.in_flight.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn try_take(&self, endpoint: &str) -> Option<EndpointSlot> {
        let mut map = self.lock();
        let n = map.entry(endpoint.to_owned()).or_default();
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(EndpointSlot {
            slots: self.clone(),
            endpoint: endpoint.to_owned(),
        })
    }
}

impl Drop for EndpointSlot {
    fn drop(&mut self) {
        if let Some(n) = self.slots.lock().get_mut(&self.endpoint) {
            *n = n.saturating_sub(1);
        }
    }
}

/// How long a job for a saturated endpoint waits before it goes to the back
/// of the deliveries queue (a pause, so a saturated endpoint's jobs do not
/// spin through the queue).
const BUSY_ENDPOINT_PAUSE: Duration = Duration::from_millis(50);

/// What handling the messages of one broker session needs: the slots
/// attempts take, where jobs run, and the channel their acks and parked jobs
/// go through.
struct Handling {
    broker: Broker,
    deliverer: Deliverer,
    per_endpoint: EndpointSlots,
    channel: Channel,
    /// One permit per attempt in flight (`[delivery] concurrency`).
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// Runs every job of a message, each in a slot and task of its own, and
/// acks the message once all their outcomes are stored; if one could not be,
/// the whole message returns to the queue (its finished jobs are stale there).
async fn handle_message(handling: Arc<Handling>, delivery: Delivery) {
    let Some(task) = QueueTask::from_bytes(&delivery.data) else {
        tracing::warn!("unreadable message on the deliveries queue dropped");
        ack(&delivery).await;
        return;
    };
    let mut running = Vec::with_capacity(task.jobs().len());
    for &job in task.jobs() {
        let permit = tokio::select! {
            permit = handling.slots.clone().acquire_owned() => permit.ok(),
            _ = handling.shutdown.cancelled() => None,
        };
        let Some(permit) = permit else {
            // Shutting down before every job started: the unacked message
            // returns to the queue when the channel closes.
            return;
        };
        let for_job = handling.clone();
        running.push(handling.tasks.spawn(async move {
            let done = for_job.handle_job(job).await;
            drop(permit);
            done
        }));
    }
    let mut all_done = true;
    for job in running {
        // A job task that panicked stored nothing we can rely on.
        all_done &= job.await.unwrap_or(false);
    }
    settle(&delivery, all_done).await;
}

/// Acks a handled message, or returns it to the queue.
async fn settle(delivery: &Delivery, done: bool) {
    if done {
        ack(delivery).await;
    } else {
        requeue(delivery).await;
    }
}

impl Handling {
    /// Makes one job's attempt (or parks it), and stores what comes next. True
    /// once nothing more is needed of the message for this job; false if its
    /// outcome could not be stored and the message must return to the queue.
    async fn handle_job(&self, job: JobRef) -> bool {
        let Handling {
            broker,
            deliverer,
            per_endpoint,
            channel,
            ..
        } = self;
        let claimed = match deliverer.store.claim_job(job, deliverer.lease()).await {
            Ok(JobClaim::Claimed(claimed)) => claimed,
            // Delivered, dead or superseded: this message is not needed.
            Ok(JobClaim::Stale) => return true,
            // Not due yet, or held by a dispatcher that may have died: wait and
            // look again then (a live holder will have moved the job on, making
            // this copy stale; a dead one's lease will have expired).
            Ok(JobClaim::NotDue { due_at_ms: until_ms } | JobClaim::Taken { until_ms }) => {
                return matches!(
                    park(broker, channel, job, ms_duration(until_ms - now_ms())).await,
                    Ok(true)
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim job; returning it to the queue");
                return false;
            }
        };
        let Some(_slot) = per_endpoint.try_take(&claimed.endpoint_id) else {
            // The endpoint is at its limit: give the job back and put it at the
            // back of the queue, leaving this slot to other endpoints' jobs.
            let released = deliverer.store.release(&[claimed.delivery_id]).await;
            tokio::time::sleep(BUSY_ENDPOINT_PAUSE).await;
            return matches!(
                (released, park(broker, channel, job, Duration::ZERO).await),
                (Ok(()), Ok(true))
            );
        };
        let settled = match deliverer.attempt(&claimed).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "attempt outcome not stored; the job returns to the queue");
                return false;
            }
        };
        if settled.record == RecordOutcome::Applied {
            let next_job = JobRef {
                delivery_id: job.delivery_id,
                attempt: job.attempt + 1,
            };
            let published = match settled.next {
                NextStep::Delivered => Ok(true),
                NextStep::RetryAt(at) => park(broker, channel, next_job, ms_duration(at - now_ms())).await,
                NextStep::Dead => {
                    publish_confirmed(
                        channel,
                        "",
                        &broker.topology.dead_queue(),
                        &QueueTask::Deliver(job).to_bytes(),
                        persistent("application/json"),
                    )
                    .await
                }
            };
            if !matches!(published, Ok(true)) {
                // The outcome is stored; the sweeper finds the job overdue and
                // publishes it again, so the ack loses nothing.
                tracing::warn!(
                    delivery_id = job.delivery_id,
                    "next step not published; the sweeper will"
                );
            }
        }
        true
    }
}

/// Publishes pending jobs whose time has long passed and that nobody holds:
/// their message was lost (e.g. a crash between storing and publishing).
async fn sweep_overdue(broker: Broker, deliverer: Deliverer, shutdown: CancellationToken) {
    let grace_ms =
        i64::try_from((deliverer.lease() + Duration::from_secs(30)).as_millis()).unwrap_or(i64::MAX / 4);
    'connect: while !shutdown.is_cancelled() {
        let Some(session) = broker.open(SWEEPER, &shutdown).await else {
            break;
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = shutdown.cancelled() => break 'connect,
            }
            let overdue = match deliverer.store.requeue_overdue(now_ms() - grace_ms, 500).await {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(error = %e, "overdue sweep failed");
                    continue;
                }
            };
            if !overdue.is_empty() {
                tracing::warn!(count = overdue.len(), "republishing overdue delivery jobs");
            }
            for job in overdue {
                if let Err(e) = park(&broker, &session.channel, job, Duration::ZERO).await {
                    tracing::warn!(error = %e, "sweeper lost the broker; reconnecting");
                    broker.mark_down(SWEEPER);
                    continue 'connect;
                }
            }
        }
    }
    broker.mark_down(SWEEPER);
}
