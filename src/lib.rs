//! payhook: a relay for payment notifications.
//!
//! Payment providers POST signed callbacks; payhook verifies each over its raw
//! bytes, stores it exactly once, and delivers a normalized [`domain::Event`]
//! to merchant endpoints on a retry schedule until they confirm.
//!
//! A tour of the layout, in the order a callback travels:
//!
//! - [`ingress`]: `POST /notify/{account}`. One module per provider (`cbb`,
//!   `shouqianba`, `abc`, `dingdang`, `dryad`, `wechatpay`, `alipay`) behind
//!   the small synchronous
//!   [`ingress::Provider`] trait: `verify` the raw bytes, then `parse` into a
//!   [`domain::Notification`] bound to its account by a signed merchant field
//!   (a platform key signs every merchant's notices). Each module also owns
//!   its part of everything else through [`ingress::ProviderModule`]: its
//!   `[[accounts]]` section (a serde type and its checks), building its
//!   verifier and sandbox signer, the keys that alone tell its accounts
//!   apart, its bench and sandbox accounts, its fuzz targets
//!   (`ingress::fuzz`) and its answer's words. The `pub mod` lines of the
//!   registry block in `ingress/mod.rs` name the modules, and `build.rs`
//!   writes the table `ingress::for_each_provider` from them, so a new
//!   provider's one line outside its file is its module declaration;
//!   [`domain::ProviderKind`], the
//!   config's dispatch on `provider`, and every list of providers (messages,
//!   help texts, the admin filter, the console's provider filter, the served
//!   OpenAPI enums, the bench, the demo, the fuzz crate) are
//!   written from it (`docs/adding-a-provider.md`). `ingress::common` holds
//!   what providers share (bounded, duplicate-refusing form and JSON parsing,
//!   signing strings, RSA via `ring`, time parsing);
//!   `ingress::registry` builds accounts from the config through the modules
//!   and refuses accounts that could not be told apart;
//!   `ingress::rate_limit` is the per-account limit; `ingress::handler` is
//!   the request path (verification bounded to the cores but one), answering
//!   in each provider's dialect.
//! - [`domain`]: parsed newtypes (`AmountFen`, `AccountId`, `EventId`) and the
//!   event merchants receive.
//! - [`store`]: events, delivery jobs, attempts, nonces. SQLite (embedded
//!   default, group-committed writes by one writer thread, retention's
//!   deletes in small steps on the same thread)
//!   and PostgreSQL (concurrent writes batched into multi-row statements)
//!   behind one `Store` type; `store/backend.rs` lists what both backends
//!   offer alike (the `Backend` trait). The ingress writes the event and its
//!   delivery jobs in one transaction and answers the provider only after
//!   the commit; in scaled mode it hands the new outbox row to this
//!   process's publisher (`app` wires the two).
//! - [`clock`]: the relay's one injected clock (freshness, due times,
//!   leases, the retry schedule, auto-pause, retention).
//! - [`dispatch`]: takes due jobs, signs and POSTs them (`dispatch::sign`,
//!   `dispatch::http`), and stores every attempt and what comes next.
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics`, the operator API under
//!   `/admin/*` (bearer token: list, inspect and redeliver; its OpenAPI
//!   document in `admin/openapi.json`), and the ops console's static page at
//!   `/admin/ui` (`admin/ui/`).
//! - [`telemetry`]: tracing setup and the Prometheus metrics of the contract.
//! - [`config`]: the TOML file and `PAYHOOK_*` overrides, strictly parsed;
//!   each account's provider section is read by its module
//!   ([`config::AccountCx`] gives it the secrets, key files and messages).
//! - [`crypto`]: HMAC-SHA256 and constant-time comparison, shared by provider
//!   verification, delivery signing and the admin token check.
//! - [`live`]: what changes while the relay runs: the accounts and
//!   endpoints a reload (`SIGHUP`, `POST /admin/reload`) swaps whole, and
//!   the local view of paused endpoints (`dispatch::health` keeps it fresh
//!   and pauses failing endpoints on its own).
//! - [`sandbox_keys`]: an RSA-2048 pair for sandbox accounts (`payhook keys
//!   generate`, and the bench's relay).
//! - [`key_list`]: the short non-empty list an endpoint's secrets and an
//!   account's keys are held in, so that either can be rotated without a gap.
//! - [`app`]: wires the parts into a running relay with explicit shutdown
//!   (`CancellationToken` + `TaskTracker`).
//! - [`queue`]: scaled mode's RabbitMQ side: topology, the outbox publisher
//!   (confirmed, `mandatory` publishes) and the delivery consumer (a line per
//!   busy endpoint, so waiting jobs cost nothing).
//! - [`retention`]: the task that deletes finished events past `[storage]
//!   retention` and blanks raw callbacks past `raw_retention`, in bounded
//!   batches (the SQL is in `store/retention.rs`).
//! - [`server`]: the HTTP accept loop (connection and in-flight limits,
//!   header-read and idle timeouts for HTTP/1 and HTTP/2, graceful drain).
//! - [`cli`] (feature `cli`, on by default): the `payhook` subcommands
//!   (`simulate`, `sink`, `keys`, `demo`, and `events`, `redeliver`,
//!   `endpoints`, `reload` through the admin API).
//!
//! The command line is a feature, `cli` (on by default), rather than a
//! second crate: one version, one lock file and one test binary, while a
//! program that embeds the relay (`default-features = false`) gets no clap
//! or indicatif. Only `main.rs` and [`cli`] use them; the library's enums
//! that flags take (`app::Role`, `ingress::SampleKind`, and
//! `bench::requests::BenchProvider`, whose values come from the provider
//! registry) implement `clap::ValueEnum` only with the feature. CI checks
//! that the library builds without it.

pub mod admin;
pub mod app;
pub mod bench;
#[cfg(feature = "cli")]
pub mod cli;
pub mod clock;
pub mod config;
pub mod crypto;
pub mod dispatch;
pub mod domain;
pub mod ingress;
pub mod key_list;
pub mod live;
pub mod queue;
pub mod retention;
pub mod sandbox_keys;
pub mod server;
pub mod store;
pub mod telemetry;
