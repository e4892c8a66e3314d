//! dryad-payment module (seed 004): JSON body, HMAC-SHA256 over
//! `body ++ nonce ++ timestamp` in `X-Signature`, with a replay window.

use super::fuzz::{put, Assisted, FuzzTarget, Split};
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::common::{from_epoch_millis, parse_shanghai_local};
use super::json::{object_body, opt_str, req_fen, req_id_text};
use super::module::{first_secret, secret_bytes, BenchMode, ProviderModule, SandboxAccount, SharedKeys};
use super::provider::{
    Dialect, Provider, RawRequest, Rejection, ReplayNonce, SampleKind, SampleSigner, SampleSpec, SignError,
    SignedRequest, Verified,
};
use super::registry::AccountErrorKind;
use crate::config::{AccountCx, ConfigError, Secret, SecretKeys};
use crate::crypto::{hmac_sha256, verify_hex_hmac_sha256};
use crate::domain::{EventType, Notification, ProviderKind};
use crate::key_list::KeyList;

pub struct Dryad {
    /// The secret, or each of them while it is rotated.
    secrets: KeyList<Vec<u8>>,
    max_clock_skew: Duration,
}

impl Dryad {
    pub fn new(secrets: impl Into<KeyList<Vec<u8>>>, max_clock_skew: Duration) -> Self {
        Self {
            secrets: secrets.into(),
            max_clock_skew,
        }
    }
}

/// `|now - t| <= skew`, without overflow for absurd timestamps.
pub(crate) fn within_skew(t: DateTime<Utc>, now: DateTime<Utc>, skew: Duration) -> bool {
    let diff = (now - t).num_milliseconds().unsigned_abs();
    u128::from(diff) <= skew.as_millis()
}

impl Provider for Dryad {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Dryad
    }

    fn verify(&self, req: &RawRequest<'_>, now: DateTime<Utc>) -> Result<Verified, Rejection> {
        let (Some(signature), Some(nonce), Some(timestamp)) = (
            req.header("x-signature"),
            req.header("x-nonce"),
            req.header("x-timestamp"),
        ) else {
            return Err(Rejection::BadSignature(
                "missing X-Signature, X-Nonce or X-Timestamp",
            ));
        };
        if nonce.is_empty() || nonce.len() > 128 {
            return Err(Rejection::BadSignature("nonce must be 1 to 128 characters"));
        }
        let parts: [&[u8]; 3] = [req.body, nonce.as_bytes(), timestamp.as_bytes()];
        if !self
            .secrets
            .any_verifies(|secret| verify_hex_hmac_sha256(secret, &parts, signature))
        {
            return Err(Rejection::BadSignature("signature does not match"));
        }
        // One spelling per instant: a sign or leading zeros would let the same
        // signed time be written (and its nonce window probed) several ways.
        let canonical = !timestamp.starts_with('0') || timestamp == "0";
        let signed_at = from_epoch_millis(timestamp)
            .filter(|_| canonical)
            .ok_or(Rejection::Stale("timestamp is not epoch milliseconds"))?;
        if !within_skew(signed_at, now, self.max_clock_skew) {
            return Err(Rejection::Stale("timestamp outside the allowed clock skew"));
        }
        Ok(Verified {
            replay_nonce: Some(ReplayNonce {
                nonce: nonce.to_owned(),
            }),
        })
    }

    fn parse(&self, req: &RawRequest<'_>) -> Result<Notification, Rejection> {
        let body = object_body(req.body)?;
        let event_type = match opt_str(&body, "status")? {
            Some("SUCCEEDED") => EventType::PaymentSucceeded,
            Some("FAILED") => EventType::PaymentFailed,
            Some("CANCELED") => EventType::PaymentCanceled,
            Some("EXPIRED") => EventType::PaymentExpired,
            Some(_) => EventType::PaymentUnknown,
            None => return Err(Rejection::BadRequest("missing status")),
        };
        let order_id = req_id_text(&body, "orderId")?;
        let amount = req_fen(&body, "amount")?;
        let mut n = Notification::new(event_type, order_id, amount);
        n.merchant_order_no = opt_str(&body, "bizOrderId")?.map(str::to_owned);
        n.channel = opt_str(&body, "channel")?.map(str::to_owned);
        n.channel_trade_no = opt_str(&body, "channelTradeNo")?.map(str::to_owned);
        if let Some(currency) = opt_str(&body, "currency")? {
            n.currency = currency.to_owned();
        }
        n.occurred_at = match opt_str(&body, "paidAt")? {
            Some(text) => Some(parse_shanghai_local(text).ok_or(Rejection::BadRequest("bad paidAt"))?),
            None => None,
        };
        n.raw = Value::Object(body);
        Ok(n)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Empty
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &["x-signature", "x-nonce", "x-timestamp"]
    }

    fn replay_window(&self) -> Option<Duration> {
        Some(self.max_clock_skew)
    }
}

