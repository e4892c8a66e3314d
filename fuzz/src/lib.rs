//! Shared harness for the `cargo fuzz` targets in `fuzz_targets/`.
//!
//! # Input format (every target)
//!
//! ```text
//! mode:u8  header_1 0xFF header_2 0xFF … header_k 0xFF body
//! ```
//!
//! * `mode` — bit 0 is the *assist* flag (see below); other bits are ignored.
//! * `header_1 … header_k` — the values of the headers the provider reads, in
//!   the order listed by the target (`k` is 0 for cbb and abc, whose
//!   signatures live in the body). Headers are taken while a `0xFF` separator
//!   is left; once there is none, the rest of the input is the body and the
//!   remaining headers are absent. A value `HeaderValue` refuses is skipped
//!   (left absent).
//! * `body` — everything after the last header's separator (it may itself
//!   contain `0xFF`).
//!
//! # Assist mode
//!
//! A fuzzer cannot forge a signature, so without help the code that runs
//! only *after* a signature matches (timestamp parsing, clock-skew checks)
//! would never be reached by `verify`. With bit 0 of `mode` set, targets
//! whose secret the harness knows compute the right signature themselves:
//!
//! * `shouqianba_md5`: header 1 is the terminal number; the harness sends
//!   `Authorization: <header 1> <md5(body ++ terminal_key)>`.
//! * `dingdang_hmac`: header 1 is the `Datetime`; the harness sends
//!   `Authorization: TSK-HMAC-SHA256-BASIC Datetime=<header 1>, Signature=<hmac>`.
//! * `dryad`: header 1 (`X-Signature`) is replaced by the right HMAC over
//!   `body ++ X-Nonce ++ X-Timestamp`.
//! * `abc`: the body is the raw XML document; the harness base64-encodes it
//!   into `MSG=…`, so mutations hit the XML parser instead of base64 text.
//!
//! For cbb and the RSA targets the flag does nothing (re-signing with RSA on
//! every input would be far too slow).
//!
//! # What runs
//!
//! `verify` at a fixed instant (the test vectors' `2026-01-15T06:30:00Z`),
//! then `parse` whatever `verify` said (parse must never panic either); when
//! parse succeeds, the notification is turned into an [`Event`] and serialized
//! to JSON, as the ingress handler does next.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use base64::Engine;
use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use payhook::domain::{AccountId, Event, EventId};
use payhook::ingress::abc::{Abc, AbcAlgorithm};
use payhook::ingress::cbb::Cbb;
use payhook::crypto::hmac_sha256;
use payhook::ingress::common::RsaPublicKey;
use payhook::ingress::dingdang::{Dingdang, DingdangScheme};
use payhook::ingress::dryad::Dryad;
use payhook::ingress::shouqianba::{Shouqianba, SqbSignMode};
use payhook::ingress::{Provider, RawRequest};

/// The separator between headers and body.
pub const SEP: u8 = 0xFF;

/// The instant every `verify` runs at: the test vectors' clock.
pub const NOW_UNIX: i64 = 1_768_458_600; // 2026-01-15T06:30:00Z

/// Account settings, the same as the shared test vectors'.
pub const SQB_TERMINAL_SN: &str = "100111220054389553";
pub const SQB_TERMINAL_KEY: &[u8] = b"96bfaf401367d934cb10a1cbe9773647";
pub const DINGDANG_SECRET: &[u8] = b"skill_secret";
pub const DINGDANG_SKEW: Duration = Duration::from_secs(180);
pub const DRYAD_SECRET: &[u8] = b"callbackSignSecret-test";
pub const DRYAD_SKEW: Duration = Duration::from_secs(300);

const MIN_RSA_BITS: usize = 2048;
const MIN_RSA_BITS_ABC: usize = 1024;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(NOW_UNIX, 0).expect("fixed instant")
}

/// A sandbox public key from `<repo>/sandbox-keys/`, loaded once per process.
fn sandbox_key(file: &str, min_bits: usize) -> RsaPublicKey {
    let path: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "sandbox-keys", file]
        .iter()
        .collect();
    RsaPublicKey::load(&path, min_bits)
        .unwrap_or_else(|e| panic!("fuzz harness: cannot load {}: {e}", path.display()))
}

