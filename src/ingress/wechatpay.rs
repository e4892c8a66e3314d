//! 微信支付 API v3 notifications (payment and refund results): a JSON
//! envelope signed SHA256withRSA over `timestamp\nnonce\nbody\n`, with the
//! key chosen by `Wechatpay-Serial` (a platform certificate's serial, or the
//! WeChat Pay public key's id), and the notice itself in `resource`,
//! AES-256-GCM encrypted with the merchant's APIv3 key.

use super::fuzz::{Assisted, FuzzTarget, Split};
use std::path::PathBuf;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::common::rsa_keys::{decode_base64_lenient, KeyError};
use super::common::{RsaAlgorithm, RsaPublicKey, RsaSigningKey};
use super::dryad::within_skew;
use super::json::{object_body, opt_str, req_str};
use super::module::{sandbox_key, BenchMode, ProviderModule, SandboxAccount, MIN_RSA_BITS};
use super::provider::{
    Answer, Dialect, Provider, RawRequest, Rejection, SampleKind, SampleSigner, SampleSpec, SignError,
    SignedRequest, Verified, Worded,
};
use super::registry::AccountErrorKind;
use crate::config::{AccountCx, ConfigError, Secret, SecretKeys};
use crate::domain::{AmountFen, EventType, Notification, ProviderKind};
use crate::key_list::KeyList;

/// The only signature type payhook verifies (an SM2 type is refused).
const SIGNATURE_TYPE: &str = "WECHATPAY2-SHA256-RSA2048";
/// The prefix of a WeChat Pay public key's id, as `Wechatpay-Serial` sends it.
const PUBLIC_KEY_ID_PREFIX: &str = "PUB_KEY_ID_";
/// An APIv3 key is 32 bytes: the AES-256 key itself.
const APIV3_KEY_BYTES: usize = 32;

/// What `Wechatpay-Serial` names a key by.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Serial {
    /// A platform certificate's serial: upper-case hex, no leading zeros.
    Certificate(String),
    /// A WeChat Pay public key's id (`PUB_KEY_ID_…`), compared exactly.
    PublicKeyId(String),
}

impl Serial {
    /// The serial a header names: a public key id as it is, a certificate
    /// serial normalised (hex, case and leading zeros ignored).
    fn of_header(text: &str) -> Option<Self> {
        if text.starts_with(PUBLIC_KEY_ID_PREFIX) {
            return Some(Serial::PublicKeyId(text.to_owned()));
        }
        certificate_serial(text).map(Serial::Certificate)
    }
}

/// A certificate serial written as hex, normalised: upper case, no leading
/// zeros; `None` if it is not hex.
fn certificate_serial(hex_text: &str) -> Option<String> {
    if hex_text.is_empty() || hex_text.len() > 128 || !hex_text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let trimmed = hex_text.trim_start_matches('0');
    Some(if trimmed.is_empty() { "0" } else { trimmed }.to_ascii_uppercase())
}

/// Verifies one merchant's WeChat Pay notices.
pub struct Wechatpay {
    /// The platform's keys, each with the serial it is chosen by.
    keys: Vec<(Serial, RsaPublicKey)>,
    /// The APIv3 key, or each of them while it is rotated.
    apiv3_keys: KeyList<LessSafeKey>,
    mch_id: String,
    sub_mch_id: Option<String>,
    max_clock_skew: Duration,
}

/// The notice's signed headers, each given once.
struct Signed<'a> {
    timestamp: &'a str,
    nonce: &'a str,
    signature: &'a str,
    serial: &'a str,
}

/// A header's value, refusing one given twice: which copy was signed would
/// be ambiguous.
fn single_header<'a>(req: &RawRequest<'a>, name: &str) -> Result<Option<&'a str>, Rejection> {
    let mut values = req.headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Rejection::BadSignature("a Wechatpay header is given twice"));
    }
    Ok(first.and_then(|v| v.to_str().ok()))
}

fn signed_headers<'a>(req: &RawRequest<'a>) -> Result<Signed<'a>, Rejection> {
    let missing = Rejection::BadSignature(
        "missing Wechatpay-Timestamp, Wechatpay-Nonce, Wechatpay-Signature or Wechatpay-Serial",
    );
    let (Some(timestamp), Some(nonce), Some(signature), Some(serial)) = (
        single_header(req, "wechatpay-timestamp")?,
        single_header(req, "wechatpay-nonce")?,
        single_header(req, "wechatpay-signature")?,
        single_header(req, "wechatpay-serial")?,
    ) else {
        return Err(missing);
    };
    match single_header(req, "wechatpay-signature-type")? {
        None | Some(SIGNATURE_TYPE) => {}
        Some(_) => return Err(Rejection::BadSignature("unsupported Wechatpay-Signature-Type")),
    }
    if timestamp.is_empty() || timestamp.len() > 12 || !timestamp.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::BadSignature(
            "Wechatpay-Timestamp is not epoch seconds",
        ));
    }
    Ok(Signed {
        timestamp,
        nonce,
        signature,
        serial,
    })
}

impl Wechatpay {
    fn key_for(&self, serial: &str) -> Option<&RsaPublicKey> {
        let serial = Serial::of_header(serial)?;
        self.keys.iter().find(|(s, _)| *s == serial).map(|(_, key)| key)
    }

    /// The signature over `timestamp\nnonce\nbody\n`, with the key the serial
    /// names; then freshness.
    fn check_signature(&self, req: &RawRequest<'_>, now: DateTime<Utc>) -> Result<(), Rejection> {
        let signed = signed_headers(req)?;
        let key = self.key_for(signed.serial).ok_or(Rejection::BadSignature(
            "Wechatpay-Serial names no key of this account",
        ))?;
        let mut message =
            Vec::with_capacity(signed.timestamp.len() + signed.nonce.len() + req.body.len() + 3);
        for part in [signed.timestamp.as_bytes(), signed.nonce.as_bytes(), req.body] {
            message.extend_from_slice(part);
            message.push(b'\n');
        }
        if !key.verify_base64(RsaAlgorithm::Sha256, &message, signed.signature) {
            return Err(Rejection::BadSignature("signature does not match"));
        }
        let signed_at = signed
            .timestamp
            .parse::<i64>()
            .ok()
            .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
            .ok_or(Rejection::Stale("Wechatpay-Timestamp is out of range"))?;
        if !within_skew(signed_at, now, self.max_clock_skew) {
            return Err(Rejection::Stale("timestamp outside the allowed clock skew"));
        }
        Ok(())
    }

