//! 收钱吧 upay v2 (seed 001): a JSON body whose values are all strings, signed
//! in `Authorization: {terminal_sn} {sign}` with either the MD5 transport
//! signature (`md5(body ++ terminal_key)`) or SHA256withRSA.

use axum::http::HeaderMap;

use super::fuzz::{put, Assisted, FuzzTarget, Split};
use std::path::PathBuf;

use base64::Engine;
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::common::{from_epoch_millis, RsaAlgorithm, RsaPublicKey, SandboxKey};
use super::json::{object_body, opt_str, req_str};
use super::module::{
    first_secret, load_keys, sandbox_key, secret_bytes, BenchMode, ProviderModule, SandboxAccount,
    MIN_RSA_BITS,
};
use super::provider::{
    Dialect, Provider, RawRequest, Rejection, SampleKind, SampleSigner, SampleSpec, SignError, SignedRequest,
    Verified,
};
use super::registry::AccountErrorKind;
use crate::config::{AccountCx, ConfigError, Secret, SecretKeys};
use crate::crypto::ct_eq;
use crate::domain::{AmountFen, EventType, Notification, ProviderKind};
use crate::key_list::KeyList;

/// How an account's callbacks are signed.
#[derive(Clone)]
pub enum SqbSignMode {
    /// Lowercase (or upper-case) hex MD5 of the raw body followed by the
    /// terminal key (any of them while the key is rotated).
    Md5 { terminal_keys: KeyList<Vec<u8>> },
    /// Base64 SHA256withRSA over the raw body, with Shouqianba's public key
    /// (any of them while the key is rotated).
    Rsa { keys: KeyList<RsaPublicKey> },
}

impl std::fmt::Debug for SqbSignMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SqbSignMode::Md5 { .. } => f.write_str("Md5 { terminal_keys: <redacted> }"),
            SqbSignMode::Rsa { keys } => write!(f, "Rsa {{ keys: {keys:?} }}"),
        }
    }
}

pub struct Shouqianba {
    terminal_sn: String,
    mode: SqbSignMode,
}

impl Shouqianba {
    pub fn new(terminal_sn: String, mode: SqbSignMode) -> Self {
        Self { terminal_sn, mode }
    }
}

fn md5_sign(body: &[u8], terminal_key: &[u8]) -> [u8; 16] {
    let mut hasher = Md5::new();
    hasher.update(body);
    hasher.update(terminal_key);
    hasher.finalize().into()
}

/// An optional string field; an empty string counts as absent.
fn opt_text<'a>(body: &'a Map<String, Value>, key: &'static str) -> Result<Option<&'a str>, Rejection> {
    Ok(opt_str(body, key)?.filter(|s| !s.is_empty()))
}

/// An optional fen amount written as a string of digits.
fn opt_fen(body: &Map<String, Value>, key: &'static str) -> Result<Option<AmountFen>, Rejection> {
    match opt_text(body, key)? {
        Some(text) => AmountFen::parse_fen(text)
            .map(Some)
            .map_err(|_| Rejection::BadRequest("an amount is not a whole number of fen")),
        None => Ok(None),
    }
}

/// An optional epoch-milliseconds time written as a string.
fn opt_millis(body: &Map<String, Value>, key: &'static str) -> Result<Option<DateTime<Utc>>, Rejection> {
    match opt_text(body, key)? {
        Some(text) => from_epoch_millis(text)
            .map(Some)
            .ok_or(Rejection::BadRequest("a time is not epoch milliseconds")),
        None => Ok(None),
    }
}

fn channel_of(payway: &str) -> String {
    match payway {
        "1" => "alipay",
        "3" => "wechat",
        "4" => "baifubao",
        "5" => "jd",
        other => other,
    }
    .to_owned()
}

