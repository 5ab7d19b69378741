//! `piperd`, the build agent: a thin host around the engine. It receives
//! build requests over HTTP (`server/`), keeps builds, steps and logs in a
//! database (`store/`), and runs them with the same executor as
//! `piper exec` (`worker.rs`).
//!
//! Lifecycle: at start, builds this agent left `running` (it was killed)
//! are marked `lost`. On SIGTERM/SIGINT it stops claiming builds, lets the
//! running ones finish within the grace period, then cancels them (their
//! process groups are ended and they are recorded `canceled`).

pub mod allow_list;
pub mod api;
mod checkout;
mod connections;
mod daemon;
mod escaped;
mod fence;
pub mod git;
mod guard;
mod held;
mod history;
pub mod hooks;
pub mod lock;
mod log_export;
mod log_lines;
mod log_split;
mod log_writer;
pub mod metrics;
pub mod origin;
mod random;
mod recorder;
mod router;
pub mod scheduler;
mod search_index;
pub mod server;
mod settings;
pub mod store;
mod ui;
pub mod worker;

use random::random_hex;

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::error::{Error, Result};
use store::Store;

pub use daemon::ADDRESS_FILE;
pub use settings::{
    DEFAULT_LISTEN, FileSettings, Settings, StartArgs, default_data_dir, labels_and_facts,
    local_labels,
};

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
// Parsed once per process: the size of `Start` costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum DaemonCommand {
    /// Start the agent: serve the API and run builds
    Start(StartArgs),
    /// Manage the API tokens every agent of the cluster accepts
    Token(TokenArgs),
    /// Print the API's OpenAPI document (as served at /api/v1/openapi.json)
    Openapi,
    /// The guard process `start` runs beside itself (not for people): ends
    /// the agent's step process groups when piperd exits or stops renewing
    #[command(hide = true)]
    Guard {
        /// The agent's journal of process groups
        #[arg(long, value_name = "DIR")]
        groups: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub action: TokenAction,
    /// Config file (for `database` and `data`), as for `start`
    #[arg(long, value_name = "FILE", env = "PIPERD_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Data directory, as for `start` (its SQLite database by default)
    #[arg(long, value_name = "DIR", env = "PIPERD_DATA", global = true)]
    pub data: Option<PathBuf>,
    /// Database URL, as for `start`
    #[arg(long, value_name = "URL", env = "PIPERD_DATABASE", global = true)]
    pub database: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create a token (printed once; only its hash is stored)
    Create {
        /// A name to tell it by, e.g. `ci` or `alice-laptop`
        name: String,
    },
    /// List the tokens by name, with when they were created
    List,
    /// Revoke a token: every agent refuses it from now on
    Revoke {
        /// The token's name
        name: String,
    },
}

pub fn main() -> i32 {
    let cli = DaemonCli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("PIPER_LOG").unwrap_or_else(|_| "info".into());
    // Colour only on a terminal: a redirected log stays plain text.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let result = match cli.command {
        DaemonCommand::Start(args) => start(args),
        DaemonCommand::Token(args) => token_command(args),
        DaemonCommand::Openapi => {
            println!("{}", server::openapi_json());
            Ok(())
        }
        DaemonCommand::Guard { groups } => return guard::main(&groups),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

/// Shortest token accepted from the token file.
const TOKEN_MIN_LEN: usize = 32;

/// Reads the API token, creating it (0600, atomically) on first start. A
/// token file that is empty, short, or readable by others is refused: the
/// agent does not serve with a token anyone may know.
fn token(data: &Path) -> Result<String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = data.join("token");
    let bad = |message: String| Error::Setting {
        name: path.display().to_string(),
        message,
    };
    match std::fs::metadata(&path) {
        Ok(meta) => {
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(bad(format!(
                    "the token file is readable by others (mode {:o}); run `chmod 600 {}`",
                    meta.permissions().mode() & 0o777,
                    path.display()
                )));
            }
            let token = std::fs::read_to_string(&path)
                .map_err(|e| Error::io(format!("cannot read {}", path.display()), e))?;
            let token = token.trim().to_string();
            if token.len() < TOKEN_MIN_LEN || token.contains(char::is_whitespace) {
                return Err(bad(format!(
                    "the token file holds {} characters; a token is at least {TOKEN_MIN_LEN} without spaces. Delete the file and restart piperd to create a new one",
                    token.len()
                )));
            }
            return Ok(token);
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io(format!("cannot read {}", path.display()), e));
        }
        Err(_) => {}
    }
    let token = random_hex(32)?;
    // Written whole to a private temporary file, then linked into place: a
    // crash leaves no file or the whole token, never an empty one; and of
    // two agents starting at once, one token wins and both read it.
    let tmp = data.join(format!(".token.tmp{}", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(token.as_bytes())?;
        file.sync_all()?;
        std::fs::hard_link(&tmp, &path)
    })();
    let _ = std::fs::remove_file(&tmp);
    match written {
        Ok(()) => {
            // Where it is, not the token itself: stderr is often a log
            // file or the journal, readable by more than the agent's user.
            eprintln!(
                "piperd: created the API token in {} (mode 0600): `piper` on this machine reads it from there; elsewhere pass it as --token or PIPER_TOKEN",
                path.display()
            );
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self::token(data),
        Err(e) => Err(Error::io(format!("cannot create {}", path.display()), e)),
    }
}

