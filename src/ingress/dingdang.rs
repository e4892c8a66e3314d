//! 腾讯叮当 open-platform payment notices (seed 003): a JSON shipping or refund
//! result notice, signed in
//! `Authorization: <scheme> Datetime=<YYYYMMDDTHHMMSSZ>, Signature=<sig>` over
//! `raw body ++ Datetime`, with HMAC-SHA256 (hex) or SHA256withRSA (base64).
//!
//! `occurred_at` is the signed `Datetime`: the notices carry no payment or
//! refund time of their own, and the signed send time is the best one there is.

use super::fuzz::{put, Assisted, FuzzTarget, Split};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::common::{RsaAlgorithm, RsaPublicKey, SandboxKey};
use super::dryad::within_skew;
use super::json::{object_body, opt_str, req_fen, req_str};
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
use crate::crypto::{hmac_sha256, verify_hex_hmac_sha256};
use crate::domain::{EventType, Notification, ProviderKind};
use crate::key_list::KeyList;

const HMAC_SCHEME: &str = "TSK-HMAC-SHA256-BASIC";
const RSA2_SCHEME: &str = "TSK-RSA2";
const DATETIME_FORMAT: &str = "%Y%m%dT%H%M%SZ";

/// How an account's notices are signed.
#[derive(Clone)]
pub enum DingdangScheme {
    /// `TSK-HMAC-SHA256-BASIC`: lowercase hex HMAC-SHA256 keyed with the
    /// skill secret (any of them while it is rotated).
    HmacSha256 { secrets: KeyList<Vec<u8>> },
    /// `TSK-RSA2`: base64 SHA256withRSA, verified with the platform public
    /// key (any of them while it is rotated).
    Rsa2 { keys: KeyList<RsaPublicKey> },
}

impl DingdangScheme {
    fn word(&self) -> &'static str {
        match self {
            DingdangScheme::HmacSha256 { .. } => HMAC_SCHEME,
            DingdangScheme::Rsa2 { .. } => RSA2_SCHEME,
        }
    }
}

impl std::fmt::Debug for DingdangScheme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DingdangScheme::HmacSha256 { .. } => f.write_str("HmacSha256 { secrets: <redacted> }"),
            DingdangScheme::Rsa2 { keys } => write!(f, "Rsa2 {{ keys: {keys:?} }}"),
        }
    }
}

pub struct Dingdang {
    scheme: DingdangScheme,
    max_clock_skew: Duration,
    /// The account's `skill_id`: the body's `skillId` (or `domainId`) must
    /// be it.
    skill_id: String,
}

impl Dingdang {
    pub fn new(scheme: DingdangScheme, max_clock_skew: Duration, skill_id: String) -> Self {
        Self {
            scheme,
            max_clock_skew,
            skill_id,
        }
    }
}

/// The parts of an `Authorization` header that matter.
#[derive(Debug, PartialEq, Eq)]
struct Authorization<'a> {
    scheme: &'a str,
    datetime: &'a str,
    signature: &'a str,
}

/// `<scheme> Key=Value, Key=Value, …`: spaces around `=` and `,` are ignored,
/// as are unknown keys; `Datetime` and `Signature` must each appear once.
/// Values are split at their first `=`, so base64 padding survives.
fn parse_authorization(value: &str) -> Result<Authorization<'_>, Rejection> {
    const MALFORMED: Rejection = Rejection::BadSignature("malformed Authorization");
    let (scheme, params) = value
        .trim()
        .split_once(|c: char| c.is_ascii_whitespace())
        .ok_or(MALFORMED)?;
    let mut datetime = None;
    let mut signature = None;
    for part in params.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (key, value) = part.split_once('=').ok_or(MALFORMED)?;
        let (key, value) = (key.trim(), value.trim());
        let slot = if key.eq_ignore_ascii_case("Datetime") {
            &mut datetime
        } else if key.eq_ignore_ascii_case("Signature") {
            &mut signature
        } else {
            continue;
        };
        if slot.replace(value).is_some() {
            return Err(Rejection::BadSignature("Authorization repeats a parameter"));
        }
    }
    match (datetime, signature) {
        (Some(datetime), Some(signature)) => Ok(Authorization {
            scheme,
            datetime,
            signature,
        }),
        _ => Err(Rejection::BadSignature(
            "Authorization lacks Datetime or Signature",
        )),
    }
}