fn event_type_of(order_status: &str) -> EventType {
    match order_status {
        "PAID" => EventType::PaymentSucceeded,
        "PAY_CANCELED" => EventType::PaymentFailed,
        "CANCELED" => EventType::PaymentCanceled,
        "REFUNDED" | "PARTIAL_REFUNDED" => EventType::RefundSucceeded,
        "PAY_ERROR" | "REFUND_ERROR" | "CANCEL_ERROR" => EventType::PaymentError,
        "CREATED" => EventType::PaymentCreated,
        _ => EventType::PaymentUnknown,
    }
}

impl Provider for Shouqianba {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Shouqianba
    }

    fn verify(&self, req: &RawRequest<'_>, _now: DateTime<Utc>) -> Result<Verified, Rejection> {
        let header = req
            .header("authorization")
            .ok_or(Rejection::BadSignature("missing Authorization"))?;
        let (terminal_sn, sign) = header
            .split_once(' ')
            .ok_or(Rejection::BadSignature("Authorization is not `terminal_sn sign`"))?;
        // The terminal number is not a secret: a plain comparison is fine.
        if terminal_sn.is_empty() || terminal_sn != self.terminal_sn {
            return Err(Rejection::BadSignature(
                "terminal_sn is not this account's terminal",
            ));
        }
        let sign = sign.trim();
        let ok = match &self.mode {
            SqbSignMode::Md5 { terminal_keys } => match hex::decode(sign) {
                Ok(given) => terminal_keys.any_verifies(|key| ct_eq(&md5_sign(req.body, key), &given)),
                Err(_) => false,
            },
            SqbSignMode::Rsa { keys } => keys.verify_base64_any(RsaAlgorithm::Sha256, req.body, sign),
        };
        if !ok {
            return Err(Rejection::BadSignature("signature does not match"));
        }
        Ok(Verified::default())
    }

    fn parse(&self, req: &RawRequest<'_>) -> Result<Notification, Rejection> {
        let body = object_body(req.body)?;
        // The header's terminal is not signed; the body's is. In RSA mode one
        // platform key signs every terminal's notices, so this comparison is
        // what binds the notice to this account.
        if opt_str(&body, "terminal_sn")? != Some(self.terminal_sn.as_str()) {
            return Err(Rejection::WrongAccount("terminal_sn"));
        }
        let sn = req_str(&body, "sn")?.to_owned();
        let order_status = req_str(&body, "order_status")?;
        let event_type = event_type_of(order_status);
        let total = opt_fen(&body, "total_amount")?.ok_or(Rejection::BadRequest("missing total_amount"))?;
        let net = opt_fen(&body, "net_amount")?;

        let mut n = Notification::new(event_type, sn, total);
        if event_type == EventType::RefundSucceeded {
            let net = net.ok_or(Rejection::BadRequest("refund notice without net_amount"))?;
            let refunded = total
                .checked_sub(net)
                .ok_or(Rejection::BadRequest("net_amount exceeds total_amount"))?;
            // `total - net` is everything refunded so far, not this refund.
            n.refunded_total = Some(refunded);
        }
        n.dedup_extra = match net {
            Some(net) => format!("{order_status}:{net}"),
            None => format!("{order_status}:"),
        };
        n.merchant_order_no = opt_text(&body, "client_sn")?.map(str::to_owned);
        n.channel_trade_no = opt_text(&body, "trade_no")?.map(str::to_owned);
        n.business_params = opt_text(&body, "reflect")?.map(str::to_owned);
        n.channel = opt_text(&body, "payway")?.map(channel_of);
        n.occurred_at = match opt_millis(&body, "finish_time")? {
            Some(t) => Some(t),
            None => opt_millis(&body, "channel_finish_time")?,
        };
        n.raw = Value::Object(body);
        Ok(n)
    }

    fn dialect(&self) -> Dialect {
        Dialect::PlainText {
            ok: "success",
            fail: "fail",
        }
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }
}

/// Signs sample callbacks as Shouqianba would.
pub struct ShouqianbaSandbox {
    terminal_sn: String,
    mode: SandboxKey,
}

impl ShouqianbaSandbox {
    pub fn new(terminal_sn: String, mode: SandboxKey) -> Self {
        Self { terminal_sn, mode }
    }
}

