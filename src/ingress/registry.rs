//! Builds each configured account's verifier (and sandbox signer) from the
//! config, through the provider modules that the registry table
//! (`ingress::for_each_provider`) names. Keys are read and parsed here, once,
//! at start-up; a missing or unreadable key stops start-up with the account
//! named.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;

use super::common::rsa_keys::KeyError;
use super::fuzz::FuzzTarget;
use super::module::{BenchMode, ProviderModule, SandboxAccount, SharedKeys};
use super::rate_limit::RateLimiter;
use super::{Provider, SampleSigner};
use crate::config::{AccountConfig, AccountCx, ConfigError};
use crate::domain::{AccountId, ProviderKind};

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
    #[error(
        "names the same merchant as account `{other}` ({key} = \"{merchant}\"): each {provider} notice \
         for it would fit both accounts. Configure each merchant once"
    )]
    SharedMerchant {
        other: String,
        provider: &'static str,
        key: &'static str,
        merchant: String,
    },
}

/// Writes, from the registry table, the one enum of every provider's
/// settings and the dispatch to each provider's module.
macro_rules! registry {
    ($($module:ident => $Type:ident,)*) => {
        /// An account's settings: its provider's own type, read and checked
        /// by its module ([`ProviderModule::Settings`]).
        #[derive(Debug, Clone)]
        pub enum ProviderSettings {
            $($Type(<super::$module::$Type as ProviderModule>::Settings),)*
        }

        impl ProviderSettings {
            pub fn kind(&self) -> ProviderKind {
                match self {
                    $(ProviderSettings::$Type(_) => ProviderKind::$Type,)*
                }
            }

            /// Reads an `[[accounts]]` table of `kind`: its `id` and the
            /// settings its module reads from the rest.
            pub(crate) fn read(
                kind: ProviderKind,
                table: toml::Table,
                cx: &AccountCx<'_>,
            ) -> Result<(String, Self), ConfigError> {
                match kind {
                    $(ProviderKind::$Type => {
                        let (id, settings) = read_section::<super::$module::$Type>(table, cx)?;
                        Ok((id, ProviderSettings::$Type(settings)))
                    })*
                }
            }

            fn build(&self) -> Result<Box<dyn Provider>, AccountErrorKind> {
                match self {
                    $(ProviderSettings::$Type(s) => Ok(Box::new(<super::$module::$Type as ProviderModule>::build(s)?)),)*
                }
            }

            fn sandbox(&self) -> Result<Box<dyn SampleSigner>, AccountErrorKind> {
                match self {
                    $(ProviderSettings::$Type(s) => <super::$module::$Type as ProviderModule>::sandbox(s),)*
                }
            }

            fn shared_keys(&self) -> Result<Option<SharedKeys>, AccountErrorKind> {
                match self {
                    $(ProviderSettings::$Type(s) => <super::$module::$Type as ProviderModule>::shared_keys(s),)*
                }
            }

            fn merchant(&self) -> Option<(&'static str, String)> {
                match self {
                    $(ProviderSettings::$Type(s) => <super::$module::$Type as ProviderModule>::merchant(s),)*
                }
            }

            /// Which bench mode ([`bench_modes`]) the account signs as.
            pub fn bench_mode(&self) -> Option<&'static str> {
                match self {
                    $(ProviderSettings::$Type(s) => <super::$module::$Type as ProviderModule>::bench_mode(s),)*
                }
            }
        }

        /// The provider as prose names it: "CBB", "Tencent Dingdang".
        pub fn display_name(kind: ProviderKind) -> &'static str {
            match kind {
                $(ProviderKind::$Type => <super::$module::$Type as ProviderModule>::DISPLAY_NAME,)*
            }
        }

        /// Every provider's sandbox accounts, in the table's order.
        pub fn sandbox_accounts() -> impl Iterator<Item = &'static SandboxAccount> {
            [$(<super::$module::$Type as ProviderModule>::SANDBOX),*].into_iter().flatten()
        }

        /// The published test key files the sandbox accounts name.
        pub fn sandbox_key_files() -> impl Iterator<Item = &'static (&'static str, &'static str)> {
            [$(<super::$module::$Type as ProviderModule>::SANDBOX_KEYS),*].into_iter().flatten()
        }

        /// Every provider's fuzz targets, in the table's order.
        pub fn fuzz_targets() -> impl Iterator<Item = &'static FuzzTarget> {
            [$(<super::$module::$Type as ProviderModule>::FUZZ),*].into_iter().flatten()
        }

        /// Every provider's bench accounts, in the table's order.
        pub fn bench_modes() -> impl Iterator<Item = &'static BenchMode> {
            [$(<super::$module::$Type as ProviderModule>::BENCH),*].into_iter().flatten()
        }
    };
}

super::for_each_provider!(registry);

/// Every provider as prose names it, in the table's order: "CBB,
/// Shouqianba, …".
pub fn display_names() -> String {
    ProviderKind::ALL.map(display_name).join(", ")
}

