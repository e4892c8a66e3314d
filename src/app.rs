//! Wiring: builds a running relay from a config. `Application::build` binds
//! its listeners (port 0 works, for tests) and `run_until_stopped` serves until
//! the shutdown token is cancelled, then drains.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::dispatch::health::{EndpointHealth, EndpointMonitor};
use crate::dispatch::{Deliverer, EmbeddedWorker};
use crate::ingress::handler::{notify, IngressState};
use crate::ingress::registry::AccountError;
use crate::live::{LiveConfig, PausedEndpoints};
use crate::queue::connection::Broker;
use crate::queue::consumer::DeliveryConsumer;
use crate::queue::publisher::OutboxPublisher;
use crate::queue::topology::Topology;
use crate::server::{self, ServeOptions};
use crate::store::{OutboxItem, Store, StoreError};
use crate::telemetry::Metrics;

/// Which parts of the relay this process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Role {
    #[default]
    All,
    Ingress,
    Dispatcher,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::All => "all",
            Role::Ingress => "ingress",
            Role::Dispatcher => "dispatcher",
        }
    }

    fn runs_ingress(self) -> bool {
        matches!(self, Role::All | Role::Ingress)
    }

    fn runs_dispatcher(self) -> bool {
        matches!(self, Role::All | Role::Dispatcher)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Account(#[from] AccountError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error(
        "--role {0} needs a broker: the ingress and dispatcher processes of scaled mode hand jobs \
         over through RabbitMQ, so set [queue] amqp_url (or PAYHOOK_AMQP_URL). Without one, run \
         --role all (the embedded queue)"
    )]
    RoleNeedsQueue(&'static str),
}

pub struct BuildOptions {
    pub role: Role,
    /// The clock for signature freshness (tests replay vectors at their time).
    pub clock: Arc<dyn Clock>,
    /// Cancelled to stop the relay.
    pub shutdown: CancellationToken,
    /// The config file a reload reads (`None`: the same lookup as at
    /// start-up).
    pub config_path: Option<std::path::PathBuf>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            role: Role::All,
            clock: Arc::new(SystemClock),
            shutdown: CancellationToken::new(),
            config_path: None,
        }
    }
}

pub struct Application {
    ingress: Option<(TcpListener, Router)>,
    admin: (TcpListener, Router),
    /// The long-running parts besides the HTTP servers: the embedded worker,
    /// or the outbox publisher and the RabbitMQ consumer.
    workers: Vec<BoxFuture<'static, ()>>,
    store: Store,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    request_timeout: Duration,
    max_connections: usize,
    max_in_flight: usize,
    idle_timeout: Duration,
    nonce_window: Duration,
    /// RabbitMQ mode: the outbox is in use.
    outbox: bool,
    live: LiveConfig,
    clock: Arc<dyn Clock>,
}

/// The admin listener's own connection and request limits.
const ADMIN_MAX_CONNECTIONS: usize = 256;
const ADMIN_MAX_IN_FLIGHT: usize = 64;

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartupError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })
}

impl Application {
    pub async fn build(config: Config, options: BuildOptions) -> Result<Self, StartupError> {
        // A split role without a broker would accept callbacks that no
        // process ever delivers (the other role's jobs would sit in its
        // own store): refused before anything starts.
        if config.queue.is_none() {
            match options.role {
                Role::Ingress => return Err(StartupError::RoleNeedsQueue("ingress")),
                Role::Dispatcher => return Err(StartupError::RoleNeedsQueue("dispatcher")),
                Role::All => {}
            }
        }
        let live = LiveConfig::new(&config, options.config_path.clone())?;
        let handoff =
            (config.queue.is_some() && options.role.runs_ingress()).then(|| mpsc::channel(HANDOFF_QUEUE));
        let mut parts = Parts {
            store: Store::connect_with_clock(&config.storage.url, options.clock.clone()).await?,
            metrics: Metrics::new(),
            jobs_committed: Arc::new(Notify::new()),
            broker: config.queue.as_ref().map(|q| {
                Broker::new(
                    q.amqp_url.clone(),
                    Topology::new(&q.prefix, &config.delivery.retry_schedule),
                )
            }),
            handoff: handoff.as_ref().map(|(tx, _)| tx.clone()),
            handoff_rx: handoff.map(|(_, rx)| rx),
            paused: PausedEndpoints::default(),
            live,
            options,
        };
        let nonce_window = parts
            .live
            .current()
            .accounts
            .values()
            .filter_map(|a| a.provider.replay_window())
            .max()
            .unwrap_or(Duration::from_secs(300));
        let ingress = if parts.options.role.runs_ingress() {
            Some((bind(config.server.listen).await?, parts.ingress_router(&config)))
        } else {
            None
        };
        let admin = (
            bind(config.server.admin_listen).await?,
            parts.admin_router(&config),
        );
        let workers = parts.workers(&config)?;
        let Parts {
            store,
            metrics,
            broker,
            live,
            options,
            ..
        } = parts;
        Ok(Self {
            ingress,
            admin,
            workers,
            store,
            metrics,
            shutdown: options.shutdown,
            request_timeout: config.server.request_timeout,
            max_connections: config.server.max_connections,
            max_in_flight: config.server.max_in_flight,
            idle_timeout: config.server.idle_timeout,
            nonce_window,
            outbox: broker.is_some(),
            live,
            clock: options.clock,
        })
    }

