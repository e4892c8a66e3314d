//! The config file (TOML) and its environment overrides, parsed once at
//! start-up into typed values. Unknown keys and bad values are refused with a
//! message that names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::{AccountId, EndpointId, EventType, ProviderKind};
pub use crate::ingress::registry::ProviderSettings;
use crate::key_list::{KeyList, KeyListError};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Syntax { path: String, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A secret value: never printed by `Debug`, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// The shortest `server.admin_token` accepted.
pub const MIN_ADMIN_TOKEN_CHARS: usize = 16;

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub queue: Option<QueueConfig>,
    pub delivery: DeliveryConfig,
    pub accounts: Vec<AccountConfig>,
    pub endpoints: Vec<EndpointConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<Secret>,
    pub max_body_bytes: usize,
    /// Whole-request deadline at the ingress (headers and body), so that a
    /// slow sender cannot hold a connection forever.
    pub request_timeout: Duration,
    /// Open ingress connections; beyond it new ones wait in the kernel's
    /// backlog, so a flood of idle sockets cannot exhaust file descriptors.
    pub max_connections: usize,
    /// Ingress requests being handled at once; beyond it the answer is 503
    /// with `Retry-After`, so a burst cannot queue unbounded work.
    pub max_in_flight: usize,
    /// A connection with no request in flight for this long is closed, so
    /// idle HTTP/1 keep-alive and HTTP/2 connections do not pile up.
    pub idle_timeout: Duration,
}

#[derive(Clone)]
pub struct StorageConfig {
    pub url: String,
    /// How long a finished event (every delivery delivered or dead) is kept
    /// after it was received; then it goes with its deliveries and attempts.
    pub retention: Duration,
    /// How long the raw callback (body and headers) is kept; then it is
    /// blanked and the event stays. At most `retention`.
    pub raw_retention: Duration,
}

/// `[storage] retention` when not set: 30 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
/// `[storage] raw_retention` when not set: 7 days.
pub const DEFAULT_RAW_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The URL with its password (if any) replaced by `***`: `Debug` output and
/// logs may show where the store is, never how to log in to it.
pub fn redact_url_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            if parsed.set_password(Some("***")).is_ok() {
                parsed.to_string()
            } else {
                "<unprintable URL>".to_owned()
            }
        }
        Ok(_) => url.to_owned(),
        // Not a URL (a bare path): nothing that looks like a password can be
        // told apart, so show only its scheme-less shape if it has no `@`.
        Err(_) if !url.contains('@') => url.to_owned(),
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("url", &redact_url_password(&self.url))
            .field("retention", &self.retention)
            .field("raw_retention", &self.raw_retention)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct QueueConfig {
    pub amqp_url: Secret,
    pub prefix: String,
}

#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub retry_schedule: Vec<Duration>,
    pub max_retries: u32,
    pub timeout: Duration,
    pub concurrency: usize,
    /// In-flight deliveries to any one endpoint, so that one slow merchant
    /// cannot take every slot of `concurrency`.
    pub per_endpoint_concurrency: usize,
    /// How long a job whose endpoint this dispatcher does not know (a
    /// rolling config change: another process already has the endpoint)
    /// is put back and looked at again before it goes dead; measured from
    /// the time it became due.
    pub unknown_endpoint_grace: Duration,
    pub allow_private_targets: bool,
    /// The only proxy deliveries go through (`[delivery] proxy`); proxies
    /// from the environment are never used, so that a stray `HTTP_PROXY`
    /// cannot route merchant traffic (and its signatures) elsewhere.
    pub proxy: Option<ProxyUrl>,
}

impl DeliveryConfig {
    /// The delay before retry number `retry` (1-based): the schedule's entry,
    /// the last one repeating.
    pub fn delay_before_retry(&self, retry: u32) -> Duration {
        let index = (retry.saturating_sub(1) as usize).min(self.retry_schedule.len().saturating_sub(1));
        self.retry_schedule.get(index).copied().unwrap_or_default()
    }
}

/// An http(s) proxy URL. It may carry `user:password@`, so `Debug` shows it
/// with the password replaced: config dumps and logs must not leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl(url::Url);

impl ProxyUrl {
    /// The URL as configured, password included (for the HTTP client only).
    pub fn expose(&self) -> &url::Url {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let mut shown = self.0.clone();
        if shown.password().is_some() {
            // Cannot fail: the URL has a host (checked when parsed).
            let _ = shown.set_password(Some("***"));
        }
        shown.to_string()
    }
}

impl std::fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyUrl({})", self.redacted())
    }
}

/// One provider account; `id` is the `{account}` in `/notify/{account}`.
#[derive(Debug, Clone)]
pub struct AccountConfig {
    pub id: AccountId,
    pub settings: ProviderSettings,
    /// `rate_limit = "200/s"`: callbacks per second this account accepts;
    /// beyond it, 503 with `Retry-After`. `None`: no limit.
    pub rate_limit: Option<u32>,
}

impl AccountConfig {
    pub fn provider(&self) -> ProviderKind {
        self.settings.kind()
    }
}

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    pub id: EndpointId,
    pub url: url::Url,
    /// `secret`, or `secrets = [new, old]` while it is rotated: every one
    /// signs `webhook-signature`, the first signs `X-Signature`.
    pub secrets: KeyList<Secret>,
    pub accounts: Vec<AccountPattern>,
    pub events: Vec<EventPattern>,
    /// Pause the endpoint after its answers were nothing but failures for
    /// this long (none: never).
    pub auto_pause_after: Option<Duration>,
}

impl EndpointConfig {
    /// Whether this endpoint subscribes to events of `event_type` from `account`.
    pub fn subscribes(&self, account: &AccountId, event_type: EventType) -> bool {
        self.accounts.iter().any(|p| p.matches(account)) && self.events.iter().any(|p| p.matches(event_type))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccountPattern {
    Any,
    Exact(AccountId),
}

impl AccountPattern {
    pub fn matches(&self, account: &AccountId) -> bool {
        match self {
            AccountPattern::Any => true,
            AccountPattern::Exact(id) => id == account,
        }
    }
}

/// `*`, `payment.*`, `refund.*` or an exact type such as `refund.succeeded`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPattern {
    Any,
    Prefix(&'static str),
    Exact(EventType),
}

impl EventPattern {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "*" => Some(EventPattern::Any),
            "payment.*" => Some(EventPattern::Prefix("payment.")),
            "refund.*" => Some(EventPattern::Prefix("refund.")),
            other => EventType::parse(other).map(EventPattern::Exact),
        }
    }

    pub fn matches(&self, event_type: EventType) -> bool {
        match self {
            EventPattern::Any => true,
            EventPattern::Prefix(prefix) => event_type.as_str().starts_with(prefix),
            EventPattern::Exact(t) => *t == event_type,
        }
    }
}