/// Signs sample callbacks as the dryad module would.
pub struct DryadSandbox {
    secret: Vec<u8>,
}

impl DryadSandbox {
    pub fn new(secret: Vec<u8>) -> Self {
        Self { secret }
    }
}

impl SampleSigner for DryadSandbox {
    fn sign_sample(&self, spec: &SampleSpec) -> Result<SignedRequest, SignError> {
        if spec.kind == SampleKind::Refund {
            return Err(SignError::Unsupported("refund"));
        }
        let shanghai = spec.now + chrono::Duration::hours(8);
        let mut body = Map::new();
        body.insert("tradeId".into(), Value::from(spec.now.timestamp_millis()));
        body.insert("orderId".into(), Value::from(spec.trade_no.clone()));
        body.insert("bizOrderId".into(), Value::from(spec.merchant_order_no.clone()));
        body.insert("channel".into(), Value::from("WECHAT"));
        body.insert("amount".into(), Value::from(spec.amount.fen()));
        body.insert("currency".into(), Value::from("CNY"));
        body.insert("status".into(), Value::from("SUCCEEDED"));
        body.insert(
            "channelTradeNo".into(),
            Value::from(format!("42{}", spec.trade_no)),
        );
        body.insert(
            "paidAt".into(),
            Value::from(shanghai.format("%Y-%m-%d %H:%M:%S").to_string()),
        );
        body.insert("subject".into(), Value::from("payhook sample"));
        let body = serde_json::to_vec(&Value::Object(body)).map_err(|e| SignError::Crypto(e.to_string()))?;
        let nonce = format!("n-{}", ulid::Ulid::new());
        let timestamp = spec.now.timestamp_millis().to_string();
        let mut mac = hmac_sha256(&self.secret, &[&body, nonce.as_bytes(), timestamp.as_bytes()]);
        if spec.forge {
            mac[0] ^= 1;
        }
        Ok(SignedRequest {
            content_type: "application/json",
            headers: vec![
                ("X-Signature".into(), hex::encode(mac)),
                ("X-Nonce".into(), nonce),
                ("X-Timestamp".into(), timestamp),
            ],
            body,
        })
    }
}

/// The `dryad` fuzz target's assist: `X-Signature` (header 1) is replaced
/// by the right HMAC over `body ++ X-Nonce ++ X-Timestamp` with the target's
/// (test) secret, so that mutations reach the timestamp parsing and the
/// skew check.
fn fuzz_assist(s: &Split<'_>) -> Assisted {
    let mut headers = axum::http::HeaderMap::new();
    put(&mut headers, "x-nonce", s.headers[1]);
    put(&mut headers, "x-timestamp", s.headers[2]);
    // Signed over what the provider will read back from the map.
    let read = |name: &str| {
        headers
            .get(name)
            .map(|v| v.as_bytes().to_vec())
            .unwrap_or_default()
    };
    let (nonce, timestamp) = (read("x-nonce"), read("x-timestamp"));
    let mac = hex::encode(hmac_sha256(
        b"callbackSignSecret-test",
        &[s.body, &nonce, &timestamp],
    ));
    put(&mut headers, "x-signature", Some(mac.as_bytes()));
    Assisted {
        headers,
        body: s.body.to_vec(),
    }
}

