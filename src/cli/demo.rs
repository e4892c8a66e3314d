//! `payhook demo`: the whole relay in this process, on the embedded default
//! (SQLite in a temporary directory, the embedded queue, ports chosen by the
//! system), with one sandbox account per provider and signing mode and a
//! local merchant. It sends one correctly signed callback per account, a
//! duplicate and a forgery, waits for the deliveries, and prints what the
//! merchant received, what was deduplicated and what was refused.
//!
//! Needs no config, no services and no files: the published sandbox keys are
//! compiled in and written to the temporary directory, which is removed at
//! the end.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use tokio_util::sync::CancellationToken;

use super::admin_client::{table, yuan};
use super::simulate::send;
use super::sink::signatures_valid;
use crate::app::{Application, BuildOptions};
use crate::config::{AccountConfig, Config};
use crate::domain::AmountFen;
use crate::ingress::registry::{build_sandbox_signer, sandbox_accounts_toml, sandbox_key_files};
use crate::ingress::{SampleKind, SampleSpec, SignedRequest};

/// The endpoint secret of the demo merchant (a sandbox value).
const ENDPOINT_SECRET: &str = "whsec_c2FuZGJveC1lbmRwb2ludC1zZWNyZXQ=";

/// How long to wait for every delivery before giving up.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("temporary directory: {0}")]
    Io(#[from] std::io::Error),
    #[error("demo config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("starting the relay: {0}")]
    Startup(#[from] crate::app::StartupError),
    #[error(transparent)]
    Account(#[from] crate::ingress::registry::AccountError),
    #[error("signing: {0}")]
    Sign(#[from] crate::ingress::SignError),
    #[error("amount: {0}")]
    Amount(#[from] crate::domain::AmountError),
    #[error("sending a callback: {0}")]
    Send(#[from] reqwest::Error),
    #[error("the relay did not open its ingress port")]
    NoIngress,
    #[error("the demo did not go as expected: {0}")]
    Unexpected(String),
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "payhook-demo-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        ));
        std::fs::create_dir_all(&path)?;
        Ok(Self(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One request the merchant got.
#[derive(Debug, Clone)]
struct Hit {
    event: serde_json::Value,
    attempt: u32,
    status: u16,
    signatures_ok: bool,
}

/// The demo merchant: records every delivery, answers 500 to the very first
/// one (to show a retry) and 200 to the rest.
#[derive(Clone, Default)]
struct Merchant {
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Merchant {
    fn hits(&self) -> Vec<Hit> {
        match self.hits.lock() {
            Ok(h) => h.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

async fn merchant_receive(State(m): State<Merchant>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let attempt = headers
        .get("x-payhook-attempt")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let signatures_ok = signatures_valid(ENDPOINT_SECRET, &headers, &body);
    let mut hits = match m.hits.lock() {
        Ok(h) => h,
        Err(poisoned) => poisoned.into_inner(),
    };
    let status = if hits.is_empty() {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    hits.push(Hit {
        event,
        attempt,
        status: status.as_u16(),
        signatures_ok,
    });
    status
}

/// A callback the demo sent, and the answer payhook gave the "provider".
struct Sent {
    provider: String,
    account: String,
    trade_no: String,
    status: u16,
    answer: String,
}

fn answer_text(status: u16, body: &str) -> String {
    if body.is_empty() {
        format!("{status} (empty body)")
    } else {
        format!("{status} {body}")
    }
}

pub async fn run() -> Result<(), DemoError> {
    let dir = TempDir::create()?;
    // The published sandbox keys (sandbox-keys/README.md: test values
    // only), and one account per provider and signing mode, from each
    // provider's module; key paths are relative to the temporary directory.
    for (name, pem) in sandbox_key_files() {
        std::fs::write(dir.path().join(name), pem)?;
    }
    let accounts = sandbox_accounts_toml();

    // The merchant.
    let merchant = Merchant::default();
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let merchant_url = format!("http://{}/payhook", listener.local_addr()?);
    let router = Router::new()
        .route("/payhook", post(merchant_receive))
        .with_state(merchant.clone());
    let merchant_stop = stop.clone();
    let merchant_task = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(merchant_stop.cancelled_owned())
            .await;
    });

    // The relay.
    let db = dir.path().join("payhook.db");
    let config_text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nadmin_token = \"demo-{token}\"\n\n\
         [storage]\nurl = \"sqlite://{db}\"\n\n\
         [delivery]\nretry_schedule = [\"300ms\", \"1s\", \"5s\"]\nmax_retries = 3\ntimeout = \"5s\"\n\
         allow_private_targets = true\n{accounts}\n\
         [[endpoints]]\nid = \"demo-merchant\"\nurl = \"{merchant_url}\"\nsecret = \"{ENDPOINT_SECRET}\"\n\
         accounts = [\"*\"]\nevents = [\"payment.*\", \"refund.*\"]\n",
        token = ulid::Ulid::new(),
        db = db.display(),
    );
    // No environment overrides: the demo is the same wherever it runs.
    let config = Config::from_toml_str(&config_text, dir.path(), &|_: &str| None)?;
    let shutdown = CancellationToken::new();
    let app = Application::build(
        config.clone(),
        BuildOptions {
            shutdown: shutdown.clone(),
            ..BuildOptions::default()
        },
    )
    .await?;
    let ingress = app.ingress_addr().ok_or(DemoError::NoIngress)?;
    let relay = tokio::spawn(app.run_until_stopped());

    println!(
        "payhook demo: the whole relay in this process (SQLite + embedded queue in a temporary directory)"
    );
    println!("  ingress  http://{ingress}/notify/{{account}}");
    println!("  merchant {merchant_url}");
    println!();

    let outcome = exchange(&config, ingress, &merchant).await;

    shutdown.cancel();
    let _ = relay.await;
    stop.cancel();
    let _ = merchant_task.await;
    drop(dir);
    let report = outcome?;
    print!("{report}");
    Ok(())
}

/// Sends the callbacks, waits for the deliveries and writes the report.
async fn exchange(config: &Config, ingress: SocketAddr, merchant: &Merchant) -> Result<String, DemoError> {
    let (sent, first) = send_samples(config, ingress).await?;
    // The provider sends the first notification again (providers retry until
    // they like the answer): acknowledged the same way, no second event.
    let (dup_url, dup_request) = first.ok_or_else(|| DemoError::Unexpected("no accounts".into()))?;
    let duplicate = send(&dup_url, &dup_request).await?;
    let forgery = send_forgery(config, ingress).await?;
    let hits = wait_for_deliveries(merchant, sent.iter().filter(|s| s.status == 200).count()).await;
    Report {
        sent: &sent,
        duplicate,
        forgery,
        hits: &hits,
        delivered: confirmed(&hits),
    }
    .render()
}

/// A refused request: the account it was sent to, and the answer.
struct Refused<'a> {
    account: &'a AccountConfig,
    status: u16,
    answer: String,
}

/// One signed payment per account; also the first request, to repeat.
async fn send_samples(
    config: &Config,
    ingress: SocketAddr,
) -> Result<(Vec<Sent>, Option<(String, SignedRequest)>), DemoError> {
    let mut sent: Vec<Sent> = Vec::new();
    let mut first: Option<(String, SignedRequest)> = None;
    for (i, account) in config.accounts.iter().enumerate() {
        let signer = build_sandbox_signer(account)?;
        let id = ulid::Ulid::new().to_string();
        let index = i64::try_from(i).unwrap_or(0);
        let spec = SampleSpec {
            kind: SampleKind::Payment,
            amount: AmountFen::from_fen(1_000 * (index + 1) + 1)?,
            trade_no: format!("DEMO{id}"),
            merchant_order_no: format!("ORDER-{:03}", i + 1),
            now: chrono::Utc::now(),
            forge: false,
        };
        let signed = signer.sign_sample(&spec)?;
        let url = format!("http://{ingress}/notify/{}", account.id);
        let (status, answer) = send(&url, &signed).await?;
        if first.is_none() {
            first = Some((url.clone(), signed));
        }
        sent.push(Sent {
            provider: account.provider().to_string(),
            account: account.id.to_string(),
            trade_no: spec.trade_no,
            status,
            answer,
        });
    }
    Ok((sent, first))
}

/// A forgery: a dryad notification whose signature has one bit flipped.
async fn send_forgery(config: &Config, ingress: SocketAddr) -> Result<Refused<'_>, DemoError> {
    let account = config
        .accounts
        .iter()
        .find(|a| a.provider() == crate::domain::ProviderKind::Dryad)
        .ok_or_else(|| DemoError::Unexpected("no dryad account".into()))?;
    let forged = build_sandbox_signer(account)?.sign_sample(&SampleSpec {
        kind: SampleKind::Payment,
        amount: AmountFen::from_fen(99_999)?,
        trade_no: format!("FORGED{}", ulid::Ulid::new()),
        merchant_order_no: "ORDER-FORGED".into(),
        now: chrono::Utc::now(),
        forge: true,
    })?;
    let (status, answer) = send(&format!("http://{ingress}/notify/{}", account.id), &forged).await?;
    Ok(Refused {
        account,
        status,
        answer,
    })
}

/// Waits until the merchant confirmed `accepted` deliveries, then a little
/// longer, to see that nothing else arrives; gives every request it got.
async fn wait_for_deliveries(merchant: &Merchant, accepted: usize) -> Vec<Hit> {
    let deadline = Instant::now() + DELIVERY_TIMEOUT;
    while confirmed(&merchant.hits()).len() < accepted && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    merchant.hits()
}

/// What the demo saw, for its report.
struct Report<'a> {
    sent: &'a [Sent],
    /// The answer to the repeated first notification.
    duplicate: (u16, String),
    forgery: Refused<'a>,
    hits: &'a [Hit],
    delivered: BTreeMap<String, (serde_json::Value, Hit)>,
}

impl Report<'_> {
    /// The report's tables and summary; an error (after printing them) when
    /// something went wrong.
    fn render(&self) -> Result<String, DemoError> {
        let mut out = format!(
            "Sent {} signed callbacks (one per provider and signing mode), then a duplicate and a forgery.\n\n",
            self.sent.len()
        );
        out.push_str(
            "What the merchant received (both delivery signatures checked with the endpoint secret):\n",
        );
        out.push_str(&self.delivered_table());
        if self.hits.first().is_some_and(|h| h.status != 200) {
            out.push_str("(the merchant answered 500 to the first delivery it got, to show a retry)\n");
        }
        let copies = self.copies_of_first();
        out.push_str("\nDeduplicated (answered like the first, no second event):\n");
        out.push_str(&self.duplicate_table(copies)?);
        out.push_str("\nRefused (never stored, never delivered):\n");
        out.push_str(&table(
            &["PROVIDER", "ACCOUNT", "WHY", "ANSWER"],
            &[vec![
                self.forgery.account.provider().to_string(),
                self.forgery.account.id.to_string(),
                "forged signature".into(),
                answer_text(self.forgery.status, &self.forgery.answer),
            ]],
        ));
        self.summary(&mut out, copies)?;
        Ok(out)
    }

    /// The delivered event of a sent notification.
    fn delivery_of(&self, s: &Sent) -> Option<&(serde_json::Value, Hit)> {
        self.delivered.values().find(|(e, _)| {
            e["account"] == s.account.as_str() && e["provider_trade_no"] == s.trade_no.as_str()
        })
    }

    fn delivered_table(&self) -> String {
        let rows: Vec<Vec<String>> = self
            .sent
            .iter()
            .map(|s| match self.delivery_of(s) {
                Some((event, hit)) => vec![
                    s.provider.clone(),
                    s.account.clone(),
                    event["type"].as_str().unwrap_or("-").to_owned(),
                    format!("{} CNY", yuan(&event["amount"])),
                    event["merchant_order_no"].as_str().unwrap_or("-").to_owned(),
                    hit.attempt.to_string(),
                    if hit.signatures_ok { "ok" } else { "MISMATCH" }.to_owned(),
                    event["id"].as_str().unwrap_or("-").to_owned(),
                ],
                None => vec![
                    s.provider.clone(),
                    s.account.clone(),
                    format!(
                        "NOT DELIVERED (provider was answered {})",
                        answer_text(s.status, &s.answer)
                    ),
                ],
            })
            .collect();
        table(
            &[
                "PROVIDER", "ACCOUNT", "TYPE", "AMOUNT", "ORDER NO", "ATTEMPTS", "SIGNED", "EVENT",
            ],
            &rows,
        )
    }

    /// How many events the first notification (sent twice) became.
    fn copies_of_first(&self) -> usize {
        let Some(first) = self.sent.first() else {
            return 0;
        };
        self.delivered
            .values()
            .filter(|(e, _)| {
                e["account"] == first.account.as_str() && e["provider_trade_no"] == first.trade_no.as_str()
            })
            .count()
    }

    fn duplicate_table(&self, copies: usize) -> Result<String, DemoError> {
        let first = self
            .sent
            .first()
            .ok_or_else(|| DemoError::Unexpected("no accounts".into()))?;
        Ok(table(
            &["PROVIDER", "ACCOUNT", "TRADE NO", "ANSWER", "EVENTS DELIVERED"],
            &[vec![
                first.provider.clone(),
                first.account.clone(),
                first.trade_no.clone(),
                answer_text(self.duplicate.0, &self.duplicate.1),
                copies.to_string(),
            ]],
        ))
    }

    /// The summary line; an error (after printing the report) when a
    /// delivery is missing or a duplicate or forgery got through.
    fn summary(&self, out: &mut String, copies: usize) -> Result<(), DemoError> {
        let forgery_delivered = self
            .hits
            .iter()
            .any(|h| h.event["merchant_order_no"] == "ORDER-FORGED");
        let all_delivered = self.sent.iter().all(|s| self.delivery_of(s).is_some());
        let refused = usize::from(self.forgery.status == 401 && !forgery_delivered);
        let deduplicated = usize::from(self.duplicate.0 == 200 && copies == 1);
        out.push_str(&format!(
            "\nsummary: {} delivered, {deduplicated} deduplicated, {refused} refused\n",
            self.delivered.len()
        ));
        if !all_delivered || deduplicated != 1 || refused != 1 || self.delivered.len() != self.sent.len() {
            print!("{out}");
            return Err(DemoError::Unexpected(
                "see the tables above (a delivery is missing, or a duplicate or forgery got through)".into(),
            ));
        }
        Ok(())
    }
}

/// The events the merchant confirmed (answered 200), by id, with that hit.
fn confirmed(hits: &[Hit]) -> BTreeMap<String, (serde_json::Value, Hit)> {
    hits.iter()
        .filter(|h| h.status == 200)
        .filter_map(|h| {
            h.event["id"]
                .as_str()
                .map(|id| (id.to_owned(), (h.event.clone(), h.clone())))
        })
        .collect()
}
