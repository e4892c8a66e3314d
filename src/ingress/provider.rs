//! The one small interface every provider module implements.

use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};

use crate::domain::{AmountFen, Notification, ProviderKind};

/// A callback exactly as it arrived: nothing has been decoded yet, because
/// signatures are computed over these bytes.
#[derive(Debug, Clone, Copy)]
pub struct RawRequest<'a> {
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

impl<'a> RawRequest<'a> {
    pub fn new(headers: &'a HeaderMap, body: &'a [u8]) -> Self {
        Self { headers, body }
    }

    /// A header's value as text; `None` when absent or not visible ASCII.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Why a callback is refused. The reason is a short, fixed, secret-free text:
/// it is logged and may be echoed to the provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Missing, malformed or wrong signature, wrong terminal, replayed nonce.
    #[error("bad signature: {0}")]
    BadSignature(&'static str),
    /// A signed timestamp outside the account's clock-skew window.
    #[error("stale request: {0}")]
    Stale(&'static str),
    /// Authentic (or unverifiable for structural reasons) but not a valid notice.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Genuinely signed by the provider, but for another of its merchants: the
    /// signed merchant field (named here) is not this account's. A platform key
    /// signs every merchant's notices, so the signature alone cannot tell.
    #[error("wrong account: {0} is not this account's")]
    WrongAccount(&'static str),
}

/// A signed nonce that must not be accepted twice within the account's window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayNonce {
    pub nonce: String,
}

/// What `verify` hands on: the proof that the bytes are authentic, plus any
/// state the ingress must check against the store (a nonce).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verified {
    pub replay_nonce: Option<ReplayNonce>,
}

/// How a callback ended, as the ingress hands it to the provider's dialect
/// to be put in the provider's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// Stored, or a repeat of a stored notice: the provider must stop
    /// retrying.
    pub ok: bool,
    /// The status the outcome calls for: 200 when `ok`, else 400, 401, 413
    /// or 503.
    pub status: StatusCode,
    /// Why it was refused ("" when `ok`): short, fixed and secret-free; it
    /// never echoes input.
    pub reason: &'static str,
}

/// An answer in a provider's words: what the ingress sends back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Worded {
    pub status: StatusCode,
    /// `None` for an empty body.
    pub content_type: Option<&'static str>,
    pub body: String,
}

impl Worded {
    /// A body of `content_type` with the answer's status.
    pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            content_type: Some(content_type),
            body,
        }
    }
}

/// How a provider expects to be answered. The HTTP status is chosen by the
/// ingress from the outcome; the provider decides the words.
#[derive(Debug, Clone, Copy)]
pub enum Dialect {
    /// `text/plain` bodies, e.g. `SUCCESS`/`FAIL` (cbb, abc) or `success`/`fail`.
    PlainText { ok: &'static str, fail: &'static str },
    /// Dingdang's `{"retCode":"SUCCESS"}` / `{"retCode":"FAIL","retMsg":"…"}`.
    RetCodeJson,
    /// An empty body; only the status speaks (dryad).
    Empty,
    /// A provider's own words, written by its module; they may also change
    /// a success's status (WeChat Pay answers 204).
    Own(fn(&Answer) -> Worded),
}

impl Dialect {
    /// The answer in this dialect's words.
    pub fn word(self, answer: &Answer) -> Worded {
        let Answer { ok, status, reason } = *answer;
        match self {
            Dialect::PlainText { ok: yes, fail: no } => Worded::text(
                status,
                "text/plain; charset=utf-8",
                if ok { yes } else { no }.to_owned(),
            ),
            Dialect::RetCodeJson => {
                let body = if ok {
                    serde_json::json!({ "retCode": "SUCCESS" })
                } else {
                    serde_json::json!({ "retCode": "FAIL", "retMsg": reason })
                };
                Worded::text(status, "application/json", body.to_string())
            }
            Dialect::Empty if ok => Worded {
                status,
                content_type: None,
                body: String::new(),
            },
            Dialect::Empty => Worded::text(status, "text/plain; charset=utf-8", reason.to_owned()),
            Dialect::Own(word) => word(answer),
        }
    }
}

/// A payment provider's verifier and parser for one configured account.
///
/// Both steps are synchronous and pure: no I/O, no clock other than `now`,
/// so they are cheap to test, fuzz and benchmark.
pub trait Provider: Send + Sync + 'static {
    fn kind(&self) -> ProviderKind;

    /// Checks the signature (and freshness) over the raw bytes.
    fn verify(&self, req: &RawRequest<'_>, now: DateTime<Utc>) -> Result<Verified, Rejection>;

    /// Reads a verified request into a normalized notification, and binds it
    /// to this account: a notice whose signed merchant field names another
    /// account is refused with [`Rejection::WrongAccount`].
    fn parse(&self, req: &RawRequest<'_>) -> Result<Notification, Rejection>;

    /// `verify`, then `parse`: what the ingress calls. A provider that would
    /// decode the body in both steps overrides it to decode once.
    fn accept(
        &self,
        req: &RawRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<(Verified, Notification), Rejection> {
        let verified = self.verify(req, now)?;
        let notification = self.parse(req)?;
        Ok((verified, notification))
    }

    /// The request headers (lower case) that carry this provider's signature,
    /// kept with the stored event for audit beside `content-type`. Every other
    /// header (cookies, proxies' and other systems' credentials) is dropped.
    fn signature_headers(&self) -> &'static [&'static str] {
        &[]
    }

    fn dialect(&self) -> Dialect;

    /// How long a replay nonce must be remembered (the clock-skew window).
    fn replay_window(&self) -> Option<std::time::Duration> {
        None
    }
}

/// What a sample callback should say, for `payhook simulate`, the demo, the
/// benchmark and tests.
#[derive(Debug, Clone)]
pub struct SampleSpec {
    pub kind: SampleKind,
    pub amount: AmountFen,
    /// Unique per sample, so that samples are not deduplicated.
    pub trade_no: String,
    pub merchant_order_no: String,
    pub now: DateTime<Utc>,
    /// Break the signature (flip a bit of it) so the callback must be refused.
    pub forge: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum SampleKind {
    Payment,
    Refund,
}

/// A ready-to-send callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedRequest {
    pub content_type: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The provider side of an account: signs sample callbacks with the sandbox
/// key or shared secret.
pub trait SampleSigner: Send + Sync {
    fn sign_sample(&self, spec: &SampleSpec) -> Result<SignedRequest, SignError>;
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("this account has no sandbox signing key configured")]
    NoSandboxKey,
    #[error("signing failed: {0}")]
    Crypto(String),
    #[error("this provider sends no {0} notices")]
    Unsupported(&'static str),
}
