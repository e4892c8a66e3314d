//! The request path of `POST /notify/{account}`:
//! read (bounded) -> verify raw bytes -> parse -> one transaction -> answer.

use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::provider::{Answer, Worded};
use super::registry::Account;
use super::{Dialect, RawRequest, Rejection};
use crate::clock::Clock;
use crate::config::EndpointConfig;
use crate::domain::{Event, EventId, Notification};
use crate::live::LiveConfig;
use crate::store::{IngestOutcome, NewEvent, Store};
use crate::telemetry::{IngressOutcome, Metrics};

#[derive(Clone)]
pub struct IngressState {
    /// The accounts and endpoints in force (swapped by a reload); each
    /// request keeps the snapshot it started with.
    pub live: LiveConfig,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    pub max_body_bytes: usize,
    /// Whether to write an outbox row (RabbitMQ mode).
    pub outbox: bool,
    /// Tells the embedded dispatcher that new jobs were committed.
    pub jobs_committed: Arc<tokio::sync::Notify>,
    /// This process's outbox publisher (RabbitMQ mode), handed each new
    /// outbox row in memory after its commit.
    pub publisher: Option<tokio::sync::mpsc::Sender<crate::store::OutboxItem>>,
    /// Permits to verify and parse a callback (CPU work) on the runtime: one
    /// fewer than the cores, so a flood of signed or unsigned callbacks always
    /// leaves a worker thread for the admin port and the embedded dispatcher.
    pub verifying: Arc<tokio::sync::Semaphore>,
}

/// How many callbacks may be verified at once: every core but one.
pub fn verification_permits() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// Every way a callback can end; mapped to the provider's dialect in one place.
#[derive(Debug)]
enum Reply {
    Stored,
    Duplicate,
    Rejected(Rejection),
    Replayed,
    TooLarge,
    /// Over the account's `rate_limit`; retry after this many seconds.
    RateLimited(u64),
    Unavailable,
}

