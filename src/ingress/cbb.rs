//! CBB 支付服务 (seed 000): form body, `sign` = base64 SHA256withRSA over the
//! sorted `k=v&…` string of every other non-empty field.

use super::fuzz::FuzzTarget;
use std::path::PathBuf;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::common::form::encode_form;
use super::common::{
    parse_form, parse_shanghai_local, sorted_signing_string, RsaAlgorithm, RsaPublicKey, RsaSigningKey,
};
use super::module::{
    load_keys, sandbox_key, BenchMode, ProviderModule, SandboxAccount, SharedKeys, MIN_RSA_BITS,
};
use super::provider::{
    Dialect, Provider, RawRequest, Rejection, SampleKind, SampleSigner, SampleSpec, SignError, SignedRequest,
    Verified,
};
use super::registry::AccountErrorKind;
use crate::config::{AccountCx, ConfigError};
use crate::domain::{AmountFen, EventType, Notification, ProviderKind};
use crate::key_list::KeyList;

/// Verifies callbacks with the CBB platform public key (at least 2048 bits),
/// or any of its keys while the key is rotated.
pub struct Cbb {
    keys: KeyList<RsaPublicKey>,
}

impl Cbb {
    pub fn new(keys: impl Into<KeyList<RsaPublicKey>>) -> Self {
        Self { keys: keys.into() }
    }
}

/// A field's value, with an empty value counting as absent.
///
/// Empty fields are left out of the signing string, so they are *not*
/// authenticated: anyone could add `outRequestNo=` or `status=` to a genuine
/// body without breaking its signature. Treating them as absent keeps every
/// value the parser acts on covered by the signature.
fn field<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, v)| k == key && !v.is_empty())
        .map(|(_, v)| v.as_str())
}

fn required<'a>(
    pairs: &'a [(String, String)],
    key: &str,
    missing: &'static str,
) -> Result<&'a str, Rejection> {
    field(pairs, key).ok_or(Rejection::BadRequest(missing))
}

fn yuan(text: &str) -> Result<AmountFen, Rejection> {
    AmountFen::parse_yuan(text).map_err(|_| Rejection::BadRequest("an amount is not a valid yuan value"))
}

fn time_of(
    pairs: &[(String, String)],
    key: &str,
    bad: &'static str,
) -> Result<Option<DateTime<Utc>>, Rejection> {
    match field(pairs, key) {
        Some(text) => parse_shanghai_local(text)
            .map(Some)
            .ok_or(Rejection::BadRequest(bad)),
        None => Ok(None),
    }
}

/// The fields whose values decide what a notice means. A `&` or `=` in one of
/// them (or in any key) after decoding would let a genuine notice be re-cut
/// into another with the same signing string: `outRequestNo=r&outTradeNo=O`
/// signs exactly as `outRequestNo=r%26outTradeNo%3DO` does. Free text
/// (`businessParams`) may contain both.
const UNAMBIGUOUS: [&str; 6] = [
    "tradeNo",
    "outTradeNo",
    "outRequestNo",
    "status",
    "totalNumber",
    "refundAmount",
];

/// The decoded form, refused if the signing string could be cut two ways.
fn decoded(body: &[u8]) -> Result<Vec<(String, String)>, Rejection> {
    let pairs = parse_form(body)?;
    let cuts = |text: &str| text.contains(['&', '=']);
    let ambiguous = pairs
        .iter()
        .any(|(k, v)| cuts(k) || (UNAMBIGUOUS.contains(&k.as_str()) && cuts(v)));
    if ambiguous {
        return Err(Rejection::BadRequest("a key or identifier contains & or ="));
    }
    Ok(pairs)
}

impl Cbb {
    fn verify_pairs(&self, pairs: &[(String, String)]) -> Result<Verified, Rejection> {
        let Some(sign) = field(pairs, "sign") else {
            return Err(Rejection::BadSignature("missing sign"));
        };
        let signing_string = sorted_signing_string(pairs, &["sign"]);
        if !self
            .keys
            .verify_base64_any(RsaAlgorithm::Sha256, signing_string.as_bytes(), sign)
        {
            return Err(Rejection::BadSignature("signature does not match"));
        }
        Ok(Verified::default())
    }
}

