//! The bench's provider accounts, and the callbacks it sends: each one
//! uniquely and correctly signed (so none is deduplicated), all of them
//! signed before the clock starts.

use std::path::Path;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

use super::BenchError;
use crate::config::{AccountConfig, Config};
use crate::domain::{AmountFen, ProviderKind};
use crate::ingress::registry::{bench_modes, build_sandbox_signer};
use crate::ingress::{BenchMode, SampleKind, SampleSigner, SampleSpec};

/// Which provider's callbacks to send: one provider in one signing mode (the
/// modes are the provider modules' [`crate::ingress::ProviderModule::BENCH`]),
/// all of them in turn, or hostile input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchProvider {
    /// A provider module's bench account, e.g. `dryad`, `shouqianba-rsa`.
    One(&'static BenchMode),
    /// All of the above in turn.
    Mix,
    /// Hostile input, not a provider: unsigned 64 KiB forms of 10,000 keys
    /// posted to the CBB account, each refused with 400. Measures what a
    /// refusal costs before any signature is checked (`--ingress-only`).
    HostileForm,
}

impl BenchProvider {
    /// Every choice, as `--provider` lists them.
    pub fn all() -> Vec<BenchProvider> {
        let mut all: Vec<BenchProvider> = bench_modes().map(BenchProvider::One).collect();
        all.extend([BenchProvider::Mix, BenchProvider::HostileForm]);
        all
    }

    /// The choice named `name` (as `--provider` spells it).
    pub fn named(name: &str) -> Option<BenchProvider> {
        Self::all().into_iter().find(|p| p.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BenchProvider::One(mode) => mode.name,
            BenchProvider::Mix => "mix",
            BenchProvider::HostileForm => "hostile-form",
        }
    }

    /// Its line in `payhook bench --help`.
    pub fn help(self) -> &'static str {
        match self {
            BenchProvider::One(mode) => mode.help,
            BenchProvider::Mix => "All of the above in turn",
            BenchProvider::HostileForm => {
                "Hostile input, not a provider: unsigned 64 KiB forms of 10,000 keys posted to the CBB \
                 account, each refused with 400. Measures what a refusal costs before any signature is \
                 checked (`--ingress-only`)"
            }
        }
    }

    fn each(self) -> Vec<BenchProvider> {
        match self {
            BenchProvider::Mix => bench_modes().map(BenchProvider::One).collect(),
            one => vec![one],
        }
    }

    /// Whether `account` is one of this provider (and signing mode).
    fn fits(self, account: &AccountConfig) -> bool {
        match self {
            BenchProvider::One(mode) => account.settings.bench_mode() == Some(mode.name),
            BenchProvider::HostileForm => account.provider() == ProviderKind::Cbb,
            BenchProvider::Mix => false,
        }
    }
}

#[cfg(feature = "cli")]
impl clap::ValueEnum for BenchProvider {
    fn value_variants<'a>() -> &'a [Self] {
        static ALL: std::sync::OnceLock<Vec<BenchProvider>> = std::sync::OnceLock::new();
        ALL.get_or_init(BenchProvider::all)
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()).help(self.help()))
    }
}

fn quoted(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// `[[accounts]]` for the relay the bench starts: one sandbox account per
/// provider and signing mode, as each provider module gives it. The RSA ones
/// share a key pair generated into `dir` now, so the bench needs no key
/// files of its own.
pub fn accounts_toml(dir: &Path) -> Result<String, BenchError> {
    crate::sandbox_keys::generate(dir)?;
    let public = quoted(&dir.join("public.pem"));
    let private = quoted(&dir.join("private.pem"));
    Ok(bench_modes()
        .map(|mode| {
            let account = mode
                .account
                .replace("{public}", &public)
                .replace("{private}", &private);
            format!("\n[[accounts]]\nid = \"{}\"\n{account}", mode.id)
        })
        .collect())
}

/// One ready-to-send callback.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Index into [`Signed::paths`]: which account's URL it goes to.
    pub source: usize,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The request is meant to be refused with 400 (hostile input): that
    /// answer counts as the expected one.
    pub expect_refusal: bool,
}

