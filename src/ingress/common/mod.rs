//! Pieces several providers share, written once.

pub mod form;
pub mod rsa_keys;
mod sandbox_key;
pub mod time;

pub use form::{parse_form, sorted_signing_string};
pub use rsa_keys::{RsaAlgorithm, RsaPublicKey, RsaSigningKey};
pub use sandbox_key::SandboxKey;
pub use time::{from_epoch_millis, parse_shanghai_date_time, parse_shanghai_local};
