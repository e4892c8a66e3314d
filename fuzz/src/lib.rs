//! The harness of the `cargo fuzz` crate: every provider's fuzz targets,
//! as each provider module names them (`ProviderModule::FUZZ`, read through
//! the registry), each with its account built once per process from
//! `<repo>/sandbox-keys/`. The input format and the path each input runs
//! are in `payhook::ingress::fuzz`.
//!
//! One fuzz binary, `provider`, runs the target named by
//! `PAYHOOK_FUZZ_TARGET`, so that a new provider needs no file here.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};

use payhook::config::Config;
use payhook::ingress::fuzz::{FuzzTarget, Outcome};
use payhook::ingress::registry::{build_accounts, fuzz_targets};
use payhook::ingress::Provider;

/// Every target by name, with its account's verifier.
static TARGETS: LazyLock<HashMap<&'static str, (&'static FuzzTarget, Box<dyn Provider>)>> =
    LazyLock::new(|| {
        fuzz_targets()
            .map(|target| (target.name, (target, account_of(target))))
            .collect()
    });

/// A target's account, built as the relay builds it.
fn account_of(target: &FuzzTarget) -> Box<dyn Provider> {
    let dir: PathBuf = [env!("CARGO_MANIFEST_DIR"), "..", "sandbox-keys"].iter().collect();
    let text = format!("[[accounts]]\nid = \"fuzz\"\n{}", target.account);
    let config = Config::from_toml_str(&text, &dir, &|_: &str| None)
        .unwrap_or_else(|e| panic!("fuzz target {}: {e}", target.name));
    let accounts = build_accounts(&config.accounts)
        .unwrap_or_else(|e| panic!("fuzz target {}: {e}", target.name));
    let account = accounts.get("fuzz").cloned().expect("the account");
    drop(accounts);
    match Arc::try_unwrap(account) {
        Ok(account) => account.provider,
        Err(_) => panic!("fuzz target {}: the account is shared", target.name),
    }
}

/// Every target's name, in the registry's order.
pub fn target_names() -> Vec<&'static str> {
    fuzz_targets().map(|t| t.name).collect()
}

/// The name of the provider a target verifies for (`dryad`), to pick the
/// test vectors that seed it.
pub fn provider_of(name: &str) -> Option<&'static str> {
    TARGETS.get(name).map(|(_, p)| p.kind().as_str())
}

/// The header slots of a target, in order.
pub fn headers_of(name: &str) -> Option<&'static [&'static str]> {
    TARGETS.get(name).map(|(t, _)| t.headers)
}

/// Runs one input of the target `name`; `None` for an empty input or an
/// unknown target.
pub fn run(name: &str, data: &[u8]) -> Option<Outcome> {
    let (target, provider) = TARGETS.get(name)?;
    payhook::ingress::fuzz::run(target, provider.as_ref(), data)
}

/// The target `PAYHOOK_FUZZ_TARGET` names, for the `provider` binary.
pub static SELECTED: LazyLock<&'static str> = LazyLock::new(|| {
    let names = target_names();
    let wanted = std::env::var("PAYHOOK_FUZZ_TARGET").unwrap_or_default();
    names
        .iter()
        .find(|n| **n == wanted)
        .copied()
        .unwrap_or_else(|| panic!("set PAYHOOK_FUZZ_TARGET to one of: {}", names.join(", ")))
});