    /// What a reload swaps; `SIGHUP` calls [`LiveConfig::reload_logged`].
    pub fn live(&self) -> LiveConfig {
        self.live.clone()
    }

    pub fn ingress_addr(&self) -> Option<SocketAddr> {
        self.ingress.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.0.local_addr().ok()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Serves until the shutdown token is cancelled. Then: listeners stop
    /// accepting, in-flight requests finish, in-flight deliveries finish and
    /// store their outcome, and the store is closed.
    pub async fn run_until_stopped(self) -> Result<(), std::io::Error> {
        let tasks = TaskTracker::new();
        let token = self.shutdown.clone();

        if let Some((listener, router)) = self.ingress {
            let options = ServeOptions {
                header_read_timeout: self.request_timeout,
                // In-flight requests get their own timeout to finish, no more.
                drain: self.request_timeout + Duration::from_secs(1),
                max_connections: self.max_connections,
                max_in_flight: self.max_in_flight,
                idle_timeout: self.idle_timeout,
            };
            tasks.spawn(server::serve(listener, router, token.clone(), options));
        }
        {
            let (listener, router) = self.admin;
            let options = ServeOptions {
                header_read_timeout: self.request_timeout,
                drain: Duration::from_secs(5),
                // Operators, scrapers and the console only: small limits of
                // its own, so a flood on one port cannot starve the other.
                max_connections: ADMIN_MAX_CONNECTIONS,
                max_in_flight: ADMIN_MAX_IN_FLIGHT,
                idle_timeout: self.idle_timeout,
            };
            tasks.spawn(server::serve(listener, router, token.clone(), options));
        }
        for worker in self.workers {
            tasks.spawn(worker);
        }
        tasks.spawn(housekeeping(
            self.store.clone(),
            self.metrics.clone(),
            self.nonce_window,
            self.outbox,
            self.clock.clone(),
            token.clone(),
        ));
        tracing::info!("payhook is running");
        tasks.close();
        tasks.wait().await;
        self.store.close().await;
        tracing::info!("payhook stopped");
        Ok(())
    }
}

/// Committed outbox rows waiting for this process's publisher in memory;
/// past this the rest wait for their lease to run out (about 5 MB of events).
const HANDOFF_QUEUE: usize = 8192;

/// What the relay's parts share, built once by [`Application::build`].
struct Parts {
    store: Store,
    metrics: Arc<Metrics>,
    /// Woken by each commit that created delivery jobs.
    jobs_committed: Arc<Notify>,
    /// RabbitMQ mode.
    broker: Option<Broker>,
    /// RabbitMQ mode, ingress role: new outbox rows from the ingress to
    /// this process's publisher, in memory; the publisher takes the
    /// receiving side when the workers are built.
    handoff: Option<mpsc::Sender<OutboxItem>>,
    handoff_rx: Option<mpsc::Receiver<OutboxItem>>,
    paused: PausedEndpoints,
    live: LiveConfig,
    options: BuildOptions,
}

impl Parts {
    /// `POST /notify/{account}`.
    fn ingress_router(&self, config: &Config) -> Router {
        let state = IngressState {
            live: self.live.clone(),
            store: self.store.clone(),
            clock: self.options.clock.clone(),
            metrics: self.metrics.clone(),
            max_body_bytes: config.server.max_body_bytes,
            outbox: self.broker.is_some(),
            jobs_committed: self.jobs_committed.clone(),
            publisher: self.handoff.clone(),
            verifying: Arc::new(tokio::sync::Semaphore::new(
                crate::ingress::handler::verification_permits(),
            )),
        };
        Router::new()
            .route("/notify/{account}", post(notify))
            .with_state(state)
            .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                axum::http::StatusCode::REQUEST_TIMEOUT,
                config.server.request_timeout,
            ))
    }

    /// The admin port's routes.
    fn admin_router(&self, config: &Config) -> Router {
        admin::router(AdminState {
            store: self.store.clone(),
            metrics: self.metrics.clone(),
            broker: self.broker.as_ref().map(|b| b.status.clone()),
            admin_token: config.server.admin_token.clone(),
            live: self.live.clone(),
            paused: self.paused.clone(),
            clock: self.options.clock.clone(),
            jobs_committed: self.jobs_committed.clone(),
            outbox: self.broker.is_some(),
        })
    }

    /// The long-running tasks of the role: the outbox publisher (ingress,
    /// RabbitMQ mode), the consumer or the embedded worker (dispatcher),
    /// the endpoint monitor (every role: pauses made through any process
    /// reach this one, and auto-pause runs wherever failures are seen) and
    /// retention (where deliveries are made; several such processes only
    /// share the batches).
    fn workers(&mut self, config: &Config) -> Result<Vec<BoxFuture<'static, ()>>, StartupError> {
        let options = &self.options;
        let mut workers: Vec<BoxFuture<'static, ()>> = Vec::new();
        if let (Some(broker), true) = (&self.broker, options.role.runs_ingress()) {
            let publisher = OutboxPublisher {
                broker: broker.clone(),
                store: self.store.clone(),
                metrics: self.metrics.clone(),
                wake: self.jobs_committed.clone(),
                handoff: self.handoff_rx.take(),
                shutdown: options.shutdown.clone(),
            };
            workers.push(publisher.run().boxed());
        }
        let mut health = EndpointHealth::default();
        if options.role.runs_dispatcher() {
            let deliverer = Deliverer::new(
                self.store.clone(),
                self.live.clone(),
                self.paused.clone(),
                config.delivery.clone(),
                self.metrics.clone(),
                options.clock.clone(),
            )?;
            health = deliverer.health.clone();
            workers.push(match &self.broker {
                Some(broker) => DeliveryConsumer {
                    broker: broker.clone(),
                    deliverer,
                    shutdown: options.shutdown.clone(),
                }
                .run()
                .boxed(),
                None => EmbeddedWorker::new(deliverer, self.jobs_committed.clone(), options.shutdown.clone())
                    .run()
                    .boxed(),
            });
            let retention = crate::retention::Retention {
                store: self.store.clone(),
                metrics: self.metrics.clone(),
                clock: options.clock.clone(),
                retention: config.storage.retention,
                raw_retention: config.storage.raw_retention,
                shutdown: options.shutdown.clone(),
            };
            workers.push(retention.run().boxed());
        }
        let monitor = EndpointMonitor {
            store: self.store.clone(),
            live: self.live.clone(),
            paused: self.paused.clone(),
            health,
            metrics: self.metrics.clone(),
            clock: options.clock.clone(),
            shutdown: options.shutdown.clone(),
        };
        workers.push(monitor.run().boxed());
        Ok(workers)
    }
}

