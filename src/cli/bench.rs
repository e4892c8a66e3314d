//! `payhook bench`: loads a relay with correctly signed callbacks and reports
//! ingress and end-to-end throughput and latency, the relay's CPU time and
//! memory, and each figure's ratio to a no-work baseline loaded the same way.
//!
//! Phases: seed the backlog (if any), sign every request, start the counting
//! sink, load the baseline, start the relay (a child process), load it, wait
//! for the deliveries, stop it and clean up. The parts are in `crate::bench`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bench::load::{self, Plan, SendLog};
use crate::bench::process::{self, Managed, ProcSample};
use crate::bench::report::{EndToEnd, Ingress, Machine, ProcessFigures, Report, Setup, WindowCpu};
use crate::bench::requests::{self, BenchProvider, Signed};
use crate::bench::seed::{self, ScratchDatabase};
use crate::bench::sink::Sink;
use crate::bench::BenchError;
use crate::config::Config;

/// The endpoint id of the sink in the relay's config.
const SINK_ENDPOINT: &str = "bench-sink";
/// The relay's retry schedule (also names its RabbitMQ retry queues).
const RETRY_SCHEDULE: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(900),
    Duration::from_secs(3600),
];

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Callbacks to send, each uniquely signed (none is a duplicate).
    #[arg(long, short = 'n', default_value_t = 20_000)]
    pub requests: usize,
    /// Requests in flight at once, each on its own kept-alive connection.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// Whose callbacks to send; `mix` sends each provider's in turn.
    #[arg(long, value_enum, ignore_case = true, default_value = "dryad")]
    pub provider: BenchProvider,
    /// Send at most this many requests per second (default: as fast as they are answered).
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
    /// PostgreSQL admin URL: the relay uses a scratch database created on that
    /// server for this run and dropped after it (default: a temporary SQLite file).
    #[arg(long, value_name = "URL", conflicts_with = "target")]
    pub postgres: Option<String>,
    /// RabbitMQ URL: the relay uses it under a queue prefix of its own, deleted
    /// after the run (default: the embedded queue).
    #[arg(long, value_name = "URL", conflicts_with = "target")]
    pub amqp: Option<String>,
    /// Pending retries to seed into the database before the relay starts (one
    /// event and one delivery each, due in 30 days).
    #[arg(long, value_name = "COUNT", default_value_t = 0, conflicts_with = "target")]
    pub backlog: u64,
    /// Load a relay already running at this base URL (e.g. http://127.0.0.1:8080/)
    /// instead of starting one. Needs --config; point one of its endpoints at --sink-listen.
    #[arg(long, value_name = "URL", requires = "config")]
    pub target: Option<String>,
    /// With --target: the config whose sandbox keys and secrets sign the callbacks.
    #[arg(long, value_name = "FILE", requires = "target")]
    pub config: Option<PathBuf>,
    /// With --target: the relay's process id, to report its CPU time and memory.
    #[arg(long, value_name = "PID", requires = "target")]
    pub pid: Option<u32>,
    /// Where the counting merchant sink listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub sink_listen: SocketAddr,
    /// The started relay's `[delivery] concurrency`, and its per-endpoint
    /// limit too: the sink is its only endpoint.
    #[arg(long, value_name = "N", default_value_t = 256, conflicts_with = "target")]
    pub delivery_concurrency: usize,
    /// Seconds to wait for outstanding deliveries after the last answer.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub drain_timeout: u64,
    /// Start the relay with no endpoint: callbacks are verified, stored and
    /// answered, but no delivery is made (ingress alone, no dispatcher).
    #[arg(long, conflicts_with = "target")]
    pub ingress_only: bool,
    /// Skip the no-work baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Internal: serve only the no-work baseline (the bench runs itself so).
    #[arg(long, hide = true)]
    pub baseline_server: bool,
}

