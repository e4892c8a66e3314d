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
                        let Ok(permit) = slots.clone().acquire_owned().await else {
                            break 'connect;
                        };
                        let channel = session.channel.clone();
                        let deliverer = self.deliverer.clone();
                        let broker = self.broker.clone();
                        tasks.spawn(async move {
                            handle(&broker, &deliverer, &channel, delivery).await;
                            drop(permit);
                        });
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
    publish_confirmed(
        channel,
        "",
        &queue,
        &QueueTask::Deliver(job).to_bytes(),
        persistent("application/json"),
    )
    .await
}

async fn handle(broker: &Broker, deliverer: &Deliverer, channel: &Channel, delivery: Delivery) {
    let Some(QueueTask::Deliver(job)) = QueueTask::from_bytes(&delivery.data) else {
        tracing::warn!("unreadable message on the deliveries queue dropped");
        ack(&delivery).await;
        return;
    };
    let claimed = match deliverer.store.claim_job(job, deliverer.lease()).await {
        Ok(JobClaim::Claimed(claimed)) => claimed,
        // Delivered, dead, superseded, or held by another dispatcher (which
        // will publish the next step itself): this message is not needed.
        Ok(JobClaim::Stale | JobClaim::Taken) => {
            ack(&delivery).await;
            return;
        }
        Ok(JobClaim::NotDue { due_at_ms }) => {
            match park(broker, channel, job, ms_duration(due_at_ms - now_ms())).await {
                Ok(true) => ack(&delivery).await,
                _ => requeue(&delivery).await,
            }
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot claim job; returning it to the queue");
            requeue(&delivery).await;
            return;
        }
    };
    let settled = match deliverer.attempt(&claimed).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "attempt outcome not stored; the job returns to the queue");
            requeue(&delivery).await;
            return;
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
            // publishes it again, so the ack below loses nothing.
            tracing::warn!(
                delivery_id = job.delivery_id,
                "next step not published; the sweeper will"
            );
        }
    }
    ack(&delivery).await;
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
