//! `payhook sink`: a tiny merchant endpoint for trying payhook locally. It
//! checks both delivery signatures, prints one line per delivery and answers
//! 200, or fails every attempt for every Nth event, to show retries and, once
//! the schedule is spent, a dead delivery.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

use crate::crypto::ct_eq;
use crate::dispatch::sign::{webhook_signature, x_signature};

#[derive(Clone)]
struct SinkState {
    secret: Option<String>,
    fail_every: u64,
    count: Arc<AtomicU64>,
    /// Every event seen, by id, and whether it is one that fails: the Nth
    /// distinct event fails on every attempt, retries included, so that it
    /// goes dead even when deliveries arrive one at a time.
    events: Arc<Mutex<HashMap<String, bool>>>,
}

/// A sink for trying payhook is not meant to run for months; past this many
/// events it forgets the old ones.
const REMEMBERED_EVENTS: usize = 100_000;

impl SinkState {
    fn fails(&self, event_id: &str) -> bool {
        if self.fail_every == 0 {
            return false;
        }
        let mut events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(failing) = events.get(event_id) {
            return *failing;
        }
        if events.len() >= REMEMBERED_EVENTS {
            events.clear();
        }
        let nth = events.len() as u64 + 1;
        let failing = nth % self.fail_every == 0;
        events.insert(event_id.to_owned(), failing);
        failing
    }
}

/// Whether both signature header sets verify with `secret`. While the
/// endpoint's secret is rotated `webhook-signature` lists one signature per
/// secret, and one that matches is enough; `X-Signature` is made with the
/// endpoint's first (newest) secret.
pub fn signatures_valid(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let Ok(ts_ms) = h("x-timestamp").parse::<i64>() else {
        return false;
    };
    let Ok(ts_s) = h("webhook-timestamp").parse::<i64>() else {
        return false;
    };
    let x = x_signature(secret, body, h("x-nonce"), ts_ms);
    let w = webhook_signature(secret, h("webhook-id"), ts_s, body);
    let webhook_ok = h("webhook-signature")
        .split(' ')
        .any(|given| ct_eq(w.as_bytes(), given.as_bytes()));
    ct_eq(x.as_bytes(), h("x-signature").as_bytes()) && webhook_ok
}

async fn receive(
    State(state): State<SinkState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let n = state.count.fetch_add(1, Ordering::Relaxed) + 1;
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let signed = match &state.secret {
        Some(secret) if signatures_valid(secret, &headers, &body) => "signatures ok",
        Some(_) => "SIGNATURE MISMATCH",
        None => "signatures not checked",
    };
    let failing = state.fails(event["id"].as_str().unwrap_or("?"));
    println!(
        "#{n} {} {} {} amount={} order={} attempt={} [{signed}]{}",
        event["id"].as_str().unwrap_or("?"),
        event["type"].as_str().unwrap_or("?"),
        event["account"].as_str().unwrap_or("?"),
        event["amount"],
        event["merchant_order_no"].as_str().unwrap_or("-"),
        headers
            .get("x-payhook-attempt")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?"),
        if failing { " -> answering 500" } else { "" },
    );
    if failing {
        (StatusCode::INTERNAL_SERVER_ERROR, "failing on purpose")
    } else {
        (StatusCode::OK, "ok")
    }
}

pub async fn run(listen: SocketAddr, secret: Option<String>, fail_every: u64) -> std::io::Result<()> {
    let state = SinkState {
        secret,
        fail_every,
        count: Arc::new(AtomicU64::new(0)),
        events: Arc::new(Mutex::new(HashMap::new())),
    };
    let router = Router::new().fallback(post(receive)).with_state(state);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("merchant sink listening on http://{}", listener.local_addr()?);
    axum::serve(listener, router).await
}
