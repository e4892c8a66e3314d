//! The admin port: health, readiness and metrics (no auth), and later the
//! operator API under `/admin/*` (bearer token).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::queue::connection::BrokerStatus;
use crate::store::Store;
use crate::telemetry::Metrics;

#[derive(Clone)]
pub struct AdminState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    /// RabbitMQ mode: which broker connections are up.
    pub broker: Option<Arc<BrokerStatus>>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
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