/// The sandbox accounts as `[[accounts]]` TOML, their key files named as in
/// `sandbox-keys/`.
pub fn sandbox_accounts_toml() -> String {
    sandbox_accounts()
        .map(|a| format!("\n[[accounts]]\nid = \"{}\"\n{}", a.id, a.account))
        .collect()
}

/// A provider's `[[accounts]]` table, `provider` taken out: its `id`, and
/// its module's section (the rest), read as the module's `File` type and
/// checked. The messages are those of one serde type holding `id`,
/// `provider` and the section's keys, in that order.
fn read_section<P: ProviderModule>(
    mut table: toml::Table,
    cx: &AccountCx<'_>,
) -> Result<(String, P::Settings), ConfigError> {
    let id = table.remove("id");
    let missing_id = || cx.section_error("missing field `id`");
    let file = match P::File::deserialize(table) {
        Ok(file) => file,
        // Missing fields are reported after every other mistake, `id` first.
        Err(e) if id.is_none() && e.to_string().starts_with("missing field") => return Err(missing_id()),
        Err(e) => {
            let message = e.to_string();
            return Err(cx.section_error(message.replacen(
                "expected one of ",
                "expected one of `id`, `provider`, ",
                1,
            )));
        }
    };
    let id = match id {
        None => return Err(missing_id()),
        Some(value) => String::deserialize(value).map_err(|e| cx.section_error(e.to_string()))?,
    };
    Ok((id, P::settings(file, cx)?))
}

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
    refuse_shared_merchants(configs)?;
    let mut map = HashMap::new();
    for config in configs {
        let provider = config.settings.build().map_err(|source| AccountError {
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

/// Some notices (CBB's, Dryad's) carry no field naming the merchant, so only
/// the key tells two accounts apart: two accounts with one key would each
/// accept the other's notices. Refused at start-up, naming both accounts.
/// With lists (a key being rotated), no key of one account may be any key
/// of another. Each module says whether its accounts are told apart so
/// ([`ProviderModule::shared_keys`]).
fn refuse_shared_keys(configs: &[AccountConfig]) -> Result<(), AccountError> {
    let mut seen: HashMap<(ProviderKind, Vec<u8>), &AccountId> = HashMap::new();
    for config in configs {
        let shared = config.settings.shared_keys().map_err(|source| AccountError {
            account: config.id.to_string(),
            source,
        })?;
        let Some(SharedKeys { what, keys }) = shared else {
            continue;
        };
        let kind = config.provider();
        for key in keys {
            match seen.insert((kind, key), &config.id) {
                Some(other) if other != &config.id => {
                    return Err(AccountError {
                        account: config.id.to_string(),
                        source: AccountErrorKind::SharedKey {
                            other: other.to_string(),
                            provider: display_name(kind),
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

/// Two accounts of one provider naming one merchant (WeChat Pay's `mch_id`,
/// Alipay's `app_id`) would both accept each of its notices: refused at
/// start-up, naming both accounts ([`ProviderModule::merchant`]).
fn refuse_shared_merchants(configs: &[AccountConfig]) -> Result<(), AccountError> {
    let mut seen: HashMap<(ProviderKind, String), &AccountId> = HashMap::new();
    for config in configs {
        let Some((key, merchant)) = config.settings.merchant() else {
            continue;
        };
        let kind = config.provider();
        if let Some(other) = seen.insert((kind, merchant.clone()), &config.id) {
            return Err(AccountError {
                account: config.id.to_string(),
                source: AccountErrorKind::SharedMerchant {
                    other: other.to_string(),
                    provider: display_name(kind),
                    key,
                    merchant,
                },
            });
        }
    }
    Ok(())
}

/// The sandbox signer for an account: its sandbox private key for RSA
/// providers, its shared secret for HMAC/MD5 ones (the first of a list: the
/// new one, while a secret is rotated).
pub fn build_sandbox_signer(config: &AccountConfig) -> Result<Box<dyn SampleSigner>, AccountError> {
    config.settings.sandbox().map_err(|source| AccountError {
        account: config.id.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::domain::ProviderKind;
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

    /// Every provider of the table, through its module: its bench accounts
    /// (one per signing mode) are read by the config and built, the verifier
    /// names the table's provider, and it accepts a sample its sandbox
    /// signed. A provider without a bench account fails here.
    #[test]
    fn every_provider_is_read_built_and_signs_through_the_registry() {
        use crate::ingress::tests_support::{request_of, sample_spec};
        use crate::ingress::{RawRequest, SampleKind};
        let dir = tempfile::tempdir().unwrap();
        let text = crate::bench::requests::accounts_toml(dir.path()).unwrap();
        let config = Config::from_toml_str(&text, dir.path(), &|_: &str| None).unwrap();
        let accounts = build_accounts(&config.accounts).unwrap();
        for config in &config.accounts {
            let account = &accounts[config.id.as_str()];
            assert_eq!(account.provider.kind(), config.provider(), "{}", config.id);
            assert!(config.settings.bench_mode().is_some(), "{}", config.id);
            let signer = build_sandbox_signer(config).unwrap();
            for kind in [SampleKind::Payment, SampleKind::Refund] {
                let spec = sample_spec(kind, 100);
                let signed = match signer.sign_sample(&spec) {
                    Ok(signed) => signed,
                    Err(crate::ingress::SignError::Unsupported(_)) => continue,
                    Err(e) => panic!("{}: {e}", config.id),
                };
                let (headers, body) = request_of(&signed);
                let req = RawRequest::new(&headers, &body);
                account
                    .provider
                    .accept(&req, spec.now)
                    .unwrap_or_else(|e| panic!("{}: {e}", config.id));
            }
        }
        for kind in ProviderKind::ALL {
            assert!(
                config.accounts.iter().any(|a| a.provider() == kind),
                "{kind} has no bench account (ProviderModule::BENCH)"
            );
        }
    }

    /// Every provider's sandbox accounts, with the published keys written
    /// out as `payhook demo` writes them: read, built, and signing samples
    /// their verifier accepts. `payhook.example.toml` has each of them,
    /// under the same id and provider.
    #[test]
    fn every_sandbox_account_signs_and_is_in_the_example_config() {
        use crate::ingress::tests_support::{request_of, sample_spec, verify_and_parse};
        use crate::ingress::SampleKind;
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in sandbox_key_files() {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let config = Config::from_toml_str(&sandbox_accounts_toml(), dir.path(), &|_: &str| None).unwrap();
        let accounts = build_accounts(&config.accounts).unwrap();
        for kind in ProviderKind::ALL {
            assert!(
                config.accounts.iter().any(|a| a.provider() == kind),
                "{kind} has no sandbox account (ProviderModule::SANDBOX)"
            );
        }
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let example = std::fs::read_to_string(root.join("payhook.example.toml")).unwrap();
        let example = Config::from_toml_str(&example, root, &|_: &str| None).unwrap();
        for config in &config.accounts {
            let signer = build_sandbox_signer(config).unwrap();
            let spec = sample_spec(SampleKind::Payment, 100);
            let (headers, body) = request_of(&signer.sign_sample(&spec).unwrap());
            let provider = &accounts[config.id.as_str()].provider;
            verify_and_parse(provider.as_ref(), &headers, &body, spec.now)
                .unwrap_or_else(|e| panic!("{}: {e}", config.id));
            assert!(
                example
                    .accounts
                    .iter()
                    .any(|a| a.id == config.id && a.provider() == config.provider()),
                "payhook.example.toml has no {} account `{}`",
                config.provider(),
                config.id
            );
        }
    }

    #[test]
    fn the_table_names_each_provider_once() {
        let mut names = ProviderKind::NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ProviderKind::ALL.len());
        for kind in ProviderKind::ALL {
            assert_eq!(ProviderKind::parse(kind.as_str()), Some(kind));
            let json = serde_json::to_value(kind).unwrap();
            assert_eq!(json, kind.as_str());
            assert_eq!(serde_json::from_value::<ProviderKind>(json).unwrap(), kind);
        }
        // The providers of today, in their order; a new one comes after.
        let listed = ProviderKind::listed(None);
        assert!(
            listed.starts_with("cbb, shouqianba, abc, dingdang, dryad"),
            "{listed}"
        );
        assert_eq!(listed, ProviderKind::NAMES.join(", "));
        let (last, rest) = ProviderKind::NAMES.split_last().unwrap();
        assert_eq!(
            ProviderKind::listed(Some("or")),
            format!("{} or {last}", rest.join(", "))
        );
    }

    /// A section is its module's own serde type, but its messages are those
    /// of one type holding `id` and `provider` too.
    #[test]
    fn a_sections_messages_name_every_key() {
        let parse = |text: &str| {
            Config::from_toml_str(text, &vectors_dir(), &|_: &str| None)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            parse("[[accounts]]\nid=\"d\"\nprovider=\"dryad\"\nsecret=\"s\"\nsecrett=\"x\"\n"),
            "accounts[0]: unknown field `secrett`, expected one of `id`, `provider`, `secret`, \
             `secret_env`, `secret_file`, `secrets`, `max_clock_skew`"
        );
        assert_eq!(
            parse("[[accounts]]\nprovider=\"dryad\"\nsecret=\"s\"\n"),
            "accounts[0]: missing field `id`"
        );
        // `id` is missing before the section's own required keys are.
        assert_eq!(
            parse("[[accounts]]\nprovider=\"shouqianba\"\n"),
            "accounts[0]: missing field `id`"
        );
        assert_eq!(
            parse("[[accounts]]\nid=\"s\"\nprovider=\"shouqianba\"\n"),
            "accounts[0]: missing field `terminal_sn`"
        );
        assert_eq!(
            parse("[[accounts]]\nid=5\nprovider=\"dryad\"\nsecret=\"s\"\n"),
            "accounts[0]: invalid type: integer `5`, expected a string"
        );
        assert_eq!(
            parse("[[accounts]]\nid=\"x\"\nprovider=\"paypal\"\n"),
            format!(
                "accounts[0].provider: unknown provider `paypal`; one of {}",
                ProviderKind::listed(None)
            )
        );
        assert_eq!(
            parse("[[accounts]]\nid=\"x\"\n"),
            format!(
                "accounts[0].provider: missing; one of {}",
                ProviderKind::listed(None)
            )
        );
    }
}
