//! The figures of a bench run: percentiles and ratios to the baseline, as
//! serialized with `--json` (the table is in `table.rs`).

use std::collections::BTreeMap;

use serde::Serialize;

use super::load::Outcome;
use super::process::ProcSample;
use super::sink::SinkSummary;

#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    pub store: String,
    pub queue: String,
    pub provider: String,
    pub requests: usize,
    pub concurrency: usize,
    /// Requests per second asked for; `null`: as fast as possible.
    pub rate: Option<f64>,
    pub backlog: u64,
    /// The relay had no endpoint: no deliveries were made.
    pub ingress_only: bool,
    /// The running relay targeted, if not one the bench started.
    pub target: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// The payhook version and the commit it was built from (`+dirty` when
    /// the work tree had changes), so a figure can be traced to its code.
    pub payhook: String,
    pub commit: String,
    /// `model name` of /proc/cpuinfo.
    pub cpu_model: String,
    pub cores: usize,
    pub memory_mb: u64,
    /// 1-minute load average when the run started (other work on the machine).
    pub load_average: f64,
    /// PostgreSQL settings that differ from the server's defaults (from
    /// `pg_settings`, e.g. `autovacuum = off`), for runs against PostgreSQL.
    pub postgres_settings: BTreeMap<String, String>,
}

impl Machine {
    pub fn read() -> Machine {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_kb: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0.0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, model)| model.trim().to_owned());
        Machine {
            payhook: env!("CARGO_PKG_VERSION").to_owned(),
            commit: env!("PAYHOOK_COMMIT").to_owned(),
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mb: memory_kb / 1024,
            load_average,
            postgres_settings: BTreeMap::new(),
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(mut samples_ns: Vec<u64>) -> Latency {
        samples_ns.sort_unstable();
        let at = |q: f64| -> f64 {
            if samples_ns.is_empty() {
                return 0.0;
            }
            let rank = ((samples_ns.len() as f64) * q).ceil() as usize;
            let i = rank.clamp(1, samples_ns.len()) - 1;
            samples_ns[i] as f64 / 1e6
        };
        Latency {
            p50: at(0.50),
            p99: at(0.99),
            max: at(1.0),
        }
    }
}

/// CPU and memory of a server process over the run.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ProcessFigures {
    /// CPU time (user + system) from the first request to the last delivery.
    pub cpu_seconds: f64,
    /// Resident set size after start-up, before the load.
    pub rss_idle_mb: f64,
    /// Peak resident set size (VmHWM) at the end of the run.
    pub rss_peak_mb: f64,
}

impl ProcessFigures {
    pub fn between(before: ProcSample, after: ProcSample) -> ProcessFigures {
        ProcessFigures {
            cpu_seconds: (after.cpu_seconds - before.cpu_seconds).max(0.0),
            rss_idle_mb: before.rss_mb,
            rss_peak_mb: after.peak_rss_mb,
        }
    }
}

/// The provider side: requests and their answers.
#[derive(Debug, Clone, Serialize)]
pub struct Ingress {
    pub requests: usize,
    pub accepted: usize,
    pub failed: usize,
    pub failures: BTreeMap<String, usize>,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub throughput_per_s: f64,
    pub latency_ms: Latency,
    pub process: Option<ProcessFigures>,
    /// CPU time of the bench process itself (load generator and sink) over
    /// the same window as `process`: the share of the machine not left to
    /// the server.
    pub load_generator_cpu_seconds: f64,
    /// Busy CPU time of the whole machine over the same window (every
    /// process: the server, the load generator, PostgreSQL, RabbitMQ, and
    /// whatever else runs there).
    pub machine_cpu_busy_seconds: f64,
}

/// CPU time outside the server over a measured window.
#[derive(Debug, Clone, Copy, Default)]
pub struct WindowCpu {
    pub load_generator: f64,
    pub machine: f64,
}

