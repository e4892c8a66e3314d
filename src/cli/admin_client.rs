//! `payhook events list|show` and `payhook redeliver`: a small client of the
//! admin API (`/admin/*`), printing tables, or the API's JSON with `--json`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::Value;

use crate::config::{Config, ConfigError};

/// Where the admin API is and how to authenticate; shared by every command.
#[derive(Debug, Clone, Default, Args)]
pub struct AdminArgs {
    /// Base URL of the admin API [default: http://{server.admin_listen} from the config].
    #[arg(long, value_name = "URL")]
    pub admin_url: Option<String>,
    /// Bearer token for /admin/* [default: $PAYHOOK_ADMIN_TOKEN, else server.admin_token from the config].
    #[arg(long, value_name = "TOKEN")]
    pub admin_token: Option<String>,
    /// Config file (TOML) to read the admin address and token from.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the admin API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    #[command(
        after_help = "Examples:\n  payhook events list --config payhook.toml\n  payhook events list --merchant-order-no M-1001\n  payhook events list --search M-10 --since 2026-12-07T00:00:00+08:00\n  payhook events list --provider cbb --type refund.succeeded --limit 20 --json"
    )]
    /// List stored events, newest first.
    List {
        /// Only this account's events (`[[accounts]] id`).
        #[arg(long)]
        account: Option<String>,
        #[arg(
            long,
            help = format!(
                "Only this provider's events: {}",
                crate::domain::ProviderKind::listed(Some("or"))
            )
        )]
        provider: Option<String>,
        /// Only events of this type, e.g. payment.succeeded or refund.succeeded.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        /// Only events for this merchant order number.
        #[arg(long, value_name = "ORDER_NO")]
        merchant_order_no: Option<String>,
        /// Only events whose id, provider trade number or merchant order
        /// number starts with this (case counts).
        #[arg(long, value_name = "PREFIX")]
        search: Option<String>,
        /// Only events received at or after this RFC 3339 instant.
        #[arg(long, value_name = "INSTANT")]
        since: Option<String>,
        /// Only events received before this RFC 3339 instant.
        #[arg(long, value_name = "INSTANT")]
        until: Option<String>,
        /// How many events to show (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after this event id (the `next page` hint of a previous list).
        #[arg(long, value_name = "EVENT_ID")]
        cursor: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    #[command(after_help = "Examples:\n  payhook events show evt_01J... --config payhook.toml")]
    /// Show one event, its deliveries and every attempt.
    Show {
        /// The event id (evt_…).
        event_id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// `payhook deliveries …`.
#[derive(Debug, Subcommand)]
pub enum DeliveriesCommand {
    #[command(
        after_help = "Examples:\n  payhook deliveries list --status dead --config payhook.toml\n  payhook deliveries list --status pending --limit 100 --json"
    )]
    /// List deliveries (one per event and endpoint), newest first.
    List {
        /// Only deliveries in this state.
        #[arg(long, value_enum, ignore_case = true)]
        status: Option<DeliveryState>,
        /// How many to show (at most 500).
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Continue after this delivery id (the `more:` hint of a previous list).
        #[arg(long, value_name = "ID")]
        cursor: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// A delivery's state, as `--status` takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeliveryState {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryState {
    fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }
}

/// `payhook deliveries list`.
pub async fn deliveries(command: DeliveriesCommand) -> Result<(), AdminClientError> {
    let DeliveriesCommand::List {
        status,
        limit,
        cursor,
        admin,
    } = command;
    let client = Client::new(&admin)?;
    let mut query = vec![("limit", limit.to_string())];
    if let Some(status) = status {
        query.push(("status", status.as_str().to_owned()));
    }
    if let Some(cursor) = cursor {
        query.push(("cursor", cursor));
    }
    let page = client
        .call(reqwest::Method::GET, client.url(&["deliveries"], &query))
        .await?;
    show(&admin, &page, || deliveries_table(&page, status));
    Ok(())
}

fn deliveries_table(page: &Value, status: Option<DeliveryState>) -> String {
    let empty = match status {
        Some(s) => format!("no {} deliveries\n", s.as_str()),
        None => "no deliveries\n".to_owned(),
    };
    page_table(
        page,
        "deliveries",
        &empty,
        &[
            "ID",
            "EVENT",
            "ENDPOINT",
            "STATUS",
            "ATTEMPTS",
            "NEXT ATTEMPT",
            "LAST ERROR",
        ],
        |d| {
            vec![
                text(&d["id"]),
                text(&d["event_id"]),
                text(&d["endpoint"]),
                text(&d["status"]),
                text(&d["attempts"]),
                text(&d["next_attempt_at"]),
                text(&d["last_error"]),
            ]
        },
    )
}

