//! 农业银行 TrustPay 综合收银台 (seed 002): a form field `MSG` holding base64 of
//! `<MSG><Message>…</Message><Signature-Algorithm>…</Signature-Algorithm><Signature>…</Signature></MSG>`,
//! signed (SHA1withRSA, often with an RSA-1024 bank certificate) over the exact
//! bytes inside `<Message>`.

use super::fuzz::{Assisted, FuzzTarget, Split};
use std::ops::Range;
use std::path::PathBuf;

use base64::Engine;
use chrono::{DateTime, Utc};
use quick_xml::events::Event as XmlEvent;
use quick_xml::Reader;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::common::form::encode_form;
use super::common::rsa_keys::decode_base64_lenient;
use super::common::{parse_form, parse_shanghai_date_time, RsaAlgorithm, RsaPublicKey, RsaSigningKey};
use super::module::{load_keys, sandbox_key, BenchMode, ProviderModule, SandboxAccount};
use super::provider::{
    Dialect, Provider, RawRequest, Rejection, SampleKind, SampleSigner, SampleSpec, SignError, SignedRequest,
    Verified,
};
use super::registry::AccountErrorKind;
use crate::config::{AccountCx, ConfigError};
use crate::domain::{AmountFen, EventType, Notification, ProviderKind};
use crate::key_list::KeyList;

const MESSAGE_OPEN: &[u8] = b"<Message>";
const MESSAGE_CLOSE: &[u8] = b"</Message>";
/// Deeper nesting than any bank notice has is refused rather than walked.
const MAX_DEPTH: usize = 32;

/// Verifies callbacks with the bank certificate's public key (RSA-1024
/// allowed), or any of its certificates' while one is renewed.
pub struct Abc {
    keys: KeyList<RsaPublicKey>,
    /// The account's pinned algorithm: a notice cannot choose a weaker one.
    algorithm: AbcAlgorithm,
    /// The account's `merchant_id`: the Message's `MerchantID` must be it.
    merchant_id: String,
}

impl Abc {
    pub fn new(keys: impl Into<KeyList<RsaPublicKey>>, algorithm: AbcAlgorithm, merchant_id: String) -> Self {
        Self {
            keys: keys.into(),
            algorithm,
            merchant_id,
        }
    }
}

/// `signature_algorithm` of an ABC account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbcAlgorithm {
    Sha1WithRsa,
    Sha256WithRsa,
}

impl AbcAlgorithm {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "SHA1withRSA" => Some(AbcAlgorithm::Sha1WithRsa),
            "SHA256withRSA" => Some(AbcAlgorithm::Sha256WithRsa),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AbcAlgorithm::Sha1WithRsa => "SHA1withRSA",
            AbcAlgorithm::Sha256WithRsa => "SHA256withRSA",
        }
    }

    fn rsa(self) -> RsaAlgorithm {
        match self {
            AbcAlgorithm::Sha1WithRsa => RsaAlgorithm::Sha1Legacy1024,
            AbcAlgorithm::Sha256WithRsa => RsaAlgorithm::Sha256Legacy1024,
        }
    }
}

/// The decoded `MSG` document and where its signed part lies.
struct Envelope {
    doc: Vec<u8>,
    /// The bytes between the first `<Message>` and the first `</Message>`.
    message: Range<usize>,
}

impl Envelope {
    fn from_body(body: &[u8]) -> Result<Self, Rejection> {
        let pairs = parse_form(body)?;
        let msg = pairs
            .iter()
            .find(|(k, v)| k == "MSG" && !v.is_empty())
            .map(|(_, v)| v.as_str())
            .ok_or(Rejection::BadRequest("missing MSG"))?;
        // Base64 has no spaces: one here is a `+` the sender did not
        // percent-encode, turned into a space by form decoding. Restoring it
        // cannot help a forger, since the signature is checked on the result.
        let msg = msg.replace(' ', "+");
        let doc = decode_base64_lenient(&msg).ok_or(Rejection::BadRequest("MSG is not base64"))?;
        let start = find(&doc, MESSAGE_OPEN)
            .map(|i| i + MESSAGE_OPEN.len())
            .ok_or(Rejection::BadRequest("MSG has no <Message>"))?;
        let end = find(&doc, MESSAGE_CLOSE).ok_or(Rejection::BadRequest("MSG has no </Message>"))?;
        if end < start {
            return Err(Rejection::BadRequest("MSG has </Message> before <Message>"));
        }
        Ok(Self {
            doc,
            message: start..end,
        })
    }

    fn message(&self) -> &[u8] {
        self.doc.get(self.message.clone()).unwrap_or_default()
    }

