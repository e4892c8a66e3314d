//! The operator API under `/admin/*` (bearer token), and the `payhook events`
//! and `payhook redeliver` commands that use it.

use std::time::Duration;

use payhook::ingress::{SampleKind, SampleSpec, SignedRequest};
use serde_json::Value;

use crate::helpers::*;

pub(crate) const TOKEN: &str = "test-admin-token";
const UNKNOWN_EVENT: &str = "evt_01ARZ3NDEKTSV4RRFFQ69G5FAV";

pub(crate) async fn admin_call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = app.client.request(method, format!("{}{path}", app.admin_url));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get(app: &TestApp, path: &str) -> (u16, Value) {
    admin_call(app, reqwest::Method::GET, path, Some(TOKEN)).await
}

async fn post(app: &TestApp, path: &str) -> (u16, Value) {
    admin_call(app, reqwest::Method::POST, path, Some(TOKEN)).await
}

/// The ids of a list answer's `events` (or `deliveries`), in order.
fn ids(page: &Value, key: &str) -> Vec<Value> {
    page[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect()
}

/// The event's delivery statuses, as the admin API shows them.
async fn delivery_statuses(app: &TestApp, event_id: &str) -> Vec<String> {
    let (_, shown) = get(app, &format!("/admin/events/{event_id}")).await;
    shown["deliveries"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .map(|d| d["status"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

pub(crate) async fn all_delivered(app: &TestApp, event_id: &str, n: usize) -> bool {
    eventually(Duration::from_secs(10), || async {
        let s = delivery_statuses(app, event_id).await;
        s.len() == n && s.iter().all(|s| s == "delivered")
    })
    .await
}

const SQB: &str = "[[accounts]]\nid = \"sqb-md5\"\nprovider = \"shouqianba\"\nsign_mode = \"md5\"\n\
                   terminal_sn = \"100111220054389553\"\nterminal_key = \"96bfaf401367d934cb10a1cbe9773647\"\n";

pub(crate) fn sqb_callback(app: &TestApp, kind: SampleKind, trade_no: &str, order_no: &str) -> SignedRequest {
    let config = app.config();
    let signer =
        payhook::ingress::registry::build_sandbox_signer(config.account("sqb-md5").unwrap()).unwrap();
    signer
        .sign_sample(&SampleSpec {
            kind,
            amount: payhook::domain::AmountFen::from_fen(1234).unwrap(),
            trade_no: trade_no.to_owned(),
            merchant_order_no: order_no.to_owned(),
            now: chrono::Utc::now(),
            forge: false,
        })
        .unwrap()
}

#[tokio::test]
async fn admin_routes_need_the_bearer_token() {
    let app = spawn_app(Backend::Sqlite).await;
    let signed = dryad_callback("A1", 100, chrono::Utc::now());
    assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    let got = app.merchant.wait_for(1, Duration::from_secs(5)).await;
    let id = got[0].json()["id"].as_str().unwrap().to_owned();

    let response = app
        .client
        .get(format!("{}/admin/events", app.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(body["code"], "unauthorized", "{body}");

    for token in [
        None,
        Some("wrong-token"),
        Some("test-admin-token-and-more"),
        Some(""),
    ] {
        let (status, _) = admin_call(&app, reqwest::Method::GET, "/admin/events", token).await;
        assert_eq!(status, 401, "token {token:?}");
    }
    let basic = app
        .client
        .get(format!("{}/admin/events", app.admin_url))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    // Unknown admin paths reveal nothing without the token.
    let (status, _) = admin_call(&app, reqwest::Method::GET, "/admin/nope", None).await;
    assert_eq!(status, 401);
    assert_eq!(get(&app, "/admin/nope").await.0, 404);

    // Nothing happens without the token.
    for path in [
        format!("/admin/events/{id}/redeliver"),
        "/admin/deliveries/redeliver?status=dead".to_owned(),
    ] {
        let (status, _) = admin_call(&app, reqwest::Method::POST, &path, Some("wrong-token")).await;
        assert_eq!(status, 401, "{path}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.merchant.received().len(),
        1,
        "no redelivery without the token"
    );

    let (status, page) = get(&app, "/admin/events").await;
    assert_eq!(status, 200);
    assert_eq!(ids(&page, "events"), [Value::from(id.as_str())]);
    assert_eq!(get(&app, "/admin/deliveries").await.0, 200);
    // Health, readiness and metrics stay open.
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = app
            .client
            .get(format!("{}{path}", app.admin_url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn without_an_admin_token_the_admin_api_refuses_everyone() {
    use payhook::app::{Application, BuildOptions};
    use payhook::config::Config;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n[storage]\nurl = \"sqlite://{}\"\n",
        dir.path().join("p.db").display()
    );
    let config = Config::from_toml_str(&text, dir.path(), &|_: &str| None).unwrap();
    assert!(config.server.admin_token.is_none());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let app = Application::build(
        config,
        BuildOptions {
            shutdown: shutdown.clone(),
            ..BuildOptions::default()
        },
    )
    .await
    .unwrap();
    let admin = format!("http://{}", app.admin_addr().unwrap());
    let handle = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();
    for token in [None, Some(""), Some("anything"), Some(TOKEN)] {
        let mut request = client.get(format!("{admin}/admin/events"));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        assert_eq!(request.send().await.unwrap().status(), 401, "{token:?}");
    }
    let health = client.get(format!("{admin}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    shutdown.cancel();
    handle.await.unwrap().unwrap();
}

#[test]
fn serve_without_an_admin_token_says_so_at_startup() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_payhook"))
        .arg("serve")
        .env("PAYHOOK_LISTEN", "127.0.0.1:0")
        .env("PAYHOOK_ADMIN_LISTEN", "127.0.0.1:0")
        .env(
            "PAYHOOK_DATABASE_URL",
            format!("sqlite://{}", dir.path().join("p.db").display()),
        )
        .env("PAYHOOK_CONFIG", "")
        .env_remove("PAYHOOK_ADMIN_TOKEN")
        .env("PAYHOOK_LOG", "info")
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut before_running = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if line.contains("payhook is running") {
            break;
        }
        before_running.push(line);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        before_running
            .iter()
            .any(|l| l.contains("admin_token") && l.contains("401")),
        "{before_running:?}"
    );
}

pub(crate) fn with_sqb(backend: Backend) -> TestOptions {
    let base = TestOptions::default();
    TestOptions {
        accounts: format!("{}{SQB}", base.accounts),
        backend,
        ..base
    }
}

async fn events_are_listed_newest_first_with_filters_and_pages(backend: Backend) {
    let app = spawn_app_with(with_sqb(backend)).await;
    // Posted in this order, a few milliseconds apart (ids sort by time).
    let callbacks = [
        ("dryad-main", dryad_callback("L1", 101, chrono::Utc::now())),
        ("sqb-md5", sqb_callback(&app, SampleKind::Payment, "S1", "O-S1")),
        ("dryad-main", dryad_callback("L2", 102, chrono::Utc::now())),
        ("sqb-md5", sqb_callback(&app, SampleKind::Refund, "S2", "O-S2")),
    ];
    for (account, signed) in &callbacks {
        assert_eq!(app.post_signed(account, signed).await.0, 200);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, page) = get(&app, "/admin/events").await;
    assert_eq!(status, 200, "{page}");
    let orders: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["merchant_order_no"].as_str().unwrap())
        .collect();
    assert_eq!(orders, ["O-S2", "M-L2", "O-S1", "M-L1"], "newest first");
    assert_eq!(page["next_cursor"], Value::Null);
    let all = ids(&page, "events");
    let first = &page["events"][0];
    assert_eq!(first["type"], "refund.succeeded");
    assert_eq!(first["provider"], "shouqianba");
    assert_eq!(first["account"], "sqb-md5");
    assert!(first["raw"].is_object(), "the whole event JSON: {first}");

    let count = |query: &'static str| {
        let app = &app;
        async move {
            let (status, page) = get(app, &format!("/admin/events?{query}")).await;
            assert_eq!(status, 200, "{query}: {page}");
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["merchant_order_no"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(count("account=sqb-md5").await, ["O-S2", "O-S1"]);
    assert_eq!(count("account=dryad-main").await, ["M-L2", "M-L1"]);
    assert_eq!(count("provider=dryad").await, ["M-L2", "M-L1"]);
    assert_eq!(count("provider=shouqianba").await, ["O-S2", "O-S1"]);
    assert_eq!(count("type=refund.succeeded").await, ["O-S2"]);
    assert_eq!(count("type=payment.succeeded").await, ["M-L2", "O-S1", "M-L1"]);
    assert_eq!(count("merchant_order_no=M-L1").await, ["M-L1"]);
    assert_eq!(
        count("merchant_order_no=O-S1&provider=shouqianba").await,
        ["O-S1"]
    );
    assert!(count("account=dryad-main&type=refund.succeeded").await.is_empty());
    assert!(count("account=nobody").await.is_empty());
    // Empty values are no filter (as a form would send them).
    assert_eq!(count("account=&provider=&type=").await.len(), 4);

    // Pages of one, then of three, cover everything once, in order.
    for size in [1, 3] {
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(c) => format!("/admin/events?limit={size}&cursor={c}"),
                None => format!("/admin/events?limit={size}"),
            };
            let (status, page) = get(&app, &path).await;
            assert_eq!(status, 200, "{page}");
            let got = ids(&page, "events");
            assert!(got.len() <= size);
            seen.extend(got);
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
            assert!(seen.len() <= 4, "pagination ends");
        }
        assert_eq!(seen, all, "pages of {size}");
    }
    let (_, page) = get(&app, "/admin/events?limit=2&provider=dryad").await;
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_cursor"], Value::Null, "no empty last page");
    assert_eq!(
        get(&app, "/admin/events?limit=100000").await.0,
        200,
        "clamped to 500"
    );

    for bad in [
        "provider=nope",
        "type=payment.nope",
        "limit=0",
        "limit=abc",
        "limit=-1",
        "cursor=xyz",
        "acount=sqb-md5",
    ] {
        let (status, body) = get(&app, &format!("/admin/events?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
        assert_eq!(body["code"], "bad_request", "{bad}: {body}");
    }
}

async fn an_event_is_shown_with_its_deliveries_and_attempts(backend: Backend) {
    let app = spawn_app(backend).await;
    app.merchant.fail_next(&[500]);
    let signed = dryad_callback("SH1", 700, chrono::Utc::now());
    assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    let got = app.merchant.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    let id = got[0].json()["id"].as_str().unwrap().to_owned();
    assert!(all_delivered(&app, &id, 1).await);

    let (status, shown) = get(&app, &format!("/admin/events/{id}")).await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["event"]["id"], id.as_str());
    assert_eq!(shown["event"]["amount"], 700);
    assert_eq!(shown["event"]["merchant_order_no"], "M-SH1");
    let deliveries = shown["deliveries"].as_array().unwrap();
    assert_eq!(deliveries.len(), 1);
    let d = &deliveries[0];
    assert!(d["id"].is_i64());
    assert_eq!(d["endpoint"], "merchant");
    assert_eq!(d["status"], "delivered");
    assert_eq!(d["attempts"], 2);
    assert_eq!(
        d["next_attempt_at"],
        Value::Null,
        "only pending deliveries have one"
    );
    assert!(d.as_object().unwrap().contains_key("last_error"));
    let attempts = d["attempts_detail"].as_array().unwrap();
    let summary: Vec<(i64, &str, Option<i64>)> = attempts
        .iter()
        .map(|a| {
            (
                a["attempt"].as_i64().unwrap(),
                a["outcome"].as_str().unwrap(),
                a["http_status"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [(1, "http_error", Some(500)), (2, "delivered", Some(200))]
    );
    // The merchant's answer to each attempt, as read.
    assert_eq!(attempts[0]["response_excerpt"], "not now");
    assert_eq!(attempts[1]["response_excerpt"], "ok");
    for a in attempts {
        let started = a["started_at"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(started).is_ok(), "{started}");
        assert!(a["duration_ms"].as_i64().unwrap() >= 0);
        assert!(a.as_object().unwrap().contains_key("error"));
    }

    for missing in [UNKNOWN_EVENT, "nope", "evt_nope"] {
        let (status, body) = get(&app, &format!("/admin/events/{missing}")).await;
        assert_eq!(status, 404, "{missing}");
        assert_eq!(body["error"], "no such event");
        assert_eq!(body["code"], "event_not_found");
        let (status, _) = post(&app, &format!("/admin/events/{missing}/redeliver")).await;
        assert_eq!(status, 404, "{missing}");
    }
}

async fn redelivering_an_event_sends_it_again_with_the_same_id(backend: Backend) {
    let app = spawn_app(backend).await;
    // Scaled: watch the events exchange, to see that a redelivery does not
    // publish the event a second time.
    let watcher = match &app.prefix {
        Some(prefix) => Some(EventsWatcher::bind(&app, prefix).await),
        None => None,
    };
    let signed = dryad_callback("RD1", 800, chrono::Utc::now());
    assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    let got = app.merchant.wait_for(1, Duration::from_secs(10)).await;
    let id = got[0].json()["id"].as_str().unwrap().to_owned();
    assert!(all_delivered(&app, &id, 1).await);
    let (_, before) = get(&app, &format!("/admin/events/{id}")).await;
    let first_delivery = before["deliveries"][0]["id"].as_i64().unwrap();

    let (status, answer) = post(&app, &format!("/admin/events/{id}/redeliver")).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(answer["event_id"], id.as_str());
    let created = answer["deliveries"].as_array().unwrap();
    assert_eq!(created.len(), 1, "{answer}");
    assert_eq!(created[0]["endpoint"], "merchant");
    assert_eq!(created[0]["status"], "pending");
    let new_delivery = created[0]["id"].as_i64().unwrap();
    assert_ne!(new_delivery, first_delivery);

    let got = app.merchant.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2, "delivered again");
    assert_eq!(got[1].json()["id"], id.as_str(), "the same event id");
    assert_eq!(got[1].header("webhook-id"), id);
    assert_eq!(
        got[1].header("x-payhook-attempt"),
        "1",
        "a new delivery starts at 1"
    );
    assert_eq!(got[1].body, got[0].body, "the same event JSON");
    assert!(all_delivered(&app, &id, 2).await);
    let (_, after) = get(&app, &format!("/admin/events/{id}")).await;
    let second = &after["deliveries"][1];
    assert_eq!(second["id"], new_delivery);
    assert_eq!(second["attempts"], 1);
    assert_eq!(second["redelivery_of"], Value::Null, "the first was not dead");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.merchant.received().len(), 2, "exactly once more");

    if let Some(watcher) = watcher {
        assert_eq!(
            watcher.count().await,
            1,
            "the event is published once, not again on redelivery"
        );
        assert_eq!(app.counter("payhook_events_published_total", &[]).await, 1.0);
    }
}

async fn dead_deliveries_are_listed_and_redelivered_in_bulk(backend: Backend) {
    let app = spawn_app(backend).await;
    app.merchant.always_fail(true);
    let now = chrono::Utc::now();
    for order in ["D1", "D2"] {
        assert_eq!(
            app.post_signed("dryad-main", &dryad_callback(order, 5, now))
                .await
                .0,
            200
        );
    }
    // max_retries = 3: four attempts each.
    assert_eq!(app.merchant.wait_for(8, Duration::from_secs(15)).await.len(), 8);
    let dead_listed = || async {
        let (status, page) = get(&app, "/admin/deliveries?status=dead").await;
        assert_eq!(status, 200, "{page}");
        page["deliveries"].as_array().unwrap().clone()
    };
    assert!(
        eventually(Duration::from_secs(5), || async {
            dead_listed().await.len() == 2
        })
        .await,
        "both deliveries end dead"
    );
    let dead = dead_listed().await;
    let event_ids: Vec<String> = app
        .merchant
        .received()
        .iter()
        .map(|r| r.json()["id"].as_str().unwrap().to_owned())
        .collect();
    for d in &dead {
        assert_eq!(d["status"], "dead");
        assert_eq!(d["endpoint"], "merchant");
        assert_eq!(d["attempts"], 4);
        assert!(d["last_error"].is_string(), "{d}");
        assert!(event_ids.contains(&d["event_id"].as_str().unwrap().to_owned()));
        assert_eq!(d["redelivered_as"], Value::Null);
        assert!(
            d.get("attempts_detail").is_none(),
            "the list has no attempt detail"
        );
    }
    assert!(dead[0]["id"].as_i64() > dead[1]["id"].as_i64(), "newest first");
    // The store's counts, and each event's delivery status in the listing.
    let (status, summary) = get(&app, "/admin/summary").await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["deliveries"]["dead"], 2, "{summary}");
    assert_eq!(summary["deliveries"]["pending"], 0, "{summary}");
    let (store, queue) = match backend {
        Backend::Sqlite => ("sqlite", "embedded"),
        Backend::Scaled => ("postgres", "rabbitmq"),
    };
    assert_eq!(
        (&summary["store"], &summary["queue"]),
        (&store.into(), &queue.into())
    );
    let (_, listed) = get(&app, "/admin/events").await;
    for d in &dead {
        let of_event = &listed["delivery_status"][d["event_id"].as_str().unwrap()];
        assert_eq!(
            of_event,
            &serde_json::json!({ "status": "dead", "deliveries": 1, "attempts": 4 })
        );
    }
    let (_, unresolved) = get(&app, "/admin/deliveries?status=dead&unresolved=true").await;
    let dead_ids: Vec<Value> = dead.iter().map(|d| d["id"].clone()).collect();
    assert_eq!(ids(&unresolved, "deliveries"), dead_ids, "none redelivered yet");
    let (_, pending) = get(&app, "/admin/deliveries?status=pending").await;
    assert_eq!(pending["deliveries"].as_array().unwrap().len(), 0);

    for bad in [
        "/admin/deliveries?status=bogus",
        "/admin/deliveries?cursor=x",
        "/admin/deliveries?status=dead&unresolved=yes",
    ] {
        assert_eq!(get(&app, bad).await.0, 400, "{bad}");
    }
    for bad in [
        "/admin/deliveries/redeliver",
        "/admin/deliveries/redeliver?status=pending",
        "/admin/deliveries/redeliver?status=delivered",
    ] {
        let (status, body) = post(&app, bad).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].is_string());
        assert_eq!(body["code"], "bad_request");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.merchant.received().len(),
        8,
        "a refused bulk call changes nothing"
    );

    app.merchant.always_fail(false);
    // A batch: the oldest dead delivery first, and how many are left.
    let (status, answer) = post(&app, "/admin/deliveries/redeliver?status=dead&limit=1").await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        (answer["redelivered"].clone(), answer["remaining"].clone()),
        (1.into(), 1.into())
    );
    let (status, answer) = post(&app, "/admin/deliveries/redeliver?status=dead").await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(
        (answer["redelivered"].clone(), answer["remaining"].clone()),
        (1.into(), 0.into())
    );
    let got = app.merchant.wait_for(10, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 10);
    let mut again: Vec<String> = got[8..]
        .iter()
        .map(|r| {
            assert_eq!(r.header("x-payhook-attempt"), "1");
            r.json()["id"].as_str().unwrap().to_owned()
        })
        .collect();
    let mut dead_events: Vec<String> = dead
        .iter()
        .map(|d| d["event_id"].as_str().unwrap().to_owned())
        .collect();
    again.sort();
    dead_events.sort();
    assert_eq!(again, dead_events, "each dead delivery's event, once");

    assert!(
        eventually(Duration::from_secs(5), || async {
            let (_, page) = get(&app, "/admin/deliveries?status=delivered").await;
            page["deliveries"].as_array().unwrap().len() == 2
        })
        .await
    );
    let (_, delivered) = get(&app, "/admin/deliveries?status=delivered").await;
    let dead_ids: Vec<i64> = dead_ids.iter().map(|id| id.as_i64().unwrap()).collect();
    for d in delivered["deliveries"].as_array().unwrap() {
        assert!(dead_ids.contains(&d["redelivery_of"].as_i64().unwrap()), "{d}");
        assert_eq!(d["attempts"], 1);
    }
    // The dead ones stay listed, marked as redelivered, but nothing is left
    // to resolve: the store's dead count is zero, and the events read as
    // delivered (two deliveries, five attempts).
    for d in dead_listed().await {
        assert!(d["redelivered_as"].is_i64(), "{d}");
    }
    let (_, unresolved) = get(&app, "/admin/deliveries?status=dead&unresolved=true").await;
    assert_eq!(unresolved["deliveries"], serde_json::json!([]));
    let (_, summary) = get(&app, "/admin/summary").await;
    assert_eq!(summary["deliveries"]["dead"], 0, "{summary}");
    let (_, listed) = get(&app, "/admin/events").await;
    for d in &dead {
        let of_event = &listed["delivery_status"][d["event_id"].as_str().unwrap()];
        assert_eq!(
            of_event,
            &serde_json::json!({ "status": "delivered", "deliveries": 2, "attempts": 5 })
        );
    }
    // Each dead delivery is redelivered once, however often this is run.
    let (status, answer) = post(&app, "/admin/deliveries/redeliver?status=dead").await;
    assert_eq!((status, answer["redelivered"].clone()), (202, Value::from(0)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.merchant.received().len(), 10);

    // All four deliveries, newest first, a page at a time.
    let mut seen = Vec::new();
    let mut path = "/admin/deliveries?limit=3".to_owned();
    loop {
        let (status, page) = get(&app, &path).await;
        assert_eq!(status, 200);
        seen.extend(ids(&page, "deliveries"));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/admin/deliveries?limit=3&cursor={c}"),
            None => break,
        }
    }
    let numbers: Vec<i64> = seen.iter().map(|v| v.as_i64().unwrap()).collect();
    assert_eq!(numbers.len(), 4);
    assert!(numbers.windows(2).all(|w| w[0] > w[1]), "{numbers:?}");
}

/// `q` finds events by the start of their id, provider trade number or
/// merchant order number (exactly: no wildcards, case counts), and
/// `since`/`until` by when they were received.
async fn events_are_found_by_prefix_and_time_range(backend: Backend) {
    let app = spawn_app_with(with_sqb(backend)).await;
    let post_one = |account: &'static str, signed: SignedRequest| {
        let app = &app;
        async move { assert_eq!(app.post_signed(account, &signed).await.0, 200) }
    };
    post_one("dryad-main", dryad_callback("Q1", 101, chrono::Utc::now())).await;
    post_one(
        "sqb-md5",
        sqb_callback(&app, SampleKind::Payment, "TRADE-77", "O-Q2"),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let middle = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    post_one("dryad-main", dryad_callback("Q3", 103, chrono::Utc::now())).await;
    post_one("dryad-main", dryad_callback("R4", 104, chrono::Utc::now())).await;

    let orders = |query: String| {
        let app = &app;
        async move {
            let (status, page) = get(app, &format!("/admin/events?{query}")).await;
            assert_eq!(status, 200, "{query}: {page}");
            let events = page["events"].as_array().unwrap().clone();
            for e in &events {
                let summary = &page["delivery_status"][e["id"].as_str().unwrap()];
                assert!(summary["status"].is_string(), "{query}: {page}");
            }
            events
                .iter()
                .map(|e| e["merchant_order_no"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        }
    };
    let (_, all) = get(&app, "/admin/events").await;
    let by_order = |order: &str| {
        all["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["merchant_order_no"] == order)
            .unwrap()
            .clone()
    };
    assert_eq!(orders("q=M-Q".into()).await, ["M-Q3", "M-Q1"]);
    assert_eq!(orders("q=M-Q1".into()).await, ["M-Q1"]);
    assert_eq!(orders("q=O-Q".into()).await, ["O-Q2"]);
    // The provider's trade number.
    assert_eq!(orders("q=TRADE-7".into()).await, ["O-Q2"]);
    // Case counts, and `%`/`_` are plain characters.
    assert!(orders("q=m-q".into()).await.is_empty());
    assert!(orders("q=M-Q_".into()).await.is_empty());
    assert!(orders("q=M%25".into()).await.is_empty());
    // An event id, whole or its start.
    let id = by_order("M-R4")["id"].as_str().unwrap().to_owned();
    assert_eq!(orders(format!("q={id}")).await, ["M-R4"]);
    assert_eq!(orders(format!("q={}", &id[..id.len() - 1])).await, ["M-R4"]);
    assert_eq!(orders("q=evt_".into()).await.len(), 4);
    // Combined with other filters.
    assert_eq!(
        orders("q=M-&provider=shouqianba".into()).await,
        Vec::<String>::new()
    );
    assert_eq!(orders("q=M-R&account=dryad-main".into()).await, ["M-R4"]);

    // Time ranges, in any offset; `until` is exclusive.
    let at = |t: chrono::DateTime<chrono::Utc>| {
        t.with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap())
            .to_rfc3339()
            .replace('+', "%2B")
    };
    assert_eq!(orders(format!("since={}", at(middle))).await, ["M-R4", "M-Q3"]);
    assert_eq!(orders(format!("until={}", at(middle))).await, ["O-Q2", "M-Q1"]);
    assert_eq!(orders(format!("since={}&q=M-Q", at(middle))).await, ["M-Q3"]);
    let later = middle + chrono::Duration::hours(2);
    assert!(orders(format!("since={}", at(later))).await.is_empty());
    let earlier = middle - chrono::Duration::hours(2);
    assert_eq!(
        orders(format!("since={}&until={}", at(earlier), at(later)))
            .await
            .len(),
        4
    );
    // Pages of a search go on from the cursor.
    let (_, first) = get(&app, "/admin/events?q=M-&limit=2").await;
    assert_eq!(first["events"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().unwrap();
    assert_eq!(orders(format!("q=M-&limit=2&cursor={cursor}")).await, ["M-Q1"]);

    for (bad, named) in [
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("since=2026-12-07", "since"),
        ("q=%01x", "q"),
    ] {
        let (status, body) = get(&app, &format!("/admin/events?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with(named),
            "{bad}: {body}"
        );
    }
    let long = "x".repeat(129);
    assert_eq!(get(&app, &format!("/admin/events?q={long}")).await.0, 400);
}

crate::on_both_backends!(
    events_are_found_by_prefix_and_time_range,
    events_are_listed_newest_first_with_filters_and_pages,
    an_event_is_shown_with_its_deliveries_and_attempts,
    redelivering_an_event_sends_it_again_with_the_same_id,
    dead_deliveries_are_listed_and_redelivered_in_bulk
);

/// A queue bound to the test's events exchange (scaled backend).
struct EventsWatcher {
    _conn: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
}

impl EventsWatcher {
    async fn bind(app: &TestApp, prefix: &str) -> Self {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        use lapin::types::FieldTable;
        // The relay declares the topology when it connects (then it is ready).
        let ready = eventually(Duration::from_secs(15), || async {
            app.client
                .get(format!("{}/readyz", app.admin_url))
                .send()
                .await
                .map(|r| r.status() == 200)
                .unwrap_or(false)
        })
        .await;
        assert!(ready, "relay ready");
        let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
        let channel = conn.create_channel().await.unwrap();
        let options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let q = channel
            .queue_declare("".into(), options, FieldTable::default())
            .await
            .unwrap();
        channel
            .queue_bind(
                q.name().clone(),
                format!("{prefix}.events").into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            _conn: conn,
            channel,
            queue: q.name().to_string(),
        }
    }

    /// How many events were published to the exchange so far.
    async fn count(&self) -> usize {
        use lapin::options::BasicGetOptions;
        let mut n = 0;
        while let Ok(Some(_)) = self
            .channel
            .basic_get(self.queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
        {
            n += 1;
        }
        n
    }
}

// ---------------------------------------------------------------------------
// The command line.

async fn payhook(args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_payhook"))
        .args(args)
        .env_remove("PAYHOOK_ADMIN_TOKEN")
        .env_remove("PAYHOOK_CONFIG")
        .env_remove("PAYHOOK_ADMIN_LISTEN")
        .output()
        .await
        .unwrap()
}

async fn run(args: &[&str], common: &[&str]) -> std::process::Output {
    payhook(&[args, common].concat()).await
}

fn stdout(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test]
async fn the_cli_lists_shows_and_redelivers_through_the_admin_api() {
    let app = spawn_app(Backend::Sqlite).await;
    let signed = dryad_callback("CLI1", 4321, chrono::Utc::now());
    assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    let got = app.merchant.wait_for(1, Duration::from_secs(5)).await;
    let id = got[0].json()["id"].as_str().unwrap().to_owned();
    assert!(all_delivered(&app, &id, 1).await);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("payhook.toml");
    std::fs::write(&config, &app.config_text).unwrap();
    let config = config.to_str().unwrap();
    let url = app.admin_url.as_str();
    // The token comes from the config file.
    let common = ["--config", config, "--admin-url", url];

    let list = stdout(&run(&["events", "list"], &common).await);
    assert!(list.lines().next().unwrap().starts_with("ID"), "{list}");
    let header: Vec<&str> = list.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(header[header.len() - 2..], ["DELIVERY", "ATTEMPTS"], "{list}");
    let row: Vec<&str> = list.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[row.len() - 2..], ["delivered", "1"], "{list}");
    for want in [
        id.as_str(),
        "dryad-main",
        "payment.succeeded",
        "43.21 CNY",
        "M-CLI1",
    ] {
        assert!(list.contains(want), "{want} in\n{list}");
    }
    let json = stdout(&run(&["events", "list", "--json"], &common).await);
    let page: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(page["events"][0]["id"], id.as_str());
    let none = stdout(
        &run(
            &[
                "events",
                "list",
                "--provider",
                "dryad",
                "--type",
                "refund.succeeded",
            ],
            &common,
        )
        .await,
    );
    assert_eq!(none.trim(), "no events");
    let by_order = stdout(
        &run(
            &["events", "list", "--merchant-order-no", "M-CLI1", "--limit", "5"],
            &common,
        )
        .await,
    );
    assert!(by_order.contains(&id), "{by_order}");
    let searched = stdout(&run(&["events", "list", "--search", "M-CLI"], &common).await);
    assert!(searched.contains(&id), "{searched}");
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let none_since = stdout(&run(&["events", "list", "--since", &later], &common).await);
    assert_eq!(none_since.trim(), "no events");
    let until = stdout(
        &run(
            &["events", "list", "--until", &later, "--search", "M-CLI"],
            &common,
        )
        .await,
    );
    assert!(until.contains(&id), "{until}");
    let bad = run(&["events", "list", "--since", "yesterday"], &common).await;
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("since must be an RFC 3339 instant"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );

    let show = stdout(&run(&["events", "show", &id], &common).await);
    for want in [id.as_str(), "merchant", "delivered", "43.21 CNY", "OUTCOME"] {
        assert!(show.contains(want), "{want} in\n{show}");
    }
    let show_json = stdout(&run(&["events", "show", &id, "--json"], &common).await);
    let shown: Value = serde_json::from_str(&show_json).unwrap();
    assert_eq!(
        shown["deliveries"][0]["attempts_detail"][0]["outcome"],
        "delivered"
    );

    let redelivered = stdout(&run(&["redeliver", &id], &common).await);
    assert!(redelivered.contains("merchant"), "{redelivered}");
    let got = app.merchant.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].json()["id"], id.as_str());
    assert_eq!(got[1].header("x-payhook-attempt"), "1");
    let dead = stdout(&run(&["redeliver", "--dead"], &common).await);
    assert_eq!(dead, "no dead deliveries: nothing to redeliver\n");

    // Three dead deliveries, redelivered two per request.
    app.merchant.always_fail(true);
    for order in ["CLI-D1", "CLI-D2", "CLI-D3"] {
        let signed = dryad_callback(order, 5, chrono::Utc::now());
        assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    }
    assert!(
        eventually(Duration::from_secs(15), || async {
            let (_, page) = get(&app, "/admin/deliveries?status=dead").await;
            page["deliveries"].as_array().unwrap().len() == 3
        })
        .await,
        "three dead deliveries"
    );
    app.merchant.always_fail(false);
    let before = app.merchant.received().len();
    let dead = stdout(&run(&["redeliver", "--dead", "--batch-size", "2"], &common).await);
    assert!(dead.contains("redelivered 3 dead deliveries"), "{dead}");
    assert_eq!(
        app.merchant
            .wait_for(before + 3, Duration::from_secs(10))
            .await
            .len(),
        before + 3
    );
    let again = stdout(&run(&["redeliver", "--dead", "--json"], &common).await);
    let again: Value = serde_json::from_str(&again).unwrap();
    assert_eq!(again["redelivered"], 0, "each dead delivery once");

    // Wrong tokens: from the flag, or from PAYHOOK_ADMIN_TOKEN (which wins
    // over the config file).
    let wrong = run(&["events", "list", "--admin-token", "wrong"], &common).await;
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
    let wrong_env = tokio::process::Command::new(env!("CARGO_BIN_EXE_payhook"))
        .args(["events", "list"].iter().chain(&common))
        .env("PAYHOOK_ADMIN_TOKEN", "wrong")
        .output()
        .await
        .unwrap();
    assert!(!wrong_env.status.success());
    assert!(String::from_utf8_lossy(&wrong_env.stderr).contains("401"));
    // The flag alone is enough (no config needed).
    let flag_only = payhook(&["events", "list", "--admin-url", url, "--admin-token", TOKEN]).await;
    assert!(stdout(&flag_only).contains(&id));

    let missing = run(&["events", "show", UNKNOWN_EVENT], &common).await;
    assert!(!missing.status.success());
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("404") && err.contains("no such event"), "{err}");
    let neither = payhook(&["redeliver", "--admin-url", url]).await;
    assert!(!neither.status.success(), "EVENT_ID or --dead is required");
    let both = run(&["redeliver", &id, "--dead"], &common).await;
    assert!(!both.status.success(), "not both");
}

#[test]
fn the_admin_commands_have_help() {
    for args in [
        vec!["events", "--help"],
        vec!["events", "list", "--help"],
        vec!["events", "show", "--help"],
        vec!["redeliver", "--help"],
        vec!["demo", "--help"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_payhook"))
            .args(&args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_payhook"))
        .args(["events", "list", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--account",
        "--provider",
        "--type",
        "--merchant-order-no",
        "--limit",
        "--admin-url",
        "--admin-token",
        "--json",
    ] {
        assert!(text.contains(flag), "{flag} in\n{text}");
    }
}