#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(
        "no admin token: pass --admin-token, set PAYHOOK_ADMIN_TOKEN, or set server.admin_token in the config"
    )]
    NoToken,
    #[error("--admin-url: `{0}` is not a URL like http://127.0.0.1:9090")]
    BadUrl(String),
    #[error("cannot reach the admin API at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("the admin API refused the token (401): check --admin-token, PAYHOOK_ADMIN_TOKEN or server.admin_token")]
    Unauthorized,
    #[error("the admin API answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("give an EVENT_ID or --dead")]
    NothingToRedeliver,
}

/// A connected admin API: base URL and token.
pub(crate) struct Client {
    base: url::Url,
    token: String,
    http: reqwest::Client,
}

/// An address to connect to for a listen address (`0.0.0.0` means this host).
fn connect_addr(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        let ip = match listen.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        };
        SocketAddr::new(ip, listen.port())
    } else {
        listen
    }
}

impl Client {
    pub(crate) fn new(args: &AdminArgs) -> Result<Self, AdminClientError> {
        let env_token = std::env::var("PAYHOOK_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        let flag_token = args.admin_token.clone().filter(|t| !t.is_empty());
        let token = flag_token.or(env_token);
        // The config is read only for what the flags and environment leave open.
        let config = if args.admin_url.is_none() || token.is_none() {
            Some(Config::load(args.config.as_deref())?)
        } else {
            None
        };
        let base = match (&args.admin_url, &config) {
            (Some(u), _) => u.clone(),
            (None, Some(c)) => format!("http://{}", connect_addr(c.server.admin_listen)),
            (None, None) => String::new(),
        };
        let token = match (token, &config) {
            (Some(t), _) => t,
            (None, Some(c)) => c
                .server
                .admin_token
                .as_ref()
                .map(|s| s.expose().to_owned())
                .ok_or(AdminClientError::NoToken)?,
            (None, None) => return Err(AdminClientError::NoToken),
        };
        let base = url::Url::parse(&base)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
            .ok_or_else(|| AdminClientError::BadUrl(base.clone()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|source| AdminClientError::Unreachable {
                url: base.to_string(),
                source,
            })?;
        Ok(Self { base, token, http })
    }

    /// `{base}/admin/{segments…}?{query}`, each segment escaped.
    pub(crate) fn url(&self, segments: &[&str], query: &[(&str, String)]) -> url::Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("admin").extend(segments);
        }
        if !query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        url
    }

    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        url: url::Url,
    ) -> Result<Value, AdminClientError> {
        let shown = url.to_string();
        let response = self
            .http
            .request(method, url)
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|source| AdminClientError::Unreachable {
                url: self.base.to_string(),
                source,
            })?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|source| AdminClientError::Unreachable {
                url: shown.clone(),
                source,
            })?;
        let json: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if status == reqwest::StatusCode::UNAUTHORIZED {
            return Err(AdminClientError::Unauthorized);
        }
        if !status.is_success() {
            let message = json["error"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| body.chars().take(200).collect());
            return Err(AdminClientError::Api {
                status: status.as_u16(),
                message,
            });
        }
        Ok(json)
    }
}

// ---------------------------------------------------------------------------
// Commands.

