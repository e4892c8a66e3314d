//! 支付宝开放平台 asynchronous notifications (`notify_url`, RSA2): a form body,
//! `sign` = base64 SHA256withRSA over the sorted `k=v&…` bytes of every other
//! non-empty field but `sign_type`, text in the signed `charset`.

use std::path::{Path, PathBuf};

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::common::form::{encode_form, parse_form_bytes};
use super::common::rsa_keys::KeyError;
use super::common::{parse_shanghai_local, RsaAlgorithm, RsaPublicKey, RsaSigningKey};
use super::fuzz::FuzzTarget;
use super::module::{load_keys, sandbox_key, BenchMode, ProviderModule, SandboxAccount, MIN_RSA_BITS};
use super::provider::{
    Dialect, Provider, RawRequest, Rejection, SampleKind, SampleSigner, SampleSpec, SignError, SignedRequest,
    Verified,
};
use super::registry::AccountErrorKind;
use crate::config::{AccountCx, ConfigError};
use crate::domain::{AmountFen, EventType, Notification, ProviderKind};
use crate::key_list::KeyList;

/// Verifies one Alipay application's notices with Alipay's public key (any
/// of its keys while it is rotated, or the key of its public-key
/// certificate), and binds them to the application: one Alipay key signs
/// every merchant's notices, so the signed `app_id` (and, when configured,
/// `auth_app_id` and `seller_id`) is what tells this account's apart.
pub struct Alipay {
    keys: KeyList<RsaPublicKey>,
    app: AlipayApp,
}

impl Alipay {
    pub fn new(keys: impl Into<KeyList<RsaPublicKey>>, app: impl Into<AlipayApp>) -> Self {
        Self {
            keys: keys.into(),
            app: app.into(),
        }
    }
}

/// The merchant an account's notices name: its application, and the
/// service provider's merchant application and the seller when the account
/// names them. The verifier binds notices to it; the sandbox signs for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlipayApp {
    app_id: String,
    auth_app_id: Option<String>,
    seller_id: Option<String>,
}

impl AlipayApp {
    pub fn new(app_id: impl Into<String>) -> Self {
        Self {
            app_id: app_id.into(),
            auth_app_id: None,
            seller_id: None,
        }
    }

    /// Also the notices' `auth_app_id` (a service provider's merchant
    /// application).
    pub fn with_auth_app_id(mut self, auth_app_id: Option<String>) -> Self {
        self.auth_app_id = auth_app_id;
        self
    }

    /// Also the notices' `seller_id`.
    pub fn with_seller_id(mut self, seller_id: Option<String>) -> Self {
        self.seller_id = seller_id;
        self
    }
}

impl<S: Into<String>> From<S> for AlipayApp {
    fn from(app_id: S) -> Self {
        AlipayApp::new(app_id)
    }
}

/// The form as decoded once: `(key, value)` bytes, in order, no key twice.
type Pairs = [(Vec<u8>, Vec<u8>)];

/// Fields left out of the signing string (besides empty ones). `sign_type`
/// is not signed in trade notices.
const UNSIGNED: [&[u8]; 2] = [b"sign", b"sign_type"];

/// A field's bytes; an empty value counts as absent (it is not signed).
fn field_bytes<'a>(pairs: &'a Pairs, key: &str) -> Option<&'a [u8]> {
    pairs
        .iter()
        .find(|(k, v)| k.as_slice() == key.as_bytes() && !v.is_empty())
        .map(|(_, v)| v.as_slice())
}

/// Whether a field is part of the signing string (and so of everything the
/// parser reads).
fn is_signed((key, value): &(Vec<u8>, Vec<u8>)) -> bool {
    !value.is_empty() && !UNSIGNED.contains(&key.as_slice())
}

/// The signing string: every signed field, sorted by key in byte order,
/// joined as `k=v` with `&`, over the decoded bytes as they are.
fn signing_bytes(pairs: &Pairs) -> Vec<u8> {
    let mut kept: Vec<&(Vec<u8>, Vec<u8>)> = pairs.iter().filter(|pair| is_signed(pair)).collect();
    kept.sort_by(|a, b| a.0.cmp(&b.0));
    let len = kept.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    let mut out = Vec::with_capacity(len);
    for (i, (k, v)) in kept.iter().enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        out.extend_from_slice(k);
        out.push(b'=');
        out.extend_from_slice(v);
    }
    out
}

impl Alipay {
    fn verify_pairs(&self, pairs: &Pairs) -> Result<Verified, Rejection> {
        match field_bytes(pairs, "sign_type") {
            None | Some(b"RSA2") => {}
            Some(b"RSA") => {
                return Err(Rejection::BadSignature(
                    "sign_type RSA (SHA1withRSA) is not accepted",
                ))
            }
            Some(_) => return Err(Rejection::BadSignature("sign_type is not RSA2")),
        }
        let sign = field_bytes(pairs, "sign").ok_or(Rejection::BadSignature("missing sign"))?;
        let sign = std::str::from_utf8(sign).map_err(|_| Rejection::BadSignature("sign is not base64"))?;
        if !self
            .keys
            .verify_base64_any(RsaAlgorithm::Sha256, &signing_bytes(pairs), sign)
        {
            return Err(Rejection::BadSignature("signature does not match"));
        }
        Ok(Verified::default())
    }
}

impl Provider for Alipay {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Alipay
    }

    fn verify(&self, req: &RawRequest<'_>, _now: DateTime<Utc>) -> Result<Verified, Rejection> {
        self.verify_pairs(&parse_form_bytes(req.body)?)
    }

    fn parse(&self, req: &RawRequest<'_>) -> Result<Notification, Rejection> {
        self.parse_pairs(&parse_form_bytes(req.body)?)
    }

    /// The form is decoded once, for both steps.
    fn accept(
        &self,
        req: &RawRequest<'_>,
        _now: DateTime<Utc>,
    ) -> Result<(Verified, Notification), Rejection> {
        let pairs = parse_form_bytes(req.body)?;
        let verified = self.verify_pairs(&pairs)?;
        Ok((verified, self.parse_pairs(&pairs)?))
    }

    fn dialect(&self) -> Dialect {
        Dialect::PlainText {
            ok: "success",
            fail: "fail",
        }
    }
}

/// How the notice's text is encoded: its signed `charset` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Charset {
    Utf8,
    /// `gbk`, `gb2312` or `gb18030`, read as GB18030 (a superset of both).
    Gb18030,
}

impl Charset {
    fn of(pairs: &Pairs) -> Result<Self, Rejection> {
        let Some(name) = field_bytes(pairs, "charset") else {
            return Ok(Charset::Utf8);
        };
        let name = name.to_ascii_lowercase();
        match name.as_slice() {
            b"utf-8" | b"utf8" => Ok(Charset::Utf8),
            b"gbk" | b"gb2312" | b"gb18030" => Ok(Charset::Gb18030),
            _ => Err(Rejection::BadRequest("unknown charset")),
        }
    }

