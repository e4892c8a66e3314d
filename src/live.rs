//! What changes while the relay runs: the accounts and endpoints a reload
//! swaps in ([`LiveConfig`]), and which endpoints are paused
//! ([`PausedEndpoints`], a local copy of what the store says).
//!
//! A request or an attempt takes one [`Routing`] snapshot when it starts and
//! keeps it to the end, so that a reload in the middle never mixes two
//! configs: in-flight work finishes on the config it started with.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use crate::config::{Config, ConfigError, EndpointConfig};
use crate::dispatch::Endpoint;
use crate::ingress::registry::{build_accounts, AccountError, Accounts};
use crate::telemetry::Metrics;

/// The accounts and endpoints of one config, built and checked.
pub struct Routing {
    /// Verifying providers by account id.
    pub accounts: Accounts,
    /// The endpoints as configured: who subscribes to what.
    pub endpoints: Arc<Vec<EndpointConfig>>,
    /// The endpoints as the dispatcher needs them, by id.
    pub targets: HashMap<String, Endpoint>,
}

impl Routing {
    pub fn build(config: &Config) -> Result<Self, AccountError> {
        Ok(Self {
            accounts: build_accounts(&config.accounts)?,
            endpoints: Arc::new(config.endpoints.clone()),
            targets: config
                .endpoints
                .iter()
                .map(|e| (e.id.to_string(), Endpoint::from(e)))
                .collect(),
        })
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("the reload was interrupted: {0}")]
    Interrupted(String),
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub accounts: usize,
    pub endpoints: usize,
    /// Keys that changed in the file but only take effect on a restart.
    pub needs_restart: Vec<&'static str>,
}

/// The current [`Routing`], swapped whole by a reload.
#[derive(Clone)]
pub struct LiveConfig {
    current: Arc<RwLock<Arc<Routing>>>,
    /// The config file given at start-up (`None`: the same lookup as at
    /// start-up, `$PAYHOOK_CONFIG` or `payhook.toml`), and the config the
    /// process started with, to name the keys a reload cannot apply.
    source: Arc<Source>,
}

struct Source {
    path: Option<PathBuf>,
    started_with: Config,
}

impl LiveConfig {
    pub fn new(config: &Config, path: Option<PathBuf>) -> Result<Self, AccountError> {
        Ok(Self {
            current: Arc::new(RwLock::new(Arc::new(Routing::build(config)?))),
            source: Arc::new(Source {
                path,
                started_with: config.clone(),
            }),
        })
    }

    /// The routing in force now; keep it for the whole request or attempt.
    pub fn current(&self) -> Arc<Routing> {
        match self.current.read() {
            Ok(guard) => guard.clone(),
            // A panic while swapping cannot leave a half-written Arc.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads the config file again and swaps in its accounts and endpoints,
    /// all or nothing: a file that does not load or validate changes nothing.
    /// Blocking (it reads files): call it off the async threads.
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let config = Config::load(self.source.path.as_deref())?;
        let routing = Routing::build(&config)?;
        let report = ReloadReport {
            accounts: routing.accounts.len(),
            endpoints: routing.targets.len(),
            needs_restart: needs_restart(&self.source.started_with, &config),
        };
        let routing = Arc::new(routing);
        match self.current.write() {
            Ok(mut guard) => *guard = routing,
            Err(poisoned) => *poisoned.into_inner() = routing,
        }
        Ok(report)
    }

    /// [`reload`](Self::reload) on a blocking thread, logged and counted in
    /// `payhook_config_reloads_total{outcome}`; `trigger` says what asked
    /// for it (`SIGHUP`, `POST /admin/reload`).
    pub async fn reload_logged(
        &self,
        metrics: &Metrics,
        trigger: &'static str,
    ) -> Result<ReloadReport, ReloadError> {
        let live = self.clone();
        let result = tokio::task::spawn_blocking(move || live.reload())
            .await
            .unwrap_or_else(|e| Err(ReloadError::Interrupted(e.to_string())));
        match &result {
            Ok(report) => {
                metrics.config_reload(true);
                tracing::info!(
                    trigger,
                    accounts = report.accounts,
                    endpoints = report.endpoints,
                    "config reloaded: accounts and endpoints swapped"
                );
                if !report.needs_restart.is_empty() {
                    tracing::warn!(
                        trigger,
                        keys = %report.needs_restart.join(", "),
                        "these changed keys take effect only after a restart; the running values stay"
                    );
                }
            }
            Err(e) => {
                metrics.config_reload(false);
                tracing::error!(trigger, error = %e, "config reload refused; the running config stays");
            }
        }
        result
    }
}

/// The keys whose new value a reload does not apply: the listeners, the
/// store, the broker and the delivery settings are built into running
/// parts (sockets, pools, queues, retry queues named after the schedule).
pub fn needs_restart(running: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&running.server, &new.server);
    let checks = [
        ("server.listen", a.listen != b.listen),
        ("server.admin_listen", a.admin_listen != b.admin_listen),
        ("server.admin_token", a.admin_token != b.admin_token),
        ("server.max_body_bytes", a.max_body_bytes != b.max_body_bytes),
        ("server.request_timeout", a.request_timeout != b.request_timeout),
        (
            "server.max_connections / max_in_flight / idle_timeout",
            (a.max_connections, a.max_in_flight, a.idle_timeout)
                != (b.max_connections, b.max_in_flight, b.idle_timeout),
        ),
        (
            "storage",
            running.storage.url != new.storage.url
                || format!("{:?}", running.storage) != format!("{:?}", new.storage),
        ),
        (
            "queue",
            format!(
                "{:?}",
                running.queue.as_ref().map(|q| (q.amqp_url.expose(), &q.prefix))
            ) != format!(
                "{:?}",
                new.queue.as_ref().map(|q| (q.amqp_url.expose(), &q.prefix))
            ),
        ),
        (
            "delivery",
            format!("{:?}", running.delivery) != format!("{:?}", new.delivery),
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(key, _)| key)
        .collect()
}

/// The endpoints paused in the store, as this process last read them (the
/// dispatcher refreshes it every [`PAUSED_REFRESH`], and an operator's pause
/// through this process applies at once).
#[derive(Clone, Default)]
pub struct PausedEndpoints(Arc<RwLock<HashSet<String>>>);

/// How stale a process's view of paused endpoints may be: a pause through
/// another process reaches this one's dispatcher within this time.
pub const PAUSED_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

impl PausedEndpoints {
    pub fn contains(&self, endpoint: &str) -> bool {
        match self.0.read() {
            Ok(set) => set.contains(endpoint),
            Err(poisoned) => poisoned.into_inner().contains(endpoint),
        }
    }

    pub fn list(&self) -> Vec<String> {
        let mut list: Vec<String> = match self.0.read() {
            Ok(set) => set.iter().cloned().collect(),
            Err(poisoned) => poisoned.into_inner().iter().cloned().collect(),
        };
        list.sort();
        list
    }

    pub fn replace(&self, paused: HashSet<String>) {
        match self.0.write() {
            Ok(mut set) => *set = paused,
            Err(poisoned) => *poisoned.into_inner() = paused,
        }
    }

    pub fn set(&self, endpoint: &str, paused: bool) {
        let mut set = match self.0.write() {
            Ok(set) => set,
            Err(poisoned) => poisoned.into_inner(),
        };
        if paused {
            set.insert(endpoint.to_owned());
        } else {
            set.remove(endpoint);
        }
    }
}