impl SampleSigner for ShouqianbaSandbox {
    fn sign_sample(&self, spec: &SampleSpec) -> Result<SignedRequest, SignError> {
        // A refund sample is a partial refund of a slightly larger order, so
        // that `total_amount - net_amount` is exactly `spec.amount`; at the very
        // top of the amount range it becomes a full refund instead.
        let (order_status, total, net) = match spec.kind {
            SampleKind::Payment => ("PAID", spec.amount.fen(), spec.amount.fen()),
            SampleKind::Refund => {
                let kept = 100_i64.min(AmountFen::MAX_FEN - spec.amount.fen());
                let status = if kept > 0 { "PARTIAL_REFUNDED" } else { "REFUNDED" };
                (status, spec.amount.fen() + kept, kept)
            }
        };
        let finished = spec.now.timestamp_millis();
        let mut body = Map::new();
        let mut put = |k: &str, v: String| {
            body.insert(k.to_owned(), Value::String(v));
        };
        put("terminal_sn", self.terminal_sn.clone());
        put("sn", spec.trade_no.clone());
        put("client_sn", spec.merchant_order_no.clone());
        put("trade_no", format!("4200{}", spec.trade_no));
        put("status", "SUCCESS".into());
        put("order_status", order_status.into());
        put("payway", "3".into());
        put("sub_payway", "1".into());
        put("payer_uid", "payhook-sample-payer".into());
        put("total_amount", total.to_string());
        put("net_amount", net.to_string());
        put("subject", "payhook sample".into());
        put("finish_time", finished.to_string());
        put("channel_finish_time", finished.to_string());
        put("operator", "payhook".into());
        put("reflect", r#"{"sample":true}"#.into());
        let body = serde_json::to_vec(&Value::Object(body)).map_err(|e| SignError::Crypto(e.to_string()))?;

        let sign = match &self.mode {
            SandboxKey::Secret { secret: terminal_key } => {
                let mut digest = md5_sign(&body, terminal_key);
                if spec.forge {
                    digest[0] ^= 1;
                }
                hex::encode(digest)
            }
            SandboxKey::Rsa { key } => {
                let mut sig = key
                    .sign(RsaAlgorithm::Sha256, &body)
                    .map_err(|e| SignError::Crypto(e.to_string()))?;
                if spec.forge {
                    if let Some(b) = sig.first_mut() {
                        *b ^= 1;
                    }
                }
                base64::engine::general_purpose::STANDARD.encode(sig)
            }
        };
        Ok(SignedRequest {
            content_type: "application/json",
            headers: vec![("Authorization".into(), format!("{} {}", self.terminal_sn, sign))],
            body,
        })
    }
}

/// The `shouqianba_md5` fuzz target's assist: header 1 is the terminal
/// number, and the harness sends `Authorization: <header 1> <md5(body ++
/// terminal key)>` with the target's (test) terminal key.
fn fuzz_md5_assist(s: &Split<'_>) -> Assisted {
    let mut headers = HeaderMap::new();
    if let Some(sn) = s.headers[0] {
        let mut value = sn.to_vec();
        value.push(b' ');
        value
            .extend_from_slice(hex::encode(md5_sign(s.body, b"96bfaf401367d934cb10a1cbe9773647")).as_bytes());
        put(&mut headers, "authorization", Some(&value));
    }
    Assisted {
        headers,
        body: s.body.to_vec(),
    }
}

// ---------------------------------------------------------------------------
// The module's parts: its `[[accounts]]` section, and what is built from it.

/// A Shouqianba account's `[[accounts]]` keys, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShouqianbaFile {
    sign_mode: Option<String>,
    terminal_sn: String,
    terminal_key: Option<String>,
    terminal_key_env: Option<String>,
    terminal_key_file: Option<PathBuf>,
    terminal_keys: Option<Vec<toml::Value>>,
    public_key_file: Option<PathBuf>,
    public_key_files: Option<Vec<PathBuf>>,
    sandbox_private_key_file: Option<PathBuf>,
}

