//! One delivery attempt: sign, POST, decide what comes next, store it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};

use super::http::{AttemptResult, DeliveryClient};
use super::sign::delivery_headers;
use crate::config::{DeliveryConfig, EndpointConfig, Secret};
use crate::store::{now_ms, AttemptRecord, ClaimedJob, NextStep, RecordOutcome, Store, StoreError};
use crate::telemetry::{AttemptOutcome, Metrics};

/// A merchant endpoint as the dispatcher needs it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub id: String,
    pub url: url::Url,
    pub secret: Secret,
}

impl From<&EndpointConfig> for Endpoint {
    fn from(c: &EndpointConfig) -> Self {
        Self {
            id: c.id.to_string(),
            url: c.url.clone(),
            secret: c.secret.clone(),
        }
    }
}

/// Everything needed to carry out attempts; shared by the embedded worker and
/// the RabbitMQ consumer.
#[derive(Clone)]
pub struct Deliverer {
    pub store: Store,
    pub client: DeliveryClient,
    pub endpoints: Arc<HashMap<String, Endpoint>>,
    pub delivery: Arc<DeliveryConfig>,
    pub metrics: Arc<Metrics>,
}

/// The attempt's result as stored, for the caller (the queue) to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub next: NextStep,
    pub record: RecordOutcome,
}

impl Deliverer {
    pub fn new(
        store: Store,
        endpoints: &[EndpointConfig],
        delivery: DeliveryConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let client = DeliveryClient::new(
            delivery.timeout,
            delivery.allow_private_targets,
            delivery.proxy.as_ref(),
        )?;
        Ok(Self {
            store,
            client,
            endpoints: Arc::new(
                endpoints
                    .iter()
                    .map(|e| (e.id.to_string(), Endpoint::from(e)))
                    .collect(),
            ),
            delivery: Arc::new(delivery),
            metrics,
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

    #[tracing::instrument(skip_all, fields(event_id = %job.event_id, endpoint = %job.endpoint_id, attempt = job.attempt, outcome))]
    pub async fn attempt(&self, job: &ClaimedJob) -> Result<Settled, StoreError> {
        let started_ms = now_ms();
        let clock = Instant::now();
        let result = match self.endpoints.get(&job.endpoint_id) {
            Some(endpoint) => {
                let nonce = ulid::Ulid::new().to_string();
                let body = job.payload.as_bytes().to_vec();
                let headers = delivery_headers(
                    endpoint.secret.expose(),
                    &job.event_id,
                    &body,
                    started_ms,
                    &nonce,
                    job.attempt,
                );
                self.client.post(&endpoint.url, &headers, body).await
            }
            // The endpoint was removed from the config: keep the job visible
            // (dead, redeliverable once the endpoint is back) rather than drop it.
            None => AttemptResult {
                outcome: AttemptOutcome::ConnectError,
                http_status: None,
                error: Some("endpoint is no longer configured".into()),
                response_excerpt: None,
                retry_after: None,
            },
        };
        let elapsed = clock.elapsed();
        let finished_ms = now_ms();
        let next = match (result.outcome, self.endpoints.contains_key(&job.endpoint_id)) {
            (AttemptOutcome::Delivered, _) => NextStep::Delivered,
            (_, false) => NextStep::Dead,
            _ => self.next_after_failure(job.attempt, result.retry_after, finished_ms),
        };
        tracing::Span::current().record("outcome", result.outcome.as_str());
        self.metrics
            .delivery_attempt(&job.endpoint_id, result.outcome, elapsed.as_secs_f64());
        let record = AttemptRecord {
            delivery_id: job.delivery_id,
            attempt: job.attempt,
            started_at_ms: started_ms,
            duration_ms: i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX),
            outcome: result.outcome,
            http_status: result.http_status,
            error: result.error.clone(),
            response_excerpt: result.response_excerpt.clone(),
            next,
        };
        // The outcome must reach the store: retry briefly through a store
        // hiccup. If it still fails, the lease runs out and the job is tried
        // again (at-least-once), never lost.
        let store = self.store.clone();
        let recorded = (|| {
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
        .await?;
        if recorded == RecordOutcome::Applied {
            match next {
                NextStep::Delivered => {
                    let latency_ms = finished_ms.saturating_sub(job.received_at_ms).max(0);
                    self.metrics.event_to_delivery(latency_ms as f64 / 1000.0);
                }
                NextStep::Dead => {
                    self.metrics.delivery_dead(&job.endpoint_id);
                    tracing::warn!(error = ?result.error, "delivery is dead after its last attempt");
                }
                NextStep::RetryAt(_) => {
                    tracing::info!(error = ?result.error, status = ?result.http_status, "delivery attempt failed; retry scheduled");
                }
            }
        }
        Ok(Settled {
            next,
            record: recorded,
        })
    }
}
