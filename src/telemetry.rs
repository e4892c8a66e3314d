//! Logs (tracing) and metrics (Prometheus).
//!
//! Metrics go to a recorder owned by each running relay rather than a global
//! one, so that several relays in one test process keep separate counts.

use std::sync::Arc;

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

static META: Metadata<'static> = Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// Ingress outcomes; the label values are part of the external contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngressOutcome {
    Accepted,
    Duplicate,
    BadSignature,
    Stale,
    BadRequest,
    UnknownAccount,
    /// A genuine notice whose signed merchant field names another account.
    WrongAccount,
    /// Over the account's `rate_limit`.
    RateLimited,
    TooLarge,
    Error,
}

impl IngressOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressOutcome::Accepted => "accepted",
            IngressOutcome::Duplicate => "duplicate",
            IngressOutcome::BadSignature => "bad_signature",
            IngressOutcome::Stale => "stale",
            IngressOutcome::BadRequest => "bad_request",
            IngressOutcome::UnknownAccount => "unknown_account",
            IngressOutcome::WrongAccount => "wrong_account",
            IngressOutcome::RateLimited => "rate_limited",
            IngressOutcome::TooLarge => "too_large",
            IngressOutcome::Error => "error",
        }
    }
}

/// Delivery attempt outcomes; label values are part of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    HttpError,
    Timeout,
    ConnectError,
    RefusedTarget,
}

impl AttemptOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Delivered => "delivered",
            AttemptOutcome::HttpError => "http_error",
            AttemptOutcome::Timeout => "timeout",
            AttemptOutcome::ConnectError => "connect_error",
            AttemptOutcome::RefusedTarget => "refused_target",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            AttemptOutcome::Delivered,
            AttemptOutcome::HttpError,
            AttemptOutcome::Timeout,
            AttemptOutcome::ConnectError,
            AttemptOutcome::RefusedTarget,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }
}

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn labels(pairs: &[(&'static str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(k, v)| Label::new(*k, (*v).to_owned()))
        .collect()
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let buckets = [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            300.0, 900.0, 3600.0,
        ];
        let builder = match PrometheusBuilder::new().set_buckets(&buckets) {
            Ok(b) => b,
            // Only fails for an empty bucket list, which the constant above is not.
            Err(_) => PrometheusBuilder::new(),
        };
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let metrics = Self { recorder, handle };
        metrics.describe();
        Arc::new(metrics)
    }

    fn describe(&self) {
        let d = |name: &'static str, text: &'static str| {
            self.recorder.describe_counter(name.into(), None, text.into());
        };
        d(
            "payhook_ingress_requests_total",
            "Provider callbacks received, by outcome.",
        );
        d(
            "payhook_events_published_total",
            "Events published to RabbitMQ with a confirm.",
        );
        d(
            "payhook_delivery_attempts_total",
            "Delivery attempts to merchant endpoints, by outcome.",
        );
        d(
            "payhook_deliveries_dead_total",
            "Deliveries that exhausted their retries.",
        );
        self.recorder.describe_gauge(
            "payhook_deliveries_pending".into(),
            None,
            "Deliveries not yet delivered or dead.".into(),
        );
        self.recorder.describe_gauge(
            "payhook_outbox_pending".into(),
            None,
            "Outbox rows not yet published.".into(),
        );
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; called periodically.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    fn counter(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> metrics::Counter {
        self.recorder
            .register_counter(&Key::from_parts(name, labels(pairs)), &META)
    }

    fn histogram(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> metrics::Histogram {
        self.recorder
            .register_histogram(&Key::from_parts(name, labels(pairs)), &META)
    }

    fn gauge(&self, name: &'static str) -> metrics::Gauge {
        self.recorder.register_gauge(&Key::from_name(name), &META)
    }

    pub fn ingress_request(&self, provider: &str, account: &str, outcome: IngressOutcome) {
        self.counter(
            "payhook_ingress_requests_total",
            &[
                ("provider", provider),
                ("account", account),
                ("outcome", outcome.as_str()),
            ],
        )
        .increment(1);
    }

    pub fn ingress_duration(&self, provider: &str, seconds: f64) {
        self.histogram("payhook_ingress_duration_seconds", &[("provider", provider)])
            .record(seconds);
    }

    pub fn delivery_attempt(&self, endpoint: &str, outcome: AttemptOutcome, seconds: f64) {
        self.counter(
            "payhook_delivery_attempts_total",
            &[("endpoint", endpoint), ("outcome", outcome.as_str())],
        )
        .increment(1);
        self.histogram("payhook_delivery_duration_seconds", &[("endpoint", endpoint)])
            .record(seconds);
    }

    pub fn delivery_dead(&self, endpoint: &str) {
        self.counter("payhook_deliveries_dead_total", &[("endpoint", endpoint)])
            .increment(1);
    }

    pub fn set_deliveries_pending(&self, pending: u64) {
        self.gauge("payhook_deliveries_pending").set(pending as f64);
    }

    pub fn event_to_delivery(&self, seconds: f64) {
        self.histogram("payhook_event_to_delivery_seconds", &[])
            .record(seconds);
    }

    pub fn events_published(&self, count: u64) {
        self.counter("payhook_events_published_total", &[])
            .increment(count);
    }

    pub fn set_outbox_pending(&self, pending: u64) {
        self.gauge("payhook_outbox_pending").set(pending as f64);
    }
}

/// Log output format, from `PAYHOOK_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Installs the global tracing subscriber: filter from `PAYHOOK_LOG` (default
/// `info`), format from `PAYHOOK_LOG_FORMAT` (`json` or `pretty`, default
/// `json`). Logs go to stderr so that command output on stdout stays clean.
pub fn init_logging() {
    init_logging_with_default("info");
}

/// As [`init_logging`], with `default_filter` when `PAYHOOK_LOG` is unset.
pub fn init_logging_with_default(default_filter: &str) {
    use tracing_subscriber::{fmt, EnvFilter};
    let filter = EnvFilter::try_from_env("PAYHOOK_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter));
    let format = match std::env::var("PAYHOOK_LOG_FORMAT").as_deref() {
        Ok("pretty") => LogFormat::Pretty,
        _ => LogFormat::Json,
    };
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        LogFormat::Pretty => builder.pretty().try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_contract_names() {
        let m = Metrics::new();
        m.ingress_request("dryad", "d1", IngressOutcome::BadSignature);
        m.delivery_attempt("shop", AttemptOutcome::Delivered, 0.01);
        m.set_deliveries_pending(3);
        let text = m.render();
        assert!(text.contains(
            "payhook_ingress_requests_total{provider=\"dryad\",account=\"d1\",outcome=\"bad_signature\"} 1"
        ));
        assert!(text.contains("payhook_delivery_attempts_total{endpoint=\"shop\",outcome=\"delivered\"} 1"));
        assert!(text.contains("payhook_deliveries_pending 3"));
        // A second recorder is independent.
        assert!(!Metrics::new().render().contains("dryad"));
    }
}
