//! The bench's merchant endpoint: answers 200 at once and, in-process,
//! counts and timestamps every delivery. A delivery is matched to the request
//! that caused it by the run's tag and the nine-digit index after it, which
//! every provider's sample carries into the event's order numbers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use tokio::task::JoinHandle;

use super::load::SendLog;

struct Counts {
    tag: Vec<u8>,
    log: Arc<SendLog>,
    /// First receipt of each request's event, ns on the send log's clock.
    received: Box<[AtomicU64]>,
    delivered: AtomicUsize,
    duplicates: AtomicUsize,
    unmatched: AtomicUsize,
}

/// What the sink saw.
#[derive(Debug, Default)]
pub struct SinkSummary {
    /// Distinct requests whose event arrived.
    pub delivered: usize,
    /// Further copies of an event already received.
    pub duplicates: usize,
    /// Deliveries that belong to no request of this run.
    pub unmatched: usize,
    /// Send-to-receipt latency of each delivered request, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// From the first request sent to the last event received.
    pub span_ns: u64,
}

pub struct Sink {
    pub addr: SocketAddr,
    counts: Arc<Counts>,
    server: JoinHandle<()>,
}

/// The index after the first occurrence of `tag` in `body`.
fn index_in(tag: &[u8], body: &[u8]) -> Option<usize> {
    if tag.is_empty() {
        return None;
    }
    let at = body.windows(tag.len()).position(|w| w == tag)?;
    let digits = body.get(at + tag.len()..at + tag.len() + 9)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

async fn receive(State(counts): State<Arc<Counts>>, body: Bytes) -> StatusCode {
    let now = counts.log.now_ns();
    match index_in(&counts.tag, &body).and_then(|i| counts.received.get(i)) {
        Some(slot) => {
            if slot
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                counts.delivered.fetch_add(1, Ordering::Relaxed);
            } else {
                counts.duplicates.fetch_add(1, Ordering::Relaxed);
            }
        }
        None => {
            counts.unmatched.fetch_add(1, Ordering::Relaxed);
        }
    }
    StatusCode::OK
}

impl Sink {
    /// Listens on `listen` (port 0: any) for the deliveries of requests
    /// tagged `tag`, whose send times `log` records.
    pub async fn start(listen: SocketAddr, tag: &str, log: Arc<SendLog>) -> std::io::Result<Sink> {
        let counts = Arc::new(Counts {
            tag: tag.as_bytes().to_vec(),
            received: (0..log.len()).map(|_| AtomicU64::new(0)).collect(),
            log,
            delivered: AtomicUsize::new(0),
            duplicates: AtomicUsize::new(0),
            unmatched: AtomicUsize::new(0),
        });
        let router = Router::new().fallback(post(receive)).with_state(counts.clone());
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "bench sink failed");
            }
        });
        Ok(Sink { addr, counts, server })
    }

    pub fn url(&self) -> String {
        format!("http://{}/bench", self.addr)
    }

    pub fn delivered(&self) -> usize {
        self.counts.delivered.load(Ordering::Relaxed)
    }

    pub fn summary(&self) -> SinkSummary {
        let c = &self.counts;
        let mut latencies_ns = Vec::with_capacity(c.received.len());
        let mut first_sent = u64::MAX;
        let mut last_received = 0;
        for (index, slot) in c.received.iter().enumerate() {
            if let Some(sent) = c.log.sent_at(index) {
                first_sent = first_sent.min(sent);
            }
            let received = slot.load(Ordering::Relaxed);
            if received == 0 {
                continue;
            }
            last_received = last_received.max(received);
            if let Some(sent) = c.log.sent_at(index) {
                latencies_ns.push(received.saturating_sub(sent));
            }
        }
        SinkSummary {
            delivered: c.delivered.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            unmatched: c.unmatched.load(Ordering::Relaxed),
            latencies_ns,
            span_ns: last_received.saturating_sub(first_sent.min(last_received)),
        }
    }

    pub fn stop(&self) {
        self.server.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::index_in;

    #[test]
    fn finds_the_index_after_the_tag() {
        assert_eq!(index_in(b"PHBX", br#"{"a":"PHBX000000042","b":1}"#), Some(42));
        assert_eq!(index_in(b"PHBX", br#"{"a":"PHBX00004"}"#), None);
        assert_eq!(index_in(b"PHBX", b"nothing"), None);
    }
}
