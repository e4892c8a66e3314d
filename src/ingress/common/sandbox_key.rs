//! The signing half of a sandbox account, for sample callbacks.

use super::RsaSigningKey;

/// What a sandbox account signs its samples with, for a provider that signs
/// either with a shared secret (Dingdang's HMAC key, Shouqianba's MD5
/// terminal key) or with an RSA key. `Debug` never shows a secret.
// Built once per account, off the request path: its size does not matter,
// and the key is held by value as the registry constructs it.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
pub enum SandboxKey {
    Secret { secret: Vec<u8> },
    Rsa { key: RsaSigningKey },
}

impl std::fmt::Debug for SandboxKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SandboxKey::Secret { .. } => f.write_str("Secret { secret: <redacted> }"),
            SandboxKey::Rsa { key } => write!(f, "Rsa {{ key: {key:?} }}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SandboxKey;

    #[test]
    fn debug_hides_the_secret() {
        let key = SandboxKey::Secret {
            secret: b"terminal-key-123".to_vec(),
        };
        let shown = format!("{key:?}");
        assert!(!shown.contains("terminal-key-123"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }
}
