//! Crash safety: the real `payhook` binary under load, killed with SIGKILL at
//! random moments and restarted, with a merchant failing half its requests
//! for a while with binary (gzip-like, NUL-laden) answers, and slow to answer
//! one request in ten throughout (and, on the scaled backend, RabbitMQ and
//! PostgreSQL each restarted). Then the books must balance.
//!
//! Size: `PAYHOOK_CHAOS_CALLBACKS` (default 5000) and `PAYHOOK_CHAOS_KILLS`
//! (default 3); e.g. `PAYHOOK_CHAOS_CALLBACKS=50000 PAYHOOK_CHAOS_KILLS=10
//! cargo test --test api chaos -- --ignored --nocapture` for a long run.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use futures_util::StreamExt;
use payhook::domain::AmountFen;
use payhook::ingress::{SampleKind, SampleSigner, SampleSpec, SignedRequest};
use rand::Rng;

use crate::helpers::*;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A merchant that records every delivery, takes 300 ms over one request in
/// ten, and, while `flaky`, fails half with a binary body.
#[derive(Clone, Default)]
struct ChaosMerchant {
    /// (provider_trade_no, event id) per delivery that got a 2xx.
    delivered: Arc<Mutex<Vec<(String, String)>>>,
    flaky: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
}

/// What a misconfigured merchant's proxy may answer: gzip's magic bytes, NUL
/// and bytes that are not UTF-8. Every attempt must still be recorded.
const BINARY_ANSWER: &[u8] = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xff\xfe\x00\x01payload\x00";

async fn chaos_merchant_handler(State(m): State<ChaosMerchant>, body: Bytes) -> (StatusCode, Bytes) {
    let (slow, failing) = {
        let mut rng = rand::thread_rng();
        (
            rng.gen_bool(0.1),
            m.flaky.load(Ordering::Relaxed) && rng.gen_bool(0.5),
        )
    };
    if slow {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if failing {
        m.refused.fetch_add(1, Ordering::Relaxed);
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Bytes::from_static(BINARY_ANSWER),
        );
    }
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let trade = event["provider_trade_no"].as_str().unwrap_or("").to_owned();
    let id = event["id"].as_str().unwrap_or("").to_owned();
    m.delivered.lock().unwrap().push((trade, id));
    (StatusCode::OK, Bytes::new())
}

