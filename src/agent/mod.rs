//! `piperd`, the build agent: a thin host around the engine. It receives
//! build requests over HTTP (`server.rs`), keeps builds, steps and logs in a
//! database (`store.rs`), and runs them with the same executor as
//! `piper exec` (`worker.rs`).
//!
//! Lifecycle: at start, builds this agent left `running` (it was killed)
//! are marked `lost`. On SIGTERM/SIGINT it stops claiming builds, lets the
//! running ones finish within the grace period, then cancels them (their
//! process groups are ended and they are recorded `canceled`).

pub mod scheduler;
pub mod server;
pub mod store;
pub mod worker;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};
use store::Store;
use worker::Agent;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7117";

#[derive(Debug, Parser)]
#[command(
    name = "piperd",
    version,
    about = "Piper's build agent: runs a repository's piper.lua on request"
)]
pub struct DaemonCli {
    #[command(subcommand)]
    pub command: DaemonCommand,
}

#[derive(Debug, Subcommand)]
pub enum DaemonCommand {
    /// Start the agent: serve the API and run builds
    Start(StartArgs),
}

#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// Config file [default: $XDG_CONFIG_HOME/piper/piperd.toml, if it exists]
    #[arg(long, value_name = "FILE", env = "PIPERD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Address to serve the API on [default: 127.0.0.1:7117]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Where the token, repository cache, workspaces and SQLite database live
    /// [default: $XDG_DATA_HOME/piper or ~/.local/share/piper]
    #[arg(long, value_name = "DIR", env = "PIPERD_DATA")]
    pub data: Option<PathBuf>,

    /// Database URL: sqlite://PATH or postgres://... [default: sqlite in the data directory]
    #[arg(long, value_name = "URL", env = "PIPERD_DATABASE")]
    pub database: Option<String>,

    /// Builds run at once [default: 2]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: Option<u32>,

    /// This agent's name, recorded on its builds [default: the host name]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Labels describing this agent, shown in the agent list (k=v,k=v)
    #[arg(long, value_name = "K=V,...", value_parser = parse_labels)]
    pub labels: Option<std::collections::BTreeMap<String, String>>,

    /// How often cron schedules (`trigger.schedule`) are checked [default: 20s]
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub schedule_check: Option<Duration>,

    /// On SIGTERM, how long running builds may take to finish before they are canceled [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub grace: Option<Duration>,
}

/// `piperd.toml`: the same settings as the flags (which win over it).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub database: Option<String>,
    pub workers: Option<u32>,
    pub name: Option<String>,
    pub labels: Option<std::collections::BTreeMap<String, String>>,
    pub schedule_check: Option<String>,
    pub grace: Option<String>,
}

/// What piperd runs with, after flags, environment, config file and defaults.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub data: PathBuf,
    pub database: Option<String>,
    pub workers: u32,
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub schedule_check: Duration,
    pub grace: Duration,
}

impl Settings {
    pub fn resolve(args: StartArgs) -> Result<Settings> {
        let file: FileSettings = crate::config_file::load(args.config.as_deref(), "piperd.toml")?;
        let bad = |key: &str, message: String| Error::Setting {
            name: format!("piperd.toml: {key}"),
            message,
        };
        let duration = |key: &str, value: Option<String>, default: Duration| match value {
            Some(text) => crate::duration::parse(&text).map_err(|m| bad(key, m)),
            None => Ok(default),
        };
        let listen = match (args.listen, file.listen) {
            (Some(addr), _) => addr,
            (None, Some(text)) => text.parse().map_err(|_| {
                bad(
                    "listen",
                    format!("`{text}` is not an address like 127.0.0.1:7117"),
                )
            })?,
            (None, None) => DEFAULT_LISTEN.parse().expect("valid default address"),
        };
        let workers = args.workers.or(file.workers).unwrap_or(2);
        if workers == 0 {
            return Err(bad("workers", "must be at least 1".into()));
        }
        Ok(Settings {
            listen,
            data: args.data.or(file.data).unwrap_or_else(default_data_dir),
            database: args.database.or(file.database),
            workers,
            name: args.name.or(file.name).unwrap_or_else(hostname),
            labels: args.labels.or(file.labels).unwrap_or_default(),
            schedule_check: match args.schedule_check {
                Some(d) => d,
                None => duration(
                    "schedule_check",
                    file.schedule_check,
                    Duration::from_secs(20),
                )?,
            },
            grace: match args.grace {
                Some(d) => d,
                None => duration("grace", file.grace, Duration::from_secs(30))?,
            },
        })
    }
}

