//! Builds each configured account's verifier (and sandbox signer) from the
//! config. Keys are read and parsed here, once, at start-up; a missing or
//! unreadable key stops start-up with the account named.

use std::collections::HashMap;
use std::path::PathBuf;
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
use crate::config::{AccountConfig, DingdangSchemeConfig, ProviderSettings, Secret, SqbMode};
use crate::domain::AccountId;
use crate::key_list::KeyList;

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
        "{file} holds the same key as {other}: a rotation lists the new key beside the old one, \
         each once"
    )]
    RepeatedKey { file: String, other: String },
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
/// other's notices. Refused at start-up, naming both accounts. With lists
/// (a key being rotated), no key of one account may be any key of another.
fn refuse_shared_keys(configs: &[AccountConfig]) -> Result<(), AccountError> {
    let mut seen: HashMap<(&'static str, Vec<u8>), &AccountId> = HashMap::new();
    for config in configs {
        let (provider, what, keys) = match &config.settings {
            ProviderSettings::Cbb { public_key_files, .. } => {
                let keys = load_keys(public_key_files, MIN_RSA_BITS).map_err(|source| AccountError {
                    account: config.id.to_string(),
                    source,
                })?;
                let keys: Vec<Vec<u8>> = keys.iter().map(|key| key.pkcs1_der().to_vec()).collect();
                ("CBB", "platform public key", keys)
            }
            ProviderSettings::Dryad { secrets, .. } => {
                let keys = secrets.iter().map(|s| s.expose().as_bytes().to_vec()).collect();
                ("Dryad", "secret", keys)
            }
            _ => continue,
        };
        for key in keys {
            match seen.insert((provider, key), &config.id) {
                Some(other) if other != &config.id => {
                    return Err(AccountError {
                        account: config.id.to_string(),
                        source: AccountErrorKind::SharedKey {
                            other: other.to_string(),
                            provider,
                            what,
                        },
                    })
                }
                // A key listed twice by one account is refused where its
                // keys are loaded (`load_keys`) or read (the config).
                _ => {}
            }
        }
    }
    Ok(())
}

/// Reads each key file of a list. Two files holding one key (the same key
/// in two formats, or a copy) are refused: during a rotation that means the
/// new key was never put in.
fn load_keys(files: &KeyList<PathBuf>, min_bits: usize) -> Result<KeyList<RsaPublicKey>, AccountErrorKind> {
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
fn secret_bytes(secrets: &KeyList<Secret>) -> KeyList<Vec<u8>> {
    secrets.map(|secret| secret.expose().as_bytes().to_vec())
}

/// One match arm per provider: the only place that knows them all.
fn build_provider(config: &AccountConfig) -> Result<Box<dyn Provider>, AccountErrorKind> {
    Ok(match &config.settings {
        ProviderSettings::Cbb { public_key_files, .. } => {
            Box::new(Cbb::new(load_keys(public_key_files, MIN_RSA_BITS)?))
        }
        ProviderSettings::Shouqianba {
            terminal_sn, mode, ..
        } => {
            let mode = match mode {
                SqbMode::Md5 { terminal_keys } => SqbSignMode::Md5 {
                    terminal_keys: secret_bytes(terminal_keys),
                },
                SqbMode::Rsa { public_key_files } => SqbSignMode::Rsa {
                    keys: load_keys(public_key_files, MIN_RSA_BITS)?,
                },
            };
            Box::new(Shouqianba::new(terminal_sn.clone(), mode))
        }
        ProviderSettings::Abc {
            certificate_files,
            merchant_id,
            signature_algorithm,
            ..
        } => Box::new(Abc::new(
            load_keys(certificate_files, MIN_RSA_BITS_ABC)?,
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
                DingdangSchemeConfig::HmacSha256 { secrets } => DingdangScheme::HmacSha256 {
                    secrets: secret_bytes(secrets),
                },
                DingdangSchemeConfig::Rsa2 { public_key_files } => DingdangScheme::Rsa2 {
                    keys: load_keys(public_key_files, MIN_RSA_BITS)?,
                },
            };
            Box::new(Dingdang::new(scheme, *max_clock_skew, skill_id.clone()))
        }
        ProviderSettings::Dryad {
            secrets,
            max_clock_skew,
            ..
        } => Box::new(Dryad::new(secret_bytes(secrets), *max_clock_skew)),
    })
}

/// The sandbox signer for an account: its sandbox private key for RSA
/// providers, its shared secret for HMAC/MD5 ones (the first of a list: the
/// new one, while a secret is rotated).
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
                SqbMode::Md5 { terminal_keys } => SqbSandboxMode::Md5 {
                    terminal_key: terminal_keys.first().expose().as_bytes().to_vec(),
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
                DingdangSchemeConfig::HmacSha256 { secrets } => DingdangSandboxScheme::HmacSha256 {
                    secret: secrets.first().expose().as_bytes().to_vec(),
                },
                DingdangSchemeConfig::Rsa2 { .. } => DingdangSandboxScheme::Rsa2 {
                    key: private_key(sandbox_private_key_file)?,
                },
            };
            Box::new(DingdangSandbox::new(scheme, skill_id.clone()))
        }
        ProviderSettings::Dryad { secrets, .. } => {
            Box::new(DryadSandbox::new(secrets.first().expose().as_bytes().to_vec()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ingress::tests_support::vectors_dir;

    fn build(accounts: &str) -> Result<Accounts, AccountError> {
        let config = Config::from_toml_str(accounts, &vectors_dir(), &|_: &str| None).unwrap();
        build_accounts(&config.accounts)
    }

    fn cbb(id: &str, files: &[&str]) -> String {
        let files: Vec<String> = files.iter().map(|f| format!("\"keys/{f}\"")).collect();
        format!(
            "[[accounts]]\nid = \"{id}\"\nprovider = \"cbb\"\npublic_key_files = [{}]\n",
            files.join(", ")
        )
    }

    #[test]
    fn no_key_of_one_cbb_account_may_be_any_key_of_another() {
        // Rotating: each account lists its own new and old key.
        build(&format!(
            "{}{}",
            cbb("one", &["cbb_platform_pub.pem", "sqb_pub.pem"]),
            cbb("two", &["dingdang_platform_pub.pem"])
        ))
        .unwrap();
        // The second account's old key is the first account's new one.
        let err = build(&format!(
            "{}{}",
            cbb("one", &["cbb_platform_pub.pem", "sqb_pub.pem"]),
            cbb("two", &["dingdang_platform_pub.pem", "cbb_platform_pub.pem"])
        ))
        .err()
        .unwrap();
        assert_eq!(err.account, "two");
        let text = err.to_string();
        assert!(
            text.contains("`one`") && text.contains("platform public key"),
            "{text}"
        );
    }

    #[test]
    fn no_secret_of_one_dryad_account_may_be_any_secret_of_another() {
        let dryad = |id: &str, secrets: &str| {
            format!("[[accounts]]\nid = \"{id}\"\nprovider = \"dryad\"\nsecrets = [{secrets}]\n")
        };
        build(&format!(
            "{}{}",
            dryad("one", "\"new-1\", \"old-1\""),
            dryad("two", "\"new-2\"")
        ))
        .unwrap();
        let err = build(&format!(
            "{}{}",
            dryad("one", "\"new-1\", \"old-1\""),
            dryad("two", "\"new-2\", \"old-1\"")
        ))
        .err()
        .unwrap();
        assert_eq!(err.account, "two");
        assert!(err.to_string().contains("same secret as account `one`"), "{err}");
    }

    #[test]
    fn one_key_listed_twice_is_refused() {
        // Two files, one key: a rotation whose new key was never put in.
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("copy.pem");
        std::fs::copy(vectors_dir().join("keys/cbb_platform_pub.pem"), &copy).unwrap();
        let text = format!(
            "[[accounts]]\nid = \"one\"\nprovider = \"cbb\"\npublic_key_files = [\"keys/cbb_platform_pub.pem\", \"{}\"]\n",
            copy.display()
        );
        let err = build(&text).err().unwrap();
        assert!(
            matches!(err.source, AccountErrorKind::RepeatedKey { .. }),
            "{err}"
        );
        let text =
            "[[accounts]]\nid = \"s\"\nprovider = \"shouqianba\"\nsign_mode = \"rsa\"\nterminal_sn = \"1\"\n\
                    public_key_files = [\"keys/sqb_pub.pem\", \"keys/cbb_platform_pub.pem\"]\n";
        build(text).unwrap();
    }

    #[test]
    fn the_sandbox_signs_with_the_first_secret() {
        use crate::ingress::dryad::Dryad;
        use crate::ingress::tests_support::{request_of, sample_spec};
        use crate::ingress::{RawRequest, SampleKind};
        let config = Config::from_toml_str(
            "[[accounts]]\nid = \"d\"\nprovider = \"dryad\"\nsecrets = [\"new\", \"old\"]\n",
            &vectors_dir(),
            &|_: &str| None,
        )
        .unwrap();
        let signer = build_sandbox_signer(&config.accounts[0]).unwrap();
        let spec = sample_spec(SampleKind::Payment, 100);
        let (headers, body) = request_of(&signer.sign_sample(&spec).unwrap());
        let only = |secret: &[u8]| Dryad::new(secret.to_vec(), std::time::Duration::from_secs(300));
        let req = RawRequest::new(&headers, &body);
        assert!(only(b"new").verify(&req, spec.now).is_ok());
        assert!(only(b"old").verify(&req, spec.now).is_err());
    }
}
