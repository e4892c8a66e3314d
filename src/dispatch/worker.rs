//! The embedded queue: due jobs are taken from the store itself.
//!
//! Wake-ups are precise rather than polled: the ingress notifies the worker
//! after each commit, and otherwise the worker sleeps until the earliest due
//! job (capped, to notice jobs written by other processes or an operator).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::attempt::Deliverer;
use crate::store::ClaimedJob;

/// The longest the worker sleeps without looking at the store.
const MAX_IDLE: Duration = Duration::from_millis(250);
/// Jobs taken per claim.
const CLAIM_BATCH: usize = 128;

pub struct EmbeddedWorker {
    deliverer: Deliverer,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
}

/// The worker's attempts in flight: the slots they hold, and how many each
/// endpoint has.
struct Running {
    slots: Arc<Semaphore>,
    per_endpoint_limit: usize,
    in_flight: Arc<Mutex<InFlight>>,
    tasks: TaskTracker,
}

#[derive(Default)]
struct InFlight {
    per_endpoint: HashMap<String, usize>,
    leased: HashSet<i64>,
}

fn lock(m: &Mutex<InFlight>) -> std::sync::MutexGuard<'_, InFlight> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl EmbeddedWorker {
    pub fn new(deliverer: Deliverer, wake: Arc<Notify>, shutdown: CancellationToken) -> Self {
        Self {
            deliverer,
            wake,
            shutdown,
        }
    }

    pub async fn run(self) {
        let running = Running {
            slots: Arc::new(Semaphore::new(self.deliverer.delivery.concurrency)),
            per_endpoint_limit: self.deliverer.delivery.per_endpoint_concurrency,
            in_flight: Arc::new(Mutex::new(InFlight::default())),
            tasks: TaskTracker::new(),
        };
        let mut store_backoff = Duration::from_millis(100);

        while !self.shutdown.is_cancelled() {
            let free = running.slots.available_permits();
            if free == 0 {
                self.idle(MAX_IDLE).await;
                continue;
            }
            let busy = self.busy_endpoints(&running);
            let limit = free.min(CLAIM_BATCH);
            let jobs = match self
                .deliverer
                .store
                .claim_due(limit, self.deliverer.lease(), &busy)
                .await
            {
                Ok(jobs) => {
                    store_backoff = Duration::from_millis(100);
                    jobs
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim delivery jobs; retrying");
                    self.idle(store_backoff).await;
                    store_backoff = (store_backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            let claimed = jobs.len();
            let over_limit = self.start(jobs, &running).await;
            if claimed == limit && over_limit == 0 {
                continue;
            }
            if claimed > over_limit {
                // Attempts were started: each one wakes this loop when it
                // ends, and so does the next ingest. Looking up the next due
                // time now would be a read per claim for nothing.
                self.idle(MAX_IDLE).await;
                continue;
            }
            let wait = self.until_next_due().await;
            self.idle(wait).await;
        }
        self.drain(running).await;
    }

    /// Endpoints already at their own limit are skipped, so a slow merchant
    /// cannot take every slot from the others. So are paused endpoints:
    /// their jobs wait in the store.
    fn busy_endpoints(&self, running: &Running) -> Vec<String> {
        let mut busy: Vec<String> = lock(&running.in_flight)
            .per_endpoint
            .iter()
            .filter(|(_, n)| **n >= running.per_endpoint_limit)
            .map(|(id, _)| id.clone())
            .collect();
        busy.extend(self.deliverer.paused.list());
        busy
    }

    /// Starts an attempt for each claimed job, each in a task of its own;
    /// jobs past their endpoint's limit go straight back. Returns how many
    /// went back.
    async fn start(&self, jobs: Vec<ClaimedJob>, running: &Running) -> usize {
        let mut over_limit = Vec::new();
        for job in jobs {
            // One claim may return several jobs for one endpoint.
            let endpoint_full = lock(&running.in_flight)
                .per_endpoint
                .get(&job.endpoint_id)
                .is_some_and(|n| *n >= running.per_endpoint_limit);
            if endpoint_full {
                over_limit.push(job.delivery_id);
                continue;
            }
            let Ok(permit) = running.slots.clone().try_acquire_owned() else {
                // Cannot happen (we claimed at most `free`), but if it did
                // the job must go back rather than wait out its lease.
                let _ = self.deliverer.store.release(&[job.delivery_id]).await;
                continue;
            };
            {
                let mut f = lock(&running.in_flight);
                *f.per_endpoint.entry(job.endpoint_id.clone()).or_default() += 1;
                f.leased.insert(job.delivery_id);
            }
            let deliverer = self.deliverer.clone();
            let in_flight = running.in_flight.clone();
            let wake = self.wake.clone();
            running.tasks.spawn(async move {
                if let Err(e) = deliverer.attempt(&job).await {
                    tracing::error!(error = %e, delivery_id = job.delivery_id, "attempt outcome not stored; the job will be retried when its lease ends");
                }
                let mut f = lock(&in_flight);
                if let Some(n) = f.per_endpoint.get_mut(&job.endpoint_id) {
                    *n = n.saturating_sub(1);
                }
                f.leased.remove(&job.delivery_id);
                drop(f);
                drop(permit);
                wake.notify_one();
            });
        }
        if !over_limit.is_empty() {
            if let Err(e) = self.deliverer.store.release(&over_limit).await {
                tracing::warn!(error = %e, "could not release jobs; they return when their lease ends");
            }
        }
        over_limit.len()
    }

    /// How long to sleep when nothing was started: until the next job is
    /// due, at most `MAX_IDLE` (an ingest or a finished attempt wakes the
    /// loop sooner).
    async fn until_next_due(&self) -> Duration {
        match self.deliverer.store.next_due_at().await {
            Ok(Some(due)) => {
                let ms = due.saturating_sub(self.deliverer.clock.now_ms());
                if ms <= 0 {
                    // Due but skipped (busy endpoint): wait for a slot to free.
                    MAX_IDLE.min(Duration::from_millis(20))
                } else {
                    Duration::from_millis(u64::try_from(ms).unwrap_or(0)).min(MAX_IDLE)
                }
            }
            Ok(None) | Err(_) => MAX_IDLE,
        }
    }

    /// Shutdown: no new claims; in-flight attempts finish (each is bounded
    /// by the delivery timeout) and store their outcome. What is still in
    /// flight after that is released for the next start.
    async fn drain(&self, running: Running) {
        running.tasks.close();
        let grace = self.deliverer.delivery.timeout + Duration::from_secs(2);
        if tokio::time::timeout(grace, running.tasks.wait()).await.is_err() {
            let leftover: Vec<i64> = lock(&running.in_flight).leased.iter().copied().collect();
            tracing::warn!(
                count = leftover.len(),
                "releasing deliveries still in flight at shutdown"
            );
            if let Err(e) = self.deliverer.store.release(&leftover).await {
                tracing::warn!(error = %e, "could not release leases; they expire on their own");
            }
        }
    }

    async fn idle(&self, wait: Duration) {
        tokio::select! {
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = self.shutdown.cancelled() => {}
        }
    }
}
