//! No secret, key or signature reaches the logs or an error body, and what
//! an attacker puts in a request cannot forge log lines.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_error_bodies_carry_no_secrets() {
    const DRYAD: &str = "dryad-secret-7f3a9c";
    const ENDPOINT: &str = "whsec_c2VjcmV0LWVuZHBvaW50LWtleS0xMjM0NQ==";
    const ADMIN: &str = "admin-token-5e1d2b";
    const AMQP_PASSWORD: &str = "amqp-pw-0c4f8e";
    let merchant = Merchant::start().await;
    merchant.fail_next(&[500, 503]);
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("dryad.secret");
    std::fs::write(&secret_file, DRYAD).unwrap();
    let config = format!(
        "[server]\nadmin_token = \"{ADMIN}\"\n[storage]\nurl = \"sqlite://{db}\"\n\
         [delivery]\nretry_schedule = [\"50ms\"]\nmax_retries = 3\nallow_private_targets = true\n\
         [[accounts]]\nid = \"dryad-main\"\nprovider = \"dryad\"\nsecret_file = \"{secret}\"\n\
         [[endpoints]]\nid = \"m\"\nurl = \"{url}\"\nsecret_env = \"TEST_ENDPOINT_SECRET\"\n",
        db = dir.path().join("p.db").display(),
        secret = secret_file.display(),
        url = merchant.url,
    );
    // The endpoint secret comes from the environment of the relay process.
    std::env::set_var("TEST_ENDPOINT_SECRET", ENDPOINT);
    let relay = RelayProcess::start(&config, dir.path()).await;
    let client = reqwest::Client::new();
    let signer = payhook::ingress::dryad::DryadSandbox::new(DRYAD.as_bytes().to_vec());
    let mut sent_signatures = Vec::new();
    let mut error_bodies = Vec::new();
    for i in 0..5 {
        use payhook::ingress::SampleSigner;
        let mut spec = payhook::ingress::SampleSpec {
            kind: payhook::ingress::SampleKind::Payment,
            amount: payhook::domain::AmountFen::from_fen(100).unwrap(),
            trade_no: format!("s{i}"),
            merchant_order_no: format!("o{i}"),
            now: chrono::Utc::now(),
            forge: i % 2 == 1,
        };
        if i == 4 {
            spec.now -= chrono::Duration::hours(1); // stale
        }
        let signed = signer.sign_sample(&spec).unwrap();
        sent_signatures.push(signed.headers[0].1.clone());
        let mut req = client
            .post(format!("{}/notify/dryad-main", relay.ingress_url))
            .body(signed.body.clone());
        for (k, v) in &signed.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        if !resp.status().is_success() {
            error_bodies.push(resp.text().await.unwrap());
        }
    }
    // Log-injection attempt through the path.
    let _ = client
        .post(format!(
            "{}/notify/x%0A%7B%22level%22%3A%22ERROR%22%7D",
            relay.ingress_url
        ))
        .send()
        .await;
    // Admin with a wrong token, and the broker with a password that fails.
    let _ = client
        .get(format!("{}/admin/events", relay.admin_url))
        .bearer_auth("wrong")
        .send()
        .await;
    let got = merchant.wait_for(5, Duration::from_secs(10)).await;
    assert!(got.len() >= 3, "deliveries (with retries) happened");
    let delivered_signatures: Vec<String> = got
        .iter()
        .flat_map(|r| {
            [
                r.header("x-signature").to_owned(),
                r.header("webhook-signature").to_owned(),
            ]
        })
        .collect();
    drop(relay);

    // A scaled relay whose broker password is refused logs the failure, not the password.
    let broker_dir = tempfile::tempdir().unwrap();
    let broker_config = format!(
        "[storage]\nurl = \"sqlite://{}\"\n[queue]\namqp_url = \"amqp://payhook:{AMQP_PASSWORD}@127.0.0.1:5672/%2f\"\nprefix = \"secrets-test\"\n",
        broker_dir.path().join("p.db").display()
    );
    let broker_relay = RelayProcess::start(&broker_config, broker_dir.path()).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let broker_logs = broker_relay.logs();
    drop(broker_relay);
    assert!(
        broker_logs.contains("RabbitMQ unreachable"),
        "the broker failure is logged"
    );

    let logs = std::fs::read_to_string(dir.path().join("relay.log")).unwrap() + &broker_logs;
    assert!(logs.contains("callback refused"), "refusals are logged");
    let mut secrets: Vec<String> = vec![DRYAD.into(), ENDPOINT.into(), ADMIN.into(), AMQP_PASSWORD.into()];
    secrets.push(ENDPOINT.trim_start_matches("whsec_").into());
    secrets.extend(sent_signatures);
    secrets.extend(
        delivered_signatures
            .iter()
            .map(|s| s.trim_start_matches("v1,").to_owned()),
    );
    let private_key = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sandbox-keys/cbb_sandbox_priv.pem"
    ))
    .unwrap();
    secrets.extend(
        private_key
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .take(3)
            .map(str::to_owned),
    );
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret reached the logs: {secret}"
        );
        for body in &error_bodies {
            assert!(!body.contains(secret.as_str()), "a secret reached an error body");
        }
    }
    // Every log line is one JSON object: the path's newline did not split one.
    for line in logs.lines() {
        let parsed: Result<serde_json::Value, _> = serde_json::from_str(line);
        assert!(parsed.is_ok(), "not a JSON log line: {line}");
        assert!(
            parsed.unwrap().get("timestamp").is_some(),
            "a forged log line: {line}"
        );
    }
}