    /// What follows the signed message: where the signature block lives.
    fn trailer(&self) -> &[u8] {
        let from = self.message.end.saturating_add(MESSAGE_CLOSE.len());
        self.doc.get(from..).unwrap_or_default()
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The raw content of the first `<name>…</name>` in `bytes` (no attributes).
fn element<'a>(bytes: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let start = find(bytes, open.as_bytes())? + open.len();
    let rest = bytes.get(start..)?;
    let len = find(rest, close.as_bytes())?;
    rest.get(..len)
}

/// The message text: UTF-8 when it is valid UTF-8, else the bank's usual
/// GBK/GB2312 text, read as GB18030 (a superset of both).
fn message_text(bytes: &[u8]) -> Result<String, Rejection> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok(text.to_owned());
    }
    encoding_rs::GB18030
        .decode_without_bom_handling_and_without_replacement(bytes)
        .map(|text| text.into_owned())
        .ok_or(Rejection::BadRequest("Message is neither UTF-8 nor GB18030"))
}

/// Every leaf element (one without child elements) as `(name, unescaped text)`,
/// in document order, whatever its nesting. The XML must be well formed.
fn leaves(text: &str) -> Result<Vec<(String, String)>, Rejection> {
    const BAD: Rejection = Rejection::BadRequest("Message is not well-formed XML");
    struct Open {
        name: String,
        has_child: bool,
        text: String,
    }
    let mut reader = Reader::from_str(text);
    let mut stack: Vec<Open> = Vec::new();
    let mut out = Vec::new();
    loop {
        match reader.read_event().map_err(|_| BAD)? {
            XmlEvent::Start(e) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(Rejection::BadRequest("Message is nested too deeply"));
                }
                if let Some(parent) = stack.last_mut() {
                    parent.has_child = true;
                }
                let name = std::str::from_utf8(e.name().as_ref())
                    .map_err(|_| BAD)?
                    .to_owned();
                stack.push(Open {
                    name,
                    has_child: false,
                    text: String::new(),
                });
            }
            XmlEvent::Empty(e) => {
                if let Some(parent) = stack.last_mut() {
                    parent.has_child = true;
                }
                let name = std::str::from_utf8(e.name().as_ref())
                    .map_err(|_| BAD)?
                    .to_owned();
                out.push((name, String::new()));
            }
            XmlEvent::Text(t) => {
                if let Some(open) = stack.last_mut() {
                    open.text.push_str(&t.unescape().map_err(|_| BAD)?);
                }
            }
            XmlEvent::CData(c) => {
                if let Some(open) = stack.last_mut() {
                    open.text
                        .push_str(std::str::from_utf8(&c.into_inner()).map_err(|_| BAD)?);
                }
            }
            XmlEvent::End(_) => {
                // The reader checks that the end tag matches the open one.
                let open = stack.pop().ok_or(BAD)?;
                if !open.has_child {
                    out.push((open.name, open.text));
                }
            }
            XmlEvent::Eof => break,
            XmlEvent::Comment(_) | XmlEvent::Decl(_) | XmlEvent::PI(_) | XmlEvent::DocType(_) => {}
        }
    }
    if stack.is_empty() {
        Ok(out)
    } else {
        Err(BAD)
    }
}

/// The leaf fields of the Message, each name at most once.
struct Fields(Vec<(String, String)>);

impl Fields {
    /// A name given twice is ambiguous (which one did the bank mean?), so the
    /// Message is refused rather than read by position.
    fn new(leaves: Vec<(String, String)>) -> Result<Self, Rejection> {
        let mut seen = std::collections::HashSet::with_capacity(leaves.len());
        if leaves.iter().any(|(name, _)| !seen.insert(name.as_str())) {
            return Err(Rejection::BadRequest("a Message field appears twice"));
        }
        Ok(Fields(leaves))
    }

    fn raw(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// Trimmed; empty counts as absent.
    fn get(&self, name: &str) -> Option<&str> {
        self.raw(name).map(str::trim).filter(|v| !v.is_empty())
    }

    fn to_json(&self) -> Value {
        let mut map = Map::new();
        for (k, v) in &self.0 {
            map.insert(k.clone(), Value::String(v.clone()));
        }
        Value::Object(map)
    }
}

impl Provider for Abc {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Abc
    }

