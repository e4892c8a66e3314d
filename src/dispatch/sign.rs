//! Delivery signatures, both header sets of the spec:
//! seed 004's `X-Signature/X-Nonce/X-Timestamp`, and Standard Webhooks'
//! `webhook-id/webhook-timestamp/webhook-signature`.
//!
//! An endpoint whose secret is being rotated has several (`secrets = [new,
//! old]`): `webhook-signature` then carries one `v1,…` per secret, as
//! Standard Webhooks allows, so a merchant verifies with whichever one it
//! knows; `X-Signature` has room for one, made with the first secret.

use base64::Engine;

use crate::config::Secret;
use crate::crypto::hmac_sha256;
use crate::key_list::KeyList;

/// The key bytes for Standard Webhooks: for `whsec_…` the base64-decoded
/// remainder, otherwise the secret's UTF-8 bytes.
pub fn standard_webhooks_key(secret: &str) -> Vec<u8> {
    if let Some(rest) = secret.strip_prefix("whsec_") {
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(rest) {
            return bytes;
        }
    }
    secret.as_bytes().to_vec()
}

/// Lowercase hex HMAC-SHA256(secret bytes, body ++ nonce ++ timestamp_ms).
pub fn x_signature(secret: &str, body: &[u8], nonce: &str, timestamp_ms: i64) -> String {
    let ts = timestamp_ms.to_string();
    hex::encode(hmac_sha256(
        secret.as_bytes(),
        &[body, nonce.as_bytes(), ts.as_bytes()],
    ))
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`.
pub fn webhook_signature(secret: &str, id: &str, timestamp_s: i64, body: &[u8]) -> String {
    let key = standard_webhooks_key(secret);
    let prefix = format!("{id}.{timestamp_s}.");
    let mac = hmac_sha256(&key, &[prefix.as_bytes(), body]);
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac))
}

/// `webhook-signature` for every secret: each one's `v1,…`, in the
/// configured order, separated by a single space.
pub fn webhook_signatures(secrets: &KeyList<Secret>, id: &str, timestamp_s: i64, body: &[u8]) -> String {
    let signatures: Vec<String> = secrets
        .iter()
        .map(|secret| webhook_signature(secret.expose(), id, timestamp_s, body))
        .collect();
    signatures.join(" ")
}

/// All headers of one delivery attempt: `X-Signature` with the first
/// secret, `webhook-signature` with each.
pub fn delivery_headers(
    secrets: &KeyList<Secret>,
    event_id: &str,
    body: &[u8],
    now_ms: i64,
    nonce: &str,
    attempt: u32,
) -> Vec<(&'static str, String)> {
    let ts_s = now_ms.div_euclid(1000);
    vec![
        (
            "X-Signature",
            x_signature(secrets.first().expose(), body, nonce, now_ms),
        ),
        ("X-Nonce", nonce.to_owned()),
        ("X-Timestamp", now_ms.to_string()),
        ("webhook-id", event_id.to_owned()),
        ("webhook-timestamp", ts_s.to_string()),
        (
            "webhook-signature",
            webhook_signatures(secrets, event_id, ts_s, body),
        ),
        ("X-Payhook-Attempt", attempt.to_string()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_reference_vector() {
        // From the Standard Webhooks specification's examples.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"test": 2432232314}"#;
        let sig = webhook_signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    fn header<'a>(headers: &'a [(&'static str, String)], name: &str) -> &'a str {
        headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name}"))
    }

    #[test]
    fn one_secret_one_signature() {
        let secrets = KeyList::one(Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"));
        let headers = delivery_headers(&secrets, "evt_1", b"{}", 1_700_000_000_123, "n", 1);
        assert_eq!(
            header(&headers, "webhook-signature"),
            webhook_signature(
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                "evt_1",
                1_700_000_000,
                b"{}"
            )
        );
        assert!(!header(&headers, "webhook-signature").contains(' '));
    }

    #[test]
    fn rotated_secrets_sign_webhook_signature_each_and_x_signature_with_the_first() {
        let (new, old) = ("whsec_bmV3LWVuZHBvaW50LXNlY3JldA==", "old-plain-secret");
        let secrets = KeyList::new(vec![Secret::new(new), Secret::new(old)]).unwrap();
        let (body, now_ms, nonce) = (br#"{"id":"evt_1"}"#, 1_700_000_000_123, "01NONCE");
        let headers = delivery_headers(&secrets, "evt_1", body, now_ms, nonce, 2);

        let signatures = header(&headers, "webhook-signature");
        let entries: Vec<&str> = signatures.split(' ').collect();
        assert_eq!(
            entries.len(),
            2,
            "one entry per secret, one space between: {signatures}"
        );
        assert!(entries.iter().all(|e| e.starts_with("v1,") && !e.is_empty()));
        // Each entry verifies with its own secret, in the configured order,
        // as a Standard Webhooks verifier computes it.
        for (entry, secret) in entries.iter().zip([new, old]) {
            let key = standard_webhooks_key(secret);
            let mac = hmac_sha256(&key, &[b"evt_1.1700000000.", body]);
            let expected = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac));
            assert_eq!(*entry, expected);
        }
        assert_ne!(entries[0], entries[1]);

        // X-Signature: the first (new) secret's only.
        assert_eq!(
            header(&headers, "X-Signature"),
            x_signature(new, body, nonce, now_ms)
        );
        assert_ne!(
            header(&headers, "X-Signature"),
            x_signature(old, body, nonce, now_ms)
        );
        assert_eq!(header(&headers, "X-Timestamp"), now_ms.to_string());
        assert_eq!(header(&headers, "webhook-timestamp"), "1700000000");
    }

    #[test]
    fn plain_secret_is_used_as_bytes() {
        assert_eq!(standard_webhooks_key("plain"), b"plain".to_vec());
        let sig = x_signature("k", b"{}", "n", 1000);
        assert_eq!(sig, hex::encode(hmac_sha256(b"k", &[b"{}", b"n", b"1000"])));
    }
}
