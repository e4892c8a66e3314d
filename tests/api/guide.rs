//! The merchant integration guide, `docs/merchant-integration.md`, and its
//! signature-verification snippets in `docs/snippets/`: the test vector they
//! print is what payhook's own signing code produces, the guide shows each
//! snippet verbatim, and each snippet, run with its language's toolchain where
//! this machine has it, accepts the vector and refuses a tampered body. The
//! Python and Node.js snippets also verify a real delivery from a running relay,
//! and the Standard Webhooks snippet (the published Python library) verifies a
//! delivery signed with rotated secrets with either secret.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use payhook::config::Secret;
use payhook::dispatch::sign::{delivery_headers, standard_webhooks_key, webhook_signature, x_signature};
use payhook::key_list::KeyList;

use crate::helpers::{dryad_callback, spawn_app, Backend, ENDPOINT_SECRET};
use crate::rotation::{spawn_with_rotating_endpoint, NEW_SECRET, OLD_SECRET};

const SECRET: &str = "whsec_c2FuZGJveC1lbmRwb2ludC1zZWNyZXQ=";
const EVENT_ID: &str = "evt_01K3FQ4T8Z6N2WJ5X7R9MBCDEH";
const NONCE: &str = "01K3FQ4T9B2C3D4E5F6G7H8J9K";
const TIMESTAMP_MS: i64 = 1_756_103_700_123;
const BODY: &str = r#"{"id":"evt_01K3FQ4T8Z6N2WJ5X7R9MBCDEH","type":"payment.succeeded","provider":"dryad","account":"dryad-main","provider_trade_no":"202508251430001234567890","merchant_order_no":"20250825001","refund_no":null,"amount":10001,"refund_amount":null,"refunded_total":null,"currency":"CNY","channel":"WX_PAGE","channel_trade_no":"4200002961202508250001","business_params":null,"occurred_at":"2025-08-25T06:35:00Z","received_at":"2025-08-25T06:35:00.123Z","raw":{"subject":"测试商品"}}"#;

/// (file, language tag of its code block in the guide)
const SNIPPETS: &[(&str, &str)] = &[
    ("verify.py", "python"),
    ("Verify.java", "java"),
    ("verify.js", "javascript"),
    ("verify.go", "go"),
];

/// Snippets that use a published library instead of the vector: shown in the
/// guide verbatim like the others, run against a real delivery.
const LIBRARY_SNIPPETS: &[(&str, &str)] = &[("verify_standardwebhooks.py", "python")];

fn docs() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs")
}