pub async fn events(command: EventsCommand) -> Result<(), AdminClientError> {
    match command {
        EventsCommand::List {
            account,
            provider,
            event_type,
            merchant_order_no,
            search,
            since,
            until,
            limit,
            cursor,
            admin,
        } => {
            let client = Client::new(&admin)?;
            let mut query = vec![("limit", limit.to_string())];
            let optional = [
                ("account", account),
                ("provider", provider),
                ("type", event_type),
                ("merchant_order_no", merchant_order_no),
                ("q", search),
                ("since", since),
                ("until", until),
                ("cursor", cursor),
            ];
            query.extend(optional.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
            let page = client
                .call(reqwest::Method::GET, client.url(&["events"], &query))
                .await?;
            show(&admin, &page, || events_table(&page));
            Ok(())
        }
        EventsCommand::Show { event_id, admin } => {
            let client = Client::new(&admin)?;
            let shown = client
                .call(reqwest::Method::GET, client.url(&["events", &event_id], &[]))
                .await?;
            show(&admin, &shown, || event_text(&shown));
            Ok(())
        }
    }
}

/// `payhook redeliver EVENT_ID` or `payhook redeliver --dead`.
pub async fn redeliver(
    event_id: Option<String>,
    dead: bool,
    batch_size: u32,
    admin: AdminArgs,
) -> Result<(), AdminClientError> {
    let client = Client::new(&admin)?;
    let (answer, text) = match (event_id, dead) {
        (Some(id), false) => {
            let answer = client
                .call(
                    reqwest::Method::POST,
                    client.url(&["events", &id, "redeliver"], &[]),
                )
                .await?;
            let text = redelivered_text(&answer);
            (answer, text)
        }
        (None, true) => {
            let n = redeliver_dead_in_batches(&client, batch_size, !admin.json).await?;
            let answer = serde_json::json!({ "redelivered": n, "remaining": 0 });
            let text = if n == 0 {
                "no dead deliveries: nothing to redeliver\n".to_owned()
            } else {
                format!(
                    "redelivered {n} dead deliver{}: each has a new delivery, pending now\n",
                    if n == 1 { "y" } else { "ies" }
                )
            };
            (answer, text)
        }
        _ => return Err(AdminClientError::NothingToRedeliver),
    };
    print!("{}", if admin.json { pretty(&answer) } else { text });
    Ok(())
}

/// Prints the admin API's answer as JSON with `--json`, else as `text`
/// makes it.
pub(crate) fn show(admin: &AdminArgs, answer: &Value, text: impl FnOnce() -> String) {
    print!("{}", if admin.json { pretty(answer) } else { text() });
}

/// Bulk redelivery a batch at a time, so that a large backlog of dead
/// deliveries shows progress and no single transaction grows without bound.
/// Each batch is its own commit: an interrupted run leaves what it did done,
/// and running it again carries on (a redelivered dead delivery is never
/// picked twice).
async fn redeliver_dead_in_batches(
    client: &Client,
    batch_size: u32,
    show_progress: bool,
) -> Result<u64, AdminClientError> {
    let url = client.url(
        &["deliveries", "redeliver"],
        &[("status", "dead".into()), ("limit", batch_size.to_string())],
    );
    let bar = if show_progress {
        indicatif::ProgressBar::new(0)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} dead deliveries redelivered ({eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut total = 0u64;
    loop {
        let answer = client.call(reqwest::Method::POST, url.clone()).await?;
        let done = answer["redelivered"].as_u64().unwrap_or(0);
        let remaining = answer["remaining"].as_u64().unwrap_or(0);
        total += done;
        bar.set_length(total + remaining);
        bar.set_position(total);
        // No progress means the rest cannot be redelivered now (e.g. a
        // concurrent run took them): stop rather than spin.
        if remaining == 0 || done == 0 {
            break;
        }
    }
    bar.finish_and_clear();
    Ok(total)
}

// ---------------------------------------------------------------------------
// Output.

pub(crate) fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

pub(crate) fn text(v: &Value) -> String {
    match v {
        Value::Null => "-".to_owned(),
        Value::String(s) if s.is_empty() => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Fen as yuan: 10001 -> "100.01".
pub fn yuan(fen: &Value) -> String {
    match fen.as_i64() {
        Some(f) => {
            let sign = if f < 0 { "-" } else { "" };
            let f = f.unsigned_abs();
            format!("{sign}{}.{:02}", f / 100, f % 100)
        }
        None => "-".to_owned(),
    }
}

/// The amount an event is about: the refund for refunds (this refund, or
/// the trade's refunds so far where that is all the notice states), else the
/// order total.
fn amount_of(event: &Value) -> String {
    let currency = event["currency"].as_str().unwrap_or("CNY");
    if event["refund_amount"].is_i64() {
        format!(
            "refund {} of {} {currency}",
            yuan(&event["refund_amount"]),
            yuan(&event["amount"])
        )
    } else if event["refunded_total"].is_i64() {
        format!(
            "refunded {} of {} {currency}",
            yuan(&event["refunded_total"]),
            yuan(&event["amount"])
        )
    } else {
        format!("{} {currency}", yuan(&event["amount"]))
    }
}

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.push_str(cell);
                out.push_str(&" ".repeat(pad + 2));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn events_table(page: &Value) -> String {
    page_table(
        page,
        "events",
        "no events\n",
        &[
            "ID", "RECEIVED", "PROVIDER", "ACCOUNT", "TYPE", "AMOUNT", "ORDER NO", "DELIVERY", "ATTEMPTS",
        ],
        |e| {
            let summary = e["id"]
                .as_str()
                .map_or(&Value::Null, |id| &page["delivery_status"][id]);
            vec![
                text(&e["id"]),
                text(&e["received_at"]),
                text(&e["provider"]),
                text(&e["account"]),
                text(&e["type"]),
                amount_of(e),
                text(&e["merchant_order_no"]),
                text(&summary["status"]),
                text(&summary["attempts"]),
            ]
        },
    )
}

/// One page of an admin API list (`page[key]`) as a table, with the hint
/// for the next page; `empty` when the page has nothing.
fn page_table(
    page: &Value,
    key: &str,
    empty: &str,
    header: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> String {
    let items = page[key].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return empty.to_owned();
    }
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    let mut out = table(header, &rows);
    if let Some(next) = page["next_cursor"].as_str() {
        out.push_str(&format!("more: --cursor {next}\n"));
    }
    out
}

fn event_text(shown: &Value) -> String {
    let e = &shown["event"];
    let mut out = String::new();
    let fields = [
        ("id", text(&e["id"])),
        ("type", text(&e["type"])),
        ("provider", text(&e["provider"])),
        ("account", text(&e["account"])),
        ("amount", amount_of(e)),
        ("merchant order no", text(&e["merchant_order_no"])),
        ("provider trade no", text(&e["provider_trade_no"])),
        ("refund no", text(&e["refund_no"])),
        ("channel", text(&e["channel"])),
        ("channel trade no", text(&e["channel_trade_no"])),
        ("occurred at", text(&e["occurred_at"])),
        ("received at", text(&e["received_at"])),
    ];
    for (name, value) in fields {
        out.push_str(&format!("{name:<18} {value}\n"));
    }
    let deliveries = shown["deliveries"].as_array().cloned().unwrap_or_default();
    if deliveries.is_empty() {
        out.push_str("\nno deliveries (no endpoint subscribes, or the type is never delivered)\n");
        return out;
    }
    for d in &deliveries {
        out.push_str(&format!(
            "\ndelivery #{} to {}: {}, {} attempt{}",
            text(&d["id"]),
            text(&d["endpoint"]),
            text(&d["status"]),
            text(&d["attempts"]),
            if d["attempts"].as_u64() == Some(1) {
                ""
            } else {
                "s"
            },
        ));
        if let Some(next) = d["next_attempt_at"].as_str() {
            out.push_str(&format!(", next at {next}"));
        }
        if let Some(of) = d["redelivery_of"].as_i64() {
            out.push_str(&format!(", redelivers #{of}"));
        }
        if let Some(by) = d["redelivered_as"].as_i64() {
            out.push_str(&format!(", redelivered as #{by}"));
        }
        out.push('\n');
        let attempts = d["attempts_detail"].as_array().cloned().unwrap_or_default();
        if !attempts.is_empty() {
            let rows: Vec<Vec<String>> = attempts
                .iter()
                .map(|a| {
                    vec![
                        text(&a["attempt"]),
                        text(&a["started_at"]),
                        format!("{} ms", text(&a["duration_ms"])),
                        text(&a["outcome"]),
                        text(&a["http_status"]),
                        text(&a["error"]),
                    ]
                })
                .collect();
            let t = table(
                &["  #", "STARTED", "TOOK", "OUTCOME", "HTTP", "ERROR"],
                &indent(rows),
            );
            out.push_str(&t);
        }
    }
    out
}

/// Indents the first column by two spaces (under a delivery line).
fn indent(mut rows: Vec<Vec<String>>) -> Vec<Vec<String>> {
    for row in &mut rows {
        if let Some(first) = row.first_mut() {
            *first = format!("  {first}");
        }
    }
    rows
}

fn redelivered_text(answer: &Value) -> String {
    let id = text(&answer["event_id"]);
    let deliveries = answer["deliveries"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "redelivering {id} to {} endpoint{}:\n",
        deliveries.len(),
        if deliveries.len() == 1 { "" } else { "s" }
    );
    for d in &deliveries {
        out.push_str(&format!(
            "  delivery #{} to {}: {}\n",
            text(&d["id"]),
            text(&d["endpoint"]),
            text(&d["status"])
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuan_formatting() {
        assert_eq!(yuan(&Value::from(10001)), "100.01");
        assert_eq!(yuan(&Value::from(5)), "0.05");
        assert_eq!(yuan(&Value::from(-150)), "-1.50");
        assert_eq!(yuan(&Value::Null), "-");
    }

    #[test]
    fn tables_align() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
    }

    #[test]
    fn urls_escape_segments() {
        let client = Client {
            base: url::Url::parse("http://127.0.0.1:9090").unwrap(),
            token: String::new(),
            http: reqwest::Client::new(),
        };
        let u = client.url(&["events", "../x"], &[("type", "payment.succeeded".into())]);
        assert_eq!(
            u.as_str(),
            "http://127.0.0.1:9090/admin/events/..%2Fx?type=payment.succeeded"
        );
        let unspecified: SocketAddr = "0.0.0.0:9090".parse().unwrap();
        assert_eq!(connect_addr(unspecified).to_string(), "127.0.0.1:9090");
    }
}
