//! HMAC and constant-time comparison: what provider verification, delivery
//! signing, the admin token check and the sample sink share. It sits below
//! every layer that uses it, so none of them imports another for it.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// HMAC-SHA256 over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // new_from_slice only fails for fixed-size-key MACs; HMAC takes any length.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC accepts keys of any length"),
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Equality that takes the same time wherever the inputs differ, so that a
/// forger learns nothing from response timing.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Checks a hex-encoded HMAC-SHA256 (either case) in constant time.
pub fn verify_hex_hmac_sha256(key: &[u8], parts: &[&[u8]], given_hex: &str) -> bool {
    let Ok(given) = hex::decode(given_hex) else {
        return false;
    };
    ct_eq(&hmac_sha256(key, parts), &given)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn hex_check_accepts_both_cases() {
        let mac = hex::encode(hmac_sha256(b"k", &[b"m"]));
        assert!(verify_hex_hmac_sha256(b"k", &[b"m"], &mac));
        assert!(verify_hex_hmac_sha256(b"k", &[b"m"], &mac.to_uppercase()));
        assert!(!verify_hex_hmac_sha256(b"k", &[b"n"], &mac));
        assert!(!verify_hex_hmac_sha256(b"k", &[b"m"], "zz"));
    }
}
