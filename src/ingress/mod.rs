//! Provider-facing ingress: `POST /notify/{account}`.
//!
//! Each provider lives in its own module behind the [`Provider`] trait
//! (verify raw bytes, then parse into a [`crate::domain::Notification`]) and
//! the [`ProviderModule`] trait (its config section, building its verifier
//! and sandbox signer, its bench accounts). `for_each_provider` is the one
//! table that names them; `registry` builds accounts from the config through
//! it; `handler` runs the request path. `docs/adding-a-provider.md` walks
//! through adding one.

#[cfg(test)]
mod binding_tests;
pub mod common;
pub mod fuzz;
pub mod handler;
pub mod json;
pub mod module;
pub mod provider;
pub mod rate_limit;
pub mod registry;
#[cfg(test)]
mod tests_support;

pub use module::{BenchMode, ProviderModule, SandboxAccount, SharedKeys};
pub use provider::{
    Answer, Dialect, Provider, RawRequest, Rejection, ReplayNonce, SampleKind, SampleSigner, SampleSpec,
    SignError, SignedRequest, Verified, Worded,
};

// The registry: one line per provider, and the only line outside its own
// file that a provider needs. `build.rs` reads the `pub mod` lines between
// the two markers and writes `for_each_provider!` from them: module `cbb`
// is `ProviderKind::Cbb`, its verifier is `cbb::Cbb` (the module's name
// capitalised; it implements [`ProviderModule`]) and `provider = "cbb"`
// chooses it in the config. The order here is the order of every list that
// names providers (`rustfmt.toml` keeps rustfmt from sorting it).
// registry:begin
pub mod cbb;
pub mod shouqianba;
pub mod abc;
pub mod dingdang;
pub mod dryad;
pub mod wechatpay;
pub mod alipay;
// registry:end

// `for_each_provider!($then)` calls the macro `$then` with the table, one
// `module => Type,` per provider. Everything that lists providers is written
// from it: [`crate::domain::ProviderKind`] (`ALL`, `as_str`, `parse`, the
// lists in messages and help texts), the config's dispatch on `provider`
// ([`registry::ProviderSettings`]), building verifiers and sandbox signers,
// the start-up refusal of shared keys, and the bench's accounts.
include!(concat!(env!("OUT_DIR"), "/provider_registry.rs"));
pub(crate) use for_each_provider;
