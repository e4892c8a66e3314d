//! The operator API under `/admin/*` (bearer token): list and inspect events
//! and deliveries, and redeliver.
//!
//! - `GET  /admin/events?account=&provider=&type=&merchant_order_no=&q=&since=&until=&limit=&cursor=`
//!   → `{"events": [event…], "delivery_status": {id: {status, deliveries,
//!   attempts}}, "next_cursor": "evt_…" | null}`, newest first; `q` is a
//!   prefix of the event id, provider trade number or merchant order number
//! - `GET  /admin/events/{id}` → `{"event": event, "deliveries": [delivery + attempts_detail]}`
//! - `POST /admin/events/{id}/redeliver` → 202 `{"event_id", "deliveries": [{id, endpoint, status}]}`
//! - `GET  /admin/deliveries?status=pending|delivered|dead&unresolved=true&limit=&cursor=`
//!   → `{"deliveries": [delivery…], "next_cursor": "123" | null}`, newest first
//! - `POST /admin/deliveries/redeliver?status=dead&limit=` → 202
//!   `{"redelivered": n, "remaining": m}` (oldest first; `limit` makes it a batch)
//! - `GET  /admin/summary` → `{"store", "queue", "deliveries": {"pending", "dead"}}`
//!
//! Every error is `{"error": "…", "code": "…"}`: a fixed, secret-free message
//! and a stable code (`unauthorized`, `bad_request`, `event_not_found`,
//! `route_not_found`, `conflict`, `store_unavailable`, `internal`); store
//! failures are logged here and answered without detail.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::AdminState;
use crate::config::Secret;
use crate::crypto::ct_eq;
use crate::domain::{AccountId, EndpointId, EventId, EventType};
use crate::store::{
    DeliveryDetail, DeliveryFilter, DeliveryStatus, EventFilter, PausedBy, StoreError, StoredAttempt,
    StoredEvent,
};

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

/// Everything that can go wrong at the admin boundary, mapped to HTTP in one
/// place (`IntoResponse`).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("no such event")]
    EventNotFound,
    #[error("no such endpoint in the running config")]
    EndpointNotFound,
    /// A reload refused: the message names the key.
    #[error("config not reloaded: {0}")]
    ConfigInvalid(String),
    #[error("no such admin route")]
    RouteNotFound,
    #[error("{0}")]
    Conflict(&'static str),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("corrupt stored data: {0}")]
    Corrupt(&'static str),
}

impl AdminError {
    fn status(&self) -> StatusCode {
        match self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::BadRequest(_) | AdminError::ConfigInvalid(_) => StatusCode::BAD_REQUEST,
            AdminError::EventNotFound | AdminError::EndpointNotFound | AdminError::RouteNotFound => {
                StatusCode::NOT_FOUND
            }
            AdminError::Conflict(_) => StatusCode::CONFLICT,
            AdminError::Store(e) if store_unavailable(e) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Store(_) | AdminError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, machine-readable name for the error: clients branch on this,
    /// never on the message text, which may be reworded.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::Unauthorized => "unauthorized",
            AdminError::BadRequest(_) => "bad_request",
            AdminError::EventNotFound => "event_not_found",
            AdminError::EndpointNotFound => "endpoint_not_found",
            AdminError::ConfigInvalid(_) => "config_invalid",
            AdminError::RouteNotFound => "route_not_found",
            AdminError::Conflict(_) => "conflict",
            AdminError::Store(e) if store_unavailable(e) => "store_unavailable",
            AdminError::Store(_) | AdminError::Corrupt(_) => "internal",
        }
    }

    /// What the client is told: never SQL, paths or secrets.
    fn public_message(&self) -> String {
        match self {
            AdminError::Store(e) if store_unavailable(e) => "store unavailable, retry later".to_owned(),
            AdminError::Store(_) | AdminError::Corrupt(_) => "internal error".to_owned(),
            other => other.to_string(),
        }
    }
}

