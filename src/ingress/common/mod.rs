//! Pieces several providers share, written once.

pub mod form;
pub mod mac;
pub mod rsa_keys;
pub mod time;

pub use form::{parse_form, sorted_signing_string};
pub use mac::{ct_eq, hmac_sha256, verify_hex_hmac_sha256};
pub use rsa_keys::{RsaAlgorithm, RsaPublicKey, RsaSigningKey};
pub use time::{from_epoch_millis, parse_shanghai_date_time, parse_shanghai_local};