/// The accounts the notices are bound to: those of the signed vectors.
const ABC_MERCHANT_ID: &str = "103881636900016";
const DINGDANG_SKILL_ID: &str = "123";

static CBB: LazyLock<Cbb> = LazyLock::new(|| Cbb::new(sandbox_key("cbb_platform_pub.pem", MIN_RSA_BITS)));
static SQB_MD5: LazyLock<Shouqianba> = LazyLock::new(|| {
    Shouqianba::new(
        SQB_TERMINAL_SN.to_owned(),
        SqbSignMode::Md5 {
            terminal_keys: SQB_TERMINAL_KEY.to_vec().into(),
        },
    )
});
static SQB_RSA: LazyLock<Shouqianba> = LazyLock::new(|| {
    Shouqianba::new(
        SQB_TERMINAL_SN.to_owned(),
        SqbSignMode::Rsa {
            keys: sandbox_key("sqb_pub.pem", MIN_RSA_BITS).into(),
        },
    )
});
static ABC: LazyLock<Abc> =
    LazyLock::new(|| {
        Abc::new(
            sandbox_key("abc_trustpay_cert.pem", MIN_RSA_BITS_ABC),
            AbcAlgorithm::Sha1WithRsa,
            ABC_MERCHANT_ID.to_owned(),
        )
    });
static DINGDANG_HMAC: LazyLock<Dingdang> = LazyLock::new(|| {
    Dingdang::new(
        DingdangScheme::HmacSha256 {
            secrets: DINGDANG_SECRET.to_vec().into(),
        },
        DINGDANG_SKEW,
        DINGDANG_SKILL_ID.to_owned(),
    )
});
static DINGDANG_RSA: LazyLock<Dingdang> = LazyLock::new(|| {
    Dingdang::new(
        DingdangScheme::Rsa2 {
            keys: sandbox_key("dingdang_platform_pub.pem", MIN_RSA_BITS).into(),
        },
        DINGDANG_SKEW,
        DINGDANG_SKILL_ID.to_owned(),
    )
});
static DRYAD: LazyLock<Dryad> = LazyLock::new(|| Dryad::new(DRYAD_SECRET.to_vec(), DRYAD_SKEW));

/// A fuzz input split into its parts.
pub struct Split<'a> {
    pub assist: bool,
    /// One slot per header name asked for; `None` when the input ran out of
    /// separators before it.
    pub headers: Vec<Option<&'a [u8]>>,
    pub body: &'a [u8],
}

/// Splits `data` per the format in the crate docs; `None` for an empty input.
pub fn split(data: &[u8], header_count: usize) -> Option<Split<'_>> {
    let (&mode, mut rest) = data.split_first()?;
    let mut headers = Vec::with_capacity(header_count);
    for _ in 0..header_count {
        match rest.iter().position(|&b| b == SEP) {
            Some(i) => {
                headers.push(Some(&rest[..i]));
                rest = &rest[i + 1..];
            }
            None => headers.push(None),
        }
    }
    Some(Split {
        assist: mode & 1 == 1,
        headers,
        body: rest,
    })
}

/// Inserts `value` under `name` unless `HeaderValue` refuses it.
pub fn put(map: &mut HeaderMap, name: &'static str, value: Option<&[u8]>) {
    if let Some(value) = value {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            map.insert(HeaderName::from_static(name), value);
        }
    }
}

/// What one input came to (used by the replay test to check the seeds are
/// realistic; the fuzz targets ignore it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub verified: bool,
    pub parsed: bool,
}

/// `verify`, then `parse` regardless, then what the ingress does with a parsed
/// notification (build the event, serialize it).
pub fn exercise(provider: &dyn Provider, headers: &HeaderMap, body: &[u8]) -> Outcome {
    let req = RawRequest::new(headers, body);
    let verified = provider.verify(&req, now());
    if let Err(rejection) = &verified {
        let _ = rejection.to_string();
    }
    let parsed = provider.parse(&req);
    let outcome = Outcome {
        verified: verified.is_ok(),
        parsed: parsed.is_ok(),
    };
    match parsed {
        Ok(n) => {
            let event = Event::new(
                EventId::parse("evt_01KF0000000000000000000000").expect("fixed event id"),
                provider.kind(),
                AccountId::parse("fuzz").expect("fixed account id"),
                n,
                now(),
            );
            let _ = serde_json::to_string(&event);
        }
        Err(rejection) => {
            let _ = rejection.to_string();
        }
    }
    let _ = provider.dialect();
    let _ = provider.replay_window();
    outcome
}