/// Whether a store error is (probably) passing: the connection, not the data.
fn store_unavailable(e: &StoreError) -> bool {
    match e {
        StoreError::Closed => true,
        StoreError::Database(db) => matches!(
            db,
            sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
        ),
        _ => false,
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            // The detail stays in the log.
            tracing::error!(error = %self, "admin request failed");
        }
        let mut response = (
            status,
            Json(serde_json::json!({ "error": self.public_message(), "code": self.code() })),
        )
            .into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"payhook-admin\""),
            );
        }
        response
    }
}

/// The OpenAPI document of this API as written; [`openapi_document`] is what
/// `/admin/openapi.json` serves.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// The served OpenAPI document: [`OPENAPI_JSON`] with every provider enum
/// (the events filter and the event's `provider`) written from the provider
/// registry, so that a new provider needs no edit here.
pub fn openapi_document() -> &'static str {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let mut doc: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
        for listed in provider_enums(&mut doc) {
            *listed = Value::from(crate::domain::ProviderKind::NAMES.to_vec());
        }
        serde_json::to_string_pretty(&doc).expect("a JSON value serializes")
    })
}

/// Each provider enum of the document: the `provider` query parameters'
/// and the `provider` properties of its schemas.
fn provider_enums(doc: &mut Value) -> Vec<&mut Value> {
    let mut enums = Vec::new();
    let Value::Object(doc) = doc else {
        return enums;
    };
    for (key, part) in doc.iter_mut() {
        match (key.as_str(), part) {
            ("paths", Value::Object(paths)) => {
                for operation in paths.values_mut().filter_map(Value::as_object_mut) {
                    for operation in operation.values_mut() {
                        let Some(Value::Array(parameters)) = operation.get_mut("parameters") else {
                            continue;
                        };
                        for parameter in parameters.iter_mut().filter(|p| p["name"] == "provider") {
                            enums.extend(parameter.pointer_mut("/schema/enum"));
                        }
                    }
                }
            }
            ("components", components) => {
                if let Some(Value::Object(schemas)) = components.get_mut("schemas") {
                    for schema in schemas.values_mut() {
                        enums.extend(schema.pointer_mut("/properties/provider/enum"));
                    }
                }
            }
            _ => {}
        }
    }
    enums
}

/// Every operation of the API: (method, path under `/admin`, handler). The
/// router is built from this table, and a test checks it against
/// `openapi.json`, so the document cannot drift from the real routes.
pub fn operations() -> Vec<(Method, &'static str, MethodRouter<AdminState>)> {
    vec![
        (Method::GET, "/events", get(list_events)),
        (Method::GET, "/events/{id}", get(show_event)),
        (Method::POST, "/events/{id}/redeliver", post(redeliver_event)),
        (Method::GET, "/deliveries", get(list_deliveries)),
        (Method::POST, "/deliveries/redeliver", post(redeliver_dead)),
        (Method::GET, "/summary", get(summary)),
        (Method::GET, "/endpoints", get(list_endpoints)),
        (Method::POST, "/endpoints/{id}/pause", post(pause_endpoint)),
        (Method::POST, "/endpoints/{id}/resume", post(resume_endpoint)),
        (Method::POST, "/reload", post(reload)),
        (Method::GET, "/openapi.json", get(openapi)),
    ]
}

/// The `/admin` routes, behind the bearer-token check (which also covers
/// unknown paths, so that they reveal nothing without the token).
pub fn routes(state: AdminState) -> Router<AdminState> {
    let mut router = Router::new();
    for (_, path, handler) in operations() {
        // Two operations on one path merge into one method router.
        router = router.route(path, handler);
    }
    router
        .fallback(|| async { AdminError::RouteNotFound })
        .layer(middleware::from_fn_with_state(state, require_token))
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], openapi_document())
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if authorized(state.admin_token.as_ref(), request.headers()) {
        next.run(request).await
    } else {
        AdminError::Unauthorized.into_response()
    }
}

