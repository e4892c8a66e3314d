//! Live configuration and endpoint pauses: a reload swaps endpoints without
//! a restart and refuses a broken file; a paused endpoint's deliveries wait,
//! unspent, and go out in order on resume; an endpoint failing for its
//! `auto_pause_after` pauses itself.

use std::sync::Arc;
use std::time::Duration;

use payhook::clock::FixedClock;

use crate::helpers::*;

/// Waits until the admin API's endpoint list shows `id` paused (or not),
/// and returns its entry.
async fn wait_paused(app: &TestApp, id: &str, paused: bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, page) = app.admin_get("/admin/endpoints").await;
        assert_eq!(status, 200, "{page}");
        let entry = page["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["id"] == id)
            .cloned()
            .unwrap_or_default();
        if entry["paused"].as_bool() == Some(paused) {
            return entry;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "endpoint {id} never became paused={paused}: {entry}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn order_ids(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| r.json()["merchant_order_no"].as_str().unwrap().to_owned())
        .collect()
}

async fn a_reload_adds_an_endpoint_and_a_broken_file_changes_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let second = Merchant::start().await;
    let with_second = format!(
        "{}\n[[endpoints]]\nid = \"second\"\nurl = \"{}\"\nsecret = \"{ENDPOINT_SECRET}\"\naccounts = [\"*\"]\nevents = [\"*\"]\n",
        app.config_text, second.url
    );
    app.write_config(&with_second);
    let (status, answer) = app.admin_post("/admin/reload").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["endpoints"], 2, "{answer}");
    assert_eq!(answer["accounts"], 1, "{answer}");
    assert_eq!(answer["needs_restart"], serde_json::json!([]), "{answer}");

    let (status, _) = app
        .post_signed("dryad-main", &dryad_callback("R-1", 100, chrono::Utc::now()))
        .await;
    assert_eq!(status, 200);
    assert_eq!(second.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    assert_eq!(app.merchant.wait_for(1, Duration::from_secs(10)).await.len(), 1);

    // A file that does not validate (an endpoint without a URL) is refused
    // with the key named, and the running config stays.
    app.write_config(&format!(
        "{with_second}\n[[endpoints]]\nid = \"broken\"\nsecret = \"x\"\n"
    ));
    let (status, answer) = app.admin_post("/admin/reload").await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "config_invalid", "{answer}");
    let message = answer["error"].as_str().unwrap_or_default();
    assert!(message.contains("url"), "the refusal names the key: {answer}");
    // TOML that does not parse is refused too.
    app.write_config("[[endpoints]\n");
    assert_eq!(app.admin_post("/admin/reload").await.0, 400);
    assert_eq!(
        app.counter("payhook_config_reloads_total", &[("outcome", "error")])
            .await,
        2.0
    );
    assert_eq!(
        app.counter("payhook_config_reloads_total", &[("outcome", "ok")])
            .await,
        1.0
    );
    let (status, _) = app
        .post_signed("dryad-main", &dryad_callback("R-2", 100, chrono::Utc::now()))
        .await;
    assert_eq!(status, 200);
    assert_eq!(second.wait_for(2, Duration::from_secs(10)).await.len(), 2);
    assert_eq!(app.merchant.wait_for(2, Duration::from_secs(10)).await.len(), 2);

    // A key that only a restart applies is named, and the rest is applied:
    // the second endpoint goes away.
    let slower = app.config_text.replace("timeout = \"2s\"", "timeout = \"3s\"");
    assert_ne!(slower, app.config_text);
    app.write_config(&slower);
    let (status, answer) = app.admin_post("/admin/reload").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["endpoints"], 1, "{answer}");
    assert_eq!(
        answer["needs_restart"],
        serde_json::json!(["delivery"]),
        "{answer}"
    );
    let (status, _) = app
        .post_signed("dryad-main", &dryad_callback("R-3", 100, chrono::Utc::now()))
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.merchant.wait_for(3, Duration::from_secs(10)).await.len(), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(second.received().len(), 2, "a removed endpoint gets nothing new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_an_endpoint_and_a_broken_file_changes_nothing_sqlite() {
    a_reload_adds_an_endpoint_and_a_broken_file_changes_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_an_endpoint_and_a_broken_file_changes_nothing_scaled() {
    a_reload_adds_an_endpoint_and_a_broken_file_changes_nothing(Backend::Scaled).await;
}

/// A reload adds an account too: its callbacks were `unknown_account`
/// before, and are accepted after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_an_account() {
    use payhook::ingress::{SampleKind, SampleSigner, SampleSpec};
    let app = spawn_app(Backend::Sqlite).await;
    // Its own secret: two Dryad accounts may not share one.
    let secret = "second-dryad-secret-for-reload";
    let signed = payhook::ingress::dryad::DryadSandbox::new(secret.as_bytes().to_vec())
        .sign_sample(&SampleSpec {
            kind: SampleKind::Payment,
            amount: payhook::domain::AmountFen::from_fen(100).unwrap(),
            trade_no: "ACC-1".into(),
            merchant_order_no: "M-ACC-1".into(),
            now: chrono::Utc::now(),
            forge: false,
        })
        .unwrap();
    let (status, _) = app.post_signed("dryad-second", &signed).await;
    assert_eq!(status, 404);
    app.write_config(&format!(
        "{}\n[[accounts]]\nid = \"dryad-second\"\nprovider = \"dryad\"\nsecret = \"{secret}\"\nmax_clock_skew = \"300s\"\n",
        app.config_text
    ));
    let (status, answer) = app.admin_post("/admin/reload").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accounts"], 2, "{answer}");
    let (status, body) = app.post_signed("dryad-second", &signed).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(app.merchant.wait_for(1, Duration::from_secs(10)).await.len(), 1);
}