/// A temporary directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, BenchError> {
        let path = std::env::temp_dir().join(format!("payhook-bench-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&path).map_err(BenchError::io(path.display().to_string()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn say(message: &str) {
    eprintln!("bench: {message}");
}

pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    if args.baseline_server {
        return process::serve_baseline().await;
    }
    if args.provider == BenchProvider::HostileForm && !args.ingress_only {
        return Err(BenchError::Usage(
            "--provider hostile-form sends callbacks that are all refused: add --ingress-only".into(),
        ));
    }
    if args.requests == 0 || args.concurrency == 0 || args.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        return Err(BenchError::Usage(
            "--requests, --concurrency and --rate must be positive".into(),
        ));
    }
    let mut machine = Machine::read();
    if let Some(admin) = &args.postgres {
        match seed::postgres_settings(admin).await {
            Ok(settings) => machine.postgres_settings = settings,
            Err(e) => say(&format!("could not read PostgreSQL's settings: {e}")),
        }
    }
    if let Some(rate) = args.rate {
        let seconds = args.requests as f64 / rate;
        if seconds < 20.0 {
            say(&format!(
                "this rate run lasts {seconds:.1} s; BENCHMARKS.md's figures come from runs of at least 20 s"
            ));
        }
    }
    let dir = TempDir::new()?;
    let id = ulid::Ulid::new().to_string();
    let tag = format!("PHB{}", &id[20..]);
    let setup = Setup {
        store: if args.target.is_some() {
            "running relay".into()
        } else if args.postgres.is_some() {
            "postgresql".into()
        } else {
            "sqlite".into()
        },
        queue: match (&args.target, &args.amqp) {
            (Some(_), _) => "its queue".into(),
            (None, Some(_)) => "rabbitmq".into(),
            (None, None) => "embedded queue".into(),
        },
        provider: args.provider.as_str().into(),
        requests: args.requests,
        concurrency: args.concurrency,
        rate: args.rate,
        backlog: args.backlog,
        ingress_only: args.ingress_only,
        target: args.target.clone(),
    };
    let report = match &args.target {
        Some(target) => targeted(&args, target, &tag, setup, machine).await?,
        None => {
            let prefix = format!("payhook-bench-{}", id.to_lowercase());
            let scratch = match &args.postgres {
                Some(admin) => Some(ScratchDatabase::create(admin).await?),
                None => None,
            };
            let db_url = match &scratch {
                Some(s) => s.url.clone(),
                None => format!("sqlite://{}", dir.0.join("bench.db").display()),
            };
            let result = managed(&args, &dir.0, &db_url, &prefix, &tag, setup, machine).await;
            if let Some(scratch) = scratch {
                if let Err(e) = scratch.drop_database().await {
                    say(&format!("could not drop the scratch database: {e}"));
                }
            }
            if let Some(amqp) = &args.amqp {
                if let Err(e) = seed::delete_topology(amqp, &prefix, &RETRY_SCHEDULE).await {
                    say(&format!("could not delete the queues of {prefix}: {e}"));
                }
            }
            result?
        }
    };
    if args.json {
        let text =
            serde_json::to_string_pretty(&report).map_err(|e| BenchError::Process(format!("JSON: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", report.table());
    }
    Ok(())
}

/// The relay's config: the sink as its only endpoint, the bench accounts.
fn relay_config(
    args: &BenchArgs,
    dir: &Path,
    db_url: &str,
    prefix: &str,
    sink: &str,
) -> Result<String, BenchError> {
    let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let queue = match &args.amqp {
        Some(amqp) => format!("[queue]\namqp_url = {}\nprefix = {}\n", q(amqp), q(prefix)),
        None => String::new(),
    };
    let dc = args.delivery_concurrency.max(1);
    let endpoint = if args.ingress_only {
        String::new()
    } else {
        format!(
            "[[endpoints]]\nid = \"{SINK_ENDPOINT}\"\nurl = {}\n\
             secret = \"whsec_YmVuY2gtZW5kcG9pbnQtc2VjcmV0\"\naccounts = [\"*\"]\n\
             events = [\"payment.*\", \"refund.*\"]\n",
            q(sink)
        )
    };
    let schedule: Vec<String> = RETRY_SCHEDULE
        .iter()
        .map(|d| q(&humantime::format_duration(*d).to_string()))
        .collect();
    Ok(format!(
        "[server]\nadmin_token = \"payhook-bench-admin-token\"\n\n[storage]\nurl = {}\n\n{queue}\n[delivery]\n\
         retry_schedule = [{}]\nconcurrency = {dc}\nper_endpoint_concurrency = {dc}\n\
         allow_private_targets = true\n\n{endpoint}{}",
        q(db_url),
        schedule.join(", "),
        requests::accounts_toml(dir)?
    ))
}

async fn managed(
    args: &BenchArgs,
    dir: &Path,
    db_url: &str,
    prefix: &str,
    tag: &str,
    setup: Setup,
    machine: Machine,
) -> Result<Report, BenchError> {
    if args.backlog > 0 {
        say(&format!("seeding {} pending retries", args.backlog));
        let seeded = seed::seed_backlog(db_url, SINK_ENDPOINT, args.backlog).await?;
        say(&format!("seeded in {:.1} s", seeded.took.as_secs_f64()));
        if let Some(why) = seeded.not_checkpointed {
            say(&format!(
                "CHECKPOINT failed ({why}): the run also writes out the seeded pages"
            ));
        }
    }
    let log = Arc::new(SendLog::new(args.requests));
    let sink = Sink::start(args.sink_listen, tag, log.clone())
        .await
        .map_err(BenchError::io("starting the sink"))?;
    let config_path = dir.join("relay.toml");
    let text = relay_config(args, dir, db_url, prefix, &sink.url())?;
    std::fs::write(&config_path, text).map_err(BenchError::io(config_path.display().to_string()))?;
    let config = Config::from_file(&config_path, &|_| None)?;
    let signed = sign(&config, args, tag)?;
    let client = load::control_client()?;
    let baseline = baseline(args, &signed).await?;

    say("starting the relay");
    let relay = Managed::relay(&config_path).await?;
    let result = measure_relay(args, &client, &signed, &relay, &sink, log).await;
    if result.is_err() {
        say(&format!("relay log:\n{}", relay.log_tail()));
    }
    relay.stop().await;
    sink.stop();
    let (ingress, end_to_end) = result?;
    Ok(Report::new(setup, machine, baseline, ingress, end_to_end))
}

async fn targeted(
    args: &BenchArgs,
    target: &str,
    tag: &str,
    setup: Setup,
    machine: Machine,
) -> Result<Report, BenchError> {
    let config = Config::load(args.config.as_deref())?;
    let base = reqwest::Url::parse(target).map_err(|e| BenchError::Usage(format!("--target: {e}")))?;
    let log = Arc::new(SendLog::new(args.requests));
    let sink = Sink::start(args.sink_listen, tag, log.clone())
        .await
        .map_err(BenchError::io("starting the sink"))?;
    say(&format!("merchant sink listening on {}", sink.url()));
    let signed = sign(&config, args, tag)?;
    let baseline = baseline(args, &signed).await?;
    let urls = signed.urls(&base)?;
    let before = args.pid.map(process::sample).transpose()?;
    let mark = CpuMark::now();
    say(&format!("loading {target}"));
    let outcome = load::run(&urls, Arc::new(signed.requests), plan(args), Some(log)).await;
    drain(&sink, outcome.ok, args.drain_timeout).await;
    let cpu = mark.since();
    let after = args.pid.map(process::sample).transpose()?;
    let figures = before.zip(after).map(|(b, a)| ProcessFigures::between(b, a));
    let ingress = Ingress::of(args.requests, outcome, figures, cpu);
    let end_to_end = EndToEnd::of(sink.summary());
    sink.stop();
    Ok(Report::new(setup, machine, baseline, ingress, Some(end_to_end)))
}

fn plan(args: &BenchArgs) -> Plan {
    Plan {
        concurrency: args.concurrency,
        rate: args.rate,
    }
}

fn sign(config: &Config, args: &BenchArgs, tag: &str) -> Result<Signed, BenchError> {
    say(&format!(
        "signing {} {} callbacks",
        args.requests,
        args.provider.as_str()
    ));
    let started = Instant::now();
    let signed = requests::sign_all(config, args.provider, args.requests, tag)?;
    say(&format!("signed in {:.1} s", started.elapsed().as_secs_f64()));
    Ok(signed)
}

/// Loads the no-work baseline (a child process) with the same requests.
async fn baseline(args: &BenchArgs, signed: &Signed) -> Result<Option<Ingress>, BenchError> {
    if args.no_baseline {
        return Ok(None);
    }
    say("loading the baseline");
    let server = Managed::baseline().await?;
    let base = reqwest::Url::parse(&format!("http://{}/", server.ingress))
        .map_err(|e| BenchError::Process(e.to_string()))?;
    let urls = signed.urls(&base)?;
    let before = server.sample()?;
    let mark = CpuMark::now();
    let outcome = load::run(&urls, Arc::new(signed.requests.clone()), plan(args), None).await;
    let cpu = mark.since();
    let after = server.sample()?;
    server.stop().await;
    Ok(Some(Ingress::of(
        args.requests,
        outcome,
        Some(ProcessFigures::between(before, after)),
        cpu,
    )))
}

async fn measure_relay(
    args: &BenchArgs,
    client: &reqwest::Client,
    signed: &Signed,
    relay: &Managed,
    sink: &Sink,
    log: Arc<SendLog>,
) -> Result<(Ingress, Option<EndToEnd>), BenchError> {
    relay.wait_ready(client).await?;
    // Let start-up work (migrations, connections) settle before "idle".
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: ProcSample = relay.sample()?;
    let base = reqwest::Url::parse(&format!("http://{}/", relay.ingress))
        .map_err(|e| BenchError::Process(e.to_string()))?;
    let urls = signed.urls(&base)?;
    say("loading the relay");
    let mark = CpuMark::now();
    let outcome = load::run(&urls, Arc::new(signed.requests.clone()), plan(args), Some(log)).await;
    if !args.ingress_only {
        drain(sink, outcome.ok, args.drain_timeout).await;
    }
    let cpu = mark.since();
    let after = relay.sample()?;
    let ingress = Ingress::of(
        args.requests,
        outcome,
        Some(ProcessFigures::between(before, after)),
        cpu,
    );
    let end_to_end = (!args.ingress_only).then(|| EndToEnd::of(sink.summary()));
    Ok((ingress, end_to_end))
}

/// CPU time of this process (load generator and sink) and of the whole
/// machine, at one instant.
struct CpuMark {
    own: f64,
    machine: f64,
}

impl CpuMark {
    fn now() -> Self {
        Self {
            own: process::sample(std::process::id()).map_or(0.0, |s| s.cpu_seconds),
            machine: process::machine_busy_seconds(),
        }
    }

    fn since(&self) -> WindowCpu {
        let now = CpuMark::now();
        WindowCpu {
            load_generator: (now.own - self.own).max(0.0),
            machine: (now.machine - self.machine).max(0.0),
        }
    }
}

/// Waits until `expected` events arrived at the sink, or `timeout_s` passed.
async fn drain(sink: &Sink, expected: usize, timeout_s: u64) {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    while sink.delivered() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if sink.delivered() < expected {
        say(&format!(
            "only {} of {expected} deliveries arrived within {timeout_s} s",
            sink.delivered()
        ));
    }
}
