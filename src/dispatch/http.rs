//! The outbound HTTP client: timeouts, no redirects, a small response-read
//! limit, and the SSRF guard applied where connections are made.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::telemetry::AttemptOutcome;

/// At most this much of a merchant's answer is read (and kept for operators);
/// the rest is never pulled off the socket.
pub const RESPONSE_READ_LIMIT: usize = 1024;

/// Whether an address is one a public merchant endpoint can never have:
/// loopback, private, link-local (incl. cloud metadata 169.254.169.254),
/// carrier-grade NAT, unspecified, multicast, broadcast or documentation.
pub fn is_private_target(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_v4(v4);
            }
            let seg0 = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg0 & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg0 & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (seg0 == 0x2001 && v6.segments()[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) // AWS IMDS v6
        }
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let o = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || v4.is_documentation()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15 benchmarking
}

/// The error a guarded lookup returns; found again in reqwest's error chain.
#[derive(Debug, thiserror::Error)]
#[error("target address refused: it resolves only to private or local addresses")]
pub struct RefusedTarget;

/// A DNS resolver that drops private addresses from every answer. Checking at
/// resolve time (the address actually connected to) also covers DNS
/// rebinding, where a name first resolves public and later private.
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = addrs.filter(|a| !is_private_target(a.ip())).collect();
            if allowed.is_empty() {
                return Err(Box::new(RefusedTarget) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[derive(Clone)]
pub struct DeliveryClient {
    client: reqwest::Client,
    allow_private_targets: bool,
}

/// What one attempt came to.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub outcome: AttemptOutcome,
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
    /// From `Retry-After` on 429/503.
    pub retry_after: Option<Duration>,
}

impl DeliveryClient {
    pub fn new(timeout: Duration, allow_private_targets: bool) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("payhook/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30));
        if !allow_private_targets {
            builder = builder.dns_resolver(Arc::new(GuardedResolver));
        }
        Ok(Self {
            client: builder.build()?,
            allow_private_targets,
        })
    }

    pub async fn post(
        &self,
        url: &url::Url,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> AttemptResult {
        if !self.allow_private_targets {
            let literal = match url.host() {
                Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                _ => None,
            };
            if literal.is_some_and(is_private_target) {
                return failure(AttemptOutcome::RefusedTarget, RefusedTarget.to_string());
            }
        }
        let mut request = self
            .client
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(*name, value.as_str());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return classify_error(&e),
        };
        let status = response.status();
        let retry_after = if status.as_u16() == 429 || status.as_u16() == 503 {
            response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after)
        } else {
            None
        };
        // Read only a little of the answer, whatever the merchant sends.
        let mut excerpt: Vec<u8> = Vec::new();
        let mut stream = response.bytes_stream();
        let mut body_error = None;
        while excerpt.len() < RESPONSE_READ_LIMIT {
            match stream.next().await {
                Some(Ok(chunk)) => {
                    let room = RESPONSE_READ_LIMIT - excerpt.len();
                    excerpt.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Some(Err(e)) => {
                    body_error = Some(e);
                    break;
                }
                None => break,
            }
        }
        drop(stream);
        let excerpt = (!excerpt.is_empty()).then(|| String::from_utf8_lossy(&excerpt).into_owned());
        if status.is_success() {
            // A 2xx counts even if the merchant then stalls its body: the
            // status is the confirmation.
            return AttemptResult {
                outcome: AttemptOutcome::Delivered,
                http_status: Some(status.as_u16()),
                error: None,
                response_excerpt: excerpt,
                retry_after: None,
            };
        }
        AttemptResult {
            outcome: AttemptOutcome::HttpError,
            http_status: Some(status.as_u16()),
            error: Some(match body_error {
                Some(e) if e.is_timeout() => format!("HTTP {} (body timed out)", status.as_u16()),
                _ => format!("HTTP {}", status.as_u16()),
            }),
            response_excerpt: excerpt,
            retry_after,
        }
    }
}

fn failure(outcome: AttemptOutcome, error: String) -> AttemptResult {
    AttemptResult {
        outcome,
        http_status: None,
        error: Some(error),
        response_excerpt: None,
        retry_after: None,
    }
}

fn classify_error(e: &reqwest::Error) -> AttemptResult {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.downcast_ref::<RefusedTarget>().is_some() {
            return failure(AttemptOutcome::RefusedTarget, RefusedTarget.to_string());
        }
        source = err.source();
    }
    if e.is_timeout() {
        failure(AttemptOutcome::Timeout, "timed out".into())
    } else {
        // Connection refused/reset, TLS failure, malformed response: the
        // merchant did not confirm, which is what matters. Only the kind is
        // kept (no URL), so nothing sensitive reaches the store or logs.
        let kind = if e.is_connect() {
            "connection failed"
        } else if e.is_body() || e.is_decode() {
            "response unreadable"
        } else {
            "request failed"
        };
        failure(AttemptOutcome::ConnectError, kind.into())
    }
}

/// `Retry-After` as delay-seconds or an HTTP date; capped at one day.
pub fn parse_retry_after(text: &str) -> Option<Duration> {
    let text = text.trim();
    let delay = if let Ok(secs) = text.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
        let ms = (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_milliseconds();
        Duration::from_millis(u64::try_from(ms).unwrap_or(0))
    };
    Some(delay.min(Duration::from_secs(24 * 3600)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_private_target(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_private_target(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("999999999"), Some(Duration::from_secs(86400)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
