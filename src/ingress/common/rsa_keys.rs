//! RSA keys: parsed once at start-up, verified with `ring` on the hot path.
//!
//! `ring` verifies an RSA-2048 signature in tens of microseconds (roughly ten
//! times faster than the pure-Rust `rsa` crate), but it only takes a PKCS#1
//! `RSAPublicKey`. Providers hand out SPKI PEM, bare base64 DER or X.509
//! certificates, so the `spki`/`pkcs1`/`x509-cert` parsers normalise those
//! once, here. The `rsa` crate is used only to *sign* sandbox callbacks (which
//! `ring` cannot do with SHA-1 or the 1024-bit keys ABC still uses) and for
//! `keys generate`: never on a request path, never with a production key
//! (`deny.toml` says why its timing advisory does not apply).

use std::path::Path;

use base64::Engine;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;
use x509_cert::der::{Decode, Encode};

use crate::key_list::KeyList;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{0}: not an RSA public key, SPKI, or X.509 certificate (PEM or DER)")]
    Unrecognized(String),
    #[error("{0}: not an RSA private key (PKCS#8 or PKCS#1 PEM)")]
    UnrecognizedPrivate(String),
    #[error("{what}: RSA key of {bits} bits is too small (at least {min} required)")]
    TooSmall { what: String, bits: usize, min: usize },
}

/// Signature algorithm, PKCS#1 v1.5 padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RsaAlgorithm {
    /// SHA256withRSA, keys of 2048 bits or more.
    Sha256,
    /// SHA256withRSA accepting 1024-bit keys (ABC's bank certificates).
    Sha256Legacy1024,
    /// SHA1withRSA accepting 1024-bit keys (ABC only).
    Sha1Legacy1024,
}

impl RsaAlgorithm {
    fn ring(self) -> &'static ring::signature::RsaParameters {
        match self {
            RsaAlgorithm::Sha256 => &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            RsaAlgorithm::Sha256Legacy1024 => {
                &ring::signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY
            }
            RsaAlgorithm::Sha1Legacy1024 => &ring::signature::RSA_PKCS1_1024_8192_SHA1_FOR_LEGACY_USE_ONLY,
        }
    }
}

/// A verified-to-be-RSA public key, held as PKCS#1 DER ready for `ring`.
#[derive(Clone)]
pub struct RsaPublicKey {
    pkcs1_der: Vec<u8>,
    bits: usize,
}

impl std::fmt::Debug for RsaPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaPublicKey({} bits)", self.bits)
    }
}

impl RsaPublicKey {
    /// Reads a key file; `min_bits` is the provider's policy (2048, or 1024 for ABC).
    pub fn load(path: &Path, min_bits: usize) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_bytes(&bytes, &path.display().to_string(), min_bits)
    }

    /// Accepts PEM SPKI (`PUBLIC KEY`), PEM PKCS#1 (`RSA PUBLIC KEY`), PEM or DER
    /// X.509 certificates, and bare base64 or binary DER of any of those.
    pub fn from_bytes(bytes: &[u8], what: &str, min_bits: usize) -> Result<Self, KeyError> {
        let ParsedPublic { pkcs1_der, bits } =
            parse_public(bytes).ok_or_else(|| KeyError::Unrecognized(what.to_owned()))?;
        if bits < min_bits {
            return Err(KeyError::TooSmall {
                what: what.to_owned(),
                bits,
                min: min_bits,
            });
        }
        Ok(Self { pkcs1_der, bits })
    }

    pub fn bits(&self) -> usize {
        self.bits
    }

    /// The key as PKCS#1 `RSAPublicKey` DER: the same key gives the same
    /// bytes whatever file format it was read from.
    pub fn pkcs1_der(&self) -> &[u8] {
        &self.pkcs1_der
    }

    /// Verifies `signature` over `message`. Never panics; any malformed input is
    /// simply "not verified".
    pub fn verify(&self, alg: RsaAlgorithm, message: &[u8], signature: &[u8]) -> bool {
        ring::signature::UnparsedPublicKey::new(alg.ring(), &self.pkcs1_der)
            .verify(message, signature)
            .is_ok()
    }

    /// Verifies a base64 signature (standard alphabet, padding optional).
    pub fn verify_base64(&self, alg: RsaAlgorithm, message: &[u8], signature_b64: &str) -> bool {
        match decode_base64_lenient(signature_b64) {
            Some(sig) => self.verify(alg, message, &sig),
            None => false,
        }
    }
}

