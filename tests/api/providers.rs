//! Every provider end to end: `payhook simulate` against a running relay, and
//! provider-specific rules that only show across the whole path.

use std::time::Duration;

use crate::helpers::*;

fn sandbox_accounts() -> String {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sandbox-keys");
    let k = |name: &str| keys.join(name).display().to_string();
    format!(
        r#"
[[accounts]]
id = "cbb-sandbox"
provider = "cbb"
public_key_file = "{cbb_pub}"
sandbox_private_key_file = "{cbb_priv}"

[[accounts]]
id = "sqb-md5-sandbox"
provider = "shouqianba"
sign_mode = "md5"
terminal_sn = "100111220054389553"
terminal_key = "96bfaf401367d934cb10a1cbe9773647"

[[accounts]]
id = "sqb-rsa-sandbox"
provider = "shouqianba"
sign_mode = "rsa"
terminal_sn = "100111220054389553"
public_key_file = "{sqb_pub}"
sandbox_private_key_file = "{sqb_priv}"

[[accounts]]
id = "abc-sandbox"
provider = "abc"
merchant_id = "103881636900016"
certificate_file = "{abc_cert}"
sandbox_private_key_file = "{abc_priv}"

[[accounts]]
id = "dingdang-hmac-sandbox"
provider = "dingdang"
skill_id = "sandbox-skill"
scheme = "TSK-HMAC-SHA256-BASIC"
secret = "sandbox-skill-secret"

[[accounts]]
id = "dingdang-rsa-sandbox"
provider = "dingdang"
skill_id = "sandbox-skill"
scheme = "TSK-RSA2"
public_key_file = "{dd_pub}"
sandbox_private_key_file = "{dd_priv}"

[[accounts]]
id = "dryad-sandbox"
provider = "dryad"
secret = "sandbox-dryad-secret"
"#,
        cbb_pub = k("cbb_platform_pub.pem"),
        cbb_priv = k("cbb_sandbox_priv.pem"),
        sqb_pub = k("sqb_pub.pem"),
        sqb_priv = k("sqb_sandbox_priv.pem"),
        abc_cert = k("abc_trustpay_cert.pem"),
        abc_priv = k("abc_sandbox_priv.pem"),
        dd_pub = k("dingdang_platform_pub.pem"),
        dd_priv = k("dingdang_sandbox_priv.pem"),
    )
}

const SANDBOX: [(&str, &str, &str); 7] = [
    ("cbb", "cbb-sandbox", "SUCCESS"),
    ("shouqianba", "sqb-md5-sandbox", "success"),
    ("shouqianba", "sqb-rsa-sandbox", "success"),
    ("abc", "abc-sandbox", "SUCCESS"),
    ("dingdang", "dingdang-hmac-sandbox", "{\"retCode\":\"SUCCESS\"}"),
    ("dingdang", "dingdang-rsa-sandbox", "{\"retCode\":\"SUCCESS\"}"),
    ("dryad", "dryad-sandbox", ""),
];

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
    for (provider, account, answer) in SANDBOX {
        let url = format!("{}/notify/{account}", app.ingress_url);
        let printed = simulate(&config, &url, provider, account, &[]);
        assert_eq!(
            printed.trim(),
            format!("POST {url} -> 200 {answer}").trim(),
            "{account}"
        );
        let forged = simulate(&config, &url, provider, account, &["--forge"]);
        assert!(forged.contains(" -> 401 "), "{account} forgery refused: {forged}");
    }
    let got = app
        .merchant
        .wait_for(SANDBOX.len(), Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        app.merchant.received().len(),
        SANDBOX.len(),
        "one delivery per genuine callback"
    );
    for (provider, account, _) in SANDBOX {
        let event = got
            .iter()
            .map(|r| r.json())
            .find(|e| e["account"] == account)
            .unwrap_or_else(|| panic!("{account} delivered"));
        assert_eq!(event["provider"], provider);
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
