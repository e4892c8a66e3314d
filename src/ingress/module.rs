//! What a provider module gives the registry besides its [`Provider`]
//! verifier: its `[[accounts]]` section, how its verifier and sandbox signer
//! are built from it, the keys that alone tell its accounts apart, and its
//! bench accounts. The registry table (`ingress::for_each_provider`) names
//! the modules; `registry` calls them through this trait, so that nothing
//! outside a provider's own file knows its settings.

use std::path::PathBuf;

use serde::de::DeserializeOwned;

use super::common::{RsaPublicKey, RsaSigningKey};
use super::fuzz::FuzzTarget;
use super::registry::AccountErrorKind;
use super::{Provider, SampleSigner};
use crate::config::{AccountCx, ConfigError, Secret};
use crate::key_list::KeyList;

/// A provider module: implemented by its verifier type, the `Type` of its
/// line in the registry table.
pub trait ProviderModule: Provider + Sized {
    /// The provider as prose names it ("CBB", "Tencent Dingdang"): in help
    /// texts and in the refusal of shared keys.
    const DISPLAY_NAME: &'static str;

    /// The bench's accounts of this provider, one per signing mode
    /// (`payhook bench --provider NAME`); none if it is not benched.
    const BENCH: &'static [BenchMode] = &[];

    /// The account's `[[accounts]]` table as written, except the keys every
    /// provider has (`id`, `provider`, `rate_limit`), which the config reads.
    /// Give it `#[serde(deny_unknown_fields)]`: a typo must not silently
    /// become a default.
    type File: DeserializeOwned;

    /// The account's settings, checked: what `build` and `sandbox` take.
    /// `Debug` must not show secrets (hold them as [`Secret`]).
    type Settings: std::fmt::Debug + Clone + Send + Sync + 'static;

    /// Its sandbox accounts (one per signing mode), for `payhook demo` and
    /// `payhook.example.toml`: they verify with the published test keys of
    /// [`ProviderModule::SANDBOX_KEYS`].
    const SANDBOX: &'static [SandboxAccount] = &[];

    /// The published test key files (`sandbox-keys/`) its sandbox accounts
    /// name: each file's name and text, compiled in.
    const SANDBOX_KEYS: &'static [(&'static str, &'static str)] = &[];

    /// Its fuzz targets (`fuzz/`): one per signing mode, each with its
    /// account and, where the harness can sign cheaply, an assist
    /// ([`super::fuzz`]).
    const FUZZ: &'static [FuzzTarget] = &[];

    /// Checks the section as written. A refusal names its key
    /// (`cx.invalid("secret", …)` is `accounts[0].secret: …`); key files and
    /// secrets are read with `cx.key_files` and `cx.secrets`.
    fn settings(file: Self::File, cx: &AccountCx<'_>) -> Result<Self::Settings, ConfigError>;

    /// The account's verifier. Keys are read and parsed here, once, at
    /// start-up (and on reload).
    fn build(settings: &Self::Settings) -> Result<Self, AccountErrorKind>;

    /// The account's sandbox signer, for `simulate`, the demo, the bench and
    /// tests: its sandbox private key ([`sandbox_key`]) for an RSA scheme,
    /// the first of its secrets ([`first_secret`]) for an HMAC or MD5 one.
    fn sandbox(settings: &Self::Settings) -> Result<Box<dyn SampleSigner>, AccountErrorKind>;

    /// For a provider whose notices name no merchant: the keys that alone
    /// tell its accounts apart, so that start-up can refuse two accounts
    /// sharing one. `None` (the default) for a provider that binds each
    /// notice to its account by a signed merchant field.
    fn shared_keys(_settings: &Self::Settings) -> Result<Option<SharedKeys>, AccountErrorKind> {
        Ok(None)
    }

    /// For a provider whose notices name their merchant in a signed field
    /// that one platform key signs for every merchant: the merchant this
    /// account binds to, as `(key, value)` (`("mch_id", "1900000109")`,
    /// with a sub-merchant `("mch_id", "1900000109/1900000110")`), so that
    /// start-up can refuse two accounts of the provider naming one merchant:
    /// a notice would fit both. `None` (the default): not checked.
    fn merchant(_settings: &Self::Settings) -> Option<(&'static str, String)> {
        None
    }

    /// Which of [`ProviderModule::BENCH`] an account signs as (its `name`).
    fn bench_mode(_settings: &Self::Settings) -> Option<&'static str> {
        None
    }
}

