//! piperd's settings: the flags of `piperd start`, the same in
//! `piperd.toml`, and what the agent runs with once both are read (flags,
//! then environment, then the file, then defaults), checked together.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{fence, hooks};
use crate::error::{Error, Result};

#[derive(Debug, Default, clap::Args)]
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

    /// Builds run at once; 0 serves the API only, other agents of the
    /// cluster run the builds [default: 2]
    #[arg(long, value_name = "N")]
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

    /// How long a claimed build stays this agent's without a renewal; after
    /// that any agent may rescue it [default: 30s]
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub lease: Option<Duration>,

    /// How often the agent renews its leases, rescues expired builds of
    /// other agents and records that it is alive [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub heartbeat: Option<Duration>,

    /// Longest a git command (clone, fetch, checkout) may take before it is
    /// killed and the build fails [default: 10m]
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub git_timeout: Option<Duration>,

    /// Serve reads (builds, logs, agents) without the token [default: off]
    #[arg(long)]
    pub public_read: bool,

    /// Build only repositories matching this glob (repeatable; `*` stays
    /// within one `/` part, `**` crosses them) [default: any]
    #[arg(long = "repository", value_name = "PATTERN")]
    pub repositories: Vec<String>,

    /// A URL people's browsers reach this agent by, e.g.
    /// https://ci.example.com behind a proxy (repeatable): its name is
    /// served to browsers, its origin may post with the session cookie
    /// [default: the agent's addresses and localhost only]
    #[arg(long = "public-url", value_name = "URL")]
    pub public_urls: Vec<String>,

    /// A remote cache behind the agent's disk cache: the Remote Execution
    /// API (grpc://HOST:PORT, grpcs://) or Bazel's HTTP cache protocol
    /// (http(s)://HOST/PREFIX). Builds fetch what ran anywhere that uses
    /// it, and upload what they run [default: none]
    #[arg(long, value_name = "URL", env = "PIPERD_REMOTE_CACHE")]
    pub remote_cache: Option<String>,

    /// The remote cache's REAPI instance name (gRPC only)
    #[arg(long, value_name = "NAME", env = "PIPERD_REMOTE_INSTANCE")]
    pub remote_instance: Option<String>,

    /// A header sent with every remote cache request (repeatable):
    /// NAME=VALUE, NAME=@FILE (the file's contents) or NAME=env:VARIABLE.
    /// Values are never logged
    #[arg(long = "remote-header", value_name = "NAME=VALUE")]
    pub remote_headers: Vec<String>,

    /// Run builds' steps on a Remote Execution API cluster
    /// (grpc://HOST:PORT, grpcs://): steps with declared inputs and outputs
    /// fan out there, the rest run on this agent. Also the remote cache
    /// unless --remote-cache names another [default: none]
    #[arg(long, value_name = "URL", env = "PIPERD_REMOTE_EXEC")]
    pub remote_exec: Option<String>,

    /// Steps of a build in flight on the cluster besides the agent's own
    /// [default: 32]
    #[arg(long, value_name = "N", env = "PIPERD_REMOTE_JOBS")]
    pub remote_jobs: Option<usize>,

    /// Run a step on the agent when the cluster cannot be reached
    #[arg(long, env = "PIPERD_REMOTE_EXEC_FALLBACK")]
    pub remote_exec_fallback: bool,
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
    pub git_timeout: Option<String>,
    pub lease: Option<String>,
    pub heartbeat: Option<String>,
    pub public_read: Option<bool>,
    pub repositories: Option<Vec<String>>,
    pub public_urls: Option<Vec<String>>,
    pub remote_cache: Option<String>,
    pub remote_instance: Option<String>,
    pub remote_headers: Option<Vec<String>>,
    pub remote_exec: Option<String>,
    pub remote_jobs: Option<usize>,
    pub remote_exec_fallback: Option<bool>,
    /// Git hosts' webhooks, one table per repository.
    #[serde(default)]
    pub webhooks: Vec<hooks::HookSettings>,
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
    pub git_timeout: Duration,
    pub lease: Duration,
    pub heartbeat: Duration,
    pub public_read: bool,
    pub repositories: Option<Vec<String>>,
    pub public_urls: Vec<String>,
    pub remote_cache: Option<RemoteCacheSettings>,
    pub webhooks: Vec<hooks::HookSettings>,
}

/// A remote cache (and a remote executor) as piperd's settings give
/// them; made anew for each build.
#[derive(Clone)]
pub struct RemoteCacheSettings {
    pub url: String,
    pub instance: Option<String>,
    /// `NAME=VALUE` arguments (see `RemoteCache::header_arg`).
    pub headers: Vec<String>,
    /// `--remote-exec`: the cluster that runs steps.
    pub exec: Option<String>,
    pub jobs: Option<usize>,
    pub fallback: bool,
}

impl RemoteCacheSettings {
    pub fn cache(&self) -> Result<crate::RemoteCache, String> {
        crate::RemoteCache::with_settings(&self.url, self.instance.as_deref(), &self.headers)
    }

