//! Delivery signatures, both header sets of the spec:
//! seed 004's `X-Signature/X-Nonce/X-Timestamp`, and Standard Webhooks'
//! `webhook-id/webhook-timestamp/webhook-signature`.

use base64::Engine;

use crate::ingress::common::hmac_sha256;

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

/// All headers of one delivery attempt.
pub fn delivery_headers(
    secret: &str,
    event_id: &str,
    body: &[u8],
    now_ms: i64,
    nonce: &str,
    attempt: u32,
) -> Vec<(&'static str, String)> {
    let ts_s = now_ms.div_euclid(1000);
    vec![
        ("X-Signature", x_signature(secret, body, nonce, now_ms)),
        ("X-Nonce", nonce.to_owned()),
        ("X-Timestamp", now_ms.to_string()),
        ("webhook-id", event_id.to_owned()),
        ("webhook-timestamp", ts_s.to_string()),
        (
            "webhook-signature",
            webhook_signature(secret, event_id, ts_s, body),
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

    #[test]
    fn plain_secret_is_used_as_bytes() {
        assert_eq!(standard_webhooks_key("plain"), b"plain".to_vec());
        let sig = x_signature("k", b"{}", "n", 1000);
        assert_eq!(sig, hex::encode(hmac_sha256(b"k", &[b"{}", b"n", b"1000"])));
    }
}