/// `piperd token create|list|revoke`, against the database `start` would use.
fn token_command(args: TokenArgs) -> Result<()> {
    let settings = Settings::resolve(StartArgs {
        config: args.config,
        data: args.data,
        database: args.database,
        ..StartArgs::default()
    })?;
    let database = settings
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", settings.data.join("piperd.db").display()));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))?;
    let store_error = |e: sqlx::Error| Error::io("database", std::io::Error::other(e.to_string()));
    runtime.block_on(async {
        if database.starts_with("sqlite:") {
            std::fs::create_dir_all(&settings.data)
                .map_err(|e| Error::io(format!("cannot create {}", settings.data.display()), e))?;
        }
        let store = Store::open(&database).await.map_err(store_error)?;
        match args.action {
            TokenAction::Create { name } => {
                let token = random_hex(32)?;
                if !store
                    .add_token(&name, &server::token_hash(&token), false)
                    .await
                    .map_err(store_error)?
                {
                    return Err(Error::Setting {
                        name: "token".into(),
                        message: format!(
                            "a token named `{name}` exists; revoke it first or pick another name"
                        ),
                    });
                }
                eprintln!(
                    "created token `{name}` (printed once; every agent of this database accepts it):"
                );
                println!("{token}");
            }
            TokenAction::List => {
                for (name, created) in store.tokens().await.map_err(store_error)? {
                    println!("{name}\tcreated {}", created / 1000);
                }
            }
            TokenAction::Revoke { name } => {
                if !store.revoke_token(&name).await.map_err(store_error)? {
                    return Err(Error::Setting {
                        name: "token".into(),
                        message: format!("no token named `{name}`"),
                    });
                }
                eprintln!("revoked token `{name}`");
            }
        }
        Ok(())
    })
}

/// Raises this process's limit of open files to its hard limit (as Go's
/// runtime does): the connections the server allows, the database pool,
/// git and the steps' pipes all take descriptors, and a soft limit of 1024
/// would run out first.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn start(args: StartArgs) -> Result<()> {
    let args = Settings::resolve(args)?;
    raise_open_files_limit();
    let data = args.data.clone();
    std::fs::create_dir_all(&data)
        .map_err(|e| Error::io(format!("cannot create {}", data.display()), e))?;
    // The token, the database (build environments, logs) and checkouts:
    // for this user only.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("cannot restrict {}", data.display()), e))?;
    }
    let data = data
        .canonicalize()
        .map_err(|e| Error::io(format!("cannot resolve {}", data.display()), e))?;
    // Before anything in it is read or changed: one agent per data dir.
    let lock = lock::DataDirLock::acquire(&data)?;
    let token = token(&data)?;
    let repositories = match &args.repositories {
        Some(patterns) => Some(
            server::RepositoryAllowList::new(patterns).map_err(|message| Error::Setting {
                name: "repositories".into(),
                message,
            })?,
        ),
        None => None,
    };
    let hooks = hooks::Hooks::new(&args.webhooks).map_err(|message| Error::Setting {
        name: "piperd.toml".into(),
        message,
    })?;
    // Local repositories (git's `file` transport) are built by an agent
    // that only its own machine reaches, or that has an allow-list (which
    // says which paths); one that listens beyond loopback without one
    // would let anyone who reaches it read any repository on its disk.
    let local_repositories = args.listen.ip().is_loopback() || repositories.is_some();
    if !args.listen.ip().is_loopback() && repositories.is_none() {
        tracing::warn!(
            listen = %args.listen,
            "listening beyond loopback without an allow-list: submits may name any git URL, and local paths are refused; set `repositories` (--repository) to say which are built"
        );
    }
    let served = origin::Served::new(&args.public_urls).map_err(|message| Error::Setting {
        name: "--public-url".into(),
        message,
    })?;
    let policy = server::Policy {
        public_read: args.public_read,
        repositories,
        hooks,
        local_repositories,
        served,
    };
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", data.join("piperd.db").display()));
    let name = args.name.clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("cannot start the async runtime", e))?;
    runtime.block_on(daemon::serve(
        args, data, lock, database, name, token, policy,
    ))
}
