//! `spawn_app()`: a relay on port 0 with its own SQLite file, plus a merchant
//! server on 127.0.0.1 that records every delivery and can be told to fail.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use payhook::app::{Application, BuildOptions, Role};
use payhook::clock::{Clock, FixedClock, SystemClock};
use payhook::config::{process_env, Config};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const DRYAD_SECRET: &str = "dryad-test-secret";
pub const ENDPOINT_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// The `server.admin_token` of every `spawn_app` relay.
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// Whether every check must run (`PAYHOOK_REQUIRE_ALL=1`, set by `.ci/run`
/// through `scripts/test.sh`): then a missing tool is a failure, not a skip.
pub fn require_all() -> bool {
    std::env::var("PAYHOOK_REQUIRE_ALL").as_deref() == Ok("1")
}

/// A check that cannot run here: a note on stderr, or a failure under
/// `PAYHOOK_REQUIRE_ALL=1`, so that CI cannot pass on a check that never ran.
#[track_caller]
pub fn skip_or_fail(what: &str, why: &str) {
    if require_all() {
        panic!("PAYHOOK_REQUIRE_ALL=1 but {what} cannot run: {why} (scripts/test.sh installs every tool)");
    }
    eprintln!("note: skipping {what}: {why}; set PAYHOOK_REQUIRE_ALL=1 to make this a failure");
}

pub fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vectors")
}

/// One delivery as the merchant saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("delivery body is JSON")
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("delivery lacks header {name}"))
    }
}

#[derive(Default)]
struct MerchantState {
    received: Vec<Received>,
    /// Statuses (with an optional header) to answer with, in order, before
    /// answering 200.
    script: Vec<(u16, Option<(String, String)>)>,
    always_fail: bool,
}

/// A merchant endpoint on 127.0.0.1.
#[derive(Clone)]
pub struct Merchant {
    pub url: String,
    state: Arc<Mutex<MerchantState>>,
}

async fn merchant_handler(
    State(state): State<Arc<Mutex<MerchantState>>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let mut s = state.lock().unwrap();
    s.received.push(Received {
        headers,
        body,
        at: Instant::now(),
    });
    if s.always_fail {
        return (StatusCode::INTERNAL_SERVER_ERROR, HeaderMap::new(), "down").into_response();
    }
    if !s.script.is_empty() {
        let (status, header) = s.script.remove(0);
        let mut h = HeaderMap::new();
        if let Some((name, value)) = header {
            h.insert(
                axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        return (StatusCode::from_u16(status).unwrap(), h, "not now").into_response();
    }
    (StatusCode::OK, "ok").into_response()
}

impl Merchant {
    pub async fn start() -> Merchant {
        let state = Arc::new(Mutex::new(MerchantState::default()));
        let router = Router::new()
            .route("/hook", post(merchant_handler))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Merchant { url, state }
    }

    /// Answer the next requests with these statuses (then 200 again).
    pub fn fail_next(&self, statuses: &[u16]) {
        let mut s = self.state.lock().unwrap();
        s.script = statuses.iter().map(|st| (*st, None)).collect();
    }

    pub fn answer_next(&self, status: u16, retry_after: &str) {
        self.answer_next_with(status, "retry-after", retry_after);
    }

    pub fn answer_next_with(&self, status: u16, header: &str, value: &str) {
        self.state
            .lock()
            .unwrap()
            .script
            .push((status, Some((header.to_owned(), value.to_owned()))));
    }

    pub fn always_fail(&self, fail: bool) {
        self.state.lock().unwrap().always_fail = fail;
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Waits until at least `n` deliveries arrived.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.received();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Which deployment a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file + embedded queue.
    Sqlite,
    /// PostgreSQL database + RabbitMQ, each test with its own database and
    /// queue prefix.
    Scaled,
}

/// The test broker's URL (`PAYHOOK_TEST_AMQP_URL`). The first call checks
/// that the broker answers on its port, and every call fails at once with
/// how to start it if it does not: a scaled test without a broker would
/// otherwise wait out its deadlines and then fail on a misleading assertion.
pub fn amqp_url() -> String {
    let url = std::env::var("PAYHOOK_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    static REACHABLE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let reachable = REACHABLE.get_or_init(|| broker_reachable(&url));
    if let Err(why) = reachable {
        panic!(
            "the test RabbitMQ is not reachable: {why}. Start it with `rabbitmq-server -detached` \
             (or run scripts/test.sh, which installs and starts it), or point PAYHOOK_TEST_AMQP_URL at one"
        );
    }
    url
}

/// Whether something accepts TCP connections at the URL's host and port.
fn broker_reachable(url: &str) -> Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let parsed =
        url::Url::parse(url).map_err(|e| format!("PAYHOOK_TEST_AMQP_URL {url:?} is not a URL ({e})"))?;
    let host = parsed.host_str().unwrap_or("127.0.0.1");
    let port = parsed.port().unwrap_or(5672);
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}:{port} ({e})"))?
        .collect();
    let mut last = format!("{host}:{port} resolves to no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("nothing answers at {host}:{port} ({e})"),
        }
    }
    Err(last)
}

/// Deletes a test's exchange and queues. Runs on its own thread and runtime
/// (called from `Drop`), and blocks until done so that the relay under test
/// cannot re-declare them meanwhile.
pub fn delete_topology(prefix: String, queues: Vec<String>) {
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        rt.block_on(async move {
            use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
            let Ok(conn) =
                lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default()).await
            else {
                return;
            };
            let Ok(channel) = conn.create_channel().await else {
                return;
            };
            for queue in queues {
                let _ = channel
                    .queue_delete(queue.into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = channel
                .exchange_delete(
                    format!("{prefix}.events").into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
            let _ = conn.close(200, "bye".into()).await;
        });
    })
    .join();
}

pub struct TestOptions {
    pub backend: Backend,
    /// Extra `[server]` lines (TOML).
    pub server: String,
    /// `[[accounts]]` tables (TOML).
    pub accounts: String,
    /// `[delivery]` body (TOML).
    pub delivery: String,
    /// Extra `[storage]` lines beside `url` (TOML), e.g. retention.
    pub storage: String,
    /// Extra `[[endpoints]]` tables beyond the recording merchant.
    pub extra_endpoints: String,
    pub clock: Option<Arc<FixedClock>>,
    pub role: Role,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            accounts: format!(
                "[[accounts]]\nid = \"dryad-main\"\nprovider = \"dryad\"\nsecret = \"{DRYAD_SECRET}\"\nmax_clock_skew = \"300s\"\n"
            ),
            delivery: "retry_schedule = [\"50ms\", \"100ms\", \"150ms\"]\nmax_retries = 3\ntimeout = \"2s\"\nconcurrency = 16\nallow_private_targets = true\n".into(),
            extra_endpoints: String::new(),
            storage: String::new(),
            clock: None,
            role: Role::All,
            backend: Backend::Sqlite,
            server: String::new(),
        }
    }
}