    fn decode(self, bytes: &[u8]) -> Result<String, Rejection> {
        const BAD: Rejection = Rejection::BadRequest("a field is not text in the notice's charset");
        match self {
            Charset::Utf8 => String::from_utf8(bytes.to_vec()).map_err(|_| BAD),
            Charset::Gb18030 => encoding_rs::GB18030
                .decode_without_bom_handling_and_without_replacement(bytes)
                .map(|text| text.into_owned())
                .ok_or(BAD),
        }
    }
}

/// The fields whose values decide what a notice means and whom it is for.
/// The signing string's join is ambiguous: a `&` or `=` in one of them (or
/// in any key) after decoding could let a genuine notice be re-cut into
/// another with the same signing string. Alipay never sends one; free text
/// (`subject`, `body`, `passback_params`) may contain both.
const UNAMBIGUOUS: [&str; 15] = [
    "app_id",
    "auth_app_id",
    "seller_id",
    "charset",
    "trade_no",
    "out_trade_no",
    "out_biz_no",
    "trade_status",
    "total_amount",
    "refund_fee",
    "gmt_payment",
    "gmt_refund",
    "gmt_close",
    "gmt_create",
    "notify_time",
];

/// The signed fields as text, in the notice's charset.
struct Fields(Vec<(String, String)>);

impl Fields {
    fn new(pairs: &Pairs) -> Result<Self, Rejection> {
        let charset = Charset::of(pairs)?;
        let mut fields = Vec::with_capacity(pairs.len());
        for pair in pairs.iter().filter(|pair| is_signed(pair)) {
            fields.push((charset.decode(&pair.0)?, charset.decode(&pair.1)?));
        }
        let cuts = |text: &str| text.contains(['&', '=']);
        let ambiguous = fields
            .iter()
            .any(|(k, v)| cuts(k) || (UNAMBIGUOUS.contains(&k.as_str()) && cuts(v)));
        if ambiguous {
            return Err(Rejection::BadRequest("a key or identifier contains & or ="));
        }
        Ok(Fields(fields))
    }

    /// A signed field's text (never empty).
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn required(&self, key: &str, missing: &'static str) -> Result<&str, Rejection> {
        self.get(key).ok_or(Rejection::BadRequest(missing))
    }

    fn yuan(&self, key: &str, missing: &'static str) -> Result<AmountFen, Rejection> {
        AmountFen::parse_yuan(self.required(key, missing)?)
            .map_err(|_| Rejection::BadRequest("an amount is not a valid yuan value"))
    }

    /// The first of `keys` present, as a Shanghai local time
    /// (`yyyy-MM-dd HH:mm:ss[.SSS]`); `None` when none is.
    fn time(&self, keys: &[&str]) -> Result<Option<DateTime<Utc>>, Rejection> {
        match keys.iter().find_map(|key| self.get(key)) {
            Some(text) => parse_shanghai_local(text)
                .map(Some)
                .ok_or(Rejection::BadRequest("a time is not yyyy-MM-dd HH:mm:ss")),
            None => Ok(None),
        }
    }

    fn raw(&self) -> Value {
        let map: Map<String, Value> = self
            .0
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        Value::Object(map)
    }
}

impl Alipay {
    /// Whether the notice is this account's: its signed `app_id`, and its
    /// `auth_app_id` and `seller_id` when the account names them.
    fn bind(&self, fields: &Fields) -> Result<(), Rejection> {
        let app = &self.app;
        if fields.get("app_id") != Some(app.app_id.as_str()) {
            return Err(Rejection::WrongAccount("app_id"));
        }
        if let Some(auth_app_id) = &app.auth_app_id {
            if fields.get("auth_app_id") != Some(auth_app_id.as_str()) {
                return Err(Rejection::WrongAccount("auth_app_id"));
            }
        }
        if let Some(seller_id) = &app.seller_id {
            if fields.get("seller_id") != Some(seller_id.as_str()) {
                return Err(Rejection::WrongAccount("seller_id"));
            }
        }
        Ok(())
    }