/// Exactly `YYYYMMDDTHHMMSSZ`, UTC.
fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    let shape_ok = text.len() == 16
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 => b == b'T',
            15 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    if !shape_ok {
        return None;
    }
    NaiveDateTime::parse_from_str(text, DATETIME_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

fn signing_content(body: &[u8], datetime: &str) -> Vec<u8> {
    let mut content = Vec::with_capacity(body.len() + datetime.len());
    content.extend_from_slice(body);
    content.extend_from_slice(datetime.as_bytes());
    content
}

impl Dingdang {
    /// The notice's `skillId` (or, in domain notices, `domainId`), as text or
    /// a whole number, must be this account's `skill_id`; every one present
    /// must agree, and a notice naming none is refused.
    fn bind(&self, body: &Map<String, Value>) -> Result<(), Rejection> {
        let mut named = false;
        for field in ["skillId", "domainId"] {
            let id = match body.get(field) {
                None | Some(Value::Null) => continue,
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) if n.is_u64() => n.to_string(),
                Some(_) => return Err(Rejection::BadRequest("skillId or domainId has the wrong type")),
            };
            if id != self.skill_id {
                return Err(Rejection::WrongAccount(field));
            }
            named = true;
        }
        if named {
            Ok(())
        } else {
            Err(Rejection::WrongAccount("skillId"))
        }
    }
}

impl Provider for Dingdang {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Dingdang
    }

    fn verify(&self, req: &RawRequest<'_>, now: DateTime<Utc>) -> Result<Verified, Rejection> {
        let header = req
            .header("authorization")
            .ok_or(Rejection::BadSignature("missing Authorization"))?;
        let auth = parse_authorization(header)?;
        if !auth.scheme.eq_ignore_ascii_case(self.scheme.word()) {
            return Err(Rejection::BadSignature("signature scheme is not this account's"));
        }
        let ok = match &self.scheme {
            DingdangScheme::HmacSha256 { secrets } => secrets.any_verifies(|secret| {
                verify_hex_hmac_sha256(secret, &[req.body, auth.datetime.as_bytes()], auth.signature)
            }),
            DingdangScheme::Rsa2 { keys } => keys.verify_base64_any(
                RsaAlgorithm::Sha256,
                &signing_content(req.body, auth.datetime),
                auth.signature,
            ),
        };
        if !ok {
            return Err(Rejection::BadSignature("signature does not match"));
        }
        let signed_at =
            parse_datetime(auth.datetime).ok_or(Rejection::Stale("Datetime is not YYYYMMDDTHHMMSSZ"))?;
        if !within_skew(signed_at, now, self.max_clock_skew) {
            return Err(Rejection::Stale("Datetime outside the allowed clock skew"));
        }
        Ok(Verified::default())
    }

    fn parse(&self, req: &RawRequest<'_>) -> Result<Notification, Rejection> {
        let body = object_body(req.body)?;
        self.bind(&body)?;
        let transaction_id = req_str(&body, "transactionId")?.to_owned();
        let trade_no = req_str(&body, "tradeNo")?.to_owned();
        let total = req_fen(&body, "totalAmt")?;
        // Type-checked only: nonceStr changes between retries and is no part
        // of the identity; domainId/skillId (checked above) stay in `raw`.
        opt_str(&body, "nonceStr")?;

        let is_refund = !matches!(body.get("refundTransactionId"), None | Some(Value::Null));
        let mut n = if is_refund {
            req_str(&body, "refundTransactionId")?;
            let refund_no = req_str(&body, "refundTradeNo")?.to_owned();
            let refund_amount = req_fen(&body, "refundAmt")?;
            let status = req_str(&body, "refundStatus")?;
            let event_type = match status {
                "SUCCESS" => EventType::RefundSucceeded,
                "FAIL" => EventType::RefundFailed,
                "PROCESSING" => EventType::RefundProcessing,
                _ => return Err(Rejection::BadRequest("unknown refundStatus")),
            };
            let mut n = Notification::new(event_type, transaction_id, total);
            n.dedup_extra = format!("{refund_no}:{status}");
            n.refund_no = Some(refund_no);
            n.refund_amount = Some(refund_amount);
            n
        } else {
            Notification::new(EventType::PaymentSucceeded, transaction_id, total)
        };
        n.merchant_order_no = Some(trade_no);
        n.occurred_at = req
            .header("authorization")
            .and_then(|h| parse_authorization(h).ok())
            .and_then(|auth| parse_datetime(auth.datetime));
        n.raw = Value::Object(body);
        Ok(n)
    }

    fn dialect(&self) -> Dialect {
        Dialect::RetCodeJson
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &["authorization"]
    }
}

