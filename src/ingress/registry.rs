//! Builds each configured account's verifier (and sandbox signer) from the
//! config. Keys are read and parsed here, once, at start-up; a missing or
//! unreadable key stops start-up with the account named.

use std::collections::HashMap;
use std::sync::Arc;

use super::abc::{Abc, AbcSandbox};
use super::cbb::{Cbb, CbbSandbox};
use super::common::rsa_keys::KeyError;
use super::common::{RsaPublicKey, RsaSigningKey};
use super::dingdang::{Dingdang, DingdangSandbox, DingdangSandboxScheme, DingdangScheme};
use super::dryad::{Dryad, DryadSandbox};
use super::rate_limit::RateLimiter;
use super::shouqianba::{Shouqianba, ShouqianbaSandbox, SqbSandboxMode, SqbSignMode};
use super::{Provider, SampleSigner};
use crate::config::{AccountConfig, DingdangSchemeConfig, ProviderSettings, SqbMode};
use crate::domain::AccountId;

#[derive(Debug, thiserror::Error)]
#[error("account `{account}`: {source}")]
pub struct AccountError {
    pub account: String,
    #[source]
    pub source: AccountErrorKind,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountErrorKind {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("no sandbox signing key or secret is configured (sandbox_private_key_file)")]
    NoSandboxKey,
    #[error(
        "verifies with the same {what} as account `{other}`, and {provider} notices name no merchant: \
         each could be sent the other's notices. Give each account its own {what}"
    )]
    SharedKey {
        other: String,
        provider: &'static str,
        what: &'static str,
    },
}

/// Provider keys are RSA-2048 or larger, except ABC's bank certificates.
const MIN_RSA_BITS: usize = 2048;
const MIN_RSA_BITS_ABC: usize = 1024;

/// A configured account, ready to verify callbacks.
pub struct Account {
    pub id: AccountId,
    pub provider: Box<dyn Provider>,
    /// The account's optional `rate_limit`.
    pub rate_limit: Option<RateLimiter>,
}

pub type Accounts = Arc<HashMap<String, Arc<Account>>>;

pub fn build_accounts(configs: &[AccountConfig]) -> Result<Accounts, AccountError> {
    refuse_shared_keys(configs)?;
    let mut map = HashMap::new();
    for config in configs {
        let provider = build_provider(config).map_err(|source| AccountError {
            account: config.id.to_string(),
            source,
        })?;
        map.insert(
            config.id.to_string(),
            Arc::new(Account {
                id: config.id.clone(),
                provider,
                rate_limit: config.rate_limit.map(RateLimiter::new),
            }),
        );
    }
    Ok(Arc::new(map))
}