// ---------------------------------------------------------------------------
// The file as written. `deny_unknown_fields` everywhere: a typo must not
// silently become a default.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: FileServer,
    #[serde(default)]
    storage: FileStorage,
    queue: Option<FileQueue>,
    #[serde(default)]
    delivery: FileDelivery,
    #[serde(default)]
    accounts: Vec<toml::Table>,
    #[serde(default)]
    endpoints: Vec<toml::Table>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileServer {
    listen: Option<String>,
    admin_listen: Option<String>,
    admin_token: Option<String>,
    admin_token_env: Option<String>,
    admin_token_file: Option<PathBuf>,
    max_body_bytes: Option<usize>,
    request_timeout: Option<String>,
    max_connections: Option<usize>,
    max_in_flight: Option<usize>,
    idle_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileStorage {
    url: Option<String>,
    retention: Option<String>,
    raw_retention: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileQueue {
    amqp_url: Option<String>,
    prefix: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileDelivery {
    retry_schedule: Option<Vec<String>>,
    max_retries: Option<u32>,
    timeout: Option<String>,
    concurrency: Option<usize>,
    per_endpoint_concurrency: Option<usize>,
    unknown_endpoint_grace: Option<String>,
    allow_private_targets: Option<bool>,
    proxy: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEndpoint {
    id: String,
    url: String,
    secret: Option<String>,
    secret_env: Option<String>,
    secret_file: Option<PathBuf>,
    secrets: Option<Vec<toml::Value>>,
    #[serde(default = "star")]
    accounts: Vec<String>,
    #[serde(default = "star")]
    events: Vec<String>,
    auto_pause_after: Option<String>,
}

fn star() -> Vec<String> {
    vec!["*".to_owned()]
}

/// Where environment values come from; a function so that tests need not
/// touch the process environment.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// Finds and loads the config: `path`, else `$PAYHOOK_CONFIG`, else
    /// `payhook.toml` if present, else built-in defaults; then applies the
    /// `PAYHOOK_*` environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: EnvLookup<'_> = &process_env;
        let chosen: Option<PathBuf> = match path {
            Some(p) => Some(p.to_path_buf()),
            None => match env("PAYHOOK_CONFIG") {
                Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
                _ => Some(PathBuf::from("payhook.toml")).filter(|p| p.exists()),
            },
        };
        match chosen {
            Some(p) => Self::from_file(&p, env),
            None => Self::from_toml_str("", Path::new("."), env),
        }
    }

    pub fn from_file(path: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml_str(&text, base, env).map_err(|e| match e {
            ConfigError::Syntax { message, .. } => ConfigError::Syntax {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses config text; relative file paths are taken from `base_dir`.
    pub fn from_toml_str(text: &str, base_dir: &Path, env: EnvLookup<'_>) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: "<text>".into(),
            message: e.to_string(),
        })?;
        let ctx = Ctx { base_dir, env };
        let server = ctx.server(file.server)?;
        // A relative SQLite path in the file is the file's, like its key
        // files: the same config works whichever folder payhook starts in.
        // (`PAYHOOK_DATABASE_URL` is taken as given.)
        let (retention, raw_retention) = retention(&file.storage)?;
        let storage = StorageConfig {
            url: match env("PAYHOOK_DATABASE_URL") {
                Some(url) => url,
                None => sqlite_relative_to(
                    base_dir,
                    file.storage
                        .url
                        .unwrap_or_else(|| "sqlite://payhook.db".to_owned()),
                ),
            },
            retention,
            raw_retention,
        };
        let known = ["sqlite:", "postgres://", "postgresql://"];
        if !known.iter().any(|scheme| storage.url.starts_with(scheme)) {
            return Err(ConfigError::invalid(
                "storage.url",
                format!(
                    "`{}` is not a store payhook knows: use sqlite://FILE or postgres://USER@HOST/DB",
                    storage.url.split(':').next().unwrap_or("")
                ),
            ));
        }
        let queue = ctx.queue(file.queue)?;
        let delivery = ctx.delivery(file.delivery)?;

        let mut accounts: Vec<AccountConfig> = Vec::new();
        for (i, table) in file.accounts.into_iter().enumerate() {
            let account = ctx.account(i, table)?;
            if accounts.iter().any(|a| a.id == account.id) {
                return Err(ConfigError::invalid(
                    format!("accounts[{i}].id"),
                    format!("duplicate id `{}`", account.id),
                ));
            }
            accounts.push(account);
        }
        let mut endpoints: Vec<EndpointConfig> = Vec::new();
        for (i, table) in file.endpoints.into_iter().enumerate() {
            let endpoint = ctx.endpoint(i, table, &accounts)?;
            if endpoints.iter().any(|e| e.id == endpoint.id) {
                return Err(ConfigError::invalid(
                    format!("endpoints[{i}].id"),
                    format!("duplicate id `{}`", endpoint.id),
                ));
            }
            endpoints.push(endpoint);
        }
        Ok(Config {
            server,
            storage,
            queue,
            delivery,
            accounts,
            endpoints,
        })
    }

    pub fn account(&self, id: &str) -> Option<&AccountConfig> {
        self.accounts.iter().find(|a| a.id.as_str() == id)
    }
}

struct Ctx<'a> {
    base_dir: &'a Path,
    env: EnvLookup<'a>,
}

/// What a provider module reads its `[[accounts]]` section with
/// ([`crate::ingress::ProviderModule::settings`]): where the table is, for
/// messages (`accounts[0]`), and the config file's folder and environment,
/// for key files and secrets.
pub struct AccountCx<'a> {
    ctx: &'a Ctx<'a>,
    at: String,
}

impl AccountCx<'_> {
    /// `accounts[0].name`: how a message names one of the section's keys.
    pub fn key(&self, name: &str) -> String {
        format!("{}.{name}", self.at)
    }

    /// A refusal of the section's key `name`.
    pub fn invalid(&self, name: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::invalid(self.key(name), message)
    }

    /// A refusal of the section as a whole (`accounts[0]: …`), such as an
    /// unknown key.
    pub fn section_error(&self, message: impl Into<String>) -> ConfigError {
        let message: String = message.into();
        ConfigError::invalid(&self.at, message.trim())
    }

    /// A path as written, taken from the config file's folder if relative.
    pub fn path(&self, p: PathBuf) -> PathBuf {
        self.ctx.path(p)
    }

    /// The secret `name` (`name`, `name_env` or `name_file`), or the list
    /// `{name}s` while it is rotated; `None` when neither is given.
    pub fn secrets(&self, name: &str, given: SecretKeys) -> Result<Option<KeyList<Secret>>, ConfigError> {
        self.ctx.secrets(&self.at, name, ACCOUNT_KEY_COST, given)
    }

    /// The key file `name`, or the list `{name}s` while the key is rotated;
    /// `None` when neither is given.
    pub fn key_files(
        &self,
        name: &str,
        one: Option<PathBuf>,
        list: Option<Vec<PathBuf>>,
    ) -> Result<Option<KeyList<PathBuf>>, ConfigError> {
        self.ctx.key_files(&self.at, name, one, list)
    }

    /// The duration `name`, `default` when it is not given.
    pub fn duration(&self, name: &str, given: Option<&str>, default: &str) -> Result<Duration, ConfigError> {
        duration(&self.key(name), given.unwrap_or(default))
    }

    /// The required, non-empty text `name`: what binds notices to an
    /// account (`what` says what it is).
    pub fn required_text(
        &self,
        name: &str,
        value: Option<String>,
        what: &str,
    ) -> Result<String, ConfigError> {
        required_text(&self.key(name), value, what)
    }
}

/// Where one secret's value comes from.
enum SecretSource {
    Inline(String),
    Env(String),
    File(PathBuf),
}

/// A secret's keys as written: `x`, `x_env`, `x_file` and the list `xs`.
pub struct SecretKeys {
    pub inline: Option<String>,
    pub env: Option<String>,
    pub file: Option<PathBuf>,
    pub list: Option<Vec<toml::Value>>,
}

/// Why a list of keys or secrets is refused, for `key`; `cost` says what
/// each extra entry costs.
fn key_list_error(key: &str, what: &str, cost: &str, e: KeyListError) -> ConfigError {
    let message = match e {
        KeyListError::Empty => format!("must list at least one {what}"),
        KeyListError::TooMany { given } => format!(
            "lists {given} of them; at most {} are allowed: a rotation needs two, and each extra one {cost}",
            crate::key_list::MAX_KEYS
        ),
    };
    ConfigError::invalid(key, message)
}

/// What one more key costs an account: every forged notice is checked
/// against each key before it is refused.
const ACCOUNT_KEY_COST: &str = "is another check on every forged notice";

/// `sqlite://relative.db` (or `sqlite:relative.db`) with the path taken from
/// `base`; absolute paths, `:memory:` and other URLs are returned as they are.
fn sqlite_relative_to(base: &Path, url: String) -> String {
    let Some(rest) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    else {
        return url;
    };
    let (path, query) = match rest.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (rest, None),
    };
    if path.is_empty() || path.starts_with('/') || path.starts_with(':') || base.as_os_str().is_empty() {
        return url;
    }
    let joined = base.join(path);
    match query {
        Some(query) => format!("sqlite://{}?{query}", joined.display()),
        None => format!("sqlite://{}", joined.display()),
    }
}