// ---------------------------------------------------------------------------
// The module's parts: its `[[accounts]]` section, and what is built from it.

/// A Dryad account's `[[accounts]]` keys, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DryadFile {
    secret: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    secrets: Option<Vec<toml::Value>>,
    max_clock_skew: Option<String>,
}

/// A Dryad account's settings.
#[derive(Debug, Clone)]
pub struct DryadSettings {
    /// `secret`, or `secrets` while it is rotated.
    pub secrets: KeyList<Secret>,
    pub max_clock_skew: Duration,
}

impl ProviderModule for Dryad {
    const DISPLAY_NAME: &'static str = "Dryad";
    const BENCH: &'static [BenchMode] = &[BenchMode {
        name: "dryad",
        help: "Dryad: HMAC-SHA256 with a timestamp window and a nonce",
        id: "bench-dryad",
        account: "provider = \"dryad\"\nsecret = \"bench-dryad-secret\"\nmax_clock_skew = \"300s\"\n",
    }];
    const SANDBOX: &'static [SandboxAccount] = &[SandboxAccount {
        id: "dryad-sandbox",
        account: "provider = \"dryad\"\nsecret = \"sandbox-dryad-secret\"\nmax_clock_skew = \"300s\"\n",
    }];
    const FUZZ: &'static [FuzzTarget] = &[FuzzTarget {
        name: "dryad",
        account: "provider = \"dryad\"\nsecret = \"callbackSignSecret-test\"\nmax_clock_skew = \"300s\"\n",
        headers: &["x-signature", "x-nonce", "x-timestamp"],
        assist: Some(fuzz_assist),
    }];
    type File = DryadFile;
    type Settings = DryadSettings;

    fn settings(f: DryadFile, cx: &AccountCx<'_>) -> Result<DryadSettings, ConfigError> {
        let secrets = cx
            .secrets(
                "secret",
                SecretKeys {
                    inline: f.secret,
                    env: f.secret_env,
                    file: f.secret_file,
                    list: f.secrets,
                },
            )?
            .ok_or_else(|| cx.invalid("secret", "required"))?;
        Ok(DryadSettings {
            secrets,
            max_clock_skew: cx.duration("max_clock_skew", f.max_clock_skew.as_deref(), "300s")?,
        })
    }

    fn build(s: &DryadSettings) -> Result<Self, AccountErrorKind> {
        Ok(Dryad::new(secret_bytes(&s.secrets), s.max_clock_skew))
    }

    fn sandbox(s: &DryadSettings) -> Result<Box<dyn SampleSigner>, AccountErrorKind> {
        Ok(Box::new(DryadSandbox::new(first_secret(&s.secrets))))
    }

    /// Dryad notices name no merchant: only the secret tells two accounts
    /// apart.
    fn shared_keys(s: &DryadSettings) -> Result<Option<SharedKeys>, AccountErrorKind> {
        Ok(Some(SharedKeys {
            what: "secret",
            keys: s.secrets.iter().map(|s| s.expose().as_bytes().to_vec()).collect(),
        }))
    }

    fn bench_mode(_: &DryadSettings) -> Option<&'static str> {
        Some("dryad")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AmountFen;
    use crate::ingress::tests_support::{request_of, sample_spec};

    fn dryad() -> Dryad {
        Dryad::new(b"secret".to_vec(), Duration::from_secs(300))
    }

    #[test]
    fn sample_round_trip() {
        let spec = sample_spec(SampleKind::Payment, 12345);
        let signed = DryadSandbox::new(b"secret".to_vec()).sign_sample(&spec).unwrap();
        let (headers, body) = request_of(&signed);
        let req = RawRequest::new(&headers, &body);
        let verified = dryad().verify(&req, spec.now).unwrap();
        assert!(verified.replay_nonce.is_some());
        let n = dryad().parse(&req).unwrap();
        assert_eq!(n.event_type, EventType::PaymentSucceeded);
        assert_eq!(n.amount, AmountFen::from_fen(12345).unwrap());
        assert_eq!(n.provider_trade_no, spec.trade_no);
        assert_eq!(n.occurred_at.map(|t| t.timestamp()), Some(spec.now.timestamp()));
    }

    #[test]
    fn forged_stale_and_missing_are_refused() {
        let mut spec = sample_spec(SampleKind::Payment, 1);
        spec.forge = true;
        let signed = DryadSandbox::new(b"secret".to_vec()).sign_sample(&spec).unwrap();
        let (headers, body) = request_of(&signed);
        let err = dryad()
            .verify(&RawRequest::new(&headers, &body), spec.now)
            .unwrap_err();
        assert!(matches!(err, Rejection::BadSignature(_)));

        spec.forge = false;
        let signed = DryadSandbox::new(b"secret".to_vec()).sign_sample(&spec).unwrap();
        let (headers, body) = request_of(&signed);
        let later = spec.now + chrono::Duration::seconds(301);
        let err = dryad()
            .verify(&RawRequest::new(&headers, &body), later)
            .unwrap_err();
        assert!(matches!(err, Rejection::Stale(_)));

        let empty = axum::http::HeaderMap::new();
        let err = dryad()
            .verify(&RawRequest::new(&empty, &body), spec.now)
            .unwrap_err();
        assert!(matches!(err, Rejection::BadSignature(_)));
    }

    #[test]
    fn any_listed_secret_verifies_and_none_is_a_bad_signature() {
        let spec = sample_spec(SampleKind::Payment, 100);
        let signed = DryadSandbox::new(b"old".to_vec()).sign_sample(&spec).unwrap();
        let (headers, body) = request_of(&signed);
        let req = RawRequest::new(&headers, &body);
        let secrets = |list: &[&[u8]]| KeyList::new(list.iter().map(|s| s.to_vec()).collect()).unwrap();
        let skew = Duration::from_secs(300);
        assert!(Dryad::new(secrets(&[b"new", b"old"]), skew)
            .verify(&req, spec.now)
            .is_ok());
        assert!(Dryad::new(secrets(&[b"old", b"new"]), skew)
            .verify(&req, spec.now)
            .is_ok());
        assert_eq!(
            Dryad::new(secrets(&[b"new", b"other"]), skew).verify(&req, spec.now),
            Err(Rejection::BadSignature("signature does not match"))
        );
    }

    proptest::proptest! {
        #[test]
        fn any_changed_byte_is_refused(index in 0usize..4096, flip in 1u8..=255) {
            let spec = sample_spec(SampleKind::Payment, 500);
            let signed = DryadSandbox::new(b"secret".to_vec()).sign_sample(&spec).unwrap();
            let (headers, mut body) = request_of(&signed);
            let i = index % body.len();
            body[i] ^= flip;
            let result = dryad().verify(&RawRequest::new(&headers, &body), spec.now);
            proptest::prop_assert!(matches!(result, Err(Rejection::BadSignature(_))));
        }

        #[test]
        fn amounts_round_trip(fen in 1i64..=9_999_999_999) {
            let spec = sample_spec(SampleKind::Payment, fen);
            let signed = DryadSandbox::new(b"secret".to_vec()).sign_sample(&spec).unwrap();
            let (headers, body) = request_of(&signed);
            let n = dryad().parse(&RawRequest::new(&headers, &body)).unwrap();
            proptest::prop_assert_eq!(n.amount.fen(), fen);
        }

        #[test]
        fn parser_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let headers = axum::http::HeaderMap::new();
            let req = RawRequest::new(&headers, &body);
            let _ = dryad().verify(&req, Utc::now());
            let _ = dryad().parse(&req);
        }
    }
}
