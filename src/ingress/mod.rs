//! Provider-facing ingress: `POST /notify/{account}`.
//!
//! Each provider lives in its own module behind the [`Provider`] trait
//! (verify raw bytes, then parse into a [`crate::domain::Notification`]).
//! `registry` builds them from the config; `handler` runs the request path.

pub mod abc;
#[cfg(test)]
mod binding_tests;
pub mod cbb;
pub mod common;
pub mod dingdang;
pub mod dryad;
pub mod handler;
pub mod json;
pub mod provider;
pub mod rate_limit;
pub mod registry;
pub mod shouqianba;
#[cfg(test)]
mod tests_support;

pub use provider::{
    Dialect, Provider, RawRequest, Rejection, ReplayNonce, SampleKind, SampleSigner, SampleSpec, SignError,
    SignedRequest, Verified,
};
