//! Every provider end to end: `payhook simulate` against a running relay, and
//! provider-specific rules that only show across the whole path.

use std::time::Duration;

use crate::helpers::*;

/// Every provider's sandbox accounts, as the registry lists them (the demo's
/// and `payhook.example.toml`'s), with their key files in `sandbox-keys/`.
fn sandbox_accounts() -> String {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sandbox-keys");
    let mut text = payhook::ingress::registry::sandbox_accounts_toml();
    for (name, _) in payhook::ingress::registry::sandbox_key_files() {
        let path = keys.join(name).display().to_string();
        text = text.replace(&format!("\"{name}\""), &format!("{path:?}"));
    }
    text
}

/// Each sandbox account: its provider, its id, and what `simulate` prints
/// after the status of a genuine callback (the provider's dialect).
fn sandbox() -> Vec<(String, &'static str, &'static str)> {
    payhook::ingress::registry::sandbox_accounts()
        .map(|a| {
            let table: toml::Table = a.account.parse().unwrap();
            let provider = table["provider"].as_str().unwrap().to_owned();
            let answer = match provider.as_str() {
                "cbb" | "abc" => "200 SUCCESS",
                "shouqianba" | "alipay" => "200 success",
                "dingdang" => "200 {\"retCode\":\"SUCCESS\"}",
                "dryad" => "200",
                "wechatpay" => "204",
                other => panic!("what does {other} answer? add it here"),
            };
            (provider, a.id, answer)
        })
        .collect()
}

fn simulate(config: &std::path::Path, url: &str, provider: &str, account: &str, extra: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_payhook"))
        .args([
            "simulate",
            provider,
            "--account",
            account,
            "--amount",
            "4321",
            "--url",
            url,
            "--config",
        ])
        .arg(config)
        .args(extra)
        .output()
        .unwrap();
    // A refusal (the forgeries) exits 1, so that scripts see it.
    let refused = extra.contains(&"--forge");
    assert_eq!(
        out.status.code(),
        Some(if refused { 1 } else { 0 }),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sandbox_account_can_be_tried_with_simulate() {
    let app = spawn_app_with(TestOptions {
        accounts: sandbox_accounts(),
        ..TestOptions::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("payhook.toml");
    std::fs::write(&config, &app.config_text).unwrap();
    let sandbox = sandbox();
    assert!(sandbox.len() >= 9, "{sandbox:?}");
    for (provider, account, answer) in &sandbox {
        let url = format!("{}/notify/{account}", app.ingress_url);
        let printed = simulate(&config, &url, provider, account, &[]);
        assert_eq!(
            printed.trim(),
            format!("POST {url} -> {answer}").trim(),
            "{account}"
        );
        let forged = simulate(&config, &url, provider, account, &["--forge"]);
        assert!(forged.contains(" -> 401 "), "{account} forgery refused: {forged}");
    }
    let got = app
        .merchant
        .wait_for(sandbox.len(), Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.merchant.received().len(),
        sandbox.len(),
        "one delivery per genuine callback"
    );
    for (provider, account, _) in &sandbox {
        let event = got
            .iter()
            .map(|r| r.json())
            .find(|e| e["account"] == *account)
            .unwrap_or_else(|| panic!("{account} delivered"));
        assert_eq!(event["provider"], provider.as_str());
        assert_eq!(event["type"], "payment.succeeded");
        assert_eq!(event["amount"], 4321, "{account}");
    }
}

#[tokio::test]
async fn shouqianba_created_is_stored_but_not_delivered() {
    use md5::{Digest, Md5};
    let app = spawn_app_with(TestOptions {
        accounts: sandbox_accounts(),
        ..TestOptions::default()
    })
    .await;
    let notice = |status: &str| {
        format!(
            r#"{{"terminal_sn":"100111220054389553","sn":"77001","client_sn":"C1","trade_no":"42","status":"SUCCESS","order_status":"{status}","payway":"3","total_amount":"500","net_amount":"500","finish_time":"1449569460430"}}"#
        )
    };
    let sign = |body: &str| {
        let mut md5 = Md5::new();
        md5.update(body.as_bytes());
        md5.update(b"96bfaf401367d934cb10a1cbe9773647");
        vec![(
            "Authorization".to_owned(),
            format!("100111220054389553 {}", hex::encode(md5.finalize())),
        )]
    };
    let created = notice("CREATED");
    let (status, answer) = app
        .post_notify(
            "sqb-md5-sandbox",
            "application/json",
            &sign(&created),
            created.clone().into_bytes(),
        )
        .await;
    assert_eq!((status, answer.as_str()), (200, "success"));
    let paid = notice("PAID");
    assert_eq!(
        app.post_notify(
            "sqb-md5-sandbox",
            "application/json",
            &sign(&paid),
            paid.clone().into_bytes()
        )
        .await
        .0,
        200
    );
    let got = app.merchant.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.merchant.received().len(), 1, "CREATED is not delivered");
    assert_eq!(got[0].json()["type"], "payment.succeeded");
    // But it was stored: its repeat is a duplicate, not a new event.
    let before = app
        .counter(
            "payhook_ingress_requests_total",
            &[
                ("provider", "shouqianba"),
                ("account", "sqb-md5-sandbox"),
                ("outcome", "duplicate"),
            ],
        )
        .await;
    app.post_notify(
        "sqb-md5-sandbox",
        "application/json",
        &sign(&created),
        created.into_bytes(),
    )
    .await;
    let after = app
        .counter(
            "payhook_ingress_requests_total",
            &[
                ("provider", "shouqianba"),
                ("account", "sqb-md5-sandbox"),
                ("outcome", "duplicate"),
            ],
        )
        .await;
    assert_eq!(after - before, 1.0);
}
