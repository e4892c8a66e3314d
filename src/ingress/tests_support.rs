//! Helpers for provider unit tests: sample specs, requests as a server sees
//! them, and the signed vectors vendored in `tests/fixtures/vectors/vectors.json`.

use std::path::{Path, PathBuf};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::domain::{format_time, AccountId, AmountFen, Event, EventId, EventType, Notification};
use crate::ingress::common::RsaPublicKey;
use crate::ingress::provider::{
    Provider, RawRequest, Rejection, SampleKind, SampleSigner, SampleSpec, SignedRequest,
};

/// A spec at a fixed instant (2026-01-15T06:30:00Z) with unique ids.
pub fn sample_spec(kind: SampleKind, fen: i64) -> SampleSpec {
    let id = ulid::Ulid::new().to_string();
    SampleSpec {
        kind,
        amount: AmountFen::from_fen(fen).expect("test amount"),
        trade_no: format!("T{id}"),
        merchant_order_no: format!("O{id}"),
        now: DateTime::from_timestamp(1_768_458_600, 0).expect("fixed instant"),
        forge: false,
    }
}

/// The header map a server would see for a content type and header pairs.
fn header_map<'a>(content_type: &str, headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).expect("content type"),
    );
    for (k, v) in headers {
        map.insert(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    map
}

/// The header map and body a server would see for `signed`.
pub fn request_of(signed: &SignedRequest) -> (HeaderMap, Vec<u8>) {
    let pairs = signed.headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    (header_map(signed.content_type, pairs), signed.body.clone())
}

/// Verifies, then parses, as the ingress does.
/// Whether `provider` accepts `signed` as it is, and refuses it as a bad
/// signature once byte `index` (modulo the body's length) of its body is
/// changed by `flip` (non-zero).
pub fn changed_byte_is_refused<P: Provider>(
    provider: &P,
    signed: &SignedRequest,
    now: DateTime<Utc>,
    index: usize,
    flip: u8,
) -> bool {
    let (headers, mut body) = request_of(signed);
    if provider.verify(&RawRequest::new(&headers, &body), now).is_err() {
        return false;
    }
    let i = index % body.len();
    body[i] ^= flip;
    matches!(
        provider.verify(&RawRequest::new(&headers, &body), now),
        Err(Rejection::BadSignature(_))
    )
}

pub fn verify_and_parse<P: Provider + ?Sized>(
    provider: &P,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<Notification, Rejection> {
    let req = RawRequest::new(headers, body);
    provider.accept(&req, now).map(|(_, notification)| notification)
}

/// `tests/fixtures/vectors`: `vectors.json` and the keys it names (a vendored
/// copy of the shared contract, refreshed by `scripts/refresh-fixtures.sh`).
pub fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vectors")
}

/// Every vector of `vectors.json`, in file order.
pub fn all_vectors() -> Vec<Value> {
    let text = std::fs::read_to_string(vectors_dir().join("vectors.json")).expect("vectors.json");
    serde_json::from_str(&text).expect("vectors.json is JSON")
}

/// The vectors of one provider, in file order.
pub fn vectors_of(provider: &str) -> Vec<Value> {
    all_vectors()
        .into_iter()
        .filter(|v| v["provider"] == provider)
        .collect()
}

/// The public key an account's `field` names, below [`vectors_dir`].
pub fn vector_public_key(account: &Value, field: &str, min_bits: usize) -> RsaPublicKey {
    let file = account[field]
        .as_str()
        .unwrap_or_else(|| panic!("account.{field}"));
    RsaPublicKey::load(&vectors_dir().join(file), min_bits).expect("vector public key")
}

/// The request body of the vector called `name`.
pub fn vector_body(name: &str) -> String {
    let all = all_vectors();
    let v = all.iter().find(|v| v["name"] == name).expect("vector name");
    v["request"]["body"].as_str().expect("body").to_owned()
}

/// A vector's request as a server sees it: headers (content type included),
/// body bytes, and the vector's `now`.
pub fn vector_request(v: &Value) -> (HeaderMap, Vec<u8>, DateTime<Utc>) {
    let request = &v["request"];
    let pairs = request["headers"]
        .as_object()
        .expect("request.headers")
        .iter()
        .map(|(k, value)| (k.as_str(), value.as_str().expect("header value")));
    let headers = header_map(request["content_type"].as_str().expect("content_type"), pairs);
    let body = request["body"].as_str().expect("body").as_bytes().to_vec();
    let now = DateTime::parse_from_rfc3339(v["now"].as_str().expect("now"))
        .expect("now is RFC 3339")
        .with_timezone(&Utc);
    (headers, body, now)
}

/// The notification's fields under the names `vectors.json` uses.
pub fn event_view(n: &Notification) -> Value {
    serde_json::json!({
        "type": n.event_type.as_str(),
        "provider_trade_no": n.provider_trade_no,
        "merchant_order_no": n.merchant_order_no,
        "refund_no": n.refund_no,
        "amount": n.amount.fen(),
        "refund_amount": n.refund_amount.map(AmountFen::fen),
        "refunded_total": n.refunded_total.map(AmountFen::fen),
        "currency": n.currency,
        "channel": n.channel,
        "channel_trade_no": n.channel_trade_no,
        "business_params": n.business_params,
        "occurred_at": n.occurred_at.as_ref().map(format_time),
    })
}

/// What makes two accepted notices the same event: account, type, provider
/// trade number and the provider's dedup extra.
type Identity = (String, EventType, String, String);

/// Checks one vector's `result` against its `expect` block. Accepted and
/// duplicate notices must carry every expected event field, both in
/// [`event_view`] and in the [`Event`] merchants receive; `seen` holds the
/// identities accepted so far, so that a duplicate repeats one and an accepted
/// notice does not. Refusals must be of the expected kind.
pub fn check_vector<P: Provider>(
    provider: &P,
    v: &Value,
    result: Result<Notification, Rejection>,
    seen: &mut Vec<Identity>,
) -> Option<Notification> {
    let name = v["name"].as_str().expect("name");
    let expect = &v["expect"];
    match expect["outcome"].as_str().expect("expect.outcome") {
        outcome @ ("accepted" | "duplicate") => {
            let n = result.unwrap_or_else(|e| panic!("{name}: refused: {e}"));
            let account = v["account"]["id"].as_str().expect("account.id");
            let (_, _, now) = vector_request(v);
            let id = AccountId::parse(account).expect("account id");
            let event = Event::new(EventId::generate(), provider.kind(), id, n.clone(), now);
            let event = serde_json::to_value(&event).expect("event JSON");
            let view = event_view(&n);
            for (field, want) in expect["event"].as_object().expect("expect.event") {
                let got = view
                    .get(field)
                    .unwrap_or_else(|| panic!("{name}: unknown field {field}"));
                assert_eq!(got, want, "{name}: field {field}");
                assert_eq!(&event[field], want, "{name}: event field {field}");
            }
            let identity = (
                account.to_owned(),
                n.event_type,
                n.provider_trade_no.clone(),
                n.dedup_extra.clone(),
            );
            if outcome == "duplicate" {
                assert!(
                    seen.contains(&identity),
                    "{name}: not a duplicate of an earlier vector"
                );
            } else {
                assert!(!seen.contains(&identity), "{name}: unexpectedly a duplicate");
                seen.push(identity);
            }
            Some(n)
        }
        "bad_signature" => {
            assert!(
                matches!(result, Err(Rejection::BadSignature(_))),
                "{name}: {result:?}"
            );
            None
        }
        "stale" => {
            assert!(matches!(result, Err(Rejection::Stale(_))), "{name}: {result:?}");
            None
        }
        "bad_request" => {
            assert!(
                matches!(result, Err(Rejection::BadRequest(_))),
                "{name}: {result:?}"
            );
            None
        }
        "wrong_account" => {
            assert!(
                matches!(result, Err(Rejection::WrongAccount(_))),
                "{name}: {result:?}"
            );
            None
        }
        other => panic!("{name}: unexpected outcome {other}"),
    }
}

/// Runs every vector of `provider` through the provider `build` makes for
/// the vector's account and checks it with [`check_vector`]; `extra` sees
/// each vector with its accepted notice, for provider-specific checks.
/// Returns how many vectors were checked.
pub fn check_shared_vectors_with<P: Provider>(
    provider: &str,
    build: impl Fn(&Value) -> P,
    mut extra: impl FnMut(&Value, Option<&Notification>),
) -> usize {
    let vectors = vectors_of(provider);
    let mut seen = Vec::new();
    for v in &vectors {
        let p = build(&v["account"]);
        let (headers, body, now) = vector_request(v);
        let result = verify_and_parse(&p, &headers, &body, now);
        let accepted = check_vector(&p, v, result, &mut seen);
        extra(v, accepted.as_ref());
    }
    vectors.len()
}

/// An extra check for providers that read no request headers: their vectors
/// carry none.
pub fn assert_no_headers(v: &Value, _accepted: Option<&Notification>) {
    let headers = v["request"]["headers"].as_object().expect("request.headers");
    assert!(headers.is_empty(), "{}", v["name"]);
}

/// [`check_shared_vectors_with`] without provider-specific checks.
pub fn check_shared_vectors<P: Provider>(provider: &str, build: impl Fn(&Value) -> P) -> usize {
    check_shared_vectors_with(provider, build, |_, _| {})
}

/// A sandbox sample of `kind` verifies and parses into what was signed (the
/// amount of a payment, the refund amount of a refund), and the same sample
/// forged is refused as a bad signature. Returns the parsed notice.
pub fn round_trip<P: Provider>(
    provider: &P,
    sandbox: &dyn SampleSigner,
    kind: SampleKind,
    fen: i64,
) -> Notification {
    let spec = sample_spec(kind, fen);
    let (headers, body) = request_of(&sandbox.sign_sample(&spec).expect("sandbox signs"));
    let n = verify_and_parse(provider, &headers, &body, spec.now).expect("sandbox sample is accepted");
    assert_eq!(n.provider_trade_no, spec.trade_no);
    assert_eq!(
        n.merchant_order_no.as_deref(),
        Some(spec.merchant_order_no.as_str())
    );
    assert_eq!(n.occurred_at, Some(spec.now));
    match kind {
        SampleKind::Payment => {
            assert_eq!(n.event_type, EventType::PaymentSucceeded);
            assert_eq!(n.amount, spec.amount);
        }
        SampleKind::Refund => {
            assert_eq!(n.event_type, EventType::RefundSucceeded);
            // The sample's refund amount is this refund, or the trade's
            // refunds so far where that is all the provider states.
            assert!(n.refund_amount == Some(spec.amount) || n.refunded_total == Some(spec.amount));
        }
    }
    let forged = SampleSpec {
        forge: true,
        ..spec.clone()
    };
    let (headers, body) = request_of(&sandbox.sign_sample(&forged).expect("sandbox signs"));
    let err = provider
        .verify(&RawRequest::new(&headers, &body), spec.now)
        .expect_err("a forged sample is refused");
    assert!(matches!(err, Rejection::BadSignature(_)), "{err:?}");
    n
}

/// An account of one signing scheme refuses notices signed with the other.
pub fn schemes_refuse_each_other<A: Provider, B: Provider>(
    (a, a_sandbox): (&A, &dyn SampleSigner),
    (b, b_sandbox): (&B, &dyn SampleSigner),
) {
    let spec = sample_spec(SampleKind::Payment, 1);
    let (headers, body) = request_of(&b_sandbox.sign_sample(&spec).expect("sandbox signs"));
    assert!(a.verify(&RawRequest::new(&headers, &body), spec.now).is_err());
    let (headers, body) = request_of(&a_sandbox.sign_sample(&spec).expect("sandbox signs"));
    assert!(b.verify(&RawRequest::new(&headers, &body), spec.now).is_err());
}