fn parse_labels(
    text: &str,
) -> std::result::Result<std::collections::BTreeMap<String, String>, String> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                Ok((k.trim().to_string(), v.trim().to_string()))
            }
            _ => Err(format!("`{pair}` is not key=value")),
        })
        .collect()
}

/// The default data directory, shared with the CLI (which reads the token).
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("piper");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/piper")
}

pub fn main() -> i32 {
    let cli = DaemonCli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("PIPER_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let DaemonCommand::Start(args) = cli.command;
    match start(args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Reads the API token, creating it (0600) on first start.
fn token(data: &Path) -> Result<String> {
    let path = data.join("token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        return Ok(token.trim().to_string());
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| Error::io("cannot read random bytes for the token", e))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Error::io(format!("cannot create {}", path.display()), e))?;
    file.write_all(token.as_bytes())
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    eprintln!(
        "piperd: created the API token in {} (printed once):\n  {token}",
        path.display()
    );
    Ok(token)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "agent".into())
}

fn start(args: StartArgs) -> Result<()> {
    let args = Settings::resolve(args)?;
    let data = args.data.clone();
    std::fs::create_dir_all(&data)
        .map_err(|e| Error::io(format!("cannot create {}", data.display()), e))?;
    let data = data
        .canonicalize()
        .map_err(|e| Error::io(format!("cannot resolve {}", data.display()), e))?;
    let token = token(&data)?;
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data.join("piperd.db").display()));
    let name = args.name.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))?;
    runtime.block_on(serve(args, data, database, name, token))
}

async fn serve(
    args: Settings,
    data: PathBuf,
    database: String,
    name: String,
    token: String,
) -> Result<()> {
    // Before the first git command: every orphan (git's detached
    // maintenance, daemons steps leave) is re-parented here and reaped.
    crate::reaper::start();
    let store = Store::open(&database).await.map_err(|e| {
        Error::io(
            format!("cannot open the database {database}"),
            std::io::Error::other(e.to_string()),
        )
    })?;
    let lost = store.mark_lost(&name).await.map_err(|e| {
        Error::io(
            "cannot recover builds",
            std::io::Error::other(e.to_string()),
        )
    })?;
    if lost > 0 {
        tracing::warn!(
            "{lost} build(s) were left running by a previous run of agent {name}: marked lost"
        );
    }
    let agent = Arc::new(Agent::new(store, name.clone(), data.clone()));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {}", args.listen), e))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::io("cannot read the listening address", e))?;
    // Scripts and tests find the port here (useful with --listen ...:0).
    crate::fsutil::write_atomic(&data.join("piperd.addr"), address.to_string().as_bytes())
        .map_err(|e| Error::io("cannot write piperd.addr", e))?;
    tracing::info!(%address, agent = %name, database = agent.store.backend_name(), "piperd listening");

    agent
        .store
        .register_agent(
            &name,
            &address.to_string(),
            i64::from(args.workers),
            &args.labels,
        )
        .await
        .map_err(|e| {
            Error::io(
                "cannot register the agent",
                std::io::Error::other(e.to_string()),
            )
        })?;
    let heartbeat = {
        let agent = agent.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if let Err(e) = agent.store.heartbeat(&agent.name).await {
                    tracing::warn!("heartbeat failed: {e}");
                }
            }
        })
    };
    let scheduler = tokio::spawn(scheduler::run(agent.clone(), args.schedule_check));
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        workers.push(tokio::spawn(agent.clone().work()));
    }
    let state = server::ApiState {
        agent: agent.clone(),
        token: Arc::new(token),
    };
    let shutdown = {
        let agent = agent.clone();
        async move {
            shutdown_signal().await;
            tracing::info!(
                "stopping: no new builds; running builds get {:?} to finish",
                args.grace
            );
            agent.stop_claiming.cancel();
        }
    };
    // Keep serving (status, logs) while running builds finish.
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, server::router(state)).await;
    });
    shutdown.await;
    let deadline = tokio::time::Instant::now() + args.grace;
    while agent.busy() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if agent.busy() {
        tracing::warn!("grace period over: canceling running builds");
        agent.cancel_all();
    }
    for worker in workers {
        let _ = worker.await;
    }
    server.abort();
    heartbeat.abort();
    let _ = scheduler.await;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
}