/// Every callback of a run, and the URL paths of the accounts they are for,
/// so that the same requests can be sent to the baseline and to the relay.
#[derive(Debug, Clone)]
pub struct Signed {
    pub paths: Vec<String>,
    pub requests: Vec<Prepared>,
}

impl Signed {
    /// The accounts' URLs under `base` (e.g. `http://127.0.0.1:8080/`).
    pub fn urls(&self, base: &reqwest::Url) -> Result<Vec<reqwest::Url>, BenchError> {
        self.paths
            .iter()
            .map(|p| {
                base.join(p)
                    .map_err(|e| BenchError::Usage(format!("URL {base}{p}: {e}")))
            })
            .collect()
    }
}

/// The order number of request `index`: the run's tag and nine digits, so
/// that the sink can tell which request a delivery belongs to.
pub fn order_no(tag: &str, index: usize) -> String {
    format!("{tag}{index:09}")
}

/// Signs `count` callbacks for `provider` (in turn, for `mix`) with the
/// first fitting account of `config`, for `/notify/{account}`. Signing runs
/// on every core, since an RSA signature takes about a millisecond.
pub fn sign_all(
    config: &Config,
    provider: BenchProvider,
    count: usize,
    tag: &str,
) -> Result<Signed, BenchError> {
    let mut paths = Vec::new();
    let mut sources: Vec<Box<dyn SampleSigner>> = Vec::new();
    for kind in provider.each() {
        let account = config.accounts.iter().find(|a| kind.fits(a)).ok_or_else(|| {
            BenchError::Usage(format!(
                "the config has no {} account to sign with",
                kind.as_str()
            ))
        })?;
        paths.push(format!("notify/{}", account.id));
        if kind == BenchProvider::HostileForm {
            return Ok(Signed {
                paths,
                requests: hostile_forms(count),
            });
        }
        sources.push(build_sandbox_signer(account)?);
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).max(1);
    let chunk = count.div_ceil(threads).max(1);
    let sources = &sources;
    let parts: Vec<Result<Vec<Prepared>, BenchError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| scope.spawn(move || sign_range(sources, start..(start + chunk).min(count), tag)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BenchError::Process("a signing thread panicked".into())))
            })
            .collect()
    });
    let mut requests = Vec::with_capacity(count);
    for part in parts {
        requests.extend(part?);
    }
    Ok(Signed { paths, requests })
}

/// `count` copies of one unsigned form: 10,000 short keys, padded to just
/// under 64 KiB (the default `max_body_bytes`).
fn hostile_forms(count: usize) -> Vec<Prepared> {
    let mut form = (0..10_000)
        .map(|i| format!("{i:x}="))
        .collect::<Vec<_>>()
        .join("&");
    let pad = (64 * 1024 - 1usize).saturating_sub(form.len());
    form.push_str(&"x".repeat(pad));
    let body = Bytes::from(form);
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    (0..count)
        .map(|_| Prepared {
            source: 0,
            headers: headers.clone(),
            body: body.clone(),
            expect_refusal: true,
        })
        .collect()
}

fn sign_range(
    sources: &[Box<dyn SampleSigner>],
    range: std::ops::Range<usize>,
    tag: &str,
) -> Result<Vec<Prepared>, BenchError> {
    let mut out = Vec::with_capacity(range.len());
    for index in range {
        let source = index % sources.len();
        let fen = 10_001 + i64::try_from(index % 9_000).unwrap_or(0);
        let spec = SampleSpec {
            kind: SampleKind::Payment,
            amount: AmountFen::from_fen(fen).map_err(|e| BenchError::Usage(e.to_string()))?,
            trade_no: order_no(tag, index),
            merchant_order_no: order_no(tag, index),
            now: chrono::Utc::now(),
            forge: false,
        };
        let signed = sources[source].sign_sample(&spec)?;
        let mut headers = HeaderMap::with_capacity(signed.headers.len() + 1);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(signed.content_type));
        for (name, value) in &signed.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| BenchError::Process(format!("signed header name: {e}")))?;
            let value = HeaderValue::from_str(value)
                .map_err(|e| BenchError::Process(format!("signed header value: {e}")))?;
            headers.insert(name, value);
        }
        out.push(Prepared {
            source,
            headers,
            body: Bytes::from(signed.body),
            expect_refusal: false,
        });
    }
    Ok(out)
}
