//! The load generator: `concurrency` workers each take the next pre-signed
//! request until none is left, over kept-alive connections, and time it.
//! With a rate, request `i` is not sent before `start + i / rate`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::requests::Prepared;

/// When each request was sent, in nanoseconds since `epoch` (0: not sent).
/// Shared with the sink, which timestamps receipts on the same clock.
pub struct SendLog {
    epoch: Instant,
    sent: Box<[AtomicU64]>,
}

impl SendLog {
    pub fn new(count: usize) -> Self {
        Self {
            epoch: Instant::now(),
            sent: (0..count).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Now, in nanoseconds since the epoch; never 0.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    pub fn len(&self) -> usize {
        self.sent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }

    fn mark(&self, index: usize, at_ns: u64) {
        if let Some(slot) = self.sent.get(index) {
            slot.store(at_ns, Ordering::Relaxed);
        }
    }

    pub fn sent_at(&self, index: usize) -> Option<u64> {
        self.sent
            .get(index)
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|ns| *ns > 0)
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub concurrency: usize,
    /// Requests per second; `None`: as fast as the answers come.
    pub rate: Option<f64>,
}

/// What the load came to.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Answered 2xx.
    pub ok: usize,
    pub failed: usize,
    /// Failures by HTTP status, or `transport` when there was no answer.
    pub failures: BTreeMap<String, usize>,
    pub first_error: Option<String>,
    /// Latencies of the 2xx answers, in nanoseconds.
    pub latencies_ns: Vec<u64>,
    /// From the first send to the last answer.
    pub elapsed: Duration,
}

impl Outcome {
    fn absorb(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.failed += other.failed;
        for (k, v) in other.failures {
            *self.failures.entry(k).or_default() += v;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.latencies_ns.extend(other.latencies_ns);
    }

    fn fail(&mut self, key: String, error: Option<String>) {
        self.failed += 1;
        *self.failures.entry(key).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = error;
        }
    }
}

/// An HTTP/1.1 client that keeps one connection per worker alive.
pub fn client(concurrency: usize) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .build()
}

/// Sends every request of `requests` (to `urls[request.source]`) as `plan`
/// says; `log` (if any) records when each was sent.
pub async fn run(
    client: &reqwest::Client,
    urls: Arc<Vec<reqwest::Url>>,
    requests: Arc<Vec<Prepared>>,
    plan: Plan,
    log: Option<Arc<SendLog>>,
) -> Outcome {
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..plan.concurrency.max(1) {
        workers.spawn(worker(
            client.clone(),
            urls.clone(),
            requests.clone(),
            next.clone(),
            plan.rate,
            start,
            log.clone(),
        ));
    }
    let mut outcome = Outcome::default();
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(part) => outcome.absorb(part),
            Err(e) => outcome.fail("worker".into(), Some(e.to_string())),
        }
    }
    outcome.elapsed = start.elapsed();
    outcome
}

async fn worker(
    client: reqwest::Client,
    urls: Arc<Vec<reqwest::Url>>,
    requests: Arc<Vec<Prepared>>,
    next: Arc<AtomicUsize>,
    rate: Option<f64>,
    start: tokio::time::Instant,
    log: Option<Arc<SendLog>>,
) -> Outcome {
    let mut outcome = Outcome::default();
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(request) = requests.get(index) else {
            return outcome;
        };
        let Some(url) = urls.get(request.source) else {
            outcome.fail("no url".into(), None);
            continue;
        };
        if let Some(rate) = rate.filter(|r| *r > 0.0) {
            let due = start + Duration::from_secs_f64(index as f64 / rate);
            tokio::time::sleep_until(due).await;
        }
        let began = Instant::now();
        if let Some(log) = &log {
            log.mark(index, log.now_ns());
        }
        let sent = client
            .post(url.clone())
            .headers(request.headers.clone())
            .body(request.body.clone())
            .send()
            .await;
        match sent {
            Ok(response) => {
                let status = response.status();
                // Read the answer to the end, so the connection is reused.
                let body = response.bytes().await;
                let latency = u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX);
                match body {
                    Ok(_) if status.is_success() => {
                        outcome.ok += 1;
                        outcome.latencies_ns.push(latency);
                    }
                    Ok(body) => outcome.fail(
                        status.as_u16().to_string(),
                        Some(format!("HTTP {status}: {}", String::from_utf8_lossy(&body))),
                    ),
                    Err(e) => outcome.fail("transport".into(), Some(e.to_string())),
                }
            }
            Err(e) => outcome.fail("transport".into(), Some(e.to_string())),
        }
    }
}
