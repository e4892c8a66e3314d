//! One delivery attempt: sign, POST, decide what comes next, store it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};

use super::health::EndpointHealth;
use super::http::{storable_text, AttemptResult, DeliveryClient};
use super::sign::delivery_headers;
use crate::clock::Clock;
use crate::config::{DeliveryConfig, EndpointConfig, Secret};
use crate::domain::AttemptOutcome;
use crate::key_list::KeyList;
use crate::live::{LiveConfig, PausedEndpoints};
use crate::store::{AttemptRecord, ClaimedJob, JobRef, NextStep, RecordOutcome, Store, StoreError};
use crate::telemetry::Metrics;

/// A merchant endpoint as the dispatcher needs it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    pub url: url::Url,
    /// The first signs `X-Signature`; each signs `webhook-signature`.
    pub secrets: KeyList<Secret>,
}

impl From<&EndpointConfig> for Endpoint {
    fn from(c: &EndpointConfig) -> Self {
        Self {
            id: c.id.to_string(),
            url: c.url.clone(),
            secrets: c.secrets.clone(),
        }
    }
}

/// Everything needed to carry out attempts; shared by the embedded worker and
/// the RabbitMQ consumer.
#[derive(Clone)]
pub struct Deliverer {
    pub store: Store,
    pub client: DeliveryClient,
    /// The endpoints in force (swapped by a reload); each attempt keeps the
    /// snapshot it started with.
    pub live: LiveConfig,
    /// Endpoints whose deliveries wait: not attempted, not counted.
    pub paused: PausedEndpoints,
    /// Each answer is tallied for the endpoint monitor.
    pub health: EndpointHealth,
    pub delivery: Arc<DeliveryConfig>,
    pub metrics: Arc<Metrics>,
    /// Attempt times, signature timestamps and retry due times (the
    /// relay's one clock, `crate::clock`).
    pub clock: Arc<dyn Clock>,
}

/// The attempt's result as stored, for the caller (the queue) to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub next: NextStep,
    pub record: RecordOutcome,
    /// No attempt was made: the job was put back at the same attempt until
    /// `next`'s time (its endpoint is unknown here), so the next message is
    /// for this attempt again, not the following one.
    pub deferred: bool,
}

/// Whether the store refused the record itself (PostgreSQL's data
/// exceptions, class 22: a character it cannot hold, a value out of range),
/// so that sending the same record again can never succeed.
fn unstorable(e: &StoreError) -> bool {
    match e {
        StoreError::Database(sqlx::Error::Database(db)) => db.code().is_some_and(|c| c.starts_with("22")),
        _ => false,
    }
}

impl Deliverer {
    pub fn new(
        store: Store,
        live: LiveConfig,
        paused: PausedEndpoints,
        delivery: DeliveryConfig,
        metrics: Arc<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, reqwest::Error> {
        let client = DeliveryClient::new(
            delivery.timeout,
            delivery.allow_private_targets,
            delivery.proxy.as_ref(),
        )?;
        Ok(Self {
            store,
            client,
            live,
            paused,
            health: EndpointHealth::default(),
            delivery: Arc::new(delivery),
            metrics,
            clock,
        })
    }

    /// How long a claimed job stays leased: the HTTP timeout plus room to
    /// store the outcome. A crashed dispatcher's jobs come back after this.
    pub fn lease(&self) -> Duration {
        self.delivery.timeout + Duration::from_secs(5)
    }

    /// What follows failed attempt number `attempt` (1-based).
    pub fn next_after_failure(&self, attempt: u32, retry_after: Option<Duration>, now_ms: i64) -> NextStep {
        if attempt > self.delivery.max_retries {
            return NextStep::Dead;
        }
        let scheduled = self.delivery.delay_before_retry(attempt);
        // Retry-After may push the next attempt later, never earlier.
        let delay = retry_after.map_or(scheduled, |ra| ra.max(scheduled));
        let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX / 4);
        NextStep::RetryAt(now_ms.saturating_add(delay_ms))
    }

    /// How long a job whose endpoint is unknown here is put aside, given
    /// how long it has been due: doubling from the shortest retry delay (the
    /// shortest wait the broker's retry queues offer) up to a minute, so that
    /// a quick rolling change is picked up at once and a long one costs one
    /// look a minute.
    fn unknown_endpoint_hold(&self, due_for: Duration) -> Duration {
        let shortest = self
            .delivery
            .retry_schedule
            .iter()
            .copied()
            .filter(|d| !d.is_zero())
            .min()
            .unwrap_or(Duration::from_secs(1));
        due_for.clamp(shortest, shortest.max(Duration::from_secs(60)))
    }

