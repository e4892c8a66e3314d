//! The relay and the baseline run as child processes of the bench (this same
//! binary), so that their CPU time and memory, read from `/proc/<pid>`, do
//! not include the load generator's.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::BenchError;

/// How long a child may take to start listening (migrations included).
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// Log lines kept from the relay, to explain a failure.
const TAIL: usize = 20;
/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// A child process: the relay (`payhook serve`) or the baseline.
pub struct Managed {
    child: Child,
    pub pid: u32,
    pub ingress: SocketAddr,
    pub admin: Option<SocketAddr>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

/// CPU time and memory of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// User + system time, all threads.
    pub cpu_seconds: f64,
    /// Resident set size now.
    pub rss_mb: f64,
    /// Peak resident set size (`VmHWM`).
    pub peak_rss_mb: f64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn sample(pid: u32) -> Result<ProcSample, BenchError> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(BenchError::io(format!("/proc/{pid}/stat")))?;
    // The command name (in parentheses) may hold spaces: count from its end.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5) are utime and stime; `rest` starts at field 3.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    let cpu_seconds = (ticks(11) + ticks(12)) / USER_HZ;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(BenchError::io(format!("/proc/{pid}/status")))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(ProcSample {
        cpu_seconds,
        rss_mb: kb("VmRSS:") / 1024.0,
        peak_rss_mb: kb("VmHWM:") / 1024.0,
    })
}

/// Busy CPU time of the whole machine since boot (all CPUs, from the first
/// line of `/proc/stat`: everything but idle and iowait).
pub fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy / USER_HZ
}

fn exe() -> Result<std::path::PathBuf, BenchError> {
    std::env::current_exe().map_err(BenchError::io("locating the payhook binary"))
}

impl Managed {
    /// Starts `payhook serve --config <config>` on ports chosen by the kernel
    /// and waits until both listeners are up (the log says where).
    pub async fn relay(config: &Path) -> Result<Managed, BenchError> {
        let mut child = Command::new(exe()?)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .env("PAYHOOK_LISTEN", "127.0.0.1:0")
            .env("PAYHOOK_ADMIN_LISTEN", "127.0.0.1:0")
            .env("PAYHOOK_LOG", "warn,payhook=info")
            .env("PAYHOOK_LOG_FORMAT", "json")
            .env_remove("PAYHOOK_CONFIG")
            .env_remove("PAYHOOK_DATABASE_URL")
            .env_remove("PAYHOOK_AMQP_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(BenchError::io("starting the relay"))?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Process("the relay exited at once".into()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| BenchError::Process("no relay stderr".into()))?;
        let mut lines = BufReader::new(stderr).lines();
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (mut ingress, mut admin) = (None, None);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        while ingress.is_none() || admin.is_none() {
            let line = match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Ok(Ok(Some(line))) => line,
                Ok(_) => {
                    return Err(BenchError::Process(format!(
                        "the relay stopped while starting:\n{}",
                        keep(&tail, None)
                    )))
                }
                Err(_) => return Err(BenchError::Process("the relay did not start in time".into())),
            };
            let parsed: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let addr = parsed["addr"].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
            match parsed["message"].as_str() {
                Some("ingress listening") => ingress = addr,
                Some("admin listening") => admin = addr,
                _ => {}
            }
            keep(&tail, Some(line));
        }
        let drain_tail = tail.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                keep(&drain_tail, Some(line));
            }
        });
        Ok(Managed {
            child,
            pid,
            ingress: ingress.ok_or_else(|| BenchError::Process("no ingress address".into()))?,
            admin,
            tail,
        })
    }

    /// Starts the baseline server (`payhook bench --baseline-server`).
    pub async fn baseline() -> Result<Managed, BenchError> {
        let mut child = Command::new(exe()?)
            .args(["bench", "--baseline-server"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(BenchError::io("starting the baseline"))?;
        let pid = child
            .id()
            .ok_or_else(|| BenchError::Process("the baseline exited at once".into()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| BenchError::Process("no baseline stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .map_err(|_| BenchError::Process("the baseline did not start in time".into()))?
            .map_err(BenchError::io("reading the baseline's address"))?
            .unwrap_or_default();
        let ingress = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| BenchError::Process(format!("unexpected baseline output `{line}`")))?;
        Ok(Managed {
            child,
            pid,
            ingress,
            admin: None,
            tail: Arc::default(),
        })
    }

    /// Waits until `/readyz` answers 200 (store and broker connected).
    pub async fn wait_ready(&self, client: &reqwest::Client) -> Result<(), BenchError> {
        let Some(admin) = self.admin else {
            return Ok(());
        };
        let url = format!("http://{admin}/readyz");
        let started = Instant::now();
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(BenchError::Process(format!(
                    "the relay never became ready:\n{}",
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn sample(&self) -> Result<ProcSample, BenchError> {
        sample(self.pid)
    }

    /// The relay's last log lines.
    pub fn log_tail(&self) -> String {
        keep(&self.tail, None)
    }

    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// Appends `line` (if any) to the bounded tail, and returns the tail as text.
fn keep(tail: &Mutex<VecDeque<String>>, line: Option<String>) -> String {
    let mut t = match tail.lock() {
        Ok(t) => t,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(line) = line {
        if t.len() == TAIL {
            t.pop_front();
        }
        t.push_back(line);
    }
    t.iter().cloned().collect::<Vec<_>>().join("\n")
}

/// The baseline: an axum server whose handler reads the body and answers
/// 200, doing no other work. Prints `baseline listening on ADDR`.
pub async fn serve_baseline() -> Result<(), BenchError> {
    async fn nothing(_body: Bytes) -> StatusCode {
        StatusCode::OK
    }
    let router = Router::new().route("/notify/{account}", post(nothing));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(BenchError::io("binding the baseline"))?;
    let addr = listener
        .local_addr()
        .map_err(BenchError::io("binding the baseline"))?;
    println!("baseline listening on {addr}");
    axum::serve(listener, router)
        .await
        .map_err(BenchError::io("serving the baseline"))
}
