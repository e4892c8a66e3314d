//! The HTTP server loop for both listeners. `axum::serve` bounds neither
//! connections nor requests nor how long a client may sit on a connection, so
//! this loop does, for HTTP/1 and HTTP/2 alike:
//!
//! - at most `max_connections` open connections: beyond it the loop stops
//!   accepting, and new connections wait in the kernel's backlog until one
//!   closes (each connection task holds a semaphore permit);
//! - at most `max_in_flight` requests being handled: beyond it the answer is
//!   503 with `Retry-After: 1` at once (a non-blocking `try_acquire`), so a
//!   burst never queues unbounded work;
//! - a deadline for the first request: hyper-util's HTTP/1-or-2 detection
//!   waits for the first bytes before any hyper timeout starts, so a socket
//!   that never sends a byte (or only an HTTP/2 preface) would otherwise be
//!   held forever. The connection task closes a connection that has not
//!   started a request within `first_request_timeout`;
//! - an idle timeout: a connection with no request in flight for
//!   `idle_timeout` is closed gracefully (HTTP/2 gets a GOAWAY), and dropped
//!   if the peer does not finish closing soon after;
//! - hyper's HTTP/1 header-read timeout and HTTP/2 keep-alive pings, which
//!   find dead peers while requests are in flight;
//! - a graceful drain on shutdown, bounded by `drain`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long a connection being closed for idleness (or shutdown) gets to
/// finish the close handshake when no request is in flight. An HTTP/2 peer
/// that never answers the GOAWAY's ping is dropped after this.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub struct ServeOptions {
    /// How long a client may take to send a request's headers; also the
    /// deadline for a new connection's first request.
    pub header_read_timeout: Duration,
    /// How long open connections get to finish after shutdown starts (and
    /// after an idle close starts, if a request slipped in meanwhile).
    pub drain: Duration,
    /// Open connections at most; beyond it new ones wait to be accepted.
    pub max_connections: usize,
    /// Requests being handled at most; beyond it: 503 with `Retry-After`.
    pub max_in_flight: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

/// Serves `router` on `listener` until `shutdown`, then stops accepting and
/// lets in-flight requests finish (at most `drain`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    options: ServeOptions,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper also runs this timer while a keep-alive connection waits for
        // its next request, so idle HTTP/1 connections close after
        // min(header_read_timeout, idle_timeout).
        .header_read_timeout(options.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        // Pings find peers that vanished without a FIN while a request is
        // still open; the idle timeout below covers connections without one.
        .keep_alive_interval(options.idle_timeout.min(Duration::from_secs(30)))
        .keep_alive_timeout(options.header_read_timeout.max(Duration::from_secs(1)));

    let connections = Arc::new(Semaphore::new(options.max_connections));
    let in_flight = Arc::new(Semaphore::new(options.max_in_flight));
    let limits = ConnectionLimits {
        first_request_timeout: options.header_read_timeout,
        idle_timeout: options.idle_timeout,
        drain: options.drain,
    };
    let tasks = TaskTracker::new();
    // Cancelled once the drain period is over: connections still open then
    // are dropped rather than left running after `serve` returns.
    let hard_stop = CancellationToken::new();
    loop {
        // A permit first, then accept: at the limit, connections queue in the
        // kernel's backlog instead of costing a task and a buffer here.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed; stop serving if it were.
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly
                    // instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        tasks.spawn(serve_connection(
            stream,
            builder.clone(),
            router.clone(),
            in_flight.clone(),
            limits,
            shutdown.clone(),
            hard_stop.clone(),
            permit,
        ));
    }
    drop(listener);
    tasks.close();
    tokio::select! {
        _ = tasks.wait() => {}
        // Each connection bounds its own drain; this is the backstop.
        _ = tokio::time::sleep(options.drain + CLOSE_GRACE) => {
            tracing::warn!("connections still open after the drain period; closing them");
            hard_stop.cancel();
        }
    }
}

#[derive(Clone, Copy)]
struct ConnectionLimits {
    first_request_timeout: Duration,
    idle_timeout: Duration,
    drain: Duration,
}