impl Reply {
    fn outcome(&self) -> IngressOutcome {
        match self {
            Reply::Stored => IngressOutcome::Accepted,
            Reply::Duplicate => IngressOutcome::Duplicate,
            Reply::Rejected(Rejection::BadSignature(_)) | Reply::Replayed => IngressOutcome::BadSignature,
            Reply::Rejected(Rejection::Stale(_)) => IngressOutcome::Stale,
            Reply::Rejected(Rejection::BadRequest(_)) => IngressOutcome::BadRequest,
            Reply::Rejected(Rejection::WrongAccount(_)) => IngressOutcome::WrongAccount,
            Reply::RateLimited(_) => IngressOutcome::RateLimited,
            Reply::TooLarge => IngressOutcome::TooLarge,
            Reply::Unavailable => IngressOutcome::Error,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Reply::Stored | Reply::Duplicate => StatusCode::OK,
            Reply::Rejected(
                Rejection::BadSignature(_) | Rejection::Stale(_) | Rejection::WrongAccount(_),
            )
            | Reply::Replayed => StatusCode::UNAUTHORIZED,
            Reply::Rejected(Rejection::BadRequest(_)) => StatusCode::BAD_REQUEST,
            Reply::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reply::RateLimited(_) | Reply::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short, fixed reason (never echoes input, so nothing can be injected).
    fn reason(&self) -> &'static str {
        match self {
            Reply::Stored | Reply::Duplicate => "",
            Reply::Rejected(Rejection::BadSignature(r) | Rejection::Stale(r) | Rejection::BadRequest(r)) => r,
            Reply::Rejected(Rejection::WrongAccount(_)) => "notice is for another account",
            Reply::Replayed => "nonce already used",
            Reply::TooLarge => "body too large",
            Reply::RateLimited(_) => "rate limit exceeded, retry later",
            Reply::Unavailable => "temporarily unavailable, retry later",
        }
    }

    fn into_response(self, dialect: Dialect) -> Response {
        let retry_after = match self {
            Reply::RateLimited(seconds) => Some(seconds),
            _ => None,
        };
        let mut response = self.into_dialect(dialect);
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }

    fn into_dialect(self, dialect: Dialect) -> Response {
        let answer = Answer {
            ok: matches!(self, Reply::Stored | Reply::Duplicate),
            status: self.status(),
            reason: self.reason(),
        };
        let Worded {
            status,
            content_type,
            body,
        } = dialect.word(&answer);
        let mut response = (status, body).into_response();
        if let Some(content_type) = content_type {
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        response
    }
}

// `account` is recorded only once it names a configured account: the raw
// path is attacker-controlled and must not reach the logs (log injection).
#[tracing::instrument(skip_all, fields(account, provider, outcome, event_id, reason))]
pub async fn notify(
    State(state): State<IngressState>,
    Path(account_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let span = tracing::Span::current();
    let routing = state.live.current();
    let Some(account) = routing.accounts.get(&account_id).cloned() else {
        // The label is the fixed word, not the unknown input: arbitrary path
        // text must not create unbounded metric series.
        state
            .metrics
            .ingress_request("unknown", "unknown", IngressOutcome::UnknownAccount);
        span.record("outcome", IngressOutcome::UnknownAccount.as_str());
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "unknown account",
        )
            .into_response();
    };
    let provider = account.provider.kind().as_str();
    span.record("account", account.id.as_str());
    span.record("provider", provider);
    let reply = handle(&state, &account, &routing.endpoints, &headers, body).await;
    let outcome = reply.outcome();
    span.record("outcome", outcome.as_str());
    match &reply {
        Reply::Stored => tracing::debug!("callback accepted"),
        Reply::Duplicate => tracing::debug!("callback is a duplicate; answered as accepted"),
        // The field's name, never its value: the value is the other
        // merchant's, and logs are read by more people than the store.
        Reply::Rejected(Rejection::WrongAccount(field)) => {
            span.record("reason", reply.reason());
            tracing::warn!(
                field = *field,
                "callback refused: a genuine notice for another account"
            );
        }
        _ => {
            span.record("reason", reply.reason());
            tracing::info!("callback refused");
        }
    }
    state
        .metrics
        .ingress_request(provider, account.id.as_str(), outcome);
    state
        .metrics
        .ingress_duration(provider, started.elapsed().as_secs_f64());
    reply.into_response(account.provider.dialect())
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Reply> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(Reply::TooLarge);
    }
    match axum::body::to_bytes(body, limit).await {
        Ok(bytes) => Ok(bytes),
        Err(e) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.downcast_ref::<http_body_util::LengthLimitError>().is_some());
            if too_large {
                Err(Reply::TooLarge)
            } else {
                Err(Reply::Rejected(Rejection::BadRequest("body could not be read")))
            }
        }
    }
}

/// What the store is given for a verified notification: the event, the
/// endpoints subscribed to it, and the raw callback. `None` if the event
/// cannot be serialized (never expected: then the provider retries).
fn new_event(
    state: &IngressState,
    account: &Account,
    endpoints: &[EndpointConfig],
    headers: &HeaderMap,
    bytes: &[u8],
    notification: Notification,
    nonce: Option<String>,
) -> Option<NewEvent> {
    let dedup_extra = notification.dedup_extra.clone();
    let event = Event::new(
        EventId::generate(),
        account.provider.kind(),
        account.id.clone(),
        notification,
        chrono::Utc::now(),
    );
    let endpoints = if event.event_type.is_deliverable() {
        endpoints
            .iter()
            .filter(|e| e.subscribes(&event.account, event.event_type))
            .map(|e| e.id.clone())
            .collect()
    } else {
        Vec::new()
    };
    let payload = serde_json::to_string(&event).ok()?;
    Some(NewEvent {
        event,
        payload,
        dedup_extra,
        raw_body: bytes.to_vec(),
        raw_headers: headers_json(headers, account.provider.signature_headers()),
        endpoints,
        nonce,
        outbox: state.outbox,
    })
}