// ---- one entry point per target -------------------------------------------

pub fn cbb(data: &[u8]) -> Option<Outcome> {
    let s = split(data, 0)?;
    Some(exercise(&*CBB, &HeaderMap::new(), s.body))
}

pub fn abc(data: &[u8]) -> Option<Outcome> {
    let s = split(data, 0)?;
    if s.assist {
        let b64 = base64::engine::general_purpose::STANDARD.encode(s.body);
        let body = format!(
            "MSG={}",
            b64.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")
        );
        Some(exercise(&*ABC, &HeaderMap::new(), body.as_bytes()))
    } else {
        Some(exercise(&*ABC, &HeaderMap::new(), s.body))
    }
}

fn shouqianba(provider: &Shouqianba, data: &[u8], can_assist: bool) -> Option<Outcome> {
    let s = split(data, 1)?;
    let mut headers = HeaderMap::new();
    if s.assist && can_assist {
        if let Some(sn) = s.headers[0] {
            let mut hasher = Md5::new();
            hasher.update(s.body);
            hasher.update(SQB_TERMINAL_KEY);
            let mut value = sn.to_vec();
            value.push(b' ');
            value.extend_from_slice(hex::encode(hasher.finalize()).as_bytes());
            put(&mut headers, "authorization", Some(&value));
        }
    } else {
        put(&mut headers, "authorization", s.headers[0]);
    }
    Some(exercise(provider, &headers, s.body))
}

pub fn shouqianba_md5(data: &[u8]) -> Option<Outcome> {
    shouqianba(&SQB_MD5, data, true)
}

pub fn shouqianba_rsa(data: &[u8]) -> Option<Outcome> {
    shouqianba(&SQB_RSA, data, false)
}

fn dingdang(provider: &Dingdang, data: &[u8], can_assist: bool) -> Option<Outcome> {
    let s = split(data, 1)?;
    let mut headers = HeaderMap::new();
    if s.assist && can_assist {
        if let Some(datetime) = s.headers[0] {
            let mac = hmac_sha256(DINGDANG_SECRET, &[s.body, datetime]);
            let mut value = b"TSK-HMAC-SHA256-BASIC Datetime=".to_vec();
            value.extend_from_slice(datetime);
            value.extend_from_slice(b", Signature=");
            value.extend_from_slice(hex::encode(mac).as_bytes());
            put(&mut headers, "authorization", Some(&value));
        }
    } else {
        put(&mut headers, "authorization", s.headers[0]);
    }
    Some(exercise(provider, &headers, s.body))
}

pub fn dingdang_hmac(data: &[u8]) -> Option<Outcome> {
    dingdang(&DINGDANG_HMAC, data, true)
}

pub fn dingdang_rsa(data: &[u8]) -> Option<Outcome> {
    dingdang(&DINGDANG_RSA, data, false)
}

pub fn dryad(data: &[u8]) -> Option<Outcome> {
    let s = split(data, 3)?;
    let mut headers = HeaderMap::new();
    put(&mut headers, "x-nonce", s.headers[1]);
    put(&mut headers, "x-timestamp", s.headers[2]);
    if s.assist {
        // Signed over what the provider will read back from the map.
        let nonce = headers
            .get("x-nonce")
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let timestamp = headers
            .get("x-timestamp")
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let mac = hex::encode(hmac_sha256(DRYAD_SECRET, &[s.body, nonce, timestamp]));
        put(&mut headers, "x-signature", Some(mac.as_bytes()));
    } else {
        put(&mut headers, "x-signature", s.headers[0]);
    }
    Some(exercise(&*DRYAD, &headers, s.body))
}

/// A target's entry point: `None` for an input too short to split.
pub type Entry = fn(&[u8]) -> Option<Outcome>;

/// Every target's name and entry point, for replaying corpora in tests.
pub const TARGETS: &[(&str, Entry)] = &[
    ("cbb", cbb),
    ("shouqianba_md5", shouqianba_md5),
    ("shouqianba_rsa", shouqianba_rsa),
    ("abc", abc),
    ("dingdang_hmac", dingdang_hmac),
    ("dingdang_rsa", dingdang_rsa),
    ("dryad", dryad),
];
