//! Connecting to RabbitMQ, and staying connected: every broker task opens its
//! own connection, and on any error drops it and comes back here, which
//! retries with jittered exponential backoff and re-declares the topology.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use super::topology::Topology;
use crate::config::Secret;

/// Which broker tasks of this process are connected; `/readyz` is red while
/// any of them is not.
#[derive(Debug, Default)]
pub struct BrokerStatus {
    components: Mutex<BTreeMap<&'static str, bool>>,
}

impl BrokerStatus {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, bool>> {
        match self.components.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A task that will connect; it counts as down until it does.
    pub fn register(&self, component: &'static str) {
        self.lock().insert(component, false);
    }

    pub fn set(&self, component: &'static str, up: bool) {
        self.lock().insert(component, up);
    }

    pub fn ready(&self) -> bool {
        self.lock().values().all(|up| *up)
    }

    /// Components that are down, for the `/readyz` body.
    pub fn down(&self) -> Vec<&'static str> {
        self.lock()
            .iter()
            .filter(|(_, up)| !**up)
            .map(|(c, _)| *c)
            .collect()
    }
}

#[derive(Clone)]
pub struct Broker {
    url: Secret,
    pub topology: Arc<Topology>,
    pub status: Arc<BrokerStatus>,
}

/// A live connection with one confirm-mode channel on which the topology is
/// declared.
pub struct Session {
    pub connection: Connection,
    pub channel: Channel,
}

impl Broker {
    pub fn new(url: Secret, topology: Topology) -> Self {
        Self {
            url,
            topology: Arc::new(topology),
            status: Arc::new(BrokerStatus::default()),
        }
    }

    async fn open_once(&self, name: &'static str) -> Result<Session, lapin::Error> {
        let properties =
            ConnectionProperties::default().with_connection_name(format!("payhook-{name}").into());
        let connection = Connection::connect(self.url.expose(), properties).await?;
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        self.topology.declare(&connection, &channel).await?;
        Ok(Session { connection, channel })
    }

    /// Connects, retrying until it succeeds or `shutdown` is cancelled.
    pub async fn open(&self, component: &'static str, shutdown: &CancellationToken) -> Option<Session> {
        self.status.set(component, false);
        let attempt = || self.open_once(component);
        let retrying = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_jitter()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_secs(5))
                    .without_max_times(),
            )
            .notify(|e: &lapin::Error, wait: Duration| {
                // One line per attempt, naming the broker (never the URL's
                // password) and when the next try is due; lapin's own lines
                // are kept at debug (telemetry's default filter).
                let retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                tracing::warn!(
                    component,
                    broker = %self.endpoint(),
                    error = %e,
                    retry_in_ms,
                    "RabbitMQ unreachable; retrying"
                );
            });
        tokio::select! {
            session = retrying => match session {
                Ok(session) => {
                    tracing::info!(component, broker = %self.endpoint(), "connected to RabbitMQ");
                    self.status.set(component, true);
                    Some(session)
                }
                Err(_) => None,
            },
            _ = shutdown.cancelled() => None,
        }
    }

    /// `host:port/vhost` of the broker, for logs: no user, no password.
    pub fn endpoint(&self) -> String {
        match url::Url::parse(self.url.expose()) {
            Ok(url) => format!(
                "{}:{}{}",
                url.host_str().unwrap_or("?"),
                url.port().unwrap_or(5672),
                url.path()
            ),
            Err(_) => "an unparsable amqp_url".to_owned(),
        }
    }

    pub fn mark_down(&self, component: &'static str) {
        self.status.set(component, false);
    }
}
