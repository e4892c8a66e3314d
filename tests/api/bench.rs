//! `payhook bench`, tiny: it must measure correctly, not fast.

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    bench_with_log(args).0
}

/// The JSON report and what the run said on stderr.
fn bench_with_log(args: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_payhook"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("run payhook bench");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "payhook bench failed: {stderr}");
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bench output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (report, stderr)
}

fn positive(report: &serde_json::Value, pointer: &str) -> f64 {
    let v = report
        .pointer(pointer)
        .and_then(|v| v.as_f64())
        .unwrap_or_else(|| panic!("{pointer} missing in {report:#}"));
    assert!(v > 0.0, "{pointer} = {v}");
    v
}

#[test]
fn bench_sends_every_callback_and_counts_every_delivery() {
    let report = bench(&["--requests", "200", "--concurrency", "8"]);
    assert_eq!(report["setup"]["store"], "sqlite");
    assert_eq!(report["setup"]["requests"], 200);
    let relay = &report["relay"];
    assert_eq!(relay["accepted"], 200, "{report:#}");
    assert_eq!(relay["failed"], 0, "{report:#}");
    let e2e = &report["end_to_end"];
    assert_eq!(e2e["delivered"], 200, "{report:#}");
    assert_eq!(e2e["duplicates"], 0);
    assert_eq!(e2e["unmatched"], 0);
    positive(&report, "/relay/throughput_per_s");
    positive(&report, "/end_to_end/throughput_per_s");
    positive(&report, "/baseline/throughput_per_s");
    positive(&report, "/ratios/ingress_throughput");
    let p50 = positive(&report, "/relay/latency_ms/p50");
    let p99 = positive(&report, "/relay/latency_ms/p99");
    let max = positive(&report, "/relay/latency_ms/max");
    assert!(p50 <= p99 && p99 <= max, "{report:#}");
    let e2e_p50 = positive(&report, "/end_to_end/latency_ms/p50");
    assert!(e2e_p50 <= positive(&report, "/end_to_end/latency_ms/p99"));
    // The relay is a child process: its own CPU time and memory.
    positive(&report, "/relay/process/cpu_seconds");
    positive(&report, "/relay/process/rss_idle_mb");
    let peak = positive(&report, "/relay/process/rss_peak_mb");
    assert!(peak >= report["relay"]["process"]["rss_idle_mb"].as_f64().unwrap_or(0.0));
    positive(&report, "/machine/cores");
}

#[test]
fn bench_signs_every_provider_in_the_mix() {
    let report = bench(&[
        "--requests",
        "70",
        "--concurrency",
        "4",
        "--provider",
        "mix",
        "--no-baseline",
    ]);
    assert_eq!(report["relay"]["accepted"], 70, "{report:#}");
    assert_eq!(report["end_to_end"]["delivered"], 70, "{report:#}");
    assert!(report["baseline"].is_null());
}

/// A retry backlog is seeded before the clock starts and stays pending: only
/// the run's own callbacks reach the sink, in either mode.
#[test]
fn bench_seeds_a_backlog_that_is_not_delivered() {
    let admin_url = crate::pg_db::admin_url();
    let amqp_url = crate::helpers::amqp_url();
    let small = [
        "--requests",
        "60",
        "--concurrency",
        "4",
        "--no-baseline",
        "--backlog",
        "500",
    ];
    let scaled = ["--postgres", admin_url.as_str(), "--amqp", amqp_url.as_str()];
    for (mode, extra) in [("sqlite", &[][..]), ("postgresql", &scaled[..])] {
        let (report, stderr) = bench_with_log(&[&small[..], extra].concat());
        assert_eq!(report["setup"]["store"], mode, "{report:#}");
        assert_eq!(report["setup"]["backlog"], 500, "{report:#}");
        assert_eq!(report["relay"]["accepted"], 60, "{report:#}");
        let e2e = &report["end_to_end"];
        assert_eq!(e2e["delivered"], 60, "{mode}: {report:#}");
        assert_eq!(e2e["duplicates"], 0, "{mode}: {report:#}");
        assert_eq!(
            e2e["unmatched"], 0,
            "{mode}: seeded jobs were delivered: {report:#}"
        );
        assert!(stderr.contains("seeded in"), "{mode}: {stderr}");
        // The test server's user may checkpoint: the seeded pages are written
        // out before the clock starts.
        assert!(!stderr.contains("CHECKPOINT failed"), "{mode}: {stderr}");
    }
}

#[test]
fn bench_has_help_for_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_payhook"))
        .args(["bench", "--help"])
        .output()
        .expect("run payhook bench --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--requests",
        "--concurrency",
        "--provider",
        "--rate",
        "--postgres",
        "--amqp",
        "--backlog",
        "--target",
        "--json",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(
        !help.contains("--baseline-server"),
        "internal flag shown:\n{help}"
    );
}

/// `scripts/bench-suite.sh`, the BENCHMARKS.md suite, tiny: it runs a
/// configuration once per round and binary, and keeps each report.
#[test]
fn the_suite_script_runs_its_configurations_and_keeps_every_report() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench-suite.sh");
    let list = Command::new(script)
        .arg("--list")
        .output()
        .expect("run the suite script");
    assert!(list.status.success());
    let names = String::from_utf8_lossy(&list.stdout).to_string();
    for name in ["sqlite-dryad-64", "pg-dryad-2500", "pg-backlog-1m"] {
        assert!(names.lines().any(|l| l == name), "{name} missing from {names}");
    }

    let out = tempfile::tempdir().unwrap();
    let run = Command::new(script)
        .args(["--only", "^sqlite-dryad-ingress$", "--requests", "100", "--out"])
        .arg(out.path())
        .arg(env!("CARGO_BIN_EXE_payhook"))
        .output()
        .expect("run the suite script");
    assert!(
        run.status.success(),
        "suite failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    for round in [1, 2] {
        let path = out.path().join(format!("sqlite-dryad-ingress.a.{round}.json"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let report: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(report["setup"]["requests"], 100, "{report:#}");
        assert_eq!(report["setup"]["ingress_only"], true);
        assert_eq!(report["relay"]["accepted"], 100, "{report:#}");
    }
    assert!(
        !out.path().join("sqlite-dryad-64.a.1.json").exists(),
        "--only runs nothing else"
    );
}

/// `--provider hostile-form`: unsigned 64 KiB forms of 10,000 keys, each
/// refused with 400 (the refusal is the expected answer); the report names
/// the commit, the CPU and the machine it ran on.
#[test]
fn the_hostile_form_case_counts_refusals_and_the_report_names_its_build() {
    let refused = Command::new(env!("CARGO_BIN_EXE_payhook"))
        .args(["bench", "-n", "10", "--provider", "hostile-form", "--no-baseline"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--ingress-only"));

    let out = Command::new(env!("CARGO_BIN_EXE_payhook"))
        .args(["bench", "-n", "200", "-c", "8", "--provider", "HOSTILE-FORM"])
        .args(["--ingress-only", "--no-baseline", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["setup"]["provider"], "hostile-form");
    assert_eq!(report["relay"]["accepted"], 200, "{report:#}");
    let machine = &report["machine"];
    assert!(
        machine["commit"].as_str().is_some_and(|c| !c.is_empty()),
        "{machine}"
    );
    assert!(
        machine["cpu_model"].as_str().is_some_and(|c| !c.is_empty()),
        "{machine}"
    );
    assert_eq!(machine["payhook"], env!("CARGO_PKG_VERSION"));
}
