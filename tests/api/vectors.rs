//! Every vector in tests/fixtures/vectors/vectors.json (vendored from the shared contract), through the real HTTP ingress,
//! in file order against one fresh store, each at its own clock.

use std::sync::Arc;
use std::time::Duration;

use payhook::clock::FixedClock;
use serde_json::Value;

use crate::helpers::*;

/// The vectors' accounts as `[[accounts]]` TOML (key paths are relative to
/// the vectors folder, which is the test config's base directory).
fn accounts_toml(vectors: &[Value]) -> String {
    let mut seen = std::collections::BTreeMap::new();
    for v in vectors {
        let account = v["account"].as_object().unwrap();
        seen.entry(account["id"].as_str().unwrap().to_owned())
            .or_insert_with(|| account.clone());
    }
    let mut out = String::new();
    for account in seen.values() {
        out.push_str("[[accounts]]\n");
        for (k, v) in account {
            out.push_str(&format!("{k} = {}\n", v));
        }
    }
    out
}

async fn every_vector_passes_through_the_http_ingress(backend: Backend) {
    let text = std::fs::read_to_string(vectors_dir().join("vectors.json")).unwrap();
    let vectors: Vec<Value> = serde_json::from_str(&text).unwrap();
    // The vendored file is the contract's vectors, merged by
    // scripts/refresh-fixtures.sh; each registered provider has its cases.
    for provider in payhook::domain::ProviderKind::NAMES {
        assert!(
            vectors.iter().any(|v| v["provider"] == provider),
            "vectors.json has no vector for {provider}"
        );
    }
    let clock = Arc::new(FixedClock::new(chrono::Utc::now()));
    let app = spawn_app_with(TestOptions {
        accounts: accounts_toml(&vectors),
        clock: Some(clock.clone()),
        backend,
        ..TestOptions::default()
    })
    .await;

    let mut expected_deliveries = Vec::new();
    for v in &vectors {
        let name = v["name"].as_str().unwrap();
        let account = v["account"]["id"].as_str().unwrap();
        let provider = v["account"]["provider"].as_str().unwrap();
        let now: chrono::DateTime<chrono::Utc> = v["now"].as_str().unwrap().parse().unwrap();
        app.set_clock(now);
        let request = &v["request"];
        let headers: Vec<(String, String)> = request["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
            .collect();
        let outcome = v["expect"]["outcome"].as_str().unwrap();
        let series = [("provider", provider), ("account", account), ("outcome", outcome)];
        let before = app.counter("payhook_ingress_requests_total", &series).await;

        let (status, answer) = app
            .post_notify(
                account,
                request["content_type"].as_str().unwrap(),
                &headers,
                request["body"].as_str().unwrap().as_bytes().to_vec(),
            )
            .await;

        assert_eq!(
            status,
            v["expect"]["status"].as_u64().unwrap() as u16,
            "{name}: status"
        );
        if let Some(expected) = v["expect"]["answer"].as_str() {
            assert_eq!(answer, expected, "{name}: answer");
        }
        let after = app.counter("payhook_ingress_requests_total", &series).await;
        assert_eq!(after - before, 1.0, "{name}: metric outcome {outcome}");
        if outcome == "accepted" {
            expected_deliveries.push((name.to_owned(), v["expect"]["event"].clone()));
        }
    }

    // The relay's one clock also sets due times: vectors signed at earlier
    // instants than the last one replayed would wait for it to come round.
    app.set_clock(chrono::Utc::now());
    // Each accepted vector is delivered exactly once; duplicates are not.
    let got = app
        .merchant
        .wait_for(expected_deliveries.len(), Duration::from_secs(20))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = if got.len() == expected_deliveries.len() {
        app.merchant.received()
    } else {
        got
    };
    assert_eq!(
        got.len(),
        expected_deliveries.len(),
        "one delivery per accepted vector"
    );
    let events: Vec<Value> = got.iter().map(|r| r.json()).collect();
    for (name, expected) in &expected_deliveries {
        let fields = expected.as_object().unwrap();
        let matching = events
            .iter()
            .find(|e| fields.iter().all(|(k, want)| &e[k] == want));
        assert!(
            matching.is_some(),
            "{name}: no delivered event has {expected}\ndelivered: {events:#?}"
        );
    }
}

crate::on_both_backends!(every_vector_passes_through_the_http_ingress);