    /// The remote executor, when there is one.
    pub fn executor(&self) -> Option<Result<crate::RemoteExecutor, String>> {
        let url = self.exec.as_deref()?;
        let made = crate::RemoteCache::with_settings(url, self.instance.as_deref(), &self.headers)
            .and_then(crate::RemoteExecutor::new)
            .map(|executor| {
                let executor = executor.fallback(self.fallback);
                match self.jobs {
                    Some(jobs) => executor.jobs(jobs),
                    None => executor,
                }
            });
        Some(made)
    }
}

impl std::fmt::Debug for RemoteCacheSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The headers' names only: their values are credentials.
        let names: Vec<&str> = (self.headers.iter())
            .map(|h| h.split_once('=').map_or(h.as_str(), |(name, _)| name))
            .collect();
        f.debug_struct("RemoteCacheSettings")
            .field("url", &self.url)
            .field("instance", &self.instance)
            .field("headers", &names)
            .field("exec", &self.exec)
            .field("jobs", &self.jobs)
            .field("fallback", &self.fallback)
            .finish()
    }
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
        // 0: an agent that serves the API (takes submits, streams logs)
        // and runs no builds; the others of the cluster run them.
        let workers = args.workers.or(file.workers).unwrap_or(2);
        let settings = Settings {
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
            git_timeout: match args.git_timeout {
                Some(d) => d,
                None => duration("git_timeout", file.git_timeout, Duration::from_secs(600))?,
            },
            lease: match args.lease {
                Some(d) => d,
                None => duration("lease", file.lease, Duration::from_secs(30))?,
            },
            heartbeat: match args.heartbeat {
                Some(d) => d,
                None => duration("heartbeat", file.heartbeat, Duration::from_secs(10))?,
            },
            public_read: args.public_read || file.public_read.unwrap_or(false),
            repositories: if args.repositories.is_empty() {
                file.repositories
            } else {
                Some(args.repositories)
            },
            public_urls: if args.public_urls.is_empty() {
                file.public_urls.unwrap_or_default()
            } else {
                args.public_urls
            },
            // A cluster is also the remote cache, unless another is named.
            remote_cache: {
                let exec = args.remote_exec.or(file.remote_exec);
                let url = (args.remote_cache.or(file.remote_cache)).or_else(|| exec.clone());
                url.map(|url| RemoteCacheSettings {
                    url,
                    instance: args.remote_instance.or(file.remote_instance),
                    headers: if args.remote_headers.is_empty() {
                        file.remote_headers.unwrap_or_default()
                    } else {
                        args.remote_headers
                    },
                    exec,
                    jobs: args.remote_jobs.or(file.remote_jobs),
                    fallback: args.remote_exec_fallback
                        || file.remote_exec_fallback.unwrap_or(false),
                })
            },
            webhooks: file.webhooks,
        };
        if let Some(remote) = &settings.remote_cache {
            // Checked now: a typo is a start-up error, not a warning per build.
            remote.cache().map_err(|message| Error::Setting {
                name: "--remote-cache".into(),
                message,
            })?;
            if let Some(Err(message)) = remote.executor() {
                return Err(Error::Setting {
                    name: "--remote-exec".into(),
                    message,
                });
            }
        }
        fence::check_timing(settings.lease, settings.heartbeat).map_err(|message| {
            Error::Setting {
                name: "--heartbeat / --lease".into(),
                message,
            }
        })?;
        Ok(settings)
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

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7117";

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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "agent".into())
}

/// What to run an agent with, besides its store.
pub struct AgentSettings {
    pub id: String,
    pub name: String,
    pub labels: std::collections::BTreeMap<String, String>,
    pub data: std::path::PathBuf,
    pub git_timeout: std::time::Duration,
    /// Whether git may read local repositories (the `file` transport).
    pub local_repositories: bool,
    pub lease: std::time::Duration,
    pub heartbeat: std::time::Duration,
    /// The guard process that ends the steps when piperd cannot.
    pub guard: Option<super::guard::Guard>,
    /// A remote cache behind the disk cache (`--remote-cache`).
    pub remote_cache: Option<RemoteCacheSettings>,
}

/// What an agent advertises: the facts it detects about its machine
/// (`os`, `arch`, `cpus`), then its configured labels, which win.
pub fn labels_and_facts(
    labels: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    let mut all = std::collections::BTreeMap::from([
        ("os".to_string(), std::env::consts::OS.to_string()),
        ("arch".to_string(), std::env::consts::ARCH.to_string()),
        (
            "cpus".to_string(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .to_string(),
        ),
    ]);
    all.extend(labels.clone());
    all
}

/// This machine's facts and the labels `PIPER_LABELS=k=v,...` gives it: what
/// a local run compares with a pipeline's `requires` (pairs without `=` are
/// ignored).
pub fn local_labels() -> std::collections::BTreeMap<String, String> {
    let given = std::env::var("PIPER_LABELS").unwrap_or_default();
    let mut labels = std::collections::BTreeMap::new();
    for pair in given.split(',').filter(|p| !p.trim().is_empty()) {
        if let Some((k, v)) = pair.split_once('=') {
            labels.insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    labels_and_facts(&labels)
}
