//! `/admin/openapi.json` against the real routes: every documented operation
//! is called on a running relay, its status must be one the document lists
//! for it, and its body must match the documented schema. Methods the
//! document does not list must be refused (405).

use std::time::Duration;

use serde_json::Value;

use crate::admin::{admin_call, all_delivered, TOKEN};
use crate::helpers::*;

/// A small JSON Schema check, enough for the document's own vocabulary:
/// `$ref`, `allOf`, `type` (one or a list), `enum`, `required`,
/// `properties`, `items`, `minimum`, `maximum`. Returns every mismatch.
fn check(doc: &Value, schema: &Value, value: &Value, at: &str, errors: &mut Vec<String>) {
    if let Some(r) = schema["$ref"].as_str() {
        let name = r.trim_start_matches("#/components/schemas/");
        let target = &doc["components"]["schemas"][name];
        assert!(target.is_object(), "dangling $ref {r}");
        return check(doc, target, value, at, errors);
    }
    if let Some(all) = schema["allOf"].as_array() {
        for part in all {
            check(doc, part, value, at, errors);
        }
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    if !types.is_empty() {
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let fits = types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
        if !fits {
            errors.push(format!("{at}: {actual} where the document says {types:?}"));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            errors.push(format!("{at}: {value} not in {allowed:?}"));
        }
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_i64(), value.as_i64()) {
        if n < min {
            errors.push(format!("{at}: {n} < minimum {min}"));
        }
    }
    if let (Some(max), Some(n)) = (schema["maximum"].as_i64(), value.as_i64()) {
        if n > max {
            errors.push(format!("{at}: {n} > maximum {max}"));
        }
    }
    if let Value::Object(fields) = value {
        for name in schema["required"].as_array().into_iter().flatten() {
            let name = name.as_str().unwrap();
            if !fields.contains_key(name) {
                errors.push(format!("{at}: required field `{name}` missing"));
            }
        }
        if let Some(props) = schema["properties"].as_object() {
            for (name, sub) in props {
                if let Some(v) = fields.get(name) {
                    check(doc, sub, v, &format!("{at}.{name}"), errors);
                }
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            check(doc, item_schema, item, &format!("{at}[{i}]"), errors);
        }
    }
}

/// Calls one documented operation and checks the answer against it.
async fn call_and_check(app: &TestApp, doc: &Value, method: &str, template: &str, path: &str) -> u16 {
    let operation = &doc["paths"][template][method];
    let (status, body) = admin_call(app, method.to_uppercase().parse().unwrap(), path, Some(TOKEN)).await;
    let response = &operation["responses"][status.to_string()];
    assert!(
        response.is_object(),
        "{method} {path} answered {status}, which the document does not list: {body}"
    );
    let schema = &response["content"]["application/json"]["schema"];
    let mut errors = Vec::new();
    check(doc, schema, &body, "$", &mut errors);
    assert!(
        errors.is_empty(),
        "{method} {path} ({status}): {errors:#?}\n{body}"
    );
    status
}

#[tokio::test]
async fn the_openapi_document_describes_the_real_routes() {
    let app = spawn_app(Backend::Sqlite).await;

    // Without the token the document is refused like the rest of /admin.
    let (status, body) = admin_call(&app, reqwest::Method::GET, "/admin/openapi.json", None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    let (status, doc) = admin_call(&app, reqwest::Method::GET, "/admin/openapi.json", Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");

    // Data for every answer: a delivered event, then a dead one.
    let signed = dryad_callback("OA1", 1999, chrono::Utc::now());
    assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    let got = app.merchant.wait_for(1, Duration::from_secs(5)).await;
    let delivered_id = got[0].json()["id"].as_str().unwrap().to_owned();
    assert!(all_delivered(&app, &delivered_id, 1).await);
    app.merchant.always_fail(true);
    let signed = dryad_callback("OA2", 5, chrono::Utc::now());
    assert_eq!(app.post_signed("dryad-main", &signed).await.0, 200);
    assert!(
        eventually(Duration::from_secs(15), || async {
            let (_, page) = admin_call(
                &app,
                reqwest::Method::GET,
                "/admin/deliveries?status=dead",
                Some(TOKEN),
            )
            .await;
            page["deliveries"].as_array().is_some_and(|d| d.len() == 1)
        })
        .await,
        "a dead delivery"
    );
    app.merchant.always_fail(false);

    let paths = doc["paths"].as_object().unwrap();
    let mut statuses = Vec::new();
    for (template, item) in paths {
        for method in item.as_object().unwrap().keys() {
            // Fill the path parameter with a real event, and required query
            // parameters with their one allowed value.
            let target = if template.starts_with("/admin/endpoints/") {
                "merchant"
            } else {
                delivered_id.as_str()
            };
            let mut path = template.replace("{id}", target);
            let required: Vec<String> = item[method]["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|p| p["in"] == "query" && p["required"] == true)
                .map(|p| {
                    format!(
                        "{}={}",
                        p["name"].as_str().unwrap(),
                        p["schema"]["enum"][0].as_str().unwrap()
                    )
                })
                .collect();
            if !required.is_empty() {
                path = format!("{path}?{}", required.join("&"));
            }
            let status = call_and_check(&app, &doc, method, template, &path).await;
            assert!((200..300).contains(&status), "{method} {path}: {status}");
            statuses.push(format!("{method} {template}"));

            // Every listed error answer that can be provoked here, too.
            let responses = item[method]["responses"].as_object().unwrap();
            if responses.contains_key("400") && template == "/admin/reload" {
                // A reload refuses a file that does not validate.
                app.write_config("[[endpoints]]\nid = \"no-url\"\n");
                assert_eq!(call_and_check(&app, &doc, method, template, &path).await, 400);
                app.write_config(&app.config_text);
            } else if responses.contains_key("400") {
                let bad = format!("{}?limit=0&status=dead", template.replace("{id}", &delivered_id));
                assert_eq!(
                    call_and_check(&app, &doc, method, template, &bad).await,
                    400,
                    "{bad}"
                );
            }
            if responses.contains_key("404") {
                let missing = template.replace("{id}", "evt_01ARZ3NDEKTSV4RRFFQ69G5FAV");
                assert_eq!(call_and_check(&app, &doc, method, template, &missing).await, 404);
            }

            // A method the document does not list is not routed.
            let other = if method == "get" {
                reqwest::Method::DELETE
            } else {
                reqwest::Method::GET
            };
            let (status, _) = admin_call(&app, other.clone(), &path, Some(TOKEN)).await;
            assert_eq!(
                status, 405,
                "{other} {path} is not documented, so must not be routed"
            );
        }
    }
    assert_eq!(statuses.len(), 11, "{statuses:?}");

    // With filters and cursors the pages still match their schemas.
    for path in [
        "/admin/events?limit=1&provider=dryad&type=payment.succeeded",
        "/admin/events?merchant_order_no=M-OA1",
        "/admin/events?q=M-OA&since=2020-01-01T00:00:00Z&until=2100-01-01T00:00:00%2B08:00",
        "/admin/deliveries?status=dead&limit=1",
        "/admin/deliveries?status=dead&unresolved=true",
    ] {
        assert_eq!(
            call_and_check(&app, &doc, "get", path.split('?').next().unwrap(), path).await,
            200
        );
    }
    // The dead delivery's event detail (attempts with errors) matches too.
    let (_, dead) = admin_call(
        &app,
        reqwest::Method::GET,
        "/admin/deliveries?status=dead",
        Some(TOKEN),
    )
    .await;
    let dead_event = dead["deliveries"][0]["event_id"].as_str().unwrap();
    call_and_check(
        &app,
        &doc,
        "get",
        "/admin/events/{id}",
        &format!("/admin/events/{dead_event}"),
    )
    .await;
}
