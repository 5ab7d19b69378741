//! Running piperd (`piperd start`, after its settings are read): what a
//! crashed previous run left is recovered, the agent registers in the
//! cluster's list, its background work starts (heartbeats, leases,
//! fencing, notifications, the schedule, the workers) and the API serves;
//! on SIGINT or SIGTERM it drains, then stops. Sits under `agent/mod.rs`
//! (the piperd command line), on the worker, the server and the store.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::random::random_hex;
use super::settings::{self, Settings, labels_and_facts};
use super::store::Store;
use super::worker::Agent;
use super::{connections, guard, lock, router, scheduler, server};
use crate::error::{Error, Result};

/// The file in the data directory holding the address piperd listens on
/// (removed when it stops); the CLI on the same machine reads it.
pub const ADDRESS_FILE: &str = "piperd.addr";

pub(super) async fn serve(
    args: Settings,
    data: PathBuf,
    mut lock: lock::DataDirLock,
    database: String,
    name: String,
    token: String,
    policy: server::Policy,
) -> Result<()> {
    // Before the first git command: every orphan (git's detached
    // maintenance, daemons steps leave) is re-parented here and reaped.
    crate::reaper::start();
    let signals = shutdown_signal();
    let store = Store::open(&database)
        .await
        .map_err(store_error(format!("cannot open the database {database}")))?;
    let id = identity(&data)?;
    let guard = recover_previous_run(&store, &data, &id, &name).await?;
    let agent = Arc::new(Agent::new(
        store,
        settings::AgentSettings {
            id,
            name: name.clone(),
            labels: labels_and_facts(&args.labels),
            data: data.clone(),
            git_timeout: args.git_timeout,
            local_repositories: policy.local_repositories,
            lease: args.lease,
            heartbeat: args.heartbeat,
            guard: Some(guard),
            remote_cache: args.remote_cache.clone(),
        },
    ));
    let (listener, address) = listen_on(&args, &data, &mut lock).await?;
    tracing::info!(%address, agent = %name, database = agent.store.backend_name(), "piperd listening");
    register(&agent, &address, &args, &token).await?;
    let mut tasks = Tasks::spawn(&agent, &args);
    let state = server::ApiState {
        agent: agent.clone(),
        policy: Arc::new(policy),
    };
    // Keep serving (status, logs) while running builds finish.
    let server = tokio::spawn(async move {
        connections::serve(listener, router::router(state)).await;
    });
    signals.await;
    drain(&agent, args.grace).await;
    tasks.end_workers().await;
    server.abort();
    // Offline in the agent list at once, not after its lease.
    record_state(&agent, "stopped").await;
    // A stopped agent's address would send the CLI to a closed port (or
    // another program's): say nothing rather than something stale.
    let _ = std::fs::remove_file(data.join(ADDRESS_FILE));
    tasks.end().await;
    Ok(())
}

/// An error of the store while starting, saying what could not be done.
fn store_error(what: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| Error::io(what, std::io::Error::other(e.to_string()))
}

/// What a crashed previous run of this agent left: its steps' process
/// groups (re-parented to init when it died), its workspaces and its
/// builds, re-queued or ended now without waiting for their leases. Then
/// the guard, which ends the steps when this process no longer can (it
/// exits, however, or stops renewing its leases: stopped, wedged).
async fn recover_previous_run(
    store: &Store,
    data: &Path,
    id: &str,
    name: &str,
) -> Result<guard::Guard> {
    let groups = data.join("process-groups");
    let ended = crate::process::end_leftover_groups(&groups);
    if ended > 0 {
        tracing::warn!("ended {ended} process group(s) a previous run of this agent left running");
    }
    crate::process::journal_groups_in(groups.clone());
    let guard = guard::Guard::spawn(&groups)
        .map_err(|e| Error::io("cannot start the guard process (piperd guard)", e))?;
    let _ = std::fs::remove_dir_all(data.join("workspaces"));
    let rescued =
        (store.rescue(Some(id), name).await).map_err(store_error("cannot recover builds"))?;
    for done in &rescued {
        tracing::warn!(
            build = done.id,
            status = done.status.as_str(),
            "left running by a previous run of this agent: {}",
            done.reason
        );
    }
    Ok(guard)
}