    fn parse_pairs(&self, pairs: &Pairs) -> Result<Notification, Rejection> {
        let fields = Fields::new(pairs)?;
        self.bind(&fields)?;
        let trade_no = fields.required("trade_no", "missing trade_no")?;
        let out_trade_no = fields.required("out_trade_no", "missing out_trade_no")?;
        let total = fields.yuan("total_amount", "missing total_amount")?;

        let mut n = if let Some(refund_no) = fields.get("out_biz_no") {
            // A refund, whatever the trade's status after it (still
            // TRADE_SUCCESS after a partial refund, TRADE_CLOSED after a full
            // one). Alipay states only the trade's refunds so far.
            let refunded_total = fields.yuan("refund_fee", "missing refund_fee")?;
            let refunded_at = fields
                .time(&["gmt_refund"])?
                .ok_or(Rejection::BadRequest("missing gmt_refund"))?;
            let mut n = Notification::new(EventType::RefundSucceeded, trade_no.to_owned(), total);
            n.refund_no = Some(refund_no.to_owned());
            n.refunded_total = Some(refunded_total);
            n.occurred_at = Some(refunded_at);
            n.dedup_extra = refund_no.to_owned();
            n
        } else {
            let status = fields.required("trade_status", "missing trade_status")?;
            // TRADE_FINISHED (no more refunds possible) is the same payment
            // as its TRADE_SUCCESS: one identity, so it is a duplicate when
            // that was stored, and accepted when it comes alone.
            let (event_type, times): (EventType, &[&str]) = match status {
                "TRADE_SUCCESS" | "TRADE_FINISHED" => {
                    (EventType::PaymentSucceeded, &["gmt_payment", "notify_time"])
                }
                "TRADE_CLOSED" => (EventType::PaymentCanceled, &["gmt_close", "notify_time"]),
                // Stored for the record, never delivered.
                "WAIT_BUYER_PAY" => (EventType::PaymentCreated, &["gmt_create", "notify_time"]),
                _ => (EventType::PaymentUnknown, &["gmt_payment", "notify_time"]),
            };
            let mut n = Notification::new(event_type, trade_no.to_owned(), total);
            n.occurred_at = fields.time(times)?;
            n
        };
        n.merchant_order_no = Some(out_trade_no.to_owned());
        n.business_params = fields.get("passback_params").map(str::to_owned);
        n.raw = fields.raw();
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// The sandbox signer.

/// Signs sample notices as Alipay would, with the sandbox private key, for
/// one application (and its `auth_app_id` and `seller_id` when the account
/// names them).
pub struct AlipaySandbox {
    key: RsaSigningKey,
    app: AlipayApp,
}

impl AlipaySandbox {
    pub fn new(key: RsaSigningKey, app: impl Into<AlipayApp>) -> Self {
        Self { key, app: app.into() }
    }
}

impl SampleSigner for AlipaySandbox {
    fn sign_sample(&self, spec: &SampleSpec) -> Result<SignedRequest, SignError> {
        let local = spec.now + chrono::Duration::hours(8);
        let time = local.format("%Y-%m-%d %H:%M:%S").to_string();
        let yuan = spec.amount.to_yuan_string();
        let notify_id = format!("N{}", spec.trade_no);
        let refund_no = format!("R{}", spec.trade_no);
        let mut fields: Vec<(&str, String)> = vec![
            ("notify_time", time.clone()),
            ("notify_type", "trade_status_sync".to_owned()),
            ("notify_id", notify_id),
            ("app_id", self.app.app_id.clone()),
            (
                "auth_app_id",
                self.app
                    .auth_app_id
                    .clone()
                    .unwrap_or_else(|| self.app.app_id.clone()),
            ),
            ("charset", "utf-8".to_owned()),
            ("version", "1.0".to_owned()),
            ("trade_no", spec.trade_no.clone()),
            ("out_trade_no", spec.merchant_order_no.clone()),
            ("total_amount", yuan.clone()),
            ("subject", "payhook sandbox".to_owned()),
            ("gmt_create", time.clone()),
            ("gmt_payment", time.clone()),
        ];
        if let Some(seller_id) = &self.app.seller_id {
            fields.push(("seller_id", seller_id.clone()));
        }
        match spec.kind {
            SampleKind::Payment => fields.extend([
                ("trade_status", "TRADE_SUCCESS".to_owned()),
                ("receipt_amount", yuan.clone()),
                ("buyer_pay_amount", yuan),
            ]),
            // A full refund: it closes the trade.
            SampleKind::Refund => fields.extend([
                ("trade_status", "TRADE_CLOSED".to_owned()),
                ("out_biz_no", refund_no),
                ("refund_fee", yuan),
                ("gmt_refund", local.format("%Y-%m-%d %H:%M:%S%.3f").to_string()),
                ("gmt_close", time),
            ]),
        }
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = fields
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        let mut signature = self
            .key
            .sign(RsaAlgorithm::Sha256, &signing_bytes(&pairs))
            .map_err(|e| SignError::Crypto(e.to_string()))?;
        if spec.forge {
            if let Some(byte) = signature.first_mut() {
                *byte ^= 1;
            }
        }
        fields.push(("sign_type", "RSA2".to_owned()));
        fields.push((
            "sign",
            base64::engine::general_purpose::STANDARD.encode(signature),
        ));
        let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Ok(SignedRequest {
            content_type: "application/x-www-form-urlencoded",
            headers: Vec::new(),
            body: encode_form(&refs).into_bytes(),
        })
    }
}

// ---------------------------------------------------------------------------
// The module's parts: its `[[accounts]]` section, and what is built from it.

/// An Alipay account's `[[accounts]]` keys, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlipayFile {
    app_id: Option<String>,
    alipay_public_key_file: Option<PathBuf>,
    alipay_public_key_files: Option<Vec<PathBuf>>,
    alipay_public_cert_file: Option<PathBuf>,
    auth_app_id: Option<String>,
    seller_id: Option<String>,
    sandbox_private_key_file: Option<PathBuf>,
}

/// Where an account's Alipay key comes from.
#[derive(Debug, Clone)]
pub enum AlipayKeySource {
    /// Public-key mode: `alipay_public_key_file`, or `alipay_public_key_files`
    /// while the key is rotated (PEM SPKI, or the bare base64 of the console).
    PublicKeys(KeyList<PathBuf>),
    /// Certificate mode: `alipay_public_cert_file`
    /// (`alipayCertPublicKey_RSA2.crt`), the key of its first certificate.
    Certificate(PathBuf),
}

/// An Alipay account's settings.
#[derive(Debug, Clone)]
pub struct AlipaySettings {
    pub app_id: String,
    pub auth_app_id: Option<String>,
    pub seller_id: Option<String>,
    pub key: AlipayKeySource,
    pub sandbox_private_key_file: Option<PathBuf>,
}

/// An optional binding field: not configured, or non-empty text.
fn optional_text(
    cx: &AccountCx<'_>,
    name: &str,
    value: Option<String>,
) -> Result<Option<String>, ConfigError> {
    match value.map(|v| v.trim().to_owned()) {
        Some(v) if v.is_empty() => Err(cx.invalid(
            name,
            "must not be empty (leave it out to accept any of the application's)",
        )),
        other => Ok(other),
    }
}

/// The public key of the first certificate in `path` (PEM; a file with no
/// PEM certificate is read as one DER certificate). The chain and the dates
/// are not checked.
fn load_certificate(path: &Path) -> Result<RsaPublicKey, KeyError> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let what = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        path: what.clone(),
        source,
    })?;
    let find = |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).position(|w| w == needle);
    let first = find(&bytes, BEGIN).and_then(|start| {
        let rest = bytes.get(start..)?;
        let end = find(rest, END)? + END.len();
        rest.get(..end)
    });
    RsaPublicKey::from_bytes(first.unwrap_or(&bytes), &what, MIN_RSA_BITS)
}

impl AlipaySettings {
    /// The merchant the account's notices must name.
    fn app(&self) -> AlipayApp {
        AlipayApp::new(self.app_id.clone())
            .with_auth_app_id(self.auth_app_id.clone())
            .with_seller_id(self.seller_id.clone())
    }
}