async fn start_chaos_merchant() -> (ChaosMerchant, String) {
    let m = ChaosMerchant::default();
    let router = axum::Router::new()
        .route("/hook", post(chaos_merchant_handler))
        .with_state(m.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    (m, url)
}

/// One callback as its provider sees it: HMAC/MD5 providers sign each retry
/// afresh (new nonce and time, as they do); RSA ones resend the same bytes.
struct Callback {
    account: &'static str,
    trade_no: String,
    presigned: Option<SignedRequest>,
}

struct Signers {
    by_account: HashMap<&'static str, Box<dyn SampleSigner>>,
}

fn spec(trade_no: &str) -> SampleSpec {
    SampleSpec {
        kind: SampleKind::Payment,
        amount: AmountFen::from_fen(1234).unwrap(),
        trade_no: trade_no.to_owned(),
        merchant_order_no: format!("O{trade_no}"),
        now: chrono::Utc::now(),
        forge: false,
    }
}

const ACCOUNTS: [&str; 4] = [
    "dryad-sandbox",
    "dingdang-hmac-sandbox",
    "sqb-md5-sandbox",
    "cbb-sandbox",
];

fn chaos_accounts() -> String {
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("sandbox-keys");
    format!(
        "[[accounts]]\nid = \"dryad-sandbox\"\nprovider = \"dryad\"\nsecret = \"chaos-dryad\"\n\
         [[accounts]]\nid = \"dingdang-hmac-sandbox\"\nprovider = \"dingdang\"\nskill_id = \"sandbox-skill\"\nscheme = \"TSK-HMAC-SHA256-BASIC\"\nsecret = \"chaos-dd\"\n\
         [[accounts]]\nid = \"sqb-md5-sandbox\"\nprovider = \"shouqianba\"\nsign_mode = \"md5\"\nterminal_sn = \"100111220054389553\"\nterminal_key = \"chaos-key\"\n\
         [[accounts]]\nid = \"cbb-sandbox\"\nprovider = \"cbb\"\npublic_key_file = \"{}\"\nsandbox_private_key_file = \"{}\"\n",
        keys.join("cbb_platform_pub.pem").display(),
        keys.join("cbb_sandbox_priv.pem").display()
    )
}

async fn send_until_acknowledged(
    client: &reqwest::Client,
    relay_url: &str,
    signers: &Signers,
    cb: &Callback,
    attempts: &AtomicUsize,
) {
    loop {
        attempts.fetch_add(1, Ordering::Relaxed);
        let signed = match &cb.presigned {
            Some(s) => s.clone(),
            None => signers.by_account[cb.account]
                .sign_sample(&spec(&cb.trade_no))
                .unwrap(),
        };
        let mut req = client
            .post(format!("{relay_url}/notify/{}", cb.account))
            .header("content-type", signed.content_type)
            .timeout(Duration::from_secs(5))
            .body(signed.body);
        for (k, v) in signed.headers {
            req = req.header(k, v);
        }
        if let Ok(resp) = req.send().await {
            if resp.status().is_success() {
                return;
            }
        }
        // Refused, unavailable or no answer: the provider tries again later.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn chaos_run(backend: Backend) {
    let total = env_usize("PAYHOOK_CHAOS_CALLBACKS", 5000);
    let kills = env_usize("PAYHOOK_CHAOS_KILLS", 3);
    let started = Instant::now();
    let (merchant, merchant_url) = start_chaos_merchant().await;
    // The harness app provides a fresh database (and queue prefix) and the
    // config; the relay under test is the real binary.
    let mut harness = spawn_app_with(TestOptions {
        backend,
        accounts: chaos_accounts(),
        delivery: "retry_schedule = [\"100ms\", \"200ms\", \"500ms\", \"1s\"]\nmax_retries = 40\ntimeout = \"2s\"\nconcurrency = 64\nallow_private_targets = true\n".into(),
        ..TestOptions::default()
    })
    .await;
    harness.stop().await;
    // The harness's endpoint, pointed at the chaos merchant.
    let config = harness.config_text.replace(
        &format!("url = \"{}\"", harness.merchant.url),
        &format!("url = \"{merchant_url}\""),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::start(&config, dir.path()).await;

    let signers = Arc::new(Signers {
        by_account: ACCOUNTS
            .iter()
            .map(|account| {
                let account_config = harness.config();
                let account_config = account_config.account(account).unwrap().clone();
                (
                    *account,
                    payhook::ingress::registry::build_sandbox_signer(&account_config).unwrap(),
                )
            })
            .collect(),
    });
    let callbacks: Vec<Callback> = {
        let signers = signers.clone();
        tokio::task::spawn_blocking(move || {
            (0..total)
                .map(|i| {
                    let account = ACCOUNTS[i % ACCOUNTS.len()];
                    let trade_no = format!("C{i:06}");
                    let presigned = (account == "cbb-sandbox")
                        .then(|| signers.by_account[account].sign_sample(&spec(&trade_no)).unwrap());
                    Callback {
                        account,
                        trade_no,
                        presigned,
                    }
                })
                .collect()
        })
        .await
        .unwrap()
    };

    let acknowledged = Arc::new(AtomicUsize::new(0));
    let attempts = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let relay_url = relay.ingress_url.clone();
    let sender = {
        let (acknowledged, attempts, signers) = (acknowledged.clone(), attempts.clone(), signers.clone());
        tokio::spawn(async move {
            futures_util::stream::iter(callbacks)
                .map(|cb| {
                    let (client, url, signers, acknowledged, attempts) = (
                        client.clone(),
                        relay_url.clone(),
                        signers.clone(),
                        acknowledged.clone(),
                        attempts.clone(),
                    );
                    async move {
                        send_until_acknowledged(&client, &url, &signers, &cb, &attempts).await;
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .buffer_unordered(32)
                .collect::<Vec<()>>()
                .await;
        })
    };

    // Chaos, at random points of the run.
    let mut rng_points: Vec<f64> = {
        let mut rng = rand::thread_rng();
        (0..kills).map(|_| rng.gen_range(0.05..0.9)).collect()
    };
    rng_points.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let wait_for = |fraction: f64| {
        let acknowledged = acknowledged.clone();
        async move {
            let target = (total as f64 * fraction) as usize;
            while acknowledged.load(Ordering::Relaxed) < target {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    };
    let mut events = Vec::new();
    let mut broker_restarted = false;
    let mut db_restarted = false;
    for (n, point) in rng_points.iter().enumerate() {
        wait_for(*point).await;
        if n == 0 {
            merchant.flaky.store(true, Ordering::Relaxed);
            events.push(format!("merchant failing 50% from {:.0}%", point * 100.0));
        }
        relay.kill();
        events.push(format!("SIGKILL at {:.0}%", point * 100.0));
        if backend == Backend::Scaled && !broker_restarted {
            tokio::task::spawn_blocking(|| run("rabbitmqctl", &["stop_app"]))
                .await
                .unwrap();
            tokio::task::spawn_blocking(|| run("rabbitmqctl", &["start_app"]))
                .await
                .unwrap();
            broker_restarted = true;
            events.push("RabbitMQ restarted".into());
        } else if backend == Backend::Scaled && !db_restarted {
            tokio::task::spawn_blocking(restart_postgres).await.unwrap();
            db_restarted = true;
            events.push("PostgreSQL restarted".into());
        }
        relay.restart().await;
        if n == rng_points.len() / 2 {
            merchant.flaky.store(false, Ordering::Relaxed);
            events.push("merchant healthy again".into());
        }
    }
    merchant.flaky.store(false, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(120), sender)
        .await
        .expect("every callback acknowledged in the end")
        .unwrap();

    // Every acknowledged callback reaches the merchant.
    let all_delivered = eventually(Duration::from_secs(90), || async {
        let d = merchant.delivered.lock().unwrap();
        d.iter().map(|(t, _)| t.as_str()).collect::<HashSet<_>>().len() >= total
    })
    .await;
    let delivered = merchant.delivered.lock().unwrap().clone();
    let mut ids_per_trade: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (trade, id) in &delivered {
        ids_per_trade
            .entry(trade.as_str())
            .or_default()
            .insert(id.as_str());
    }
    let unique = ids_per_trade.len();
    let duplicates = delivered.len() - unique;
    // The store agrees: nothing left pending once the schedule has passed.
    let store = payhook::store::Store::connect(&harness.config().storage.url)
        .await
        .unwrap();
    let pending = eventually(Duration::from_secs(30), || async {
        store.count_pending().await.unwrap() == 0
    })
    .await;
    let dead = count_dead(&harness.config().storage.url).await;
    println!(
        "chaos ({backend:?}): sent {total} callbacks in {} requests; acknowledged {}; delivered {unique} \
         ({} deliveries, {duplicates} duplicates); merchant refused {}; dead {dead}; pending left: {}; {:?}; took {:?}",
        attempts.load(Ordering::Relaxed),
        acknowledged.load(Ordering::Relaxed),
        delivered.len(),
        merchant.refused.load(Ordering::Relaxed),
        store.count_pending().await.unwrap(),
        events,
        started.elapsed()
    );
    assert_eq!(
        acknowledged.load(Ordering::Relaxed),
        total,
        "every callback was acknowledged in the end"
    );
    assert!(
        all_delivered,
        "every acknowledged callback delivered: {unique} of {total}"
    );
    let split: Vec<_> = ids_per_trade.iter().filter(|(_, ids)| ids.len() > 1).collect();
    assert!(
        split.is_empty(),
        "copies of one notification carry one event id: {split:?}"
    );
    assert!(pending, "no delivery left pending");
    assert_eq!(dead, 0, "nothing died: the schedule outlasts the chaos");
    drop(relay);
    store.close().await;
}

async fn count_dead(url: &str) -> i64 {
    let sql = "SELECT COUNT(*) FROM deliveries WHERE status = 'dead'";
    if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
    } else {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap()
    }
}

fn run(cmd: &str, args: &[&str]) {
    let status = std::process::Command::new(cmd)
        .args(args)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{cmd} {args:?}");
}

fn restart_postgres() {
    let versions = std::fs::read_dir("/etc/postgresql").unwrap();
    let version = versions
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .max()
        .unwrap();
    run(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, "main", "restart"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sqlite_kills_lose_nothing() {
    chaos_run(Backend::Sqlite).await;
}