/// Binds `--listen` and writes the address where scripts, tests and the
/// CLI find the port (useful with `--listen ...:0`).
async fn listen_on(
    args: &Settings,
    data: &Path,
    lock: &mut lock::DataDirLock,
) -> Result<(tokio::net::TcpListener, std::net::SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::io(format!("cannot listen on {}", args.listen), e))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::io("cannot read the listening address", e))?;
    lock.record(Some(&address.to_string()))?;
    crate::fsutil::write_atomic(&data.join(ADDRESS_FILE), address.to_string().as_bytes())
        .map_err(|e| Error::io(format!("cannot write {ADDRESS_FILE}"), e))?;
    Ok((listener, address))
}

/// The agent in the cluster's list, and its token file one of the
/// cluster's tokens (the CLI on this machine reads it).
async fn register(
    agent: &Agent,
    address: &std::net::SocketAddr,
    args: &Settings,
    token: &str,
) -> Result<()> {
    let name = &agent.name;
    // A new --name on the same data dir is a rename: the identity (and so
    // the builds it ran and its token) stays.
    if let Ok(known) = agent.store.agents().await
        && let Some(before) = known.iter().find(|a| a.id == agent.id)
        && &before.name != name
    {
        tracing::info!(
            from = %before.name,
            to = %name,
            "agent renamed; its identity, token and builds are kept"
        );
    }
    let lease_ms = args.lease.as_millis() as i64;
    let workers = i64::from(args.workers);
    (agent.store)
        .register_agent(
            &agent.id,
            name,
            &address.to_string(),
            workers,
            &agent.labels,
            lease_ms,
        )
        .await
        .map_err(store_error("cannot register the agent"))?;
    let label = format!("agent {name} ({})", agent.id.get(..8).unwrap_or(&agent.id));
    (agent.store)
        .add_token(&label, &server::token_hash(token), true)
        .await
        .map_err(store_error("cannot record the agent's token"))?;
    Ok(())
}

/// The agent's background work: heartbeats, leases, fencing, database
/// notifications, the schedule, and `--workers` workers claiming builds.
struct Tasks {
    heartbeat: tokio::task::JoinHandle<()>,
    leases: tokio::task::JoinHandle<()>,
    fenced: tokio::task::JoinHandle<()>,
    notifications: tokio::task::JoinHandle<()>,
    scheduler: tokio::task::JoinHandle<()>,
    indexer: tokio::task::JoinHandle<()>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Tasks {
    fn spawn(agent: &Arc<Agent>, args: &Settings) -> Tasks {
        let heartbeat = {
            let agent = agent.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(agent.heartbeat).await;
                    if let Err(e) = agent.store.heartbeat(&agent.id).await {
                        tracing::warn!("heartbeat failed: {e}");
                    }
                }
            })
        };
        Tasks {
            heartbeat,
            leases: tokio::spawn(agent.clone().keep_leases()),
            fenced: tokio::spawn(agent.clone().keep_fenced()),
            notifications: tokio::spawn(listen(agent.clone())),
            scheduler: tokio::spawn(scheduler::run(agent.clone(), args.schedule_check)),
            indexer: tokio::spawn(super::search_index::run(agent.clone())),
            workers: (0..args.workers)
                .map(|_| tokio::spawn(agent.clone().work()))
                .collect(),
        }
    }

    /// Waits for the workers (they stop claiming once the agent drains).
    async fn end_workers(&mut self) {
        for worker in self.workers.drain(..) {
            let _ = worker.await;
        }
    }

    async fn end(self) {
        self.heartbeat.abort();
        self.leases.abort();
        self.fenced.abort();
        self.notifications.abort();
        self.indexer.abort();
        let _ = self.scheduler.await;
    }
}