/// An account's public keys: one, or several while the provider rotates its
/// key. The signature is decoded once, then checked against each key in
/// turn (at most [`crate::key_list::MAX_KEYS`]).
impl KeyList<RsaPublicKey> {
    pub fn verify_base64_any(&self, alg: RsaAlgorithm, message: &[u8], signature_b64: &str) -> bool {
        match decode_base64_lenient(signature_b64) {
            Some(sig) => self.any_verifies(|key| key.verify(alg, message, &sig)),
            None => false,
        }
    }
}

/// Standard base64, tolerating missing padding and embedded whitespace/newlines
/// (some providers wrap long signatures).
pub fn decode_base64_lenient(text: &str) -> Option<Vec<u8>> {
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    engine.decode(compact.as_bytes()).ok()
}

/// The parsed key: its PKCS#1 `RSAPublicKey` DER and its modulus size.
struct ParsedPublic {
    pkcs1_der: Vec<u8>,
    bits: usize,
}

fn parse_public(bytes: &[u8]) -> Option<ParsedPublic> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        let text = text.trim();
        if text.starts_with("-----BEGIN") || text.contains("\n-----BEGIN") {
            let start = text.find("-----BEGIN")?;
            let (label, der) = pem_rfc7468::decode_vec(&text.as_bytes()[start..]).ok()?;
            return match label {
                "CERTIFICATE" => spki_of_cert(&x509_cert::Certificate::from_der(&der).ok()?),
                "PUBLIC KEY" => from_spki_der(&der),
                "RSA PUBLIC KEY" => from_pkcs1_der(&der),
                _ => None,
            };
        }
        if let Some(der) = decode_base64_lenient(text) {
            if let Some(key) = parse_public_der(&der) {
                return Some(key);
            }
        }
    }
    parse_public_der(bytes)
}

fn parse_public_der(der: &[u8]) -> Option<ParsedPublic> {
    if let Some(key) = from_spki_der(der) {
        return Some(key);
    }
    if let Ok(cert) = x509_cert::Certificate::from_der(der) {
        return spki_of_cert(&cert);
    }
    from_pkcs1_der(der)
}

/// `rsaEncryption`, the only algorithm an SPKI may name here.
const RSA_ENCRYPTION: spki::ObjectIdentifier = spki::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

fn from_spki_der(der: &[u8]) -> Option<ParsedPublic> {
    let info = spki::SubjectPublicKeyInfoRef::from_der(der).ok()?;
    spki_to_parsed(&info)
}

fn spki_to_parsed(info: &spki::SubjectPublicKeyInfoRef<'_>) -> Option<ParsedPublic> {
    if info.algorithm.oid != RSA_ENCRYPTION {
        return None;
    }
    from_pkcs1_der(info.subject_public_key.as_bytes()?)
}

/// A PKCS#1 `RSAPublicKey`, checked the way `ring` will use it: a positive
/// modulus with no leading zero byte, and an odd exponent of at least 3.
fn from_pkcs1_der(der: &[u8]) -> Option<ParsedPublic> {
    let key = pkcs1::RsaPublicKey::from_der(der).ok()?;
    let modulus = key.modulus.as_bytes();
    let exponent = key.public_exponent.as_bytes();
    let first = *modulus.first()?;
    let last_exponent = *exponent.last()?;
    if first == 0 || last_exponent % 2 == 0 || (exponent.len() == 1 && last_exponent < 3) {
        return None;
    }
    let bits = modulus.len() * 8 - first.leading_zeros() as usize;
    Some(ParsedPublic {
        pkcs1_der: der.to_vec(),
        bits,
    })
}

fn spki_of_cert(cert: &x509_cert::Certificate) -> Option<ParsedPublic> {
    let der = cert.tbs_certificate.subject_public_key_info.to_der().ok()?;
    from_spki_der(&der)
}

/// A sandbox private key, for signing sample callbacks (never on a request path).
#[derive(Clone)]
pub struct RsaSigningKey {
    key: rsa::RsaPrivateKey,
}

impl std::fmt::Debug for RsaSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaSigningKey(..)")
    }
}

