//! Provider-facing ingress: `POST /notify/{account}`.
//!
//! Each provider lives in its own module behind the [`Provider`] trait
//! (verify raw bytes, then parse into a [`crate::domain::Notification`]) and
//! the [`ProviderModule`] trait (its config section, building its verifier
//! and sandbox signer, its bench accounts). `for_each_provider` is the one
//! table that names them; `registry` builds accounts from the config through
//! it; `handler` runs the request path. `docs/adding-a-provider.md` walks
//! through adding one.

pub mod abc;
#[cfg(test)]
mod binding_tests;
pub mod cbb;
pub mod common;
pub mod dingdang;
pub mod dryad;
pub mod handler;
pub mod json;
pub mod module;
pub mod provider;
pub mod rate_limit;
pub mod registry;
pub mod shouqianba;
#[cfg(test)]
mod tests_support;

pub use module::{BenchMode, ProviderModule, SharedKeys};
pub use provider::{
    Dialect, Provider, RawRequest, Rejection, ReplayNonce, SampleKind, SampleSigner, SampleSpec, SignError,
    SignedRequest, Verified,
};

/// The registry: every provider, one line each, `module => Type`, where
/// `ingress::module::Type` is its verifier and implements [`ProviderModule`],
/// `ProviderKind::Type` names it and `provider = "module"` chooses it in the
/// config. Everything that lists providers is written from this table:
/// [`crate::domain::ProviderKind`] (`ALL`, `as_str`, `parse`, the lists in
/// messages and help texts), the config's dispatch on `provider`
/// ([`registry::ProviderSettings`]), building verifiers and sandbox signers,
/// the start-up refusal of shared keys, and the bench's accounts. The order
/// is the order of every list.
///
/// `$then` is a macro that takes the lines.
macro_rules! for_each_provider {
    ($then:ident) => {
        $then! {
            cbb => Cbb,
            shouqianba => Shouqianba,
            abc => Abc,
            dingdang => Dingdang,
            dryad => Dryad,
        }
    };
}
pub(crate) use for_each_provider;