/// `Authorization: Bearer {token}`, compared in constant time (over digests,
/// so that not even the token's length shows). No configured token: nobody.
fn authorized(expected: Option<&Secret>, headers: &HeaderMap) -> bool {
    let Some(expected) = expected else {
        return false;
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    let Some((scheme, token)) = value.split_at_checked(7) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return false;
    }
    let given = Sha256::digest(token.trim_ascii());
    let wanted = Sha256::digest(expected.expose().as_bytes());
    ct_eq(&given, &wanted)
}

// ---------------------------------------------------------------------------
// Query parameters: strings first, parsed here, so that every bad value gets
// a message naming the parameter. An empty value counts as absent.

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    account: Option<String>,
    provider: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    merchant_order_no: Option<String>,
    q: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    status: Option<String>,
    unresolved: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkQuery {
    status: Option<String>,
    limit: Option<String>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, AdminError> {
    q.map(|Query(t)| t)
        .map_err(|rejection| AdminError::BadRequest(rejection.body_text()))
}

fn present(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

fn limit(value: Option<String>) -> Result<usize, AdminError> {
    match present(value) {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => match text.parse::<usize>() {
            Ok(0) | Err(_) => Err(AdminError::BadRequest(format!(
                "limit must be a number from 1 to {MAX_LIMIT}"
            ))),
            Ok(n) => Ok(n.min(MAX_LIMIT)),
        },
    }
}

/// An instant parameter (`since`, `until`): RFC 3339, as the API answers.
fn instant(name: &str, value: Option<String>) -> Result<Option<i64>, AdminError> {
    let Some(text) = present(value) else {
        return Ok(None);
    };
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|_| {
            AdminError::BadRequest(format!(
                "{name} must be an RFC 3339 instant such as 2026-12-07T08:00:00Z"
            ))
        })
}

/// The longest search text: event ids are 30 characters, and providers'
/// trade and order numbers are shorter than this.
const MAX_SEARCH_CHARS: usize = 128;

/// The `q` parameter: a prefix of an event id, provider trade number or
/// merchant order number.
fn search(value: Option<String>) -> Result<Option<String>, AdminError> {
    let Some(text) = present(value) else {
        return Ok(None);
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.chars().count() > MAX_SEARCH_CHARS || text.chars().any(char::is_control) {
        return Err(AdminError::BadRequest(format!(
            "q must be at most {MAX_SEARCH_CHARS} printable characters (the start of an event id, \
             provider trade number or merchant order number)"
        )));
    }
    Ok(Some(text.to_owned()))
}

fn flag(name: &str, value: Option<String>) -> Result<bool, AdminError> {
    match present(value).as_deref() {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(AdminError::BadRequest(format!("{name} must be true or false"))),
    }
}

// ---------------------------------------------------------------------------
// Responses.

/// Where an event's deliveries stand, for a listing: the deliveries that no
/// redelivery replaced decide (any pending → `pending`, else any dead →
/// `dead`, else `delivered`; `none` without deliveries), and the attempts of
/// all its deliveries are counted.
#[derive(Debug, Serialize)]
struct DeliverySummary {
    status: &'static str,
    deliveries: usize,
    attempts: u64,
}

fn delivery_summaries(details: &[DeliveryDetail]) -> serde_json::Map<String, Value> {
    let mut by_event: std::collections::BTreeMap<&str, Vec<&DeliveryDetail>> = Default::default();
    for d in details {
        by_event.entry(d.event_id.as_str()).or_default().push(d);
    }
    by_event
        .into_iter()
        .map(|(event_id, list)| {
            let current = || list.iter().filter(|d| d.redelivered_as.is_none());
            let has = |status: DeliveryStatus| current().any(|d| d.status == status);
            let status = if has(DeliveryStatus::Pending) {
                "pending"
            } else if has(DeliveryStatus::Dead) {
                "dead"
            } else {
                "delivered"
            };
            let summary = DeliverySummary {
                status,
                deliveries: list.len(),
                attempts: list.iter().map(|d| u64::from(d.attempts)).sum(),
            };
            (event_id.to_owned(), serde_json::json!(summary))
        })
        .collect()
}

fn rfc3339(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn event_json(event: &StoredEvent) -> Result<Value, AdminError> {
    serde_json::from_str(&event.payload).map_err(|_| AdminError::Corrupt("event payload is not JSON"))
}

#[derive(Debug, Serialize)]
struct DeliveryJson {
    id: i64,
    event_id: String,
    endpoint: String,
    status: String,
    attempts: u32,
    /// When the next attempt is due; only while pending.
    next_attempt_at: Option<String>,
    last_error: Option<String>,
    created_at: Option<String>,
    updated_at: Option<String>,
    redelivery_of: Option<i64>,
    redelivered_as: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempts_detail: Option<Vec<AttemptJson>>,
}

#[derive(Debug, Serialize)]
struct AttemptJson {
    attempt: u32,
    started_at: Option<String>,
    duration_ms: i64,
    outcome: String,
    http_status: Option<u16>,
    error: Option<String>,
    /// The start of the merchant's answer, as read (bounded).
    response_excerpt: Option<String>,
}

impl DeliveryJson {
    fn new(d: DeliveryDetail, attempts: Option<Vec<StoredAttempt>>) -> Self {
        let pending = d.status == DeliveryStatus::Pending;
        Self {
            id: d.id,
            event_id: d.event_id,
            endpoint: d.endpoint_id,
            next_attempt_at: if pending {
                rfc3339(d.next_attempt_at_ms)
            } else {
                None
            },
            status: d.status.as_str().to_owned(),
            attempts: d.attempts,
            last_error: d.last_error,
            created_at: rfc3339(d.created_at_ms),
            updated_at: rfc3339(d.updated_at_ms),
            redelivery_of: d.redelivery_of,
            redelivered_as: d.redelivered_as,
            attempts_detail: attempts.map(|list| {
                list.into_iter()
                    .map(|a| AttemptJson {
                        attempt: a.attempt,
                        started_at: rfc3339(a.started_at_ms),
                        duration_ms: a.duration_ms,
                        outcome: a.outcome.as_str().to_owned(),
                        http_status: a.http_status,
                        error: a.error,
                        response_excerpt: a.response_excerpt,
                    })
                    .collect()
            }),
        }
    }
}

// ---------------------------------------------------------------------------
// Handlers.

async fn list_events(
    State(state): State<AdminState>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Value>, AdminError> {
    let q = query(q)?;
    let provider = present(q.provider);
    if let Some(p) = &provider {
        if crate::domain::ProviderKind::parse(p).is_none() {
            return Err(AdminError::BadRequest(format!(
                "provider must be one of {}",
                crate::domain::ProviderKind::listed(None)
            )));
        }
    }
    let event_type = present(q.event_type);
    if let Some(t) = &event_type {
        if EventType::parse(t).is_none() {
            return Err(AdminError::BadRequest(
                "type must be an event type such as payment.succeeded".into(),
            ));
        }
    }
    let cursor = present(q.cursor);
    if let Some(c) = &cursor {
        if EventId::parse(c).is_err() {
            return Err(AdminError::BadRequest(
                "cursor must be an event id (a next_cursor from a previous page)".into(),
            ));
        }
    }
    let limit = limit(q.limit)?;
    let filter = EventFilter {
        account: present(q.account),
        provider,
        event_type,
        merchant_order_no: present(q.merchant_order_no),
        search: search(q.q)?,
        received_since_ms: instant("since", q.since)?,
        received_until_ms: instant("until", q.until)?,
        before: cursor,
        limit: limit + 1,
    };
    let mut events = state.store.list_events(&filter).await?;
    let next_cursor = if events.len() > limit {
        events.truncate(limit);
        events.last().map(|e| e.id.clone())
    } else {
        None
    };
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    let mut summaries = delivery_summaries(&state.store.delivery_details_for_events(&ids).await?);
    for id in &ids {
        summaries
            .entry(id.clone())
            .or_insert_with(|| serde_json::json!({ "status": "none", "deliveries": 0, "attempts": 0 }));
    }
    let events = events.iter().map(event_json).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(serde_json::json!({
        "events": events,
        "delivery_status": summaries,
        "next_cursor": next_cursor,
    })))
}

async fn find_event(state: &AdminState, id: &str) -> Result<StoredEvent, AdminError> {
    if EventId::parse(id).is_err() {
        return Err(AdminError::EventNotFound);
    }
    state.store.event(id).await?.ok_or(AdminError::EventNotFound)
}

async fn show_event(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let event = find_event(&state, &id).await?;
    let mut deliveries = Vec::new();
    for d in state.store.delivery_details_for_event(&event.id).await? {
        let attempts = state.store.attempts_for_delivery(d.id).await?;
        deliveries.push(DeliveryJson::new(d, Some(attempts)));
    }
    Ok(Json(serde_json::json!({
        "event": event_json(&event)?,
        "deliveries": deliveries,
    })))
}

async fn redeliver_event(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let event = find_event(&state, &id).await?;
    let account = AccountId::parse(&event.account).map_err(|_| AdminError::Corrupt("event account"))?;
    let event_type = EventType::parse(&event.event_type).ok_or(AdminError::Corrupt("event type"))?;
    if !event_type.is_deliverable() {
        return Err(AdminError::Conflict("events of this type are never delivered"));
    }
    let endpoints: Vec<EndpointId> = state
        .live
        .current()
        .endpoints
        .iter()
        .filter(|e| e.subscribes(&account, event_type))
        .map(|e| e.id.clone())
        .collect();
    if endpoints.is_empty() {
        return Err(AdminError::Conflict(
            "no configured endpoint subscribes to this event",
        ));
    }
    let created = state
        .store
        .redeliver_event(&event.id, &endpoints, state.outbox)
        .await?;
    state.jobs_committed.notify_one();
    tracing::info!(event_id = %event.id, deliveries = created.len(), "operator redelivery");
    let deliveries: Vec<Value> = created
        .iter()
        .map(|d| serde_json::json!({ "id": d.id, "endpoint": d.endpoint_id, "status": "pending" }))
        .collect();
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "event_id": event.id, "deliveries": deliveries })),
    ))
}

