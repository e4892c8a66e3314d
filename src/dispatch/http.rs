//! The outbound HTTP client: timeouts, no redirects, a small response-read
//! limit, no proxy but the configured one, and the SSRF guard applied where
//! connections are made.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::config::ProxyUrl;
use crate::domain::AttemptOutcome;

/// At most this much of a merchant's answer is read (and kept for operators);
/// the rest is never pulled off the socket.
pub const RESPONSE_READ_LIMIT: usize = 1024;

/// Whether an address is one a public merchant endpoint can never have:
/// loopback, private, link-local (incl. cloud metadata 169.254.169.254),
/// carrier-grade NAT, unspecified, multicast, broadcast, reserved
/// (240.0.0.0/4), documentation, site-local (fec0::/10), or a translation
/// range (NAT64, 6to4) whose IPv4 host the relay cannot vouch for. An IPv4
/// address embedded in an IPv6 one is decoded and judged as IPv4, so that
/// `::ffff:127.0.0.1` or `64:ff9b::a00:1` cannot smuggle in a private target.
pub fn is_private_target(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            if embedded_ipv4(v6).is_some_and(is_private_v4) {
                return true;
            }
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (seg[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated, still routed locally)
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                // NAT64 and 6to4 are refused whole, not only when the decoded
                // address is private: which IPv4 host a translator or a 6to4
                // relay finally reaches is decided outside the relay.
                || is_nat64(v6)
                || seg[0] == 0x2002 // 6to4 2002::/16
                || v6 == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) // AWS IMDS v6
        }
    }
}

/// NAT64: the well-known prefix 64:ff9b::/96 and local-use 64:ff9b:1::/48.
fn is_nat64(v6: Ipv6Addr) -> bool {
    let seg = v6.segments();
    let well_known = seg[2..6] == [0, 0, 0, 0];
    let local_use = seg[2] == 0x0001;
    seg[0] == 0x0064 && seg[1] == 0xff9b && (well_known || local_use)
}

