//! The `payhook` command line. `main.rs` only parses arguments and calls in here.

pub mod admin_client;
pub mod bench;
pub mod demo;
pub mod endpoints;
pub mod simulate;
pub mod sink;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use self::admin_client::{AdminArgs, EventsCommand};
use crate::app::Role;
use crate::domain::ProviderKind;
use crate::ingress::SampleKind;

#[derive(Debug, Parser)]
#[command(
    name = "payhook",
    version,
    about = "Relay for payment-provider notifications: verify, store once, deliver with retries.",
    long_about = long_about()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `payhook --help`: what it does, naming every provider of the registry.
fn long_about() -> String {
    format!(
        "payhook verifies signed payment callbacks ({}), stores each exactly once, and delivers a \
         normalized event to merchant endpoints on a retry schedule until they confirm.\n\nConfig: \
         --config FILE, else $PAYHOOK_CONFIG, else ./payhook.toml if present, else built-in defaults. \
         PAYHOOK_* environment variables override it.",
        crate::ingress::registry::display_names()
    )
}

#[derive(Debug, Subcommand)]
pub enum Command {
    #[command(
        after_help = "Examples:\n  payhook serve                                # embedded default (SQLite), ./payhook.toml if present\n  payhook serve --config payhook.toml\n  payhook serve --config payhook.toml --role ingress\n  PAYHOOK_ADMIN_LISTEN=127.0.0.1:9091 payhook serve --config payhook.toml --role dispatcher\n\nScaled mode: --role ingress and --role dispatcher need [queue] amqp_url (RabbitMQ)\nand refuse to start without it. Each process has its own admin port: on one\nhost, give the second one another with PAYHOOK_ADMIN_LISTEN or server.admin_listen.\n\nSIGHUP (or `payhook reload`, POST /admin/reload) reads the config file again and\nswaps accounts and endpoints without a restart."
    )]
    /// Run the relay: provider ingress, dispatcher and admin port.
    Serve {
        /// Config file (TOML).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Which parts to run in this process.
        #[arg(long, value_enum, default_value_t = Role::All)]
        role: Role,
    },
    #[command(
        after_help = "Examples:\n  payhook migrate --config payhook.toml\n  PAYHOOK_DATABASE_URL=postgres://payhook@db/payhook payhook migrate"
    )]
    /// Create or upgrade the database schema, then exit.
    Migrate {
        /// Config file (TOML).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    #[command(
        after_help = "Examples:\n  payhook simulate dryad --account dryad-sandbox --config payhook.example.toml\n  payhook simulate cbb --account cbb-sandbox --config payhook.example.toml --kind refund --amount 500\n  payhook simulate shouqianba --account sqb-md5-sandbox --config payhook.example.toml --forge     # see a forgery refused"
    )]
    /// Send a correctly signed sample callback for an account, signed with its
    /// sandbox key or shared secret from the config.
    Simulate {
        #[arg(help = format!("Provider: {} (any case)", ProviderKind::listed(Some("or"))))]
        provider: String,
        /// The account id in the config (`[[accounts]] id`).
        #[arg(long)]
        account: String,
        /// Where to send it; default: the config's ingress, /notify/{account}.
        #[arg(long)]
        url: Option<String>,
        /// Payment or refund notice.
        #[arg(long, value_enum, default_value_t = SampleKind::Payment)]
        kind: SampleKind,
        /// Amount in fen.
        #[arg(long, default_value_t = 10001)]
        amount: i64,
        /// Break the signature, to see a forgery refused.
        #[arg(long)]
        forge: bool,
        /// Config file (TOML).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    #[command(
        after_help = "Examples:\n  payhook sink --secret whsec_... \n  payhook sink --listen 127.0.0.1:9000 --fail-every 3        # every 3rd event fails: retries, then dead"
    )]
    /// Run a sample merchant endpoint that verifies and prints deliveries.
    Sink {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: std::net::SocketAddr,
        /// The endpoint secret, to check the delivery signatures.
        #[arg(long, env = "PAYHOOK_SINK_SECRET")]
        secret: Option<String>,
        /// Answer 500 to every attempt for every Nth event (0 = never), to
        /// watch its retries and, once the retry schedule is spent, its
        /// delivery go dead.
        #[arg(long, default_value_t = 0)]
        fail_every: u64,
    },
    #[command(
        after_help = "Examples:\n  payhook bench --provider dryad -n 20000 -c 128\n  payhook bench --provider cbb --postgres postgres://postgres@127.0.0.1/postgres --amqp amqp://guest:guest@127.0.0.1:5672/%2f\n  payhook bench --target http://127.0.0.1:8080 --config payhook.toml --pid $(pidof payhook) --json"
    )]
    /// Measure a relay under load: throughput, latency, CPU and memory,
    /// each next to a no-work baseline.
    Bench(Box<bench::BenchArgs>),
    #[command(after_help = "Examples:\n  payhook keys generate --out ./keys")]
    /// Sandbox key management.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    #[command(
        after_help = "Examples:\n  payhook events list --merchant-order-no M-1001 --config payhook.toml\n  payhook events show evt_01J... --admin-url http://127.0.0.1:9090 --admin-token $TOKEN"
    )]
    /// Stored events, through the admin API (needs the admin token).
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    #[command(
        after_help = "Examples:\n  payhook deliveries list --status dead --config payhook.toml\n  payhook deliveries list --status pending --json"
    )]
    /// Deliveries by state (pending, delivered, dead), through the admin API.
    Deliveries {
        #[command(subcommand)]
        command: admin_client::DeliveriesCommand,
    },
    #[command(
        after_help = "Examples:\n  payhook redeliver evt_01J... --config payhook.toml\n  payhook redeliver --dead --config payhook.toml             # every dead delivery, with progress"
    )]
    /// Deliver an event again to every endpoint subscribed to it, or give
    /// every dead delivery a new try (`--dead`), through the admin API.
    Redeliver {
        /// The event to deliver again (evt_…).
        #[arg(
            value_name = "EVENT_ID",
            required_unless_present = "dead",
            conflicts_with = "dead"
        )]
        event_id: Option<String>,
        /// Redeliver every dead delivery (each once) instead of one event.
        #[arg(long)]
        dead: bool,
        /// With --dead: how many to redeliver per request (each batch is its own commit).
        #[arg(long, value_name = "N", default_value_t = 200, requires = "dead",
              value_parser = clap::value_parser!(u32).range(1..=500))]
        batch_size: u32,
        #[command(flatten)]
        admin: AdminArgs,
    },
    #[command(
        after_help = "Examples:\n  payhook endpoints list --config payhook.toml\n  payhook endpoints pause shop-backend\n  payhook endpoints resume shop-backend"
    )]
    /// Merchant endpoints: list them with their state, pause or resume one,
    /// through the admin API.
    Endpoints {
        #[command(subcommand)]
        command: endpoints::EndpointsCommand,
    },
    #[command(
        after_help = "Examples:\n  payhook reload --config payhook.toml\n  kill -HUP $(pidof payhook)             # the same, by signal"
    )]
    /// Make the running relay read its config file again (accounts and
    /// endpoints are swapped; a file that does not validate changes nothing).
    Reload {
        #[command(flatten)]
        admin: AdminArgs,
    },
    #[command(after_help = "Examples:\n  payhook demo")]
    /// Run the whole relay in this process with sandbox accounts for every
    /// provider and a local merchant; send signed callbacks (and a duplicate
    /// and a forgery) and show what the merchant received. Needs no config.
    Demo,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    #[command(
        after_help = "Examples:\n  payhook keys generate --out ./sandbox-keys\n  payhook keys generate --out ./sandbox-keys --force   # replace an existing pair"
    )]
    /// Generate a sandbox RSA-2048 key pair (private.pem, public.pem).
    Generate {
        /// Directory to write the keys into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Replace private.pem and public.pem if they exist.
        #[arg(long)]
        force: bool,
    },
}
