//! What an operator reads first: the real binary's start-up lines on stderr,
//! parsed as JSON.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::pg_db::fresh_database;

/// Starts `payhook serve` with `config` (TOML) and extra environment, and
/// returns its stderr lines up to "payhook is running" (or its exit).
fn start_lines(config: &str, env: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payhook.toml");
    std::fs::write(&file, config).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_payhook"));
    cmd.args(["serve", "--config"])
        .arg(&file)
        .env("PAYHOOK_LISTEN", "127.0.0.1:0")
        .env("PAYHOOK_ADMIN_LISTEN", "127.0.0.1:0")
        .env_remove("PAYHOOK_LOG")
        .env_remove("PAYHOOK_LOG_FORMAT")
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        let running = line.contains("payhook is running");
        lines.push(line);
        if running {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    lines
}

fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_lines_are_clean_json_that_say_what_runs() {
    let db = fresh_database().await;
    // The password is ignored by the trust-auth test server, and must not
    // show in any line.
    let url = db.url.replacen("postgres@", "postgres:hunter2-secret@", 1);
    assert!(url.contains("hunter2-secret"), "{url}");
    let config = format!("[storage]\nurl = \"{url}\"\n");
    let lines = tokio::task::spawn_blocking(move || start_lines(&config, &[("PAYHOOK_LOG_FORMAT", "jsn")]))
        .await
        .unwrap();
    assert!(
        lines.last().is_some_and(|l| l.contains("payhook is running")),
        "{lines:#?}"
    );
    let all = lines.join("\n");
    assert!(!all.contains("hunter2-secret"), "a password in the logs:\n{all}");
    assert!(!all.contains('\u{1b}'), "ANSI colour codes in a pipe:\n{all}");
    assert!(
        !all.contains("_sqlx_migrations"),
        "PostgreSQL's notices at info:\n{all}"
    );
    let parsed: Vec<Value> = lines.iter().map(|l| json(l)).collect();
    for line in &parsed {
        assert!(line.get("spans").is_none(), "span fields twice: {line}");
    }
    let start = parsed
        .iter()
        .find(|l| l["message"] == "payhook starting")
        .unwrap_or_else(|| panic!("no start-up line:\n{all}"));
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(start["role"], "all");
    assert_eq!(start["queue"], "embedded");
    assert_eq!(start["accounts"], 0);
    assert_eq!(start["endpoints"], 0);
    assert!(start["store"].as_str().unwrap().contains(":***@"), "{start}");
    assert!(
        start["config"].as_str().unwrap().ends_with("payhook.toml"),
        "{start}"
    );
    let warnings: Vec<&str> = parsed
        .iter()
        .filter(|l| l["level"] == "WARN")
        .filter_map(|l| l["message"].as_str())
        .collect();
    for expected in [
        "PAYHOOK_LOG_FORMAT=\"jsn\"",
        "no [[accounts]]",
        "no [[endpoints]]",
    ] {
        assert!(
            warnings.iter().any(|w| w.contains(expected)),
            "no warning about {expected}: {warnings:#?}"
        );
    }
}

#[test]
fn a_split_role_without_a_broker_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for role in ["ingress", "dispatcher"] {
        let out = Command::new(env!("CARGO_BIN_EXE_payhook"))
            .args(["serve", "--role", role])
            .env("PAYHOOK_CONFIG", "")
            .env("PAYHOOK_LISTEN", "127.0.0.1:0")
            .env("PAYHOOK_ADMIN_LISTEN", "127.0.0.1:0")
            .env(
                "PAYHOOK_DATABASE_URL",
                format!("sqlite://{}", dir.path().join("p.db").display()),
            )
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "--role {role} started without a broker");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("--role {role} needs a broker")) && err.contains("amqp_url"),
            "{err}"
        );
    }
}