/// `[delivery] retry_schedule`: at least one delay, none decreasing, none
/// over 7 days; the contract's 0s/1m/5m/15m/60m when absent.
fn retry_schedule(list: Option<Vec<String>>) -> Result<Vec<Duration>, ConfigError> {
    let retry_schedule = match list {
        None => ["0s", "1m", "5m", "15m", "60m"]
            .iter()
            .map(|t| duration("delivery.retry_schedule", t))
            .collect::<Result<Vec<_>, _>>()?,
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, t)| duration(&format!("delivery.retry_schedule[{i}]"), t))
            .collect::<Result<Vec<_>, _>>()?,
    };
    if retry_schedule.is_empty() {
        return Err(ConfigError::invalid(
            "delivery.retry_schedule",
            "needs at least one delay",
        ));
    }
    // A schedule that goes backwards is almost always a typo ("15m",
    // "5m"), and would retry a failing merchant faster the longer it
    // fails.
    if let Some(i) = retry_schedule.windows(2).position(|w| w[1] < w[0]) {
        return Err(ConfigError::invalid(
            format!("delivery.retry_schedule[{}]", i + 1),
            format!(
                "{} is shorter than the delay before it ({}); delays must not decrease",
                humantime::format_duration(retry_schedule[i + 1]),
                humantime::format_duration(retry_schedule[i])
            ),
        ));
    }
    if retry_schedule
        .iter()
        .any(|d| *d > Duration::from_secs(7 * 24 * 3600))
    {
        return Err(ConfigError::invalid(
            "delivery.retry_schedule",
            "delays are at most 7 days",
        ));
    }
    Ok(retry_schedule)
}

/// `[delivery] proxy`: an http:// or https:// URL with a host. The message
/// does not echo the value: it may hold a password.
fn proxy_url(text: String) -> Result<ProxyUrl, ConfigError> {
    url::Url::parse(&text)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .map(ProxyUrl)
        .ok_or_else(|| {
            ConfigError::invalid("delivery.proxy", "is not an http:// or https:// URL with a host")
        })
}

/// A required, non-empty text value: what binds notices to an account.
fn required_text(key: &str, value: Option<String>, what: &str) -> Result<String, ConfigError> {
    match value.map(|v| v.trim().to_owned()) {
        Some(v) if !v.is_empty() => Ok(v),
        Some(_) => Err(ConfigError::invalid(key, format!("must not be empty: {what}"))),
        None => Err(ConfigError::invalid(
            key,
            format!("required: {what}; notices are refused unless they carry it"),
        )),
    }
}

/// `"200/s"`: a whole number of callbacks per second, at least 1.
fn rate_limit(key: &str, text: &str) -> Result<u32, ConfigError> {
    text.trim()
        .strip_suffix("/s")
        .and_then(|n| n.trim().parse::<u32>().ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            ConfigError::invalid(
                key,
                format!("`{text}` is not a rate such as \"200/s\" (callbacks per second, at least 1)"),
            )
        })
}

fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        ConfigError::invalid(
            key,
            format!("`{text}` is not a duration like 150ms, 10s or 5m ({e})"),
        )
    })
}

/// `[storage] retention` and `raw_retention`: both longer than zero, and the
/// raw callback kept no longer than its event (it goes with the event).
fn retention(storage: &FileStorage) -> Result<(Duration, Duration), ConfigError> {
    let positive = |key: &str, text: &Option<String>, default: Duration| -> Result<Duration, ConfigError> {
        let Some(text) = text else {
            return Ok(default);
        };
        let d = duration(key, text)?;
        if d.is_zero() {
            return Err(ConfigError::invalid(
                key,
                format!("`{text}` keeps nothing; give a duration longer than zero, such as \"30d\""),
            ));
        }
        Ok(d)
    };
    let retention = positive("storage.retention", &storage.retention, DEFAULT_RETENTION)?;
    let raw_retention = match &storage.raw_retention {
        Some(_) => positive(
            "storage.raw_retention",
            &storage.raw_retention,
            DEFAULT_RAW_RETENTION,
        )?,
        // Unset: the default, but never longer than a shorter `retention`.
        None => DEFAULT_RAW_RETENTION.min(retention),
    };
    if raw_retention > retention {
        return Err(ConfigError::invalid(
            "storage.raw_retention",
            format!(
                "{} is longer than storage.retention ({}): the raw callback goes with its event, \
                 so it cannot be kept longer",
                humantime::format_duration(raw_retention),
                humantime::format_duration(retention)
            ),
        ));
    }
    Ok((retention, raw_retention))
}

fn socket_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| ConfigError::invalid(key, format!("`{text}` is not an address like 127.0.0.1:8080")))
}