async fn list_deliveries(
    State(state): State<AdminState>,
    q: Result<Query<DeliveriesQuery>, QueryRejection>,
) -> Result<Json<Value>, AdminError> {
    let q = query(q)?;
    let status = match present(q.status) {
        None => None,
        Some(s) => Some(
            DeliveryStatus::parse(&s)
                .ok_or_else(|| AdminError::BadRequest("status must be pending, delivered or dead".into()))?,
        ),
    };
    let before = match present(q.cursor) {
        None => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            AdminError::BadRequest("cursor must be a next_cursor from a previous page".into())
        })?),
    };
    let limit = limit(q.limit)?;
    let filter = DeliveryFilter {
        status,
        unresolved: flag("unresolved", q.unresolved)?,
        before,
        limit: limit + 1,
    };
    let mut deliveries = state.store.list_deliveries(&filter).await?;
    let next_cursor = if deliveries.len() > limit {
        deliveries.truncate(limit);
        deliveries.last().map(|d| d.id.to_string())
    } else {
        None
    };
    let deliveries: Vec<DeliveryJson> = deliveries
        .into_iter()
        .map(|d| DeliveryJson::new(d, None))
        .collect();
    Ok(Json(
        serde_json::json!({ "deliveries": deliveries, "next_cursor": next_cursor }),
    ))
}