async fn a_paused_endpoint_gets_nothing_until_resumed_then_in_order(backend: Backend) {
    let app = spawn_app_with(TestOptions {
        backend,
        // One at a time, so that the order of arrival is the order of dispatch.
        delivery: "retry_schedule = [\"100ms\"]\nmax_retries = 1\ntimeout = \"2s\"\nconcurrency = 1\nallow_private_targets = true\n".into(),
        ..TestOptions::default()
    })
    .await;
    let (status, answer) = app.admin_post("/admin/endpoints/merchant/pause").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer,
        serde_json::json!({"id": "merchant", "paused": true, "changed": true})
    );
    let (status, answer) = app.admin_post("/admin/endpoints/merchant/pause").await;
    assert_eq!((status, &answer["changed"]), (200, &serde_json::json!(false)));
    assert_eq!(
        app.counter("payhook_endpoint_paused", &[("endpoint", "merchant")])
            .await,
        1.0
    );

    let now = chrono::Utc::now();
    for (i, order) in ["P-1", "P-2", "P-3"].into_iter().enumerate() {
        let at = now + chrono::Duration::milliseconds(i as i64);
        let (status, _) = app
            .post_signed("dryad-main", &dryad_callback(order, 100, at))
            .await;
        assert_eq!(status, 200);
    }
    // Longer than the retry schedule: nothing is attempted, nothing dies.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        app.merchant.received().is_empty(),
        "a paused endpoint got a delivery"
    );
    let entry = wait_paused(&app, "merchant", true).await;
    assert_eq!(entry["paused_by"], "operator", "{entry}");
    assert_eq!(entry["pending"], 3, "{entry}");
    assert_eq!(entry["dead"], 0, "{entry}");
    let (_, page) = app.admin_get("/admin/deliveries?status=pending").await;
    let pending = page["deliveries"].as_array().unwrap();
    assert_eq!(pending.len(), 3, "{page}");
    assert!(pending.iter().all(|d| d["attempts"] == 0), "{page}");

    let (status, answer) = app.admin_post("/admin/endpoints/merchant/resume").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["changed"], true, "{answer}");
    let got = app.merchant.wait_for(3, Duration::from_secs(10)).await;
    assert_eq!(order_ids(&got), ["M-P-1", "M-P-2", "M-P-3"]);
    assert!(got.iter().all(|r| r.header("x-payhook-attempt") == "1"));
    wait_paused(&app, "merchant", false).await;
    assert_eq!(
        app.counter("payhook_endpoint_paused", &[("endpoint", "merchant")])
            .await,
        0.0
    );

    let (status, answer) = app.admin_post("/admin/endpoints/nobody/pause").await;
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["code"], "endpoint_not_found", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_endpoint_gets_nothing_until_resumed_then_in_order_sqlite() {
    a_paused_endpoint_gets_nothing_until_resumed_then_in_order(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_endpoint_gets_nothing_until_resumed_then_in_order_scaled() {
    a_paused_endpoint_gets_nothing_until_resumed_then_in_order(Backend::Scaled).await;
}

/// An endpoint that has answered nothing but failures for its
/// `auto_pause_after` is paused (with a clock moved forward, not days of
/// waiting); its deliveries then wait instead of going dead.
async fn an_endpoint_failing_for_its_auto_pause_after_pauses_itself(backend: Backend) {
    let t0 = chrono::Utc::now();
    let clock = Arc::new(FixedClock::new(t0));
    let app = spawn_app_with(TestOptions {
        backend,
        clock: Some(clock),
        delivery: "retry_schedule = [\"10h\"]\nmax_retries = 1\ntimeout = \"2s\"\nconcurrency = 4\nallow_private_targets = true\n".into(),
        ..TestOptions::default()
    })
    .await;
    app.write_config(&app.config_text.replace(
        "events = [\"*\"]\n",
        "events = [\"*\"]\nauto_pause_after = \"1h\"\n",
    ));
    // Live: auto_pause_after is an endpoint setting, applied by a reload.
    let (status, answer) = app.admin_post("/admin/reload").await;
    assert_eq!(status, 200, "{answer}");

    app.merchant.always_fail(true);
    let (status, _) = app
        .post_signed("dryad-main", &dryad_callback("AP-1", 100, t0))
        .await;
    assert_eq!(status, 200);
    assert_eq!(app.merchant.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    // The failure reaches the store with the next health report.
    let reported = eventually(Duration::from_secs(10), || async {
        let (_, page) = app.admin_get("/admin/endpoints").await;
        page["endpoints"][0]["consecutive_failures"].as_u64() >= Some(1)
    })
    .await;
    assert!(reported, "{:?}", app.admin_get("/admin/endpoints").await);
    let entry = wait_paused(&app, "merchant", false).await;
    assert_eq!(entry["auto_pause_after_seconds"], 3600, "{entry}");

    // Two hours of nothing but failures, and the retry not yet due.
    let t1 = t0 + chrono::Duration::hours(2);
    app.set_clock(t1);
    let entry = wait_paused(&app, "merchant", true).await;
    assert_eq!(entry["paused_by"], "auto", "{entry}");
    assert_eq!(
        app.counter("payhook_endpoint_paused", &[("endpoint", "merchant")])
            .await,
        1.0
    );
    let (status, _) = app
        .post_signed("dryad-main", &dryad_callback("AP-2", 100, t1))
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        app.merchant.received().len(),
        1,
        "a paused endpoint got a delivery"
    );

    // The merchant is back: on resume the waiting event goes out, and the
    // first one's retry (not due for hours) is still pending, not dead.
    app.merchant.always_fail(false);
    let (status, answer) = app.admin_post("/admin/endpoints/merchant/resume").await;
    assert_eq!(status, 200, "{answer}");
    let got = app.merchant.wait_for(2, Duration::from_secs(15)).await;
    assert!(
        order_ids(&got[1..]).contains(&"M-AP-2".to_owned()),
        "{:?}",
        order_ids(&got)
    );
    let (_, page) = app.admin_get("/admin/deliveries?status=dead").await;
    assert_eq!(page["deliveries"], serde_json::json!([]), "{page}");
    let entry = wait_paused(&app, "merchant", false).await;
    assert_eq!(entry["paused_by"], serde_json::Value::Null, "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_for_its_auto_pause_after_pauses_itself_sqlite() {
    an_endpoint_failing_for_its_auto_pause_after_pauses_itself(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_failing_for_its_auto_pause_after_pauses_itself_scaled() {
    an_endpoint_failing_for_its_auto_pause_after_pauses_itself(Backend::Scaled).await;
}

/// `payhook endpoints list|pause|resume` and `payhook reload` drive the
/// same admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_pauses_resumes_and_reloads() {
    let app = spawn_app(Backend::Sqlite).await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_payhook"))
            .args(args)
            .args(["--admin-url", &app.admin_url, "--admin-token", ADMIN_TOKEN])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = run(&["endpoints", "list"]);
    assert!(listed.starts_with("ID "), "{listed}");
    assert!(
        listed.contains("merchant") && listed.contains(" active "),
        "{listed}"
    );
    assert!(listed.contains(&app.merchant.url), "{listed}");

    assert_eq!(
        run(&["endpoints", "pause", "merchant"]),
        "paused merchant: its deliveries wait until it is resumed\n"
    );
    assert!(run(&["endpoints", "list"]).contains("paused (operator)"));
    let json: serde_json::Value = serde_json::from_str(&run(&["endpoints", "list", "--json"])).unwrap();
    assert_eq!(json["endpoints"][0]["paused"], true, "{json}");
    assert_eq!(
        run(&["endpoints", "resume", "merchant"]),
        "resumed merchant: its waiting deliveries go out in order\n"
    );
    assert_eq!(
        run(&["endpoints", "resume", "merchant"]),
        "merchant was not paused\n"
    );
    assert_eq!(run(&["reload"]), "reloaded: 1 accounts, 1 endpoints\n");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_payhook"))
        .args(["endpoints", "pause", "nobody"])
        .args(["--admin-url", &app.admin_url, "--admin-token", ADMIN_TOKEN])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("endpoint_not_found") || err.contains("no such endpoint"),
        "{err}"
    );
}

/// `SIGHUP` to the real binary reloads the file: a new endpoint starts
/// receiving, and the process keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let first = Merchant::start().await;
    let second = Merchant::start().await;
    let base = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nadmin_listen = \"127.0.0.1:{}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
         [storage]\nurl = \"sqlite://{}\"\n[delivery]\nallow_private_targets = true\n\
         [[accounts]]\nid = \"dryad-main\"\nprovider = \"dryad\"\nsecret = \"{DRYAD_SECRET}\"\nmax_clock_skew = \"300s\"\n\
         [[endpoints]]\nid = \"first\"\nurl = \"{}\"\nsecret = \"{ENDPOINT_SECRET}\"\naccounts = [\"*\"]\nevents = [\"*\"]\n",
        free_port(),
        free_port(),
        dir.path().join("payhook.db").display(),
        first.url,
    );
    let mut relay = RelayProcess::start(&base, dir.path()).await;
    std::fs::write(
        relay.config_path(),
        format!(
            "{base}\n[[endpoints]]\nid = \"second\"\nurl = \"{}\"\nsecret = \"{ENDPOINT_SECRET}\"\naccounts = [\"*\"]\nevents = [\"*\"]\n",
            second.url
        ),
    )
    .unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &relay.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let client = reqwest::Client::new();
    let reloaded = eventually(Duration::from_secs(10), || async {
        let text = relay.metrics().await;
        metric_value(&text, "payhook_config_reloads_total", &[("outcome", "ok")]) == 1.0
    })
    .await;
    assert!(reloaded, "{}", relay.logs());
    let signed = dryad_callback("HUP-1", 100, chrono::Utc::now());
    let mut request = client.post(format!("{}/notify/dryad-main", relay.ingress_url));
    for (name, value) in &signed.headers {
        request = request.header(name, value);
    }
    let response = request
        .header("content-type", signed.content_type)
        .body(signed.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        second.wait_for(1, Duration::from_secs(10)).await.len(),
        1,
        "{}",
        relay.logs()
    );
    assert_eq!(first.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    assert!(relay.logs().contains("config reloaded"), "{}", relay.logs());
    relay.kill();
}

/// Reloads while callbacks arrive drop nothing: every callback is accepted,
/// and the endpoint present in every config gets every event.
async fn reloads_under_traffic_drop_nothing(backend: Backend) {
    let app = spawn_app(backend).await;
    let second = Merchant::start().await;
    let with_second = format!(
        "{}\n[[endpoints]]\nid = \"second\"\nurl = \"{}\"\nsecret = \"{ENDPOINT_SECRET}\"\naccounts = [\"*\"]\nevents = [\"*\"]\n",
        app.config_text, second.url
    );
    const CALLBACKS: usize = 200;
    let now = chrono::Utc::now();
    let sender = {
        let client = app.client.clone();
        let url = format!("{}/notify/dryad-main", app.ingress_url);
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..CALLBACKS {
                let signed = dryad_callback(&format!("LIVE-{i}"), 100, now);
                let mut request = client.post(&url).header("content-type", signed.content_type);
                for (name, value) in &signed.headers {
                    request = request.header(name, value);
                }
                let response = request.body(signed.body.clone()).send().await.unwrap();
                statuses.push(response.status().as_u16());
            }
            statuses
        })
    };
    let mut reloads = 0;
    while !sender.is_finished() {
        let text = if reloads % 2 == 0 {
            &with_second
        } else {
            &app.config_text
        };
        app.write_config(text);
        let (status, answer) = app.admin_post("/admin/reload").await;
        assert_eq!(status, 200, "{answer}");
        reloads += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let statuses = sender.await.unwrap();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert!(reloads >= 5, "only {reloads} reloads during the traffic");
    let got = app.merchant.wait_for(CALLBACKS, Duration::from_secs(30)).await;
    let mut orders = order_ids(&got);
    orders.sort();
    orders.dedup();
    assert_eq!(
        orders.len(),
        CALLBACKS,
        "the endpoint in every config got every event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_traffic_drop_nothing_sqlite() {
    reloads_under_traffic_drop_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_traffic_drop_nothing_scaled() {
    reloads_under_traffic_drop_nothing(Backend::Scaled).await;
}