impl Provider for Cbb {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Cbb
    }

    fn verify(&self, req: &RawRequest<'_>, _now: DateTime<Utc>) -> Result<Verified, Rejection> {
        self.verify_pairs(&decoded(req.body)?)
    }

    fn parse(&self, req: &RawRequest<'_>) -> Result<Notification, Rejection> {
        parse_pairs(&decoded(req.body)?)
    }

    /// The form is decoded once, for both steps.
    fn accept(
        &self,
        req: &RawRequest<'_>,
        _now: DateTime<Utc>,
    ) -> Result<(Verified, Notification), Rejection> {
        let pairs = decoded(req.body)?;
        let verified = self.verify_pairs(&pairs)?;
        Ok((verified, parse_pairs(&pairs)?))
    }

    fn dialect(&self) -> Dialect {
        Dialect::PlainText {
            ok: "SUCCESS",
            fail: "FAIL",
        }
    }
}

fn parse_pairs(pairs: &[(String, String)]) -> Result<Notification, Rejection> {
    let trade_no = required(pairs, "tradeNo", "missing tradeNo")?;
    let status = required(pairs, "status", "missing status")?;
    let total = field(pairs, "totalNumber").map(yuan).transpose()?;

    let mut n = if let Some(refund_no) = field(pairs, "outRequestNo") {
        // CBB only documents `status=SUCCESS` for refund notices. There is
        // no "refund.unknown" event, and announcing a refund in a state we
        // cannot name as succeeded or failed would mislead merchants, so an
        // unrecognised refund status is refused (400: counted and logged,
        // and CBB retries) instead of being guessed.
        let event_type = match status {
            "SUCCESS" => EventType::RefundSucceeded,
            "FAIL" | "FAILED" | "CLOSED" => EventType::RefundFailed,
            "PROCESSING" => EventType::RefundProcessing,
            _ => return Err(Rejection::BadRequest("unknown refund status")),
        };
        let refund_amount = yuan(required(pairs, "refundAmount", "missing refundAmount")?)?;
        // A refund notice carries no order total; the refund amount is the
        // money this event moves.
        let mut n = Notification::new(event_type, trade_no.to_owned(), total.unwrap_or(refund_amount));
        n.refund_no = Some(refund_no.to_owned());
        n.refund_amount = Some(refund_amount);
        n.occurred_at = time_of(pairs, "refundTime", "bad refundTime")?;
        n.dedup_extra = refund_no.to_owned();
        n
    } else {
        // CBB only notifies successful payments (`status=SUCCESS`). Should
        // it ever send an explicit failure we pass that on; any other,
        // unknown status is still authentic, so it is stored and delivered
        // as `payment.unknown` (merchants must neither ship nor cancel)
        // rather than refused forever or guessed to be a failure.
        let event_type = match status {
            "SUCCESS" => EventType::PaymentSucceeded,
            "FAIL" | "FAILED" | "CLOSED" => EventType::PaymentFailed,
            _ => EventType::PaymentUnknown,
        };
        let amount = total.ok_or(Rejection::BadRequest("missing totalNumber"))?;
        let mut n = Notification::new(event_type, trade_no.to_owned(), amount);
        n.channel = field(pairs, "channel").map(str::to_owned);
        n.business_params = field(pairs, "businessParams").map(str::to_owned);
        n.occurred_at = time_of(pairs, "payTime", "bad payTime")?;
        n
    };
    n.merchant_order_no = field(pairs, "outTradeNo").map(str::to_owned);
    // Only signed fields: `sign` itself and unsigned empty fields are left out.
    let raw: Map<String, Value> = pairs
        .iter()
        .filter(|(k, v)| k != "sign" && !v.is_empty())
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    n.raw = Value::Object(raw);
    Ok(n)
}

/// Signs sample callbacks as the CBB platform would, with the sandbox key.
pub struct CbbSandbox {
    key: RsaSigningKey,
}

impl CbbSandbox {
    pub fn new(key: RsaSigningKey) -> Self {
        Self { key }
    }
}