/// Signs sample notices as the Dingdang platform would.
pub struct DingdangSandbox {
    scheme: SandboxKey,
    skill_id: String,
}

impl DingdangSandbox {
    pub fn new(scheme: SandboxKey, skill_id: String) -> Self {
        Self { scheme, skill_id }
    }
}

impl SampleSigner for DingdangSandbox {
    fn sign_sample(&self, spec: &SampleSpec) -> Result<SignedRequest, SignError> {
        let mut body = Map::new();
        body.insert("skillId".into(), Value::from(self.skill_id.clone()));
        body.insert("transactionId".into(), Value::from(spec.trade_no.clone()));
        body.insert("tradeNo".into(), Value::from(spec.merchant_order_no.clone()));
        body.insert("totalAmt".into(), Value::from(spec.amount.fen()));
        if spec.kind == SampleKind::Refund {
            body.insert(
                "refundTransactionId".into(),
                Value::from(format!("RT{}", spec.trade_no)),
            );
            body.insert(
                "refundTradeNo".into(),
                Value::from(format!("RN{}", spec.merchant_order_no)),
            );
            body.insert("refundAmt".into(), Value::from(spec.amount.fen()));
            body.insert("refundStatus".into(), Value::from("SUCCESS"));
            body.insert("refundStatusDesc".into(), Value::from("退款成功"));
        }
        body.insert("nonceStr".into(), Value::from(ulid::Ulid::new().to_string()));
        let body = serde_json::to_vec(&Value::Object(body)).map_err(|e| SignError::Crypto(e.to_string()))?;

        let datetime = spec.now.format(DATETIME_FORMAT).to_string();
        let (scheme, signature) = match &self.scheme {
            SandboxKey::Secret { secret } => {
                let mut mac = hmac_sha256(secret, &[&body, datetime.as_bytes()]);
                if spec.forge {
                    mac[0] ^= 1;
                }
                (HMAC_SCHEME, hex::encode(mac))
            }
            SandboxKey::Rsa { key } => {
                let mut sig = key
                    .sign(RsaAlgorithm::Sha256, &signing_content(&body, &datetime))
                    .map_err(|e| SignError::Crypto(e.to_string()))?;
                if spec.forge {
                    if let Some(b) = sig.first_mut() {
                        *b ^= 1;
                    }
                }
                (RSA2_SCHEME, base64::engine::general_purpose::STANDARD.encode(sig))
            }
        };
        Ok(SignedRequest {
            content_type: "application/json",
            headers: vec![(
                "Authorization".into(),
                format!("{scheme} Datetime={datetime}, Signature={signature}"),
            )],
            body,
        })
    }
}

/// The `dingdang_hmac` fuzz target's assist: header 1 is the `Datetime`,
/// and the harness sends `TSK-HMAC-SHA256-BASIC Datetime=<header 1>,
/// Signature=<hmac(body ++ Datetime)>` with the target's (test) secret, so
/// that mutations reach the Datetime parsing and the clock-skew check.
fn fuzz_hmac_assist(s: &Split<'_>) -> Assisted {
    let mut headers = axum::http::HeaderMap::new();
    if let Some(datetime) = s.headers[0] {
        let mac = hmac_sha256(b"skill_secret", &[s.body, datetime]);
        let mut value = b"TSK-HMAC-SHA256-BASIC Datetime=".to_vec();
        value.extend_from_slice(datetime);
        value.extend_from_slice(b", Signature=");
        value.extend_from_slice(hex::encode(mac).as_bytes());
        put(&mut headers, "authorization", Some(&value));
    }
    Assisted {
        headers,
        body: s.body.to_vec(),
    }
}

// ---------------------------------------------------------------------------
// The module's parts: its `[[accounts]]` section, and what is built from it.

/// A Dingdang account's `[[accounts]]` keys, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DingdangFile {
    scheme: String,
    secret: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    secrets: Option<Vec<toml::Value>>,
    public_key_file: Option<PathBuf>,
    public_key_files: Option<Vec<PathBuf>>,
    max_clock_skew: Option<String>,
    skill_id: Option<String>,
    sandbox_private_key_file: Option<PathBuf>,
}

/// A Dingdang account's settings.
#[derive(Debug, Clone)]
pub struct DingdangSettings {
    pub scheme: DingdangSchemeConfig,
    pub max_clock_skew: Duration,
    /// The skillId/domainId of this account: every notice must carry it.
    pub skill_id: String,
    pub sandbox_private_key_file: Option<PathBuf>,
}