/// CBB and Dryad notices carry no field naming the merchant, so only the key
/// tells two accounts apart: two accounts with one key would each accept the
/// other's notices. Refused at start-up, naming both accounts.
fn refuse_shared_keys(configs: &[AccountConfig]) -> Result<(), AccountError> {
    let mut seen: HashMap<(&'static str, Vec<u8>), &AccountId> = HashMap::new();
    for config in configs {
        let (provider, what, key) = match &config.settings {
            ProviderSettings::Cbb { public_key_file, .. } => {
                let key = RsaPublicKey::load(public_key_file, MIN_RSA_BITS).map_err(|e| AccountError {
                    account: config.id.to_string(),
                    source: e.into(),
                })?;
                ("CBB", "platform public key", key.pkcs1_der().to_vec())
            }
            ProviderSettings::Dryad { secret, .. } => {
                ("Dryad", "secret", secret.expose().as_bytes().to_vec())
            }
            _ => continue,
        };
        if let Some(other) = seen.insert((provider, key), &config.id) {
            return Err(AccountError {
                account: config.id.to_string(),
                source: AccountErrorKind::SharedKey {
                    other: other.to_string(),
                    provider,
                    what,
                },
            });
        }
    }
    Ok(())
}

/// One match arm per provider: the only place that knows them all.
fn build_provider(config: &AccountConfig) -> Result<Box<dyn Provider>, AccountErrorKind> {
    Ok(match &config.settings {
        ProviderSettings::Cbb { public_key_file, .. } => {
            Box::new(Cbb::new(RsaPublicKey::load(public_key_file, MIN_RSA_BITS)?))
        }
        ProviderSettings::Shouqianba {
            terminal_sn, mode, ..
        } => {
            let mode = match mode {
                SqbMode::Md5 { terminal_key } => SqbSignMode::Md5 {
                    terminal_key: terminal_key.expose().as_bytes().to_vec(),
                },
                SqbMode::Rsa { public_key_file } => SqbSignMode::Rsa {
                    key: RsaPublicKey::load(public_key_file, MIN_RSA_BITS)?,
                },
            };
            Box::new(Shouqianba::new(terminal_sn.clone(), mode))
        }
        ProviderSettings::Abc {
            certificate_file,
            merchant_id,
            signature_algorithm,
            ..
        } => Box::new(Abc::new(
            RsaPublicKey::load(certificate_file, MIN_RSA_BITS_ABC)?,
            *signature_algorithm,
            merchant_id.clone(),
        )),
        ProviderSettings::Dingdang {
            scheme,
            max_clock_skew,
            skill_id,
            ..
        } => {
            let scheme = match scheme {
                DingdangSchemeConfig::HmacSha256 { secret } => DingdangScheme::HmacSha256 {
                    secret: secret.expose().as_bytes().to_vec(),
                },
                DingdangSchemeConfig::Rsa2 { public_key_file } => DingdangScheme::Rsa2 {
                    key: RsaPublicKey::load(public_key_file, MIN_RSA_BITS)?,
                },
            };
            Box::new(Dingdang::new(scheme, *max_clock_skew, skill_id.clone()))
        }
        ProviderSettings::Dryad {
            secret,
            max_clock_skew,
            ..
        } => Box::new(Dryad::new(secret.expose().as_bytes().to_vec(), *max_clock_skew)),
    })
}

/// The sandbox signer for an account: its sandbox private key for RSA
/// providers, its shared secret for HMAC/MD5 ones.
pub fn build_sandbox_signer(config: &AccountConfig) -> Result<Box<dyn SampleSigner>, AccountError> {
    let wrap = |source: AccountErrorKind| AccountError {
        account: config.id.to_string(),
        source,
    };
    let private_key = |file: &Option<std::path::PathBuf>| -> Result<RsaSigningKey, AccountError> {
        match file {
            Some(path) => RsaSigningKey::load(path).map_err(|e| wrap(e.into())),
            None => Err(wrap(AccountErrorKind::NoSandboxKey)),
        }
    };
    Ok(match &config.settings {
        ProviderSettings::Cbb {
            sandbox_private_key_file,
            ..
        } => Box::new(CbbSandbox::new(private_key(sandbox_private_key_file)?)),
        ProviderSettings::Shouqianba {
            terminal_sn,
            mode,
            sandbox_private_key_file,
        } => {
            let mode = match mode {
                SqbMode::Md5 { terminal_key } => SqbSandboxMode::Md5 {
                    terminal_key: terminal_key.expose().as_bytes().to_vec(),
                },
                SqbMode::Rsa { .. } => SqbSandboxMode::Rsa {
                    key: private_key(sandbox_private_key_file)?,
                },
            };
            Box::new(ShouqianbaSandbox::new(terminal_sn.clone(), mode))
        }
        ProviderSettings::Abc {
            sandbox_private_key_file,
            merchant_id,
            signature_algorithm,
            ..
        } => Box::new(AbcSandbox::new(
            private_key(sandbox_private_key_file)?,
            *signature_algorithm,
            merchant_id.clone(),
        )),
        ProviderSettings::Dingdang {
            scheme,
            sandbox_private_key_file,
            skill_id,
            ..
        } => {
            let scheme = match scheme {
                DingdangSchemeConfig::HmacSha256 { secret } => DingdangSandboxScheme::HmacSha256 {
                    secret: secret.expose().as_bytes().to_vec(),
                },
                DingdangSchemeConfig::Rsa2 { .. } => DingdangSandboxScheme::Rsa2 {
                    key: private_key(sandbox_private_key_file)?,
                },
            };
            Box::new(DingdangSandbox::new(scheme, skill_id.clone()))
        }
        ProviderSettings::Dryad { secret, .. } => {
            Box::new(DryadSandbox::new(secret.expose().as_bytes().to_vec()))
        }
    })
}