    fn verify(&self, req: &RawRequest<'_>, _now: DateTime<Utc>) -> Result<Verified, Rejection> {
        let envelope = Envelope::from_body(req.body)?;
        let trailer = envelope.trailer();
        let named = element(trailer, "Signature-Algorithm")
            .ok_or(Rejection::BadSignature("missing Signature-Algorithm"))?;
        // The account's algorithm, not the message's: a notice that names
        // another is refused rather than verified the way it asks.
        if std::str::from_utf8(named).map(str::trim) != Ok(self.algorithm.as_str()) {
            return Err(Rejection::BadSignature(
                "Signature-Algorithm is not this account's",
            ));
        }
        let algorithm = self.algorithm.rsa();
        let signature = element(trailer, "Signature")
            .and_then(|s| std::str::from_utf8(s).ok())
            .filter(|s| !s.trim().is_empty())
            .ok_or(Rejection::BadSignature("missing Signature"))?;
        if !self
            .keys
            .verify_base64_any(algorithm, envelope.message(), signature)
        {
            return Err(Rejection::BadSignature("signature does not match"));
        }
        Ok(Verified::default())
    }

    fn parse(&self, req: &RawRequest<'_>) -> Result<Notification, Rejection> {
        let envelope = Envelope::from_body(req.body)?;
        let fields = Fields::new(leaves(&message_text(envelope.message())?)?)?;
        // The bank's certificate signs every merchant's notices: the signed
        // MerchantID is what ties this one to this account.
        if fields.get("MerchantID") != Some(self.merchant_id.as_str()) {
            return Err(Rejection::WrongAccount("MerchantID"));
        }

        let return_code = fields
            .get("ReturnCode")
            .ok_or(Rejection::BadRequest("missing ReturnCode"))?;
        let event_type = if return_code == "0000" {
            EventType::PaymentSucceeded
        } else {
            EventType::PaymentFailed
        };
        let order_no = fields
            .get("OrderNo")
            .ok_or(Rejection::BadRequest("missing OrderNo"))?;
        let trade_no = fields.get("iRspRef").unwrap_or(order_no);
        let amount = match fields.get("Amount") {
            Some(text) => AmountFen::parse_yuan(text)
                .map_err(|_| Rejection::BadRequest("Amount is not a valid yuan value"))?,
            None if event_type == EventType::PaymentSucceeded => {
                return Err(Rejection::BadRequest("missing Amount"))
            }
            // A failure notice need not say how much did not move.
            None => AmountFen::ZERO,
        };
        let mut n = Notification::new(event_type, trade_no.to_owned(), amount);
        n.merchant_order_no = Some(order_no.to_owned());
        n.channel = fields.get("PayType").map(str::to_owned);
        n.business_params = fields
            .raw("MerchantRemarks")
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        n.occurred_at = match (fields.get("HostDate"), fields.get("HostTime")) {
            (Some(date), Some(time)) => Some(
                parse_shanghai_date_time(date, "%Y/%m/%d", time)
                    .ok_or(Rejection::BadRequest("bad HostDate or HostTime"))?,
            ),
            _ => None,
        };
        n.dedup_extra = return_code.to_owned();
        n.raw = fields.to_json();
        Ok(n)
    }

    fn dialect(&self) -> Dialect {
        Dialect::PlainText {
            ok: "SUCCESS",
            fail: "FAIL",
        }
    }
}

/// Signs sample payment notices as the bank would, with the sandbox key, the
/// account's algorithm and its MerchantID.
pub struct AbcSandbox {
    key: RsaSigningKey,
    algorithm: AbcAlgorithm,
    merchant_id: String,
}

impl AbcSandbox {
    pub fn new(key: RsaSigningKey, algorithm: AbcAlgorithm, merchant_id: String) -> Self {
        Self {
            key,
            algorithm,
            merchant_id,
        }
    }
}

impl SampleSigner for AbcSandbox {
    fn sign_sample(&self, spec: &SampleSpec) -> Result<SignedRequest, SignError> {
        if spec.kind == SampleKind::Refund {
            return Err(SignError::Unsupported("refund"));
        }
        let local = spec.now + chrono::Duration::hours(8);
        let esc = |s: &str| quick_xml::escape::escape(s).into_owned();
        let message = format!(
            "<Merchant><ECMerchantType>EBUS</ECMerchantType><MerchantID>{merchant}</MerchantID></Merchant>\
             <TrxResponse><ReturnCode>0000</ReturnCode><ErrorMessage>交易成功</ErrorMessage>\
             <TrxType>PayResult</TrxType><OrderNo>{order}</OrderNo><Amount>{amount}</Amount>\
             <BatchNo>{batch}</BatchNo><VoucherNo>V{batch}</VoucherNo>\
             <HostDate>{date}</HostDate><HostTime>{time}</HostTime>\
             <MerchantRemarks>payhook sample</MerchantRemarks><PayType>EP097</PayType>\
             <NotifyType>1</NotifyType><iRspRef>{trade}</iRspRef></TrxResponse>",
            order = esc(&spec.merchant_order_no),
            amount = spec.amount.to_yuan_string(),
            batch = local.format("%H%M%S"),
            date = local.format("%Y/%m/%d"),
            time = local.format("%H:%M:%S"),
            trade = esc(&spec.trade_no),
            merchant = esc(&self.merchant_id),
        );
        let mut signature = self
            .key
            .sign(self.algorithm.rsa(), message.as_bytes())
            .map_err(|e| SignError::Crypto(e.to_string()))?;
        if spec.forge {
            if let Some(byte) = signature.first_mut() {
                *byte ^= 1;
            }
        }
        let b64 = base64::engine::general_purpose::STANDARD;
        let doc = format!(
            "<MSG><Message>{message}</Message><Signature-Algorithm>{}</Signature-Algorithm>\
             <Signature>{}</Signature></MSG>",
            self.algorithm.as_str(),
            b64.encode(signature)
        );
        Ok(SignedRequest {
            content_type: "application/x-www-form-urlencoded",
            headers: Vec::new(),
            body: encode_form(&[("MSG", b64.encode(doc).as_str())]).into_bytes(),
        })
    }
}

