//! Headless Chromium for page tests: starts Debian's chromedriver on a free
//! port with a fresh browser profile, and stops it on drop.
//!
//! Without `/usr/bin/chromedriver` a browser test is skipped with a note,
//! unless `PAYHOOK_REQUIRE_ALL=1`, which makes the absence a failure (CI
//! installs the browser and sets it, so that a skip cannot pass as green).
//! `PAYHOOK_CHROMEDRIVER` and `PAYHOOK_CHROMIUM` point elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use crate::helpers::{eventually, free_port};

/// Debian's packages `chromium-driver` and `chromium`.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// The page size tests see and screenshots show: a common laptop screen.
pub const VIEWPORT: (u32, u32) = (1400, 900);

/// A path from `var` (for a machine that keeps them elsewhere), else `default`.
fn path_from(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from)
}

fn chromedriver() -> PathBuf {
    path_from("PAYHOOK_CHROMEDRIVER", CHROMEDRIVER)
}

fn chromium() -> PathBuf {
    path_from("PAYHOOK_CHROMIUM", CHROMIUM)
}

/// Whether a browser test can run here; panics when it must and cannot.
pub fn available() -> bool {
    let (driver, browser) = (chromedriver(), chromium());
    if driver.exists() && browser.exists() {
        return true;
    }
    crate::helpers::skip_or_fail(
        "the browser test",
        &format!(
            "{} or {} is missing (apt-get install -y chromium chromium-driver)",
            driver.display(),
            browser.display()
        ),
    );
    false
}

/// Stops the browser and chromedriver when the test ends, however it ends.
/// Killing chromedriver alone would leave Chromium running (it outlives
/// its driver), so the session is ended first, over plain blocking HTTP
/// since `Drop` cannot await.
struct DriverProcess {
    child: Child,
    port: u16,
    session: Option<String>,
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            end_session(self.port, &session);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DELETE /session/{id}`: chromedriver then quits its Chromium.
fn end_session(port: u16, session: &str) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let request = format!(
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_ok() {
        // Chromedriver answers once the browser is gone; the first bytes
        // of its answer are enough (it may keep the connection open).
        let _ = stream.read(&mut [0u8; 512]);
    }
}

pub struct Browser {
    pub client: Client,
    // Dropped after the client: the session ends before its driver does.
    driver: DriverProcess,
    _dir: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        let dir = tempfile::tempdir().unwrap();
        let profile = dir.path().join("profile");
        let port = free_port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromedriver().display()));
        let mut driver = DriverProcess {
            child: driver,
            port,
            session: None,
        };
        let listening = eventually(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        let log = dir.path().join("chromedriver.log");
        assert!(listening, "chromedriver listens on {port}; log: {}", read(&log));

        // Without the background-networking flags Chromium keeps reaching
        // for Google services, which this closed network refuses.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1400,900",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({
            "goog:chromeOptions": { "binary": chromium(), "args": args },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("chromedriver session: {e}; log: {}", read(&log)));
        driver.session = client.session_id().await.ok().flatten();
        let browser = Browser {
            client,
            driver,
            _dir: dir,
        };
        browser.set_viewport(VIEWPORT.0, VIEWPORT.1).await;
        browser
    }

    /// Sizes the window so that the page itself (the viewport, what a
    /// screenshot shows) is `width`×`height`: `--window-size` counts the
    /// browser's own frame too.
    pub async fn set_viewport(&self, width: u32, height: u32) {
        let frame = self
            .js("return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]")
            .await;
        let extra = |i: usize| u32::try_from(frame[i].as_u64().unwrap_or(0)).unwrap_or(0);
        self.client
            .set_window_size(width + extra(0), height + extra(1))
            .await
            .unwrap();
    }

    /// Ends the browser session (chromedriver then stops on drop).
    pub async fn close(mut self) {
        if self.client.close().await.is_ok() {
            self.driver.session = None;
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap();
    }

    /// Runs `script` (a function body) in the page and returns its value.
    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// Polls `script` until it returns something other than null, false, 0
    /// or "", and returns that; on timeout, panics with the page's text.
    pub async fn wait_for(&self, what: &str, script: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.client.execute(script, vec![]).await {
                Ok(v) if truthy(&v) => return v,
                Ok(v) => v.to_string(),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what} (last: {last})\npage:\n{}",
                    self.page_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element that `css` selects, as a user would (WebDriver
    /// element click), retrying while it is missing or being re-rendered.
    pub async fn click(&self, css: &str) {
        self.with_element(css, |e| async move { e.click().await }).await;
    }

    /// Types `text` into the (cleared) input that `css` selects.
    pub async fn type_into(&self, css: &str, text: &str) {
        self.with_element(css, |e| async move {
            e.clear().await?;
            e.send_keys(text).await
        })
        .await;
    }

    async fn with_element<F, Fut>(&self, css: &str, action: F)
    where
        F: Fn(fantoccini::elements::Element) -> Fut,
        Fut: std::future::Future<Output = Result<(), fantoccini::error::CmdError>>,
    {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let error = match self.client.find(Locator::Css(css)).await {
                Ok(element) => match action(element).await {
                    Ok(()) => return,
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                panic!("cannot act on {css}: {error}\npage:\n{}", self.page_text().await);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn page_text(&self) -> String {
        match self
            .client
            .execute("return document.body.innerText", vec![])
            .await
        {
            Ok(Value::String(text)) => text,
            other => format!("{other:?}"),
        }
    }

    /// Saves a screenshot of the viewport as `{name}.png` in the test output
    /// directory ([`screenshot_dir`]), for a person to look at, and returns
    /// its path and its size in pixels (from the PNG header).
    pub async fn screenshot(&self, name: &str) -> (PathBuf, (u32, u32)) {
        let png = self.client.screenshot().await.unwrap();
        let size = png_size(&png);
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {}", path.display());
        (path, size)
    }
}

/// Where screenshots go: `PAYHOOK_SCREENSHOT_DIR`, else
/// `target/tmp/console-screenshots` (cargo's output directory for
/// integration tests), kept after the run.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("PAYHOOK_SCREENSHOT_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"),
        PathBuf::from,
    )
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    let word = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}