impl Ingress {
    pub fn of(requests: usize, load: Outcome, process: Option<ProcessFigures>, cpu: WindowCpu) -> Ingress {
        let seconds = load.elapsed.as_secs_f64();
        Ingress {
            requests,
            accepted: load.ok,
            failed: load.failed,
            failures: load.failures,
            first_error: load.first_error,
            seconds,
            throughput_per_s: per_second(load.ok, seconds),
            latency_ms: Latency::of(load.latencies_ns),
            process,
            load_generator_cpu_seconds: cpu.load_generator,
            machine_cpu_busy_seconds: cpu.machine,
        }
    }
}

/// The merchant side: provider POST to merchant receipt.
#[derive(Debug, Clone, Serialize)]
pub struct EndToEnd {
    pub delivered: usize,
    pub duplicates: usize,
    pub unmatched: usize,
    pub seconds: f64,
    pub throughput_per_s: f64,
    pub latency_ms: Latency,
}

impl EndToEnd {
    pub fn of(sink: SinkSummary) -> EndToEnd {
        let seconds = sink.span_ns as f64 / 1e9;
        EndToEnd {
            delivered: sink.delivered,
            duplicates: sink.duplicates,
            unmatched: sink.unmatched,
            seconds,
            throughput_per_s: per_second(sink.delivered, seconds),
            latency_ms: Latency::of(sink.latencies_ns),
        }
    }
}

/// Relay figure / baseline figure. End-to-end figures are divided by the
/// baseline's ingress figures (the baseline delivers nothing).
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    pub ingress_throughput: f64,
    pub ingress_p50: f64,
    pub ingress_p99: f64,
    pub ingress_max: f64,
    pub end_to_end_throughput: Option<f64>,
    pub end_to_end_p50: Option<f64>,
    pub end_to_end_p99: Option<f64>,
    pub cpu_seconds: Option<f64>,
    pub rss_idle: Option<f64>,
    pub rss_peak: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub setup: Setup,
    pub machine: Machine,
    pub baseline: Option<Ingress>,
    pub relay: Ingress,
    pub end_to_end: Option<EndToEnd>,
    pub ratios: Option<Ratios>,
}

fn per_second(count: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

fn ratio(relay: f64, baseline: f64) -> f64 {
    if baseline > 0.0 {
        relay / baseline
    } else {
        0.0
    }
}

impl Report {
    pub fn new(
        setup: Setup,
        machine: Machine,
        baseline: Option<Ingress>,
        relay: Ingress,
        end_to_end: Option<EndToEnd>,
    ) -> Report {
        let ratios = baseline.as_ref().map(|b| {
            let procs = b.process.zip(relay.process);
            Ratios {
                ingress_throughput: ratio(relay.throughput_per_s, b.throughput_per_s),
                ingress_p50: ratio(relay.latency_ms.p50, b.latency_ms.p50),
                ingress_p99: ratio(relay.latency_ms.p99, b.latency_ms.p99),
                ingress_max: ratio(relay.latency_ms.max, b.latency_ms.max),
                end_to_end_throughput: end_to_end
                    .as_ref()
                    .map(|e| ratio(e.throughput_per_s, b.throughput_per_s)),
                end_to_end_p50: end_to_end
                    .as_ref()
                    .map(|e| ratio(e.latency_ms.p50, b.latency_ms.p50)),
                end_to_end_p99: end_to_end
                    .as_ref()
                    .map(|e| ratio(e.latency_ms.p99, b.latency_ms.p99)),
                cpu_seconds: procs.map(|(b, r)| ratio(r.cpu_seconds, b.cpu_seconds)),
                rss_idle: procs.map(|(b, r)| ratio(r.rss_idle_mb, b.rss_idle_mb)),
                rss_peak: procs.map(|(b, r)| ratio(r.rss_peak_mb, b.rss_peak_mb)),
            }
        });
        Report {
            setup,
            machine,
            baseline,
            relay,
            end_to_end,
            ratios,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Latency;

    #[test]
    fn percentiles_are_nearest_rank() {
        let l = Latency::of((1..=100).map(|ms| ms * 1_000_000).collect());
        assert_eq!((l.p50, l.p99, l.max), (50.0, 99.0, 100.0));
        assert_eq!(Latency::of(Vec::new()).max, 0.0);
    }
}