impl ProviderModule for Alipay {
    const DISPLAY_NAME: &'static str = "Alipay";
    const BENCH: &'static [BenchMode] = &[BenchMode {
        name: "alipay",
        help: "Alipay: RSA2 (SHA256withRSA, RSA-2048) over the sorted form",
        id: "bench-alipay",
        account: "provider = \"alipay\"\napp_id = \"2021000000000001\"\nalipay_public_key_file = {public}\n\
                  sandbox_private_key_file = {private}\n",
    }];
    const SANDBOX: &'static [SandboxAccount] = &[SandboxAccount {
        id: "alipay-sandbox",
        account: "provider = \"alipay\"\napp_id = \"2021000000000001\"\n\
                  alipay_public_key_file = \"alipay_public_key.pem\"\n\
                  sandbox_private_key_file = \"alipay_sandbox_priv.pem\"\n",
    }];
    const SANDBOX_KEYS: &'static [(&'static str, &'static str)] = &[
        (
            "alipay_public_key.pem",
            include_str!("../../sandbox-keys/alipay_public_key.pem"),
        ),
        (
            "alipay_sandbox_priv.pem",
            include_str!("../../sandbox-keys/alipay_sandbox_priv.pem"),
        ),
    ];
    // RSA2 only: signing each input would be far too slow, so no assist.
    const FUZZ: &'static [FuzzTarget] = &[FuzzTarget {
        name: "alipay",
        account: "provider = \"alipay\"\napp_id = \"2021000000000001\"\n\
                  alipay_public_key_file = \"alipay_public_key.pem\"\n",
        headers: &[],
        assist: None,
    }];
    type File = AlipayFile;
    type Settings = AlipaySettings;

    fn settings(f: AlipayFile, cx: &AccountCx<'_>) -> Result<AlipaySettings, ConfigError> {
        let app_id = cx.required_text(
            "app_id",
            f.app_id,
            "the app_id of this account's Alipay application",
        )?;
        let public_keys = cx.key_files(
            "alipay_public_key_file",
            f.alipay_public_key_file,
            f.alipay_public_key_files,
        )?;
        let key = match (public_keys, f.alipay_public_cert_file) {
            (Some(files), None) => AlipayKeySource::PublicKeys(files),
            (None, Some(cert)) => AlipayKeySource::Certificate(cx.path(cert)),
            (Some(_), Some(_)) => {
                return Err(cx.invalid(
                    "alipay_public_cert_file",
                    "give either alipay_public_key_file (public-key mode) or alipay_public_cert_file \
                     (certificate mode), not both",
                ))
            }
            (None, None) => {
                return Err(cx.invalid(
                    "alipay_public_key_file",
                    "required: Alipay's public key (alipay_public_key_files while it is rotated), or \
                     alipay_public_cert_file in certificate mode",
                ))
            }
        };
        Ok(AlipaySettings {
            app_id,
            auth_app_id: optional_text(cx, "auth_app_id", f.auth_app_id)?,
            seller_id: optional_text(cx, "seller_id", f.seller_id)?,
            key,
            sandbox_private_key_file: f.sandbox_private_key_file.map(|p| cx.path(p)),
        })
    }

    fn build(s: &AlipaySettings) -> Result<Self, AccountErrorKind> {
        let keys = match &s.key {
            AlipayKeySource::PublicKeys(files) => load_keys(files, MIN_RSA_BITS)?,
            AlipayKeySource::Certificate(path) => KeyList::one(load_certificate(path)?),
        };
        Ok(Alipay::new(keys, s.app()))
    }

    fn sandbox(s: &AlipaySettings) -> Result<Box<dyn SampleSigner>, AccountErrorKind> {
        let key = sandbox_key(&s.sandbox_private_key_file)?;
        Ok(Box::new(AlipaySandbox::new(key, s.app())))
    }

    /// One Alipay key signs every application's notices: two accounts
    /// naming one application would both accept each of its notices.
    fn merchant(s: &AlipaySettings) -> Option<(&'static str, String)> {
        Some((
            "app_id",
            match &s.auth_app_id {
                Some(auth_app_id) => format!("{}/{auth_app_id}", s.app_id),
                None => s.app_id.clone(),
            },
        ))
    }

    fn bench_mode(_: &AlipaySettings) -> Option<&'static str> {
        Some("alipay")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use axum::http::HeaderMap;
    use percent_encoding::{percent_encode, NON_ALPHANUMERIC};
    use proptest::prelude::*;

    use super::*;
    use crate::config::Config;
    use crate::ingress::registry::{build_accounts, AccountError};
    use crate::ingress::tests_support::{
        assert_no_headers, changed_byte_is_refused, check_shared_vectors_with, request_of, round_trip,
        sample_spec, vector_body, vectors_dir, verify_and_parse,
    };

    const APP_ID: &str = "2021000000000001";

    fn public(name: &str) -> RsaPublicKey {
        RsaPublicKey::load(&vectors_dir().join("keys").join(name), 2048).unwrap()
    }

    fn private(name: &str) -> RsaSigningKey {
        RsaSigningKey::load(&vectors_dir().join("keys").join(name)).unwrap()
    }

    fn alipay() -> &'static Alipay {
        static ALIPAY: OnceLock<Alipay> = OnceLock::new();
        ALIPAY.get_or_init(|| Alipay::new(public("alipay_public_key.pem"), APP_ID))
    }

    fn sandbox() -> &'static AlipaySandbox {
        static SANDBOX: OnceLock<AlipaySandbox> = OnceLock::new();
        SANDBOX.get_or_init(|| AlipaySandbox::new(private("alipay_sandbox_priv.pem"), APP_ID))
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_768_458_600, 0).unwrap()
    }

    fn accept(provider: &Alipay, body: &[u8]) -> Result<Notification, Rejection> {
        verify_and_parse(provider, &HeaderMap::new(), body, now())
    }

    /// Parses without verifying (the fields' rules, on unsigned bodies).
    fn parse(body: &str) -> Result<Notification, Rejection> {
        alipay().parse(&RawRequest::new(&HeaderMap::new(), body.as_bytes()))
    }

    /// A form body of `fields` (bytes, percent-encoded) signed as Alipay
    /// signs, with `extra` fields appended after signing (unsigned).
    fn signed_body(fields: &[(&[u8], &[u8])], extra: &str) -> Vec<u8> {
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = fields.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        let sign = private("alipay_sandbox_priv.pem")
            .sign_base64(RsaAlgorithm::Sha256, &signing_bytes(&pairs))
            .unwrap();
        let mut body: Vec<String> = fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    percent_encode(k, NON_ALPHANUMERIC),
                    percent_encode(v, NON_ALPHANUMERIC)
                )
            })
            .collect();
        body.push(format!(
            "sign={}",
            percent_encode(sign.as_bytes(), NON_ALPHANUMERIC)
        ));
        let mut body = body.join("&");
        body.push_str(extra);
        body.into_bytes()
    }

    /// A payment notice's fields for this account, with `more` appended.
    fn payment<'a>(more: &[(&'a [u8], &'a [u8])]) -> Vec<(&'a [u8], &'a [u8])> {
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b"app_id", APP_ID.as_bytes()),
            (b"trade_no", b"2026011522001"),
            (b"out_trade_no", b"ORD-1"),
            (b"total_amount", b"12.30"),
            (b"trade_status", b"TRADE_SUCCESS"),
            (b"gmt_payment", b"2026-01-15 14:29:58"),
        ];
        fields.extend_from_slice(more);
        fields
    }

    /// The verifier a vector's account describes.
    fn provider_for(account: &Value) -> Alipay {
        let text = |key: &str| account[key].as_str().map(str::to_owned);
        let keys = match (text("alipay_public_key_file"), text("alipay_public_cert_file")) {
            (Some(file), None) => RsaPublicKey::load(&vectors_dir().join(file), 2048).unwrap(),
            (None, Some(file)) => load_certificate(&vectors_dir().join(file)).unwrap(),
            other => panic!("account keys: {other:?}"),
        };
        Alipay::new(
            keys,
            AlipayApp::new(text("app_id").unwrap())
                .with_auth_app_id(text("auth_app_id"))
                .with_seller_id(text("seller_id")),
        )
    }

    #[test]
    fn vectors() {
        let extra = |v: &Value, accepted: Option<&Notification>| {
            assert_no_headers(v, accepted);
            let Some(n) = accepted else { return };
            let name = v["name"].as_str().unwrap();
            assert!(
                n.raw.get("sign").is_none() && n.raw.get("sign_type").is_none(),
                "{name}"
            );
            assert_eq!(n.currency, "CNY", "{name}");
            match name {
                "alipay-trade-success" => {
                    assert_eq!(n.raw["subject"], "测试商品+1 & co=2");
                    assert_eq!(n.raw["app_id"], APP_ID);
                    assert_eq!(n.dedup_extra, "");
                }
                "alipay-trade-finished-only" => {
                    assert_eq!(n.occurred_at.unwrap().to_rfc3339(), "2026-01-15T06:29:58+00:00")
                }
                "alipay-refund-partial" | "alipay-refund-full-closes-trade" => {
                    assert_eq!(n.dedup_extra, n.refund_no.clone().unwrap());
                    assert_eq!(n.amount.fen(), 10001);
                }
                "alipay-empty-values-not-signed" => {
                    assert_eq!(n.business_params, None);
                    assert!(n.raw.get("passback_params").is_none() && n.raw.get("body").is_none());
                }
                "alipay-gbk-charset" => assert_eq!(n.raw["subject"], "中文商品 测试"),
                _ => {}
            }
        };
        let seen = check_shared_vectors_with("alipay", provider_for, extra);
        assert_eq!(seen, 14, "alipay vectors");
    }

    #[test]
    fn vector_refusals_say_why() {
        let check = |name: &str| accept(alipay(), vector_body(name).as_bytes());
        assert_eq!(
            check("alipay-other-app-id"),
            Err(Rejection::WrongAccount("app_id"))
        );
        assert_eq!(
            check("alipay-missing-sign"),
            Err(Rejection::BadSignature("missing sign"))
        );
        assert_eq!(
            check("alipay-tampered-amount"),
            Err(Rejection::BadSignature("signature does not match"))
        );
        // A cert-mode notice is not signed with the public-key mode's key.
        assert_eq!(
            check("alipay-cert-mode"),
            Err(Rejection::BadSignature("signature does not match"))
        );
    }

    #[test]
    fn sample_round_trips() {
        let n = round_trip(alipay(), sandbox(), SampleKind::Payment, 12345);
        assert_eq!(n.amount.fen(), 12345);
        assert_eq!(n.dedup_extra, "");
        assert_eq!(n.refund_no, None);

        let n = round_trip(alipay(), sandbox(), SampleKind::Refund, 6789);
        assert_eq!(n.refunded_total.map(AmountFen::fen), Some(6789));
        assert_eq!(n.refund_amount, None);
        assert_eq!(n.amount.fen(), 6789);
        let refund_no = n.refund_no.clone().unwrap();
        assert!(refund_no.starts_with('R'), "{refund_no}");
        assert_eq!(n.dedup_extra, refund_no);
    }

    #[test]
    fn forged_samples_are_refused() {
        for kind in [SampleKind::Payment, SampleKind::Refund] {
            let mut spec = sample_spec(kind, 100);
            spec.forge = true;
            let (headers, body) = request_of(&sandbox().sign_sample(&spec).unwrap());
            assert_eq!(
                verify_and_parse(alipay(), &headers, &body, spec.now),
                Err(Rejection::BadSignature("signature does not match"))
            );
        }
    }

    #[test]
    fn sign_type_must_be_rsa2() {
        let fields = payment(&[]);
        for (extra, ok) in [
            ("", true),
            ("&sign_type=RSA2", true),
            ("&sign_type=", true),
            ("&sign_type=RSA", false),
            ("&sign_type=rsa2", false),
            ("&sign_type=SM2", false),
        ] {
            let result = accept(alipay(), &signed_body(&fields, extra));
            if ok {
                assert!(result.is_ok(), "{extra}: {result:?}");
            } else {
                assert!(
                    matches!(result, Err(Rejection::BadSignature(_))),
                    "{extra}: {result:?}"
                );
            }
        }
        // Keeping sign_type in the signing string (the app-gateway rule) is
        // not the trade notices' rule.
        let mut with_type: Vec<(Vec<u8>, Vec<u8>)> =
            fields.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
        let mut message = signing_bytes(&with_type);
        message.extend_from_slice(b"&sign_type=RSA2");
        let sign = private("alipay_sandbox_priv.pem")
            .sign_base64(RsaAlgorithm::Sha256, &message)
            .unwrap();
        with_type.push((b"sign_type".to_vec(), b"RSA2".to_vec()));
        with_type.push((b"sign".to_vec(), sign.into_bytes()));
        let refs: Vec<(&str, &str)> = with_type
            .iter()
            .map(|(k, v)| (std::str::from_utf8(k).unwrap(), std::str::from_utf8(v).unwrap()))
            .collect();
        assert_eq!(
            accept(alipay(), encode_form(&refs).as_bytes()),
            Err(Rejection::BadSignature("signature does not match"))
        );
    }

    #[test]
    fn a_key_given_twice_is_refused() {
        let body = signed_body(&payment(&[]), "&trade_no=2026011522002");
        assert_eq!(
            accept(alipay(), &body),
            Err(Rejection::BadRequest("duplicate form key"))
        );
        // Also when the repeat is written another way, or is the signature.
        let body = signed_body(&payment(&[]), "&%74rade_no=2026011522001");
        assert_eq!(
            accept(alipay(), &body),
            Err(Rejection::BadRequest("duplicate form key"))
        );
        let body = signed_body(&payment(&[]), "&sign=AAAA");
        assert_eq!(
            accept(alipay(), &body),
            Err(Rejection::BadRequest("duplicate form key"))
        );
    }

    #[test]
    fn too_many_fields_are_refused() {
        let extra: String = (0..MAX_FORM_FIELDS).map(|i| format!("&k{i}=v")).collect();
        let body = signed_body(&payment(&[]), &extra);
        assert_eq!(
            alipay().verify(&RawRequest::new(&HeaderMap::new(), &body), now()),
            Err(Rejection::BadRequest("too many fields"))
        );
    }

    use crate::ingress::common::form::MAX_FORM_FIELDS;

    #[test]
    fn empty_values_are_not_signed_and_count_as_absent() {
        // Added after signing, an empty out_biz_no does not make a refund,
        // nor an empty passback_params business parameters.
        let body = signed_body(&payment(&[]), "&out_biz_no=&passback_params=&refund_fee=");
        let n = accept(alipay(), &body).unwrap();
        assert_eq!(n.event_type, EventType::PaymentSucceeded);
        assert_eq!(n.business_params, None);
        assert!(n.raw.get("out_biz_no").is_none());
        // Signed with empty values in the body: the same signing string.
        let fields = payment(&[(b"body", b""), (b"passback_params", b"")]);
        assert!(accept(alipay(), &signed_body(&fields, "")).is_ok());
        // A non-empty value added after signing breaks the signature.
        let body = signed_body(&payment(&[]), "&out_biz_no=R1");
        assert!(matches!(accept(alipay(), &body), Err(Rejection::BadSignature(_))));
    }

    #[test]
    fn text_is_read_in_the_signed_charset() {
        let (subject, _, _) = encoding_rs::GBK.encode("中文商品 测试");
        for charset in [&b"gbk"[..], b"GBK", b"gb2312", b"gb18030"] {
            let fields = payment(&[(b"charset", charset), (b"subject", &subject)]);
            let n = accept(alipay(), &signed_body(&fields, "")).unwrap();
            assert_eq!(n.raw["subject"], "中文商品 测试");
        }
        let fields = payment(&[(b"subject", "中文商品".as_bytes())]);
        let n = accept(alipay(), &signed_body(&fields, "")).unwrap();
        assert_eq!(n.raw["subject"], "中文商品");
        // GBK bytes read as UTF-8 (no charset), a lone GBK lead byte, an
        // unknown charset: authentic, but not readable.
        for fields in [
            payment(&[(b"subject", &subject)]),
            payment(&[(b"charset", b"gbk"), (b"subject", b"\x81")]),
            payment(&[(b"charset", b"big5"), (b"subject", b"x")]),
        ] {
            let result = accept(alipay(), &signed_body(&fields, ""));
            assert!(matches!(result, Err(Rejection::BadRequest(_))), "{result:?}");
        }
        // The signature is over the bytes, whatever the charset.
        let fields = payment(&[(b"charset", b"gbk"), (b"subject", &subject)]);
        let body = signed_body(&fields, "");
        assert!(alipay()
            .verify(&RawRequest::new(&HeaderMap::new(), &body), now())
            .is_ok());
    }

    #[test]
    fn statuses_times_and_missing_fields() {
        let base = format!("app_id={APP_ID}&trade_no=T&out_trade_no=O&total_amount=1.00");
        let n = |tail: &str| parse(&format!("{base}{tail}"));
        let pay =
            n("&trade_status=TRADE_SUCCESS&gmt_payment=2026-01-15+14:29:58&notify_time=2026-01-15+14:30:00")
                .unwrap();
        assert_eq!(pay.event_type, EventType::PaymentSucceeded);
        assert_eq!(pay.occurred_at.unwrap().to_rfc3339(), "2026-01-15T06:29:58+00:00");
        assert_eq!(pay.amount.fen(), 100);
        assert_eq!(pay.merchant_order_no.as_deref(), Some("O"));
        // no gmt_payment: notify_time
        let pay = n("&trade_status=TRADE_FINISHED&notify_time=2026-01-15+14:30:00.5").unwrap();
        assert_eq!(pay.event_type, EventType::PaymentSucceeded);
        assert_eq!(
            pay.occurred_at.unwrap().to_rfc3339(),
            "2026-01-15T06:30:00.500+00:00"
        );
        let closed = n("&trade_status=TRADE_CLOSED&gmt_close=2026-01-15+14:29:59").unwrap();
        assert_eq!(closed.event_type, EventType::PaymentCanceled);
        assert_eq!(
            closed.occurred_at.unwrap().to_rfc3339(),
            "2026-01-15T06:29:59+00:00"
        );
        assert_eq!(closed.dedup_extra, "");
        let waiting = n("&trade_status=WAIT_BUYER_PAY&gmt_create=2026-01-15+14:29:50").unwrap();
        assert_eq!(waiting.event_type, EventType::PaymentCreated);
        assert!(!waiting.event_type.is_deliverable());
        assert_eq!(
            n("&trade_status=SOMETHING_NEW").unwrap().event_type,
            EventType::PaymentUnknown
        );
        assert_eq!(n("&trade_status=SOMETHING_NEW").unwrap().occurred_at, None);

        let refund =
            n("&trade_status=TRADE_SUCCESS&out_biz_no=R1&refund_fee=0.5&gmt_refund=2026-01-15+14:40:00.320")
                .unwrap();
        assert_eq!(refund.event_type, EventType::RefundSucceeded);
        assert_eq!(refund.refunded_total.map(AmountFen::fen), Some(50));
        assert_eq!(refund.refund_amount, None);
        assert_eq!(refund.dedup_extra, "R1");
        // a refund needs no trade_status
        assert!(n("&out_biz_no=R1&refund_fee=0.5&gmt_refund=2026-01-15+14:40:00").is_ok());

        for tail in [
            "",                                                              // no trade_status
            "&trade_status=",                                                // empty is absent
            "&trade_status=TRADE_SUCCESS&gmt_payment=yesterday",             // bad time
            "&out_biz_no=R1&gmt_refund=2026-01-15+14:40:00",                 // no refund_fee
            "&out_biz_no=R1&refund_fee=0.5",                                 // no gmt_refund
            "&out_biz_no=R1&refund_fee=-1&gmt_refund=2026-01-15+14:40:00",   // bad amount
            "&out_biz_no=R%261&refund_fee=1&gmt_refund=2026-01-15+14:40:00", // & in an identifier
            "&trade_status=TRADE_SUCCESS&x%3Dy=1",                           // = in a key
        ] {
            assert!(matches!(n(tail), Err(Rejection::BadRequest(_))), "{tail}");
        }
        for missing in ["trade_no=T", "out_trade_no=O", "total_amount=1.00"] {
            let body = format!("{base}&trade_status=TRADE_SUCCESS").replace(&format!("&{missing}"), "");
            assert!(matches!(parse(&body), Err(Rejection::BadRequest(_))), "{body}");
        }
        for amount in ["10.001", "1e3", "", "-1.00", "１"] {
            let body = format!("{base}&trade_status=TRADE_SUCCESS").replace("1.00", amount);
            assert!(matches!(parse(&body), Err(Rejection::BadRequest(_))), "{body}");
        }
        // Free text may hold & and =, verbatim after the one decoding.
        let free = n("&trade_status=TRADE_SUCCESS&passback_params=a%3D1%26b%253D2").unwrap();
        assert_eq!(free.business_params.as_deref(), Some("a=1&b%3D2"));
    }

    #[test]
    fn the_answer_is_plain_success_or_fail() {
        use crate::ingress::provider::Answer;
        use axum::http::StatusCode;
        let word = |ok, status| {
            alipay().dialect().word(&Answer {
                ok,
                status,
                reason: if ok { "" } else { "why" },
            })
        };
        let yes = word(true, StatusCode::OK);
        assert_eq!((yes.status, yes.body.as_str()), (StatusCode::OK, "success"));
        let no = word(false, StatusCode::UNAUTHORIZED);
        assert_eq!((no.status, no.body.as_str()), (StatusCode::UNAUTHORIZED, "fail"));
        assert!(alipay().signature_headers().is_empty());
        assert_eq!(alipay().kind(), ProviderKind::Alipay);
    }

    #[test]
    fn any_listed_key_verifies() {
        let (headers, body) = request_of(
            &sandbox()
                .sign_sample(&sample_spec(SampleKind::Payment, 100))
                .unwrap(),
        );
        let req = RawRequest::new(&headers, &body);
        let rotating = Alipay::new(
            KeyList::new(vec![
                public("cbb_platform_pub.pem"),
                public("alipay_public_key.pem"),
            ])
            .unwrap(),
            APP_ID,
        );
        assert!(rotating.verify(&req, now()).is_ok());
        let neither = Alipay::new(
            KeyList::new(vec![public("cbb_platform_pub.pem"), public("sqb_pub.pem")]).unwrap(),
            APP_ID,
        );
        assert_eq!(
            neither.verify(&req, now()),
            Err(Rejection::BadSignature("signature does not match"))
        );
    }

    // -----------------------------------------------------------------------
    // Binding: one Alipay key signs every application's notices.

    fn two_ids() -> impl Strategy<Value = (String, String)> {
        ("20[0-9]{14}", "20[0-9]{14}").prop_filter("different", |(a, b)| a != b)
    }

    fn cross_post(signer: &AlipaySandbox, provider: &Alipay) -> Result<Notification, Rejection> {
        let spec = sample_spec(SampleKind::Payment, 100);
        let (headers, body) = request_of(&signer.sign_sample(&spec).unwrap());
        verify_and_parse(provider, &headers, &body, spec.now)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]

        #[test]
        fn notices_are_bound_to_the_accounts_app_id((a, b) in two_ids()) {
            let key = || public("alipay_public_key.pem");
            let signer = AlipaySandbox::new(private("alipay_sandbox_priv.pem"), a.clone());
            prop_assert_eq!(
                cross_post(&signer, &Alipay::new(key(), b)).map(|_| ()),
                Err(Rejection::WrongAccount("app_id"))
            );
            prop_assert!(cross_post(&signer, &Alipay::new(key(), a)).is_ok());
        }

        #[test]
        fn notices_are_bound_to_the_accounts_auth_app_id_and_seller_id((a, b) in two_ids()) {
            let key = || public("alipay_public_key.pem");
            let signer = |auth: &str, seller: &str| {
                AlipaySandbox::new(
                    private("alipay_sandbox_priv.pem"),
                    AlipayApp::new(APP_ID)
                        .with_auth_app_id(Some(auth.to_owned()))
                        .with_seller_id(Some(seller.to_owned())),
                )
            };
            let account = |auth: Option<&str>, seller: Option<&str>| {
                Alipay::new(
                    key(),
                    AlipayApp::new(APP_ID)
                        .with_auth_app_id(auth.map(str::to_owned))
                        .with_seller_id(seller.map(str::to_owned)),
                )
            };
            let ab = signer(&a, &b);
            prop_assert!(cross_post(&ab, &account(None, None)).is_ok());
            prop_assert!(cross_post(&ab, &account(Some(&a), Some(&b))).is_ok());
            prop_assert_eq!(
                cross_post(&ab, &account(Some(&b), None)).map(|_| ()),
                Err(Rejection::WrongAccount("auth_app_id"))
            );
            prop_assert_eq!(
                cross_post(&ab, &account(Some(&a), Some(&a))).map(|_| ()),
                Err(Rejection::WrongAccount("seller_id"))
            );
            // A notice without the field does not fit an account that names it.
            let bare = AlipaySandbox::new(private("alipay_sandbox_priv.pem"), APP_ID);
            prop_assert_eq!(
                cross_post(&bare, &account(None, Some(&b))).map(|_| ()),
                Err(Rejection::WrongAccount("seller_id"))
            );
        }
    }

    // -----------------------------------------------------------------------
    // Configuration.

    fn build(text: &str) -> Result<(), AccountError> {
        let config = Config::from_toml_str(text, &vectors_dir(), &|_: &str| None).unwrap();
        build_accounts(&config.accounts).map(|_| ())
    }

    fn config_error(text: &str) -> String {
        Config::from_toml_str(text, &vectors_dir(), &|_: &str| None)
            .expect_err("refused")
            .to_string()
    }

    fn account(id: &str, rest: &str) -> String {
        format!("[[accounts]]\nid = \"{id}\"\nprovider = \"alipay\"\n{rest}")
    }

    const KEY: &str = "alipay_public_key_file = \"keys/alipay_public_key.pem\"\n";
    const CERT: &str = "alipay_public_cert_file = \"keys/alipayCertPublicKey_RSA2.crt\"\n";

    #[test]
    fn two_accounts_naming_one_application_are_refused() {
        let one = account("ali-one", &format!("app_id = \"{APP_ID}\"\n{KEY}"));
        let two = account("ali-two", &format!("app_id = \"{APP_ID}\"\n{CERT}"));
        let err = build(&format!("{one}{two}")).expect_err("refused");
        assert!(
            matches!(err.source, AccountErrorKind::SharedMerchant { .. }),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("ali-two") && text.contains("`ali-one`"), "{text}");
        assert!(text.contains(&format!("app_id = \"{APP_ID}\"")), "{text}");
        // One service provider's application for two merchants' ones.
        let isv = |id: &str, auth: &str| {
            account(
                id,
                &format!("app_id = \"{APP_ID}\"\nauth_app_id = \"{auth}\"\n{KEY}"),
            )
        };
        build(&format!(
            "{}{}",
            isv("a", "2021000000000101"),
            isv("b", "2021000000000102")
        ))
        .unwrap();
        let err = build(&format!(
            "{}{}",
            isv("a", "2021000000000101"),
            isv("b", "2021000000000101")
        ))
        .expect_err("refused");
        assert!(
            err.to_string().contains(&format!("{APP_ID}/2021000000000101")),
            "{err}"
        );
        // Two applications may share Alipay's key.
        let other = account("ali-three", &format!("app_id = \"2021000000000009\"\n{KEY}"));
        build(&format!("{one}{other}")).unwrap();
    }

    #[test]
    fn the_key_is_a_public_key_or_a_certificate() {
        let err = config_error(&account("a", &format!("app_id = \"{APP_ID}\"\n{KEY}{CERT}")));
        assert!(
            err.contains("accounts[0].alipay_public_cert_file") && err.contains("not both"),
            "{err}"
        );
        let err = config_error(&account("a", &format!("app_id = \"{APP_ID}\"\n")));
        assert!(
            err.contains("accounts[0].alipay_public_key_file: required"),
            "{err}"
        );
        let err = config_error(&account("a", KEY));
        assert!(err.contains("accounts[0].app_id: required"), "{err}");
        let err = config_error(&account("a", &format!("app_id = \" \"\n{KEY}")));
        assert!(err.contains("accounts[0].app_id: must not be empty"), "{err}");
        let err = config_error(&account(
            "a",
            &format!("app_id = \"{APP_ID}\"\nseller_id = \"\"\n{KEY}"),
        ));
        assert!(err.contains("accounts[0].seller_id: must not be empty"), "{err}");
        let err = config_error(&account(
            "a",
            &format!("app_id = \"{APP_ID}\"\nalipay_public_key = \"x\"\n"),
        ));
        assert!(err.contains("unknown field `alipay_public_key`"), "{err}");
        // Rotation: the new key beside the old one.
        let rotating =
            "alipay_public_key_files = [\"keys/cbb_platform_pub.pem\", \"keys/alipay_public_key.pem\"]\n";
        build(&account("a", &format!("app_id = \"{APP_ID}\"\n{rotating}"))).unwrap();
        build(&account("a", &format!("app_id = \"{APP_ID}\"\n{CERT}"))).unwrap();
        // A small key is refused.
        let small = "alipay_public_cert_file = \"keys/abc_trustpay_cert.pem\"\n";
        let err = build(&account("a", &format!("app_id = \"{APP_ID}\"\n{small}"))).expect_err("refused");
        assert!(err.to_string().contains("too small"), "{err}");
    }

    #[test]
    fn certificate_mode_takes_the_first_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let keys = vectors_dir().join("keys");
        let alipay_cert = std::fs::read_to_string(keys.join("alipayCertPublicKey_RSA2.crt")).unwrap();
        let other_cert = std::fs::read_to_string(keys.join("wechatpay_platform_cert.pem")).unwrap();
        let chain = dir.path().join("chain.crt");
        std::fs::write(&chain, format!("{alipay_cert}\n{other_cert}")).unwrap();
        let reversed = dir.path().join("reversed.crt");
        std::fs::write(&reversed, format!("{other_cert}\n{alipay_cert}")).unwrap();
        let cert_key = load_certificate(&keys.join("alipayCertPublicKey_RSA2.crt")).unwrap();
        assert_eq!(
            load_certificate(&chain).unwrap().pkcs1_der(),
            cert_key.pkcs1_der()
        );
        assert_ne!(
            load_certificate(&reversed).unwrap().pkcs1_der(),
            cert_key.pkcs1_der()
        );
        // A DER certificate.
        let body: String = alipay_cert.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = dir.path().join("cert.der");
        std::fs::write(
            &der,
            base64::engine::general_purpose::STANDARD.decode(body).unwrap(),
        )
        .unwrap();
        assert_eq!(load_certificate(&der).unwrap().pkcs1_der(), cert_key.pkcs1_der());
        assert!(load_certificate(&dir.path().join("missing.crt")).is_err());

        // Signed with the certificate's key, through the module's settings.
        let text = account(
            "cert",
            &format!(
                "app_id = \"{APP_ID}\"\nalipay_public_cert_file = \"{}\"\nsandbox_private_key_file = \
                 \"keys/alipay_cert_sandbox_priv.pem\"\n",
                chain.display()
            ),
        );
        let config = Config::from_toml_str(&text, &vectors_dir(), &|_: &str| None).unwrap();
        let accounts = build_accounts(&config.accounts).unwrap();
        let signer = crate::ingress::registry::build_sandbox_signer(&config.accounts[0]).unwrap();
        for kind in [SampleKind::Payment, SampleKind::Refund] {
            let spec = sample_spec(kind, 250);
            let (headers, body) = request_of(&signer.sign_sample(&spec).unwrap());
            let req = RawRequest::new(&headers, &body);
            assert!(accounts["cert"].provider.accept(&req, spec.now).is_ok());
            // ... and not with the public-key mode's key.
            assert!(alipay().verify(&req, spec.now).is_err());
        }
    }

    // -----------------------------------------------------------------------
    // Properties.

    /// One signed sample of each kind, shared by the tamper properties (RSA
    /// signing is slow in debug builds).
    fn signed_sample(refund: bool) -> &'static SignedRequest {
        static SIGNED: OnceLock<[SignedRequest; 2]> = OnceLock::new();
        let signed = SIGNED.get_or_init(|| {
            [SampleKind::Payment, SampleKind::Refund].map(|kind| {
                let mut spec = sample_spec(kind, 10001);
                spec.trade_no = "2026011522001446880500000001".into();
                spec.merchant_order_no = "ORD-1".into();
                sandbox().sign_sample(&spec).unwrap()
            })
        });
        &signed[usize::from(refund)]
    }

    /// Changing byte `index` of a signed body by `flip` is never accepted
    /// with changed content: it is a bad signature, except where the change
    /// leaves the signed fields and the signature as they were (`%2B`
    /// written `%2b`, `+` as a space, `sign_type=RSA2` cut into the absent
    /// `sign_type&RSA2`, the signature's padding cut off: the very same
    /// notice), or cuts a key given twice
    /// out of another (`out_trade_no` into `out&trade_no`), refused before
    /// the signature is checked.
    fn check_changed_byte(signed: &SignedRequest, index: usize, flip: u8) -> Result<(), String> {
        let mut body = signed.body.clone();
        let i = index % body.len();
        body[i] ^= flip;
        let original = parse_form_bytes(&signed.body).unwrap();
        let headers = HeaderMap::new();
        let result = alipay().verify(&RawRequest::new(&headers, &body), now());
        let signature = |pairs: &Pairs| {
            let sign = std::str::from_utf8(field_bytes(pairs, "sign")?).ok()?;
            crate::ingress::common::rsa_keys::decode_base64_lenient(sign)
        };
        let same_notice = |pairs: &Pairs| {
            signing_bytes(pairs) == signing_bytes(&original) && signature(pairs) == signature(&original)
        };
        let fine = match parse_form_bytes(&body) {
            // The same signed fields and signature bytes: accepted, it is
            // the very same notice, or refused (`sign_type=RSA`).
            Ok(pairs) if same_notice(&pairs) => match accept(alipay(), &body) {
                Ok(n) => accept(alipay(), &signed.body) == Ok(n),
                Err(e) => matches!(e, Rejection::BadSignature(_)),
            },
            Err(Rejection::BadRequest("duplicate form key")) => {
                result == Err(Rejection::BadRequest("duplicate form key"))
            }
            _ => changed_byte_is_refused(alipay(), signed, now(), index, flip),
        };
        if fine {
            Ok(())
        } else {
            let around =
                String::from_utf8_lossy(&body[i.saturating_sub(20)..(i + 20).min(body.len())]).into_owned();
            Err(format!("byte {i} ^ {flip:#04x} ({around}): {result:?}"))
        }
    }

    /// Every byte, changed into each character that means something in a
    /// form (`&`, `=`, `%`, `+`, a space) and into its other ASCII case.
    #[test]
    fn no_byte_changed_into_form_syntax_is_accepted() {
        for refund in [false, true] {
            let signed = signed_sample(refund);
            for (i, byte) in signed.body.iter().enumerate() {
                for flip in [
                    byte ^ b'&',
                    byte ^ b'=',
                    byte ^ b'%',
                    byte ^ b'+',
                    byte ^ b' ',
                    0x20,
                ] {
                    if flip != 0 {
                        check_changed_byte(signed, i, flip).unwrap();
                    }
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_changed_byte_is_refused(index in 0usize..4096, flip in 1u8..=255, refund in any::<bool>()) {
            let result = check_changed_byte(signed_sample(refund), index, flip);
            prop_assert!(result.is_ok(), "{:?}", result);
        }

        #[test]
        fn parser_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let headers = HeaderMap::new();
            let req = RawRequest::new(&headers, &body);
            let _ = alipay().accept(&req, now());
            let _ = alipay().parse(&req);
        }

        #[test]
        fn form_like_bodies_never_panic(
            fields in proptest::collection::vec(
                (prop_oneof![
                    Just("app_id"), Just("trade_no"), Just("out_trade_no"), Just("total_amount"),
                    Just("trade_status"), Just("out_biz_no"), Just("refund_fee"), Just("gmt_refund"),
                    Just("gmt_payment"), Just("notify_time"), Just("charset"), Just("sign_type"),
                    Just("sign"), Just("passback_params"),
                ], proptest::collection::vec(proptest::num::u8::ANY, 0..16)),
                0..12,
            )
        ) {
            let mut body = format!("app_id={APP_ID}");
            for (k, v) in &fields {
                body.push_str(&format!("&{k}={}", percent_encode(v, NON_ALPHANUMERIC)));
            }
            let headers = HeaderMap::new();
            let req = RawRequest::new(&headers, body.as_bytes());
            let _ = alipay().accept(&req, now());
            let _ = alipay().parse(&req);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn amounts_round_trip(fen in 1i64..=9_999_999_999, refund in any::<bool>()) {
            let kind = if refund { SampleKind::Refund } else { SampleKind::Payment };
            let spec = sample_spec(kind, fen);
            let (headers, body) = request_of(&sandbox().sign_sample(&spec).unwrap());
            let n = verify_and_parse(alipay(), &headers, &body, spec.now).unwrap();
            prop_assert_eq!(n.amount.fen(), fen);
            if refund {
                prop_assert_eq!(n.refunded_total.map(AmountFen::fen), Some(fen));
            }
        }
    }
}
