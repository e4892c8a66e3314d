use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use payhook::app::{Application, BuildOptions};
use payhook::cli::{simulate, Cli, Command, KeysCommand};
use payhook::config::Config;
use payhook::store::Store;

// mimalloc instead of glibc's malloc: in glibc the relay's threads contend
// on arena locks (buffers allocated by a tokio worker are freed by the SQLite
// writer and back), which was a fifth of its CPU. Measured in alternating
// runs: -22-25 % relay CPU per event and +18-23 % throughput in SQLite mode,
// -14 % CPU in scaled mode (docs/benchmarks/history.md, 2026-12-02). Built without
// transparent huge pages (`no_thp`): with them every touched arena region
// became a 2 MiB page and idle RSS rose from 38 to 57 MB in scaled mode.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        // The demo prints its own report; only warnings are worth a log line.
        Command::Demo => payhook::telemetry::init_logging_with_default("warn"),
        _ => payhook::telemetry::init_logging(),
    }
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("payhook: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve {
            config: config_path,
            role,
        } => serve(config_path, role).await,
        Command::Migrate { config } => {
            let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            let store = Store::connect(&config.storage.url)
                .await
                .map_err(|e| e.to_string())?;
            store.close().await;
            println!("migrations applied");
            Ok(())
        }
        Command::Simulate {
            provider,
            account,
            url,
            kind,
            amount,
            forge,
            config,
        } => {
            let config = Config::load(config.as_deref()).map_err(|e| e.to_string())?;
            let args = simulate::SimulateArgs {
                provider,
                account,
                url,
                kind,
                amount,
                forge,
            };
            let outcome = simulate::run(&config, &args).await.map_err(|e| e.to_string())?;
            println!("POST {} -> {} {}", outcome.url, outcome.status, outcome.body);
            // A script must see a refusal: the relay answered, but not 2xx.
            if (200..300).contains(&outcome.status) {
                Ok(())
            } else {
                Err(format!(
                    "the relay refused the callback (HTTP {})",
                    outcome.status
                ))
            }
        }
        Command::Sink {
            listen,
            secret,
            fail_every,
        } => payhook::cli::sink::run(listen, secret, fail_every)
            .await
            .map_err(|e| e.to_string()),
        Command::Bench(args) => payhook::cli::bench::run(*args).await.map_err(|e| e.to_string()),
        Command::Keys {
            command: KeysCommand::Generate { out, force },
        } => {
            payhook::sandbox_keys::generate_into(&out, force).map_err(|e| e.to_string())?;
            println!(
                "wrote {0}/private.pem and {0}/public.pem (sandbox use only)",
                out.display()
            );
            Ok(())
        }
        Command::Events { command } => payhook::cli::admin_client::events(command)
            .await
            .map_err(|e| e.to_string()),
        Command::Endpoints { command } => payhook::cli::endpoints::endpoints(command)
            .await
            .map_err(|e| e.to_string()),
        Command::Reload { admin } => payhook::cli::endpoints::reload(admin)
            .await
            .map_err(|e| e.to_string()),
        Command::Deliveries { command } => payhook::cli::admin_client::deliveries(command)
            .await
            .map_err(|e| e.to_string()),
        Command::Redeliver {
            event_id,
            dead,
            batch_size,
            admin,
        } => payhook::cli::admin_client::redeliver(event_id, dead, batch_size, admin)
            .await
            .map_err(|e| e.to_string()),
        Command::Demo => payhook::cli::demo::run().await.map_err(|e| e.to_string()),
    }
}