impl RsaSigningKey {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_pem(&text, &path.display().to_string())
    }

    pub fn from_pem(text: &str, what: &str) -> Result<Self, KeyError> {
        rsa::RsaPrivateKey::from_pkcs8_pem(text)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs1_pem(text))
            .map(|key| Self { key })
            .map_err(|_| KeyError::UnrecognizedPrivate(what.to_owned()))
    }

    pub fn from_key(key: rsa::RsaPrivateKey) -> Self {
        Self { key }
    }

    /// PKCS#1 v1.5 signature over `message`.
    pub fn sign(&self, alg: RsaAlgorithm, message: &[u8]) -> Result<Vec<u8>, rsa::Error> {
        use sha2::Digest;
        match alg {
            RsaAlgorithm::Sha256 | RsaAlgorithm::Sha256Legacy1024 => {
                let digest = sha2::Sha256::digest(message);
                self.key.sign(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest)
            }
            RsaAlgorithm::Sha1Legacy1024 => {
                let digest = sha1::Sha1::digest(message);
                self.key.sign(rsa::Pkcs1v15Sign::new::<sha1::Sha1>(), &digest)
            }
        }
    }

    pub fn sign_base64(&self, alg: RsaAlgorithm, message: &[u8]) -> Result<String, rsa::Error> {
        Ok(base64::engine::general_purpose::STANDARD.encode(self.sign(alg, message)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_key(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/vectors/keys")
            .join(name)
    }

    #[test]
    fn loads_every_format_and_round_trips() {
        let signer = RsaSigningKey::load(&vector_key("cbb_sandbox_priv.pem")).unwrap();
        let pem = std::fs::read(vector_key("cbb_platform_pub.pem")).unwrap();
        let key = RsaPublicKey::from_bytes(&pem, "pem", 2048).unwrap();
        assert_eq!(key.bits(), 2048);
        let sig = signer.sign(RsaAlgorithm::Sha256, b"hello").unwrap();
        assert!(key.verify(RsaAlgorithm::Sha256, b"hello", &sig));
        assert!(!key.verify(RsaAlgorithm::Sha256, b"hellp", &sig));

        // bare base64 DER: the PEM body without its armour
        let body: String = std::str::from_utf8(&pem)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let bare = RsaPublicKey::from_bytes(body.as_bytes(), "b64", 2048).unwrap();
        assert!(bare.verify(RsaAlgorithm::Sha256, b"hello", &sig));
        // binary DER
        let der = decode_base64_lenient(&body).unwrap();
        assert!(RsaPublicKey::from_bytes(&der, "der", 2048).is_ok());
    }

    #[test]
    fn certificates_and_small_keys() {
        let cert = std::fs::read(vector_key("abc_trustpay_cert.pem")).unwrap();
        let key = RsaPublicKey::from_bytes(&cert, "cert", 1024).unwrap();
        assert_eq!(key.bits(), 1024);
        assert!(matches!(
            RsaPublicKey::from_bytes(&cert, "cert", 2048),
            Err(KeyError::TooSmall { bits: 1024, .. })
        ));
        let signer = RsaSigningKey::load(&vector_key("abc_sandbox_priv.pem")).unwrap();
        let sig = signer.sign(RsaAlgorithm::Sha1Legacy1024, b"msg").unwrap();
        assert!(key.verify(RsaAlgorithm::Sha1Legacy1024, b"msg", &sig));
        // the 2048-only algorithm refuses a 1024-bit key
        let sig256 = signer.sign(RsaAlgorithm::Sha256, b"msg").unwrap();
        assert!(!key.verify(RsaAlgorithm::Sha256, b"msg", &sig256));
        assert!(key.verify(RsaAlgorithm::Sha256Legacy1024, b"msg", &sig256));
        // DER certificate
        let text = std::str::from_utf8(&cert).unwrap();
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = decode_base64_lenient(&body).unwrap();
        assert!(RsaPublicKey::from_bytes(&der, "der cert", 1024).is_ok());
    }

    #[test]
    fn garbage_is_refused() {
        assert!(RsaPublicKey::from_bytes(b"not a key", "x", 1024).is_err());
        assert!(RsaPublicKey::from_bytes(&[0x30, 0x82, 0xff], "x", 1024).is_err());
    }
}
