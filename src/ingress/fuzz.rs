//! Fuzz entry points: what the `cargo fuzz` crate in `fuzz/` runs. Each
//! provider module names its targets ([`ProviderModule::FUZZ`]): an account,
//! the headers an input fills, and an optional *assist* that signs or seals
//! what a fuzzer cannot, so that mutations reach the code behind the
//! signature. This module holds the input format and the path every target
//! runs; the fuzz crate builds each target's account and calls [`run`].
//!
//! # Input format (every target)
//!
//! ```text
//! mode:u8  header_1 0xFF header_2 0xFF … header_k 0xFF body
//! ```
//!
//! * `mode`: bit 0 is the assist flag; other bits are ignored.
//! * `header_1 … header_k`: the values of the target's headers, in its
//!   order. They are taken while a `0xFF` separator is left; once none is,
//!   the rest of the input is the body and the remaining headers are absent.
//!   A value `HeaderValue` refuses is left absent.
//! * `body`: everything after the last header's separator (it may itself
//!   contain `0xFF`).
//!
//! # What runs
//!
//! `verify` at a fixed instant (the test vectors' `2026-01-15T06:30:00Z`),
//! then `parse` whatever `verify` said (it must never panic either); when
//! `parse` succeeds, the notification becomes an [`Event`] serialized to
//! JSON, as the ingress does next.
//!
//! [`ProviderModule::FUZZ`]: super::ProviderModule::FUZZ

use std::borrow::Cow;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use chrono::{DateTime, Utc};

use super::{Provider, RawRequest};
use crate::domain::{AccountId, Event, EventId};

/// The separator between headers and body.
pub const SEP: u8 = 0xFF;

/// The instant every `verify` runs at: the test vectors' clock.
pub const NOW_UNIX: i64 = 1_768_458_600; // 2026-01-15T06:30:00Z

/// One fuzz target of a provider: `PAYHOOK_FUZZ_TARGET=<name> cargo fuzz run
/// provider fuzz/corpus/<name>`.
#[derive(Debug)]
pub struct FuzzTarget {
    /// The target's name, and its corpus folder's.
    pub name: &'static str,
    /// The account it runs against: its `[[accounts]]` table after `id`,
    /// with key files named as in `sandbox-keys/` (the test vectors' keys,
    /// so that the vectors are realistic seeds).
    pub account: &'static str,
    /// The headers (lower case) an input's slots fill, in order.
    pub headers: &'static [&'static str],
    /// What an input in assist mode becomes: the request to send, signed
    /// or sealed by the harness. `None` where signing each input would be
    /// too slow (RSA): the flag then does nothing.
    pub assist: Option<fn(&Split<'_>) -> Assisted>,
}

/// A fuzz input split into its parts.
pub struct Split<'a> {
    pub assist: bool,
    /// One slot per header of the target; `None` when the input ran out of
    /// separators before it.
    pub headers: Vec<Option<&'a [u8]>>,
    pub body: &'a [u8],
}

/// The request an assist makes of an input.
pub struct Assisted {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// What one input came to (the replay test checks that the seeds are
/// realistic; the fuzz targets ignore it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub verified: bool,
    pub parsed: bool,
}

/// Splits `data` per the format above; `None` for an empty input.
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

/// An input of mode 0 (no assist) for a target with the header `slots`:
/// each slot's value (`header(name)`) and the separator, then the body.
/// Trailing absent headers are left out (the input runs out of
/// separators); an absent header before a present one is written empty.
/// The seed corpus is written with it from the test vectors.
pub fn encode<'a>(slots: &[&str], header: impl Fn(&str) -> Option<&'a str>, body: &[u8]) -> Vec<u8> {
    let present = slots
        .iter()
        .rposition(|s| header(s).is_some())
        .map_or(0, |i| i + 1);
    let mut out = vec![0u8];
    for slot in &slots[..present] {
        out.extend_from_slice(header(slot).unwrap_or("").as_bytes());
        out.push(SEP);
    }
    out.extend_from_slice(body);
    out
}