/// `scheme` and its keys.
#[derive(Debug, Clone)]
pub enum DingdangSchemeConfig {
    HmacSha256 { secrets: KeyList<Secret> },
    Rsa2 { public_key_files: KeyList<PathBuf> },
}

impl ProviderModule for Dingdang {
    const DISPLAY_NAME: &'static str = "Tencent Dingdang";
    const BENCH: &'static [BenchMode] = &[
        BenchMode {
            name: "dingdang",
            help: "Dingdang, TSK-HMAC-SHA256-BASIC",
            id: "bench-dingdang-hmac",
            account: "provider = \"dingdang\"\nskill_id = \"sandbox-skill\"\nscheme = \"TSK-HMAC-SHA256-BASIC\"\n\
                      secret = \"bench-skill-secret\"\nmax_clock_skew = \"180s\"\n",
        },
        BenchMode {
            name: "dingdang-rsa",
            help: "Dingdang, TSK-RSA2",
            id: "bench-dingdang-rsa",
            account: "provider = \"dingdang\"\nskill_id = \"sandbox-skill\"\nscheme = \"TSK-RSA2\"\n\
                      public_key_file = {public}\nsandbox_private_key_file = {private}\nmax_clock_skew = \"180s\"\n",
        },
    ];
    const SANDBOX: &'static [SandboxAccount] = &[
        SandboxAccount {
            id: "dingdang-hmac-sandbox",
            account: "provider = \"dingdang\"\nskill_id = \"sandbox-skill\"\nscheme = \"TSK-HMAC-SHA256-BASIC\"\nsecret = \"sandbox-skill-secret\"\nmax_clock_skew = \"180s\"\n",
        },
        SandboxAccount {
            id: "dingdang-rsa-sandbox",
            account: "provider = \"dingdang\"\nskill_id = \"sandbox-skill\"\nscheme = \"TSK-RSA2\"\npublic_key_file = \"dingdang_platform_pub.pem\"\nsandbox_private_key_file = \"dingdang_sandbox_priv.pem\"\nmax_clock_skew = \"180s\"\n",
        },
    ];
    const SANDBOX_KEYS: &'static [(&'static str, &'static str)] = &[
        (
            "dingdang_platform_pub.pem",
            include_str!("../../sandbox-keys/dingdang_platform_pub.pem"),
        ),
        (
            "dingdang_sandbox_priv.pem",
            include_str!("../../sandbox-keys/dingdang_sandbox_priv.pem"),
        ),
    ];
    const FUZZ: &'static [FuzzTarget] = &[
        FuzzTarget {
            name: "dingdang_hmac",
            account: "provider = \"dingdang\"\nskill_id = \"123\"\nscheme = \"TSK-HMAC-SHA256-BASIC\"\n\
                      secret = \"skill_secret\"\nmax_clock_skew = \"180s\"\n",
            headers: &["authorization"],
            assist: Some(fuzz_hmac_assist),
        },
        FuzzTarget {
            name: "dingdang_rsa",
            account: "provider = \"dingdang\"\nskill_id = \"123\"\nscheme = \"TSK-RSA2\"\n\
                      public_key_file = \"dingdang_platform_pub.pem\"\nmax_clock_skew = \"180s\"\n",
            headers: &["authorization"],
            assist: None,
        },
    ];
    type File = DingdangFile;
    type Settings = DingdangSettings;

    fn settings(f: DingdangFile, cx: &AccountCx<'_>) -> Result<DingdangSettings, ConfigError> {
        let secrets = cx.secrets(
            "secret",
            SecretKeys {
                inline: f.secret,
                env: f.secret_env,
                file: f.secret_file,
                list: f.secrets,
            },
        )?;
        let public_key_files = cx.key_files("public_key_file", f.public_key_file, f.public_key_files)?;
        let scheme = match f.scheme.as_str() {
            HMAC_SCHEME => DingdangSchemeConfig::HmacSha256 {
                secrets: secrets.ok_or_else(|| cx.invalid("secret", "required for TSK-HMAC-SHA256-BASIC"))?,
            },
            RSA2_SCHEME => DingdangSchemeConfig::Rsa2 {
                public_key_files: public_key_files
                    .ok_or_else(|| cx.invalid("public_key_file", "required for TSK-RSA2"))?,
            },
            other => {
                return Err(cx.invalid(
                    "scheme",
                    format!("`{other}` is not TSK-HMAC-SHA256-BASIC or TSK-RSA2"),
                ))
            }
        };
        let skill_id = cx.required_text("skill_id", f.skill_id, "the skillId/domainId of this account")?;
        Ok(DingdangSettings {
            scheme,
            skill_id,
            max_clock_skew: cx.duration("max_clock_skew", f.max_clock_skew.as_deref(), "180s")?,
            sandbox_private_key_file: f.sandbox_private_key_file.map(|p| cx.path(p)),
        })
    }

    fn build(s: &DingdangSettings) -> Result<Self, AccountErrorKind> {
        let scheme = match &s.scheme {
            DingdangSchemeConfig::HmacSha256 { secrets } => DingdangScheme::HmacSha256 {
                secrets: secret_bytes(secrets),
            },
            DingdangSchemeConfig::Rsa2 { public_key_files } => DingdangScheme::Rsa2 {
                keys: load_keys(public_key_files, MIN_RSA_BITS)?,
            },
        };
        Ok(Dingdang::new(scheme, s.max_clock_skew, s.skill_id.clone()))
    }

    fn sandbox(s: &DingdangSettings) -> Result<Box<dyn SampleSigner>, AccountErrorKind> {
        let scheme = match &s.scheme {
            DingdangSchemeConfig::HmacSha256 { secrets } => SandboxKey::Secret {
                secret: first_secret(secrets),
            },
            DingdangSchemeConfig::Rsa2 { .. } => SandboxKey::Rsa {
                key: sandbox_key(&s.sandbox_private_key_file)?,
            },
        };
        Ok(Box::new(DingdangSandbox::new(scheme, s.skill_id.clone())))
    }

    fn bench_mode(s: &DingdangSettings) -> Option<&'static str> {
        Some(match s.scheme {
            DingdangSchemeConfig::HmacSha256 { .. } => "dingdang",
            DingdangSchemeConfig::Rsa2 { .. } => "dingdang-rsa",
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
    use crate::domain::AmountFen;
    use crate::ingress::tests_support::{
        changed_byte_is_refused, check_shared_vectors_with, request_of, round_trip, sample_spec,
        schemes_refuse_each_other, vector_public_key, vector_request, vectors_dir, verify_and_parse,
    };

    const SECRET: &[u8] = b"skill_secret";
    const SKEW: Duration = Duration::from_secs(180);
    /// The skillId/domainId of the test bodies below.
    const SKILL: &str = "1";

    fn hmac_provider() -> Dingdang {
        Dingdang::new(
            DingdangScheme::HmacSha256 {
                secrets: SECRET.to_vec().into(),
            },
            SKEW,
            SKILL.into(),
        )
    }

    fn hmac_sandbox() -> DingdangSandbox {
        DingdangSandbox::new(
            SandboxKey::Secret {
                secret: SECRET.to_vec(),
            },
            SKILL.into(),
        )
    }

    fn rsa_provider() -> Dingdang {
        let key = RsaPublicKey::load(&vectors_dir().join("keys/dingdang_platform_pub.pem"), 2048).unwrap();
        Dingdang::new(DingdangScheme::Rsa2 { keys: key.into() }, SKEW, SKILL.into())
    }

    fn rsa_sandbox() -> DingdangSandbox {
        let key = RsaSigningKey::load(&vectors_dir().join("keys/dingdang_sandbox_priv.pem")).unwrap();
        DingdangSandbox::new(SandboxKey::Rsa { key }, SKILL.into())
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_768_458_600, 0).unwrap()
    }

    fn provider_for(account: &Value) -> Dingdang {
        let skew = humantime::parse_duration(account["max_clock_skew"].as_str().unwrap_or("180s")).unwrap();
        let skill = account["skill_id"].as_str().unwrap().to_owned();
        match account["scheme"].as_str().unwrap() {
            HMAC_SCHEME => {
                let secret = account["secret"].as_str().unwrap().as_bytes().to_vec();
                Dingdang::new(
                    DingdangScheme::HmacSha256 {
                        secrets: secret.into(),
                    },
                    skew,
                    skill,
                )
            }
            RSA2_SCHEME => {
                let key = vector_public_key(account, "public_key_file", 2048);
                Dingdang::new(DingdangScheme::Rsa2 { keys: key.into() }, skew, skill)
            }
            other => panic!("unknown scheme {other}"),
        }
    }

    #[test]
    fn shared_vectors() {
        let count = check_shared_vectors_with("dingdang", provider_for, |v, accepted| {
            if let Some(n) = accepted {
                let (_, _, now) = vector_request(v);
                let name = &v["name"];
                assert_eq!(
                    n.occurred_at,
                    Some(now),
                    "{name}: occurred_at is the signed Datetime"
                );
            }
        });
        assert!(count >= 6, "only {count} dingdang vectors found");
    }

    /// A correctly signed HMAC request for `body`, with the header built by `header`.
    fn hmac_request(body: &str, header: impl Fn(&str, &str) -> String) -> HeaderMap {
        let datetime = now().format(DATETIME_FORMAT).to_string();
        let sig = hex::encode(hmac_sha256(SECRET, &[body.as_bytes(), datetime.as_bytes()]));
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_str(&header(&datetime, &sig)).unwrap(),
        );
        headers
    }

    const SHIPPING: &str =
        r#"{"skillId":"1","transactionId":"T1","tradeNo":"N1","totalAmt":100,"nonceStr":"n"}"#;

    #[test]
    fn header_layout_is_tolerated() {
        let layouts: [fn(&str, &str) -> String; 5] = [
            |d, s| format!("TSK-HMAC-SHA256-BASIC Datetime={d}, Signature={s}"),
            |d, s| format!("TSK-HMAC-SHA256-BASIC Datetime = {d} , Signature= {s}"),
            |d, s| format!("TSK-HMAC-SHA256-BASIC Signature={s}, Datetime={d}"),
            |d, s| format!("TSK-HMAC-SHA256-BASIC  Datetime={d},Key=skill-1, Signature={s},"),
            |d, s| {
                format!(
                    "tsk-hmac-sha256-basic Datetime={d}, Signature={}",
                    s.to_uppercase()
                )
            },
        ];
        for layout in layouts {
            let headers = hmac_request(SHIPPING, layout);
            let n = verify_and_parse(&hmac_provider(), &headers, SHIPPING.as_bytes(), now())
                .unwrap_or_else(|e| panic!("{:?}: {e}", headers.get("authorization")));
            assert_eq!(n.event_type, EventType::PaymentSucceeded);
            assert_eq!(n.occurred_at, Some(now()));
            assert_eq!(n.dedup_extra, "");
        }
    }

    #[test]
    fn malformed_or_mismatched_headers_are_bad_signatures() {
        let layouts: [fn(&str, &str) -> String; 7] = [
            |d, s| format!("TSK-RSA2 Datetime={d}, Signature={s}"),
            |d, s| format!("Datetime={d}, Signature={s}"),
            |d, _| format!("TSK-HMAC-SHA256-BASIC Datetime={d}"),
            |_, s| format!("TSK-HMAC-SHA256-BASIC Signature={s}"),
            |d, s| format!("TSK-HMAC-SHA256-BASIC Datetime={d}, Signature={s}, Signature={s}"),
            |d, s| format!("TSK-HMAC-SHA256-BASIC Datetime={d}, Signature={s}, junk"),
            |d, s| format!("TSK-HMAC-SHA256-BASIC Datetime={d}X, Signature={s}"),
        ];
        for layout in layouts {
            let headers = hmac_request(SHIPPING, layout);
            let err = hmac_provider()
                .verify(&RawRequest::new(&headers, SHIPPING.as_bytes()), now())
                .unwrap_err();
            assert!(
                matches!(err, Rejection::BadSignature(_)),
                "{:?}",
                headers.get("authorization")
            );
        }
        let empty = HeaderMap::new();
        let err = hmac_provider()
            .verify(&RawRequest::new(&empty, SHIPPING.as_bytes()), now())
            .unwrap_err();
        assert!(matches!(err, Rejection::BadSignature(_)));
    }

    #[test]
    fn signed_but_malformed_datetime_is_stale() {
        let body = SHIPPING.as_bytes();
        for datetime in ["2026-01-15T06:30:00Z", "20261315T063000Z", "+0260115T063000Z", ""] {
            let sig = hex::encode(hmac_sha256(SECRET, &[body, datetime.as_bytes()]));
            let mut headers = HeaderMap::new();
            let value = format!("TSK-HMAC-SHA256-BASIC Datetime={datetime}, Signature={sig}");
            headers.insert("authorization", HeaderValue::from_str(&value).unwrap());
            let err = hmac_provider()
                .verify(&RawRequest::new(&headers, body), now())
                .unwrap_err();
            assert!(matches!(err, Rejection::Stale(_)), "{datetime:?}: {err:?}");
        }
    }

    #[test]
    fn skew_boundaries() {
        let spec = sample_spec(SampleKind::Payment, 1);
        let (headers, body) = request_of(&hmac_sandbox().sign_sample(&spec).unwrap());
        let req = RawRequest::new(&headers, &body);
        for offset in [-180, 0, 180] {
            assert!(hmac_provider()
                .verify(&req, spec.now + chrono::Duration::seconds(offset))
                .is_ok());
        }
        for offset in [-181, 181] {
            let err = hmac_provider()
                .verify(&req, spec.now + chrono::Duration::seconds(offset))
                .unwrap_err();
            assert!(matches!(err, Rejection::Stale(_)));
        }
    }

    #[test]
    fn refund_statuses() {
        for (status, want) in [
            ("SUCCESS", Some(EventType::RefundSucceeded)),
            ("FAIL", Some(EventType::RefundFailed)),
            ("PROCESSING", Some(EventType::RefundProcessing)),
            ("DONE", None),
        ] {
            let body = format!(
                r#"{{"domainId":"1","transactionId":"T1","tradeNo":"N1","refundTransactionId":"RT1","refundTradeNo":"RN1","totalAmt":100,"refundAmt":"40","refundStatus":"{status}","nonceStr":"n"}}"#
            );
            let headers = hmac_request(&body, |d, s| format!("{HMAC_SCHEME} Datetime={d}, Signature={s}"));
            let result = verify_and_parse(&hmac_provider(), &headers, body.as_bytes(), now());
            match want {
                Some(want) => {
                    let n = result.unwrap();
                    assert_eq!(n.event_type, want);
                    assert_eq!(n.refund_no.as_deref(), Some("RN1"));
                    assert_eq!(n.refund_amount.map(AmountFen::fen), Some(40));
                    assert_eq!(n.amount.fen(), 100);
                    assert_eq!(n.dedup_extra, format!("RN1:{status}"));
                }
                None => assert!(matches!(result, Err(Rejection::BadRequest(_))), "{status}"),
            }
        }
    }

    #[test]
    fn notices_are_bound_to_the_accounts_skill() {
        let check = |body: &str| {
            let headers = hmac_request(body, |d, s| format!("{HMAC_SCHEME} Datetime={d}, Signature={s}"));
            verify_and_parse(&hmac_provider(), &headers, body.as_bytes(), now())
        };
        let tail = r#""transactionId":"T1","tradeNo":"N1","totalAmt":1"#;
        assert!(check(&format!(r#"{{"skillId":"1",{tail}}}"#)).is_ok());
        assert!(check(&format!(r#"{{"skillId":1,{tail}}}"#)).is_ok());
        assert!(check(&format!(r#"{{"domainId":"1",{tail}}}"#)).is_ok());
        for (body, field) in [
            (format!(r#"{{"skillId":"999",{tail}}}"#), "skillId"),
            (format!(r#"{{"domainId":"999",{tail}}}"#), "domainId"),
            (
                format!(r#"{{"skillId":"1","domainId":"999",{tail}}}"#),
                "domainId",
            ),
            (format!(r#"{{{tail}}}"#), "skillId"),
        ] {
            assert_eq!(check(&body), Err(Rejection::WrongAccount(field)), "{body}");
        }
    }

    #[test]
    fn bad_bodies_are_bad_requests() {
        let bodies = [
            r#"{"skillId":"1","transactionId":"T1","tradeNo":"N1","totalAmt":1.5}"#,
            r#"{"skillId":"1","transactionId":"T1","tradeNo":"N1","totalAmt":-1}"#,
            r#"{"skillId":"1","transactionId":"T1","tradeNo":"N1"}"#,
            r#"{"skillId":"1","tradeNo":"N1","totalAmt":1}"#,
            r#"{"skillId":"1","transactionId":"T1","totalAmt":1}"#,
            r#"{"skillId":"1","transactionId":"T1","tradeNo":"N1","totalAmt":1,"nonceStr":5}"#,
            r#"{"skillId":"1","transactionId":"T1","tradeNo":"N1","totalAmt":1,"refundTransactionId":"R"}"#,
            r#"{"skillId":"1","transactionId":"T1","tradeNo":"N1","totalAmt":1,"refundTransactionId":"","refundTradeNo":"RN","refundAmt":1,"refundStatus":"SUCCESS"}"#,
            "[]",
        ];
        for body in bodies {
            let headers = hmac_request(body, |d, s| format!("{HMAC_SCHEME} Datetime={d}, Signature={s}"));
            let err = verify_and_parse(&hmac_provider(), &headers, body.as_bytes(), now()).unwrap_err();
            assert!(matches!(err, Rejection::BadRequest(_)), "{body}: {err:?}");
        }
    }

    fn check_round_trip(provider: &Dingdang, sandbox: &DingdangSandbox, kind: SampleKind, fen: i64) {
        let n = round_trip(provider, sandbox, kind, fen);
        // A refund notice carries the refunded amount as its amount too.
        assert_eq!(n.amount, AmountFen::from_fen(fen).unwrap());
    }

    #[test]
    fn hmac_sandbox_round_trips() {
        for kind in [SampleKind::Payment, SampleKind::Refund] {
            check_round_trip(&hmac_provider(), &hmac_sandbox(), kind, 12_345);
        }
    }

    #[test]
    fn rsa_sandbox_round_trips() {
        let (provider, sandbox) = (rsa_provider(), rsa_sandbox());
        for kind in [SampleKind::Payment, SampleKind::Refund] {
            check_round_trip(&provider, &sandbox, kind, 12_345);
        }
        // Each scheme refuses the other's notices.
        schemes_refuse_each_other((&provider, &sandbox), (&hmac_provider(), &hmac_sandbox()));
    }

    /// One RSA-signed sample, signed once: the `rsa` crate is slow in debug builds.
    fn rsa_signed_sample() -> &'static (SignedRequest, DateTime<Utc>) {
        static SIGNED: OnceLock<(SignedRequest, DateTime<Utc>)> = OnceLock::new();
        SIGNED.get_or_init(|| {
            let spec = sample_spec(SampleKind::Refund, 500);
            (rsa_sandbox().sign_sample(&spec).unwrap(), spec.now)
        })
    }

    fn rsa_provider_shared() -> &'static Dingdang {
        static PROVIDER: OnceLock<Dingdang> = OnceLock::new();
        PROVIDER.get_or_init(rsa_provider)
    }

    fn authorization_strategy() -> impl Strategy<Value = String> {
        let params = "[ -~]{0,200}";
        prop_oneof![
            "\\PC{0,80}",
            "[ -~]{0,120}",
            params.prop_map(|s| format!("{HMAC_SCHEME} {s}")),
            params.prop_map(|s| format!("{RSA2_SCHEME} {s}")),
            ("[0-9TZ]{0,20}", "[0-9a-fA-F]{0,70}", "[ =,]{0,4}")
                .prop_map(|(d, s, sep)| format!("{HMAC_SCHEME} Datetime{sep}={d},{sep}Signature={s}")),
            ("[0-9TZ]{0,20}", "[A-Za-z0-9+/=]{0,400}")
                .prop_map(|(d, s)| format!("{RSA2_SCHEME} Datetime={d}, Signature={s}")),
        ]
    }

    fn json_value_strategy() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "[0-9]{0,25}".prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::from),
            prop::sample::select(vec!["SUCCESS", "FAIL", "PROCESSING", "X"]).prop_map(Value::from),
        ]
    }

    fn json_body_strategy() -> impl Strategy<Value = Vec<u8>> {
        let keys = [
            "domainId",
            "skillId",
            "transactionId",
            "tradeNo",
            "totalAmt",
            "nonceStr",
            "refundTransactionId",
            "refundTradeNo",
            "refundAmt",
            "refundStatus",
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
        fn any_changed_byte_is_refused_hmac(index in 0usize..4096, flip in 1u8..=255, refund in any::<bool>()) {
            let kind = if refund { SampleKind::Refund } else { SampleKind::Payment };
            let spec = sample_spec(kind, 500);
            let signed = hmac_sandbox().sign_sample(&spec).unwrap();
            prop_assert!(changed_byte_is_refused(&hmac_provider(), &signed, spec.now, index, flip));
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
            let signed = hmac_sandbox().sign_sample(&spec).unwrap();
            let (headers, body) = request_of(&signed);
            let n = verify_and_parse(&hmac_provider(), &headers, &body, spec.now).unwrap();
            prop_assert_eq!(n.amount.fen(), fen);
            if refund {
                prop_assert_eq!(n.refund_amount.map(AmountFen::fen), Some(fen));
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
            let _ = hmac_provider().verify(&req, Utc::now());
            let _ = rsa_provider_shared().verify(&req, Utc::now());
            let _ = hmac_provider().parse(&req);
        }

        #[test]
        fn never_panics_on_json(
            body in json_body_strategy(),
            auth in proptest::option::of(authorization_strategy()),
        ) {
            let mut headers = HeaderMap::new();
            if let Some(value) = auth.and_then(|a| HeaderValue::from_str(&a).ok()) {
                headers.insert("authorization", value);
            }
            let req = RawRequest::new(&headers, &body);
            let _ = hmac_provider().parse(&req);
        }
    }
}