pub struct TestApp {
    pub ingress_url: String,
    pub admin_url: String,
    pub merchant: Merchant,
    pub client: reqwest::Client,
    pub config_text: String,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<()>>,
    clock: Option<Arc<FixedClock>>,
    _dir: tempfile::TempDir,
    store: Option<payhook::store::Store>,
    /// Scaled backend: the test's own queue prefix, deleted on drop.
    pub prefix: Option<String>,
    pg: Option<crate::pg_db::TestDatabase>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(TestOptions {
        backend,
        ..TestOptions::default()
    })
    .await
}

pub async fn spawn_app_with(options: TestOptions) -> TestApp {
    let merchant = Merchant::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (storage_url, queue, pg, prefix) = match options.backend {
        Backend::Sqlite => (
            format!("sqlite://{}", dir.path().join("payhook.db").display()),
            String::new(),
            None,
            None,
        ),
        Backend::Scaled => {
            let db = crate::pg_db::fresh_database().await;
            let prefix = format!("t{}", ulid::Ulid::new().to_string().to_lowercase());
            let queue = format!("[queue]\namqp_url = \"{}\"\nprefix = \"{prefix}\"\n", amqp_url());
            (db.url.clone(), queue, Some(db), Some(prefix))
        }
    };
    let config_text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\n{server}\n\
         [storage]\nurl = \"{storage_url}\"\n{storage}\n{queue}\n[delivery]\n{delivery}\n{accounts}\n\
         [[endpoints]]\nid = \"merchant\"\nurl = \"{url}\"\nsecret = \"{ENDPOINT_SECRET}\"\naccounts = [\"*\"]\nevents = [\"*\"]\n{extra}",
        delivery = options.delivery,
        accounts = options.accounts,
        url = merchant.url,
        extra = options.extra_endpoints,
        server = options.server,
        storage = options.storage,
    );
    let mut app = TestApp {
        ingress_url: String::new(),
        admin_url: String::new(),
        merchant,
        client: reqwest::Client::new(),
        config_text,
        shutdown: CancellationToken::new(),
        handle: None,
        clock: options.clock,
        _dir: dir,
        store: None,
        prefix,
        pg,
    };
    app.start(options.role).await;
    app
}