/// A failed attempt's line carries values an SRE can read: the status as a
/// number, no `Some(…)`, the retry as milliseconds and an RFC 3339 instant;
/// a dead delivery says so, and every line is one JSON object.
#[tokio::test]
async fn delivery_lines_carry_values_not_debug_forms() {
    use crate::helpers::{dryad_callback, eventually, Merchant, RelayProcess, DRYAD_SECRET};
    let merchant = Merchant::start().await;
    merchant.always_fail(true);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[storage]\nurl = \"sqlite://{db}\"\n[delivery]\nretry_schedule = [\"200ms\"]\nmax_retries = 1\n\
         allow_private_targets = true\n\
         [[accounts]]\nid = \"dryad-main\"\nprovider = \"dryad\"\nsecret = \"{DRYAD_SECRET}\"\n\
         [[endpoints]]\nid = \"shop\"\nurl = \"{url}\"\nsecret = \"whsec_c2hvcA==\"\naccounts = [\"*\"]\nevents = [\"*\"]\n",
        db = dir.path().join("p.db").display(),
        url = merchant.url,
    );
    let mut relay = RelayProcess::start(&config, dir.path()).await;
    let signed = dryad_callback("LOG-1", 100, chrono::Utc::now());
    let mut request = reqwest::Client::new()
        .post(format!("{}/notify/dryad-main", relay.ingress_url))
        .header("content-type", signed.content_type)
        .body(signed.body.clone());
    for (k, v) in &signed.headers {
        request = request.header(k.as_str(), v.as_str());
    }
    assert_eq!(request.send().await.unwrap().status(), 200);
    let dead = eventually(std::time::Duration::from_secs(10), || async {
        relay.logs().contains("delivery is dead after its last attempt")
    })
    .await;
    let logs = relay.logs();
    relay.kill();
    assert!(dead, "{logs}");
    assert!(!logs.contains("Some("), "Debug forms in the logs:\n{logs}");
    let lines: Vec<Value> = logs.lines().map(json).collect();
    let retry = lines
        .iter()
        .find(|l| l["message"] == "delivery attempt failed; retry scheduled")
        .unwrap_or_else(|| panic!("no retry line:\n{logs}"));
    assert_eq!(retry["status"], 500, "{retry}");
    assert!(
        retry["retry_in_ms"]
            .as_i64()
            .is_some_and(|ms| (0..=200).contains(&ms)),
        "{retry}"
    );
    let at = retry["next_attempt_at"].as_str().unwrap_or_default();
    assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{retry}");
    assert!(
        retry["error"].as_str().is_some_and(|e| e.contains("500")),
        "{retry}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["message"] == "callback accepted" && l["level"] == "DEBUG"),
        "a debug line per accepted callback:\n{logs}"
    );
}

/// Errors name what failed: a misspelt store scheme is a config error about
/// `storage.url`; an unreachable PostgreSQL names its host, port, database
/// and user, and why (never the password).
#[test]
fn store_errors_name_what_failed() {
    let dir = tempfile::tempdir().unwrap();
    let migrate = |url: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_payhook"))
            .arg("migrate")
            .env("PAYHOOK_CONFIG", "")
            .env("PAYHOOK_DATABASE_URL", url)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url} accepted");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = migrate("postgress://postgres@127.0.0.1/payhook");
    assert!(
        err.contains("storage.url") && err.contains("`postgress`"),
        "{err}"
    );
    assert!(!err.contains("corrupt"), "{err}");

    let port = crate::helpers::free_port();
    let started = std::time::Instant::now();
    let err = migrate(&format!(
        "postgres://payhook:hunter2-secret@127.0.0.1:{port}/orders"
    ));
    assert!(
        err.contains(&format!("127.0.0.1:{port}")) && err.contains("`orders`") && err.contains("`payhook`"),
        "{err}"
    );
    assert!(err.to_lowercase().contains("refused"), "the cause: {err}");
    assert!(!err.contains("hunter2-secret"), "{err}");
    assert!(!err.contains("pool timed out"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(9),
        "a refusal is reported at once"
    );
}