/// Periodic chores: forget nonces past their window, refresh gauges, and let
/// the metrics recorder fold histogram samples.
const ACTIVITY_SUMMARY_EVERY: Duration = Duration::from_secs(60);

async fn housekeeping(
    store: Store,
    metrics: Arc<Metrics>,
    nonce_window: Duration,
    outbox: bool,
    clock: Arc<dyn Clock>,
    token: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    let mut summarized = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = token.cancelled() => return,
        }
        // A line a minute at info when anything happened: a quiet relay is
        // observable without a line per request (those are at debug).
        if summarized.elapsed() >= ACTIVITY_SUMMARY_EVERY {
            summarized = tokio::time::Instant::now();
            let a = metrics.take_activity();
            if !a.is_empty() {
                tracing::info!(
                    accepted = a.accepted,
                    delivered = a.delivered,
                    failed = a.failed,
                    dead = a.dead,
                    "activity in the last minute"
                );
            }
        }
        // Twice the window: a nonce is only useless once its timestamp would
        // be refused as stale anyway.
        let keep_ms = i64::try_from(nonce_window.as_millis() * 2).unwrap_or(i64::MAX / 4);
        if let Err(e) = store.prune_nonces(clock.now_ms().saturating_sub(keep_ms)).await {
            tracing::warn!(error = %e, "nonce pruning failed");
        }
        match store.count_pending().await {
            Ok(n) => metrics.set_deliveries_pending(n),
            Err(e) => tracing::warn!(error = %e, "cannot count pending deliveries"),
        }
        // On a timer, not only when the publisher is idle: during a broker
        // outage the backlog is exactly what operators need to see grow.
        if outbox {
            match store.count_outbox().await {
                Ok(n) => metrics.set_outbox_pending(n),
                Err(e) => tracing::warn!(error = %e, "cannot count the outbox"),
            }
        }
        metrics.upkeep();
    }
}