fn snippet(name: &str) -> PathBuf {
    docs().join("snippets").join(name)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn guide() -> String {
    read(&docs().join("merchant-integration.md"))
}

fn expected_signatures() -> (String, String) {
    (
        x_signature(SECRET, BODY.as_bytes(), NONCE, TIMESTAMP_MS),
        webhook_signature(SECRET, EVENT_ID, TIMESTAMP_MS / 1000, BODY.as_bytes()),
    )
}

#[test]
fn the_guide_and_snippets_carry_payhooks_own_signatures() {
    let (x_sig, webhook_sig) = expected_signatures();
    // The same values as the delivery headers payhook sends for this input.
    let secrets = KeyList::one(Secret::new(SECRET));
    let headers = delivery_headers(&secrets, EVENT_ID, BODY.as_bytes(), TIMESTAMP_MS, NONCE, 1);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(header("X-Signature"), x_sig);
    assert_eq!(header("webhook-signature"), webhook_sig);
    assert_eq!(header("webhook-timestamp"), (TIMESTAMP_MS / 1000).to_string());
    assert_eq!(standard_webhooks_key(SECRET), b"sandbox-endpoint-secret");

    let body: serde_json::Value = serde_json::from_str(BODY).unwrap();
    assert_eq!(body["id"], EVENT_ID, "the body's id is the webhook-id");

    let guide = guide();
    let values = [
        SECRET.to_owned(),
        EVENT_ID.to_owned(),
        NONCE.to_owned(),
        TIMESTAMP_MS.to_string(),
        (TIMESTAMP_MS / 1000).to_string(),
        BODY.to_owned(),
        x_sig.clone(),
        webhook_sig.clone(),
    ];
    for value in &values {
        assert!(guide.contains(value.as_str()), "the guide shows {value}");
    }
    assert!(
        guide.contains(&format!("the {}-byte UTF-8 JSON", BODY.len())),
        "the guide gives the body's length"
    );
    // The example request at the top is the vector's headers.
    for (name, value) in &headers {
        if *name != "X-Payhook-Attempt" {
            assert!(
                guide.contains(&format!("{name}: {value}\n")),
                "the example shows {name}"
            );
        }
        assert!(guide.contains(&format!("`{name}`")), "the guide explains {name}");
    }
    for (file, _) in SNIPPETS {
        let text = read(&snippet(file));
        for value in &values {
            assert!(text.contains(value.as_str()), "{file} carries {value}");
        }
    }
}

#[test]
fn the_guide_shows_each_snippet_verbatim() {
    let guide = guide();
    for (file, lang) in SNIPPETS.iter().chain(LIBRARY_SNIPPETS) {
        let code = read(&snippet(file));
        assert!(code.ends_with('\n'));
        assert!(
            guide.contains(&format!("```{lang}\n{code}```\n")),
            "docs/merchant-integration.md has docs/snippets/{file} verbatim in a ```{lang} block"
        );
    }
}

fn tampered_body() -> String {
    let tampered = BODY.replace("\"amount\":10001", "\"amount\":10002");
    assert_ne!(tampered, BODY);
    tampered
}

fn present(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs a snippet: as is (the vector), with the vector's body as an
/// argument, and with a tampered body.
fn check_snippet(name: &str, command: impl Fn() -> Command) {
    let run = |body: Option<&str>| -> Output {
        let mut cmd = command();
        if let Some(body) = body {
            cmd.arg(body);
        }
        // Java decodes argv with the locale's charset.
        cmd.env("LC_ALL", "C.UTF-8").env("LANG", "C.UTF-8");
        cmd.output()
            .unwrap_or_else(|e| panic!("cannot run the {name} snippet: {e}"))
    };
    let show = |out: &Output| {
        format!(
            "{}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    let out = run(None);
    assert!(
        out.status.success(),
        "{name} snippet on the vector: {}",
        show(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "X-Signature: ok, webhook-signature: ok"
    );
    let out = run(Some(BODY));
    assert!(
        out.status.success(),
        "{name} snippet with the vector's body as an argument: {}",
        show(&out)
    );
    let out = run(Some(&tampered_body()));
    assert_eq!(
        out.status.code(),
        Some(1),
        "{name} snippet on a tampered body: {}",
        show(&out)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "X-Signature: MISMATCH, webhook-signature: MISMATCH"
    );
}

#[track_caller]
fn skip(name: &str, why: &str) {
    crate::helpers::skip_or_fail(&format!("the {name} snippet"), why);
}

#[test]
fn python_snippet_verifies_the_vector_and_refuses_a_tampered_body() {
    if !present("python3", "--version") {
        return skip("Python", "python3 is not installed");
    }
    check_snippet("Python", || {
        let mut c = Command::new("python3");
        c.arg("-B").arg(snippet("verify.py"));
        c
    });
}

#[test]
fn node_snippet_verifies_the_vector_and_refuses_a_tampered_body() {
    if !present("node", "--version") {
        return skip("Node.js", "node is not installed");
    }
    check_snippet("Node.js", || {
        let mut c = Command::new("node");
        c.arg(snippet("verify.js"));
        c
    });
}

#[test]
fn java_snippet_verifies_the_vector_and_refuses_a_tampered_body() {
    if !present("javac", "-version") || !present("java", "-version") {
        return skip(
            "Java",
            "javac/java are not installed (Debian package default-jdk-headless)",
        );
    }
    let classes = tempfile::tempdir().unwrap();
    let out = Command::new("javac")
        .args(["-Xlint:all", "-Werror", "-encoding", "UTF-8", "-d"])
        .arg(classes.path())
        .arg(snippet("Verify.java"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "javac Verify.java: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_snippet("Java", || {
        let mut c = Command::new("java");
        c.arg("-cp").arg(classes.path()).arg("Verify");
        c
    });
}

#[test]
fn go_snippet_verifies_the_vector_and_refuses_a_tampered_body() {
    if !present("go", "version") {
        return skip("Go", "go is not installed (Debian package golang-go)");
    }
    // A build cache and GOPATH of the test's own: no $HOME needed, and never
    // a toolchain download.
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go");
    let bin = tempfile::tempdir().unwrap();
    let exe = bin.path().join("verify");
    let out = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&exe)
        .arg(snippet("verify.go"))
        .env("GOCACHE", cache.join("cache"))
        .env("GOPATH", cache.join("path"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go build verify.go: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("go")
        .args(["vet"])
        .arg(snippet("verify.go"))
        .env("GOCACHE", cache.join("cache"))
        .env("GOPATH", cache.join("path"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "go vet verify.go: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    check_snippet("Go", || Command::new(&exe));
}

/// A real delivery from a running relay, checked by the Python and Node.js
/// snippets' functions at the current time, as a merchant's handler would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snippets_verify_a_real_delivery() {
    let have_python = present("python3", "--version");
    let have_node = present("node", "--version");
    if !have_python && !have_node {
        return skip("Python and Node.js", "neither python3 nor node is installed");
    }
    let app = spawn_app(Backend::Sqlite).await;
    let signed = dryad_callback("guide-1", 12_345, chrono::Utc::now());
    let (status, answer) = app.post_signed("dryad-main", &signed).await;
    assert_eq!(status, 200, "{answer}");
    let got = app.merchant.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let delivery = &got[0];

    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body");
    std::fs::write(&body_path, &delivery.body).unwrap();
    let mut headers = serde_json::Map::new();
    for (name, value) in &delivery.headers {
        headers.insert(name.as_str().to_owned(), value.to_str().unwrap().into());
    }
    let headers = serde_json::Value::Object(headers).to_string();
    let check = |what: &str, mut cmd: Command, expect_ok: bool| {
        let out = cmd.output().unwrap();
        assert_eq!(
            out.status.success(),
            expect_ok,
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for (secret, expect_ok) in [(ENDPOINT_SECRET, true), (SECRET, false)] {
        if have_python {
            let mut cmd = Command::new("python3");
            cmd.arg("-B")
                .arg("-c")
                .arg(
                    "import json, sys; sys.path.insert(0, sys.argv[1]); import verify\n\
                     body = open(sys.argv[2], 'rb').read(); headers = json.loads(sys.argv[3])\n\
                     ok = verify.x_signature_valid(sys.argv[4], body, headers) and \
                     verify.webhook_signature_valid(sys.argv[4], body, headers)\n\
                     sys.exit(0 if ok else 1)",
                )
                .arg(docs().join("snippets"))
                .arg(&body_path)
                .arg(&headers)
                .arg(secret);
            check("the Python snippet on a real delivery", cmd, expect_ok);
        }
        if have_node {
            let mut cmd = Command::new("node");
            cmd.arg("-e")
                .arg(
                    "const v = require(process.argv[1]); const fs = require('fs');\n\
                     const body = fs.readFileSync(process.argv[2]); const h = JSON.parse(process.argv[3]);\n\
                     const ok = v.xSignatureValid(process.argv[4], body, h) && v.webhookSignatureValid(process.argv[4], body, h);\n\
                     process.exit(ok ? 0 : 1);",
                )
                .arg(snippet("verify.js"))
                .arg(&body_path)
                .arg(&headers)
                .arg(secret);
            check("the Node.js snippet on a real delivery", cmd, expect_ok);
        }
    }
}

/// The rotation section's promise, with the published Standard Webhooks
/// library: a delivery from an endpoint with `secrets = [new, old]` verifies
/// with the new secret alone and with the old one alone, and not with an
/// unrelated one; X-Signature (the stdlib snippet) is the new secret's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standardwebhooks_verifies_a_rotated_delivery_with_either_secret() {
    if !present("python3", "--version") {
        return skip("Standard Webhooks", "python3 is not installed");
    }
    if !present_module("standardwebhooks") {
        return skip(
            "Standard Webhooks",
            "the Python package standardwebhooks is not installed (python3 -m pip install standardwebhooks)",
        );
    }
    let guide = guide();
    let section = &guide[guide
        .find("### 3.5 Rotating the endpoint secret")
        .expect("the rotation section")..];
    assert!(
        section.contains("secrets = [\"whsec_new…\", \"whsec_old…\"]"),
        "the guide shows the list"
    );

    let (app, merchant) = spawn_with_rotating_endpoint().await;
    let signed = dryad_callback("guide-rotated", 12_345, chrono::Utc::now());
    let (status, answer) = app.post_signed("dryad-main", &signed).await;
    assert_eq!(status, 200, "{answer}");
    let got = merchant.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1);
    let delivery = &got[0];
    assert_eq!(
        delivery.header("webhook-signature").split(' ').count(),
        2,
        "one signature per secret"
    );

    let dir = tempfile::tempdir().unwrap();
    let body_path = dir.path().join("body");
    std::fs::write(&body_path, &delivery.body).unwrap();
    let mut headers = serde_json::Map::new();
    for (name, value) in &delivery.headers {
        headers.insert(name.as_str().to_owned(), value.to_str().unwrap().into());
    }
    let headers = serde_json::Value::Object(headers).to_string();
    let unrelated = "whsec_dW5yZWxhdGVkLWVuZHBvaW50LXNlY3JldA==";
    for (secrets, expect_ok) in [
        (vec![NEW_SECRET], true),
        (vec![OLD_SECRET], true),
        (vec![unrelated], false),
        (vec![unrelated, OLD_SECRET], true),
    ] {
        let out = Command::new("python3")
            .arg("-B")
            .arg(snippet("verify_standardwebhooks.py"))
            .arg(&body_path)
            .arg(&headers)
            .args(&secrets)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.success(),
            expect_ok,
            "standardwebhooks with {secrets:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if expect_ok {
            let id = delivery.json()["id"].as_str().unwrap().to_owned();
            assert_eq!(stdout.trim(), format!("webhook-signature: ok, event {id}"));
        }
    }

    // X-Signature has room for one signature: the new secret's, as the
    // guide says, so an X-Signature merchant tries each secret it knows.
    for (secret, expect_ok) in [(NEW_SECRET, true), (OLD_SECRET, false)] {
        let out = Command::new("python3")
            .arg("-B")
            .arg("-c")
            .arg(
                "import json, sys; sys.path.insert(0, sys.argv[1]); import verify\n\
                 body = open(sys.argv[2], 'rb').read(); headers = json.loads(sys.argv[3])\n\
                 sys.exit(0 if verify.x_signature_valid(sys.argv[4], body, headers) else 1)",
            )
            .arg(docs().join("snippets"))
            .arg(&body_path)
            .arg(&headers)
            .arg(secret)
            .output()
            .unwrap();
        assert_eq!(out.status.success(), expect_ok, "X-Signature with {secret}");
    }
}

/// Whether `python3` can import `module`.
fn present_module(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

#[test]
fn the_rabbitmq_example_is_python_and_matches_the_readme() {
    let guide = guide();
    let start = guide
        .find("## 5. Consuming events from RabbitMQ")
        .expect("the RabbitMQ section");
    let section = &guide[start..];
    let code_start = section.find("```python\n").expect("a Python example") + "```python\n".len();
    let code = &section[code_start..code_start + section[code_start..].find("```").unwrap()];
    // The README's example and this one use the same names and practices.
    let readme = read(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("README.md"));
    for needle in [
        "\"payhook.events\"",
        "arguments={\"x-queue-type\": \"quorum\"}",
        "\"*.payment.succeeded\"",
        "basic_qos(prefetch_count=50)",
        "basic_ack(method.delivery_tag)",
        "event[\"merchant_order_no\"], event[\"amount\"]",
    ] {
        assert!(code.contains(needle), "the guide's consumer has {needle}");
        assert!(readme.contains(needle), "README's consumer has {needle}");
    }
    assert!(
        code.find("basic_ack").unwrap() > code.find("with db:").unwrap(),
        "acknowledged after the commit"
    );
    if !present("python3", "--version") {
        crate::helpers::skip_or_fail("the RabbitMQ example's syntax check", "python3 is not installed");
        return;
    }
    let mut child = Command::new("python3")
        .args(["-c", "import ast, sys; ast.parse(sys.stdin.read())"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(code.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the RabbitMQ example parses as Python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