    /// Decrypts `resource` with the APIv3 key (any of them while it is
    /// rotated). A tag that fails is a forgery or the wrong key.
    fn decrypt(&self, resource: &Map<String, Value>) -> Result<Map<String, Value>, Rejection> {
        if opt_str(resource, "algorithm")? != Some("AEAD_AES_256_GCM") {
            return Err(Rejection::BadRequest(
                "resource.algorithm is not AEAD_AES_256_GCM",
            ));
        }
        let sealed = decode_base64_lenient(req_str(resource, "ciphertext")?)
            .ok_or(Rejection::BadRequest("resource.ciphertext is not base64"))?;
        let nonce: [u8; 12] = req_str(resource, "nonce")?
            .as_bytes()
            .try_into()
            .map_err(|_| Rejection::BadRequest("resource.nonce is not 12 bytes"))?;
        let aad = opt_str(resource, "associated_data")?.unwrap_or("");
        // Opened in place: the last key on the buffer itself, earlier ones
        // (a key being changed) on a copy each.
        let mut sealed = sealed;
        let count = self.apiv3_keys.len();
        let mut plain_len = None;
        for (i, key) in self.apiv3_keys.iter().enumerate() {
            let nonce = Nonce::assume_unique_for_key(nonce);
            let aad = Aad::from(aad.as_bytes());
            if i + 1 == count {
                plain_len = key.open_in_place(nonce, aad, &mut sealed).ok().map(|p| p.len());
            } else {
                let mut copy = sealed.clone();
                if let Ok(plain) = key.open_in_place(nonce, aad, &mut copy) {
                    plain_len = Some(plain.len());
                    sealed = copy;
                    break;
                }
            }
        }
        let plain = match plain_len {
            Some(len) => &sealed[..len],
            None => {
                return Err(Rejection::BadSignature(
                    "resource does not decrypt with the APIv3 key (forged, or the key was changed)",
                ))
            }
        };
        object_body(plain).map_err(|_| Rejection::BadRequest("decrypted resource is not a JSON object"))
    }

    /// The notice's signed merchant fields against this account's.
    fn bind(&self, notice: &Map<String, Value>) -> Result<(), Rejection> {
        let (field, merchant) = match opt_str(notice, "sp_mchid")? {
            Some(sp) => ("sp_mchid", Some(sp)),
            None => ("mchid", opt_str(notice, "mchid")?),
        };
        if merchant != Some(self.mch_id.as_str()) {
            return Err(Rejection::WrongAccount(field));
        }
        if let Some(sub) = &self.sub_mch_id {
            if opt_str(notice, "sub_mchid")? != Some(sub.as_str()) {
                return Err(Rejection::WrongAccount("sub_mchid"));
            }
        }
        Ok(())
    }
}

/// `amount.<key>`: fen, a JSON integer.
fn fen_in(amount: Option<&Map<String, Value>>, key: &'static str) -> Result<Option<AmountFen>, Rejection> {
    match amount.and_then(|a| a.get(key)) {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Number(_)) => AmountFen::from_json_fen(v)
            .map(Some)
            .map_err(|_| Rejection::BadRequest("an amount is invalid")),
        Some(_) => Err(Rejection::BadRequest("an amount is not a JSON integer")),
    }
}

fn object_in<'a>(
    map: &'a Map<String, Value>,
    key: &'static str,
) -> Result<Option<&'a Map<String, Value>>, Rejection> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(inner)) => Ok(Some(inner)),
        Some(_) => Err(Rejection::BadRequest("a field is not a JSON object")),
    }
}

fn rfc3339(text: Option<&str>) -> Result<Option<DateTime<Utc>>, Rejection> {
    text.map(|t| {
        DateTime::parse_from_rfc3339(t)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| Rejection::BadRequest("a time is not RFC 3339"))
    })
    .transpose()
}

/// The normalized notification of a decrypted notice.
fn notification_of(
    event_type_text: &str,
    envelope: &Map<String, Value>,
    notice: &Map<String, Value>,
) -> Result<Notification, Rejection> {
    let amount = object_in(notice, "amount")?;
    let total = fen_in(amount, "total")?;
    let event_type = match event_type_text {
        "TRANSACTION.SUCCESS" => EventType::PaymentSucceeded,
        "REFUND.SUCCESS" => EventType::RefundSucceeded,
        "REFUND.ABNORMAL" | "REFUND.CLOSED" => EventType::RefundFailed,
        _ => EventType::PaymentUnknown,
    };
    let refund = matches!(event_type, EventType::RefundSucceeded | EventType::RefundFailed);
    let trade_no = match event_type {
        EventType::PaymentUnknown => opt_str(notice, "transaction_id")?
            .or(opt_str(envelope, "id")?)
            .ok_or(Rejection::BadRequest("missing id"))?,
        _ => req_str(notice, "transaction_id")?,
    };
    let total = match (event_type, total) {
        (_, Some(total)) => total,
        (EventType::PaymentUnknown, None) => AmountFen::ZERO,
        _ => return Err(Rejection::BadRequest("missing amount.total")),
    };
    let mut n = Notification::new(event_type, trade_no.to_owned(), total);
    n.merchant_order_no = opt_str(notice, "out_trade_no")?.map(str::to_owned);
    n.occurred_at = rfc3339(opt_str(notice, "success_time")?)?;
    if refund {
        let refund_no = req_str(notice, "out_refund_no")?;
        n.refund_no = Some(refund_no.to_owned());
        n.refund_amount = fen_in(amount, "refund")?;
        n.dedup_extra = format!("{refund_no}:{}", opt_str(notice, "refund_status")?.unwrap_or(""));
        if n.occurred_at.is_none() {
            n.occurred_at = rfc3339(opt_str(envelope, "create_time")?)?;
        }
    } else {
        n.channel = opt_str(notice, "trade_type")?.map(str::to_owned);
        n.business_params = opt_str(notice, "attach")?.map(str::to_owned);
        if let Some(currency) = amount.map(|a| opt_str(a, "currency")).transpose()?.flatten() {
            n.currency = currency.to_owned();
        }
    }
    Ok(n)
}

