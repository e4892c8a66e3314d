//! Pieces several providers share, written once.

pub mod form;
pub mod rsa_keys;
pub mod time;

pub use form::{parse_form, sorted_signing_string};
pub use rsa_keys::{RsaAlgorithm, RsaPublicKey, RsaSigningKey};
pub use time::{from_epoch_millis, parse_shanghai_date_time, parse_shanghai_local};