impl SampleSigner for CbbSandbox {
    fn sign_sample(&self, spec: &SampleSpec) -> Result<SignedRequest, SignError> {
        let local = (spec.now + chrono::Duration::hours(8))
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        let yuan = spec.amount.to_yuan_string();
        let refund_no = format!("R{}", spec.trade_no);
        let mut fields: Vec<(&str, &str)> = vec![
            ("tradeNo", spec.trade_no.as_str()),
            ("outTradeNo", spec.merchant_order_no.as_str()),
        ];
        match spec.kind {
            SampleKind::Payment => fields.extend([
                ("status", "SUCCESS"),
                ("totalNumber", yuan.as_str()),
                ("payTime", local.as_str()),
                ("channel", "WX_PAGE"),
                ("payThird", "WE_CHAT"),
                ("businessParams", r#"{"source":"payhook sample"}"#),
            ]),
            SampleKind::Refund => fields.extend([
                ("outRequestNo", refund_no.as_str()),
                ("refundAmount", yuan.as_str()),
                ("status", "SUCCESS"),
                ("refundTime", local.as_str()),
            ]),
        }
        let owned: Vec<(String, String)> = fields
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let signing_string = sorted_signing_string(&owned, &["sign"]);
        let mut signature = self
            .key
            .sign(RsaAlgorithm::Sha256, signing_string.as_bytes())
            .map_err(|e| SignError::Crypto(e.to_string()))?;
        if spec.forge {
            if let Some(byte) = signature.first_mut() {
                *byte ^= 1;
            }
        }
        let sign = base64::engine::general_purpose::STANDARD.encode(signature);
        fields.push(("sign", sign.as_str()));
        Ok(SignedRequest {
            content_type: "application/x-www-form-urlencoded",
            headers: Vec::new(),
            body: encode_form(&fields).into_bytes(),
        })
    }
}

// ---------------------------------------------------------------------------
// The module's parts: its `[[accounts]]` section, and what is built from it.

/// A CBB account's `[[accounts]]` keys, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CbbFile {
    public_key_file: Option<PathBuf>,
    public_key_files: Option<Vec<PathBuf>>,
    sandbox_private_key_file: Option<PathBuf>,
}

/// A CBB account's settings.
#[derive(Debug, Clone)]
pub struct CbbSettings {
    /// `public_key_file`, or `public_key_files` while the key is rotated.
    pub public_key_files: KeyList<PathBuf>,
    pub sandbox_private_key_file: Option<PathBuf>,
}