impl TestApp {
    pub fn config(&self) -> Config {
        Config::from_toml_str(&self.config_text, &vectors_dir(), &process_env).expect("test config is valid")
    }

    async fn start(&mut self, role: Role) {
        let clock: Arc<dyn Clock> = match &self.clock {
            Some(c) => c.clone(),
            None => Arc::new(SystemClock),
        };
        self.shutdown = CancellationToken::new();
        // The file a reload reads: the test's config as it started, which a
        // test may rewrite (`write_config`) before asking for a reload.
        let config_path = self.config_file();
        if !config_path.exists() {
            std::fs::write(&config_path, &self.config_text).unwrap();
        }
        let app = Application::build(
            self.config(),
            BuildOptions {
                role,
                clock,
                shutdown: self.shutdown.clone(),
                config_path: Some(config_path),
            },
        )
        .await
        .expect("relay starts");
        if let Some(addr) = app.ingress_addr() {
            self.ingress_url = format!("http://{addr}");
        }
        self.admin_url = format!("http://{}", app.admin_addr().unwrap());
        self.store = Some(app.store().clone());
        self.handle = Some(tokio::spawn(async move {
            app.run_until_stopped().await.unwrap();
        }));
    }

    /// Graceful stop (as on SIGTERM), waiting until fully drained.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }

    pub async fn restart(&mut self) {
        self.restart_as(Role::All).await;
    }

    /// Graceful stop, then the same relay (database, prefix, config) again
    /// in `role`.
    pub async fn restart_as(&mut self, role: Role) {
        self.stop().await;
        self.start(role).await;
    }

    /// Scaled backend: the test database's name.
    pub fn database_name(&self) -> Option<String> {
        self.pg.as_ref().map(|db| db.name().to_owned())
    }

    /// The running relay's store.
    pub fn store(&self) -> &payhook::store::Store {
        self.store.as_ref().expect("relay is running")
    }

    /// The config file the relay reloads from (`payhook.toml` in the test's
    /// own folder; key files in it must be absolute paths).
    pub fn config_file(&self) -> PathBuf {
        self._dir.path().join("payhook.toml")
    }

    /// Replaces the config file (not the running config: that takes a
    /// reload).
    pub fn write_config(&self, text: &str) {
        std::fs::write(self.config_file(), text).unwrap();
    }

    /// `POST` on the admin API with [`ADMIN_TOKEN`]: the status and the JSON
    /// body (null when it is not JSON).
    pub async fn admin_post(&self, path: &str) -> (u16, serde_json::Value) {
        self.admin_request(reqwest::Method::POST, path).await
    }

    async fn admin_request(&self, method: reqwest::Method, path: &str) -> (u16, serde_json::Value) {
        let response = self
            .client
            .request(method, format!("{}{path}", self.admin_url))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The SQLite file of a [`Backend::Sqlite`] relay.
    pub fn sqlite_file(&self) -> PathBuf {
        self._dir.path().join("payhook.db")
    }

    pub fn set_clock(&self, at: chrono::DateTime<chrono::Utc>) {
        self.clock.as_ref().expect("app built with a fixed clock").set(at);
    }

    pub async fn post_notify(
        &self,
        account: &str,
        content_type: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> (u16, String) {
        let mut req = self
            .client
            .post(format!("{}/notify/{account}", self.ingress_url))
            .header("content-type", content_type)
            .body(body);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    pub async fn post_signed(
        &self,
        account: &str,
        signed: &payhook::ingress::SignedRequest,
    ) -> (u16, String) {
        self.post_notify(account, signed.content_type, &signed.headers, signed.body.clone())
            .await
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin_url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// `GET` on the admin API with [`ADMIN_TOKEN`]: the status and the JSON
    /// body (null when it is not JSON).
    pub async fn admin_get(&self, path: &str) -> (u16, serde_json::Value) {
        self.admin_request(reqwest::Method::GET, path).await
    }

    /// Waits until the admin API lists `n` dead deliveries, and returns the
    /// list (newest first).
    pub async fn wait_for_dead(&self, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, page) = self.admin_get("/admin/deliveries?status=dead").await;
            assert_eq!(status, 200, "{page}");
            let dead = page["deliveries"].as_array().cloned().unwrap_or_default();
            if dead.len() >= n || Instant::now() > deadline {
                return dead;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of one counter series, 0 when absent.
    pub async fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics().await, name, labels)
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(prefix) = self.prefix.take() {
            let queues =
                payhook::queue::topology::Topology::new(&prefix, &self.config().delivery.retry_schedule)
                    .all_queues();
            delete_topology(prefix, queues);
        }
        // The database (if any) is dropped after this, by its own guard.
        let _ = self.pg.take();
    }
}

/// Reads a series from Prometheus text, matching labels in any order.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = if let Some(inner) = rest.strip_prefix('{') {
            let Some((inner, value)) = inner.split_once("} ") else {
                continue;
            };
            (inner, value)
        } else if let Some(value) = rest.strip_prefix(' ') {
            ("", value)
        } else {
            continue;
        };
        let got: BTreeMap<&str, &str> = label_part
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if got == want {
            return value.trim().parse().unwrap();
        }
    }
    0.0
}