/// What the console's header needs: which backends this relay runs on, and
/// the delivery counts from the store (not counters since start-up).
async fn summary(State(state): State<AdminState>) -> Result<Json<Value>, AdminError> {
    let pending = state.store.count_pending().await?;
    let dead = state.store.count_dead_unresolved().await?;
    Ok(Json(serde_json::json!({
        "store": state.store.backend_name(),
        "queue": if state.outbox { "rabbitmq" } else { "embedded" },
        "deliveries": { "pending": pending, "dead": dead },
    })))
}

/// Every configured endpoint: pause, delivery counts and recent health.
async fn list_endpoints(State(state): State<AdminState>) -> Result<Json<Value>, AdminError> {
    let states = state.store.endpoint_states().await?;
    let counts = state.store.delivery_counts_by_endpoint().await?;
    let routing = state.live.current();
    let endpoints: Vec<Value> = routing
        .endpoints
        .iter()
        .map(|e| {
            let id = e.id.as_str();
            let known = states
                .iter()
                .find(|s| s.endpoint_id == id)
                .cloned()
                .unwrap_or_default();
            let (pending, dead) = counts.get(id).copied().unwrap_or_default();
            serde_json::json!({
                "id": id,
                "url": crate::config::redact_url_password(e.url.as_str()),
                "paused": known.paused_at_ms.is_some(),
                "paused_at": known.paused_at_ms.and_then(rfc3339),
                "paused_by": known.paused_by,
                "pending": pending,
                "dead": dead,
                "last_success_at": known.last_success_at_ms.and_then(rfc3339),
                "failing_since": known.failing_since_ms.and_then(rfc3339),
                "consecutive_failures": known.consecutive_failures,
                "auto_pause_after_seconds": e.auto_pause_after.map(|d| d.as_secs()),
            })
        })
        .collect();
    Ok(Json(serde_json::json!({ "endpoints": endpoints })))
}

