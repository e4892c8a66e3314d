//! Logs (tracing) and metrics (Prometheus).
//!
//! Metrics go to a recorder owned by each running relay rather than a global
//! one, so that several relays in one test process keep separate counts.

use std::sync::Arc;

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use crate::domain::AttemptOutcome;

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

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// What happened since the last periodic summary line.
    activity: Activity,
}

/// Counts behind the summary line that keeps a quiet relay observable at
/// `info` without a line per request.
#[derive(Debug, Default)]
struct Activity {
    accepted: std::sync::atomic::AtomicU64,
    delivered: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    dead: std::sync::atomic::AtomicU64,
}

/// Callbacks accepted and delivery attempts made since the previous summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ActivitySummary {
    pub accepted: u64,
    pub delivered: u64,
    pub failed: u64,
    pub dead: u64,
}

impl ActivitySummary {
    pub fn is_empty(&self) -> bool {
        *self == ActivitySummary::default()
    }
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
        let metrics = Self {
            recorder,
            handle,
            activity: Activity::default(),
        };
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
        d(
            "payhook_config_reloads_total",
            "Config reloads (SIGHUP or POST /admin/reload), by outcome: ok or error.",
        );
        d(
            "payhook_retention_deleted_total",
            "Rows removed by retention, by what: events, deliveries and attempts deleted, \
             raw callbacks (body and headers) blanked.",
        );
        self.recorder.describe_gauge(
            "payhook_endpoint_paused".into(),
            None,
            "1 while a merchant endpoint is paused (its deliveries wait), else 0.".into(),
        );
        self.recorder.describe_gauge(
            "payhook_outbox_pending".into(),
            None,
            "Outbox rows not yet published.".into(),
        );
        let h = |name: &'static str, text: &'static str| {
            self.recorder.describe_histogram(name.into(), None, text.into());
        };
        h(
            "payhook_ingress_duration_seconds",
            "Time from a callback's arrival to the provider's answer, by provider.",
        );
        h(
            "payhook_delivery_duration_seconds",
            "Duration of delivery attempts to merchant endpoints.",
        );
        h(
            "payhook_event_to_delivery_seconds",
            "Time from an event's receipt to its successful delivery.",
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

    /// The counts since the previous call, which starts the next period.
    pub fn take_activity(&self) -> ActivitySummary {
        use std::sync::atomic::Ordering::Relaxed;
        let a = &self.activity;
        ActivitySummary {
            accepted: a.accepted.swap(0, Relaxed),
            delivered: a.delivered.swap(0, Relaxed),
            failed: a.failed.swap(0, Relaxed),
            dead: a.dead.swap(0, Relaxed),
        }
    }

    pub fn ingress_request(&self, provider: &str, account: &str, outcome: IngressOutcome) {
        if outcome == IngressOutcome::Accepted {
            self.activity
                .accepted
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
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
        let counted = if outcome == AttemptOutcome::Delivered {
            &self.activity.delivered
        } else {
            &self.activity.failed
        };
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.counter(
            "payhook_delivery_attempts_total",
            &[("endpoint", endpoint), ("outcome", outcome.as_str())],
        )
        .increment(1);
        self.histogram("payhook_delivery_duration_seconds", &[("endpoint", endpoint)])
            .record(seconds);
    }

    /// A job put back because this dispatcher does not know its endpoint:
    /// counted under outcome `unknown_endpoint`, but no request was made, so
    /// nothing goes into the attempt-duration histogram.
    pub fn delivery_unknown_endpoint(&self, endpoint: &str) {
        self.counter(
            "payhook_delivery_attempts_total",
            &[
                ("endpoint", endpoint),
                ("outcome", AttemptOutcome::UnknownEndpoint.as_str()),
            ],
        )
        .increment(1);
    }

    pub fn delivery_dead(&self, endpoint: &str) {
        self.activity
            .dead
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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

    pub fn set_endpoint_paused(&self, endpoint: &str, paused: bool) {
        self.recorder
            .register_gauge(
                &Key::from_parts("payhook_endpoint_paused", labels(&[("endpoint", endpoint)])),
                &META,
            )
            .set(if paused { 1.0 } else { 0.0 });
    }

    /// `what`: `events`, `deliveries`, `attempts` or `raw`. Zero is not
    /// counted (the series appears with the first row removed).
    pub fn retention_deleted(&self, what: &'static str, count: u64) {
        if count > 0 {
            self.counter("payhook_retention_deleted_total", &[("what", what)])
                .increment(count);
        }
    }

    pub fn config_reload(&self, ok: bool) {
        self.counter(
            "payhook_config_reloads_total",
            &[("outcome", if ok { "ok" } else { "error" })],
        )
        .increment(1);
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

/// Libraries' chatter kept out of the default `info` output: PostgreSQL's
/// notices ("relation _sqlx_migrations already exists, skipping") and the
/// AMQP library's internal errors, which payhook reports itself, once per
/// reconnect attempt, with the broker's address. `PAYHOOK_LOG=debug` (or
/// `PAYHOOK_LOG=info,lapin=debug`) shows them.
const QUIET_LIBRARIES: &str = "sqlx::postgres::notice=warn,lapin=off";

/// As [`init_logging`], with `default_filter` when `PAYHOOK_LOG` is unset.
pub fn init_logging_with_default(default_filter: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::{fmt, EnvFilter};
    let mut warnings = Vec::new();
    let default = || EnvFilter::new(format!("{default_filter},{QUIET_LIBRARIES}"));
    let filter = match std::env::var("PAYHOOK_LOG") {
        Err(_) => default(),
        Ok(text) => EnvFilter::try_new(&text).unwrap_or_else(|e| {
            warnings.push(format!(
                "PAYHOOK_LOG={text:?} is not a valid filter ({e}); using {default_filter}"
            ));
            default()
        }),
    };
    let format = match std::env::var("PAYHOOK_LOG_FORMAT").as_deref() {
        Ok("pretty") => LogFormat::Pretty,
        Ok("json") | Err(_) => LogFormat::Json,
        Ok(other) => {
            warnings.push(format!(
                "PAYHOOK_LOG_FORMAT={other:?} is not json or pretty; using json"
            ));
            LogFormat::Json
        }
    };
    // Colour codes only for a person at a terminal, never in files or
    // journald.
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        // The current span's fields once per line (`span`), not again in a
        // list of every open span (`spans`).
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.pretty().try_init(),
    };
    for warning in warnings {
        tracing::warn!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_is_counted_per_period() {
        let m = Metrics::new();
        assert!(m.take_activity().is_empty());
        m.ingress_request("dryad", "d1", IngressOutcome::Accepted);
        m.ingress_request("dryad", "d1", IngressOutcome::Accepted);
        m.ingress_request("dryad", "d1", IngressOutcome::BadSignature);
        m.delivery_attempt("shop", AttemptOutcome::Delivered, 0.01);
        m.delivery_attempt("shop", AttemptOutcome::HttpError, 0.01);
        m.delivery_dead("shop");
        let want = ActivitySummary {
            accepted: 2,
            delivered: 1,
            failed: 1,
            dead: 1,
        };
        assert_eq!(m.take_activity(), want);
        assert!(m.take_activity().is_empty(), "each period starts at zero");
    }

    #[test]
    fn every_metric_has_help() {
        let m = Metrics::new();
        m.ingress_request("dryad", "d1", IngressOutcome::Accepted);
        m.ingress_duration("dryad", 0.001);
        m.delivery_attempt("shop", AttemptOutcome::Delivered, 0.01);
        m.delivery_dead("shop");
        m.event_to_delivery(0.5);
        m.events_published(1);
        m.set_deliveries_pending(1);
        m.set_outbox_pending(1);
        m.set_endpoint_paused("shop", true);
        m.config_reload(true);
        m.retention_deleted("events", 1);
        let text = m.render();
        let typed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(typed.len(), 12, "{text}");
        for name in typed {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP line:\n{text}"
            );
        }
    }

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
