//! `payhook bench`: measures a relay under load against a no-work baseline.
//! `cli::bench` parses the flags and runs the phases; the parts live here:
//!
//! - [`requests`]: the bench's sandbox accounts and the pre-signed callbacks;
//! - [`load`]: sends them at a concurrency (optionally at a fixed rate),
//!   timing each request;
//! - [`sink`]: the merchant endpoint, counting and timestamping receipts;
//! - [`process`]: the relay and the baseline as child processes, and their
//!   CPU time and RSS read from `/proc`;
//! - [`seed`]: a scratch PostgreSQL database and RabbitMQ prefix, and the
//!   seeded retry backlog;
//! - [`report`]: percentiles, ratios to the baseline, the JSON; [`table`]: the
//!   same as a table.

pub mod load;
pub mod process;
pub mod report;
pub mod requests;
pub mod seed;
pub mod sink;
pub mod table;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{0}")]
    Usage(String),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Account(#[from] crate::ingress::registry::AccountError),
    #[error("signing: {0}")]
    Sign(#[from] crate::ingress::SignError),
    #[error("keys: {0}")]
    Keys(#[from] crate::sandbox_keys::KeysError),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Process(String),
}

impl BenchError {
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let what = what.into();
        move |source| BenchError::Io { what, source }
    }
}