/// Stopping: no new builds; running ones get `grace` to finish, then are
/// canceled (and the store no longer waited for).
async fn drain(agent: &Agent, grace: Duration) {
    tracing::info!("stopping: no new builds; running builds get {grace:?} to finish");
    agent.stop_claiming.cancel();
    // Shown as `draining` in the agent list meanwhile.
    record_state(agent, "draining").await;
    let deadline = tokio::time::Instant::now() + grace;
    while agent.busy() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if agent.busy() {
        tracing::warn!("grace period over: canceling running builds");
        agent.cancel_all();
        agent.abandon.cancel();
    }
}

/// Records the agent's state in the agent list; a database that does not
/// answer within 2 s is not waited for (stopping must not hang on it).
async fn record_state(agent: &Agent, state: &str) {
    let recorded = agent.store.set_agent_state(&agent.id, state);
    if tokio::time::timeout(Duration::from_secs(2), recorded)
        .await
        .is_err()
    {
        tracing::warn!("cannot record that the agent is {state}: the database does not answer");
    }
}

/// PostgreSQL: wakes a worker on `piper_builds` (a build was queued or
/// re-queued anywhere) and cancels a local build on `piper_cancel`. After
/// the listening connection was lost and is back, every idle worker claims
/// once, for what was queued meanwhile; the workers' one-second poll covers
/// the time without it.
async fn listen(agent: Arc<Agent>) {
    let Some(pool) = agent.store.postgres_pool() else {
        return;
    };
    // A diagnostic knob: measure pickup as if notifications were lost.
    if std::env::var("PIPERD_NOTIFY").as_deref() == Ok("off") {
        return;
    }
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(pool).await {
            Ok(listener) => listener,
            Err(e) => {
                tracing::warn!("cannot listen for notifications: {e}; polling meanwhile");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener
            .listen_all(["piper_builds", "piper_cancel", "piper_log"])
            .await
        {
            tracing::warn!("cannot listen for notifications: {e}; polling meanwhile");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        agent.wake.notify_waiters();
        loop {
            match listener.try_recv().await {
                Ok(Some(note)) if note.channel() == "piper_cancel" => {
                    if let Ok(id) = note.payload().parse() {
                        agent.cancel(id);
                    }
                }
                Ok(Some(note)) if note.channel() == "piper_log" => {
                    if let Ok(id) = note.payload().parse() {
                        let _ = agent.written.send(id);
                    }
                }
                Ok(Some(note)) => {
                    // piper_builds: a build was queued (its id, if given).
                    if let Ok(id) = note.payload().parse() {
                        let _ = agent.written.send(id);
                    }
                    agent.wake.notify_one();
                }
                // The connection dropped; it reconnects on the next call.
                Ok(None) => {
                    tracing::warn!("the notification connection dropped; reconnecting");
                    agent.wake.notify_waiters();
                }
                Err(e) => {
                    tracing::warn!("notifications: {e}");
                    break;
                }
            }
        }
    }
}

/// This agent's identity: generated on first start and kept in the data
/// directory, so two agents with the same name never take each other's
/// builds, and a restarted agent knows which builds were its own.
fn identity(data: &Path) -> Result<String> {
    let path = data.join("agent-id");
    if let Ok(id) = std::fs::read_to_string(&path)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_string());
    }
    let id = random_hex(16)?;
    crate::fsutil::write_atomic(&path, id.as_bytes())
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
    Ok(id)
}

/// SIGINT or SIGTERM, as a future. The handlers are installed when this
/// is called (before the agent says it is ready), not when it is awaited:
/// a SIGTERM right after start must stop the agent cleanly, not kill it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let signals = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    );
    async move {
        let (Ok(mut int), Ok(mut term)) = signals else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}