async fn handle(
    state: &IngressState,
    account: &Account,
    endpoints: &[EndpointConfig],
    headers: &HeaderMap,
    body: Body,
) -> Reply {
    if let Some(limit) = &account.rate_limit {
        if let Err(wait) = limit.try_take(Instant::now()) {
            return Reply::RateLimited(wait.as_secs().max(1));
        }
    }
    let bytes = match read_body(headers, body, state.max_body_bytes).await {
        Ok(b) => b,
        Err(reply) => return reply,
    };
    let request = RawRequest::new(headers, &bytes);
    let accepted = {
        // The semaphore is never closed; if it were, verifying without a
        // permit is still correct, only unbounded.
        let _permit = state.verifying.acquire().await.ok();
        account.provider.accept(&request, state.clock.now())
    };
    let (verified, notification) = match accepted {
        Ok(accepted) => accepted,
        Err(rejection) => return Reply::Rejected(rejection),
    };
    if let Err(rejection) = identifiers_storable(&notification) {
        return Reply::Rejected(rejection);
    }
    let nonce = verified.replay_nonce.map(|n| n.nonce);
    let Some(new) = new_event(state, account, endpoints, headers, &bytes, notification, nonce) else {
        return Reply::Unavailable;
    };
    let event_id = new.event.id.to_string();
    match ingest(state, new).await {
        Ok(IngestOutcome::Accepted { jobs }) => {
            tracing::Span::current().record("event_id", event_id.as_str());
            if jobs > 0 {
                state.jobs_committed.notify_one();
            }
            Reply::Stored
        }
        Ok(IngestOutcome::Duplicate { existing }) => {
            if let Some(id) = existing {
                tracing::Span::current().record("event_id", id.as_str());
            }
            Reply::Duplicate
        }
        Ok(IngestOutcome::Replayed) => Reply::Replayed,
        Err(e) => {
            tracing::error!(error = %e, "could not store callback; provider told to retry");
            Reply::Unavailable
        }
    }
}

/// Stores `new`; a new outbox row goes to this process's publisher. A full
/// or closed hand-over queue drops it: the row waits out its lease for the
/// publisher's scan.
async fn ingest(state: &IngressState, new: NewEvent) -> Result<IngestOutcome, crate::store::StoreError> {
    match &state.publisher {
        Some(publisher) if new.outbox => {
            let (outcome, row) = state.store.ingest_for_publisher(new).await?;
            if let Some(row) = row {
                let _ = publisher.try_send(row);
            }
            Ok(outcome)
        }
        _ => state.store.ingest(new).await,
    }
}

/// A NUL byte in an identifier is refused: PostgreSQL's `text` cannot hold
/// one, so storing would fail and the provider would retry forever.
fn identifiers_storable(n: &crate::domain::Notification) -> Result<(), Rejection> {
    let identifiers = [
        Some(n.provider_trade_no.as_str()),
        n.merchant_order_no.as_deref(),
        n.refund_no.as_deref(),
        n.channel_trade_no.as_deref(),
        n.channel.as_deref(),
        Some(n.currency.as_str()),
        Some(n.dedup_extra.as_str()),
    ];
    if identifiers.into_iter().flatten().any(|id| id.contains('\0')) {
        return Err(Rejection::BadRequest("an identifier contains a NUL byte"));
    }
    Ok(())
}

/// The headers kept with the event for audit: `content-type` and the
/// provider's signature headers, nothing else. Cookies, `Proxy-*` and other
/// systems' credentials that a gateway in front may add never reach the store.
fn headers_json(headers: &HeaderMap, signature_headers: &[&str]) -> String {
    let mut map = serde_json::Map::new();
    for (name, value) in headers {
        let name = name.as_str();
        if name != "content-type" && !signature_headers.contains(&name) {
            continue;
        }
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.insert(name.to_owned(), serde_json::Value::String(text));
    }
    serde_json::Value::Object(map).to_string()
}