/// A signed dryad callback for `dryad-main`, at `now`.
pub fn dryad_callback(
    order_id: &str,
    amount_fen: i64,
    now: chrono::DateTime<chrono::Utc>,
) -> payhook::ingress::SignedRequest {
    use payhook::ingress::{SampleKind, SampleSigner, SampleSpec};
    let signer = payhook::ingress::dryad::DryadSandbox::new(DRYAD_SECRET.as_bytes().to_vec());
    signer
        .sign_sample(&SampleSpec {
            kind: SampleKind::Payment,
            amount: payhook::domain::AmountFen::from_fen(amount_fen).unwrap(),
            trade_no: order_id.to_owned(),
            merchant_order_no: format!("M-{order_id}"),
            now,
            forge: false,
        })
        .unwrap()
}

/// Polls `f` until it returns true or the timeout passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs each named `async fn(Backend)` as two tests: `sqlite::name` (SQLite +
/// embedded queue) and `scaled::name` (PostgreSQL + RabbitMQ).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Sqlite).await
                }
            )+
        }
        mod scaled {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::helpers::Backend::Scaled).await
                }
            )+
        }
    };
}

/// Picks a free port on 127.0.0.1 (for processes that need a fixed address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The real `payhook serve` binary, with its logs captured to a file.
pub struct RelayProcess {
    pub child: std::process::Child,
    pub ingress_url: String,
    pub admin_url: String,
    pub log_path: PathBuf,
    config_path: PathBuf,
    listen: String,
    admin: String,
}

impl RelayProcess {
    /// Starts `payhook serve` with `config_text` (its listen addresses are
    /// replaced by free ports) and waits until it answers.
    pub async fn start(config_text: &str, dir: &Path) -> RelayProcess {
        let config_path = dir.join("relay.toml");
        std::fs::write(&config_path, config_text).unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let admin = format!("127.0.0.1:{}", free_port());
        let log_path = dir.join("relay.log");
        let mut relay = RelayProcess {
            child: Self::spawn(&config_path, &listen, &admin, &log_path),
            ingress_url: format!("http://{listen}"),
            admin_url: format!("http://{admin}"),
            log_path,
            config_path,
            listen,
            admin,
        };
        relay.wait_up().await;
        relay
    }

    fn spawn(config: &Path, listen: &str, admin: &str, log: &Path) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_payhook"))
            .args(["serve", "--config"])
            .arg(config)
            .env("PAYHOOK_LISTEN", listen)
            .env("PAYHOOK_ADMIN_LISTEN", admin)
            .env("PAYHOOK_LOG", "debug")
            .env("PAYHOOK_LOG_FORMAT", "json")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// The process's `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin_url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The file `serve --config` was given (rewrite it, then `SIGHUP`).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub async fn wait_up(&mut self) {
        let client = reqwest::Client::new();
        let url = format!("{}/healthz", self.admin_url);
        let up = eventually(Duration::from_secs(30), || async {
            client
                .get(&url)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        })
        .await;
        assert!(
            up,
            "relay came up; log: {}",
            std::fs::read_to_string(&self.log_path).unwrap_or_default()
        );
    }

    /// SIGKILL: no chance to clean up, as in a crash or an OOM kill.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same addresses, config and log.
    pub async fn restart(&mut self) {
        self.kill();
        self.child = Self::spawn(&self.config_path, &self.listen, &self.admin, &self.log_path);
        self.wait_up().await;
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The system clock in epoch ms, as a relay on the default clock reads it.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