/// What the connection task needs to know about its requests: how many are in
/// flight, whether one ever started, and when the last one ended.
struct Activity {
    epoch: Instant,
    in_flight: AtomicUsize,
    started: AtomicBool,
    /// Milliseconds after `epoch` when the connection last became idle.
    idle_since_ms: AtomicU64,
    /// Wakes the connection task when a request ends, so that its idle
    /// deadline is exact without polling.
    ended: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
            ended: Notify::new(),
        }
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.started.store(true, Ordering::Release);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) > 0
    }

    fn idle_since(&self) -> Instant {
        self.epoch + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
    }
}

/// One request in flight on a connection; dropping it (the response is ready,
/// or the request was cancelled) marks the connection idle again. The
/// response body is not counted: answers here are small and written at once,
/// and a closing connection still gets `CLOSE_GRACE` to flush one.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        let ms = u64::try_from(self.0.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Stored before the decrement: the connection task reads the count
        // first, so it never sees "idle" with a stale time.
        self.0.idle_since_ms.fetch_max(ms, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_one();
    }
}

fn overloaded() -> Response<Body> {
    let mut response = Response::new(Body::from("overloaded, retry shortly\n"));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

enum Phase {
    Open,
    /// A graceful close started at `since`.
    Closing {
        since: Instant,
    },
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    stream: TcpStream,
    builder: Builder<TokioExecutor>,
    router: Router,
    in_flight: Arc<Semaphore>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    // Held for the connection's life: its slot under `max_connections`.
    _permit: OwnedSemaphorePermit,
) {
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new());
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let router = router.clone();
            let in_flight = in_flight.clone();
            let busy = activity.begin();
            async move {
                let _busy = busy;
                // Refused at once rather than queued: a queue would only
                // hold the overload and add latency to every request in it.
                let Ok(_permit) = in_flight.try_acquire_owned() else {
                    return Ok::<_, Infallible>(overloaded());
                };
                router.oneshot(request).await
            }
        })
    };
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);

    let mut phase = Phase::Open;
    let mut deadline = activity.epoch + limits.first_request_timeout;
    loop {
        tokio::select! {
            // Errors here are the client's (reset, timeout, bad framing).
            _ = connection.as_mut() => return,
            _ = hard_stop.cancelled() => return,
            _ = shutdown.cancelled(), if matches!(phase, Phase::Open) => {
                connection.as_mut().graceful_shutdown();
                phase = Phase::Closing { since: Instant::now() };
            }
            _ = activity.ended.notified() => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let now = Instant::now();
        match phase {
            Phase::Open => {
                if activity.busy() {
                    // The request's own timeout bounds it, and its end wakes
                    // this task; the timer is only a backstop.
                    deadline = now + limits.idle_timeout;
                    continue;
                }
                let close_at = if activity.started.load(Ordering::Acquire) {
                    activity.idle_since() + limits.idle_timeout
                } else {
                    // No request head has arrived yet (not even the bytes
                    // that tell HTTP/1 from HTTP/2): the same deadline as for
                    // reading headers.
                    activity.epoch + limits.first_request_timeout
                };
                if now >= close_at {
                    connection.as_mut().graceful_shutdown();
                    phase = Phase::Closing { since: now };
                    deadline = now + CLOSE_GRACE;
                } else {
                    deadline = close_at;
                }
            }
            Phase::Closing { since } => {
                // A request that slipped in gets the drain period, no more.
                let give_up = since + limits.drain.max(CLOSE_GRACE);
                // With nothing in flight, a short grace lets the last answer
                // flush and the close handshake finish; whatever the peer
                // still owes after that (the answer to HTTP/2's GOAWAY ping)
                // is not worth waiting for.
                let quiet_until = activity.idle_since().max(since) + CLOSE_GRACE;
                if now >= give_up || (!activity.busy() && now >= quiet_until) {
                    return;
                }
                deadline = if activity.busy() {
                    give_up
                } else {
                    quiet_until.min(give_up)
                };
            }
        }
    }
}