impl Provider for Wechatpay {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Wechatpay
    }

    fn verify(&self, req: &RawRequest<'_>, now: DateTime<Utc>) -> Result<Verified, Rejection> {
        self.check_signature(req, now)?;
        Ok(Verified::default())
    }

    fn parse(&self, req: &RawRequest<'_>) -> Result<Notification, Rejection> {
        let mut envelope = object_body(req.body)?;
        let event_type = req_str(&envelope, "event_type")?.to_owned();
        req_str(&envelope, "id")?;
        let resource = object_in(&envelope, "resource")?.ok_or(Rejection::BadRequest("missing resource"))?;
        let notice = self.decrypt(resource)?;
        self.bind(&notice)?;
        let mut n = notification_of(&event_type, &envelope, &notice)?;
        // The envelope, with its resource decrypted: the ciphertext is in
        // the stored raw body already, and would only double the event.
        envelope.insert("resource".into(), Value::Object(notice));
        n.raw = Value::Object(envelope);
        Ok(n)
    }

    fn signature_headers(&self) -> &'static [&'static str] {
        &[
            "wechatpay-timestamp",
            "wechatpay-nonce",
            "wechatpay-signature",
            "wechatpay-serial",
            "wechatpay-signature-type",
        ]
    }

    fn dialect(&self) -> Dialect {
        Dialect::Own(answer)
    }
}

/// WeChat Pay's words: 204 with no body when the notice is taken (WeChat
/// retries any other 2xx with a body it cannot read as success), else
/// `{"code":"FAIL","message":…}` with the outcome's status.
fn answer(answer: &Answer) -> Worded {
    if answer.ok {
        return Worded {
            status: StatusCode::NO_CONTENT,
            content_type: None,
            body: String::new(),
        };
    }
    let body = serde_json::json!({ "code": "FAIL", "message": answer.reason });
    Worded::text(answer.status, "application/json", body.to_string())
}

// ---------------------------------------------------------------------------
// The sandbox: signs sample notices as WeChat Pay would.

/// Signs and encrypts sample notices for one merchant.
pub struct WechatpaySandbox {
    key: RsaSigningKey,
    /// The serial the sandbox signs under: the public key's id, or the first
    /// certificate's serial.
    serial: String,
    apiv3_key: Vec<u8>,
    mch_id: String,
    sub_mch_id: Option<String>,
}

impl WechatpaySandbox {
    pub fn new(key: RsaSigningKey, serial: String, apiv3_key: Vec<u8>, mch_id: String) -> Self {
        Self {
            key,
            serial,
            apiv3_key,
            mch_id,
            sub_mch_id: None,
        }
    }

    fn plaintext(&self, spec: &SampleSpec) -> Value {
        let time = (spec.now + chrono::Duration::hours(8))
            .format("%Y-%m-%dT%H:%M:%S+08:00")
            .to_string();
        let mut notice = serde_json::json!({
            "mchid": self.mch_id,
            "appid": "wxd678efh567hg6787",
            "out_trade_no": spec.merchant_order_no,
            "transaction_id": spec.trade_no,
            "success_time": time,
        });
        if let Some(sub) = &self.sub_mch_id {
            notice["sp_mchid"] = Value::from(self.mch_id.clone());
            notice["sub_mchid"] = Value::from(sub.clone());
            if let Some(map) = notice.as_object_mut() {
                map.remove("mchid");
            }
        }
        match spec.kind {
            SampleKind::Payment => {
                notice["trade_type"] = Value::from("JSAPI");
                notice["trade_state"] = Value::from("SUCCESS");
                notice["attach"] = Value::from("payhook sample");
                notice["amount"] = serde_json::json!({
                    "total": spec.amount.fen(), "payer_total": spec.amount.fen(),
                    "currency": "CNY", "payer_currency": "CNY",
                });
            }
            SampleKind::Refund => {
                notice["out_refund_no"] = Value::from(format!("RF{}", spec.trade_no));
                notice["refund_id"] = Value::from(format!("50{}", spec.trade_no));
                notice["refund_status"] = Value::from("SUCCESS");
                notice["amount"] = serde_json::json!({
                    "total": spec.amount.fen(), "refund": spec.amount.fen(),
                    "payer_total": spec.amount.fen(), "payer_refund": spec.amount.fen(),
                });
            }
        }
        notice
    }

    fn seal(&self, plaintext: &[u8], nonce: &[u8; 12], aad: &str) -> Result<Vec<u8>, SignError> {
        let key = UnboundKey::new(&AES_256_GCM, &self.apiv3_key)
            .map_err(|_| SignError::Crypto("the APIv3 key is not 32 bytes".into()))?;
        let mut buffer = plaintext.to_vec();
        LessSafeKey::new(key)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad.as_bytes()),
                &mut buffer,
            )
            .map_err(|_| SignError::Crypto("AES-GCM sealing failed".into()))?;
        Ok(buffer)
    }
}

/// Twelve random letters and digits, as WeChat writes `resource.nonce`.
fn random_alnum<const N: usize>() -> [u8; N] {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    std::array::from_fn(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())])
}