/// The IPv4 address an IPv6 address carries, where the format puts one:
/// IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (deprecated),
/// NAT64 (the last 32 bits) and 6to4 `2002:aabb:ccdd::/48` (bits 16..48).
pub fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let o = v6.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(v4);
    }
    // `::` and `::1` have the compatible form too, but are IPv6's own
    // unspecified and loopback addresses, judged as such by the caller.
    if o[..12].iter().all(|b| *b == 0) && !v6.is_unspecified() && !v6.is_loopback() {
        return Some(last32);
    }
    if is_nat64(v6) {
        return Some(last32);
    }
    if v6.segments()[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
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
        || o[0] >= 240 // 240.0.0.0/4 reserved (and the broadcast address)
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
    /// Whether requests go through `[delivery] proxy`; then the proxy, not
    /// the relay, resolves target names (see `post`).
    proxied: bool,
    timeout: Duration,
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
    /// `proxy` is the only proxy ever used. reqwest would otherwise take one
    /// from `HTTP_PROXY`/`HTTPS_PROXY`/`ALL_PROXY` (either case), so that
    /// anyone who can set the relay's environment could route every signed
    /// delivery through a host of theirs, past the SSRF guard.
    pub fn new(
        timeout: Duration,
        allow_private_targets: bool,
        proxy: Option<&ProxyUrl>,
    ) -> Result<Self, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("payhook/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(30));
        match proxy {
            // Every connection goes to the proxy, so the resolver would only
            // ever resolve the proxy's own name, which the operator chose and
            // which is usually private: no guarded resolver here. Targets are
            // checked in `post` instead.
            Some(proxy) => builder = builder.proxy(reqwest::Proxy::all(proxy.expose().as_str())?),
            None if !allow_private_targets => builder = builder.dns_resolver(Arc::new(GuardedResolver)),
            None => {}
        }
        Ok(Self {
            client: builder.build()?,
            allow_private_targets,
            proxied: proxy.is_some(),
            timeout,
        })
    }

    /// The SSRF guard before a request is sent: a literal private address
    /// is refused; through a proxy, so is a name that the relay resolves to
    /// any private address. A proxy resolves names itself, possibly to other
    /// addresses than the relay sees (its own DNS view, or a later answer),
    /// so this check cannot be exact: the proxy's own egress rules are what
    /// finally bind. A name the relay cannot resolve is left to the proxy
    /// (relays behind an egress proxy often have no outside DNS).
    async fn refused_target(&self, url: &url::Url) -> bool {
        if self.allow_private_targets {
            return false;
        }
        match url.host() {
            Some(url::Host::Ipv4(ip)) => is_private_target(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => is_private_target(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) if self.proxied => {
                let port = url.port_or_known_default().unwrap_or(443);
                match tokio::time::timeout(self.timeout, tokio::net::lookup_host((name, port))).await {
                    Ok(Ok(addrs)) => addrs.into_iter().any(|a| is_private_target(a.ip())),
                    _ => false,
                }
            }
            // Without a proxy the guarded resolver checks each address as
            // the connection is made (which also covers DNS rebinding).
            Some(url::Host::Domain(_)) | None => false,
        }
    }

    pub async fn post(
        &self,
        url: &url::Url,
        headers: &[(&'static str, String)],
        body: Vec<u8>,
    ) -> AttemptResult {
        if self.refused_target(url).await {
            return failure(AttemptOutcome::RefusedTarget, RefusedTarget.to_string());
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
        let (excerpt, body_error) = read_excerpt(response).await;
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

/// `text` as every store can hold it. PostgreSQL's `text` refuses NUL (and
/// with it the whole attempt record, which would leave the job to be sent
/// again at every lease expiry), so NUL becomes U+FFFD, as invalid UTF-8
/// already does in an excerpt; every other character of a Rust string is
/// valid UTF-8 that both stores keep.
pub fn storable_text(text: &str) -> String {
    text.replace('\0', "\u{FFFD}")
}

/// The start of the merchant's answer: only a little of it is read,
/// whatever the merchant sends. The error, if reading it failed.
async fn read_excerpt(response: reqwest::Response) -> (Option<String>, Option<reqwest::Error>) {
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
    let excerpt = (!excerpt.is_empty()).then(|| storable_text(&String::from_utf8_lossy(&excerpt)));
    (excerpt, body_error)
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

    fn refused(ip: &str) -> bool {
        is_private_target(ip.parse().unwrap())
    }

    #[test]
    fn reserved_ipv4_240_slash_4() {
        for ip in ["240.0.0.1", "250.1.2.3", "255.255.255.254", "255.255.255.255"] {
            assert!(refused(ip), "{ip}");
        }
        assert!(!refused("223.255.255.1"));
    }

    #[test]
    fn site_local_fec0_slash_10() {
        for ip in ["fec0::1", "fed0::1", "feff:ffff::1"] {
            assert!(refused(ip), "{ip}");
        }
        // Just below the range: fe80::/10 link-local, refused on its own.
        assert!(refused("febf::1"));
        assert!(!refused("2001:4860::8888"));
    }

    #[test]
    fn nat64_well_known_and_local_use() {
        // 64:ff9b::/96, embedding private and public IPv4 alike.
        for ip in [
            "64:ff9b::7f00:1",
            "64:ff9b::10.0.0.1",
            "64:ff9b::169.254.169.254",
            "64:ff9b::8.8.8.8",
        ] {
            assert!(refused(ip), "{ip}");
        }
        // 64:ff9b:1::/48 (RFC 8215).
        for ip in ["64:ff9b:1::a00:1", "64:ff9b:1:ffff::8.8.8.8"] {
            assert!(refused(ip), "{ip}");
        }
        assert_eq!(
            embedded_ipv4("64:ff9b::c0a8:101".parse().unwrap()),
            Some(Ipv4Addr::new(192, 168, 1, 1))
        );
        // Outside both prefixes.
        assert!(!refused("64:ff9b:2::8.8.8.8"));
    }

    #[test]
    fn six_to_four() {
        // 2002:AABB:CCDD::/48 carries AA.BB.CC.DD in bits 16..48.
        assert_eq!(
            embedded_ipv4("2002:7f00:1::1".parse().unwrap()),
            Some(Ipv4Addr::new(127, 0, 0, 1))
        );
        for ip in [
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "2002:c0a8:101::5",
            "2002:808:808::1",
        ] {
            assert!(refused(ip), "{ip}");
        }
    }

    #[test]
    fn ipv4_mapped_and_compatible_are_judged_as_ipv4() {
        for ip in [
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:240.0.0.1",
            "::127.0.0.1",
            "::10.1.2.3",
            "::169.254.169.254",
            "::0.0.0.2",
        ] {
            assert!(refused(ip), "{ip}");
        }
        assert_eq!(
            embedded_ipv4("::192.168.0.1".parse().unwrap()),
            Some(Ipv4Addr::new(192, 168, 0, 1))
        );
        // A public embedded address is judged as that public address.
        assert!(!refused("::ffff:8.8.8.8"));
        assert!(!refused("::8.8.8.8"));
        // `::` and `::1` are IPv6's own, not IPv4-compatible forms.
        assert_eq!(embedded_ipv4(Ipv6Addr::LOCALHOST), None);
        assert!(refused("::1") && refused("::"));
        // Ordinary global IPv6 carries no IPv4 address.
        assert_eq!(embedded_ipv4("2606:4700::1111".parse().unwrap()), None);
    }

    #[tokio::test]
    async fn through_a_proxy_private_targets_are_still_refused() {
        let proxy = crate::config::Config::from_toml_str(
            "[delivery]\nproxy = \"http://user:pw@127.0.0.1:9\"\n",
            std::path::Path::new("."),
            &|_| None,
        )
        .unwrap()
        .delivery
        .proxy;
        let client = DeliveryClient::new(Duration::from_secs(2), false, proxy.as_ref()).unwrap();
        for url in [
            "http://127.0.0.1/hook",
            "http://[::ffff:10.0.0.1]/hook",
            "http://[64:ff9b::a00:1]/hook",
            "http://localhost:8080/hook",
        ] {
            let url = url::Url::parse(url).unwrap();
            assert!(client.refused_target(&url).await, "{url}");
            let result = client.post(&url, &[], b"{}".to_vec()).await;
            assert_eq!(result.outcome, AttemptOutcome::RefusedTarget, "{url}");
        }
        // Debug never shows the proxy's password.
        let shown = format!("{proxy:?}");
        assert!(shown.contains("127.0.0.1:9") && !shown.contains("pw"), "{shown}");
    }

    #[test]
    fn excerpts_hold_no_nul() {
        assert_eq!(storable_text("a\0b\u{1}"), "a\u{FFFD}b\u{1}");
        let gzip = String::from_utf8_lossy(&[0x1f, 0x8b, 0x08, 0x00, 0x00, 0xff]).into_owned();
        assert!(!storable_text(&gzip).contains('\0'));
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
