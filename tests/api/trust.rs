//! Trust at the ingress, over real HTTP (`tests/fixtures/spec/README.md`,
//! "Every notice is bound to its account" and "Hostile input stays cheap").
//! The binding itself, the CBB re-cut and the duplicate JSON member are also
//! vectors (`vectors.rs`); these tests cover what the vectors cannot.

use std::time::{Duration, Instant};

use payhook::domain::AmountFen;
use payhook::ingress::abc::{AbcAlgorithm, AbcSandbox};
use payhook::ingress::common::RsaSigningKey;
use payhook::ingress::{SampleKind, SampleSigner, SampleSpec};
use sqlx::Connection;

use crate::helpers::*;

const CBB_ACCOUNT: &str =
    "[[accounts]]\nid = \"cbb-main\"\nprovider = \"cbb\"\npublic_key_file = \"keys/cbb_platform_pub.pem\"\n";

fn dryad_headers(body: &[u8], timestamp: &str) -> Vec<(String, String)> {
    let nonce = format!("n-{}", ulid::Ulid::new());
    let mac = payhook::crypto::hmac_sha256(
        DRYAD_SECRET.as_bytes(),
        &[body, nonce.as_bytes(), timestamp.as_bytes()],
    );
    vec![
        ("X-Signature".into(), hex::encode(mac)),
        ("X-Nonce".into(), nonce),
        ("X-Timestamp".into(), timestamp.into()),
    ]
}

fn now_ms() -> String {
    chrono::Utc::now().timestamp_millis().to_string()
}

fn dryad_outcome(metrics: &str, outcome: &str) -> f64 {
    metric_value(
        metrics,
        "payhook_ingress_requests_total",
        &[
            ("provider", "dryad"),
            ("account", "dryad-main"),
            ("outcome", outcome),
        ],
    )
}

fn cbb_outcome(metrics: &str, outcome: &str) -> f64 {
    metric_value(
        metrics,
        "payhook_ingress_requests_total",
        &[("provider", "cbb"), ("account", "cbb-main"), ("outcome", outcome)],
    )
}

async fn spawn_with_accounts(accounts: String) -> TestApp {
    spawn_app_with(TestOptions {
        accounts,
        ..TestOptions::default()
    })
    .await
}

#[tokio::test]
async fn ambiguous_forms_get_400_in_the_providers_dialect() {
    let app = spawn_with_accounts(CBB_ACCOUNT.into()).await;
    let post = |body: String| {
        let app = &app;
        async move {
            app.post_notify(
                "cbb-main",
                "application/x-www-form-urlencoded",
                &[],
                body.into_bytes(),
            )
            .await
        }
    };
    let fields = |n: usize| (0..n).map(|i| format!("k{i}=v")).collect::<Vec<_>>().join("&");
    for (body, why) in [
        (
            "tradeNo=T1&tradeNo=T2&status=SUCCESS&totalNumber=1.00&sign=x".to_owned(),
            "a duplicate key",
        ),
        (fields(257), "257 fields"),
        (
            "tradeNo=T1%26outTradeNo%3DO&status=SUCCESS&totalNumber=1.00&sign=x".to_owned(),
            "& and = inside an identifier",
        ),
        (
            "a%3Db=1&tradeNo=T1&status=SUCCESS&sign=x".to_owned(),
            "= inside a key",
        ),
    ] {
        assert_eq!(post(body).await, (400, "FAIL".to_owned()), "{why}");
    }
    // Free text may hold both: it reaches the signature check (and fails it).
    let free = "tradeNo=T1&status=SUCCESS&totalNumber=1.00&businessParams=a%3D1%26b%3D2&sign=x".to_owned();
    assert_eq!(post(free).await.0, 401, "businessParams with & and =");
    assert_eq!(cbb_outcome(&app.metrics().await, "bad_request"), 4.0);
}

