//! Secret and key rotation over real HTTP: an endpoint with `secrets = [new,
//! old]` signs each delivery with both, and an account with a list of keys or
//! secrets accepts a notice that any one of them verifies.

use std::time::Duration;

use payhook::cli::sink::signatures_valid;
use payhook::dispatch::sign::x_signature;
use payhook::domain::AmountFen;
use payhook::ingress::cbb::CbbSandbox;
use payhook::ingress::common::RsaSigningKey;
use payhook::ingress::dryad::DryadSandbox;
use payhook::ingress::{SampleKind, SampleSigner, SampleSpec, SignedRequest};

use crate::helpers::*;

/// The endpoint's new and old secrets (`whsec_` + base64 of `new-endpoint-secret`, `old-endpoint-secret`).
pub const NEW_SECRET: &str = "whsec_bmV3LWVuZHBvaW50LXNlY3JldA==";
pub const OLD_SECRET: &str = "whsec_b2xkLWVuZHBvaW50LXNlY3JldA==";

fn spec(trade_no: &str) -> SampleSpec {
    SampleSpec {
        kind: SampleKind::Payment,
        amount: AmountFen::from_fen(100).unwrap(),
        trade_no: trade_no.to_owned(),
        merchant_order_no: format!("M-{trade_no}"),
        now: chrono::Utc::now(),
        forge: false,
    }
}

fn ingress_outcome(metrics: &str, provider: &str, account: &str, outcome: &str) -> f64 {
    metric_value(
        metrics,
        "payhook_ingress_requests_total",
        &[("provider", provider), ("account", account), ("outcome", outcome)],
    )
}

/// A relay whose extra endpoint `rotating` (a merchant of its own) has
/// `secrets = [new, old]`, and the merchant it delivers to.
pub async fn spawn_with_rotating_endpoint() -> (TestApp, Merchant) {
    let merchant = Merchant::start().await;
    let app = spawn_app_with(TestOptions {
        extra_endpoints: format!(
            "[[endpoints]]\nid = \"rotating\"\nurl = \"{}\"\nsecrets = [\"{NEW_SECRET}\", \"{OLD_SECRET}\"]\n\
             accounts = [\"*\"]\nevents = [\"*\"]\n",
            merchant.url
        ),
        ..TestOptions::default()
    })
    .await;
    (app, merchant)
}

#[tokio::test]
async fn an_endpoint_with_two_secrets_signs_with_both() {
    let (app, rotating) = spawn_with_rotating_endpoint().await;
    let (status, answer) = app
        .post_signed("dryad-main", &dryad_callback("rot-1", 100, chrono::Utc::now()))
        .await;
    assert_eq!(status, 200, "{answer}");
    let got = rotating.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "the rotating endpoint got the event");
    let delivery = &got[0];

    let signatures = delivery.header("webhook-signature");
    let entries: Vec<&str> = signatures.split(' ').collect();
    assert_eq!(entries.len(), 2, "{signatures}");
    assert!(entries.iter().all(|e| e.starts_with("v1,")), "{signatures}");
    // The new secret verifies both header sets; the old one still verifies
    // webhook-signature, and X-Signature is the new secret's alone.
    assert!(signatures_valid(NEW_SECRET, &delivery.headers, &delivery.body));
    assert!(!signatures_valid(OLD_SECRET, &delivery.headers, &delivery.body));
    let timestamp: i64 = delivery.header("x-timestamp").parse().unwrap();
    let x_with = |secret: &str| x_signature(secret, &delivery.body, delivery.header("x-nonce"), timestamp);
    assert_eq!(delivery.header("x-signature"), x_with(NEW_SECRET));
    assert_ne!(delivery.header("x-signature"), x_with(OLD_SECRET));

    // The endpoint with one secret still gets exactly one signature.
    let plain = app.merchant.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(plain.len(), 1);
    assert!(!plain[0].header("webhook-signature").contains(' '));
    assert!(signatures_valid(
        ENDPOINT_SECRET,
        &plain[0].headers,
        &plain[0].body
    ));
}