/// The `abc` fuzz target's assist: the body is the raw `<MSG>…</MSG>`
/// document, which the harness base64-encodes into `MSG=…`, so that
/// mutations hit the XML parser and not base64 text.
fn fuzz_assist(s: &Split<'_>) -> Assisted {
    let b64 = base64::engine::general_purpose::STANDARD.encode(s.body);
    let body = format!(
        "MSG={}",
        b64.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
    );
    Assisted {
        headers: axum::http::HeaderMap::new(),
        body: body.into_bytes(),
    }
}

// ---------------------------------------------------------------------------
// The module's parts: its `[[accounts]]` section, and what is built from it.

/// Bank certificates may be RSA-1024.
const MIN_RSA_BITS_ABC: usize = 1024;

/// An ABC account's `[[accounts]]` keys, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AbcFile {
    certificate_file: Option<PathBuf>,
    certificate_files: Option<Vec<PathBuf>>,
    merchant_id: Option<String>,
    signature_algorithm: Option<String>,
    sandbox_private_key_file: Option<PathBuf>,
}

/// An ABC account's settings.
#[derive(Debug, Clone)]
pub struct AbcSettings {
    /// `certificate_file`, or `certificate_files` while it is renewed.
    pub certificate_files: KeyList<PathBuf>,
    /// The bank's MerchantID of this account: every notice must carry it.
    pub merchant_id: String,
    /// Pinned per account; a notice cannot choose another.
    pub signature_algorithm: AbcAlgorithm,
    pub sandbox_private_key_file: Option<PathBuf>,
}