/// An unsigned 64 KiB form of 10,000 keys costs about what a small request
/// does, not hundreds of milliseconds: the fields are counted before any is
/// decoded. Measured as a ratio of medians over real HTTP, so the machine's
/// speed cancels out; a parser quadratic in the keys measured 200-260 ms
/// against well under 1 ms.
#[tokio::test]
async fn a_flood_of_form_keys_costs_about_what_a_small_request_does() {
    let app = spawn_with_accounts(CBB_ACCOUNT.into()).await;
    let mut hostile = (0..10_000)
        .map(|i| format!("{i:x}="))
        .collect::<Vec<_>>()
        .join("&");
    hostile.push_str(&"x".repeat(64 * 1024 - 1 - hostile.len()));
    assert!(hostile.len() < 64 * 1024);
    let small = "tradeNo=T1&status=SUCCESS&totalNumber=1.00&sign=AAAA".to_owned();
    let median_of = |body: &str| {
        let body = body.to_owned();
        let app = &app;
        async move {
            let mut times = Vec::new();
            for _ in 0..15 {
                let started = Instant::now();
                let (status, _) = app
                    .post_notify(
                        "cbb-main",
                        "application/x-www-form-urlencoded",
                        &[],
                        body.clone().into_bytes(),
                    )
                    .await;
                times.push(started.elapsed());
                assert!(status == 400 || status == 401, "{status}");
            }
            times.sort();
            times[times.len() / 2]
        }
    };
    let small_median = median_of(&small).await;
    let hostile_median = median_of(&hostile).await;
    let ratio = hostile_median.as_secs_f64() / small_median.as_secs_f64();
    eprintln!("hostile form {hostile_median:?}, small {small_median:?}, ratio {ratio:.1}");
    assert!(
        ratio < 20.0,
        "a 10,000-key form costs {ratio:.1}x a small request"
    );
}

#[tokio::test]
async fn a_nul_byte_in_an_identifier_is_refused() {
    let app = spawn_app(Backend::Sqlite).await;
    let body = br#"{"tradeId":1,"orderId":77,"bizOrderId":"ORD\u0000X","amount":100,"currency":"CNY","status":"SUCCEEDED"}"#.to_vec();
    let headers = dryad_headers(&body, &now_ms());
    let (status, answer) = app
        .post_notify("dryad-main", "application/json", &headers, body)
        .await;
    assert_eq!(
        (status, answer.as_str()),
        (400, "an identifier contains a NUL byte")
    );
    assert_eq!(dryad_outcome(&app.metrics().await, "bad_request"), 1.0);
}

