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
}

/// Provider keys are RSA-2048 or larger, except ABC's bank certificates.
const MIN_RSA_BITS: usize = 2048;
const MIN_RSA_BITS_ABC: usize = 1024;

/// A configured account, ready to verify callbacks.
pub struct Account {
    pub id: AccountId,
    pub provider: Box<dyn Provider>,
}

pub type Accounts = Arc<HashMap<String, Arc<Account>>>;

pub fn build_accounts(configs: &[AccountConfig]) -> Result<Accounts, AccountError> {
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
            }),
        );
    }
    Ok(Arc::new(map))
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
        ProviderSettings::Abc { certificate_file, .. } => {
            Box::new(Abc::new(RsaPublicKey::load(certificate_file, MIN_RSA_BITS_ABC)?))
        }
        ProviderSettings::Dingdang {
            scheme,
            max_clock_skew,
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
            Box::new(Dingdang::new(scheme, *max_clock_skew))
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
            ..
        } => Box::new(AbcSandbox::new(private_key(sandbox_private_key_file)?)),
        ProviderSettings::Dingdang {
            scheme,
            sandbox_private_key_file,
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
            Box::new(DingdangSandbox::new(scheme))
        }
        ProviderSettings::Dryad { secret, .. } => {
            Box::new(DryadSandbox::new(secret.expose().as_bytes().to_vec()))
        }
    })
}