impl ProviderModule for Cbb {
    const DISPLAY_NAME: &'static str = "CBB";
    const BENCH: &'static [BenchMode] = &[BenchMode {
        name: "cbb",
        help: "CBB: SHA256withRSA (RSA-2048) over the sorted form",
        id: "bench-cbb",
        account: "provider = \"cbb\"\npublic_key_file = {public}\nsandbox_private_key_file = {private}\n",
    }];
    const SANDBOX: &'static [SandboxAccount] = &[
        SandboxAccount {
            id: "cbb-sandbox",
            account: "provider = \"cbb\"\npublic_key_file = \"cbb_platform_pub.pem\"\nsandbox_private_key_file = \"cbb_sandbox_priv.pem\"\n",
        },
    ];
    const SANDBOX_KEYS: &'static [(&'static str, &'static str)] = &[
        (
            "cbb_platform_pub.pem",
            include_str!("../../sandbox-keys/cbb_platform_pub.pem"),
        ),
        (
            "cbb_sandbox_priv.pem",
            include_str!("../../sandbox-keys/cbb_sandbox_priv.pem"),
        ),
    ];
    const FUZZ: &'static [FuzzTarget] = &[FuzzTarget {
        name: "cbb",
        account: "provider = \"cbb\"\npublic_key_file = \"cbb_platform_pub.pem\"\n",
        headers: &[],
        assist: None,
    }];
    type File = CbbFile;
    type Settings = CbbSettings;

    fn settings(f: CbbFile, cx: &AccountCx<'_>) -> Result<CbbSettings, ConfigError> {
        let public_key_files = cx
            .key_files("public_key_file", f.public_key_file, f.public_key_files)?
            .ok_or_else(|| {
                cx.invalid(
                    "public_key_file",
                    "required: the CBB platform public key (public_key_files while it is rotated)",
                )
            })?;
        Ok(CbbSettings {
            public_key_files,
            sandbox_private_key_file: f.sandbox_private_key_file.map(|p| cx.path(p)),
        })
    }

    fn build(s: &CbbSettings) -> Result<Self, AccountErrorKind> {
        Ok(Cbb::new(load_keys(&s.public_key_files, MIN_RSA_BITS)?))
    }

    fn sandbox(s: &CbbSettings) -> Result<Box<dyn SampleSigner>, AccountErrorKind> {
        Ok(Box::new(CbbSandbox::new(sandbox_key(
            &s.sandbox_private_key_file,
        )?)))
    }

    /// CBB notices name no merchant: only the platform key tells two
    /// accounts apart.
    fn shared_keys(s: &CbbSettings) -> Result<Option<SharedKeys>, AccountErrorKind> {
        let keys = load_keys(&s.public_key_files, MIN_RSA_BITS)?;
        Ok(Some(SharedKeys {
            what: "platform public key",
            keys: keys.iter().map(|key| key.pkcs1_der().to_vec()).collect(),
        }))
    }

    fn bench_mode(_: &CbbSettings) -> Option<&'static str> {
        Some("cbb")
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

    fn cbb() -> Cbb {
        let key = RsaPublicKey::load(&vectors_dir().join("keys/cbb_platform_pub.pem"), 2048).unwrap();
        Cbb::new(key)
    }

    fn sandbox() -> &'static CbbSandbox {
        static SANDBOX: OnceLock<CbbSandbox> = OnceLock::new();
        SANDBOX.get_or_init(|| {
            CbbSandbox::new(RsaSigningKey::load(&vectors_dir().join("keys/cbb_sandbox_priv.pem")).unwrap())
        })
    }

    #[test]
    fn vectors() {
        let provider = |account: &Value| Cbb::new(vector_public_key(account, "public_key_file", 2048));
        let seen = check_shared_vectors_with("cbb", provider, assert_no_headers);
        assert_eq!(seen, 10, "cbb vectors");
    }

    #[test]
    fn vector_details_not_in_expect() {
        let headers = HeaderMap::new();
        let now = Utc::now();

        let refund = vector_body("cbb-refund-ok");
        let n = verify_and_parse(&cbb(), &headers, refund.as_bytes(), now).unwrap();
        assert_eq!(n.event_type, EventType::RefundSucceeded);
        assert_eq!(n.amount.fen(), 5000);
        assert_eq!(n.dedup_extra, "refund001");
        assert_eq!(n.occurred_at.unwrap().to_rfc3339(), "2026-01-15T06:40:00+00:00");
        assert!(n.raw.get("sign").is_none());
        assert_eq!(n.raw["outRequestNo"], "refund001");

        let empty = vector_body("cbb-payment-empty-field-dropped");
        let n = verify_and_parse(&cbb(), &headers, empty.as_bytes(), now).unwrap();
        assert_eq!(n.business_params, None);
        assert_eq!(n.dedup_extra, "");
        assert!(n.raw.get("businessParams").is_none());
    }

    #[test]
    fn sample_round_trips() {
        for kind in [SampleKind::Payment, SampleKind::Refund] {
            let spec = sample_spec(kind, 12345);
            let signed = sandbox().sign_sample(&spec).unwrap();
            assert_eq!(signed.content_type, "application/x-www-form-urlencoded");
            let (headers, body) = request_of(&signed);
            let n = verify_and_parse(&cbb(), &headers, &body, spec.now).unwrap();
            assert_eq!(n.provider_trade_no, spec.trade_no);
            assert_eq!(
                n.merchant_order_no.as_deref(),
                Some(spec.merchant_order_no.as_str())
            );
            assert_eq!(n.amount.fen(), 12345);
            assert_eq!(n.occurred_at, Some(spec.now));
            match kind {
                SampleKind::Payment => {
                    assert_eq!(n.event_type, EventType::PaymentSucceeded);
                    assert_eq!(n.channel.as_deref(), Some("WX_PAGE"));
                    assert_eq!(n.dedup_extra, "");
                }
                SampleKind::Refund => {
                    assert_eq!(n.event_type, EventType::RefundSucceeded);
                    assert_eq!(n.refund_amount.map(AmountFen::fen), Some(12345));
                    assert_eq!(
                        n.refund_no.as_deref(),
                        Some(format!("R{}", spec.trade_no).as_str())
                    );
                    assert_eq!(n.dedup_extra, format!("R{}", spec.trade_no));
                }
            }
        }
    }

    #[test]
    fn forged_and_malformed_are_refused() {
        let mut spec = sample_spec(SampleKind::Payment, 100);
        spec.forge = true;
        let (headers, body) = request_of(&sandbox().sign_sample(&spec).unwrap());
        assert!(matches!(
            cbb().verify(&RawRequest::new(&headers, &body), spec.now),
            Err(Rejection::BadSignature(_))
        ));
        let headers = HeaderMap::new();
        for (body, bad_request) in [
            (&b"a=1&a=2&sign=x"[..], true),
            (&b"a=%FF&sign=x"[..], true),
            (&b"tradeNo=1&sign="[..], false),
            (&b""[..], false),
            (&b"tradeNo=1&sign=%%%"[..], false),
        ] {
            let result = cbb().verify(&RawRequest::new(&headers, body), Utc::now());
            if bad_request {
                assert!(matches!(result, Err(Rejection::BadRequest(_))), "{body:?}");
            } else {
                assert!(matches!(result, Err(Rejection::BadSignature(_))), "{body:?}");
            }
        }
    }

    #[test]
    fn any_listed_key_verifies_and_none_is_a_bad_signature() {
        let key = |name: &str| RsaPublicKey::load(&vectors_dir().join("keys").join(name), 2048).unwrap();
        let (headers, body) = request_of(
            &sandbox()
                .sign_sample(&sample_spec(SampleKind::Payment, 100))
                .unwrap(),
        );
        let req = RawRequest::new(&headers, &body);
        // Signed with the old key, listed second after the new one.
        let rotating = Cbb::new(KeyList::new(vec![key("sqb_pub.pem"), key("cbb_platform_pub.pem")]).unwrap());
        assert!(rotating.verify(&req, Utc::now()).is_ok());
        let neither =
            Cbb::new(KeyList::new(vec![key("sqb_pub.pem"), key("dingdang_platform_pub.pem")]).unwrap());
        assert_eq!(
            neither.verify(&req, Utc::now()),
            Err(Rejection::BadSignature("signature does not match"))
        );
    }

    #[test]
    fn statuses_and_missing_fields() {
        let headers = HeaderMap::new();
        let parse = |body: &str| cbb().parse(&RawRequest::new(&headers, body.as_bytes()));
        let pay = "tradeNo=T&outTradeNo=O&totalNumber=1.00&status=";
        assert_eq!(
            parse(&format!("{pay}SUCCESS")).unwrap().event_type,
            EventType::PaymentSucceeded
        );
        assert_eq!(
            parse(&format!("{pay}FAILED")).unwrap().event_type,
            EventType::PaymentFailed
        );
        assert_eq!(
            parse(&format!("{pay}WHATEVER")).unwrap().event_type,
            EventType::PaymentUnknown
        );
        assert!(matches!(parse(pay), Err(Rejection::BadRequest(_))));
        let refund = "tradeNo=T&outRequestNo=R&refundAmount=1&status=";
        assert_eq!(parse(&format!("{refund}SUCCESS")).unwrap().amount.fen(), 100);
        assert!(matches!(
            parse(&format!("{refund}HUH")),
            Err(Rejection::BadRequest(_))
        ));
        assert!(matches!(
            parse("tradeNo=T&outRequestNo=R&status=SUCCESS"),
            Err(Rejection::BadRequest(_))
        ));
        // an (unsigned) empty outRequestNo does not turn a payment into a refund
        let n = parse("tradeNo=T&totalNumber=2&status=SUCCESS&outRequestNo=").unwrap();
        assert_eq!(n.event_type, EventType::PaymentSucceeded);
        assert!(matches!(
            parse("outTradeNo=O&totalNumber=2&status=SUCCESS"),
            Err(Rejection::BadRequest(_))
        ));
        assert!(matches!(
            parse("tradeNo=T&totalNumber=2&status=SUCCESS&payTime=soon"),
            Err(Rejection::BadRequest(_))
        ));
        let iso =
            parse("tradeNo=T&totalNumber=2&status=SUCCESS&payTime=2026-01-15T14:30:00%2B08:00").unwrap();
        assert_eq!(iso.occurred_at.unwrap().to_rfc3339(), "2026-01-15T06:30:00+00:00");
    }

    /// One signed payment body, shared by the tamper properties (RSA signing is
    /// slow in debug builds).
    fn signed_payment() -> &'static (SampleSpec, Vec<u8>, Notification) {
        static SIGNED: OnceLock<(SampleSpec, Vec<u8>, Notification)> = OnceLock::new();
        SIGNED.get_or_init(|| {
            let mut spec = sample_spec(SampleKind::Payment, 10001);
            spec.trade_no = "T202601151430".into();
            spec.merchant_order_no = "ORD-1".into();
            let (headers, body) = request_of(&sandbox().sign_sample(&spec).unwrap());
            let n = verify_and_parse(&cbb(), &headers, &body, spec.now).unwrap();
            (spec, body, n)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_changed_byte_is_refused(index in 0usize..4096, flip in 1u8..=255) {
            let (spec, body, original) = signed_payment();
            let mut body = body.clone();
            let i = index % body.len();
            body[i] ^= flip;
            match verify_and_parse(&cbb(), &HeaderMap::new(), &body, spec.now) {
                Err(Rejection::BadSignature(_)) | Err(Rejection::BadRequest(_)) => {}
                // e.g. `%2B` -> `%2b` decodes to the very same fields
                Ok(n) => prop_assert_eq!(&n, original, "accepted with changed content"),
                Err(other) => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        #[test]
        fn any_changed_signed_value_is_refused(which in 0usize..8, value in ".{0,24}") {
            let (spec, body, _) = signed_payment();
            let mut pairs = parse_form(body).unwrap();
            let signed: Vec<usize> = (0..pairs.len()).filter(|i| pairs[*i].0 != "sign").collect();
            let i = signed[which % signed.len()];
            prop_assume!(pairs[i].1 != value);
            pairs[i].1 = value;
            let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let tampered = encode_form(&refs);
            let result = verify_and_parse(&cbb(), &HeaderMap::new(), tampered.as_bytes(), spec.now);
            prop_assert!(
                matches!(result, Err(Rejection::BadSignature(_)) | Err(Rejection::BadRequest(_))),
                "accepted: {:?}", result
            );
        }

        #[test]
        fn parser_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let headers = HeaderMap::new();
            let req = RawRequest::new(&headers, &body);
            let _ = cbb().verify(&req, Utc::now());
            let _ = cbb().parse(&req);
        }

        #[test]
        fn form_like_bodies_never_panic(
            fields in proptest::collection::vec(
                (prop_oneof![
                    Just("tradeNo".to_owned()), Just("outTradeNo".to_owned()), Just("status".to_owned()),
                    Just("totalNumber".to_owned()), Just("payTime".to_owned()), Just("outRequestNo".to_owned()),
                    Just("refundAmount".to_owned()), Just("refundTime".to_owned()), Just("sign".to_owned()),
                ], ".{0,16}"),
                0..10,
            )
        ) {
            let refs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let body = encode_form(&refs);
            let headers = HeaderMap::new();
            let req = RawRequest::new(&headers, body.as_bytes());
            let _ = cbb().verify(&req, Utc::now());
            let _ = cbb().parse(&req);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn amounts_round_trip(fen in 1i64..=9_999_999_999, refund in proptest::bool::ANY) {
            let kind = if refund { SampleKind::Refund } else { SampleKind::Payment };
            let spec = sample_spec(kind, fen);
            let (headers, body) = request_of(&sandbox().sign_sample(&spec).unwrap());
            let n = verify_and_parse(&cbb(), &headers, &body, spec.now).unwrap();
            prop_assert_eq!(n.amount.fen(), fen);
            if refund {
                prop_assert_eq!(n.refund_amount.map(AmountFen::fen), Some(fen));
            }
        }
    }
}