#[tokio::test]
async fn a_dryad_timestamp_has_one_spelling() {
    let app = spawn_app(Backend::Sqlite).await;
    let body = br#"{"orderId":78,"bizOrderId":"ORD-78","amount":100,"status":"SUCCEEDED"}"#.to_vec();
    for timestamp in [
        format!("0{}", now_ms()),
        format!("+{}", now_ms()),
        format!("-{}", now_ms()),
    ] {
        let headers = dryad_headers(&body, &timestamp);
        let (status, _) = app
            .post_notify("dryad-main", "application/json", &headers, body.clone())
            .await;
        assert_eq!(status, 401, "{timestamp}");
    }
    let headers = dryad_headers(&body, &now_ms());
    assert_eq!(
        app.post_notify("dryad-main", "application/json", &headers, body)
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn an_account_over_its_rate_limit_gets_503_with_retry_after() {
    let accounts = format!(
        "[[accounts]]\nid = \"dryad-main\"\nprovider = \"dryad\"\nsecret = \"{DRYAD_SECRET}\"\nrate_limit = \"3/s\"\n"
    );
    let app = spawn_with_accounts(accounts).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..5 {
        let signed = dryad_callback(&format!("RL-{i}"), 100, chrono::Utc::now());
        let mut req = app
            .client
            .post(format!("{}/notify/dryad-main", app.ingress_url))
            .header("content-type", signed.content_type)
            .body(signed.body.clone());
        for (k, v) in &signed.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let response = req.send().await.unwrap();
        statuses.push(response.status().as_u16());
        if response.status() == 503 {
            retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
        }
    }
    assert_eq!(statuses, [200, 200, 200, 503, 503]);
    assert_eq!(retry_after.as_deref(), Some("1"));
    let metrics = app.metrics().await;
    assert_eq!(dryad_outcome(&metrics, "rate_limited"), 2.0);
    assert_eq!(dryad_outcome(&metrics, "accepted"), 3.0);
    // A second later the bucket has refilled.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = app
        .post_signed("dryad-main", &dryad_callback("RL-late", 100, chrono::Utc::now()))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn only_content_type_and_signature_headers_are_stored() {
    let app = spawn_app(Backend::Sqlite).await;
    let signed = dryad_callback("HDR-1", 100, chrono::Utc::now());
    let mut headers = signed.headers.clone();
    for (name, value) in [
        ("Cookie", "session=secret-cookie"),
        ("Authorization", "Bearer other-system-token"),
        ("Proxy-Authorization", "Basic cHJveHk6cGFzcw=="),
        ("X-Forwarded-For", "203.0.113.9"),
    ] {
        headers.push((name.into(), value.into()));
    }
    let (status, _) = app
        .post_notify("dryad-main", signed.content_type, &headers, signed.body.clone())
        .await;
    assert_eq!(status, 200);
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", app.sqlite_file().display()))
        .await
        .unwrap();
    let stored: String = sqlx::query_scalar("SELECT raw_headers FROM events")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let stored: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&stored).unwrap();
    let mut names: Vec<&str> = stored.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["content-type", "x-nonce", "x-signature", "x-timestamp"]);
}

#[tokio::test]
async fn abc_verifies_with_the_accounts_algorithm_not_the_messages() {
    let accounts = "[[accounts]]\nid = \"abc-main\"\nprovider = \"abc\"\nmerchant_id = \"103881636900016\"\n\
                    certificate_file = \"keys/abc_trustpay_cert.pem\"\n"
        .to_owned();
    let app = spawn_with_accounts(accounts).await;
    let key = || RsaSigningKey::load(&vectors_dir().join("keys/abc_sandbox_priv.pem")).unwrap();
    let spec = |order: &str| SampleSpec {
        kind: SampleKind::Payment,
        amount: AmountFen::from_fen(100).unwrap(),
        trade_no: format!("T-{order}"),
        merchant_order_no: order.into(),
        now: chrono::Utc::now(),
        forge: false,
    };
    // A genuine SHA256withRSA signature, named in the message: this account
    // is pinned to SHA1withRSA (the default), so it is refused.
    let sha256 = AbcSandbox::new(key(), AbcAlgorithm::Sha256WithRsa, "103881636900016".into());
    let (status, answer) = app
        .post_signed("abc-main", &sha256.sign_sample(&spec("ABC-256")).unwrap())
        .await;
    assert_eq!((status, answer.as_str()), (401, "FAIL"));
    let sha1 = AbcSandbox::new(key(), AbcAlgorithm::Sha1WithRsa, "103881636900016".into());
    let (status, answer) = app
        .post_signed("abc-main", &sha1.sign_sample(&spec("ABC-1")).unwrap())
        .await;
    assert_eq!((status, answer.as_str()), (200, "SUCCESS"));
    // Another merchant of the same bank certificate: 401, wrong_account.
    let other = AbcSandbox::new(key(), AbcAlgorithm::Sha1WithRsa, "103881636999999".into());
    let (status, answer) = app
        .post_signed("abc-main", &other.sign_sample(&spec("ABC-2")).unwrap())
        .await;
    assert_eq!((status, answer.as_str()), (401, "FAIL"));
    let wrong = metric_value(
        &app.metrics().await,
        "payhook_ingress_requests_total",
        &[
            ("provider", "abc"),
            ("account", "abc-main"),
            ("outcome", "wrong_account"),
        ],
    );
    assert_eq!(wrong, 1.0);
}

/// `payhook serve` refuses what cannot be trusted, naming the key or both
/// accounts, and exits non-zero.
#[test]
fn start_up_refuses_what_cannot_be_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let keys = vectors_dir().join("keys");
    let key = |name: &str| keys.join(name).display().to_string();
    let cases = [
        (
            format!(
                "[[accounts]]\nid = \"cbb-one\"\nprovider = \"cbb\"\npublic_key_file = \"{k}\"\n\
                 [[accounts]]\nid = \"cbb-two\"\nprovider = \"cbb\"\npublic_key_file = \"{k}\"\n",
                k = key("cbb_platform_pub.pem")
            ),
            vec!["cbb-one", "cbb-two"],
        ),
        ("[server]\nadmin_token = \"too-short\"\n".to_owned(), vec!["server.admin_token", "16"]),
        (
            "[[accounts]]\nid = \"d\"\nprovider = \"dryad\"\nsecret = \"\"\n".to_owned(),
            vec!["accounts[0].secret", "empty"],
        ),
        (
            format!(
                "[[accounts]]\nid = \"dd\"\nprovider = \"dingdang\"\nscheme = \"TSK-RSA2\"\npublic_key_file = \"{}\"\n",
                key("dingdang_platform_pub.pem")
            ),
            vec!["accounts[0].skill_id"],
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("payhook-{i}.toml"));
        std::fs::write(
            &file,
            format!(
                "[storage]\nurl = \"sqlite://{}/p{i}.db\"\n{text}",
                dir.path().display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_payhook"))
            .args(["serve", "--config"])
            .arg(&file)
            .env("PAYHOOK_LISTEN", "127.0.0.1:0")
            .env("PAYHOOK_ADMIN_LISTEN", "127.0.0.1:0")
            .env_remove("PAYHOOK_ADMIN_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text}: started");
        for word in expected {
            assert!(stderr.contains(word), "{text}: {word} not in {stderr}");
        }
    }
}
