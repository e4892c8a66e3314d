//! The load generator: `concurrency` workers each take the next pre-signed
//! request until none is left, each over its own kept-alive connection, and
//! time it.
//! With a rate, request `i` is not sent before `start + i / rate`, and its
//! latency (and its end-to-end time, through the [`SendLog`]) counts from that
//! scheduled instant, not from when a worker got round to sending it: a relay
//! that stalls then pays for every request it held up, as a real provider's
//! callbacks would wait (no coordinated omission).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
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

    /// `at`, in nanoseconds since the epoch; never 0.
    fn ns_of(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos())
            .unwrap_or(u64::MAX)
            .max(1)
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

/// The HTTP client of everything but the load (readiness checks).
pub fn control_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build()
}

/// How long one request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the load goes: one server, and the path of each account.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    host: HeaderValue,
    paths: Arc<Vec<Uri>>,
}

impl Target {
    async fn resolve(urls: &[reqwest::Url]) -> Result<Target, String> {
        let first = urls.first().ok_or("no URL to load")?;
        let host = first.host_str().ok_or("URL without a host")?;
        let port = first.port_or_known_default().ok_or("URL without a port")?;
        if first.scheme() != "http" {
            return Err("the load generator speaks plain http:// only".into());
        }
        let addr = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        let mut paths = Vec::with_capacity(urls.len());
        for url in urls {
            if url.host_str() != Some(host) || url.port_or_known_default() != Some(port) {
                return Err("every account URL must be on the same server".into());
            }
            let path = &url[url::Position::BeforePath..];
            paths.push(Uri::try_from(path).map_err(|e| format!("{path}: {e}"))?);
        }
        let authority = if first.port().is_some() {
            format!("{host}:{port}")
        } else {
            host.to_owned()
        };
        Ok(Target {
            addr,
            host: HeaderValue::from_str(&authority).map_err(|e| e.to_string())?,
            paths: Arc::new(paths),
        })
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A kept-alive HTTP/1.1 connection to the target (hyper directly: the
/// load generator shares the machine with the server, so it must be cheap).
async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends every request of `requests` (to `urls[request.source]`, which must
/// all be on one server) as `plan` says; `log` (if any) records when each
/// was sent.
pub async fn run(
    urls: &[reqwest::Url],
    requests: Arc<Vec<Prepared>>,
    plan: Plan,
    log: Option<Arc<SendLog>>,
) -> Outcome {
    let mut outcome = Outcome::default();
    let target = match Target::resolve(urls).await {
        Ok(t) => t,
        Err(e) => {
            outcome.failed = requests.len();
            outcome.failures.insert("transport".into(), requests.len());
            outcome.first_error = Some(e);
            return outcome;
        }
    };
    // Every connection is made before the clock starts, as every request is
    // signed before it: many connections opened at once can overflow the
    // listen backlog, and a dropped SYN is retried only after a second.
    let workers_count = plan.concurrency.max(1);
    let connections = futures_util::future::join_all((0..workers_count).map(|_| connect(target.addr))).await;
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let mut workers = JoinSet::new();
    for connection in connections {
        let worker = Worker {
            sender: connection.ok(),
            target: target.clone(),
            requests: requests.clone(),
            next: next.clone(),
            rate: plan.rate.filter(|r| *r > 0.0),
            start,
            log: log.clone(),
        };
        workers.spawn(worker.run());
    }
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(part) => outcome.absorb(part),
            Err(e) => outcome.fail("worker".into(), Some(e.to_string())),
        }
    }
    outcome.elapsed = start.elapsed();
    outcome
}

struct Worker {
    /// The worker's connection, if made in advance.
    sender: Option<Sender>,
    target: Target,
    requests: Arc<Vec<Prepared>>,
    next: Arc<AtomicUsize>,
    rate: Option<f64>,
    start: tokio::time::Instant,
    log: Option<Arc<SendLog>>,
}

impl Worker {
    async fn run(mut self) -> Outcome {
        let mut outcome = Outcome::default();
        let mut sender = self.sender.take();
        loop {
            let index = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(request) = self.requests.get(index) else {
                return outcome;
            };
            // Under a rate, the clock starts at the scheduled send time even
            // if this worker was still busy with an earlier request then.
            let began = match self.rate {
                Some(rate) => {
                    let due = self.start + Duration::from_secs_f64(index as f64 / rate);
                    tokio::time::sleep_until(due).await;
                    due.into_std()
                }
                None => Instant::now(),
            };
            if let Some(log) = &self.log {
                log.mark(index, log.ns_of(began));
            }
            match tokio::time::timeout(REQUEST_TIMEOUT, self.send(&mut sender, request)).await {
                Ok(Ok((status, body)))
                    if status.is_success()
                        || (request.expect_refusal && status == StatusCode::BAD_REQUEST) =>
                {
                    outcome.ok += 1;
                    outcome
                        .latencies_ns
                        .push(u64::try_from(began.elapsed().as_nanos()).unwrap_or(u64::MAX));
                    drop(body);
                }
                Ok(Ok((status, body))) => outcome.fail(
                    status.as_u16().to_string(),
                    Some(format!("HTTP {status}: {}", String::from_utf8_lossy(&body))),
                ),
                Ok(Err(e)) => {
                    sender = None;
                    outcome.fail("transport".into(), Some(e));
                }
                Err(_) => {
                    sender = None;
                    outcome.fail("timeout".into(), Some("no answer within 60 s".into()));
                }
            }
        }
    }

    /// Sends one request on the worker's connection (made first if needed)
    /// and reads the whole answer, so the connection can be reused.
    async fn send(
        &self,
        sender: &mut Option<Sender>,
        request: &Prepared,
    ) -> Result<(StatusCode, Bytes), String> {
        let conn = match sender {
            Some(s) if !s.is_closed() => s,
            _ => sender.insert(connect(self.target.addr).await?),
        };
        conn.ready().await.map_err(|e| e.to_string())?;
        let path = self
            .target
            .paths
            .get(request.source)
            .cloned()
            .ok_or("no URL for the request")?;
        let mut http = Request::new(Full::new(request.body.clone()));
        *http.method_mut() = Method::POST;
        *http.uri_mut() = path;
        *http.headers_mut() = request.headers.clone();
        http.headers_mut().insert(HOST, self.target.host.clone());
        let response = conn.send_request(http).await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}