/// Inserts `value` under `name` unless `HeaderValue` refuses it.
pub fn put(map: &mut HeaderMap, name: &'static str, value: Option<&[u8]>) {
    if let Some(value) = value.and_then(|v| HeaderValue::from_bytes(v).ok()) {
        map.insert(HeaderName::from_static(name), value);
    }
}

/// Runs one input of `target` against `provider` (the target's account).
/// `None` for an empty input.
pub fn run(target: &FuzzTarget, provider: &dyn Provider, data: &[u8]) -> Option<Outcome> {
    let s = split(data, target.headers.len())?;
    let (headers, body) = match target.assist {
        Some(assist) if s.assist => {
            let Assisted { headers, body } = assist(&s);
            (headers, Cow::Owned(body))
        }
        _ => {
            let mut headers = HeaderMap::new();
            for (name, value) in target.headers.iter().zip(&s.headers) {
                put(&mut headers, name, *value);
            }
            (headers, Cow::Borrowed(s.body))
        }
    };
    Some(exercise(provider, &headers, &body))
}

/// `verify`, then `parse` regardless, then what the ingress does with a
/// parsed notification (build the event, serialize it).
pub fn exercise(provider: &dyn Provider, headers: &HeaderMap, body: &[u8]) -> Outcome {
    let now = DateTime::<Utc>::from_timestamp(NOW_UNIX, 0).unwrap_or_default();
    let req = RawRequest::new(headers, body);
    let verified = provider.verify(&req, now);
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
            if let (Ok(id), Ok(account)) = (
                EventId::parse("evt_01KF0000000000000000000000"),
                AccountId::parse("fuzz"),
            ) {
                let event = Event::new(id, provider.kind(), account, n, now);
                let _ = serde_json::to_string(&event);
            }
        }
        Err(rejection) => {
            let _ = rejection.to_string();
        }
    }
    let _ = provider.dialect();
    let _ = provider.replay_window();
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ingress::registry::{build_accounts, fuzz_targets};
    use crate::ingress::tests_support::vectors_of;

    /// Every provider's fuzz targets run on its account (built from the
    /// sandbox keys, as the fuzz crate builds it), and the provider's test
    /// vectors, encoded as the seed corpus is, pass `verify` and `parse`
    /// there as their expectations say: the targets are realistic.
    #[test]
    fn every_target_accepts_its_providers_genuine_vectors() {
        let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sandbox-keys");
        let mut names = Vec::new();
        for target in fuzz_targets() {
            names.push(target.name);
            let text = format!("[[accounts]]\nid = \"fuzz\"\n{}", target.account);
            let config = Config::from_toml_str(&text, &keys, &|_: &str| None).unwrap();
            let accounts = build_accounts(&config.accounts).unwrap();
            let provider = &accounts["fuzz"].provider;
            let mut accepted = 0;
            for v in vectors_of(provider.kind().as_str()) {
                let headers = v["request"]["headers"].as_object().unwrap();
                let header = |slot: &str| {
                    headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(slot))
                        .and_then(|(_, v)| v.as_str())
                };
                let body = v["request"]["body"].as_str().unwrap().as_bytes();
                let input = encode(target.headers, header, body);
                let outcome = run(target, provider.as_ref(), &input).unwrap();
                if outcome.verified && outcome.parsed {
                    accepted += 1;
                }
            }
            assert!(accepted > 0, "{}: no vector passes verify and parse", target.name);
        }
        let mut unique = names.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "each target named once: {names:?}");
    }

    #[test]
    fn inputs_split_into_headers_and_body() {
        let s = split(b"\x01one\xfftwo\xffbody\xffmore", 2).unwrap();
        assert!(s.assist);
        assert_eq!(s.headers, vec![Some(&b"one"[..]), Some(&b"two"[..])]);
        assert_eq!(s.body, b"body\xffmore");
        let s = split(b"\x00only", 3).unwrap();
        assert!(!s.assist);
        assert_eq!(s.headers, vec![None, None, None]);
        assert_eq!(s.body, b"only");
        assert!(split(b"", 1).is_none());
    }
}