impl SampleSigner for WechatpaySandbox {
    fn sign_sample(&self, spec: &SampleSpec) -> Result<SignedRequest, SignError> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let plaintext =
            serde_json::to_vec(&self.plaintext(spec)).map_err(|e| SignError::Crypto(e.to_string()))?;
        let (event_type, aad, summary) = match spec.kind {
            SampleKind::Payment => ("TRANSACTION.SUCCESS", "transaction", "支付成功"),
            SampleKind::Refund => ("REFUND.SUCCESS", "refund", "退款成功"),
        };
        let nonce = random_alnum::<12>();
        let ciphertext = self.seal(&plaintext, &nonce, aad)?;
        let envelope = serde_json::json!({
            "id": ulid::Ulid::new().to_string(),
            "create_time": (spec.now + chrono::Duration::hours(8)).format("%Y-%m-%dT%H:%M:%S+08:00").to_string(),
            "resource_type": "encrypt-resource",
            "event_type": event_type,
            "summary": summary,
            "resource": {
                "original_type": aad,
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": b64.encode(ciphertext),
                "associated_data": aad,
                "nonce": String::from_utf8_lossy(&nonce),
            },
        });
        let body = serde_json::to_vec(&envelope).map_err(|e| SignError::Crypto(e.to_string()))?;
        let timestamp = spec.now.timestamp().to_string();
        let header_nonce = String::from_utf8_lossy(&random_alnum::<32>()).into_owned();
        let mut message = format!("{timestamp}\n{header_nonce}\n").into_bytes();
        message.extend_from_slice(&body);
        message.push(b'\n');
        let mut signature = self
            .key
            .sign(RsaAlgorithm::Sha256, &message)
            .map_err(|e| SignError::Crypto(e.to_string()))?;
        if spec.forge {
            if let Some(byte) = signature.first_mut() {
                *byte ^= 1;
            }
        }
        Ok(SignedRequest {
            content_type: "application/json",
            headers: vec![
                ("Wechatpay-Timestamp".into(), timestamp),
                ("Wechatpay-Nonce".into(), header_nonce),
                ("Wechatpay-Signature".into(), b64.encode(signature)),
                ("Wechatpay-Serial".into(), self.serial.clone()),
                ("Wechatpay-Signature-Type".into(), SIGNATURE_TYPE.into()),
            ],
            body,
        })
    }
}

/// The `wechatpay` fuzz target's assist: header 1 is the envelope's
/// `event_type` and the body is the resource's plaintext, which the harness
/// seals with the target's (test) APIv3 key into an envelope, so that
/// mutations reach the decrypted notice's binding and parsing (`parse` runs
/// whatever `verify` says).
fn fuzz_assist(s: &Split<'_>) -> Assisted {
    use base64::Engine;
    let event_type = String::from_utf8_lossy(s.headers[0].unwrap_or(b"TRANSACTION.SUCCESS"));
    let mut sealed = s.body.to_vec();
    let key = UnboundKey::new(&AES_256_GCM, b"Wx3TestApiV3Key0123456789abcdefG").map(LessSafeKey::new);
    let nonce = Nonce::assume_unique_for_key(*b"fuzz-nonce-1");
    if let Ok(key) = key {
        let _ = key.seal_in_place_append_tag(nonce, Aad::from(b"transaction"), &mut sealed);
    }
    let envelope = serde_json::json!({
        "id": "fuzz", "create_time": "2026-01-15T14:30:00+08:00", "event_type": event_type,
        "resource_type": "encrypt-resource",
        "resource": {
            "algorithm": "AEAD_AES_256_GCM", "associated_data": "transaction", "nonce": "fuzz-nonce-1",
            "ciphertext": base64::engine::general_purpose::STANDARD.encode(sealed),
        },
    });
    Assisted {
        headers: axum::http::HeaderMap::new(),
        body: serde_json::to_vec(&envelope).unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------
// The module's parts: its `[[accounts]]` section, and what is built from it.

/// A WeChat Pay account's `[[accounts]]` keys, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatpayFile {
    mch_id: Option<String>,
    sub_mch_id: Option<String>,
    apiv3_key: Option<String>,
    apiv3_key_env: Option<String>,
    apiv3_key_file: Option<PathBuf>,
    apiv3_keys: Option<Vec<toml::Value>>,
    platform_certificate_files: Option<Vec<PathBuf>>,
    wechatpay_public_key_id: Option<String>,
    wechatpay_public_key_file: Option<PathBuf>,
    max_clock_skew: Option<String>,
    sandbox_private_key_file: Option<PathBuf>,
}

/// A WeChat Pay account's settings.
#[derive(Debug, Clone)]
pub struct WechatpaySettings {
    pub mch_id: String,
    pub sub_mch_id: Option<String>,
    /// The APIv3 key (32 bytes), or each of them while it is rotated.
    pub apiv3_keys: KeyList<Secret>,
    /// Platform-certificate mode: each file's key, for its serial.
    pub platform_certificate_files: Vec<PathBuf>,
    /// Public-key mode: the key's id and file.
    pub public_key: Option<(String, PathBuf)>,
    pub max_clock_skew: Duration,
    pub sandbox_private_key_file: Option<PathBuf>,
}

impl WechatpayFile {
    /// `wechatpay_public_key_id` with `wechatpay_public_key_file`, both or
    /// neither.
    fn public_key(&mut self, cx: &AccountCx<'_>) -> Result<Option<(String, PathBuf)>, ConfigError> {
        match (
            self.wechatpay_public_key_id.take(),
            self.wechatpay_public_key_file.take(),
        ) {
            (None, None) => Ok(None),
            (Some(id), Some(file)) if id.starts_with(PUBLIC_KEY_ID_PREFIX) => Ok(Some((id, cx.path(file)))),
            (Some(_), Some(_)) => Err(cx.invalid(
                "wechatpay_public_key_id",
                "must be the key's id as WeChat Pay shows it (PUB_KEY_ID_…)",
            )),
            (Some(_), None) => Err(cx.invalid(
                "wechatpay_public_key_file",
                "required with wechatpay_public_key_id",
            )),
            (None, Some(_)) => Err(cx.invalid(
                "wechatpay_public_key_id",
                "required with wechatpay_public_key_file",
            )),
        }
    }
}

/// The keys an account verifies with: each platform certificate's, for its
/// serial, and the public key's, for its id.
fn load_platform_keys(s: &WechatpaySettings) -> Result<Vec<(Serial, RsaPublicKey)>, AccountErrorKind> {
    let mut keys = Vec::new();
    for path in &s.platform_certificate_files {
        let what = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: what.clone(),
            source,
        })?;
        let serial = serial_of_certificate(&bytes).ok_or_else(|| KeyError::Unrecognized(what.clone()))?;
        keys.push((
            Serial::Certificate(serial),
            RsaPublicKey::from_bytes(&bytes, &what, MIN_RSA_BITS)?,
        ));
    }
    if let Some((id, path)) = &s.public_key {
        keys.push((
            Serial::PublicKeyId(id.clone()),
            RsaPublicKey::load(path, MIN_RSA_BITS)?,
        ));
    }
    Ok(keys)
}