/// `payhook serve`: the relay until SIGTERM or Ctrl-C.
async fn serve(config_path: Option<std::path::PathBuf>, role: payhook::app::Role) -> Result<(), String> {
    let config = Config::load(config_path.as_deref()).map_err(|e| e.to_string())?;
    log_start(&config, config_path.as_deref(), role);
    let signals = Signals::listen();
    let shutdown = CancellationToken::new();
    let app = Application::build(
        config,
        BuildOptions {
            role,
            shutdown: shutdown.clone(),
            config_path: config_path.clone(),
            ..BuildOptions::default()
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    if let Some(addr) = app.ingress_addr() {
        tracing::info!(%addr, "ingress listening");
    }
    if let Some(addr) = app.admin_addr() {
        tracing::info!(%addr, "admin listening");
    }
    #[cfg(unix)]
    {
        let Signals { term, hup } = signals;
        tokio::spawn(reload_on_sighup(hup, app.live(), app.metrics(), shutdown.clone()));
        tokio::spawn(stop_on_signal(term, shutdown));
    }
    #[cfg(not(unix))]
    {
        let Signals {} = signals;
        tokio::spawn(stop_on_signal(shutdown));
    }
    app.run_until_stopped().await.map_err(|e| e.to_string())
}

/// One line that says what this process is: version, config file, store (no
/// password), queue, role, and how many accounts and endpoints it serves; and
/// a warning for a config that can accept or deliver nothing.
fn log_start(config: &Config, path: Option<&std::path::Path>, role: payhook::app::Role) {
    let config_file = match path {
        Some(p) => p.display().to_string(),
        None => std::env::var("PAYHOOK_CONFIG")
            .ok()
            .filter(|p| !p.is_empty())
            .or_else(|| {
                std::path::Path::new("payhook.toml")
                    .exists()
                    .then(|| "payhook.toml".to_owned())
            })
            .unwrap_or_else(|| "none (built-in defaults)".to_owned()),
    };
    let queue = match &config.queue {
        Some(q) => format!(
            "rabbitmq {} (prefix {})",
            payhook::config::redact_url_password(q.amqp_url.expose()),
            q.prefix
        ),
        None => "embedded".to_owned(),
    };
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        config = %config_file,
        store = %payhook::config::redact_url_password(&config.storage.url),
        queue = %queue,
        role = role.as_str(),
        accounts = config.accounts.len(),
        endpoints = config.endpoints.len(),
        "payhook starting"
    );
    if config.accounts.is_empty() {
        tracing::warn!("no [[accounts]] configured: every callback will be answered 404 unknown account");
    }
    if config.endpoints.is_empty() {
        tracing::warn!("no [[endpoints]] configured: callbacks are stored but delivered to no one");
    }
}

/// The signals `serve` acts on, listened for from the start: a SIGTERM or
/// SIGHUP that arrived before its handler existed would take the signal's
/// default action and kill the process.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate())
                .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGTERM"))
                .ok();
            let hup = signal(SignalKind::hangup())
                .map_err(|e| tracing::warn!(error = %e, "cannot listen for SIGHUP; reload with POST /admin/reload"))
                .ok();
            Signals { term, hup }
        }
        #[cfg(not(unix))]
        Signals {}
    }
}

/// SIGHUP reloads the config file: accounts and endpoints are swapped, a
/// file that does not validate changes nothing (see `payhook::live`).
#[cfg(unix)]
async fn reload_on_sighup(
    hup: Option<tokio::signal::unix::Signal>,
    live: payhook::live::LiveConfig,
    metrics: std::sync::Arc<payhook::telemetry::Metrics>,
    shutdown: CancellationToken,
) {
    let Some(mut hup) = hup else {
        return;
    };
    loop {
        tokio::select! {
            got = hup.recv() => {
                if got.is_none() {
                    return;
                }
                // The outcome is logged and counted there.
                let _ = live.reload_logged(&metrics, "SIGHUP").await;
            }
            _ = shutdown.cancelled() => return,
        }
    }
}

/// SIGINT or SIGTERM starts a graceful shutdown.
#[cfg(unix)]
async fn stop_on_signal(term: Option<tokio::signal::unix::Signal>, shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    match term {
        Some(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        None => {
            let _ = ctrl_c.await;
        }
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}

/// Ctrl-C starts a graceful shutdown.
#[cfg(not(unix))]
async fn stop_on_signal(shutdown: CancellationToken) {
    let _ = tokio::signal::ctrl_c().await;
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