#[tokio::test]
async fn a_cbb_account_accepts_a_notice_signed_with_any_listed_key() {
    // The "new" platform key first, the one the sandbox signs with second.
    let app = spawn_app_with(TestOptions {
        accounts: "[[accounts]]\nid = \"cbb-main\"\nprovider = \"cbb\"\n\
                   public_key_files = [\"keys/sqb_pub.pem\", \"keys/cbb_platform_pub.pem\"]\n"
            .to_owned(),
        ..TestOptions::default()
    })
    .await;
    let signer =
        |key: &str| CbbSandbox::new(RsaSigningKey::load(&vectors_dir().join("keys").join(key)).unwrap());
    let signed =
        |key: &str, trade_no: &str| -> SignedRequest { signer(key).sign_sample(&spec(trade_no)).unwrap() };

    let (status, answer) = app
        .post_signed("cbb-main", &signed("cbb_sandbox_priv.pem", "cbb-old"))
        .await;
    assert_eq!(
        (status, answer.as_str()),
        (200, "SUCCESS"),
        "signed with the second key"
    );
    let (status, answer) = app
        .post_signed("cbb-main", &signed("sqb_sandbox_priv.pem", "cbb-new"))
        .await;
    assert_eq!(
        (status, answer.as_str()),
        (200, "SUCCESS"),
        "signed with the first key"
    );
    let (status, _) = app
        .post_signed("cbb-main", &signed("dingdang_sandbox_priv.pem", "cbb-neither"))
        .await;
    assert_eq!(status, 401, "signed with neither key");

    let metrics = app.metrics().await;
    assert_eq!(ingress_outcome(&metrics, "cbb", "cbb-main", "accepted"), 2.0);
    assert_eq!(ingress_outcome(&metrics, "cbb", "cbb-main", "bad_signature"), 1.0);
    assert_eq!(app.merchant.wait_for(2, Duration::from_secs(10)).await.len(), 2);
}

#[tokio::test]
async fn a_dryad_account_accepts_a_notice_signed_with_any_listed_secret() {
    let app = spawn_app_with(TestOptions {
        accounts: format!(
            "[[accounts]]\nid = \"dryad-main\"\nprovider = \"dryad\"\n\
             secrets = [\"dryad-new-secret\", \"{DRYAD_SECRET}\"]\nmax_clock_skew = \"300s\"\n"
        ),
        ..TestOptions::default()
    })
    .await;
    let signed = |secret: &str, trade_no: &str| {
        DryadSandbox::new(secret.as_bytes().to_vec())
            .sign_sample(&spec(trade_no))
            .unwrap()
    };
    let (status, answer) = app
        .post_signed("dryad-main", &signed(DRYAD_SECRET, "dryad-old"))
        .await;
    assert_eq!(status, 200, "signed with the second secret: {answer}");
    let (status, answer) = app
        .post_signed("dryad-main", &signed("dryad-new-secret", "dryad-new"))
        .await;
    assert_eq!(status, 200, "signed with the first secret: {answer}");
    let (status, _) = app
        .post_signed("dryad-main", &signed("another-secret", "dryad-neither"))
        .await;
    assert_eq!(status, 401, "signed with neither secret");

    let metrics = app.metrics().await;
    assert_eq!(ingress_outcome(&metrics, "dryad", "dryad-main", "accepted"), 2.0);
    assert_eq!(
        ingress_outcome(&metrics, "dryad", "dryad-main", "bad_signature"),
        1.0
    );
}

/// `payhook serve` refuses lists that would let one account take another's
/// notices, or that are not a rotation at all, naming the key or accounts.
#[test]
fn start_up_refuses_shared_or_malformed_lists() {
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str| vectors_dir().join("keys").join(name).display().to_string();
    let cases = [
        (
            format!(
                "[[accounts]]\nid = \"cbb-one\"\nprovider = \"cbb\"\npublic_key_files = [\"{new}\", \"{old}\"]\n\
                 [[accounts]]\nid = \"cbb-two\"\nprovider = \"cbb\"\npublic_key_files = [\"{other}\", \"{new}\"]\n",
                new = key("cbb_platform_pub.pem"),
                old = key("sqb_pub.pem"),
                other = key("dingdang_platform_pub.pem"),
            ),
            vec!["cbb-one", "cbb-two", "platform public key"],
        ),
        (
            "[[accounts]]\nid = \"d-one\"\nprovider = \"dryad\"\nsecrets = [\"a\", \"b\"]\n\
             [[accounts]]\nid = \"d-two\"\nprovider = \"dryad\"\nsecret = \"b\"\n"
                .to_owned(),
            vec!["d-one", "d-two", "secret"],
        ),
        (
            "[[endpoints]]\nid = \"e\"\nurl = \"https://x.example\"\nsecret = \"a\"\nsecrets = [\"b\"]\n".to_owned(),
            vec!["endpoints[0].secrets", "not both"],
        ),
        (
            "[[endpoints]]\nid = \"e\"\nurl = \"https://x.example\"\nsecrets = []\n".to_owned(),
            vec!["endpoints[0].secrets", "at least one"],
        ),
        (
            "[[endpoints]]\nid = \"e\"\nurl = \"https://x.example\"\nsecrets = [\"a\", \"b\", \"c\", \"d\", \"e\"]\n"
                .to_owned(),
            vec!["endpoints[0].secrets", "at most 4"],
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
