//! Deliveries never go through a proxy from the environment; only through
//! `[delivery] proxy`, when set.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::helpers::{
    dryad_callback, eventually, free_port, spawn_app_with, Merchant, TestOptions, DRYAD_SECRET,
    ENDPOINT_SECRET,
};

/// A TCP listener posing as a proxy: it records the head of every request it
/// gets and answers 200, so a delivery through it counts as delivered.
struct FakeProxy {
    url: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl FakeProxy {
    async fn start() -> FakeProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
                            _ => break,
                        }
                    }
                    // Recorded even if empty: a bare connection counts too.
                    record
                        .lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&head).into_owned());
                    let _ = stream
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                        .await;
                });
            }
        });
        FakeProxy { url, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A client for the test's own requests that ignores this process's proxy
/// settings, whatever they are.
fn direct_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

#[tokio::test]
async fn deliveries_ignore_proxies_from_the_environment() {
    let proxy = FakeProxy::start().await;
    let merchant = Merchant::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("relay.toml");
    std::fs::write(
        &config_path,
        format!(
            "[storage]\nurl = \"sqlite://{db}\"\n\n\
             [delivery]\nretry_schedule = [\"50ms\"]\nmax_retries = 3\ntimeout = \"2s\"\nallow_private_targets = true\n\n\
             [[accounts]]\nid = \"dryad-main\"\nprovider = \"dryad\"\nsecret = \"{DRYAD_SECRET}\"\nmax_clock_skew = \"300s\"\n\n\
             [[endpoints]]\nid = \"merchant\"\nurl = \"{url}\"\nsecret = \"{ENDPOINT_SECRET}\"\n",
            db = dir.path().join("payhook.db").display(),
            url = merchant.url,
        ),
    )
    .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let log_path = dir.path().join("relay.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // The proxy variables are set on the child only: tests run on parallel
    // threads of this process, which must not see them.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_payhook"));
    command
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("PAYHOOK_LISTEN", &listen)
        .env("PAYHOOK_ADMIN_LISTEN", &admin)
        .env("PAYHOOK_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(log);
    for var in [
        "PAYHOOK_CONFIG",
        "PAYHOOK_DATABASE_URL",
        "PAYHOOK_AMQP_URL",
        "NO_PROXY",
        "no_proxy",
        "REQUEST_METHOD",
    ] {
        command.env_remove(var);
    }
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        command.env(var, &proxy.url);
    }
    let mut child = KillOnDrop(command.spawn().unwrap());

    let client = direct_client();
    let up = eventually(Duration::from_secs(30), || async {
        client
            .get(format!("http://{admin}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(up, "relay came up; log: {}", logs());

    let signed = dryad_callback("env-proxy-1", 100, chrono::Utc::now());
    let mut request = client
        .post(format!("http://{listen}/notify/dryad-main"))
        .header("content-type", signed.content_type)
        .body(signed.body.clone());
    for (name, value) in &signed.headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let response = request.send().await.unwrap();
    assert_eq!(
        response.status(),
        200,
        "{}",
        response.text().await.unwrap_or_default()
    );

    let got = merchant.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "the merchant got no delivery; log: {}", logs());
    assert_eq!(got[0].json()["provider_trade_no"], "env-proxy-1");
    assert!(
        proxy.seen().is_empty(),
        "the environment's proxy was used: {:?}",
        proxy.seen()
    );
    let _ = child.0.kill();
}

#[tokio::test]
async fn the_configured_proxy_is_used_and_its_password_never_logged() {
    let proxy = FakeProxy::start().await;
    let with_auth = proxy.url.replace("http://", "http://relay:s3cr3t-proxy-pw@");
    let app = spawn_app_with(TestOptions {
        delivery: format!(
            "retry_schedule = [\"50ms\"]\nmax_retries = 3\ntimeout = \"2s\"\nallow_private_targets = true\nproxy = \"{with_auth}\"\n"
        ),
        ..TestOptions::default()
    })
    .await;
    assert!(
        !format!("{:?}", app.config()).contains("s3cr3t-proxy-pw"),
        "Debug of the config shows the proxy's password"
    );
    let (status, _) = app
        .post_signed(
            "dryad-main",
            &dryad_callback("conf-proxy-1", 100, chrono::Utc::now()),
        )
        .await;
    assert_eq!(status, 200);
    let seen = eventually(Duration::from_secs(10), || async { !proxy.seen().is_empty() }).await;
    assert!(seen, "nothing went through the configured proxy");
    let head = proxy.seen().remove(0);
    // Absolute-form request line: the proxy, not the relay, reaches the merchant.
    let merchant_url = &app.merchant.url;
    assert!(
        head.starts_with(&format!("POST {merchant_url} HTTP/1.1")),
        "{head}"
    );
    // The URL's credentials become Proxy-Authorization (basic).
    assert!(
        head.to_ascii_lowercase().contains("proxy-authorization: basic "),
        "{head}"
    );
    assert!(app.merchant.received().is_empty(), "delivered around the proxy");
}

#[test]
fn a_bad_proxy_is_refused_without_echoing_it() {
    let parse = |text: &str| {
        payhook::config::Config::from_toml_str(text, std::path::Path::new("."), &|_| None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    for bad in [
        "socks5://u:hunter2@proxy:1080",
        "proxy:3128",
        "http://",
        "ftp://u:hunter2@proxy",
    ] {
        let err = parse(&format!("[delivery]\nproxy = \"{bad}\"\n"));
        assert!(err.contains("delivery.proxy"), "{bad}: {err}");
        assert!(!err.contains("hunter2"), "{bad}: {err}");
    }
    assert_eq!(parse("[delivery]\nproxy = \"https://proxy.internal:3128\"\n"), "");
}

/// The relay process, killed when the test ends however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
