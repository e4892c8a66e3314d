//! Endpoint health and pauses at run time.
//!
//! Each attempt's answer is tallied here in memory ([`EndpointHealth`]); the
//! [`EndpointMonitor`] reports the tallies to the store every
//! [`PAUSED_REFRESH`], so that a flood of attempts costs no statement each,
//! and all processes add up to one view per endpoint. The same loop pauses
//! an endpoint whose answers were nothing but failures for its
//! `auto_pause_after`, reads which endpoints are paused (an operator may
//! have paused one through another process), and sets the
//! `payhook_endpoint_paused` gauge.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::live::{LiveConfig, PausedEndpoints, PAUSED_REFRESH};
use crate::store::{HealthReport, PausedBy, Store};
use crate::telemetry::Metrics;

#[derive(Debug, Default)]
struct Tally {
    success_at_ms: Option<i64>,
    first_failure_ms: Option<i64>,
    failures: u64,
}

/// Answers seen since the last report, per endpoint.
#[derive(Clone, Default)]
pub struct EndpointHealth(Arc<Mutex<HashMap<String, Tally>>>);

impl EndpointHealth {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<String, Tally>) -> R) -> R {
        match self.0.lock() {
            Ok(mut map) => f(&mut map),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// A 2xx answer: a new streak starts after it.
    pub fn success(&self, endpoint: &str, at_ms: i64) {
        self.with(|map| {
            let t = map.entry(endpoint.to_owned()).or_default();
            if t.success_at_ms.map_or(true, |s| s <= at_ms) {
                t.success_at_ms = Some(at_ms);
                t.first_failure_ms = None;
                t.failures = 0;
            }
        });
    }

    /// Any other outcome of a request to the endpoint.
    pub fn failure(&self, endpoint: &str, at_ms: i64) {
        self.with(|map| {
            let t = map.entry(endpoint.to_owned()).or_default();
            t.failures += 1;
            t.first_failure_ms.get_or_insert(at_ms);
        });
    }

    /// The tallies so far, which starts the next period.
    pub fn take(&self) -> Vec<HealthReport> {
        let mut reports: Vec<HealthReport> = self
            .with(std::mem::take)
            .into_iter()
            .map(|(endpoint_id, t)| HealthReport {
                endpoint_id,
                success_at_ms: t.success_at_ms,
                first_failure_ms: t.first_failure_ms,
                failures: t.failures,
            })
            .collect();
        reports.sort_by(|a, b| a.endpoint_id.cmp(&b.endpoint_id));
        reports
    }
}

/// The loop of the module doc.
pub struct EndpointMonitor {
    pub store: Store,
    pub live: LiveConfig,
    pub paused: PausedEndpoints,
    pub health: EndpointHealth,
    pub metrics: Arc<Metrics>,
    /// Auto-pause compares this clock with the first failure's time, so that
    /// a test can let days pass.
    pub clock: Arc<dyn Clock>,
    pub shutdown: CancellationToken,
}

impl EndpointMonitor {
    pub async fn run(self) {
        let mut tick = tokio::time::interval(PAUSED_REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => break,
            }
            self.round().await;
        }
        // What was seen since the last round is not lost at a clean stop.
        self.report().await;
    }

    async fn report(&self) {
        let reports = self.health.take();
        if reports.is_empty() {
            return;
        }
        // Health is advisory (it only feeds auto-pause and the endpoint
        // list): a report the store refused is logged and dropped.
        if let Err(e) = self.store.report_endpoint_health(&reports).await {
            tracing::warn!(error = %e, "cannot store endpoint health");
        }
    }

    async fn round(&self) {
        self.report().await;
        let states = match self.store.endpoint_states().await {
            Ok(states) => states,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read endpoint pauses; keeping the last known ones");
                return;
            }
        };
        let mut paused: HashSet<String> = states
            .iter()
            .filter(|s| s.paused_at_ms.is_some())
            .map(|s| s.endpoint_id.clone())
            .collect();
        let now = self.clock.now().timestamp_millis();
        let routing = self.live.current();
        for endpoint in routing.endpoints.iter() {
            let id = endpoint.id.as_str();
            let Some(after) = endpoint.auto_pause_after else {
                continue;
            };
            let failing_since = states
                .iter()
                .find(|s| s.endpoint_id == id && s.paused_at_ms.is_none())
                .and_then(|s| s.failing_since_ms);
            let Some(since) = failing_since else {
                continue;
            };
            let failing_ms = now.saturating_sub(since);
            if u128::try_from(failing_ms).unwrap_or(0) < after.as_millis() {
                continue;
            }
            match self.store.pause_endpoint(id, PausedBy::Auto, now).await {
                Ok(true) => {
                    paused.insert(id.to_owned());
                    tracing::warn!(
                        endpoint = id,
                        failing_for_ms = failing_ms,
                        auto_pause_after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                        "endpoint paused automatically: nothing but failures for its auto_pause_after; \
                         its deliveries wait until it is resumed"
                    );
                }
                Ok(false) => {
                    paused.insert(id.to_owned());
                }
                Err(e) => tracing::warn!(error = %e, endpoint = id, "cannot pause endpoint"),
            }
        }
        for endpoint in routing.endpoints.iter() {
            let id = endpoint.id.as_str();
            self.metrics.set_endpoint_paused(id, paused.contains(id));
        }
        self.paused.replace(paused);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_success_starts_a_new_streak() {
        let h = EndpointHealth::default();
        h.failure("a", 10);
        h.failure("a", 20);
        h.success("a", 30);
        h.failure("a", 40);
        h.failure("b", 5);
        let reports = h.take();
        assert_eq!(
            reports,
            vec![
                HealthReport {
                    endpoint_id: "a".into(),
                    success_at_ms: Some(30),
                    first_failure_ms: Some(40),
                    failures: 1
                },
                HealthReport {
                    endpoint_id: "b".into(),
                    success_at_ms: None,
                    first_failure_ms: Some(5),
                    failures: 1
                },
            ]
        );
        assert!(h.take().is_empty(), "each report starts a new period");
    }

    #[test]
    fn an_older_success_reported_late_does_not_reset_the_streak() {
        let h = EndpointHealth::default();
        h.success("a", 30);
        h.failure("a", 40);
        // Attempts run concurrently: one that started earlier may end later.
        h.success("a", 25);
        let r = h.take();
        assert_eq!(r[0].success_at_ms, Some(30));
        assert_eq!(r[0].failures, 1);
    }
}