    /// A job for an endpoint this dispatcher's config lacks. During a
    /// rolling config change another process may already know it, so the job
    /// is put aside (and looked at again) rather than killed, until it has
    /// been due for `unknown_endpoint_grace`; then it goes dead with outcome
    /// `unknown_endpoint`, redeliverable once the endpoint is back.
    ///
    /// Putting it aside records no attempt and leaves the attempt count
    /// alone: no request was made, so the merchant's `X-Payhook-Attempt`
    /// and the `max_retries` budget count only real attempts, and the
    /// schedule resumes where it was once a dispatcher that knows the
    /// endpoint takes the job. Only the final verdict is recorded, as an
    /// attempt with outcome `unknown_endpoint`, so that an operator sees why
    /// the delivery is dead.
    async fn unknown_endpoint(&self, job: &ClaimedJob) -> Result<Settled, StoreError> {
        let job_ref = JobRef {
            delivery_id: job.delivery_id,
            attempt: job.attempt,
        };
        let shortest = self.unknown_endpoint_hold(Duration::ZERO);
        // Held first for the shortest time (this also says since when the
        // job has been due), then for longer if it has waited long already.
        let superseded = Settled {
            next: NextStep::Dead,
            record: RecordOutcome::Superseded,
            deferred: true,
        };
        let Some(due_at) = self.store.defer(job_ref, shortest).await? else {
            return Ok(superseded);
        };
        let now = self.clock.now_ms();
        let due_for = Duration::from_millis(u64::try_from(now.saturating_sub(due_at)).unwrap_or(0));
        self.metrics.delivery_unknown_endpoint(&job.endpoint_id);
        if due_for < self.delivery.unknown_endpoint_grace {
            let hold = self.unknown_endpoint_hold(due_for);
            if hold > shortest && self.store.defer(job_ref, hold).await?.is_none() {
                return Ok(superseded);
            }
            self.log_put_back(job, due_for, hold, shortest);
            return Ok(Settled {
                next: NextStep::RetryAt(
                    now.saturating_add(i64::try_from(hold.as_millis()).unwrap_or(i64::MAX / 4)),
                ),
                record: RecordOutcome::Applied,
                deferred: true,
            });
        }
        self.dead_past_grace(job, now, due_for).await
    }

    fn log_put_back(&self, job: &ClaimedJob, due_for: Duration, hold: Duration, shortest: Duration) {
        if due_for <= shortest {
            tracing::warn!(
                endpoint = %job.endpoint_id,
                grace_ms = millis_u64(self.delivery.unknown_endpoint_grace),
                "delivery for an endpoint this dispatcher's config lacks put back; it goes dead if no \
                 dispatcher that knows the endpoint takes it within the grace"
            );
        } else {
            tracing::debug!(
                endpoint = %job.endpoint_id,
                due_for_ms = millis_u64(due_for),
                hold_ms = millis_u64(hold),
                "endpoint still unknown; put back"
            );
        }
    }

    /// The job's endpoint stayed unknown past `unknown_endpoint_grace`: its
    /// delivery is dead, with an attempt that says why.
    async fn dead_past_grace(
        &self,
        job: &ClaimedJob,
        now: i64,
        due_for: Duration,
    ) -> Result<Settled, StoreError> {
        let record = AttemptRecord {
            delivery_id: job.delivery_id,
            attempt: job.attempt,
            started_at_ms: now,
            duration_ms: 0,
            outcome: AttemptOutcome::UnknownEndpoint,
            http_status: None,
            error: Some(storable_text(&format!(
                "endpoint `{}` is not configured in this dispatcher (due for {}s, past unknown_endpoint_grace)",
                job.endpoint_id,
                due_for.as_secs()
            ))),
            response_excerpt: None,
            next: NextStep::Dead,
        };
        let recorded = self.record(record).await?;
        if recorded == RecordOutcome::Applied {
            self.metrics.delivery_dead(&job.endpoint_id);
            tracing::warn!(endpoint = %job.endpoint_id, "delivery is dead: its endpoint stayed unknown past the grace");
        }
        Ok(Settled {
            next: NextStep::Dead,
            record: recorded,
            deferred: false,
        })
    }

    /// A job of a paused endpoint: no request, no attempt recorded, nothing
    /// counted. Its lease is given back and it stays pending in the store at
    /// its place in the schedule; the dispatchers skip the endpoint until it
    /// is resumed (in RabbitMQ mode the resume publishes it again).
    async fn wait_while_paused(&self, job: &ClaimedJob) -> Result<Settled, StoreError> {
        self.store.release(&[job.delivery_id]).await?;
        tracing::debug!(endpoint = %job.endpoint_id, delivery_id = job.delivery_id, "endpoint paused; the delivery waits");
        // Nothing was stored for the queue to act on: like a superseded job,
        // its message is acked and not followed up.
        Ok(Settled {
            next: NextStep::Dead,
            record: RecordOutcome::Superseded,
            deferred: true,
        })
    }

