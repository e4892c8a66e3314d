//! The admin port: health, readiness and metrics (no auth), the operator
//! API under `/admin/*` (bearer token; see [`api`]), and the ops console's
//! static shell at `/admin/ui` (no auth, no data; see [`ui`]).

pub mod api;
pub mod ui;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::config::Secret;
use crate::live::{LiveConfig, PausedEndpoints};
use crate::queue::connection::BrokerStatus;
use crate::store::Store;
use crate::telemetry::Metrics;

#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// RabbitMQ mode: which broker connections are up.
    pub broker: Option<Arc<BrokerStatus>>,
    /// The bearer token for `/admin/*`; without one, every request is refused.
    pub admin_token: Option<Secret>,
    /// The accounts and endpoints in force: a redelivery goes to the
    /// current subscribers; a reload swaps them.
    pub live: LiveConfig,
    /// This process's view of paused endpoints, updated at once by a pause
    /// through this API.
    pub paused: PausedEndpoints,
    /// Times of operator pauses.
    pub clock: Arc<dyn Clock>,
    /// Wakes the embedded dispatcher (or the outbox publisher) after a
    /// redelivery is committed.
    pub jobs_committed: Arc<Notify>,
    /// RabbitMQ mode: redeliveries reach the queue through the outbox.
    pub outbox: bool,
}

pub fn router(state: AdminState) -> Router {
    if state.admin_token.is_none() {
        tracing::warn!(
            "no server.admin_token (or PAYHOOK_ADMIN_TOKEN) is set: /admin/* answers 401 to everyone"
        );
    }
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // The console's few fixed paths are routes of this router, so they
        // are matched before the `/admin` nest and its token check; any other
        // `/admin/ui/…` path still reaches the nest's fallback (401 / 404).
        .merge(ui::routes())
        .nest("/admin", api::routes(state.clone()))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the store answers and, in RabbitMQ mode, every broker
/// connection of this process is up.
async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if !matches!(
        tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await,
        Ok(Ok(()))
    ) {
        return (StatusCode::SERVICE_UNAVAILABLE, "store unreachable".to_owned());
    }
    if let Some(broker) = &state.broker {
        if !broker.ready() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("broker unreachable: {}", broker.down().join(", ")),
            );
        }
    }
    (StatusCode::OK, "ready".to_owned())
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.render(),
    )
}