/// The endpoint `id` of the running config, or 404.
fn configured_endpoint(state: &AdminState, id: &str) -> Result<String, AdminError> {
    state
        .live
        .current()
        .endpoints
        .iter()
        .find(|e| e.id.as_str() == id)
        .map(|e| e.id.to_string())
        .ok_or(AdminError::EndpointNotFound)
}

async fn pause_endpoint(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let id = configured_endpoint(&state, &id)?;
    let now = state.clock.now().timestamp_millis();
    let changed = state.store.pause_endpoint(&id, PausedBy::Operator, now).await?;
    // This process stops at once; the others within `PAUSED_REFRESH`.
    state.paused.set(&id, true);
    state.metrics.set_endpoint_paused(&id, true);
    if changed {
        tracing::warn!(endpoint = %id, "endpoint paused by an operator; its deliveries wait");
    }
    Ok(Json(
        serde_json::json!({ "id": id, "paused": true, "changed": changed }),
    ))
}

async fn resume_endpoint(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, AdminError> {
    let id = configured_endpoint(&state, &id)?;
    let now = state.clock.now().timestamp_millis();
    let changed = state.store.resume_endpoint(&id, state.outbox, now).await?;
    state.paused.set(&id, false);
    state.metrics.set_endpoint_paused(&id, false);
    if changed {
        // The embedded dispatcher takes the waiting jobs at once (the
        // outbox publisher, in RabbitMQ mode, publishes them again).
        state.jobs_committed.notify_one();
        tracing::info!(endpoint = %id, "endpoint resumed by an operator; its waiting deliveries go out in order");
    }
    Ok(Json(
        serde_json::json!({ "id": id, "paused": false, "changed": changed }),
    ))
}

/// Reads the config file again (as `SIGHUP` does) and answers what changed,
/// or 400 with the error, which names the key; a refused file changes
/// nothing.
async fn reload(State(state): State<AdminState>) -> Result<Json<Value>, AdminError> {
    match state
        .live
        .reload_logged(&state.metrics, "POST /admin/reload")
        .await
    {
        Ok(report) => Ok(Json(serde_json::json!({
            "accounts": report.accounts,
            "endpoints": report.endpoints,
            "needs_restart": report.needs_restart,
        }))),
        Err(e) => Err(AdminError::ConfigInvalid(e.to_string())),
    }
}

async fn redeliver_dead(
    State(state): State<AdminState>,
    q: Result<Query<BulkQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let q = query(q)?;
    if present(q.status).as_deref() != Some(DeliveryStatus::Dead.as_str()) {
        return Err(AdminError::BadRequest(
            "bulk redelivery needs status=dead (only dead deliveries can be redelivered in bulk)".into(),
        ));
    }
    // Without a limit, everything in one transaction; with one, a batch, so
    // that the CLI can go page by page and show progress.
    let batch = match present(q.limit) {
        None => None,
        // `limit` caps it at MAX_LIMIT, so it fits a u32.
        Some(text) => Some(u32::try_from(limit(Some(text))?).unwrap_or(u32::MAX)),
    };
    // Only to endpoints that still exist: a removed endpoint has no URL.
    let endpoints: Vec<EndpointId> = state
        .live
        .current()
        .endpoints
        .iter()
        .map(|e| e.id.clone())
        .collect();
    let done = state
        .store
        .redeliver_dead(&endpoints, state.outbox, batch)
        .await?;
    if done.redelivered > 0 {
        state.jobs_committed.notify_one();
    }
    tracing::info!(
        deliveries = done.redelivered,
        remaining = done.remaining,
        "operator bulk redelivery of dead deliveries"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "redelivered": done.redelivered, "remaining": done.remaining })),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn bearer_token_check() {
        let secret = Secret::new("s3cret");
        assert!(authorized(Some(&secret), &headers("Bearer s3cret")));
        assert!(authorized(Some(&secret), &headers("bearer s3cret")));
        assert!(!authorized(Some(&secret), &headers("Bearer s3cre")));
        assert!(!authorized(Some(&secret), &headers("Bearer s3cret2")));
        assert!(!authorized(Some(&secret), &headers("Basic s3cret")));
        assert!(!authorized(Some(&secret), &headers("s3cret")));
        assert!(!authorized(Some(&secret), &HeaderMap::new()));
        assert!(!authorized(None, &headers("Bearer s3cret")));
        assert!(!authorized(None, &headers("Bearer ")));
    }

    /// The router's table and the OpenAPI document name the same operations.
    #[test]
    fn the_openapi_document_matches_the_routes() {
        let doc: Value = serde_json::from_str(OPENAPI_JSON).expect("openapi.json is JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                documented.push((method.to_uppercase(), path.clone()));
            }
        }
        let mut routed: Vec<(String, String)> = operations()
            .into_iter()
            .map(|(method, path, _)| (method.to_string(), format!("/admin{path}")))
            .collect();
        documented.sort();
        routed.sort();
        assert_eq!(documented, routed);
    }

    /// The served document's provider enums are the registry's providers,
    /// in its order, in both places; the file as written names none that
    /// does not exist.
    #[test]
    fn the_openapi_document_lists_every_provider() {
        let names: Vec<Value> = crate::domain::ProviderKind::NAMES
            .iter()
            .map(|name| Value::from(*name))
            .collect();
        let mut served: Value = serde_json::from_str(openapi_document()).expect("JSON");
        let enums = provider_enums(&mut served);
        assert_eq!(enums.len(), 2, "the events filter and the event's field");
        for listed in enums {
            assert_eq!(listed.as_array(), Some(&names), "{listed}");
        }
        let mut written: Value = serde_json::from_str(OPENAPI_JSON).expect("JSON");
        for listed in provider_enums(&mut written) {
            let listed = listed.as_array().expect("an enum is a list");
            assert!(listed.iter().all(|name| names.contains(name)), "{listed:?}");
        }
        // Everything else is served as written.
        let mut written: Value = serde_json::from_str(OPENAPI_JSON).expect("JSON");
        let mut served: Value = serde_json::from_str(openapi_document()).expect("JSON");
        for listed in provider_enums(&mut written) {
            *listed = Value::Null;
        }
        for listed in provider_enums(&mut served) {
            *listed = Value::Null;
        }
        assert_eq!(written, served);
    }

    #[test]
    fn limits() {
        assert_eq!(limit(None).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some(String::new())).unwrap(), DEFAULT_LIMIT);
        assert_eq!(limit(Some("7".into())).unwrap(), 7);
        assert_eq!(limit(Some("100000".into())).unwrap(), MAX_LIMIT);
        assert!(limit(Some("0".into())).is_err());
        assert!(limit(Some("-1".into())).is_err());
        assert!(limit(Some("x".into())).is_err());
    }
}