impl Ctx<'_> {
    fn path(&self, p: PathBuf) -> PathBuf {
        if p.is_absolute() {
            p
        } else {
            self.base_dir.join(p)
        }
    }

    /// Exactly one of `key`, `key_env`, `key_file`; an empty value from any
    /// of them is refused (an empty HMAC key verifies whatever anyone signs
    /// with an empty key).
    fn secret(
        &self,
        key: &str,
        inline: Option<String>,
        env_var: Option<String>,
        file: Option<PathBuf>,
    ) -> Result<Option<Secret>, ConfigError> {
        match (inline, env_var, file) {
            (None, None, None) => Ok(None),
            (Some(v), None, None) => self.resolve_secret(key, SecretSource::Inline(v)).map(Some),
            (None, Some(var), None) => self
                .resolve_secret(&format!("{key}_env"), SecretSource::Env(var))
                .map(Some),
            (None, None, Some(path)) => self
                .resolve_secret(&format!("{key}_file"), SecretSource::File(path))
                .map(Some),
            _ => Err(ConfigError::invalid(
                key,
                format!("give only one of {key}, {key}_env, {key}_file"),
            )),
        }
    }

    /// One secret's value, read from where it is; `key` names it in errors.
    /// Empty is refused, whatever the source.
    fn resolve_secret(&self, key: &str, source: SecretSource) -> Result<Secret, ConfigError> {
        match source {
            SecretSource::Inline(v) if v.is_empty() => Err(ConfigError::invalid(key, "must not be empty")),
            SecretSource::Inline(v) => Ok(Secret(v)),
            SecretSource::Env(var) => match (self.env)(&var) {
                Some(v) if !v.is_empty() => Ok(Secret(v)),
                _ => Err(ConfigError::invalid(
                    key,
                    format!("environment variable {var} is not set"),
                )),
            },
            SecretSource::File(path) => {
                let path = self.path(path);
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))?;
                let value = text.trim_end_matches(['\r', '\n']);
                if value.is_empty() {
                    return Err(ConfigError::invalid(key, format!("{} is empty", path.display())));
                }
                Ok(Secret(value.to_owned()))
            }
        }
    }

    /// `{name}` (or `{name}_env`, `{name}_file`), or `{name}s = [...]` while
    /// it is rotated: exactly one of the two forms. Each entry of the list is
    /// a string, `{ env = "VAR" }` or `{ file = "path" }`, so that a rotated
    /// secret need not be written into the file either. `at` is the table
    /// (`endpoints[0]`); `cost` says what one more entry costs, for the
    /// refusal of too many. `None` when neither form is given.
    fn secrets(
        &self,
        at: &str,
        name: &str,
        cost: &str,
        given: SecretKeys,
    ) -> Result<Option<KeyList<Secret>>, ConfigError> {
        let single = format!("{at}.{name}");
        let Some(entries) = given.list else {
            return Ok(self
                .secret(&single, given.inline, given.env, given.file)?
                .map(KeyList::one));
        };
        let plural = format!("{name}s");
        let list_key = format!("{at}.{plural}");
        if given.inline.is_some() || given.env.is_some() || given.file.is_some() {
            return Err(ConfigError::invalid(
                list_key,
                format!("give either {name} (or {name}_env, {name}_file) or {plural}, not both"),
            ));
        }
        let mut secrets: Vec<Secret> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            let key = format!("{list_key}[{i}]");
            let secret = self.secret_entry(&key, entry)?;
            // A repeat is almost always a rotation gone wrong (the old value
            // pasted where the new one belongs), and signs nothing new.
            if let Some(j) = secrets.iter().position(|s| *s == secret) {
                return Err(ConfigError::invalid(
                    key,
                    format!("the same secret as {plural}[{j}]"),
                ));
            }
            secrets.push(secret);
        }
        KeyList::new(secrets)
            .map(Some)
            .map_err(|e| key_list_error(&list_key, "secret", cost, e))
    }

    fn secret_entry(&self, key: &str, entry: toml::Value) -> Result<Secret, ConfigError> {
        const SHAPE: &str = "must be a string, { env = \"VAR\" } or { file = \"path\" }";
        let source = match entry {
            toml::Value::String(v) => SecretSource::Inline(v),
            toml::Value::Table(mut table) => {
                let (env, file) = (table.remove("env"), table.remove("file"));
                match (env, file, table.is_empty()) {
                    (Some(toml::Value::String(var)), None, true) => SecretSource::Env(var),
                    (None, Some(toml::Value::String(path)), true) => SecretSource::File(PathBuf::from(path)),
                    _ => return Err(ConfigError::invalid(key, SHAPE)),
                }
            }
            _ => return Err(ConfigError::invalid(key, SHAPE)),
        };
        self.resolve_secret(key, source)
    }

    /// `{name}`, or `{name}s = [...]` while the key is rotated: exactly one
    /// of the two; relative paths are the config file's. `None` when neither
    /// is given.
    fn key_files(
        &self,
        at: &str,
        name: &str,
        one: Option<PathBuf>,
        list: Option<Vec<PathBuf>>,
    ) -> Result<Option<KeyList<PathBuf>>, ConfigError> {
        let plural = format!("{name}s");
        let list_key = format!("{at}.{plural}");
        match (one, list) {
            (None, None) => Ok(None),
            (Some(path), None) => Ok(Some(KeyList::one(self.path(path)))),
            (Some(_), Some(_)) => Err(ConfigError::invalid(
                list_key,
                format!("give either {name} or {plural}, not both"),
            )),
            (None, Some(paths)) => {
                let paths: Vec<PathBuf> = paths.into_iter().map(|p| self.path(p)).collect();
                for (i, path) in paths.iter().enumerate() {
                    if let Some(j) = paths[..i].iter().position(|p| p == path) {
                        return Err(ConfigError::invalid(
                            format!("{list_key}[{i}]"),
                            format!("the same file as {plural}[{j}]"),
                        ));
                    }
                }
                KeyList::new(paths)
                    .map(Some)
                    .map_err(|e| key_list_error(&list_key, "key file", ACCOUNT_KEY_COST, e))
            }
        }
    }

    fn server(&self, s: FileServer) -> Result<ServerConfig, ConfigError> {
        let listen = (self.env)("PAYHOOK_LISTEN")
            .or(s.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let admin_listen = (self.env)("PAYHOOK_ADMIN_LISTEN")
            .or(s.admin_listen)
            .unwrap_or_else(|| "127.0.0.1:9090".into());
        let admin_token = match (self.env)("PAYHOOK_ADMIN_TOKEN") {
            Some(t) if !t.is_empty() => Some(Secret(t)),
            _ => self.secret(
                "server.admin_token",
                s.admin_token,
                s.admin_token_env,
                s.admin_token_file,
            )?,
        };
        // A short token can be guessed over the network; no token at all is
        // fine (then nobody may use /admin/*).
        if let Some(token) = &admin_token {
            let length = token.expose().chars().count();
            if length < MIN_ADMIN_TOKEN_CHARS {
                return Err(ConfigError::invalid(
                    "server.admin_token",
                    format!(
                        "is {length} characters; at least {MIN_ADMIN_TOKEN_CHARS} are required \
                         (for example the output of `openssl rand -hex 16`)"
                    ),
                ));
            }
        }
        let max_body_bytes = s.max_body_bytes.unwrap_or(65536);
        if !(256..=64 * 1024 * 1024).contains(&max_body_bytes) {
            return Err(ConfigError::invalid(
                "server.max_body_bytes",
                "must be between 256 and 67108864",
            ));
        }
        let request_timeout = match s.request_timeout {
            Some(t) => duration("server.request_timeout", &t)?,
            None => Duration::from_secs(10),
        };
        if request_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "server.request_timeout",
                "must be more than 0",
            ));
        }
        let max_connections = s.max_connections.unwrap_or(10_000);
        if !(1..=1_000_000).contains(&max_connections) {
            return Err(ConfigError::invalid(
                "server.max_connections",
                "must be between 1 and 1000000",
            ));
        }
        let max_in_flight = s.max_in_flight.unwrap_or(1024);
        if !(1..=1_000_000).contains(&max_in_flight) {
            return Err(ConfigError::invalid(
                "server.max_in_flight",
                "must be between 1 and 1000000",
            ));
        }
        let idle_timeout = match s.idle_timeout {
            Some(t) => duration("server.idle_timeout", &t)?,
            None => Duration::from_secs(60),
        };
        if idle_timeout.is_zero() {
            return Err(ConfigError::invalid("server.idle_timeout", "must be more than 0"));
        }
        Ok(ServerConfig {
            listen: socket_addr("server.listen", &listen)?,
            admin_listen: socket_addr("server.admin_listen", &admin_listen)?,
            admin_token,
            max_body_bytes,
            request_timeout,
            max_connections,
            max_in_flight,
            idle_timeout,
        })
    }

    fn queue(&self, q: Option<FileQueue>) -> Result<Option<QueueConfig>, ConfigError> {
        let (url, prefix) = match q {
            Some(q) => (q.amqp_url, q.prefix),
            None => (None, None),
        };
        let url = (self.env)("PAYHOOK_AMQP_URL").filter(|u| !u.is_empty()).or(url);
        let prefix = prefix.unwrap_or_else(|| "payhook".to_owned());
        let prefix_ok = !prefix.is_empty()
            && prefix.len() <= 100
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !prefix_ok {
            return Err(ConfigError::invalid(
                "queue.prefix",
                "must be 1 to 100 characters of A-Z a-z 0-9 . _ -",
            ));
        }
        match url {
            None => Ok(None),
            Some(u) if u.starts_with("amqp://") || u.starts_with("amqps://") => Ok(Some(QueueConfig {
                amqp_url: Secret(u),
                prefix,
            })),
            Some(_) => Err(ConfigError::invalid(
                "queue.amqp_url",
                "must start with amqp:// or amqps://",
            )),
        }
    }

    fn delivery(&self, d: FileDelivery) -> Result<DeliveryConfig, ConfigError> {
        let retry_schedule = retry_schedule(d.retry_schedule)?;
        let max_retries = d.max_retries.unwrap_or(10);
        if max_retries > 1000 {
            return Err(ConfigError::invalid(
                "delivery.max_retries",
                "must be at most 1000",
            ));
        }
        let timeout = duration("delivery.timeout", d.timeout.as_deref().unwrap_or("10s"))?;
        if timeout.is_zero() || timeout > Duration::from_secs(300) {
            return Err(ConfigError::invalid(
                "delivery.timeout",
                "must be between 1ms and 300s",
            ));
        }
        let concurrency = d.concurrency.unwrap_or(256);
        if !(1..=100_000).contains(&concurrency) {
            return Err(ConfigError::invalid(
                "delivery.concurrency",
                "must be between 1 and 100000",
            ));
        }
        let per_endpoint_concurrency = d
            .per_endpoint_concurrency
            .unwrap_or_else(|| (concurrency / 4).max(1));
        if per_endpoint_concurrency == 0 {
            return Err(ConfigError::invalid(
                "delivery.per_endpoint_concurrency",
                "must be at least 1",
            ));
        }
        let unknown_endpoint_grace = duration(
            "delivery.unknown_endpoint_grace",
            d.unknown_endpoint_grace.as_deref().unwrap_or("1h"),
        )?;
        if unknown_endpoint_grace > Duration::from_secs(7 * 24 * 3600) {
            return Err(ConfigError::invalid(
                "delivery.unknown_endpoint_grace",
                "must be at most 7 days",
            ));
        }
        let proxy = d.proxy.map(proxy_url).transpose()?;
        Ok(DeliveryConfig {
            retry_schedule,
            max_retries,
            timeout,
            concurrency,
            per_endpoint_concurrency: per_endpoint_concurrency.min(concurrency),
            unknown_endpoint_grace,
            allow_private_targets: d.allow_private_targets.unwrap_or(false),
            proxy,
        })
    }

    fn account(&self, i: usize, mut table: toml::Table) -> Result<AccountConfig, ConfigError> {
        // Keys every provider's account may have, taken out before the
        // provider's own table is read (which refuses unknown keys).
        let rate_limit = match table.remove("rate_limit") {
            None => None,
            Some(toml::Value::String(text)) => Some(rate_limit(&format!("accounts[{i}].rate_limit"), &text)?),
            Some(_) => {
                return Err(ConfigError::invalid(
                    format!("accounts[{i}].rate_limit"),
                    "must be a string such as \"200/s\"",
                ))
            }
        };
        let mut account = self.provider_account(i, table)?;
        account.rate_limit = rate_limit;
        Ok(account)
    }

    fn provider_account(&self, i: usize, mut table: toml::Table) -> Result<AccountConfig, ConfigError> {
        let at = format!("accounts[{i}]");
        let provider_text = match table.remove("provider") {
            Some(toml::Value::String(p)) => p,
            _ => {
                return Err(ConfigError::invalid(
                    format!("{at}.provider"),
                    format!("missing; one of {}", ProviderKind::listed(None)),
                ))
            }
        };
        let provider = ProviderKind::parse(&provider_text).ok_or_else(|| {
            ConfigError::invalid(
                format!("{at}.provider"),
                format!(
                    "unknown provider `{provider_text}`; one of {}",
                    ProviderKind::listed(None)
                ),
            )
        })?;
        let cx = AccountCx { ctx: self, at };
        let (id, settings) = ProviderSettings::read(provider, table, &cx)?;
        let id = AccountId::parse(&id).map_err(|e| cx.invalid("id", e.to_string()))?;
        Ok(AccountConfig {
            id,
            rate_limit: None,
            settings,
        })
    }

    fn endpoint(
        &self,
        i: usize,
        table: toml::Table,
        accounts: &[AccountConfig],
    ) -> Result<EndpointConfig, ConfigError> {
        let at = format!("endpoints[{i}]");
        let f = FileEndpoint::deserialize(table)
            .map_err(|e| ConfigError::invalid(&at, e.to_string().trim().to_owned()))?;
        let id =
            EndpointId::parse(&f.id).map_err(|e| ConfigError::invalid(format!("{at}.id"), e.to_string()))?;
        let url = url::Url::parse(&f.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| {
                ConfigError::invalid(format!("{at}.url"), format!("`{}` is not an http(s) URL", f.url))
            })?;
        let secrets = self
            .secrets(
                &at,
                "secret",
                "adds another signature to every delivery",
                SecretKeys {
                    inline: f.secret,
                    env: f.secret_env,
                    file: f.secret_file,
                    list: f.secrets,
                },
            )?
            .ok_or_else(|| {
                ConfigError::invalid(
                    format!("{at}.secret"),
                    "required: it signs deliveries (secrets = [new, old] while it is rotated)",
                )
            })?;
        let account_patterns = f
            .accounts
            .iter()
            .map(|a| {
                if a == "*" {
                    Ok(AccountPattern::Any)
                } else {
                    accounts
                        .iter()
                        .find(|acc| acc.id.as_str() == a)
                        .map(|acc| AccountPattern::Exact(acc.id.clone()))
                        .ok_or_else(|| {
                            ConfigError::invalid(
                                format!("{at}.accounts"),
                                format!("no account `{a}` is configured"),
                            )
                        })
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let events = f
            .events
            .iter()
            .map(|e| {
                EventPattern::parse(e).ok_or_else(|| {
                    ConfigError::invalid(
                        format!("{at}.events"),
                        format!("`{e}` is not *, payment.*, refund.* or an event type"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let auto_pause_after = match f.auto_pause_after {
            None => None,
            Some(text) => {
                let key = format!("{at}.auto_pause_after");
                let after = duration(&key, &text)?;
                if after.is_zero() {
                    return Err(ConfigError::invalid(
                        key,
                        "must be longer than zero (leave it out to never pause on failures)",
                    ));
                }
                Some(after)
            }
        };
        Ok(EndpointConfig {
            id,
            url,
            secrets,
            accounts: account_patterns,
            events,
            auto_pause_after,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingress::dingdang::DingdangSchemeConfig;
    use crate::ingress::shouqianba::SqbMode;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, Path::new("/etc/payhook"), &no_env)
    }

    #[test]
    fn defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.server.admin_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.delivery.max_retries, 10);
        assert_eq!(c.delivery.retry_schedule.len(), 5);
        assert_eq!(c.delivery.delay_before_retry(1), Duration::ZERO);
        assert_eq!(c.delivery.delay_before_retry(2), Duration::from_secs(60));
        assert_eq!(c.delivery.delay_before_retry(9), Duration::from_secs(3600));
        assert!(c.queue.is_none());
        assert!(!c.delivery.allow_private_targets);
    }

    #[test]
    fn what_cannot_be_trusted_is_refused() {
        let cases = [
            ("[server]\nadmin_token = \"short-token\"\n", "server.admin_token"),
            ("[[accounts]]\nid=\"d\"\nprovider=\"dryad\"\nsecret=\"\"\n", "accounts[0].secret"),
            (
                "[[accounts]]\nid=\"s\"\nprovider=\"shouqianba\"\nterminal_sn=\"1\"\nterminal_key=\"\"\n",
                "accounts[0].terminal_key",
            ),
            (
                "[[endpoints]]\nid=\"e\"\nurl=\"https://x.example\"\nsecret=\"\"\naccounts=[\"*\"]\nevents=[\"*\"]\n",
                "endpoints[0].secret",
            ),
            (
                "[[accounts]]\nid=\"a\"\nprovider=\"abc\"\ncertificate_file=\"c.pem\"\n",
                "accounts[0].merchant_id",
            ),
            (
                "[[accounts]]\nid=\"a\"\nprovider=\"abc\"\ncertificate_file=\"c.pem\"\nmerchant_id=\"1\"\n\
                 signature_algorithm=\"MD5withRSA\"\n",
                "accounts[0].signature_algorithm",
            ),
            (
                "[[accounts]]\nid=\"d\"\nprovider=\"dingdang\"\nscheme=\"TSK-HMAC-SHA256-BASIC\"\nsecret=\"s\"\n",
                "accounts[0].skill_id",
            ),
            (
                "[[accounts]]\nid=\"d\"\nprovider=\"dryad\"\nsecret=\"s\"\nrate_limit=\"fast\"\n",
                "accounts[0].rate_limit",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with(key), "{text}: {err}");
        }
        // From a file or the environment, empty is refused too.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let text = "[[accounts]]\nid=\"d\"\nprovider=\"dryad\"\nsecret_file=\"empty\"\n";
        let err = Config::from_toml_str(text, dir.path(), &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("accounts[0].secret_file"), "{err}");
        let empty_env = |name: &str| (name == "DRYAD").then(String::new);
        let text = "[[accounts]]\nid=\"d\"\nprovider=\"dryad\"\nsecret_env=\"DRYAD\"\n";
        let err = Config::from_toml_str(text, dir.path(), &empty_env)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("accounts[0].secret_env"), "{err}");
        // 16 characters is enough; the rate parses.
        let c = parse(
            "[server]\nadmin_token = \"0123456789abcdef\"\n\
             [[accounts]]\nid=\"d\"\nprovider=\"dryad\"\nsecret=\"s\"\nrate_limit=\"200/s\"\n",
        )
        .unwrap();
        assert_eq!(c.accounts[0].rate_limit, Some(200));
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let c = parse(
            "[server]\nadmin_token = \"admin-token-0123456789\"\n\
             [storage]\nurl = \"postgres://payhook:db-password-1@db.internal/payhook\"\n\
             [queue]\namqp_url = \"amqp://relay:amqp-password-2@mq.internal/%2f\"\n\
             [[accounts]]\nid=\"d\"\nprovider=\"dryad\"\nsecret=\"dryad-secret-3\"\n\
             [[accounts]]\nid=\"s\"\nprovider=\"shouqianba\"\nterminal_sn=\"1\"\nterminal_key=\"terminal-key-4\"\n\
             [[endpoints]]\nid=\"e\"\nurl=\"https://x.example\"\nsecret=\"endpoint-secret-5\"\n\
             accounts=[\"*\"]\nevents=[\"*\"]\n",
        )
        .unwrap();
        let shown = format!("{c:?}");
        for secret in [
            "admin-token-0123456789",
            "db-password-1",
            "amqp-password-2",
            "dryad-secret-3",
            "terminal-key-4",
            "endpoint-secret-5",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("postgres://payhook:***@db.internal/payhook"),
            "{shown}"
        );
    }

    #[test]
    fn a_relative_sqlite_path_is_the_config_files() {
        let c = parse("[storage]\nurl = \"sqlite://data/payhook.db?mode=rwc\"\n").unwrap();
        assert_eq!(c.storage.url, "sqlite:///etc/payhook/data/payhook.db?mode=rwc");
        assert_eq!(parse("").unwrap().storage.url, "sqlite:///etc/payhook/payhook.db");
        let c = parse("[storage]\nurl = \"sqlite:///var/lib/payhook.db\"\n").unwrap();
        assert_eq!(c.storage.url, "sqlite:///var/lib/payhook.db");
        let env = |name: &str| (name == "PAYHOOK_DATABASE_URL").then(|| "sqlite://here.db".to_owned());
        let c = Config::from_toml_str("", Path::new("/etc/payhook"), &env).unwrap();
        assert_eq!(
            c.storage.url, "sqlite://here.db",
            "the environment's URL is taken as given"
        );
    }

    #[test]
    fn retention_defaults_and_limits() {
        let c = parse("").unwrap();
        assert_eq!(c.storage.retention, Duration::from_secs(30 * 86_400));
        assert_eq!(c.storage.raw_retention, Duration::from_secs(7 * 86_400));
        let c = parse("[storage]\nretention = \"90d\"\nraw_retention = \"12h\"\n").unwrap();
        assert_eq!(c.storage.retention, Duration::from_secs(90 * 86_400));
        assert_eq!(c.storage.raw_retention, Duration::from_secs(12 * 3600));
        // A retention shorter than the default raw retention takes the raw
        // body with it.
        let c = parse("[storage]\nretention = \"90m\"\n").unwrap();
        assert_eq!(c.storage.raw_retention, Duration::from_secs(90 * 60));
        for (text, key) in [
            (
                "[storage]\nretention = \"7d\"\nraw_retention = \"8d\"\n",
                "storage.raw_retention:",
            ),
            ("[storage]\nretention = \"0s\"\n", "storage.retention:"),
            ("[storage]\nraw_retention = \"0d\"\n", "storage.raw_retention:"),
            ("[storage]\nretention = \"a month\"\n", "storage.retention:"),
        ] {
            let e = err(text);
            assert!(e.starts_with(key), "{text}: {e}");
        }
        let e = err("[storage]\nretention = \"7d\"\nraw_retention = \"8d\"\n");
        assert!(e.contains("storage.retention"), "names both keys: {e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        let err = parse("[[accounts]]\nid=\"d\"\nprovider=\"dryad\"\nsecret=\"s\"\nsecrett=\"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("accounts[0]") && err.contains("secrett"), "{err}");
    }

    #[test]
    fn bad_values_are_named() {
        let err = parse("[delivery]\ntimeout = \"soon\"\n").unwrap_err().to_string();
        assert!(err.contains("delivery.timeout"), "{err}");
        let err = parse("[delivery]\nretry_schedule = [\"1s\", \"15m\", \"5m\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("delivery.retry_schedule[2]") && err.contains("must not decrease"),
            "{err}"
        );
        let err = parse("[delivery]\nretry_schedule = [\"1s\", \"x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("delivery.retry_schedule[1]"), "{err}");
        let err = parse("[[accounts]]\nid=\"a b\"\nprovider=\"dryad\"\nsecret=\"s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("accounts[0].id"), "{err}");
        let err = parse("[[accounts]]\nid=\"x\"\nprovider=\"paypal\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("accounts[0].provider"), "{err}");
        let err = parse("[[endpoints]]\nid=\"e\"\nurl=\"ftp://x\"\nsecret=\"s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("endpoints[0].url"), "{err}");
        let err = parse("[[endpoints]]\nid=\"e\"\nurl=\"http://x\"\nsecret=\"s\"\naccounts=[\"nope\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("endpoints[0].accounts"), "{err}");
    }

    #[test]
    fn env_overrides_and_secret_sources() {
        let env = |k: &str| match k {
            "PAYHOOK_LISTEN" => Some("0.0.0.0:1234".to_owned()),
            "PAYHOOK_AMQP_URL" => Some("amqp://h".to_owned()),
            "DRYAD_SECRET" => Some("from-env".to_owned()),
            _ => None,
        };
        let c = Config::from_toml_str(
            "[[accounts]]\nid=\"d\"\nprovider=\"dryad\"\nsecret_env=\"DRYAD_SECRET\"\n",
            Path::new("."),
            &env,
        )
        .unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:1234");
        assert_eq!(c.queue.as_ref().map(|q| q.prefix.as_str()), Some("payhook"));
        match &c.accounts[0].settings {
            ProviderSettings::Dryad(dryad) => assert_eq!(dryad.secrets.first().expose(), "from-env"),
            other => panic!("{other:?}"),
        }
        assert!(
            !format!("{c:?}").contains("from-env"),
            "Debug must not print secrets"
        );
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const ENDPOINT: &str = "[[endpoints]]\nid=\"e\"\nurl=\"https://x.example\"\n";

    #[test]
    fn an_endpoint_takes_secret_or_secrets() {
        let c = parse(&format!("{ENDPOINT}secrets = [\"whsec_bmV3\", \"whsec_b2xk\"]\n")).unwrap();
        let shown: Vec<&str> = c.endpoints[0].secrets.iter().map(Secret::expose).collect();
        assert_eq!(shown, ["whsec_bmV3", "whsec_b2xk"], "in the configured order");
        let c = parse(&format!("{ENDPOINT}secret = \"whsec_b2xk\"\n")).unwrap();
        assert_eq!(c.endpoints[0].secrets.len(), 1);

        // Both forms: refused, naming the list and the single key.
        for single in ["secret = \"a\"", "secret_env = \"A\"", "secret_file = \"a\""] {
            let e = err(&format!("{ENDPOINT}{single}\nsecrets = [\"b\"]\n"));
            assert!(
                e.starts_with("endpoints[0].secrets:") && e.contains("secret (or secret_env, secret_file)"),
                "{e}"
            );
        }
        let e = err(&format!("{ENDPOINT}secrets = []\n"));
        assert!(
            e.starts_with("endpoints[0].secrets:") && e.contains("at least one"),
            "{e}"
        );
        let e = err(&format!("{ENDPOINT}secrets = [\"a\", \"\"]\n"));
        assert!(
            e.starts_with("endpoints[0].secrets[1]:") && e.contains("empty"),
            "{e}"
        );
        let e = err(&format!(
            "{ENDPOINT}secrets = [\"a\", \"b\", \"c\", \"d\", \"e\"]\n"
        ));
        assert!(
            e.starts_with("endpoints[0].secrets:") && e.contains("lists 5") && e.contains("at most 4"),
            "{e}"
        );
        parse(&format!("{ENDPOINT}secrets = [\"a\", \"b\", \"c\", \"d\"]\n")).unwrap();
        let e = err(&format!("{ENDPOINT}secrets = [\"same\", \"same\"]\n"));
        assert!(
            e.starts_with("endpoints[0].secrets[1]:") && e.contains("secrets[0]"),
            "{e}"
        );
        assert!(
            !e.contains("\"same\""),
            "the message does not echo the secret: {e}"
        );
        let e = err(&format!("{ENDPOINT}secrets = [\"a\", 5]\n"));
        assert!(e.starts_with("endpoints[0].secrets[1]:"), "{e}");
        let e = err(&format!(
            "{ENDPOINT}secrets = [{{ env = \"A\", file = \"b\" }}]\n"
        ));
        assert!(e.starts_with("endpoints[0].secrets[0]:"), "{e}");
        let e = err(ENDPOINT);
        assert!(
            e.starts_with("endpoints[0].secret:") && e.contains("required"),
            "{e}"
        );
    }

    #[test]
    fn listed_secrets_come_inline_from_the_environment_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old"), "from-file\n").unwrap();
        std::fs::write(dir.path().join("empty"), "\n").unwrap();
        let env = |name: &str| match name {
            "NEW" => Some("from-env".to_owned()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let text = format!("{ENDPOINT}secrets = [{{ env = \"NEW\" }}, {{ file = \"old\" }}, \"inline\"]\n");
        let c = Config::from_toml_str(&text, dir.path(), &env).unwrap();
        let shown: Vec<&str> = c.endpoints[0].secrets.iter().map(Secret::expose).collect();
        assert_eq!(shown, ["from-env", "from-file", "inline"]);
        assert!(
            !format!("{c:?}").contains("from-env"),
            "Debug hides listed secrets"
        );
        for (entry, key) in [
            ("{ env = \"UNSET\" }", "endpoints[0].secrets[0]"),
            ("{ env = \"EMPTY\" }", "endpoints[0].secrets[0]"),
            ("{ file = \"empty\" }", "endpoints[0].secrets[0]"),
            ("{ file = \"missing\" }", "endpoints[0].secrets[0]"),
        ] {
            let e = Config::from_toml_str(&format!("{ENDPOINT}secrets = [{entry}]\n"), dir.path(), &env)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(key), "{entry}: {e}");
        }
    }

    #[test]
    fn accounts_take_key_lists() {
        let c = parse(
            "[[accounts]]\nid=\"c\"\nprovider=\"cbb\"\npublic_key_files=[\"new.pem\", \"/keys/old.pem\"]\n\
             [[accounts]]\nid=\"d\"\nprovider=\"dryad\"\nsecrets=[\"new\", \"old\"]\n\
             [[accounts]]\nid=\"h\"\nprovider=\"dingdang\"\nscheme=\"TSK-HMAC-SHA256-BASIC\"\n\
             skill_id=\"1\"\nsecrets=[\"new\", \"old\"]\n\
             [[accounts]]\nid=\"r\"\nprovider=\"dingdang\"\nscheme=\"TSK-RSA2\"\nskill_id=\"1\"\n\
             public_key_files=[\"a.pem\", \"b.pem\"]\n\
             [[accounts]]\nid=\"m\"\nprovider=\"shouqianba\"\nterminal_sn=\"1\"\nterminal_keys=[\"new\", \"old\"]\n\
             [[accounts]]\nid=\"s\"\nprovider=\"shouqianba\"\nsign_mode=\"rsa\"\nterminal_sn=\"1\"\n\
             public_key_files=[\"a.pem\", \"b.pem\"]\n\
             [[accounts]]\nid=\"a\"\nprovider=\"abc\"\nmerchant_id=\"1\"\ncertificate_files=[\"a.pem\", \"b.pem\"]\n",
        )
        .unwrap();
        let files =
            |list: &KeyList<PathBuf>| list.iter().map(|p| p.display().to_string()).collect::<Vec<_>>();
        let secrets = |list: &KeyList<Secret>| list.iter().map(|s| s.expose().to_owned()).collect::<Vec<_>>();
        let pair = vec!["/etc/payhook/a.pem".to_owned(), "/etc/payhook/b.pem".to_owned()];
        let new_old = vec!["new".to_owned(), "old".to_owned()];
        // One account at a time, so that a new provider's variant needs no
        // arm here.
        let settings = |id: &str| &c.account(id).expect("the account").settings;
        let ProviderSettings::Cbb(cbb) = settings("c") else {
            panic!("cbb")
        };
        assert_eq!(
            files(&cbb.public_key_files),
            ["/etc/payhook/new.pem", "/keys/old.pem"]
        );
        let ProviderSettings::Dryad(dryad) = settings("d") else {
            panic!("dryad")
        };
        assert_eq!(secrets(&dryad.secrets), new_old);
        let ProviderSettings::Dingdang(hmac) = settings("h") else {
            panic!("dingdang")
        };
        let DingdangSchemeConfig::HmacSha256 { secrets: s } = &hmac.scheme else {
            panic!("hmac")
        };
        assert_eq!(secrets(s), new_old);
        let ProviderSettings::Dingdang(rsa2) = settings("r") else {
            panic!("dingdang")
        };
        let DingdangSchemeConfig::Rsa2 { public_key_files } = &rsa2.scheme else {
            panic!("rsa2")
        };
        assert_eq!(files(public_key_files), pair);
        let ProviderSettings::Shouqianba(md5) = settings("m") else {
            panic!("shouqianba")
        };
        let SqbMode::Md5 { terminal_keys } = &md5.mode else {
            panic!("md5")
        };
        assert_eq!(secrets(terminal_keys), new_old);
        let ProviderSettings::Shouqianba(rsa) = settings("s") else {
            panic!("shouqianba")
        };
        let SqbMode::Rsa { public_key_files } = &rsa.mode else {
            panic!("rsa")
        };
        assert_eq!(files(public_key_files), pair);
        let ProviderSettings::Abc(abc) = settings("a") else {
            panic!("abc")
        };
        assert_eq!(files(&abc.certificate_files), pair);

        let cbb = "[[accounts]]\nid=\"c\"\nprovider=\"cbb\"\n";
        let dryad = "[[accounts]]\nid=\"d\"\nprovider=\"dryad\"\n";
        let cases = [
            (format!("{cbb}public_key_file=\"a.pem\"\npublic_key_files=[\"b.pem\"]\n"), "accounts[0].public_key_files:"),
            (format!("{cbb}public_key_files=[]\n"), "accounts[0].public_key_files:"),
            (format!("{cbb}public_key_files=[\"a\",\"b\",\"c\",\"d\",\"e\"]\n"), "accounts[0].public_key_files:"),
            (format!("{cbb}public_key_files=[\"a.pem\",\"/etc/payhook/a.pem\"]\n"), "accounts[0].public_key_files[1]:"),
            (cbb.to_owned(), "accounts[0].public_key_file:"),
            (format!("{dryad}secret=\"a\"\nsecrets=[\"b\"]\n"), "accounts[0].secrets:"),
            (format!("{dryad}secrets=[]\n"), "accounts[0].secrets:"),
            (format!("{dryad}secrets=[\"\"]\n"), "accounts[0].secrets[0]:"),
            (format!("{dryad}secrets=[\"a\",\"b\",\"c\",\"d\",\"e\"]\n"), "accounts[0].secrets:"),
            (
                "[[accounts]]\nid=\"s\"\nprovider=\"shouqianba\"\nterminal_sn=\"1\"\nterminal_key=\"k\"\nterminal_keys=[\"k2\"]\n"
                    .to_owned(),
                "accounts[0].terminal_keys:",
            ),
            (
                "[[accounts]]\nid=\"a\"\nprovider=\"abc\"\nmerchant_id=\"1\"\ncertificate_file=\"a\"\ncertificate_files=[\"b\"]\n"
                    .to_owned(),
                "accounts[0].certificate_files:",
            ),
        ];
        for (text, key) in cases {
            let e = err(&text);
            assert!(e.starts_with(key), "{text}: {e}");
        }
    }

    #[test]
    fn subscriptions() {
        let c = parse(
            "[[accounts]]\nid=\"d\"\nprovider=\"dryad\"\nsecret=\"s\"\n\
             [[endpoints]]\nid=\"e\"\nurl=\"http://x\"\nsecret=\"s\"\naccounts=[\"d\"]\nevents=[\"payment.*\",\"refund.succeeded\"]\n",
        )
        .unwrap();
        let e = &c.endpoints[0];
        let d = AccountId::parse("d").unwrap();
        let other = AccountId::parse("o").unwrap();
        assert!(e.subscribes(&d, EventType::PaymentSucceeded));
        assert!(e.subscribes(&d, EventType::RefundSucceeded));
        assert!(!e.subscribes(&d, EventType::RefundFailed));
        assert!(!e.subscribes(&other, EventType::PaymentSucceeded));
        assert_eq!(c.accounts[0].provider(), ProviderKind::Dryad);
    }
}