/// A Shouqianba account's settings.
#[derive(Debug, Clone)]
pub struct ShouqianbaSettings {
    /// The terminal every notice must name.
    pub terminal_sn: String,
    pub mode: SqbMode,
    pub sandbox_private_key_file: Option<PathBuf>,
}

/// `sign_mode` and its keys.
#[derive(Debug, Clone)]
pub enum SqbMode {
    Md5 { terminal_keys: KeyList<Secret> },
    Rsa { public_key_files: KeyList<PathBuf> },
}

impl ProviderModule for Shouqianba {
    const DISPLAY_NAME: &'static str = "Shouqianba";
    const BENCH: &'static [BenchMode] = &[
        BenchMode {
            name: "shouqianba",
            help: "Shouqianba, MD5 mode",
            id: "bench-sqb-md5",
            account: "provider = \"shouqianba\"\nsign_mode = \"md5\"\nterminal_sn = \"100111220054389553\"\n\
                      terminal_key = \"bench-terminal-key\"\n",
        },
        BenchMode {
            name: "shouqianba-rsa",
            help: "Shouqianba, RSA mode",
            id: "bench-sqb-rsa",
            account: "provider = \"shouqianba\"\nsign_mode = \"rsa\"\nterminal_sn = \"100111220054389553\"\n\
                      public_key_file = {public}\nsandbox_private_key_file = {private}\n",
        },
    ];
    const SANDBOX: &'static [SandboxAccount] = &[
        SandboxAccount {
            id: "sqb-md5-sandbox",
            account: "provider = \"shouqianba\"\nsign_mode = \"md5\"\nterminal_sn = \"100111220054389553\"\nterminal_key = \"96bfaf401367d934cb10a1cbe9773647\"\n",
        },
        SandboxAccount {
            id: "sqb-rsa-sandbox",
            account: "provider = \"shouqianba\"\nsign_mode = \"rsa\"\nterminal_sn = \"100111220054389553\"\npublic_key_file = \"sqb_pub.pem\"\nsandbox_private_key_file = \"sqb_sandbox_priv.pem\"\n",
        },
    ];
    const SANDBOX_KEYS: &'static [(&'static str, &'static str)] = &[
        ("sqb_pub.pem", include_str!("../../sandbox-keys/sqb_pub.pem")),
        (
            "sqb_sandbox_priv.pem",
            include_str!("../../sandbox-keys/sqb_sandbox_priv.pem"),
        ),
    ];
    const FUZZ: &'static [FuzzTarget] = &[
        FuzzTarget {
            name: "shouqianba_md5",
            account: "provider = \"shouqianba\"\nsign_mode = \"md5\"\nterminal_sn = \"100111220054389553\"\n\
                      terminal_key = \"96bfaf401367d934cb10a1cbe9773647\"\n",
            headers: &["authorization"],
            assist: Some(fuzz_md5_assist),
        },
        FuzzTarget {
            name: "shouqianba_rsa",
            account: "provider = \"shouqianba\"\nsign_mode = \"rsa\"\nterminal_sn = \"100111220054389553\"\n\
                      public_key_file = \"sqb_pub.pem\"\n",
            headers: &["authorization"],
            assist: None,
        },
    ];
    type File = ShouqianbaFile;
    type Settings = ShouqianbaSettings;

    fn settings(f: ShouqianbaFile, cx: &AccountCx<'_>) -> Result<ShouqianbaSettings, ConfigError> {
        let terminal_keys = cx.secrets(
            "terminal_key",
            SecretKeys {
                inline: f.terminal_key,
                env: f.terminal_key_env,
                file: f.terminal_key_file,
                list: f.terminal_keys,
            },
        )?;
        let public_key_files = cx.key_files("public_key_file", f.public_key_file, f.public_key_files)?;
        let mode = match f.sign_mode.as_deref().unwrap_or("md5") {
            "md5" => SqbMode::Md5 {
                terminal_keys: terminal_keys
                    .ok_or_else(|| cx.invalid("terminal_key", "required when sign_mode = \"md5\""))?,
            },
            "rsa" => SqbMode::Rsa {
                public_key_files: public_key_files
                    .ok_or_else(|| cx.invalid("public_key_file", "required when sign_mode = \"rsa\""))?,
            },
            other => return Err(cx.invalid("sign_mode", format!("`{other}` is not md5 or rsa"))),
        };
        if f.terminal_sn.is_empty() {
            return Err(cx.invalid("terminal_sn", "must not be empty"));
        }
        Ok(ShouqianbaSettings {
            terminal_sn: f.terminal_sn,
            mode,
            sandbox_private_key_file: f.sandbox_private_key_file.map(|p| cx.path(p)),
        })
    }

    fn build(s: &ShouqianbaSettings) -> Result<Self, AccountErrorKind> {
        let mode = match &s.mode {
            SqbMode::Md5 { terminal_keys } => SqbSignMode::Md5 {
                terminal_keys: secret_bytes(terminal_keys),
            },
            SqbMode::Rsa { public_key_files } => SqbSignMode::Rsa {
                keys: load_keys(public_key_files, MIN_RSA_BITS)?,
            },
        };
        Ok(Shouqianba::new(s.terminal_sn.clone(), mode))
    }

    fn sandbox(s: &ShouqianbaSettings) -> Result<Box<dyn SampleSigner>, AccountErrorKind> {
        let mode = match &s.mode {
            SqbMode::Md5 { terminal_keys } => SandboxKey::Secret {
                secret: first_secret(terminal_keys),
            },
            SqbMode::Rsa { .. } => SandboxKey::Rsa {
                key: sandbox_key(&s.sandbox_private_key_file)?,
            },
        };
        Ok(Box::new(ShouqianbaSandbox::new(s.terminal_sn.clone(), mode)))
    }

    fn bench_mode(s: &ShouqianbaSettings) -> Option<&'static str> {
        Some(match s.mode {
            SqbMode::Md5 { .. } => "shouqianba",
            SqbMode::Rsa { .. } => "shouqianba-rsa",
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use axum::http::{HeaderMap, HeaderValue};
    use proptest::prelude::*;

    use crate::ingress::common::RsaSigningKey;

    use super::*;
    use crate::ingress::tests_support::{
        changed_byte_is_refused, check_shared_vectors, request_of, round_trip, sample_spec,
        schemes_refuse_each_other, vector_public_key, vectors_dir, verify_and_parse,
    };

    const TERMINAL: &str = "100111220054389553";
    const KEY: &[u8] = b"96bfaf401367d934cb10a1cbe9773647";

    fn public_key() -> RsaPublicKey {
        RsaPublicKey::load(&vectors_dir().join("keys/sqb_pub.pem"), 2048).unwrap()
    }

    fn signing_key() -> RsaSigningKey {
        RsaSigningKey::load(&vectors_dir().join("keys/sqb_sandbox_priv.pem")).unwrap()
    }

    fn md5_provider() -> Shouqianba {
        Shouqianba::new(
            TERMINAL.into(),
            SqbSignMode::Md5 {
                terminal_keys: KEY.to_vec().into(),
            },
        )
    }

    fn md5_sandbox() -> ShouqianbaSandbox {
        ShouqianbaSandbox::new(TERMINAL.into(), SandboxKey::Secret { secret: KEY.to_vec() })
    }

    fn rsa_provider() -> Shouqianba {
        Shouqianba::new(
            TERMINAL.into(),
            SqbSignMode::Rsa {
                keys: public_key().into(),
            },
        )
    }

    fn rsa_sandbox() -> ShouqianbaSandbox {
        ShouqianbaSandbox::new(TERMINAL.into(), SandboxKey::Rsa { key: signing_key() })
    }

    fn provider_for(account: &Value) -> Shouqianba {
        let terminal = account["terminal_sn"].as_str().unwrap().to_owned();
        match account["sign_mode"].as_str().unwrap() {
            "md5" => {
                let key = account["terminal_key"].as_str().unwrap().as_bytes().to_vec();
                Shouqianba::new(
                    terminal,
                    SqbSignMode::Md5 {
                        terminal_keys: key.into(),
                    },
                )
            }
            "rsa" => {
                let key = vector_public_key(account, "public_key_file", 2048);
                Shouqianba::new(terminal, SqbSignMode::Rsa { keys: key.into() })
            }
            other => panic!("unknown sign_mode {other}"),
        }
    }

    #[test]
    fn shared_vectors() {
        let count = check_shared_vectors("shouqianba", provider_for);
        assert!(count >= 6, "only {count} shouqianba vectors found");
    }

    fn md5_auth_for(body: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let sign = hex::encode(md5_sign(body.as_bytes(), KEY));
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("{TERMINAL} {sign}")).unwrap(),
        );
        headers
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_768_458_600, 0).unwrap()
    }

    #[test]
    fn upper_case_md5_is_accepted() {
        let body = r#"{"terminal_sn":"100111220054389553","sn":"1","order_status":"PAID","total_amount":"5","net_amount":"5"}"#;
        let sign = hex::encode_upper(md5_sign(body.as_bytes(), KEY));
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_str(&format!("{TERMINAL} {sign}")).unwrap(),
        );
        let n = verify_and_parse(&md5_provider(), &headers, body.as_bytes(), now()).unwrap();
        assert_eq!(n.event_type, EventType::PaymentSucceeded);
        assert_eq!(n.dedup_extra, "PAID:5");
        assert_eq!(n.occurred_at, None);
    }

    #[test]
    fn malformed_authorization_is_a_bad_signature() {
        let body = br#"{"terminal_sn":"100111220054389553","sn":"1"}"#;
        for value in [
            "",
            TERMINAL,
            "nospace",
            " abc",
            &format!("{TERMINAL} zz"),
            &format!("{TERMINAL} "),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", HeaderValue::from_str(value).unwrap());
            let err = md5_provider()
                .verify(&RawRequest::new(&headers, body), now())
                .unwrap_err();
            assert!(matches!(err, Rejection::BadSignature(_)), "{value:?}");
        }
    }

    #[test]
    fn order_statuses_map_to_event_types() {
        let cases = [
            ("PAID", EventType::PaymentSucceeded),
            ("PAY_CANCELED", EventType::PaymentFailed),
            ("CANCELED", EventType::PaymentCanceled),
            ("REFUNDED", EventType::RefundSucceeded),
            ("PARTIAL_REFUNDED", EventType::RefundSucceeded),
            ("PAY_ERROR", EventType::PaymentError),
            ("REFUND_ERROR", EventType::PaymentError),
            ("CANCEL_ERROR", EventType::PaymentError),
            ("CREATED", EventType::PaymentCreated),
            ("SOMETHING_NEW", EventType::PaymentUnknown),
        ];
        for (status, want) in cases {
            let body = format!(
                r#"{{"terminal_sn":"100111220054389553","sn":"9","client_sn":"c","order_status":"{status}","total_amount":"1000","net_amount":"0","payway":"1","channel_finish_time":"1449569460000"}}"#
            );
            let n = verify_and_parse(&md5_provider(), &md5_auth_for(&body), body.as_bytes(), now()).unwrap();
            assert_eq!(n.event_type, want, "{status}");
            assert_eq!(n.dedup_extra, format!("{status}:0"));
            assert_eq!(n.channel.as_deref(), Some("alipay"));
            assert_eq!(
                n.occurred_at.map(|t| t.timestamp_millis()),
                Some(1_449_569_460_000)
            );
            if want == EventType::RefundSucceeded {
                assert_eq!(n.refunded_total, Some(AmountFen::from_fen(1000).unwrap()));
            } else {
                assert_eq!(n.refunded_total, None);
            }
            assert_eq!(n.refund_amount, None);
        }
    }

    #[test]
    fn notices_are_bound_to_the_accounts_terminal() {
        let other = r#"{"terminal_sn":"100111220099999999","sn":"1","order_status":"PAID","total_amount":"5","net_amount":"5"}"#;
        let missing = r#"{"sn":"1","order_status":"PAID","total_amount":"5","net_amount":"5"}"#;
        let number = r#"{"terminal_sn":100111220054389553,"sn":"1","order_status":"PAID","total_amount":"5","net_amount":"5"}"#;
        for body in [other, missing] {
            // Signed with this account's own key and header: only the body's
            // terminal_sn differs.
            let result = verify_and_parse(&md5_provider(), &md5_auth_for(body), body.as_bytes(), now());
            assert_eq!(result, Err(Rejection::WrongAccount("terminal_sn")), "{body}");
        }
        let result = verify_and_parse(&md5_provider(), &md5_auth_for(number), number.as_bytes(), now());
        assert!(matches!(result, Err(Rejection::BadRequest(_))), "{result:?}");
    }

    #[test]
    fn payway_channels() {
        for (payway, want) in [
            ("1", "alipay"),
            ("3", "wechat"),
            ("4", "baifubao"),
            ("5", "jd"),
            ("17", "17"),
        ] {
            assert_eq!(channel_of(payway), want);
        }
    }

    #[test]
    fn bad_bodies_are_bad_requests() {
        let bodies = [
            // refund larger than the order
            r#"{"terminal_sn":"100111220054389553","sn":"1","order_status":"REFUNDED","total_amount":"100","net_amount":"101"}"#,
            // refund without net_amount
            r#"{"terminal_sn":"100111220054389553","sn":"1","order_status":"PARTIAL_REFUNDED","total_amount":"100"}"#,
            // amounts must be strings of digits
            r#"{"terminal_sn":"100111220054389553","sn":"1","order_status":"PAID","total_amount":100,"net_amount":"100"}"#,
            r#"{"terminal_sn":"100111220054389553","sn":"1","order_status":"PAID","total_amount":"1.00","net_amount":"100"}"#,
            r#"{"terminal_sn":"100111220054389553","sn":"1","order_status":"PAID","total_amount":"-1","net_amount":"1"}"#,
            r#"{"terminal_sn":"100111220054389553","sn":"1","order_status":"PAID","net_amount":"1"}"#,
            r#"{"terminal_sn":"100111220054389553","order_status":"PAID","total_amount":"1"}"#,
            r#"{"terminal_sn":"100111220054389553","sn":"1","total_amount":"1"}"#,
            r#"{"terminal_sn":"100111220054389553","sn":"1","order_status":"PAID","total_amount":"1","finish_time":"yesterday"}"#,
            r#"["not","an","object"]"#,
        ];
        for body in bodies {
            let err =
                verify_and_parse(&md5_provider(), &md5_auth_for(body), body.as_bytes(), now()).unwrap_err();
            assert!(matches!(err, Rejection::BadRequest(_)), "{body}: {err:?}");
        }
    }

    fn check_round_trip(
        provider: &Shouqianba,
        sandbox: &ShouqianbaSandbox,
        kind: SampleKind,
        fen: i64,
    ) -> Notification {
        let n = round_trip(provider, sandbox, kind, fen);
        assert_eq!(n.channel.as_deref(), Some("wechat"));
        n
    }

    #[test]
    fn md5_sandbox_round_trips() {
        for kind in [SampleKind::Payment, SampleKind::Refund] {
            check_round_trip(&md5_provider(), &md5_sandbox(), kind, 12_345);
        }
        // the top of the amount range refunds in full
        let n = check_round_trip(
            &md5_provider(),
            &md5_sandbox(),
            SampleKind::Refund,
            AmountFen::MAX_FEN,
        );
        assert_eq!(n.raw["order_status"], "REFUNDED");
    }

    #[test]
    fn rsa_sandbox_round_trips() {
        let (provider, sandbox) = (rsa_provider(), rsa_sandbox());
        for kind in [SampleKind::Payment, SampleKind::Refund] {
            check_round_trip(&provider, &sandbox, kind, 12_345);
        }
        // An MD5 signature does not pass an RSA account, nor the other way round.
        schemes_refuse_each_other((&provider, &sandbox), (&md5_provider(), &md5_sandbox()));
    }

    /// One RSA-signed sample, signed once: the `rsa` crate is slow in debug builds.
    fn rsa_signed_sample() -> &'static (SignedRequest, DateTime<Utc>) {
        static SIGNED: OnceLock<(SignedRequest, DateTime<Utc>)> = OnceLock::new();
        SIGNED.get_or_init(|| {
            let spec = sample_spec(SampleKind::Payment, 500);
            (rsa_sandbox().sign_sample(&spec).unwrap(), spec.now)
        })
    }

    fn rsa_provider_shared() -> &'static Shouqianba {
        static PROVIDER: OnceLock<Shouqianba> = OnceLock::new();
        PROVIDER.get_or_init(rsa_provider)
    }

    fn authorization_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,80}",
            "[ -~]{0,120}",
            "[0-9a-fA-F ]{0,40}".prop_map(|s| format!("{TERMINAL} {s}")),
            "[A-Za-z0-9+/= ]{0,400}".prop_map(|s| format!("{TERMINAL} {s}")),
        ]
    }

    fn json_value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[0-9]{0,25}".prop_map(Value::from),
            "-?[0-9.]{0,8}".prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
            prop::sample::select(vec!["PAID", "REFUNDED", "PARTIAL_REFUNDED", "CREATED", "X"])
                .prop_map(Value::from),
        ]
    }

    fn json_body_strategy() -> impl Strategy<Value = Vec<u8>> {
        let keys = [
            "sn",
            "client_sn",
            "trade_no",
            "order_status",
            "payway",
            "total_amount",
            "net_amount",
            "finish_time",
            "channel_finish_time",
            "reflect",
        ];
        prop::collection::vec(
            (prop::sample::select(keys.to_vec()), json_value_strategy()),
            0..12,
        )
        .prop_map(|pairs| {
            let map: Map<String, Value> = pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            serde_json::to_vec(&Value::Object(map)).unwrap()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_changed_byte_is_refused_md5(index in 0usize..4096, flip in 1u8..=255) {
            let spec = sample_spec(SampleKind::Payment, 500);
            let signed = md5_sandbox().sign_sample(&spec).unwrap();
            prop_assert!(changed_byte_is_refused(&md5_provider(), &signed, spec.now, index, flip));
        }

        #[test]
        fn any_changed_byte_is_refused_rsa(index in 0usize..4096, flip in 1u8..=255) {
            let (signed, now) = rsa_signed_sample();
            prop_assert!(changed_byte_is_refused(rsa_provider_shared(), signed, *now, index, flip));
        }

        #[test]
        fn amounts_round_trip(fen in 1i64..=9_999_999_999, refund in any::<bool>()) {
            let kind = if refund { SampleKind::Refund } else { SampleKind::Payment };
            let spec = sample_spec(kind, fen);
            let signed = md5_sandbox().sign_sample(&spec).unwrap();
            let (headers, body) = request_of(&signed);
            let n = verify_and_parse(&md5_provider(), &headers, &body, spec.now).unwrap();
            if refund {
                prop_assert_eq!(n.refunded_total.map(AmountFen::fen), Some(fen));
            } else {
                prop_assert_eq!(n.amount.fen(), fen);
            }
        }

        #[test]
        fn never_panics_on_bytes(
            body in prop::collection::vec(any::<u8>(), 0..512),
            auth in proptest::option::of(authorization_strategy()),
        ) {
            let mut headers = HeaderMap::new();
            if let Some(value) = auth.and_then(|a| HeaderValue::from_str(&a).ok()) {
                headers.insert("authorization", value);
            }
            let req = RawRequest::new(&headers, &body);
            let _ = md5_provider().verify(&req, Utc::now());
            let _ = rsa_provider_shared().verify(&req, Utc::now());
            let _ = md5_provider().parse(&req);
        }

        #[test]
        fn never_panics_on_json(body in json_body_strategy()) {
            let headers = HeaderMap::new();
            let req = RawRequest::new(&headers, &body);
            let _ = md5_provider().parse(&req);
        }
    }
}