    /// Stores an attempt: a store hiccup is retried with a bounded backoff;
    /// a record the store refuses as such (see `unstorable`) is stored again
    /// without its free-text details, so that the job still moves on instead
    /// of being sent again at every lease expiry. What still fails is logged
    /// at error and returned: the lease then runs out and the job is tried
    /// again (at-least-once), never lost.
    async fn record(&self, record: AttemptRecord) -> Result<RecordOutcome, StoreError> {
        match self.record_with_backoff(record.clone()).await {
            Ok(recorded) => Ok(recorded),
            Err(e) if unstorable(&e) => {
                tracing::error!(
                    error = %e,
                    delivery_id = record.delivery_id,
                    attempt = record.attempt,
                    "the store refused this attempt's record; storing it without the error text and response excerpt"
                );
                let plain = AttemptRecord {
                    error: Some(format!("{} (details not storable)", record.outcome.as_str())),
                    response_excerpt: None,
                    ..record
                };
                self.record_with_backoff(plain).await.inspect_err(|e| {
                    tracing::error!(error = %e, "attempt outcome not stored; the job is tried again when its lease ends");
                })
            }
            Err(e) => {
                tracing::error!(
                    error = %e,
                    delivery_id = record.delivery_id,
                    attempt = record.attempt,
                    "attempt outcome not stored after retries; the job is tried again when its lease ends"
                );
                Err(e)
            }
        }
    }

    async fn record_with_backoff(&self, record: AttemptRecord) -> Result<RecordOutcome, StoreError> {
        let store = self.store.clone();
        (|| {
            let store = store.clone();
            let record = record.clone();
            async move { store.record_attempt(record).await }
        })
        .retry(
            ExponentialBuilder::default()
                .with_jitter()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(2))
                .with_max_times(5),
        )
        // Sending a refused record again changes nothing.
        .when(|e| !unstorable(e))
        .await
    }

    #[tracing::instrument(skip_all, fields(event_id = %job.event_id, endpoint = %job.endpoint_id, attempt = job.attempt, outcome))]
    pub async fn attempt(&self, job: &ClaimedJob) -> Result<Settled, StoreError> {
        if self.paused.contains(&job.endpoint_id) {
            return self.wait_while_paused(job).await;
        }
        let routing = self.live.current();
        let Some(endpoint) = routing.targets.get(&job.endpoint_id) else {
            tracing::Span::current().record("outcome", AttemptOutcome::UnknownEndpoint.as_str());
            return self.unknown_endpoint(job).await;
        };
        let started_ms = self.clock.now_ms();
        let clock = Instant::now();
        let nonce = ulid::Ulid::new().to_string();
        let body = job.payload.as_bytes().to_vec();
        let headers = delivery_headers(
            &endpoint.secrets,
            &job.event_id,
            &body,
            started_ms,
            &nonce,
            job.attempt,
        );
        let result = self.client.post(&endpoint.url, &headers, body).await;
        let elapsed = clock.elapsed();
        let finished_ms = self.clock.now_ms();
        let next = match result.outcome {
            AttemptOutcome::Delivered => NextStep::Delivered,
            _ => self.next_after_failure(job.attempt, result.retry_after, finished_ms),
        };
        tracing::Span::current().record("outcome", result.outcome.as_str());
        self.metrics
            .delivery_attempt(&job.endpoint_id, result.outcome, elapsed.as_secs_f64());
        if result.outcome == AttemptOutcome::Delivered {
            self.health.success(&job.endpoint_id, started_ms);
        } else {
            self.health.failure(&job.endpoint_id, started_ms);
        }
        let record = AttemptRecord {
            delivery_id: job.delivery_id,
            attempt: job.attempt,
            started_at_ms: started_ms,
            duration_ms: i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            outcome: result.outcome,
            http_status: result.http_status,
            // Both are stored as text: nothing in them may be what a store
            // refuses (the excerpt is made storable where it is read).
            error: result.error.as_deref().map(storable_text),
            response_excerpt: result.response_excerpt.as_deref().map(storable_text),
            next,
        };
        let recorded = self.record(record).await?;
        if recorded == RecordOutcome::Applied {
            self.report(job, next, &result, finished_ms);
        }
        Ok(Settled {
            next,
            record: recorded,
            deferred: false,
        })
    }

    /// The metrics and the log line of a stored attempt's outcome. Values,
    /// not Debug forms: an absent status or error is an absent field.
    fn report(&self, job: &ClaimedJob, next: NextStep, result: &AttemptResult, finished_ms: i64) {
        match next {
            NextStep::Delivered => {
                let latency_ms = finished_ms.saturating_sub(job.received_at_ms).max(0);
                self.metrics.event_to_delivery(latency_ms as f64 / 1000.0);
                tracing::debug!(status = result.http_status, latency_ms, "delivered");
            }
            NextStep::Dead => {
                self.metrics.delivery_dead(&job.endpoint_id);
                tracing::warn!(
                    error = result.error.as_deref(),
                    status = result.http_status,
                    "delivery is dead after its last attempt"
                );
            }
            NextStep::RetryAt(at_ms) => {
                tracing::info!(
                    error = result.error.as_deref(),
                    status = result.http_status,
                    retry_in_ms = at_ms.saturating_sub(finished_ms).max(0),
                    next_attempt_at = %instant_of(at_ms),
                    "delivery attempt failed; retry scheduled"
                );
            }
        }
    }
}

/// A duration in whole milliseconds, as logs show durations.
fn millis_u64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Epoch milliseconds as an RFC 3339 instant in UTC, for logs.
fn instant_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}