impl ProviderModule for Abc {
    const DISPLAY_NAME: &'static str = "ABC TrustPay";
    const BENCH: &'static [BenchMode] = &[BenchMode {
        name: "abc",
        help: "ABC TrustPay: SHA1withRSA over XML",
        id: "bench-abc",
        account: "provider = \"abc\"\nmerchant_id = \"103881636900016\"\ncertificate_file = {public}\n\
                  sandbox_private_key_file = {private}\n",
    }];
    const SANDBOX: &'static [SandboxAccount] = &[
        SandboxAccount {
            id: "abc-sandbox",
            account: "provider = \"abc\"\nmerchant_id = \"103881636900016\"\ncertificate_file = \"abc_trustpay_cert.pem\"\nsandbox_private_key_file = \"abc_sandbox_priv.pem\"\n",
        },
    ];
    const SANDBOX_KEYS: &'static [(&'static str, &'static str)] = &[
        (
            "abc_trustpay_cert.pem",
            include_str!("../../sandbox-keys/abc_trustpay_cert.pem"),
        ),
        (
            "abc_sandbox_priv.pem",
            include_str!("../../sandbox-keys/abc_sandbox_priv.pem"),
        ),
    ];
    const FUZZ: &'static [FuzzTarget] = &[FuzzTarget {
        name: "abc",
        account: "provider = \"abc\"\nmerchant_id = \"103881636900016\"\ncertificate_file = \"abc_trustpay_cert.pem\"\n",
        headers: &[],
        assist: Some(fuzz_assist),
    }];
    type File = AbcFile;
    type Settings = AbcSettings;

    fn settings(f: AbcFile, cx: &AccountCx<'_>) -> Result<AbcSettings, ConfigError> {
        let certificate_files = cx
            .key_files("certificate_file", f.certificate_file, f.certificate_files)?
            .ok_or_else(|| {
                cx.invalid(
                    "certificate_file",
                    "required: the bank's certificate (certificate_files while it is renewed)",
                )
            })?;
        let merchant_id = cx.required_text(
            "merchant_id",
            f.merchant_id,
            "the bank's MerchantID of this account",
        )?;
        let signature_algorithm = match f.signature_algorithm.as_deref() {
            None => AbcAlgorithm::Sha1WithRsa,
            Some(text) => AbcAlgorithm::parse(text).ok_or_else(|| {
                cx.invalid(
                    "signature_algorithm",
                    format!("`{text}` is not SHA1withRSA or SHA256withRSA"),
                )
            })?,
        };
        Ok(AbcSettings {
            certificate_files,
            merchant_id,
            signature_algorithm,
            sandbox_private_key_file: f.sandbox_private_key_file.map(|p| cx.path(p)),
        })
    }

    fn build(s: &AbcSettings) -> Result<Self, AccountErrorKind> {
        Ok(Abc::new(
            load_keys(&s.certificate_files, MIN_RSA_BITS_ABC)?,
            s.signature_algorithm,
            s.merchant_id.clone(),
        ))
    }

    fn sandbox(s: &AbcSettings) -> Result<Box<dyn SampleSigner>, AccountErrorKind> {
        Ok(Box::new(AbcSandbox::new(
            sandbox_key(&s.sandbox_private_key_file)?,
            s.signature_algorithm,
            s.merchant_id.clone(),
        )))
    }

    fn bench_mode(_: &AbcSettings) -> Option<&'static str> {
        Some("abc")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use axum::http::HeaderMap;
    use proptest::prelude::*;

    use super::*;
    use crate::ingress::tests_support::{
        assert_no_headers, check_shared_vectors_with, request_of, sample_spec, vector_body,
        vector_public_key, vectors_dir, verify_and_parse,
    };

    /// The MerchantID of the vectors' and the sandbox's notices.
    const MERCHANT: &str = "103881636900016";

    fn abc() -> Abc {
        let key = RsaPublicKey::load(&vectors_dir().join("keys/abc_trustpay_cert.pem"), 1024).unwrap();
        Abc::new(key, AbcAlgorithm::Sha1WithRsa, MERCHANT.into())
    }

    fn abc_sandbox() -> AbcSandbox {
        AbcSandbox::new(signing_key(), AbcAlgorithm::Sha1WithRsa, MERCHANT.into())
    }

    fn signing_key() -> RsaSigningKey {
        RsaSigningKey::load(&vectors_dir().join("keys/abc_sandbox_priv.pem")).unwrap()
    }

    /// A request body for `message`, signed over its bytes as given.
    fn signed_body(message: &[u8], alg_name: &str, alg: RsaAlgorithm) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let signature = b64.encode(signing_key().sign(alg, message).unwrap());
        let mut doc = b"<MSG><Message>".to_vec();
        doc.extend_from_slice(message);
        doc.extend_from_slice(
            format!(
                "</Message><Signature-Algorithm>{alg_name}</Signature-Algorithm><Signature>{signature}</Signature></MSG>"
            )
            .as_bytes(),
        );
        encode_form(&[("MSG", b64.encode(doc).as_str())]).into_bytes()
    }

    #[test]
    fn vectors() {
        let provider = |account: &Value| {
            let algorithm = account["signature_algorithm"].as_str().unwrap_or("SHA1withRSA");
            Abc::new(
                vector_public_key(account, "certificate_file", 1024),
                AbcAlgorithm::parse(algorithm).unwrap(),
                account["merchant_id"].as_str().unwrap().to_owned(),
            )
        };
        let seen = check_shared_vectors_with("abc", provider, assert_no_headers);
        assert_eq!(seen, 6, "abc vectors");
    }

    #[test]
    fn vector_details_not_in_expect() {
        let headers = HeaderMap::new();
        let now = Utc::now();
        let gb = vector_body("abc-paid-gb18030");
        let n = verify_and_parse(&abc(), &headers, gb.as_bytes(), now).unwrap();
        assert_eq!(n.raw["ErrorMessage"], "交易成功");
        assert_eq!(n.provider_trade_no, "ABCGB1");
        assert_eq!(n.dedup_extra, "0000");
        assert_eq!(n.raw["MerchantID"], "103881636900016");

        let failed = vector_body("abc-failed");
        let n = verify_and_parse(&abc(), &headers, failed.as_bytes(), now).unwrap();
        assert_eq!(n.raw["ErrorMessage"], "商户无可用支付方式");
        assert_eq!(n.dedup_extra, "2308");
        assert_eq!(n.amount.fen(), 10000);
    }

    #[test]
    fn sample_round_trip_and_refund_unsupported() {
        let sandbox = abc_sandbox();
        let mut spec = sample_spec(SampleKind::Payment, 12345);
        spec.merchant_order_no = "O<&>\"'1".into();
        let signed = sandbox.sign_sample(&spec).unwrap();
        assert_eq!(signed.content_type, "application/x-www-form-urlencoded");
        let (headers, body) = request_of(&signed);
        let n = verify_and_parse(&abc(), &headers, &body, spec.now).unwrap();
        assert_eq!(n.event_type, EventType::PaymentSucceeded);
        assert_eq!(n.amount.fen(), 12345);
        assert_eq!(n.provider_trade_no, spec.trade_no);
        assert_eq!(n.merchant_order_no.as_deref(), Some("O<&>\"'1"));
        assert_eq!(n.channel.as_deref(), Some("EP097"));
        assert_eq!(n.occurred_at, Some(spec.now));

        spec.forge = true;
        let (headers, body) = request_of(&sandbox.sign_sample(&spec).unwrap());
        assert!(matches!(
            abc().verify(&RawRequest::new(&headers, &body), spec.now),
            Err(Rejection::BadSignature(_))
        ));

        let refund = sample_spec(SampleKind::Refund, 100);
        assert!(matches!(
            sandbox.sign_sample(&refund),
            Err(SignError::Unsupported("refund"))
        ));
    }

    #[test]
    fn sha256_gbk_nesting_entities_and_fallbacks() {
        // GBK bytes, entities, CDATA, deeper nesting, empty iRspRef, SHA256withRSA.
        let (gbk, _, _) = encoding_rs::GBK.encode("失败&lt;原因&gt;");
        let mut message =
            b"<MerchantID>103881636900016</MerchantID><TrxResponse><ReturnCode>EUNKN</ReturnCode><ErrorMessage>"
                .to_vec();
        message.extend_from_slice(&gbk);
        message.extend_from_slice(
            b"</ErrorMessage><Order><OrderNo> O-1 </OrderNo></Order><iRspRef/>\
              <MerchantRemarks><![CDATA[a<b]]> &amp; c</MerchantRemarks><HostDate>2026/01/15</HostDate>\
              <HostTime>23:59:59</HostTime></TrxResponse>",
        );
        let body = signed_body(&message, "SHA256withRSA", RsaAlgorithm::Sha256Legacy1024);
        let sha256 = Abc::new(abc().keys, AbcAlgorithm::Sha256WithRsa, MERCHANT.into());
        let n = verify_and_parse(&sha256, &HeaderMap::new(), &body, Utc::now()).unwrap();
        // An account pinned to SHA1withRSA refuses it, although it verifies.
        assert!(matches!(
            verify_and_parse(&abc(), &HeaderMap::new(), &body, Utc::now()),
            Err(Rejection::BadSignature(
                "Signature-Algorithm is not this account's"
            ))
        ));
        assert_eq!(n.event_type, EventType::PaymentFailed);
        assert_eq!(n.provider_trade_no, "O-1");
        assert_eq!(n.merchant_order_no.as_deref(), Some("O-1"));
        assert_eq!(n.amount, AmountFen::ZERO);
        assert_eq!(n.business_params.as_deref(), Some("a<b & c"));
        assert_eq!(n.raw["ErrorMessage"], "失败<原因>");
        assert_eq!(n.raw["iRspRef"], "");
        assert_eq!(n.dedup_extra, "EUNKN");
        assert_eq!(n.occurred_at.unwrap().to_rfc3339(), "2026-01-15T15:59:59+00:00");
    }

    #[test]
    fn signature_problems_are_bad_signature() {
        let message = b"<ReturnCode>0000</ReturnCode><OrderNo>O</OrderNo><Amount>1</Amount>";
        let headers = HeaderMap::new();
        let verify = |body: &[u8]| abc().verify(&RawRequest::new(&headers, body), Utc::now());
        assert!(verify(&signed_body(message, "SHA1withRSA", RsaAlgorithm::Sha1Legacy1024)).is_ok());
        // the account's algorithm is the one used, whatever the message names
        let wrong = signed_body(message, "SHA1withRSA", RsaAlgorithm::Sha256Legacy1024);
        assert!(matches!(verify(&wrong), Err(Rejection::BadSignature(_))));
        let wrong = signed_body(message, "SHA256withRSA", RsaAlgorithm::Sha256Legacy1024);
        assert!(matches!(verify(&wrong), Err(Rejection::BadSignature(_))));
        let md5 = signed_body(message, "MD5withRSA", RsaAlgorithm::Sha1Legacy1024);
        assert!(matches!(verify(&md5), Err(Rejection::BadSignature(_))));

        let b64 = base64::engine::general_purpose::STANDARD;
        let form = |doc: &str| encode_form(&[("MSG", b64.encode(doc).as_str())]).into_bytes();
        for doc in [
            "<MSG><Message>x</Message><Signature-Algorithm>SHA1withRSA</Signature-Algorithm></MSG>",
            "<MSG><Message>x</Message><Signature>AAAA</Signature></MSG>",
            "<MSG><Message>x</Message><Signature-Algorithm>SHA1withRSA</Signature-Algorithm><Signature>!!</Signature></MSG>",
            // a signature block inside the signed message does not count
            "<MSG><Message><Signature-Algorithm>SHA1withRSA</Signature-Algorithm><Signature>AAAA</Signature></Message></MSG>",
        ] {
            assert!(matches!(verify(&form(doc)), Err(Rejection::BadSignature(_))), "{doc}");
        }
        let bodies: [&[u8]; 7] = [
            b"",
            b"msg=abc",
            b"MSG=",
            b"MSG=%%%not-base64",
            b"MSG=a&MSG=b",
            &form("<MSG>no message</MSG>"),
            &form("<MSG></Message><Message></MSG>"),
        ];
        for body in bodies {
            assert!(matches!(verify(body), Err(Rejection::BadRequest(_))), "{body:?}");
        }
    }

    #[test]
    fn notices_are_bound_to_the_accounts_merchant_id() {
        let parse = |message: &str| {
            let body = signed_body(message.as_bytes(), "SHA1withRSA", RsaAlgorithm::Sha1Legacy1024);
            verify_and_parse(&abc(), &HeaderMap::new(), &body, Utc::now())
        };
        let tail = "<ReturnCode>0000</ReturnCode><OrderNo>O</OrderNo><Amount>1</Amount>";
        assert!(parse(&format!(
            "<Merchant><MerchantID>{MERCHANT}</MerchantID></Merchant>{tail}"
        ))
        .is_ok());
        for other in [
            format!("<MerchantID>103881636999999</MerchantID>{tail}"),
            format!("<MerchantID></MerchantID>{tail}"),
            tail.to_owned(),
        ] {
            assert_eq!(
                parse(&other),
                Err(Rejection::WrongAccount("MerchantID")),
                "{other}"
            );
        }
        // Twice, even with this account's first: ambiguous, never read by position.
        let twice =
            format!("<MerchantID>{MERCHANT}</MerchantID><MerchantID>103881636999999</MerchantID>{tail}");
        assert_eq!(
            parse(&twice),
            Err(Rejection::BadRequest("a Message field appears twice"))
        );
    }

    #[test]
    fn unencoded_plus_survives_form_decoding() {
        let message = b"<MerchantID>103881636900016</MerchantID><ReturnCode>0000</ReturnCode><OrderNo>O</OrderNo><Amount>1</Amount>";
        let body = signed_body(message, "SHA1withRSA", RsaAlgorithm::Sha1Legacy1024);
        let careless = String::from_utf8(body)
            .unwrap()
            .replace("%2B", "+")
            .replace("%2F", "/");
        assert!(verify_and_parse(&abc(), &HeaderMap::new(), careless.as_bytes(), Utc::now()).is_ok());
    }

    #[test]
    fn malformed_messages_are_bad_requests() {
        let headers = HeaderMap::new();
        let b64 = base64::engine::general_purpose::STANDARD;
        let parse = |message: &[u8]| {
            let mut doc = b"<MSG><Message><MerchantID>103881636900016</MerchantID>".to_vec();
            doc.extend_from_slice(message);
            doc.extend_from_slice(b"</Message></MSG>");
            let body = encode_form(&[("MSG", b64.encode(doc).as_str())]);
            abc().parse(&RawRequest::new(&headers, body.as_bytes()))
        };
        let ok = "<ReturnCode>0000</ReturnCode><OrderNo>O</OrderNo><Amount>1.50</Amount>";
        assert_eq!(parse(ok.as_bytes()).unwrap().amount.fen(), 150);
        for bad in [
            "<OrderNo>O</OrderNo><Amount>1</Amount>",
            "<ReturnCode>0000</ReturnCode><Amount>1</Amount>",
            "<ReturnCode>0000</ReturnCode><OrderNo>O</OrderNo>",
            "<ReturnCode>0000</ReturnCode><OrderNo>O</OrderNo><Amount>10.001</Amount>",
            "<ReturnCode>0000</ReturnCode><OrderNo>O</OrderNo><Amount>-1</Amount>",
            "<ReturnCode>0000</ReturnCode><OrderNo>O</OrderNo><Amount>1</Amount><HostDate>2026-01-15</HostDate><HostTime>1:2</HostTime>",
            "<ReturnCode>0000</ReturnCode><OrderNo>O</OrderNo><Amount>1</Amount><a>",
            "<ReturnCode>0000</ReturnCode><OrderNo>O</OrderNo><Amount>1</Amount><a></b>",
            "<ReturnCode>0000&bogus;</ReturnCode><OrderNo>O</OrderNo><Amount>1</Amount>",
        ] {
            assert!(matches!(parse(bad.as_bytes()), Err(Rejection::BadRequest(_))), "{bad}");
        }
        let deep = format!("{}{}", "<a>".repeat(100), "</a>".repeat(100));
        assert!(matches!(parse(deep.as_bytes()), Err(Rejection::BadRequest(_))));
        // neither UTF-8 nor GB18030
        assert!(matches!(
            parse(b"<ReturnCode>\xff\xff</ReturnCode>"),
            Err(Rejection::BadRequest(_))
        ));
    }

    /// One signed sample, shared by the tamper property (RSA signing is slow in
    /// debug builds).
    fn signed_payment() -> &'static (SampleSpec, Vec<u8>, Notification) {
        static SIGNED: OnceLock<(SampleSpec, Vec<u8>, Notification)> = OnceLock::new();
        SIGNED.get_or_init(|| {
            let spec = sample_spec(SampleKind::Payment, 10001);
            let (headers, body) = request_of(&abc_sandbox().sign_sample(&spec).unwrap());
            let n = verify_and_parse(&abc(), &headers, &body, spec.now).unwrap();
            (spec, body, n)
        })
    }

    fn sandbox() -> &'static AbcSandbox {
        static SANDBOX: OnceLock<AbcSandbox> = OnceLock::new();
        SANDBOX.get_or_init(abc_sandbox)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_changed_byte_is_refused(index in 0usize..8192, flip in 1u8..=255) {
            let (spec, body, original) = signed_payment();
            let mut body = body.clone();
            let i = index % body.len();
            body[i] ^= flip;
            match verify_and_parse(&abc(), &HeaderMap::new(), &body, spec.now) {
                Err(Rejection::BadSignature(_)) | Err(Rejection::BadRequest(_)) => {}
                // bytes outside <Message> (e.g. the `<MSG>` wrapper) are not
                // signed; changing them must not change what we read
                Ok(n) => prop_assert_eq!(&n, original, "accepted with changed content"),
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        #[test]
        fn any_changed_message_byte_is_refused(index in 0usize..4096, flip in 1u8..=255) {
            let (spec, body, _) = signed_payment();
            let pairs = parse_form(body).unwrap();
            let mut doc = decode_base64_lenient(&pairs[0].1).unwrap();
            let start = find(&doc, MESSAGE_OPEN).unwrap() + MESSAGE_OPEN.len();
            let end = find(&doc, MESSAGE_CLOSE).unwrap();
            let i = start + index % (end - start);
            doc[i] ^= flip;
            let b64 = base64::engine::general_purpose::STANDARD;
            let tampered = encode_form(&[("MSG", b64.encode(doc).as_str())]);
            let result = verify_and_parse(&abc(), &HeaderMap::new(), tampered.as_bytes(), spec.now);
            prop_assert!(
                matches!(result, Err(Rejection::BadSignature(_)) | Err(Rejection::BadRequest(_))),
                "accepted: {:?}", result
            );
        }

        #[test]
        fn parser_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let headers = HeaderMap::new();
            let req = RawRequest::new(&headers, &body);
            let _ = abc().verify(&req, Utc::now());
            let _ = abc().parse(&req);
        }

        #[test]
        fn documents_never_panic(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("<Message>".to_owned()), Just("</Message>".to_owned()),
                    Just("<Signature>".to_owned()), Just("</Signature>".to_owned()),
                    Just("<Signature-Algorithm>SHA1withRSA</Signature-Algorithm>".to_owned()),
                    Just("<ReturnCode>0000</ReturnCode>".to_owned()), Just("<OrderNo>".to_owned()),
                    Just("</OrderNo>".to_owned()), Just("<Amount>1.00</Amount>".to_owned()),
                    Just("<HostDate>2026/01/15</HostDate>".to_owned()), Just("<![CDATA[".to_owned()),
                    Just("]]>".to_owned()), Just("&amp;".to_owned()), Just("&#x0;".to_owned()),
                    Just("<a/>".to_owned()), ".{0,8}",
                ],
                0..24,
            )
        ) {
            let b64 = base64::engine::general_purpose::STANDARD;
            let body = encode_form(&[("MSG", b64.encode(parts.concat()).as_str())]);
            let headers = HeaderMap::new();
            let req = RawRequest::new(&headers, body.as_bytes());
            let _ = abc().verify(&req, Utc::now());
            let _ = abc().parse(&req);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn amounts_round_trip(fen in 1i64..=9_999_999_999) {
            let spec = sample_spec(SampleKind::Payment, fen);
            let (headers, body) = request_of(&sandbox().sign_sample(&spec).unwrap());
            let n = verify_and_parse(&abc(), &headers, &body, spec.now).unwrap();
            prop_assert_eq!(n.amount.fen(), fen);
        }
    }
}
