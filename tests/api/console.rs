//! The ops console at `/admin/ui`: its static shell over plain HTTP, and the
//! real page in headless Chromium against a real relay.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::browser::{self, Browser};
use crate::helpers::*;

const SHELL: [(&str, &str); 4] = [
    ("/admin/ui", "text/html; charset=utf-8"),
    ("/admin/ui/", "text/html; charset=utf-8"),
    ("/admin/ui/app.js", "text/javascript; charset=utf-8"),
    ("/admin/ui/style.css", "text/css; charset=utf-8"),
];

#[tokio::test]
async fn console_shell_is_served_without_the_token_with_strict_headers() {
    let app = spawn_app(Backend::Sqlite).await;
    for (path, content_type) in SHELL {
        let response = app
            .client
            .get(format!("{}{path}", app.admin_url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert_eq!(header("content-type"), content_type, "{path}");
        assert_eq!(header("cache-control"), "no-store", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        let csp = header("content-security-policy");
        assert!(csp.starts_with("default-src 'self';"), "{path}: {csp}");
        for directive in ["script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"] {
            assert!(csp.contains(directive), "{path}: {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        let body = response.text().await.unwrap();
        assert!(body.len() > 100, "{path}");
        assert!(!body.contains(ADMIN_TOKEN), "the shell holds no secret");
    }

    // Any other path under /admin/ui belongs to the API: nothing without the
    // token, a plain 404 with it.
    for path in [
        "/admin/ui/nope",
        "/admin/ui/app.js/x",
        "/admin/ui/index.html",
        "/admin/uix",
    ] {
        let anonymous = app
            .client
            .get(format!("{}{path}", app.admin_url))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401, "{path}");
        let (status, body) = app.admin_get(path).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(body["error"], "no such admin route", "{path}");
    }
    // The data stays behind the token.
    let anonymous = app
        .client
        .get(format!("{}/admin/events", app.admin_url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

/// Waits until the event's only delivery has the status `status`.
async fn wait_delivery_status(app: &TestApp, event_id: &str, status: &str) {
    let settled = eventually(Duration::from_secs(15), || async {
        let (_, shown) = app.admin_get(&format!("/admin/events/{event_id}")).await;
        shown["deliveries"][0]["status"] == status
    })
    .await;
    assert!(settled, "{event_id} is {status}");
}

/// Posts a dryad callback and returns the event id the merchant got.
async fn post_event(app: &TestApp, order: &str) -> String {
    let before = app.merchant.received().len();
    let signed = dryad_callback(order, 1234, chrono::Utc::now());
    assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    let got = app.merchant.wait_for(before + 1, Duration::from_secs(10)).await;
    got[before].json()["id"].as_str().unwrap().to_owned()
}

/// Opens the console and logs in with the admin token.
async fn log_in(browser: &Browser, app: &TestApp) {
    browser.goto(&format!("{}/admin/ui", app.admin_url)).await;
    browser
        .wait_for(
            "the login prompt",
            "return !document.getElementById('login').hidden",
            Duration::from_secs(10),
        )
        .await;
    browser.type_into("#token-input", ADMIN_TOKEN).await;
    browser.click("#login-submit").await;
}

fn css_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

#[tokio::test]
async fn console_in_a_real_browser_lists_shows_and_redelivers() {
    if !browser::available() {
        return;
    }
    let started = Instant::now();
    let app = spawn_app(Backend::Sqlite).await;

    // Two delivered events, one of them with markup in a provider field.
    let delivered = post_event(&app, "OK1").await;
    let hostile_order = "<img src=x id=pwned>";
    let hostile = post_event(&app, hostile_order).await;
    wait_delivery_status(&app, &delivered, "delivered").await;
    wait_delivery_status(&app, &hostile, "delivered").await;
    // Two that die: every attempt fails (max_retries = 3, 50–150 ms apart).
    app.merchant.always_fail(true);
    let dead_one = post_event(&app, "DEAD1").await;
    let dead_two = post_event(&app, "DEAD2").await;
    assert_eq!(app.wait_for_dead(2, Duration::from_secs(15)).await.len(), 2);

    let browser = Browser::start().await;
    let ui = format!("{}/admin/ui?limit=2", app.admin_url);
    browser.goto(&ui).await;

    // Without a token: the login prompt, and a wrong token gets the API's 401.
    browser
        .wait_for(
            "the login prompt",
            "return !document.getElementById('login').hidden && document.getElementById('console').hidden",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser
            .js("return document.querySelectorAll('[data-testid=event-row]').length")
            .await,
        0
    );
    browser.type_into("#token-input", "not-the-token").await;
    browser.click("#login-submit").await;
    let refused = browser
        .wait_for(
            "the 401 message",
            "const e = document.getElementById('login-error'); return !e.hidden && e.textContent",
            Duration::from_secs(10),
        )
        .await;
    assert!(refused.as_str().unwrap().contains("401"), "{refused}");
    assert_eq!(
        browser
            .js("return sessionStorage.getItem('payhook.adminToken')")
            .await,
        Value::Null,
        "a refused token is not kept"
    );
    browser.screenshot("console-login").await;

    // With the token: the newest page of events (two a page here).
    browser.type_into("#token-input", ADMIN_TOKEN).await;
    browser.click("#login-submit").await;
    let row = |id: &str| format!("tr[data-testid=event-row][data-event-id={}]", css_string(id));
    browser
        .wait_for(
            "the newest events",
            &format!("return document.querySelector('{}')", row(&dead_two)),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser.js("return document.getElementById('login').hidden").await,
        true
    );
    // Older: the next page, with the delivered events.
    browser.click("#events-older").await;
    let order_no = browser
        .wait_for(
            "the delivered event on the older page",
            &format!(
                "const r = document.querySelector('{}'); return r && r.querySelector('[data-testid=event-order]').textContent",
                row(&delivered)
            ),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(order_no, "M-OK1");
    assert_eq!(
        browser
            .js("return document.querySelectorAll('[data-testid=event-row]').length")
            .await,
        2
    );
    // Provider text is shown as text, never parsed as markup.
    let shown_hostile = browser
        .js(&format!(
            "return document.querySelector('{}').querySelector('[data-testid=event-order]').textContent",
            row(&hostile)
        ))
        .await;
    assert_eq!(shown_hostile, format!("M-{hostile_order}"));
    assert_eq!(
        browser.js("return document.getElementById('pwned')").await,
        Value::Null
    );
    browser.click("#events-newer").await;
    browser
        .wait_for(
            "the newest page again",
            &format!("return document.querySelector('{}')", row(&dead_one)),
            Duration::from_secs(10),
        )
        .await;

    // Filter by merchant order number.
    browser.type_into("#filter-q", "M-DEAD2").await;
    browser.click("#filter-apply").await;
    browser
        .wait_for(
            "only DEAD2 listed",
            &format!(
                "const rows = document.querySelectorAll('[data-testid=event-row]'); \
                 return rows.length === 1 && rows[0].dataset.eventId === {}",
                css_string(&dead_two)
            ),
            Duration::from_secs(10),
        )
        .await;
    browser.click("#filter-reset").await;

    // Live counters: the page shows what /metrics says.
    let accepted = app
        .counter(
            "payhook_ingress_requests_total",
            &[
                ("provider", "dryad"),
                ("account", "dryad-main"),
                ("outcome", "accepted"),
            ],
        )
        .await;
    assert_eq!(accepted, 4.0);
    browser
        .wait_for(
            "the accepted counter",
            "const c = document.querySelector('[data-testid=counter-ingress-accepted]'); return c && c.textContent === '4'",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser
            .js("return document.querySelector('[data-testid=counter-deliveries-dead]').textContent")
            .await,
        "2"
    );

    // Open a dead event: its delivery and every failed attempt.
    browser
        .click(&format!("{} [data-testid=event-open]", row(&dead_one)))
        .await;
    let detail = format!("#detail[data-event-id={}]", css_string(&dead_one));
    let failed = browser
        .wait_for(
            "the dead delivery's attempts",
            &format!(
                "const d = document.querySelector('{detail} [data-testid=delivery][data-status=dead]'); \
                 return d && [...d.querySelectorAll('[data-testid=attempt]')].map(a => a.dataset.httpStatus)"
            ),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(failed, serde_json::json!(["500", "500", "500", "500"]));
    // Each attempt shows the start of the merchant's answer, as text.
    let answers = browser
        .wait_for(
            "the dead delivery's response excerpts",
            &format!(
                "const d = document.querySelector('{detail} [data-testid=delivery][data-status=dead]'); \
                 return d && [...d.querySelectorAll('[data-testid=attempt-response]')].map(c => c.textContent)"
            ),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(answers, serde_json::json!(["down", "down", "down", "down"]));
    browser.screenshot("console-dead-event").await;

    // Redeliver it from the dead-deliveries view, with the merchant back up:
    // the new delivery and its attempt appear on the page.
    app.merchant.always_fail(false);
    let received = app.merchant.received().len();
    browser
        .click(&format!(
            "tr[data-testid=dead-row][data-event-id={}] [data-testid=dead-redeliver]",
            css_string(&dead_one)
        ))
        .await;
    let statuses = browser
        .wait_for(
            "the redelivery's successful attempt",
            &format!(
                "const ok = document.querySelector('{detail} [data-testid=delivery][data-status=delivered] \
                 [data-testid=attempt][data-outcome=delivered][data-http-status=\"200\"]'); \
                 return ok && [...document.querySelectorAll('{detail} [data-testid=delivery]')].map(d => d.dataset.status)"
            ),
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(statuses, serde_json::json!(["dead", "delivered"]));
    assert_eq!(app.merchant.received().len(), received + 1, "delivered once more");
    let dead_row = |id: &str| format!("tr[data-testid=dead-row][data-event-id={}]", css_string(id));
    // Resolved, it leaves the dead list, and the store's count follows.
    browser
        .wait_for(
            "the redelivered row to leave the dead list",
            &format!(
                "return !document.querySelector('{}') && document.getElementById('dead-count').dataset.count === '1'",
                dead_row(&dead_one)
            ),
            Duration::from_secs(10),
        )
        .await;
    browser.screenshot("console-redelivered").await;

    // Redeliver all dead: it asks first; cancelled, nothing happens.
    browser.click("#dead-redeliver-all").await;
    assert_eq!(
        browser
            .js("return document.getElementById('dead-confirm').hidden")
            .await,
        false
    );
    browser.click("#dead-confirm-no").await;
    assert_eq!(
        browser
            .js("return document.getElementById('dead-confirm').hidden")
            .await,
        true
    );
    assert_eq!(
        app.merchant.received().len(),
        received + 1,
        "nothing redelivered on cancel"
    );
    // Confirmed: only the other one is left; the result shows next to the
    // button.
    browser.click("#dead-redeliver-all").await;
    browser.click("#dead-confirm-yes").await;
    let result = browser
        .wait_for(
            "the bulk redelivery result",
            "const n = document.getElementById('dead-result'); return !n.hidden && n.textContent",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(result, "Redelivered 1 dead delivery.");
    browser
        .wait_for(
            "an empty dead list",
            &format!(
                "return !document.querySelector('{}') && !document.getElementById('dead-empty').hidden",
                dead_row(&dead_two)
            ),
            Duration::from_secs(10),
        )
        .await;
    browser
        .js("document.getElementById('dead').scrollIntoView()")
        .await;
    browser.screenshot("console-dead-list").await;
    let got = app.merchant.wait_for(received + 2, Duration::from_secs(10)).await;
    assert_eq!(got[received + 1].json()["id"], dead_two.as_str());

    // The counters follow on their own (refreshed every few seconds).
    // (The relay counts an attempt just after the merchant answered it.)
    let counted = eventually(Duration::from_secs(5), || async {
        let labels = [("endpoint", "merchant"), ("outcome", "delivered")];
        app.counter("payhook_delivery_attempts_total", &labels).await == 4.0
    })
    .await;
    assert!(counted, "four delivered attempts in /metrics");
    browser
        .wait_for(
            "the delivered-attempts counter to catch up",
            "const c = document.querySelector('[data-testid=counter-attempts-delivered]'); return c && c.textContent === '4'",
            Duration::from_secs(15),
        )
        .await;

    // Forgetting the token empties the page and asks again.
    browser.click("#logout").await;
    browser
        .wait_for(
            "the login prompt after logout",
            "return !document.getElementById('login').hidden \
             && document.querySelectorAll('[data-testid=event-row]').length === 0 \
             && sessionStorage.getItem('payhook.adminToken') === null",
            Duration::from_secs(5),
        )
        .await;
    browser.close().await;
    eprintln!("console browser test took {:?}", started.elapsed());
}

/// "Redeliver all dead" goes a batch at a time, like `payhook redeliver
/// --dead`, with its progress on the page (batches of one here, so that three
/// dead deliveries take three).
#[tokio::test]
async fn console_redelivers_all_dead_in_batches() {
    if !browser::available() {
        return;
    }
    let app = spawn_app(Backend::Sqlite).await;
    app.merchant.always_fail(true);
    for order in ["BULK1", "BULK2", "BULK3"] {
        post_event(&app, order).await;
    }
    assert_eq!(app.wait_for_dead(3, Duration::from_secs(15)).await.len(), 3);
    app.merchant.always_fail(false);
    let received = app.merchant.received().len();

    let browser = Browser::start().await;
    log_in(&browser, &app).await;
    browser
        .wait_for(
            "three dead rows",
            "return document.querySelectorAll('tr[data-testid=dead-row]').length === 3",
            Duration::from_secs(10),
        )
        .await;
    browser.js("document.body.dataset.bulkBatch = '1'").await;
    browser.click("#dead-redeliver-all").await;
    browser.click("#dead-confirm-yes").await;
    let result = browser
        .wait_for(
            "the bulk redelivery result",
            "const n = document.getElementById('dead-result'); return !n.hidden && n.textContent",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(result, "Redelivered 3 dead deliveries.");
    assert_eq!(
        browser
            .js("return document.getElementById('dead-progress').dataset.batches")
            .await,
        "3",
        "one request per batch"
    );
    browser.screenshot("console-bulk-redelivered").await;
    let got = app.merchant.wait_for(received + 3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), received + 3);
    browser.close().await;
}

/// The tallest cell of the rows under `tbody`, in lines of text (its height
/// without padding and border, over its line height).
const TALLEST_CELL_IN_LINES: &str = "
    const cells = [...document.querySelectorAll(arguments_0 + ' td')];
    const lines = cells.map((c) => {
      const s = getComputedStyle(c);
      const inner = c.getBoundingClientRect().height - parseFloat(s.paddingTop)
        - parseFloat(s.paddingBottom) - parseFloat(s.borderTopWidth) - parseFloat(s.borderBottomWidth);
      return inner / parseFloat(s.lineHeight);
    });
    return cells.length ? Math.max(...lines) : -1;";

fn tallest_cell(tbody: &str) -> String {
    format!(
        "const arguments_0 = {};{TALLEST_CELL_IN_LINES}",
        css_string(tbody)
    )
}

/// Whether every table that `css` selects stays inside its card: nothing
/// sticks out to the right, and nothing scrolls sideways.
fn fits_its_card(css: &str) -> String {
    format!(
        "const tables = [...document.querySelectorAll({})];
         return tables.length > 0 && tables.every((t) => {{
           const card = t.closest('.card').getBoundingClientRect();
           const box = t.getBoundingClientRect();
           return box.right <= card.right + 0.5 && t.scrollWidth <= t.clientWidth + 1;
         }});",
        css_string(css)
    )
}

/// The console as an SRE's laptop shows it, 1400×900: the list uses the
/// width, one line per event with its delivery status and attempts; an
/// event's attempts fit its card; times are in one named zone; counters that
/// do not apply are absent; the dead list shows what is unresolved with the
/// store's count; searches and time ranges are links; banners clear
/// themselves. Screenshots go to the test output directory.
#[tokio::test]
async fn console_fits_a_1400_by_900_screen_and_its_views_are_links() {
    if !browser::available() {
        return;
    }
    let app = spawn_app_with(crate::admin::with_sqb(Backend::Sqlite)).await;
    // Long values in every column that could wrap.
    let long_order = format!("LONG-{}", "9".repeat(60));
    post_event(&app, &long_order).await;
    for i in 0..5 {
        post_event(&app, &format!("N{i}")).await;
    }
    let before = app.merchant.received().len();
    let refund = crate::admin::sqb_callback(&app, payhook::ingress::SampleKind::Refund, "T-RF1", "O-RF1");
    assert_eq!(app.post_signed("sqb-md5", &refund).await.0, 200);
    app.merchant.wait_for(before + 1, Duration::from_secs(10)).await;
    app.merchant.always_fail(true);
    let dead = post_event(&app, "DEAD-LAYOUT").await;
    assert_eq!(app.wait_for_dead(1, Duration::from_secs(15)).await.len(), 1);
    app.merchant.always_fail(false);
    let (_, listed) = app.admin_get("/admin/events").await;
    let events = listed["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 8);

    let browser = Browser::start().await;
    let size = browser.js("return [window.innerWidth, window.innerHeight]").await;
    assert_eq!(size, serde_json::json!([1400, 900]), "the page is 1400×900");
    log_in(&browser, &app).await;
    browser
        .wait_for(
            "eight events and the store's counts",
            "return document.querySelectorAll('[data-testid=event-row]').length === 8 \
             && document.getElementById('dead-count').dataset.count === '1' \
             && document.querySelector('[data-testid=counter-deliveries-dead]')",
            Duration::from_secs(10),
        )
        .await;
    let (path, png) = browser.screenshot("console-1400x900-list").await;
    assert_eq!(png, (1400, 900), "{}", path.display());
    assert!(path.exists());

    // The list uses the page, and every cell is one line (at most two).
    let width = browser
        .js("return document.getElementById('events-table').getBoundingClientRect().width / window.innerWidth")
        .await;
    assert!(width.as_f64().unwrap() > 0.9, "the list spans the page: {width}");
    let lines = browser.js(&tallest_cell("#events-body")).await;
    assert!(
        lines.as_f64().unwrap() > 0.5 && lines.as_f64().unwrap() <= 2.0,
        "the tallest cell of the event list is {lines} lines"
    );
    assert_eq!(browser.js(&fits_its_card("#events-table")).await, true);
    // Delivery status and attempts per event.
    let row_facts = |id: &str| {
        format!(
            "const r = document.querySelector('tr[data-testid=event-row][data-event-id={}]'); \
             return r && [r.dataset.delivery, r.querySelector('[data-testid=event-attempts]').textContent, \
             r.querySelector('[data-testid=event-amount]').textContent, \
             r.querySelector('[data-testid=event-received]').textContent]",
            css_string(id)
        )
    };
    for event in &events {
        let id = event["id"].as_str().unwrap();
        let facts = browser.js(&row_facts(id)).await;
        // Every time is shown in UTC, the zone the headers name.
        let received = chrono::DateTime::parse_from_rfc3339(event["received_at"].as_str().unwrap())
            .unwrap()
            .with_timezone(&chrono::Utc)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        assert_eq!(facts[3], received.as_str(), "{id}");
        if id == dead {
            assert_eq!(facts[0], "dead");
            assert_eq!(facts[1], "4");
        } else {
            assert_eq!(facts[0], "delivered", "{id}: {facts}");
            assert_eq!(facts[1], "1", "{id}");
        }
        if event["type"] == "refund.succeeded" {
            let amount = facts[2].as_str().unwrap();
            let expected = if event["refund_amount"].is_null() {
                format!(
                    "refunded {} of {} CNY",
                    yuan(&event["refunded_total"]),
                    yuan(&event["amount"])
                )
            } else {
                format!(
                    "refund {} of {} CNY",
                    yuan(&event["refund_amount"]),
                    yuan(&event["amount"])
                )
            };
            assert_eq!(amount, expected);
        }
    }
    assert_eq!(
        browser
            .js("return [...document.querySelectorAll('.zone-name')].map((z) => z.textContent)")
            .await,
        serde_json::json!(["(UTC)", "(UTC)", "(UTC)"])
    );
    // The provider filter offers every provider of the registry, in its order.
    let mut providers = vec![String::new()];
    providers.extend(payhook::domain::ProviderKind::NAMES.iter().map(|n| n.to_string()));
    assert_eq!(
        browser
            .js("return [...document.getElementById('filter-provider').options].map((o) => o.value)")
            .await,
        serde_json::json!(providers)
    );
    // SQLite with the embedded queue: no outbox, no RabbitMQ counters.
    assert_eq!(
        browser
            .js("return [document.getElementById('backend').textContent, \
                 !!document.querySelector('[data-testid=counter-deliveries-outbox]'), \
                 !!document.querySelector('[data-testid=counter-deliveries-published]'), \
                 document.querySelector('[data-testid=counter-deliveries-dead]').textContent, \
                 document.getElementById('dead-count').textContent]")
            .await,
        serde_json::json!(["SQLite · embedded queue", false, false, "1", "(1 unresolved)"])
    );

    // An event's attempts fit its card, with the list still using the page.
    browser
        .click(&format!(
            "tr[data-testid=event-row][data-event-id={}] [data-testid=event-open]",
            css_string(&dead)
        ))
        .await;
    browser
        .wait_for(
            "the dead event's four attempts",
            "return document.querySelectorAll('#detail [data-testid=attempt]').length === 4",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(browser.js(&fits_its_card("#detail table.attempts")).await, true);
    let lines = browser.js(&tallest_cell("#events-body")).await;
    assert!(lines.as_f64().unwrap() <= 2.0, "{lines}");
    browser.screenshot("console-1400x900-event").await;
    let address = browser.js("return location.search").await;
    assert!(
        address.as_str().unwrap().contains(&format!("event={dead}")),
        "the open event is in the address: {address}"
    );

    // A search is a link: the address carries it, and opening the address
    // shows the same view.
    browser.type_into("#filter-q", "M-LONG").await;
    browser.click("#filter-apply").await;
    let one = "const rows = document.querySelectorAll('[data-testid=event-row]'); \
               return rows.length === 1 && rows[0].querySelector('[data-testid=event-order]').textContent";
    let shown = browser
        .wait_for("the search result", one, Duration::from_secs(10))
        .await;
    assert_eq!(shown, format!("M-{long_order}"));
    let link = browser
        .js("return document.getElementById('filter-link').href")
        .await;
    let link = link.as_str().unwrap().to_owned();
    assert!(link.contains("q=M-LONG"), "{link}");
    browser.goto(&format!("{}/admin/ui", app.admin_url)).await;
    browser
        .wait_for(
            "all events again",
            "return document.querySelectorAll('[data-testid=event-row]').length === 8",
            Duration::from_secs(10),
        )
        .await;
    browser.goto(&link).await;
    let shown = browser
        .wait_for("the linked search", one, Duration::from_secs(10))
        .await;
    assert_eq!(shown, format!("M-{long_order}"));
    assert_eq!(
        browser
            .js("return [document.getElementById('filter-q').value, !document.getElementById('detail').hidden]")
            .await,
        serde_json::json!(["M-LONG", true]),
        "the search and the open event come back from the link"
    );

    // Time ranges: in the address as RFC 3339, in the form in the zone.
    // (Seconds other than zero: a `datetime-local` value drops `:00`.)
    let after = (chrono::Utc::now() + chrono::Duration::minutes(2))
        .format("%Y-%m-%dT%H:%M:30Z")
        .to_string();
    browser
        .goto(&format!("{}/admin/ui?since={after}", app.admin_url))
        .await;
    browser
        .wait_for(
            "no event after now",
            "return !document.getElementById('events-empty').hidden",
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(
        browser
            .js("return document.getElementById('filter-since').value")
            .await,
        after.trim_end_matches('Z').to_owned()
    );
    browser
        .goto(&format!("{}/admin/ui?until={after}&q=M-N", app.admin_url))
        .await;
    browser
        .wait_for(
            "the five N events",
            "return document.querySelectorAll('[data-testid=event-row]').length === 5",
            Duration::from_secs(10),
        )
        .await;

    // Banners clear themselves (quickly here).
    browser
        .goto(&format!("{}/admin/ui?event={dead}", app.admin_url))
        .await;
    browser
        .wait_for(
            "the event open from the address",
            "return document.querySelectorAll('#detail [data-testid=attempt]').length === 4",
            Duration::from_secs(10),
        )
        .await;
    browser.js("document.body.dataset.noticeMs = '800'").await;
    browser.click("#detail-redeliver").await;
    browser
        .wait_for(
            "the redelivery banner",
            "return !document.getElementById('notice-box').hidden \
             && document.getElementById('notice').textContent.startsWith('Redelivery of')",
            Duration::from_secs(10),
        )
        .await;
    browser
        .wait_for(
            "the banner to clear itself",
            "return document.getElementById('notice-box').hidden",
            Duration::from_secs(10),
        )
        .await;
    // Resolved: the dead list is empty and its count is zero.
    browser
        .wait_for(
            "no unresolved dead delivery",
            "return document.getElementById('dead-count').dataset.count === '0' \
             && !document.getElementById('dead-empty').hidden",
            Duration::from_secs(15),
        )
        .await;
    browser.screenshot("console-1400x900-resolved").await;
    browser.close().await;
}

/// Fen as yuan, as the console prints it.
fn yuan(fen: &Value) -> String {
    let fen = fen.as_i64().unwrap();
    format!("{}.{:02}", fen / 100, fen % 100)
}

/// The endpoints panel pauses and resumes an endpoint: while it is paused,
/// the panel says so and a new event waits; on resume it is delivered.
#[tokio::test]
async fn console_pauses_and_resumes_an_endpoint() {
    if !browser::available() {
        return;
    }
    let app = spawn_app(Backend::Sqlite).await;
    let browser = Browser::start().await;
    log_in(&browser, &app).await;
    let row = "tr[data-testid=endpoint-row][data-endpoint-id=merchant]";
    browser
        .wait_for(
            "the merchant endpoint, active",
            &format!("const r = document.querySelector('{row}'); return r && r.dataset.paused === 'false'"),
            Duration::from_secs(10),
        )
        .await;
    assert!(browser.js(&fits_its_card("#endpoints-table")).await == true);
    browser.click(&format!("{row} button[data-action=pause]")).await;
    let state = browser
        .wait_for(
            "the endpoint shown paused",
            &format!(
                "const r = document.querySelector('{row}'); \
                 return r && r.dataset.paused === 'true' && r.querySelector('[data-testid=endpoint-state]').textContent"
            ),
            Duration::from_secs(10),
        )
        .await;
    assert!(state.as_str().unwrap().starts_with("paused since "), "{state}");
    assert_eq!(
        browser
            .js("return document.getElementById('notice').textContent")
            .await,
        "Endpoint merchant paused: its deliveries wait until it is resumed."
    );
    let (_, page) = app.admin_get("/admin/endpoints").await;
    assert_eq!(page["endpoints"][0]["paused"], true, "{page}");

    let signed = dryad_callback("PAUSE1", 1234, chrono::Utc::now());
    assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(
        app.merchant.received().is_empty(),
        "a paused endpoint got a delivery"
    );
    browser.screenshot("console-endpoint-paused").await;

    browser.click(&format!("{row} button[data-action=resume]")).await;
    browser
        .wait_for(
            "the endpoint shown active",
            &format!("const r = document.querySelector('{row}'); return r && r.dataset.paused === 'false'"),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(app.merchant.wait_for(1, Duration::from_secs(10)).await.len(), 1);
    browser.close().await;
}