/// A PEM (or DER) X.509 certificate's serial, normalised as
/// [`certificate_serial`] does.
fn serial_of_certificate(bytes: &[u8]) -> Option<String> {
    use x509_cert::der::Decode;
    let der = match std::str::from_utf8(bytes)
        .ok()
        .and_then(|t| t.find("-----BEGIN").map(|i| &t[i..]))
    {
        Some(pem) => pem_rfc7468::decode_vec(pem.as_bytes()).ok()?.1,
        None => bytes.to_vec(),
    };
    let cert = x509_cert::Certificate::from_der(&der).ok()?;
    certificate_serial(&hex::encode(cert.tbs_certificate.serial_number.as_bytes()))
}

fn aes_key(secret: &Secret) -> Result<LessSafeKey, AccountErrorKind> {
    // The length was checked when the config was read.
    UnboundKey::new(&AES_256_GCM, secret.expose().as_bytes())
        .map(LessSafeKey::new)
        .map_err(|_| AccountErrorKind::Key(KeyError::Unrecognized("apiv3_key".into())))
}

impl ProviderModule for Wechatpay {
    const DISPLAY_NAME: &'static str = "WeChat Pay";
    const BENCH: &'static [BenchMode] = &[BenchMode {
        name: "wechatpay",
        help: "WeChat Pay v3: SHA256withRSA (RSA-2048) and AES-256-GCM",
        id: "bench-wechatpay",
        account: "provider = \"wechatpay\"\nmch_id = \"1900000109\"\n\
                  apiv3_key = \"bench-apiv3-key-0123456789abcdef\"\n\
                  wechatpay_public_key_id = \"PUB_KEY_ID_0000000000000000000000000000BENCH\"\n\
                  wechatpay_public_key_file = {public}\nsandbox_private_key_file = {private}\n",
    }];
    const SANDBOX: &'static [SandboxAccount] = &[SandboxAccount {
        id: "wechatpay-sandbox",
        account: "provider = \"wechatpay\"\nmch_id = \"1900000109\"\n\
                  apiv3_key = \"Wx3TestApiV3Key0123456789abcdefG\"\n\
                  platform_certificate_files = [\"wechatpay_platform_cert.pem\"]\n\
                  sandbox_private_key_file = \"wechatpay_platform_sandbox_priv.pem\"\n",
    }];
    const SANDBOX_KEYS: &'static [(&'static str, &'static str)] = &[
        (
            "wechatpay_platform_cert.pem",
            include_str!("../../sandbox-keys/wechatpay_platform_cert.pem"),
        ),
        (
            "wechatpay_platform_sandbox_priv.pem",
            include_str!("../../sandbox-keys/wechatpay_platform_sandbox_priv.pem"),
        ),
    ];
    const FUZZ: &'static [FuzzTarget] = &[FuzzTarget {
        name: "wechatpay",
        account: "provider = \"wechatpay\"\nmch_id = \"1900000109\"\napiv3_key = \"Wx3TestApiV3Key0123456789abcdefG\"\n\
                  platform_certificate_files = [\"wechatpay_platform_cert.pem\"]\nmax_clock_skew = \"300s\"\n",
        headers: &[
            "wechatpay-timestamp",
            "wechatpay-nonce",
            "wechatpay-signature",
            "wechatpay-serial",
        ],
        assist: Some(fuzz_assist),
    }];
    type File = WechatpayFile;
    type Settings = WechatpaySettings;

    fn settings(mut f: WechatpayFile, cx: &AccountCx<'_>) -> Result<WechatpaySettings, ConfigError> {
        let mch_id = cx.required_text("mch_id", f.mch_id.take(), "the notices' mchid (sp_mchid)")?;
        let apiv3_keys = cx
            .secrets(
                "apiv3_key",
                SecretKeys {
                    inline: f.apiv3_key.take(),
                    env: f.apiv3_key_env.take(),
                    file: f.apiv3_key_file.take(),
                    list: f.apiv3_keys.take(),
                },
            )?
            .ok_or_else(|| cx.invalid("apiv3_key", "required: the APIv3 key (32 bytes)"))?;
        if let Some(bad) = apiv3_keys.iter().find(|k| k.expose().len() != APIV3_KEY_BYTES) {
            let given = bad.expose().len();
            return Err(cx.invalid("apiv3_key", format!("must be exactly 32 bytes, not {given}")));
        }
        let public_key = f.public_key(cx)?;
        let platform_certificate_files: Vec<PathBuf> = f
            .platform_certificate_files
            .take()
            .unwrap_or_default()
            .into_iter()
            .map(|p| cx.path(p))
            .collect();
        if platform_certificate_files.is_empty() && public_key.is_none() {
            return Err(cx.invalid(
                "platform_certificate_files",
                "required: the platform certificates, or wechatpay_public_key_id with \
                 wechatpay_public_key_file (either or both)",
            ));
        }
        Ok(WechatpaySettings {
            mch_id,
            sub_mch_id: f.sub_mch_id.filter(|s| !s.is_empty()),
            apiv3_keys,
            platform_certificate_files,
            public_key,
            max_clock_skew: cx.duration("max_clock_skew", f.max_clock_skew.as_deref(), "300s")?,
            sandbox_private_key_file: f.sandbox_private_key_file.map(|p| cx.path(p)),
        })
    }

    fn build(s: &WechatpaySettings) -> Result<Self, AccountErrorKind> {
        Ok(Wechatpay {
            keys: load_platform_keys(s)?,
            apiv3_keys: s.apiv3_keys.try_map(aes_key)?,
            mch_id: s.mch_id.clone(),
            sub_mch_id: s.sub_mch_id.clone(),
            max_clock_skew: s.max_clock_skew,
        })
    }

    fn sandbox(s: &WechatpaySettings) -> Result<Box<dyn SampleSigner>, AccountErrorKind> {
        let key = sandbox_key(&s.sandbox_private_key_file)?;
        let serial = match (&s.public_key, load_platform_keys(s)?.first()) {
            (Some((id, _)), _) => id.clone(),
            (None, Some((Serial::Certificate(serial), _))) => serial.clone(),
            _ => return Err(AccountErrorKind::NoSandboxKey),
        };
        let mut sandbox = WechatpaySandbox::new(
            key,
            serial,
            s.apiv3_keys.first().expose().as_bytes().to_vec(),
            s.mch_id.clone(),
        );
        sandbox.sub_mch_id = s.sub_mch_id.clone();
        Ok(Box::new(sandbox))
    }

    fn merchant(s: &WechatpaySettings) -> Option<(&'static str, String)> {
        Some(match &s.sub_mch_id {
            Some(sub) => ("mch_id", format!("{}/{sub}", s.mch_id)),
            None => ("mch_id", s.mch_id.clone()),
        })
    }

    fn bench_mode(_: &WechatpaySettings) -> Option<&'static str> {
        Some("wechatpay")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use axum::http::{HeaderMap, HeaderValue};
    use base64::Engine;
    use proptest::prelude::*;

    use super::*;
    use crate::config::Config;
    use crate::ingress::registry::{build_accounts, ProviderSettings};
    use crate::ingress::tests_support::{
        changed_byte_is_refused, check_shared_vectors_with, request_of, round_trip, sample_spec, vectors_dir,
        verify_and_parse,
    };

    const CERT_SERIAL: &str = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1";
    const APIV3_KEY: &str = "Wx3TestApiV3Key0123456789abcdefG";

    /// The settings of an `[[accounts]]` table (keys below the vectors folder).
    fn settings_of(toml_text: &str) -> Result<WechatpaySettings, ConfigError> {
        let config = Config::from_toml_str(toml_text, &vectors_dir(), &|_: &str| None)?;
        match config.accounts.into_iter().next().map(|a| a.settings) {
            Some(ProviderSettings::Wechatpay(s)) => Ok(s),
            other => panic!("not a wechatpay account: {other:?}"),
        }
    }

    fn account_toml(mch_id: &str, extra: &str) -> String {
        format!(
            "[[accounts]]\nid = \"wx\"\nprovider = \"wechatpay\"\nmch_id = \"{mch_id}\"\n\
             apiv3_key = \"{APIV3_KEY}\"\n\
             platform_certificate_files = [\"keys/wechatpay_platform_cert.pem\"]\n\
             sandbox_private_key_file = \"keys/wechatpay_platform_sandbox_priv.pem\"\n{extra}"
        )
    }

    /// A vector's account, through the config and the module, as the relay
    /// builds it.
    fn from_vector_account(account: &Value) -> Wechatpay {
        let mut text = String::from("[[accounts]]\n");
        for (k, v) in account.as_object().unwrap() {
            text.push_str(&format!("{k} = {v}\n"));
        }
        Wechatpay::build(&settings_of(&text).unwrap()).unwrap()
    }

    fn merchant(mch_id: &str, extra: &str) -> (Wechatpay, Box<dyn SampleSigner>) {
        let s = settings_of(&account_toml(mch_id, extra)).unwrap();
        (Wechatpay::build(&s).unwrap(), Wechatpay::sandbox(&s).unwrap())
    }

    fn main_merchant() -> &'static (Wechatpay, Box<dyn SampleSigner>) {
        static MAIN: OnceLock<(Wechatpay, Box<dyn SampleSigner>)> = OnceLock::new();
        MAIN.get_or_init(|| merchant("1900000109", ""))
    }

    #[test]
    fn every_vector_passes() {
        let checked = check_shared_vectors_with("wechatpay", from_vector_account, |v, accepted| {
            if let Some(n) = accepted {
                // `raw` keeps the envelope and what its resource decrypts to.
                assert_eq!(
                    n.raw["id"],
                    v["request"]["body"]
                        .as_str()
                        .map(|b| serde_json::from_str::<Value>(b).unwrap()["id"].clone())
                        .unwrap()
                );
                assert!(n.raw["resource"]["transaction_id"].is_string(), "{}", v["name"]);
                assert!(n.raw["resource"].get("ciphertext").is_none(), "{}", v["name"]);
            }
        });
        assert!(checked >= 14, "{checked} wechatpay vectors");
    }

    #[test]
    fn samples_round_trip_and_forgeries_are_refused() {
        let (provider, sandbox) = main_merchant();
        let paid = round_trip(provider, sandbox.as_ref(), SampleKind::Payment, 10001);
        assert_eq!(paid.channel.as_deref(), Some("JSAPI"));
        assert_eq!(paid.dedup_extra, "");
        let refund = round_trip(provider, sandbox.as_ref(), SampleKind::Refund, 2500);
        assert_eq!(refund.refund_amount.map(AmountFen::fen), Some(2500));
        assert_eq!(refund.refunded_total, None);
        assert!(refund.dedup_extra.ends_with(":SUCCESS"), "{}", refund.dedup_extra);
    }

    #[test]
    fn a_retry_is_the_same_notice() {
        // WeChat retries with a new timestamp, nonce and envelope id, and the
        // same transaction: one identity, so the store answers a duplicate.
        let (provider, sandbox) = main_merchant();
        let spec = sample_spec(SampleKind::Payment, 100);
        let mut later = spec.clone();
        later.now += chrono::Duration::seconds(15);
        let first = request_of(&sandbox.sign_sample(&spec).unwrap());
        let retry = request_of(&sandbox.sign_sample(&later).unwrap());
        assert_ne!(first.1, retry.1);
        let a = verify_and_parse(provider, &first.0, &first.1, spec.now).unwrap();
        let b = verify_and_parse(provider, &retry.0, &retry.1, later.now).unwrap();
        assert_eq!(
            (a.event_type, &a.provider_trade_no, &a.dedup_extra),
            (b.event_type, &b.provider_trade_no, &b.dedup_extra)
        );
    }

    fn signed_sample() -> (HeaderMap, Vec<u8>, DateTime<Utc>) {
        let spec = sample_spec(SampleKind::Payment, 100);
        let (headers, body) = request_of(&main_merchant().1.sign_sample(&spec).unwrap());
        (headers, body, spec.now)
    }

    #[test]
    fn signature_types_probes_and_repeated_headers_are_refused() {
        let (provider, _) = main_merchant();
        let (headers, body, now) = signed_sample();
        assert!(provider.verify(&RawRequest::new(&headers, &body), now).is_ok());
        let refused = |headers: &HeaderMap| {
            matches!(
                provider.verify(&RawRequest::new(headers, &body), now),
                Err(Rejection::BadSignature(_))
            )
        };
        let mut sm2 = headers.clone();
        sm2.insert(
            "wechatpay-signature-type",
            HeaderValue::from_static("WECHATPAY2-SM2-WITH-SM3"),
        );
        assert!(refused(&sm2));
        let mut probe = headers.clone();
        probe.insert(
            "wechatpay-signature",
            HeaderValue::from_static("WECHATPAY/SIGNTEST/abc"),
        );
        assert!(refused(&probe));
        let mut twice = headers.clone();
        twice.append("wechatpay-serial", HeaderValue::from_static(CERT_SERIAL));
        assert!(refused(&twice));
        let mut text_time = headers.clone();
        text_time.insert("wechatpay-timestamp", HeaderValue::from_static("soon"));
        assert!(refused(&text_time));
        for name in [
            "wechatpay-timestamp",
            "wechatpay-nonce",
            "wechatpay-signature",
            "wechatpay-serial",
        ] {
            let mut missing = headers.clone();
            missing.remove(name);
            assert!(refused(&missing), "{name}");
        }
        // The serial in lower case, or with a leading zero, names the same
        // certificate.
        let mut lower = headers.clone();
        let serial = format!("0{}", CERT_SERIAL.to_ascii_lowercase());
        lower.insert("wechatpay-serial", HeaderValue::from_str(&serial).unwrap());
        assert!(provider.verify(&RawRequest::new(&lower, &body), now).is_ok());
        // Stale and future by more than the window.
        for offset in [-301, 301] {
            let at = now + chrono::Duration::seconds(offset);
            assert!(matches!(
                provider.verify(&RawRequest::new(&headers, &body), at),
                Err(Rejection::Stale(_))
            ));
        }
    }

    #[test]
    fn answers_are_204_or_a_fail_code() {
        let ok = answer(&Answer {
            ok: true,
            status: StatusCode::OK,
            reason: "",
        });
        assert_eq!(
            (ok.status, ok.content_type, ok.body.as_str()),
            (StatusCode::NO_CONTENT, None, "")
        );
        let refused = answer(&Answer {
            ok: false,
            status: StatusCode::UNAUTHORIZED,
            reason: "signature does not match",
        });
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(refused.content_type, Some("application/json"));
        assert_eq!(
            serde_json::from_str::<Value>(&refused.body).unwrap(),
            serde_json::json!({"code": "FAIL", "message": "signature does not match"})
        );
    }

    /// The sample's body with its ciphertext changed at `index` by `flip`,
    /// signed again: only the APIv3 key's tag can refuse it.
    fn resealed_with_changed_ciphertext(index: usize, flip: u8) -> (HeaderMap, Vec<u8>, DateTime<Utc>) {
        let b64 = base64::engine::general_purpose::STANDARD;
        let (mut headers, body, now) = signed_sample();
        let mut envelope: Value = serde_json::from_slice(&body).unwrap();
        let mut sealed = b64
            .decode(envelope["resource"]["ciphertext"].as_str().unwrap())
            .unwrap();
        let i = index % sealed.len();
        sealed[i] ^= flip;
        envelope["resource"]["ciphertext"] = Value::from(b64.encode(&sealed));
        let body = serde_json::to_vec(&envelope).unwrap();
        let key =
            RsaSigningKey::load(&vectors_dir().join("keys/wechatpay_platform_sandbox_priv.pem")).unwrap();
        let mut message = Vec::new();
        for part in [
            headers["wechatpay-timestamp"].as_bytes(),
            headers["wechatpay-nonce"].as_bytes(),
            &body,
        ] {
            message.extend_from_slice(part);
            message.push(b'\n');
        }
        let signature = key.sign_base64(RsaAlgorithm::Sha256, &message).unwrap();
        headers.insert("wechatpay-signature", HeaderValue::from_str(&signature).unwrap());
        (headers, body, now)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn any_changed_body_byte_is_refused(index in 0usize..8192, flip in 1u8..=255) {
            let spec = sample_spec(SampleKind::Payment, 500);
            let signed = main_merchant().1.sign_sample(&spec).unwrap();
            prop_assert!(changed_byte_is_refused(&main_merchant().0, &signed, spec.now, index, flip));
        }

        #[test]
        fn any_changed_signed_header_byte_is_refused(
            which in 0usize..2,
            index in 0usize..64,
            flip in 1u8..=127,
        ) {
            let (provider, _) = main_merchant();
            let (mut headers, body, now) = signed_sample();
            let name = ["wechatpay-timestamp", "wechatpay-nonce"][which];
            let mut value = headers[name].as_bytes().to_vec();
            let i = index % value.len();
            value[i] ^= flip;
            if let Ok(changed) = HeaderValue::from_bytes(&value) {
                headers.insert(name, changed);
                let result = provider.accept(&RawRequest::new(&headers, &body), now);
                prop_assert!(matches!(result, Err(Rejection::BadSignature(_))), "{result:?}");
            }
        }

        #[test]
        fn any_changed_ciphertext_byte_is_refused(index in 0usize..4096, flip in 1u8..=255) {
            let (provider, _) = main_merchant();
            let (headers, body, now) = resealed_with_changed_ciphertext(index, flip);
            let req = RawRequest::new(&headers, &body);
            // The envelope is signed again, so it verifies: the tag refuses.
            prop_assert!(provider.verify(&req, now).is_ok());
            let result = provider.accept(&req, now);
            prop_assert!(matches!(result, Err(Rejection::BadSignature(_))), "{result:?}");
        }

        #[test]
        fn a_notice_for_another_merchant_is_refused(
            (a, b) in ("19[0-9]{8}", "19[0-9]{8}").prop_filter("different", |(a, b)| a != b),
        ) {
            // One platform key and one APIv3 key: only the signed mchid binds.
            let (_, signer) = merchant(&a, "");
            let (victim, _) = merchant(&b, "");
            let spec = sample_spec(SampleKind::Payment, 100);
            let (headers, body) = request_of(&signer.sign_sample(&spec).unwrap());
            prop_assert_eq!(
                verify_and_parse(&victim, &headers, &body, spec.now),
                Err(Rejection::WrongAccount("mchid"))
            );
            // A service provider's notice for another sub-merchant.
            let (_, signer) = merchant(&a, &format!("sub_mch_id = \"{a}\"\n"));
            let (victim, _) = merchant(&a, &format!("sub_mch_id = \"{b}\"\n"));
            let (headers, body) = request_of(&signer.sign_sample(&spec).unwrap());
            prop_assert_eq!(
                verify_and_parse(&victim, &headers, &body, spec.now),
                Err(Rejection::WrongAccount("sub_mchid"))
            );
        }

        #[test]
        fn parser_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let (provider, _) = main_merchant();
            let (headers, _, now) = signed_sample();
            let req = RawRequest::new(&headers, &body);
            let _ = provider.verify(&req, now);
            let _ = provider.parse(&req);
        }
    }

    #[test]
    fn start_up_refuses_bad_keys_and_shared_merchants() {
        let refused = |extra: &str, key: &str| {
            let text =
                format!("[[accounts]]\nid = \"wx\"\nprovider = \"wechatpay\"\nmch_id = \"1\"\n{extra}");
            let err = settings_of(&text)
                .err()
                .unwrap_or_else(|| panic!("accepted: {extra}"));
            assert!(err.to_string().contains(key), "{err}");
        };
        let cert = "platform_certificate_files = [\"keys/wechatpay_platform_cert.pem\"]\n";
        refused(&format!("apiv3_key = \"short\"\n{cert}"), "apiv3_key");
        refused(
            &format!("apiv3_key = \"{APIV3_KEY}x\"\n{cert}"),
            "exactly 32 bytes",
        );
        refused(cert, "apiv3_key");
        refused(
            &format!("apiv3_key = \"{APIV3_KEY}\"\n"),
            "platform_certificate_files",
        );
        refused(
            &format!("apiv3_key = \"{APIV3_KEY}\"\nwechatpay_public_key_id = \"PUB_KEY_ID_1\"\n"),
            "wechatpay_public_key_file",
        );
        refused(
            &format!(
                "apiv3_key = \"{APIV3_KEY}\"\nwechatpay_public_key_file = \"keys/wechatpay_pub_key.pem\"\n"
            ),
            "wechatpay_public_key_id",
        );
        // Two accounts naming one merchant; a sub-merchant apiece is fine.
        let two = |first: &str, second: &str| {
            let text = format!(
                "{}{}",
                account_toml("1900000109", first),
                account_toml("1900000109", second).replace("id = \"wx\"", "id = \"wx2\"")
            );
            let config = Config::from_toml_str(&text, &vectors_dir(), &|_: &str| None).unwrap();
            build_accounts(&config.accounts).map(|_| ())
        };
        let err = two("", "").unwrap_err();
        assert!(
            matches!(err.source, AccountErrorKind::SharedMerchant { .. }),
            "{err}"
        );
        two("sub_mch_id = \"1\"\n", "sub_mch_id = \"2\"\n").unwrap();
    }

    #[test]
    fn both_modes_in_one_account_choose_the_key_by_serial() {
        let s = settings_of(&account_toml(
            "1900000109",
            "wechatpay_public_key_id = \"PUB_KEY_ID_0119000001102026011500000000000001\"\n\
             wechatpay_public_key_file = \"keys/wechatpay_pub_key.pem\"\n",
        ))
        .unwrap();
        let provider = Wechatpay::build(&s).unwrap();
        assert_eq!(provider.keys.len(), 2);
        assert_eq!(provider.keys[0].0, Serial::Certificate(CERT_SERIAL.into()));
        let by_cert = provider.key_for(CERT_SERIAL).unwrap();
        let by_id = provider
            .key_for("PUB_KEY_ID_0119000001102026011500000000000001")
            .unwrap();
        assert_ne!(by_cert.pkcs1_der(), by_id.pkcs1_der());
        assert!(provider
            .key_for("PUB_KEY_ID_0119000001102026011500000000000002")
            .is_none());
        assert!(provider
            .key_for("7132D72A03E93CDDF8C03BBD1F37EEDF9AEF2D30")
            .is_none());
    }
}
