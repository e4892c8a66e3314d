//! `payhook endpoints list|pause|resume` and `payhook reload`: the admin
//! API's endpoint and reload operations from the command line.

use clap::Subcommand;
use serde_json::Value;

use super::admin_client::{pretty, show, table, text, AdminArgs, AdminClientError, Client};

#[derive(Debug, Subcommand)]
pub enum EndpointsCommand {
    #[command(
        after_help = "Examples:\n  payhook endpoints list --config payhook.toml\n  payhook endpoints list --json"
    )]
    /// Every configured endpoint: paused or not, pending and dead
    /// deliveries, last success and consecutive failures.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    #[command(after_help = "Examples:\n  payhook endpoints pause shop-backend --config payhook.toml")]
    /// Pause an endpoint: its deliveries wait (no attempt, no retry used, none
    /// goes dead) until it is resumed. Every process of the relay follows.
    Pause {
        /// The endpoint's `[[endpoints]] id`.
        endpoint: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    #[command(after_help = "Examples:\n  payhook endpoints resume shop-backend --config payhook.toml")]
    /// Resume a paused endpoint: its waiting deliveries go out in the order
    /// they became due.
    Resume {
        /// The endpoint's `[[endpoints]] id`.
        endpoint: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

pub async fn endpoints(command: EndpointsCommand) -> Result<(), AdminClientError> {
    match command {
        EndpointsCommand::List { admin } => {
            let client = Client::new(&admin)?;
            let page = client
                .call(reqwest::Method::GET, client.url(&["endpoints"], &[]))
                .await?;
            show(&admin, &page, || endpoints_table(&page));
            Ok(())
        }
        EndpointsCommand::Pause { endpoint, admin } => switch(&endpoint, "pause", &admin).await,
        EndpointsCommand::Resume { endpoint, admin } => switch(&endpoint, "resume", &admin).await,
    }
}

async fn switch(endpoint: &str, action: &str, admin: &AdminArgs) -> Result<(), AdminClientError> {
    let client = Client::new(admin)?;
    let answer = client
        .call(
            reqwest::Method::POST,
            client.url(&["endpoints", endpoint, action], &[]),
        )
        .await?;
    if admin.json {
        print!("{}", pretty(&answer));
        return Ok(());
    }
    let changed = answer["changed"].as_bool().unwrap_or(false);
    match (action, changed) {
        ("pause", true) => println!("paused {endpoint}: its deliveries wait until it is resumed"),
        ("pause", false) => println!("{endpoint} was already paused"),
        (_, true) => println!("resumed {endpoint}: its waiting deliveries go out in order"),
        (_, false) => println!("{endpoint} was not paused"),
    }
    Ok(())
}

fn endpoints_table(page: &Value) -> String {
    let rows: Vec<Vec<String>> = page["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let state = match (e["paused"].as_bool(), e["paused_by"].as_str()) {
                (Some(true), Some(by)) => format!("paused ({by})"),
                (Some(true), None) => "paused".to_owned(),
                _ => "active".to_owned(),
            };
            vec![
                text(&e["id"]),
                state,
                text(&e["pending"]),
                text(&e["dead"]),
                text(&e["last_success_at"]),
                text(&e["consecutive_failures"]),
                text(&e["url"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        return "no endpoints configured\n".to_owned();
    }
    table(
        &[
            "ID",
            "STATE",
            "PENDING",
            "DEAD",
            "LAST SUCCESS",
            "FAILURES",
            "URL",
        ],
        &rows,
    )
}

/// `payhook reload`: `POST /admin/reload`.
pub async fn reload(admin: AdminArgs) -> Result<(), AdminClientError> {
    let client = Client::new(&admin)?;
    let answer = client
        .call(reqwest::Method::POST, client.url(&["reload"], &[]))
        .await?;
    if admin.json {
        print!("{}", pretty(&answer));
        return Ok(());
    }
    println!(
        "reloaded: {} accounts, {} endpoints",
        text(&answer["accounts"]),
        text(&answer["endpoints"])
    );
    let restart: Vec<&str> = answer["needs_restart"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !restart.is_empty() {
        println!(
            "changed, but applied only after a restart: {}",
            restart.join(", ")
        );
    }
    Ok(())
}