/// The keys an account verifies with, when they are all that tells it apart
/// from another account of its provider.
pub struct SharedKeys {
    /// What they are, for the refusal: "platform public key", "secret".
    pub what: &'static str,
    /// Each key's bytes (an RSA key's PKCS#1 DER, a secret's text).
    pub keys: Vec<Vec<u8>>,
}

/// One of the bench's accounts: a provider in one signing mode.
#[derive(Debug, PartialEq, Eq)]
pub struct BenchMode {
    /// `payhook bench --provider NAME`.
    pub name: &'static str,
    /// Its line in `payhook bench --help`.
    pub help: &'static str,
    /// The account's id in the bench's relay.
    pub id: &'static str,
    /// The rest of its `[[accounts]]` table (TOML lines, `provider`
    /// included); `{public}` and `{private}` stand for the bench's RSA key
    /// pair's files.
    pub account: &'static str,
}

/// One of a provider's sandbox accounts: a test account that its sandbox
/// signer can sign for, with the published test keys.
#[derive(Debug, PartialEq, Eq)]
pub struct SandboxAccount {
    /// The account's id in `payhook demo` and `payhook.example.toml`.
    pub id: &'static str,
    /// The rest of its `[[accounts]]` table (TOML lines, `provider`
    /// included); key files are named as in `sandbox-keys/`.
    pub account: &'static str,
}

/// Provider keys are RSA-2048 or larger (ABC's bank certificates excepted).
pub const MIN_RSA_BITS: usize = 2048;

/// Reads each key file of a list. Two files holding one key (the same key
/// in two formats, or a copy) are refused: during a rotation that means the
/// new key was never put in.
pub fn load_keys(
    files: &KeyList<PathBuf>,
    min_bits: usize,
) -> Result<KeyList<RsaPublicKey>, AccountErrorKind> {
    let keys = files.try_map(|path| RsaPublicKey::load(path, min_bits))?;
    let loaded: Vec<(&PathBuf, &RsaPublicKey)> = files.iter().zip(keys.iter()).collect();
    for (i, (file, key)) in loaded.iter().enumerate() {
        if let Some((other, _)) = loaded[..i].iter().find(|(_, k)| k.pkcs1_der() == key.pkcs1_der()) {
            return Err(AccountErrorKind::RepeatedKey {
                file: file.display().to_string(),
                other: other.display().to_string(),
            });
        }
    }
    Ok(keys)
}

/// The secrets' bytes, as the HMAC and MD5 verifiers take them.
pub fn secret_bytes(secrets: &KeyList<Secret>) -> KeyList<Vec<u8>> {
    secrets.map(|secret| secret.expose().as_bytes().to_vec())
}

/// The secret a sandbox signs with: the first of a list (the new one, while
/// a secret is rotated).
pub fn first_secret(secrets: &KeyList<Secret>) -> Vec<u8> {
    secrets.first().expose().as_bytes().to_vec()
}

/// The sandbox private key of an RSA scheme, from `sandbox_private_key_file`.
pub fn sandbox_key(file: &Option<PathBuf>) -> Result<RsaSigningKey, AccountErrorKind> {
    match file {
        Some(path) => RsaSigningKey::load(path).map_err(AccountErrorKind::from),
        None => Err(AccountErrorKind::NoSandboxKey),
    }
}
