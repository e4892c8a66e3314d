//! The dispatcher in RabbitMQ mode: consumes delivery jobs with manual acks
//! and a bounded prefetch, and acks each only after its attempt (and the
//! message for its next step) is stored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::Channel;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::connection::Broker;
use super::publisher::{persistent, publish_confirmed};
use super::QueueTask;
use crate::dispatch::attempt::Settled;
use crate::dispatch::Deliverer;
use crate::store::{ClaimedJob, JobClaim, JobRef, NextStep, RecordOutcome};

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
        let gates = EndpointGates::new(
            self.deliverer.delivery.per_endpoint_concurrency,
            concurrency,
            self.deliverer.live.current().targets.len(),
        );
        let held = HeldLeases::default();
        // Runs until the last attempt has ended, after the shutdown.
        let stop_keeper = CancellationToken::new();
        let keeper = tokio::spawn(keep_leases(
            self.deliverer.clone(),
            held.clone(),
            stop_keeper.clone(),
        ));
        let mut last_session = None;
        while !self.shutdown.is_cancelled() {
            let Some(session) = self.broker.open(COMPONENT, &self.shutdown).await else {
                break;
            };
            let mut consumer = match self.consume(&session.channel, concurrency).await {
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
                gates: gates.clone(),
                held: held.clone(),
                channel: session.channel.clone(),
                slots: slots.clone(),
                tasks: tasks.clone(),
                shutdown: self.shutdown.clone(),
            });
            if self.take_messages(&mut consumer, &handling).await {
                last_session = Some(session);
                break;
            }
            self.broker.mark_down(COMPONENT);
        }
        // Shutdown: in-flight attempts finish and ack on the still-open
        // channel; anything unacked returns to the queue when it closes.
        tasks.close();
        let grace = self.deliverer.delivery.timeout + Duration::from_secs(2);
        let _ = tokio::time::timeout(grace, tasks.wait()).await;
        stop_keeper.cancel();
        let _ = keeper.await;
        if let Some(session) = last_session {
            let _ = session.connection.close(200, "shutdown".into()).await;
        }
        let _ = sweeper.await;
        self.broker.mark_down(COMPONENT);
    }

    /// Starts consuming the deliveries queue on `channel`, with a prefetch
    /// of `concurrency` messages.
    async fn consume(&self, channel: &Channel, concurrency: usize) -> Result<lapin::Consumer, lapin::Error> {
        let prefetch = u16::try_from(concurrency).unwrap_or(u16::MAX);
        channel.basic_qos(prefetch, BasicQosOptions::default()).await?;
        channel
            .basic_consume(
                ShortString::from(self.broker.topology.deliveries_queue()),
                ShortString::from(format!("payhook-{}", ulid::Ulid::new())),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Hands each message to a task of its own until the consumer fails
    /// (false: reconnect) or the dispatcher stops (true).
    async fn take_messages(&self, consumer: &mut lapin::Consumer, handling: &Arc<Handling>) -> bool {
        loop {
            let next = tokio::select! {
                next = consumer.next() => next,
                _ = self.shutdown.cancelled() => return true,
            };
            match next {
                Some(Ok(delivery)) => {
                    handling.tasks.spawn(handle_message(handling.clone(), delivery));
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer failed; reconnecting");
                    return false;
                }
                None => {
                    tracing::warn!("consumer stream ended; reconnecting");
                    return false;
                }
            }
        }
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

/// How long a job for a busy endpoint may expect to wait for one of its
/// slots in this dispatcher. Expected sooner, it waits here, in the
/// endpoint's line; later, it waits in the broker (see `Admission::Later`),
/// so that a slow endpoint's jobs cannot fill the prefetch window for long.
const HOLD_BUDGET: Duration = Duration::from_secs(5);
/// The longest a busy endpoint's job is sent away for at once: the estimate
/// behind it may be stale (the merchant may have become fast again).
const MAX_SEND_BACK: Duration = Duration::from_secs(300);
/// The shortest: a job sent away comes back no sooner, so that an endpoint
/// whose answers take no time does not make its overflow spin.
const MIN_SEND_BACK: Duration = Duration::from_millis(50);
/// A job sent away for at most this long waits here, then goes to the back
/// of the deliveries queue: the retry queues' delays (a minute by default)
/// would hold up an endpoint that is merely busy, not slow.
const SHORT_SEND_BACK: Duration = Duration::from_secs(1);

/// One endpoint's attempt slots (`per_endpoint_concurrency`) and the line of
/// jobs waiting for them. A tokio semaphore hands out its permits in order
/// of request, so the line is first come, first served.
struct Gate {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Moving average of its attempts' duration (ms); 0 before the first.
    latency_ms: AtomicU64,
    /// When each attempt in flight started: the oldest one's age is a lower
    /// bound of how long this endpoint takes, known before any attempt ends.
    running: std::sync::Mutex<HashMap<u64, Instant>>,
    next_run: AtomicU64,
}

/// An attempt in flight at an endpoint; over once dropped.
struct Running {
    gate: Arc<Gate>,
    id: u64,
}

impl Gate {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        match self.running.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn start(self: &Arc<Self>) -> Running {
        let id = self.next_run.fetch_add(1, Ordering::Relaxed);
        self.running().insert(id, Instant::now());
        Running {
            gate: self.clone(),
            id,
        }
    }

    fn observe(&self, took: Duration) {
        let took = u64::try_from(took.as_millis()).unwrap_or(u64::MAX / 4).max(1);
        let before = self.latency_ms.load(Ordering::Relaxed);
        let now = if before == 0 {
            took
        } else {
            (3 * before + took) / 4
        };
        self.latency_ms.store(now, Ordering::Relaxed);
    }

    /// How long an attempt here takes, as far as is known: the moving
    /// average, or longer if an attempt in flight has already taken longer.
    fn latency(&self) -> Duration {
        let average = Duration::from_millis(self.latency_ms.load(Ordering::Relaxed));
        let oldest = self
            .running()
            .values()
            .map(|started| started.elapsed())
            .max()
            .unwrap_or_default();
        average.max(oldest)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.gate.running().remove(&self.id);
    }
}

/// Every endpoint's gate, so that one slow merchant cannot take every slot
/// of the prefetch, and its waiting jobs cost nothing while it works.
#[derive(Clone)]
struct EndpointGates {
    limit: usize,
    /// The most jobs one endpoint may have waiting here. With other
    /// endpoints configured, its attempts and its line together take at most
    /// half the prefetch window (or its own limit), so that the others'
    /// messages still come in. With no other endpoint there is nobody to
    /// keep room for: it may hold every job the window carries
    /// (`concurrency` messages of up to `MAX_JOBS_PER_MESSAGE` jobs), and
    /// only an expected wait beyond `HOLD_BUDGET` sends a job back. (Held to
    /// half the window, a lone busy endpoint's overflow went back to the
    /// broker job by job, a claim, a release and a republish each: flat out
    /// 938-970 against 2,493-2,644 delivered/s.)
    max_waiting: usize,
    gates: Arc<std::sync::Mutex<HashMap<String, Arc<Gate>>>>,
}

/// What a job for a known endpoint gets from its gate.
enum Admission {
    /// A slot, at once.
    Now(OwnedSemaphorePermit),
    /// A place in the endpoint's line; its turn is expected within
    /// `HOLD_BUDGET`.
    Wait(Waiting),
    /// The line is too long: about this long until a slot would be free.
    Later(Duration),
}

/// A place in an endpoint's line; leaving it (with a slot or not) shortens it.
struct Waiting {
    gate: Arc<Gate>,
}

impl Waiting {
    async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.gate.slots.clone().acquire_owned().await.ok()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.gate.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl EndpointGates {
    fn new(limit: usize, concurrency: usize, endpoints: usize) -> Self {
        let limit = limit.max(1);
        let max_waiting = if endpoints <= 1 {
            concurrency.max(1).saturating_mul(super::MAX_JOBS_PER_MESSAGE)
        } else {
            (concurrency / 2).max(limit) - limit
        };
        Self {
            limit,
            max_waiting,
            gates: Arc::default(),
        }
    }

    /// The endpoint's gate. Only configured endpoints get one, so the map
    /// is as small as the config.
    fn gate(&self, endpoint: &str) -> Arc<Gate> {
        let mut map = match self.gates.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.entry(endpoint.to_owned())
            .or_insert_with(|| {
                Arc::new(Gate {
                    slots: Arc::new(Semaphore::new(self.limit)),
                    waiting: AtomicUsize::new(0),
                    latency_ms: AtomicU64::new(0),
                    running: std::sync::Mutex::default(),
                    next_run: AtomicU64::new(0),
                })
            })
            .clone()
    }

    fn admit(&self, endpoint: &str) -> Admission {
        let gate = self.gate(endpoint);
        if let Ok(slot) = gate.slots.clone().try_acquire_owned() {
            return Admission::Now(slot);
        }
        // Rounds of `limit` attempts before this job's turn, the one in
        // flight included.
        let waiting = gate.waiting.load(Ordering::Relaxed);
        let rounds = waiting / self.limit + 1;
        let expected = gate
            .latency()
            .saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX));
        if waiting < self.max_waiting && expected <= HOLD_BUDGET {
            gate.waiting.fetch_add(1, Ordering::Relaxed);
            Admission::Wait(Waiting { gate })
        } else {
            Admission::Later(expected.clamp(MIN_SEND_BACK, MAX_SEND_BACK))
        }
    }

    fn observe(&self, endpoint: &str, took: Duration) {
        self.gate(endpoint).observe(took);
    }
}

/// The jobs this dispatcher has claimed and not yet settled, with when each
/// lease was last set. `keep_leases` renews them, so that a job waiting in
/// its endpoint's line (or for an attempt slot) stays leased: no other
/// dispatcher and no overdue sweep takes it while its message is here.
#[derive(Clone, Default)]
struct HeldLeases(Arc<std::sync::Mutex<HashMap<i64, Instant>>>);

/// One held job; no longer held once dropped.
struct Held {
    leases: HeldLeases,
    delivery_id: i64,
}

impl HeldLeases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Instant>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn hold(&self, delivery_id: i64) -> Held {
        self.lock().insert(delivery_id, Instant::now());
        Held {
            leases: self.clone(),
            delivery_id,
        }
    }

    /// Jobs whose lease was set at least `age` ago, now marked renewed.
    fn due_for_renewal(&self, age: Duration) -> Vec<i64> {
        let now = Instant::now();
        let mut held = self.lock();
        let mut due = Vec::new();
        for (id, set) in held.iter_mut() {
            if now.duration_since(*set) >= age {
                *set = now;
                due.push(*id);
            }
        }
        due
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.leases.lock().remove(&self.delivery_id);
    }
}

/// Renews the leases of held jobs every third of a lease, in one statement,
/// and only those held that long: an attempt that ends in time costs no
/// renewal. A renewal is due when a lease has at least a third left.
async fn keep_leases(deliverer: Deliverer, held: HeldLeases, stop: CancellationToken) {
    let lease = deliverer.lease();
    let every = (lease / 3).max(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let ids = held.due_for_renewal(every);
        if ids.is_empty() {
            continue;
        }
        if let Err(e) = deliverer.store.extend_leases(&ids, lease).await {
            // A lease that runs out lets another dispatcher repeat the job
            // (at-least-once); the next round tries again.
            tracing::warn!(error = %e, count = ids.len(), "cannot renew the leases of held delivery jobs");
        }
    }
}

/// What handling the messages of one broker session needs: the slots
/// attempts take, where jobs run, and the channel their acks and parked jobs
/// go through.
struct Handling {
    broker: Broker,
    deliverer: Deliverer,
    gates: EndpointGates,
    held: HeldLeases,
    channel: Channel,
    /// One permit per attempt in flight (`[delivery] concurrency`).
    slots: Arc<Semaphore>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
}

/// Runs every job of a message, each in a task of its own, and acks the
/// message once all their outcomes are stored; if one could not be, the
/// whole message returns to the queue (its finished jobs are stale there).
async fn handle_message(handling: Arc<Handling>, delivery: Delivery) {
    let Some(task) = QueueTask::from_bytes(&delivery.data) else {
        tracing::warn!("unreadable message on the deliveries queue dropped");
        ack(&delivery).await;
        return;
    };
    let mut running = Vec::with_capacity(task.jobs().len());
    let mut turns = Turn::chain(task.jobs().len()).into_iter();
    for &job in task.jobs() {
        let for_job = handling.clone();
        let turn = turns.next().unwrap_or_default();
        running.push(
            handling
                .tasks
                .spawn(async move { for_job.handle_job(job, turn).await }),
        );
    }
    let mut all_done = true;
    for job in running {
        // A job task that panicked stored nothing we can rely on.
        all_done &= job.await.unwrap_or(false);
    }
    settle(&delivery, all_done).await;
}

/// A job's turn among the jobs of its message. The jobs run concurrently,
/// but each takes its place in the lines (its endpoint's slots, then the
/// attempt slots) only after the job before it took its own, so that they
/// start in the message's order: the order they became due, which a resumed
/// endpoint's backlog keeps. Tokio's semaphores serve waiters first come,
/// first served; the claims still share one statement.
#[derive(Default)]
struct Turn {
    after: Option<tokio::sync::oneshot::Receiver<()>>,
    /// Dropped (on any return, too) to let the next job go.
    next: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Turn {
    /// `n` turns, each after the one before.
    fn chain(n: usize) -> Vec<Turn> {
        if n <= 1 {
            return (0..n).map(|_| Turn::default()).collect();
        }
        let mut turns = Vec::with_capacity(n);
        let mut after = None;
        for i in 0..n {
            let (next, rx) = if i + 1 < n {
                let (tx, rx) = tokio::sync::oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            turns.push(Turn { after, next });
            after = rx;
        }
        turns
    }

    /// Waits until the job before this one has taken its place.
    async fn wait(&mut self) {
        if let Some(after) = self.after.take() {
            // An error is a job that ended early: its turn is over too.
            let _ = after.await;
        }
    }

    fn pass(&mut self) {
        self.next.take();
    }

    /// Awaits `acquire`, passing the turn as soon as this job is in line
    /// (its first poll found no free slot) or holds the slot.
    async fn in_line<T>(&mut self, acquire: impl std::future::Future<Output = T>) -> T {
        let mut acquire = std::pin::pin!(acquire);
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(acquire.as_mut().poll(cx))).await;
        if let std::task::Poll::Ready(got) = first {
            return got;
        }
        self.pass();
        acquire.await
    }
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
    /// Waits for `what`, or gives up (`None`) when the dispatcher stops.
    async fn unless_stopping<T>(&self, what: impl std::future::Future<Output = Option<T>>) -> Option<T> {
        tokio::select! {
            got = what => got,
            _ = self.shutdown.cancelled() => None,
        }
    }

    /// Makes one job's attempt (or parks it), and stores what comes next. True
    /// once nothing more is needed of the message for this job; false if its
    /// outcome could not be stored and the message must return to the queue.
    ///
    /// The job is claimed first (which says its endpoint), and stays leased
    /// while it waits for its endpoint's slot and an attempt slot: waiting
    /// costs no statement, no publish and no CPU, however long the merchant
    /// takes.
    async fn handle_job(&self, job: JobRef, mut turn: Turn) -> bool {
        let claimed = match self.claim(job).await {
            Ok(claimed) => claimed,
            Err(done) => return done,
        };
        let _held = self.held.hold(claimed.delivery_id);
        turn.wait().await;
        // A job whose endpoint this process does not know needs no endpoint
        // slot: the deliverer puts it back or lets it die, without a request.
        let known = self
            .deliverer
            .live
            .current()
            .targets
            .contains_key(&claimed.endpoint_id);
        let slots = match self.take_slots(job, &claimed.endpoint_id, known, &mut turn).await {
            Ok(slots) => slots,
            Err(done) => return done,
        };
        let started = Instant::now();
        let running = known.then(|| self.gates.gate(&claimed.endpoint_id).start());
        let attempted = self.deliverer.attempt(&claimed).await;
        drop(running);
        drop(slots);
        let settled = match attempted {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "attempt outcome not stored; the job returns to the queue");
                return false;
            }
        };
        if known {
            self.gates.observe(&claimed.endpoint_id, started.elapsed());
        }
        if settled.record == RecordOutcome::Applied {
            self.publish_next(job, &settled).await;
        }
        true
    }

    /// Claims the job. `Err` carries [`handle_job`](Self::handle_job)'s
    /// answer when there is nothing to attempt: the job is stale, parked
    /// until it is due or free, waiting for its paused endpoint, or could
    /// not be claimed (false: the message returns to the queue).
    async fn claim(&self, job: JobRef) -> Result<ClaimedJob, bool> {
        let Handling {
            broker,
            deliverer,
            channel,
            ..
        } = self;
        let claimed = match deliverer.store.claim_job(job, deliverer.lease()).await {
            Ok(JobClaim::Claimed(claimed)) => claimed,
            // Delivered, dead or superseded: this message is not needed.
            Ok(JobClaim::Stale) => return Err(true),
            // Not due yet, or held by a dispatcher that may have died: wait and
            // look again then (a live holder will have moved the job on, making
            // this copy stale; a dead one's lease will have expired).
            Ok(JobClaim::NotDue { due_at_ms: until_ms } | JobClaim::Taken { until_ms }) => {
                let parked = park(
                    broker,
                    channel,
                    job,
                    ms_duration(until_ms - deliverer.clock.now_ms()),
                )
                .await;
                return Err(matches!(parked, Ok(true)));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim job; returning it to the queue");
                return Err(false);
            }
        };
        // A paused endpoint's job waits in the store, not in the queue: its
        // lease is given back and the message dropped; resuming the endpoint
        // publishes it again (and the overdue sweep skips it meanwhile).
        if deliverer.paused.contains(&claimed.endpoint_id) {
            return Err(match deliverer.store.release(&[claimed.delivery_id]).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot release a paused endpoint's job; returning it to the queue");
                    false
                }
            });
        }
        Ok(claimed)
    }

    /// The endpoint's slot (for a `known` endpoint) and an attempt slot,
    /// taken in `turn`. `Err` carries [`handle_job`](Self::handle_job)'s
    /// answer when the job goes back instead: the endpoint's line is too
    /// long, or the dispatcher is stopping.
    async fn take_slots(
        &self,
        job: JobRef,
        endpoint: &str,
        known: bool,
        turn: &mut Turn,
    ) -> Result<(Option<OwnedSemaphorePermit>, OwnedSemaphorePermit), bool> {
        let endpoint_slot = if known {
            match self.gates.admit(endpoint) {
                Admission::Now(slot) => Some(slot),
                Admission::Wait(place) => {
                    let slot = turn.in_line(self.unless_stopping(place.slot())).await;
                    drop(place);
                    match slot {
                        Some(slot) => Some(slot),
                        None => return Err(self.give_back(job).await),
                    }
                }
                Admission::Later(wait) => {
                    // Not in line here: the next job need not wait for this one.
                    turn.pass();
                    return Err(self.send_back(job, wait).await);
                }
            }
        } else {
            None
        };
        let permit = turn
            .in_line(self.unless_stopping(async { self.slots.clone().acquire_owned().await.ok() }))
            .await;
        turn.pass();
        match permit {
            Some(permit) => Ok((endpoint_slot, permit)),
            None => Err(self.give_back(job).await),
        }
    }

    /// Publishes what comes after a stored outcome: the retry, parked until
    /// it is due, or the job on the dead queue. A publish that fails loses
    /// nothing: the outcome is stored, and the sweeper finds the job overdue
    /// and publishes it again.
    async fn publish_next(&self, job: JobRef, settled: &Settled) {
        let Handling {
            broker,
            channel,
            deliverer,
            ..
        } = self;
        // Put back without an attempt (unknown endpoint): the same attempt
        // again, later.
        let next_job = if settled.deferred {
            job
        } else {
            JobRef {
                delivery_id: job.delivery_id,
                attempt: job.attempt + 1,
            }
        };
        let published = match settled.next {
            NextStep::Delivered => Ok(true),
            NextStep::RetryAt(at) => {
                park(
                    broker,
                    channel,
                    next_job,
                    ms_duration(at - deliverer.clock.now_ms()),
                )
                .await
            }
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
            tracing::warn!(
                delivery_id = job.delivery_id,
                "next step not published; the sweeper will"
            );
        }
    }

    /// A busy endpoint's job that would wait too long here waits in the
    /// broker instead: put aside in the store for as long (leased to nobody,
    /// so that no claim or sweep takes it meanwhile) and parked in the retry
    /// queue that fits. One statement and one publish per `wait`, instead of
    /// a message held in the prefetch window that other endpoints need.
    async fn send_back(&self, job: JobRef, wait: Duration) -> bool {
        if wait <= SHORT_SEND_BACK {
            // Busy, not slow: after a pause (still leased, so nobody else
            // takes it meanwhile) to the back of the deliveries queue, where
            // the messages that came after it get their turn first.
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.cancelled() => return self.give_back(job).await,
            }
            if let Err(e) = self.deliverer.store.release(&[job.delivery_id]).await {
                tracing::warn!(error = %e, "cannot release a busy endpoint's job; returning it to the queue");
                return false;
            }
            return matches!(
                park(&self.broker, &self.channel, job, Duration::ZERO).await,
                Ok(true)
            );
        }
        // The parked message comes back after `wait` or, if every retry
        // queue is longer, after the shortest one: it is put aside for as
        // long, so that it never comes back to a job free for the taking.
        let shortest = self.broker.topology.delays.first().copied().unwrap_or_default();
        let hold = wait.max(shortest) + super::topology::PARK_SLACK;
        match self.deliverer.store.defer(job, hold).await {
            Ok(Some(_)) => matches!(park(&self.broker, &self.channel, job, wait).await, Ok(true)),
            // Moved on meanwhile: this message is not needed.
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot put a busy endpoint's job aside; returning it to the queue");
                false
            }
        }
    }

    /// Stopping before a held job's attempt: its lease is given back, so that
    /// whoever gets its message next (it returns to the queue unacked) can
    /// take it at once.
    async fn give_back(&self, job: JobRef) -> bool {
        if let Err(e) = self.deliverer.store.release(&[job.delivery_id]).await {
            tracing::warn!(error = %e, "could not release a lease; it expires on its own");
        }
        false
    }
}

/// Publishes pending jobs whose time has long passed and that nobody holds:
/// their message was lost (e.g. a crash between storing and publishing).
///
/// Jobs this or another dispatcher holds are leased (also while they wait
/// for a busy endpoint) and jobs sent back to the broker are put aside for
/// as long, so neither is ever overdue. What the store cannot see is a
/// message still waiting in the deliveries queue behind a backlog: while
/// that queue has messages ready, no job is called lost.
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
            let ready = session
                .channel
                .queue_declare(
                    ShortString::from(broker.topology.deliveries_queue()),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match ready {
                Ok(queue) if queue.message_count() > 0 => continue,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "sweeper lost the broker; reconnecting");
                    broker.mark_down(SWEEPER);
                    continue 'connect;
                }
            }
            let overdue = match deliverer
                .store
                .requeue_overdue(deliverer.clock.now_ms() - grace_ms, 500)
                .await
            {
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
