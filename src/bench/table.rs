//! The human-readable rendering of a [`Report`]: one row per figure,
//! baseline next to relay, and their ratio.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::report::Report;

/// One figure of the table: its label, the baseline's and the relay's
/// values, and the decimals shown.
type Row = (&'static str, Option<f64>, Option<f64>, usize);

impl Report {
    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        self.write_setup(&mut out);
        let _ = writeln!(out);
        let _ = writeln!(out, "{:<28}{:>14}{:>14}{:>10}", "", "baseline", "relay", "ratio");
        for row in self.rows() {
            write_row(&mut out, row);
        }
        self.write_outcome(&mut out);
        out
    }

    /// What was run, where, and on what.
    fn write_setup(&self, out: &mut String) {
        let s = &self.setup;
        let m = &self.machine;
        let rate = s.rate.map_or("max".to_owned(), |r| format!("{r:.0}/s"));
        let _ = writeln!(
            out,
            "payhook bench: {} + {}, provider {}, {} requests, concurrency {}, rate {}, backlog {}",
            s.store, s.queue, s.provider, s.requests, s.concurrency, rate, s.backlog
        );
        if s.ingress_only {
            let _ = writeln!(
                *out,
                "ingress only: the relay has no endpoint and delivers nothing"
            );
        }
        if let Some(target) = &s.target {
            let _ = writeln!(out, "target: {target}");
        }
        let _ = writeln!(
            out,
            "payhook {} at {}; machine: {}, {} cores, {} MB memory, load average {:.2} at start",
            m.payhook, m.commit, m.cpu_model, m.cores, m.memory_mb, m.load_average
        );
        if !m.postgres_settings.is_empty() {
            let settings: Vec<String> = m
                .postgres_settings
                .iter()
                .map(|(k, v)| format!("{k} = {v}"))
                .collect();
            let _ = writeln!(
                *out,
                "PostgreSQL settings not from its defaults: {}",
                settings.join(", ")
            );
        }
    }

    /// The figures, baseline beside relay.
    fn rows(&self) -> [Row; 14] {
        let s = &self.setup;
        let b = self.baseline.as_ref();
        let r = &self.relay;
        let e = self.end_to_end.as_ref();
        let bp = b.and_then(|b| b.process);
        let rp = r.process;
        [
            (
                "ingress accepted/s",
                b.map(|b| b.throughput_per_s),
                Some(r.throughput_per_s),
                0,
            ),
            (
                "ingress p50 ms",
                b.map(|b| b.latency_ms.p50),
                Some(r.latency_ms.p50),
                2,
            ),
            (
                "ingress p99 ms",
                b.map(|b| b.latency_ms.p99),
                Some(r.latency_ms.p99),
                2,
            ),
            (
                "ingress max ms",
                b.map(|b| b.latency_ms.max),
                Some(r.latency_ms.max),
                2,
            ),
            (
                "end-to-end delivered/s",
                b.map(|b| b.throughput_per_s),
                e.map(|e| e.throughput_per_s),
                0,
            ),
            (
                "end-to-end p50 ms",
                b.map(|b| b.latency_ms.p50),
                e.map(|e| e.latency_ms.p50),
                2,
            ),
            (
                "end-to-end p99 ms",
                b.map(|b| b.latency_ms.p99),
                e.map(|e| e.latency_ms.p99),
                2,
            ),
            (
                "end-to-end max ms",
                b.map(|b| b.latency_ms.max),
                e.map(|e| e.latency_ms.max),
                2,
            ),
            (
                "CPU seconds",
                bp.map(|p| p.cpu_seconds),
                rp.map(|p| p.cpu_seconds),
                2,
            ),
            (
                "CPU ms per request",
                bp.map(|p| per_request(p.cpu_seconds, s.requests)),
                rp.map(|p| per_request(p.cpu_seconds, s.requests)),
                3,
            ),
            (
                "load generator CPU s",
                b.map(|b| b.load_generator_cpu_seconds),
                Some(r.load_generator_cpu_seconds),
                2,
            ),
            (
                "machine CPU busy s",
                b.map(|b| b.machine_cpu_busy_seconds),
                Some(r.machine_cpu_busy_seconds),
                2,
            ),
            (
                "RSS idle MB",
                bp.map(|p| p.rss_idle_mb),
                rp.map(|p| p.rss_idle_mb),
                1,
            ),
            (
                "RSS peak MB",
                bp.map(|p| p.rss_peak_mb),
                rp.map(|p| p.rss_peak_mb),
                1,
            ),
        ]
    }

    /// How many were accepted and delivered, and the first error.
    fn write_outcome(&self, out: &mut String) {
        let r = &self.relay;
        let _ = writeln!(
            out,
            "\naccepted {}/{} (failed {}{})",
            r.accepted,
            r.requests,
            r.failed,
            failures_text(&r.failures)
        );
        if let Some(e) = &self.end_to_end {
            let _ = writeln!(
                *out,
                "delivered {}, duplicates {}, unmatched {}, over {:.2} s",
                e.delivered, e.duplicates, e.unmatched, e.seconds
            );
        }
        if let Some(err) = &r.first_error {
            let _ = writeln!(out, "first error: {err}");
        }
        let _ = writeln!(
            out,
            "end-to-end ratios are to the baseline's ingress figures; CPU seconds are the server process's, \
             from the first request to the last delivery (load generator: the bench process itself)."
        );
    }
}

fn write_row(out: &mut String, (label, base, relay, digits): Row) {
    let cell = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    // End-to-end rows compare against the baseline's ingress figures.
    let base_shown = if label.starts_with("end-to-end") {
        None
    } else {
        base
    };
    let ratio_cell = match (base, relay) {
        (Some(b), Some(r)) if b > 0.0 => format!("{:.2}", r / b),
        _ => "-".to_owned(),
    };
    let _ = writeln!(
        out,
        "{label:<28}{:>14}{:>14}{ratio_cell:>10}",
        cell(base_shown),
        cell(relay)
    );
}

fn per_request(cpu_seconds: f64, requests: usize) -> f64 {
    if requests == 0 {
        0.0
    } else {
        cpu_seconds * 1000.0 / requests as f64
    }
}

fn failures_text(failures: &BTreeMap<String, usize>) -> String {
    if failures.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = failures.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!(": {}", parts.join(", "))
}
