//! Where piperd keeps builds, steps and logs: embedded SQLite by default,
//! PostgreSQL when several agents share one database.
//!
//! One `Store` with a backend per database, rather than two copies of every
//! method: the queries are the same text on both (runtime queries, `$N`
//! parameters in increasing order, which SQLite reads as named parameters),
//! and `on_backend!` instantiates each method body once per backend. SQL
//! that differs lives in per-backend constants, and each backend has its own
//! migrations (`migrations/sqlite`, `migrations/postgres`), applied at start.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Serialize;
use sqlx::Row;

// Every SQL string below is assembled from constants in this file; values
// always travel as bind parameters. That is what `AssertSqlSafe` asserts.
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub type StoreResult<T> = Result<T, sqlx::Error>;

/// `(version, file, sql)` of each migration of a backend, from `migrations/`.
macro_rules! migrations {
    ($backend:literal: $($version:literal => $file:literal),* $(,)?) => {
        &[$(($version, $file, include_str!(concat!("../../migrations/", $backend, "/", $file)))),*]
    };
}

const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = migrations!("sqlite":
    1 => "0001_builds.sql",
    2 => "0002_agents.sql",
    3 => "0003_schedule_runs.sql",
    4 => "0004_secret_env.sql",
    5 => "0005_leases.sql",
    6 => "0006_idempotency.sql",
    7 => "0007_requires.sql",
    8 => "0008_api_tokens.sql",
    9 => "0009_leader.sql",
    10 => "0010_build_events.sql",
    11 => "0011_sessions.sql",
    12 => "0012_fencing.sql",
    13 => "0013_log_lines.sql",
);
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = migrations!("postgres":
    1 => "0001_builds.sql",
    2 => "0002_agents.sql",
    3 => "0003_schedule_runs.sql",
    4 => "0004_secret_env.sql",
    5 => "0005_leases.sql",
    6 => "0006_idempotency.sql",
    7 => "0007_requires.sql",
    8 => "0008_api_tokens.sql",
    9 => "0009_leader.sql",
    10 => "0010_build_events.sql",
    11 => "0011_sessions.sql",
    12 => "0012_fencing.sql",
    13 => "0013_log_lines.sql",
);

#[derive(Clone)]
enum Backend {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's pool: one text, two
/// instantiations.
macro_rules! on_backend {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            Backend::Sqlite($pool) => $body,
            Backend::Postgres($pool) => $body,
        }
    };
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    Queued,
    Running,
    Success,
    Failed,
    Canceled,
    /// Left running by an agent that died.
    Lost,
}

impl BuildState {
    pub fn as_str(self) -> &'static str {
        match self {
            BuildState::Queued => "queued",
            BuildState::Running => "running",
            BuildState::Success => "success",
            BuildState::Failed => "failed",
            BuildState::Canceled => "canceled",
            BuildState::Lost => "lost",
        }
    }

    pub fn parse(text: &str) -> Option<BuildState> {
        Some(match text {
            "queued" => BuildState::Queued,
            "running" => BuildState::Running,
            "success" => BuildState::Success,
            "failed" => BuildState::Failed,
            "canceled" => BuildState::Canceled,
            "lost" => BuildState::Lost,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        !matches!(self, BuildState::Queued | BuildState::Running)
    }
}

/// Who holds a build: an agent's identity and name, and its lease.
#[derive(Debug, Clone)]
pub struct Holder {
    pub agent_id: String,
    pub agent_name: String,
    pub lease_ms: i64,
    /// Its labels and facts: it claims only builds whose `requires` they meet.
    pub labels: BTreeMap<String, String>,
}

/// One record of a build's event stream.
#[derive(Debug, Clone)]
pub enum StreamItem {
    /// An executor event, as stored (JSON).
    Event(String),
    /// Output of a step (a log chunk).
    Output { step: String, data: Vec<u8> },
}

/// What renewing a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    Held,
    /// Held, and someone asked to cancel it.
    CancelRequested,
    /// Not ours any more (rescued, ended): stop it.
    Lost,
}

/// A build request, as submitted.
#[derive(Debug, Clone)]
pub struct NewBuild {
    pub repo: String,
    pub git_ref: String,
    pub pipeline: String,
    pub env: BTreeMap<String, String>,
    /// Given to the steps like `env`, masked in logs, never shown.
    pub secret_env: BTreeMap<String, String>,
    pub requested_by: String,
    pub parent_id: Option<i64>,
    /// The commit to build, when the request names it exactly (a git host's
    /// push): `git_ref` then only says which branch or tag it was.
    pub sha: Option<String>,
    /// The pipeline's arguments: `"$1"`.., `ctx.args`, `PIPER_ARGS`.
    pub args: Vec<String>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Build {
    pub id: i64,
    /// Per repository: 1, 2, 3, ...
    pub number: i64,
    pub repo: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub sha: Option<String>,
    pub version: Option<String>,
    pub pipeline: String,
    pub status: BuildState,
    pub env: BTreeMap<String, String>,
    pub requested_by: String,
    /// Unix milliseconds.
    pub requested_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub agent: Option<String>,
    pub parent_id: Option<i64>,
    /// Why the build failed before or outside its steps (checkout, config).
    pub error: Option<String>,
    /// 1 for the first claim, 2 after a rescue re-queued it, ...
    pub attempt: i64,
    /// How many attempts it may take (1 + `retry_agent_lost`).
    pub max_attempts: i64,
    /// The agent holding it renews this (database clock, Unix ms).
    pub lease_expires_at: Option<i64>,
    /// A cancel was asked for while another agent ran it.
    pub cancel_requested: bool,
    /// The identity of the agent running it (`agent` is its name).
    pub agent_id: Option<String>,
    /// Labels an agent must have to run it; None until an agent read its
    /// piper.lua (any agent may claim it to do so).
    pub requires: Option<BTreeMap<String, String>>,
    /// The pipeline's arguments (`piper submit PIPELINE -- ARGS`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Taken by each claim (an attempt), larger than every token handed
    /// out before it on this database: steps get it as
    /// `PIPER_FENCING_TOKEN`, for a system they act on to refuse a stale
    /// attempt. None for a build never claimed.
    #[serde(default)]
    pub fencing_token: Option<i64>,
    /// Serialized as the names only: the values never leave the agent.
    #[serde(
        rename = "secret_env_names",
        serialize_with = "names_only",
        deserialize_with = "names_without_values",
        default
    )]
    #[schema(value_type = Vec<String>)]
    pub secret_env: BTreeMap<String, String>,
}

/// A client reads the names only: their values stay empty.
fn names_without_values<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let names: Vec<String> = serde::Deserialize::deserialize(deserializer)?;
    Ok(names.into_iter().map(|n| (n, String::new())).collect())
}

fn names_only<S: serde::Serializer>(
    vars: &BTreeMap<String, String>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(vars.keys())
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StoredStep {
    pub name: String,
    pub status: String,
    pub exit_code: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub message: Option<String>,
}

impl StoredStep {
    /// Whether the step ended (it will not change any more).
    pub fn is_final(&self) -> bool {
        !matches!(self.status.as_str(), "pending" | "queued" | "running")
    }
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AgentInfo {
    pub id: String,
    pub name: String,
    pub address: String,
    pub workers: i64,
    pub labels: BTreeMap<String, String>,
    pub version: String,
    pub started_at: i64,
    pub last_seen: i64,
    /// Running, with a heartbeat within its lease (its `--lease`).
    pub online: bool,
    /// `online`, `draining` (stopping after SIGTERM: no new builds, its
    /// running ones finish) or `offline` (stopped, or no heartbeat within
    /// its lease).
    pub status: String,
    /// It does the cluster's periodic work now (rescue, schedules).
    pub leader: bool,
    /// Builds it holds now.
    pub running: i64,
}

/// The cluster's state for `/metrics`, on the database's clock.
#[derive(Debug, Clone, Default)]
pub struct ClusterStats {
    /// (pipeline, status, count) of every build in the database.
    pub builds: Vec<(String, String, i64)>,
    pub oldest_queued_age_ms: Option<i64>,
    pub log_bytes: i64,
    pub now_ms: i64,
}

#[derive(Debug, Clone, Default)]
pub struct BuildFilter {
    pub repo: Option<String>,
    pub status: Option<BuildState>,
    pub pipeline: Option<String>,
    /// The agent's name that ran (or runs) the build.
    pub agent: Option<String>,
    /// Builds this one triggered or retriggered.
    pub parent: Option<i64>,
    /// Only builds with a smaller id (pagination cursor).
    pub before: Option<i64>,
    pub limit: i64,
}

/// A piece of log read back: the bytes from the requested offset, and the
/// offset to ask for next.
#[derive(Debug, Clone)]
pub struct LogSlice {
    pub data: Vec<u8>,
    pub next_offset: i64,
}

/// One stored chunk of a log, without its bytes.
#[derive(Debug, Clone, Copy)]
pub struct ChunkLines {
    pub seq: i64,
    /// Its first byte's offset in the log it was read for.
    pub start: i64,
    pub len: i64,
    /// Newlines in it; `None` if stored before they were counted.
    pub lines: Option<i64>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const BUILD_COLUMNS: &str = "id, number, repo, git_ref, sha, version, pipeline, status, env, requested_by, \
     requested_at, started_at, finished_at, agent, parent_id, error, secret_env, \
     attempt, max_attempts, lease_expires_at, cancel_requested, agent_id, requires, fence, args";

fn build_from_row<R: Row>(row: &R) -> StoreResult<Build>
where
    for<'r> &'r str: sqlx::ColumnIndex<R>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = row.try_get("status")?;
    let env: String = row.try_get("env")?;
    let secret_env: String = row.try_get("secret_env")?;
    Ok(Build {
        id: row.try_get("id")?,
        number: row.try_get("number")?,
        repo: row.try_get("repo")?,
        git_ref: row.try_get("git_ref")?,
        sha: row.try_get("sha")?,
        version: row.try_get("version")?,
        pipeline: row.try_get("pipeline")?,
        status: BuildState::parse(&status).unwrap_or(BuildState::Lost),
        env: serde_json::from_str(&env).unwrap_or_default(),
        requested_by: row.try_get("requested_by")?,
        requested_at: row.try_get("requested_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        agent: row.try_get("agent")?,
        parent_id: row.try_get("parent_id")?,
        error: row.try_get("error")?,
        secret_env: serde_json::from_str(&secret_env).unwrap_or_default(),
        attempt: row.try_get("attempt")?,
        max_attempts: row.try_get("max_attempts")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        cancel_requested: row.try_get("cancel_requested")?,
        agent_id: row.try_get("agent_id")?,
        requires: row
            .try_get::<Option<String>, _>("requires")?
            .and_then(|text| serde_json::from_str(&text).ok()),
        fencing_token: row.try_get("fence")?,
        args: serde_json::from_str(&row.try_get::<String, _>("args")?).unwrap_or_default(),
    })
}

/// A build taken back from the agent that held it: its new status and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rescued {
    pub id: i64,
    pub status: BuildState,
    /// The line written into its log (without `piper: `).
    pub reason: String,
}

/// What a hand-back reads of a running build.
const HELD_COLUMNS: &str =
    "id, agent, attempt, max_attempts, cancel_requested, renewed_at, lease_expires_at";

struct HeldRow {
    id: i64,
    agent: String,
    attempt: i64,
    max_attempts: i64,
    cancel_requested: bool,
    renewed_at: Option<i64>,
    lease_expires_at: Option<i64>,
}

impl HeldRow {
    fn from_row<R: Row>(row: &R) -> StoreResult<HeldRow>
    where
        for<'r> &'r str: sqlx::ColumnIndex<R>,
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> Option<i64>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        Ok(HeldRow {
            id: row.try_get("id")?,
            agent: row
                .try_get::<Option<String>, _>("agent")?
                .unwrap_or_else(|| "?".into()),
            attempt: row.try_get("attempt")?,
            max_attempts: row.try_get("max_attempts")?,
            cancel_requested: row.try_get("cancel_requested")?,
            renewed_at: row.try_get("renewed_at")?,
            lease_expires_at: row.try_get("lease_expires_at")?,
        })
    }

    /// What becomes of it, and the words for that.
    fn outcome(&self) -> (BuildState, String) {
        if self.cancel_requested {
            (
                BuildState::Canceled,
                "ended canceled: a cancel was asked for".into(),
            )
        } else if self.attempt < self.max_attempts {
            (
                BuildState::Queued,
                format!(
                    "queued again for attempt {} of {} (retry_agent_lost)",
                    self.attempt + 1,
                    self.max_attempts
                ),
            )
        } else {
            (
                BuildState::Lost,
                format!(
                    "ended lost: {} of {} attempts taken (retry_agent_lost)",
                    self.attempt, self.max_attempts
                ),
            )
        }
    }
}

/// Unix milliseconds as an RFC 3339 time (UTC), for messages.
fn clock(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| "never".into())
}

/// Hands `$held` back in transaction `$tx` (`$now`: the database clock as
/// SQL; `$blank`: its secrets blanked, as SQL): queued again, or ended
/// (its secrets blanked), fenced by its attempt, with `$cause` and
/// the outcome written into its log (the stream's next sequence number, a
/// line of the build's own). `Some(Rescued)`, or None when the row moved
/// on meanwhile.
macro_rules! hand_back {
    ($tx:ident, $now:expr, $blank:expr, $held:expr, $cause:expr) => {{
        let held: &HeldRow = $held;
        let (status, outcome) = held.outcome();
        let reason = format!("{}; {outcome}", $cause);
        let ended = (status != BuildState::Queued).then(|| reason.clone());
        let update = format!(
            "UPDATE builds SET status = $1, error = $2, lease_expires_at = NULL, \
             finished_at = CASE WHEN $1 = 'queued' THEN NULL ELSE {} END, \
             secret_env = CASE WHEN $1 = 'queued' THEN secret_env ELSE {} END \
             WHERE id = $3 AND attempt = $4 AND status = 'running'",
            $now, $blank
        );
        let moved = sqlx::query(sqlx::AssertSqlSafe(update.as_str()))
            .bind(status.as_str())
            .bind(ended)
            .bind(held.id)
            .bind(held.attempt)
            .execute(&mut *$tx)
            .await?
            .rows_affected()
            == 1;
        if moved {
            let at = sqlx::query(
                "SELECT (SELECT COALESCE(MAX(seq), -1) FROM log_chunks WHERE build_id = $1) AS chunk, \
                        (SELECT COALESCE(MAX(seq), -1) FROM build_events WHERE build_id = $1) AS event, \
                        (SELECT CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT) FROM log_chunks WHERE build_id = $1) AS total, \
                        (SELECT CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT) FROM log_chunks WHERE build_id = $1 AND step = '') AS own",
            )
            .bind(held.id)
            .fetch_one(&mut *$tx)
            .await?;
            let seq = at.try_get::<i64, _>("chunk")?.max(at.try_get::<i64, _>("event")?) + 1;
            let line = format!("piper: {reason}\n");
            sqlx::query(
                "INSERT INTO log_chunks (build_id, seq, step, build_offset, step_offset, data, annotation, lines) \
                 VALUES ($1, $2, '', $3, $4, $5, $6, $7)",
            )
            .bind(held.id)
            .bind(seq)
            .bind(at.try_get::<i64, _>("total")?)
            .bind(at.try_get::<i64, _>("own")?)
            .bind(line.clone().into_bytes())
            .bind(false)
            .bind(line.matches('\n').count() as i64)
            .execute(&mut *$tx)
            .await?;
            Some(Rescued { id: held.id, status, reason })
        } else {
            None
        }
    }};
}

impl Store {
    /// Opens the database at `url` (`sqlite://path` or `postgres://...`),
    /// creating a SQLite file if missing, and applies pending migrations.
    pub async fn open(url: &str) -> StoreResult<Store> {
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // A short acquire timeout: during an outage a write fails fast and is
            // retried (with backoff) instead of waiting 30 s for a connection.
            Backend::Postgres(
                PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(std::time::Duration::from_secs(2))
                    .connect(url)
                    .await?,
            )
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?;
            // Created private (0600) before SQLite opens it; its -wal and
            // -shm files take the same mode.
            {
                use std::os::unix::fs::OpenOptionsExt;
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o600)
                    .open(options.get_filename());
            }
            let options = options
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .busy_timeout(std::time::Duration::from_secs(10));
            Backend::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await?,
            )
        } else {
            return Err(sqlx::Error::Configuration(
                format!("unsupported database URL `{url}`: use sqlite://PATH or postgres://...")
                    .into(),
            ));
        };
        let store = Store { backend };
        store.migrate().await?;
        Ok(store)
    }

    /// The database's clock in Unix milliseconds, as SQL: every agent reads
    /// the same time for leases and timestamps, whatever its own clock says.
    fn now_sql(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)",
            Backend::Postgres(_) => "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT",
        }
    }

    /// The next fencing token, as SQL: a sequence on PostgreSQL; on
    /// SQLite (one writer at a time) one more than the largest so far.
    fn next_fence_sql(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "(SELECT COALESCE(MAX(fence), 0) + 1 FROM builds)",
            Backend::Postgres(_) => "nextval('build_fence')",
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The pool of the PostgreSQL backend (for LISTEN).
    pub fn postgres_pool(&self) -> Option<&sqlx::PgPool> {
        match &self.backend {
            Backend::Postgres(pool) => Some(pool),
            Backend::Sqlite(_) => None,
        }
    }

    pub fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Postgres(_) => "postgres",
        }
    }

    /// Applies pending migrations with sqlx's migrator: checksums of the
    /// applied ones are verified (an edited migration is an error, not a
    /// silent drift), and on PostgreSQL an advisory lock makes agents that
    /// start together take turns. A database created by the runner Piper
    /// had before (`schema_migrations`) is bridged first.
    async fn migrate(&self) -> StoreResult<()> {
        use sqlx::SqlSafeStr;
        use sqlx::migrate::{Migration, MigrationType, Migrator};
        let list = match self.backend {
            Backend::Sqlite(_) => SQLITE_MIGRATIONS,
            Backend::Postgres(_) => POSTGRES_MIGRATIONS,
        };
        let migrations: Vec<Migration> = list
            .iter()
            .map(|(version, file, sql)| {
                let description = file.trim_end_matches(".sql").to_string();
                Migration::new(
                    *version,
                    description.into(),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect();
        self.bridge_old_migrations(&migrations).await?;
        let migrator = Migrator::with_migrations(migrations);
        on_backend!(self, pool => {
            migrator.run(pool).await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))
        })
    }

    /// Records the versions the old runner applied (`schema_migrations`) in
    /// sqlx's table with their checksums, then drops the old table; under
    /// the same advisory lock on PostgreSQL.
    async fn bridge_old_migrations(
        &self,
        migrations: &[sqlx::migrate::Migration],
    ) -> StoreResult<()> {
        use sqlx::migrate::Migrate;
        let exists = match self.backend {
            Backend::Sqlite(_) => {
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
            }
            Backend::Postgres(_) => {
                "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema() AND tablename = 'schema_migrations'"
            }
        };
        on_backend!(self, pool => {
            let mut conn = pool.acquire().await?;
            if sqlx::query(exists).fetch_all(&mut *conn).await?.is_empty() {
                return Ok(());
            }
            let mut tx = pool.begin().await?;
            if self.is_postgres() {
                sqlx::query("SELECT pg_advisory_xact_lock(7117001)").execute(&mut *tx).await?;
            }
            // Another agent may have bridged while this one waited.
            if sqlx::query(exists).fetch_all(&mut *tx).await?.is_empty() {
                return tx.commit().await;
            }
            tx.ensure_migrations_table("_sqlx_migrations").await.map_err(|e| sqlx::Error::Migrate(Box::new(e)))?;
            let applied = sqlx::query("SELECT version FROM schema_migrations").fetch_all(&mut *tx).await?;
            for row in &applied {
                let version: i64 = row.try_get("version")?;
                let Some(migration) = migrations.iter().find(|m| m.version == version) else {
                    continue;
                };
                sqlx::query(
                    "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
                     VALUES ($1, $2, TRUE, $3, 0) ON CONFLICT (version) DO NOTHING",
                )
                .bind(version)
                .bind(migration.description.as_ref())
                .bind(migration.checksum.as_ref())
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("DROP TABLE schema_migrations").execute(&mut *tx).await?;
            tx.commit().await
        })
    }

    /// Records a new build with the next number of its repository: queued,
    /// or (a chained build) running, held by `holder`. On PostgreSQL the
    /// commit notifies `piper_builds`, so idle agents claim it at once.
    pub async fn create_build(
        &self,
        new: &NewBuild,
        state: BuildState,
        holder: Option<&Holder>,
    ) -> StoreResult<Build> {
        self.create_build_once(new, state, holder, None)
            .await
            .map(|(build, _)| build)
    }

    /// `create_build`, once per `key`: a request repeated with the same key
    /// (a retried submit, a redelivered webhook) gets the build the first
    /// one created, and `true`.
    pub async fn create_build_once(
        &self,
        new: &NewBuild,
        state: BuildState,
        holder: Option<&Holder>,
        key: Option<&str>,
    ) -> StoreResult<(Build, bool)> {
        let env = serde_json::to_string(&new.env).unwrap_or_else(|_| "{}".into());
        let secret_env = serde_json::to_string(&new.secret_env).unwrap_or_else(|_| "{}".into());
        let args = serde_json::to_string(&new.args).unwrap_or_else(|_| "[]".into());
        let now = self.now_sql();
        let fence = self.next_fence_sql();
        // The counter row serializes concurrent submits to one repository
        // (its row lock), so numbering never fails under contention.
        let count = "INSERT INTO repo_counters (repo, last) VALUES ($1, 1) \
             ON CONFLICT (repo) DO UPDATE SET last = repo_counters.last + 1 RETURNING last";
        let insert = format!(
            "INSERT INTO builds (number, repo, git_ref, pipeline, status, env, requested_by, requested_at, \
             parent_id, secret_env, attempt, agent_id, agent, started_at, lease_expires_at, sha, \
             renewed_at, fence, args) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, {now}, $8, $9, $10, $11, $12, \
             CASE WHEN $10 > 0 THEN {now} END, CASE WHEN $10 > 0 THEN {now} + $13 END, $14, \
             CASE WHEN $10 > 0 THEN {now} END, CASE WHEN $10 > 0 THEN {fence} END, $15) \
             RETURNING {BUILD_COLUMNS}"
        );
        let attempt = i64::from(holder.is_some());
        // A transaction, all rows fetched, then COMMIT: with `fetch_one`
        // SQLite hands out the RETURNING row before the statement ends,
        // and a failing end (a full disk) went unnoticed — the caller
        // answered 201 for a row that never committed.
        let claim_key = format!(
            "INSERT INTO idempotency_keys (key, build_id, created_at) VALUES ($1, 0, {now}) \
             ON CONFLICT (key) DO NOTHING"
        );
        let select = format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = $1");
        on_backend!(self, pool => async {
            let mut tx = pool.begin().await?;
            if let Some(key) = key {
                // A concurrent request with the same key waits here for the
                // first one's commit (unique index), then sees its build.
                let fresh = sqlx::query(sqlx::AssertSqlSafe(claim_key.as_str()))
                    .bind(key)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected()
                    == 1;
                if !fresh {
                    let rows = sqlx::query("SELECT build_id FROM idempotency_keys WHERE key = $1")
                        .bind(key)
                        .fetch_all(&mut *tx)
                        .await?;
                    let id: i64 = rows.first().ok_or(sqlx::Error::RowNotFound)?.try_get("build_id")?;
                    let rows = sqlx::query(sqlx::AssertSqlSafe(select.as_str()))
                        .bind(id)
                        .fetch_all(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
                    return Ok((build_from_row(row)?, true));
                }
            }
            let counted = sqlx::query(count).bind(&new.repo).fetch_all(&mut *tx).await?;
            let number: i64 = counted.first().ok_or(sqlx::Error::RowNotFound)?.try_get("last")?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                .bind(number)
                .bind(&new.repo)
                .bind(&new.git_ref)
                .bind(&new.pipeline)
                .bind(state.as_str())
                .bind(&env)
                .bind(&new.requested_by)
                .bind(new.parent_id)
                .bind(&secret_env)
                .bind(attempt)
                .bind(holder.map(|h| h.agent_id.as_str()))
                .bind(holder.map(|h| h.agent_name.as_str()))
                .bind(holder.map_or(0, |h| h.lease_ms))
                .bind(new.sha.as_deref())
                .bind(&args)
                .fetch_all(&mut *tx)
                .await?;
            let build = build_from_row(rows.first().ok_or(sqlx::Error::RowNotFound)?)?;
            if let Some(key) = key {
                sqlx::query("UPDATE idempotency_keys SET build_id = $1 WHERE key = $2")
                    .bind(build.id)
                    .bind(key)
                    .execute(&mut *tx)
                    .await?;
            }
            if self.is_postgres() && state == BuildState::Queued {
                // The id lets other agents' followers of updates see it appear.
                sqlx::query("SELECT pg_notify('piper_builds', $1)")
                    .bind(build.id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok((build, false))
        }.await)
    }

    pub async fn get_build(&self, id: i64) -> StoreResult<Option<Build>> {
        let sql = format!("SELECT {BUILD_COLUMNS} FROM builds WHERE id = $1");
        on_backend!(self, pool => {
            match sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).fetch_optional(pool).await? {
                Some(row) => Ok(Some(build_from_row(&row)?)),
                None => Ok(None),
            }
        })
    }

    /// Newest first.
    pub async fn list_builds(&self, filter: &BuildFilter) -> StoreResult<Vec<Build>> {
        // NULL filters match everything; parameters appear in order.
        let sql = format!(
            "SELECT {BUILD_COLUMNS} FROM builds \
             WHERE ($1 IS NULL OR repo = $1) AND ($2 IS NULL OR status = $2) \
             AND ($3 IS NULL OR pipeline = $3) AND ($4 IS NULL OR id < $4) \
             AND ($6 IS NULL OR agent = $6) AND ($7 IS NULL OR parent_id = $7) \
             ORDER BY id DESC LIMIT $5"
        );
        let sql = match self.backend {
            // PostgreSQL needs the types of parameters compared with NULL.
            Backend::Postgres(_) => sql
                .replace("$1 IS NULL", "$1::TEXT IS NULL")
                .replace("$2 IS NULL", "$2::TEXT IS NULL")
                .replace("$3 IS NULL", "$3::TEXT IS NULL")
                .replace("$4 IS NULL", "$4::BIGINT IS NULL")
                .replace("$6 IS NULL", "$6::TEXT IS NULL")
                .replace("$7 IS NULL", "$7::BIGINT IS NULL"),
            Backend::Sqlite(_) => sql,
        };
        on_backend!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(filter.repo.as_deref())
                .bind(filter.status.map(|s| s.as_str()))
                .bind(filter.pipeline.as_deref())
                .bind(filter.before)
                .bind(filter.limit)
                .bind(filter.agent.as_deref())
                .bind(filter.parent)
                .fetch_all(pool)
                .await?;
            rows.iter().map(build_from_row).collect()
        })
    }

    /// Takes the oldest queued build for `holder`: its next attempt, with
    /// a lease on the database's clock.
    pub async fn claim_next(&self, holder: &Holder) -> StoreResult<Option<Build>> {
        // The oldest queued build this agent can run: requirements unknown
        // (it will read them) or each met by its labels, decided in the
        // query, so builds it cannot run never hide one it can, however
        // many wait (a window of the oldest few did: 64 waiting for a label
        // nobody has stalled the queue).
        let candidate = match self.backend {
            Backend::Sqlite(_) => {
                "SELECT id FROM builds WHERE status = 'queued' AND (requires IS NULL OR NOT EXISTS ( \
                   SELECT 1 FROM json_each(builds.requires) AS wanted WHERE NOT EXISTS ( \
                     SELECT 1 FROM json_each($1) AS has \
                     WHERE has.key = wanted.key AND has.value = wanted.value))) \
                 ORDER BY id LIMIT 1"
            }
            // Several agents: each claims a different build.
            Backend::Postgres(_) => {
                "SELECT id FROM builds WHERE status = 'queued' \
                 AND (requires IS NULL OR requires::jsonb <@ $1::jsonb) \
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"
            }
        };
        let labels = serde_json::to_string(&holder.labels).unwrap_or_else(|_| "{}".into());
        let now = self.now_sql();
        let fence = self.next_fence_sql();
        let sql = format!(
            "UPDATE builds SET status = 'running', agent = $1, agent_id = $2, \
             started_at = COALESCE(started_at, {now}), attempt = attempt + 1, \
             lease_expires_at = {now} + $3, renewed_at = {now}, fence = {fence} \
             WHERE id = $4 AND status = 'queued' RETURNING {BUILD_COLUMNS}"
        );
        // As in `create_build`: the claim counts only once committed.
        on_backend!(self, pool => {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(candidate).bind(&labels).fetch_all(&mut *tx).await?;
            let pick = rows.first().map(|row| row.try_get::<i64, _>("id")).transpose()?;
            let Some(id) = pick else {
                tx.commit().await?;
                return Ok(None);
            };
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(&holder.agent_name)
                .bind(&holder.agent_id)
                .bind(holder.lease_ms)
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
            tx.commit().await?;
            rows.first().map(build_from_row).transpose()
        })
    }

    /// Gives a claimed build back to the queue, recording what it requires
    /// (this agent read its piper.lua and does not have it): the claim does
    /// not count as an attempt, nor as the build's start.
    pub async fn unclaim(
        &self,
        id: i64,
        attempt: i64,
        requires: &BTreeMap<String, String>,
    ) -> StoreResult<bool> {
        let requires = serde_json::to_string(requires).unwrap_or_else(|_| "{}".into());
        on_backend!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE builds SET status = 'queued', attempt = attempt - 1, agent = NULL, agent_id = NULL, \
                 started_at = NULL, lease_expires_at = NULL, requires = $1 WHERE id = $2 AND attempt = $3 AND status = 'running'",
            )
            .bind(&requires)
            .bind(id)
            .bind(attempt)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if done && self.is_postgres() {
                sqlx::query("SELECT pg_notify('piper_builds', '')").execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(done)
        })
    }

    /// Extends the lease of `attempt` of a build; says whether it is still
    /// ours and whether a cancel was asked for.
    pub async fn renew(&self, id: i64, attempt: i64, lease_ms: i64) -> StoreResult<Renewal> {
        let now = self.now_sql();
        let sql = format!(
            "UPDATE builds SET lease_expires_at = {now} + $1, renewed_at = {now} \
             WHERE id = $2 AND attempt = $3 AND status = 'running' RETURNING cancel_requested"
        );
        on_backend!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(lease_ms)
                .bind(id)
                .bind(attempt)
                .fetch_all(pool)
                .await?;
            Ok(match rows.first() {
                None => Renewal::Lost,
                Some(row) if row.try_get::<bool, _>("cancel_requested")? => Renewal::CancelRequested,
                Some(_) => Renewal::Held,
            })
        })
    }

    /// Ends or re-queues running builds whose lease expired (their agent
    /// died, stalled or was cut off), re-checking the lease in the same
    /// transaction so a build that just finished or was renewed is never
    /// touched. `only` limits it to one agent's builds, whatever their
    /// lease (that agent starting again). `by` names the agent rescuing.
    /// Each build's log says why (which agent, when it last renewed, when
    /// the lease expired) and what became of it.
    pub async fn rescue(&self, only: Option<&str>, by: &str) -> StoreResult<Vec<Rescued>> {
        let now = self.now_sql();
        // One agent's builds whatever their lease, or every expired one.
        let which = match self.backend {
            Backend::Postgres(_) => {
                "($1::TEXT IS NULL AND lease_expires_at < NOW_MS OR agent_id = $1)"
            }
            Backend::Sqlite(_) => "($1 IS NULL AND lease_expires_at < NOW_MS OR agent_id = $1)",
        }
        .replace("NOW_MS", now);
        let select = format!(
            "SELECT {HELD_COLUMNS}, {now} AS now FROM builds WHERE status = 'running' AND {which}{}",
            self.lock_rows()
        );
        on_backend!(self, pool => {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(select.as_str()))
                .bind(only)
                .fetch_all(&mut *tx)
                .await?;
            let mut rescued = Vec::new();
            for row in &rows {
                let held = HeldRow::from_row(row)?;
                let cause = match only {
                    Some(_) => format!(
                        "agent {} started again after it stopped while running attempt {}",
                        held.agent, held.attempt
                    ),
                    None => format!(
                        "agent {} stopped renewing the lease of attempt {} (last renewed {}, expired {}, database clock); rescued by agent {by}",
                        held.agent,
                        held.attempt,
                        clock(held.renewed_at),
                        clock(held.lease_expires_at),
                    ),
                };
                if let Some(done) = hand_back!(tx, now, self.blank_secrets_sql(), &held, &cause) {
                    rescued.push(done);
                }
            }
            if self.is_postgres() && rescued.iter().any(|r| r.status == BuildState::Queued) {
                sqlx::query("SELECT pg_notify('piper_builds', '')").execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(rescued)
        })
    }

    /// `attempt` of build `id` is given up by the agent holding it, for
    /// `cause` (it could not renew the lease in time and ended its steps):
    /// handed back as a rescue would, saying why in its log. None when the
    /// attempt no longer holds the build (already rescued).
    pub async fn give_up(
        &self,
        id: i64,
        attempt: i64,
        cause: &str,
    ) -> StoreResult<Option<Rescued>> {
        let now = self.now_sql();
        let select = format!(
            "SELECT {HELD_COLUMNS}, {now} AS now FROM builds \
             WHERE id = $1 AND attempt = $2 AND status = 'running'{}",
            self.lock_rows()
        );
        on_backend!(self, pool => {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(sqlx::AssertSqlSafe(select.as_str()))
                .bind(id)
                .bind(attempt)
                .fetch_all(&mut *tx)
                .await?;
            let mut given = None;
            if let Some(row) = rows.first() {
                let held = HeldRow::from_row(row)?;
                given = hand_back!(tx, now, self.blank_secrets_sql(), &held, cause);
            }
            if self.is_postgres() && given.as_ref().is_some_and(|r| r.status == BuildState::Queued) {
                sqlx::query("SELECT pg_notify('piper_builds', '')").execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(given)
        })
    }

    /// `secret_env` with its values blanked, as SQL: a build that ended
    /// keeps the names of its secrets (shown, and a retrigger can say which
    /// to give again), never their values.
    fn blank_secrets_sql(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => {
                "(SELECT COALESCE(json_group_object(key, ''), '{}') FROM json_each(builds.secret_env))"
            }
            Backend::Postgres(_) => {
                "(SELECT COALESCE(jsonb_object_agg(key, ''), '{}'::jsonb)::text FROM jsonb_each_text(builds.secret_env::jsonb))"
            }
        }
    }

    /// ` FOR UPDATE` where rows read in a transaction must stay as read
    /// until it ends (PostgreSQL; SQLite's writer holds the whole file).
    fn lock_rows(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite(_) => "",
            Backend::Postgres(_) => " FOR UPDATE",
        }
    }

    /// Asks the agent running a build to cancel it (PostgreSQL: notified
    /// at once on `piper_cancel`; else at its next lease renewal). False
    /// when the build is not running.
    pub async fn request_cancel(&self, id: i64) -> StoreResult<bool> {
        on_backend!(self, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query("UPDATE builds SET cancel_requested = TRUE WHERE id = $1 AND status = 'running'")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected() == 1;
            if done && self.is_postgres() {
                sqlx::query("SELECT pg_notify('piper_cancel', $1)").bind(id.to_string()).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(done)
        })
    }

    /// How many attempts a build may take, once its pipeline is known.
    pub async fn set_max_attempts(&self, id: i64, max_attempts: i64) -> StoreResult<()> {
        on_backend!(self, pool => {
            sqlx::query("UPDATE builds SET max_attempts = $1 WHERE id = $2")
                .bind(max_attempts)
                .bind(id)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// Where the stored log of a build ends: the next sequence number, its
    /// length, and each step's length (an attempt after a rescue goes on
    /// from there).
    pub async fn log_end(&self, id: i64) -> StoreResult<(i64, i64, BTreeMap<String, i64>)> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT step, MAX(seq) AS last, CAST(SUM(LENGTH(data)) AS BIGINT) AS bytes \
                 FROM log_chunks WHERE build_id = $1 GROUP BY step",
            )
            .bind(id)
            .fetch_all(pool)
            .await?;
            // Events share the sequence: the next one goes after both.
            let events = sqlx::query("SELECT MAX(seq) AS last FROM build_events WHERE build_id = $1")
                .bind(id)
                .fetch_all(pool)
                .await?;
            let mut next_seq = events
                .first()
                .and_then(|row| row.try_get::<Option<i64>, _>("last").ok().flatten())
                .map_or(0, |last| last + 1);
            let mut total = 0;
            let mut steps = BTreeMap::new();
            for row in &rows {
                let last: i64 = row.try_get("last")?;
                let bytes: i64 = row.try_get("bytes")?;
                next_seq = next_seq.max(last + 1);
                total += bytes;
                steps.insert(row.try_get::<String, _>("step")?, bytes);
            }
            Ok((next_seq, total, steps))
        })
    }

    /// Cancels a build that no agent has claimed yet; false when it is no
    /// longer queued (claimed meanwhile, or ended).
    pub async fn cancel_queued(&self, id: i64) -> StoreResult<bool> {
        let sql = format!(
            "UPDATE builds SET status = 'canceled', finished_at = $1, secret_env = {}, \
             error = 'canceled before it started' WHERE id = $2 AND status = 'queued'",
            self.blank_secrets_sql()
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
            .bind(now_ms())
            .bind(id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
        })
    }

    /// Records the commit an attempt checked out; false when the attempt
    /// is stale (fenced).
    pub async fn set_revision(
        &self,
        id: i64,
        attempt: i64,
        sha: &str,
        version: Option<&str>,
    ) -> StoreResult<bool> {
        on_backend!(self, pool => {
            sqlx::query("UPDATE builds SET sha = $1, version = $2 WHERE id = $3 AND attempt = $4 AND status = 'running'")
                .bind(sha)
                .bind(version)
                .bind(id)
                .bind(attempt)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() == 1)
        })
    }

    /// Ends `attempt` of a running build. Only `running` matches (a queued
    /// build is ended by `cancel_queued`, so a cancel racing a claim never
    /// marks a build that ran as canceled), and only the current attempt
    /// (fencing): false when this attempt no longer holds the build.
    pub async fn finish_build(
        &self,
        id: i64,
        attempt: i64,
        state: BuildState,
        error: Option<&str>,
    ) -> StoreResult<bool> {
        let now = self.now_sql();
        let blank = self.blank_secrets_sql();
        let sql = format!(
            "UPDATE builds SET status = $1, error = COALESCE($2, error), finished_at = {now}, \
             lease_expires_at = NULL, secret_env = {blank} \
             WHERE id = $3 AND attempt = $4 AND status = 'running'"
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(state.as_str())
                .bind(error)
                .bind(id)
                .bind(attempt)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() == 1)
        })
    }

    /// Stores a step's state for `attempt`; false when the attempt is stale.
    pub async fn upsert_step(
        &self,
        build_id: i64,
        attempt: i64,
        position: i64,
        step: &StoredStep,
    ) -> StoreResult<bool> {
        on_backend!(self, pool => {
            sqlx::query(
                "INSERT INTO steps (build_id, name, position, status, exit_code, started_at, finished_at, message) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
                 WHERE EXISTS (SELECT 1 FROM builds WHERE id = $1 AND attempt = $9 AND status = 'running') \
                 ON CONFLICT (build_id, name) DO UPDATE SET status = excluded.status, \
                 exit_code = excluded.exit_code, started_at = COALESCE(excluded.started_at, steps.started_at), \
                 finished_at = excluded.finished_at, message = excluded.message",
            )
            .bind(build_id)
            .bind(&step.name)
            .bind(position)
            .bind(&step.status)
            .bind(step.exit_code)
            .bind(step.started_at)
            .bind(step.finished_at)
            .bind(&step.message)
            .bind(attempt)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
        })
    }

    pub async fn steps(&self, build_id: i64) -> StoreResult<Vec<StoredStep>> {
        on_backend!(self, pool => {
            let rows = sqlx::query(
                "SELECT name, status, exit_code, started_at, finished_at, message FROM steps \
                 WHERE build_id = $1 ORDER BY position",
            )
            .bind(build_id)
            .fetch_all(pool)
            .await?;
            rows.iter()
                .map(|row| {
                    Ok(StoredStep {
                        name: row.try_get("name")?,
                        status: row.try_get("status")?,
                        exit_code: row.try_get("exit_code")?,
                        started_at: row.try_get("started_at")?,
                        finished_at: row.try_get("finished_at")?,
                        message: row.try_get("message")?,
                    })
                })
                .collect()
        })
    }

    /// Appends a chunk. The writer of a build (its agent) keeps the counters:
    /// `seq` orders chunks, the offsets are where the chunk starts in the
    /// build's log and in its step's log.
    /// Appends a chunk of `attempt`'s log; false when the attempt is stale
    /// (the chunk is not stored). An `annotation` repeats an event for the
    /// raw log (`$ command`): event streams leave it out.
    #[allow(clippy::too_many_arguments)]
    pub async fn append_log(
        &self,
        build_id: i64,
        attempt: i64,
        seq: i64,
        step: &str,
        build_offset: i64,
        step_offset: i64,
        data: &[u8],
        annotation: bool,
    ) -> StoreResult<bool> {
        on_backend!(self, pool => {
            sqlx::query(
                "INSERT INTO log_chunks (build_id, seq, step, build_offset, step_offset, data, annotation, lines) \
                 SELECT $1, $2, $3, $4, $5, $6, $8, $9 \
                 WHERE EXISTS (SELECT 1 FROM builds WHERE id = $1 AND attempt = $7 AND status = 'running')",
            )
            .bind(build_id)
            .bind(seq)
            .bind(step)
            .bind(build_offset)
            .bind(step_offset)
            .bind(data)
            .bind(attempt)
            .bind(annotation)
            .bind(memchr::memchr_iter(b'\n', data).count() as i64)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
        })
    }

    /// Appends one of the executor's events (JSON) of `attempt`, in the
    /// sequence it shares with the log chunks; false when stale.
    pub async fn append_event(
        &self,
        build_id: i64,
        attempt: i64,
        seq: i64,
        body: &str,
    ) -> StoreResult<bool> {
        on_backend!(self, pool => {
            sqlx::query(
                "INSERT INTO build_events (build_id, seq, body) SELECT $1, $2, $3 \
                 WHERE EXISTS (SELECT 1 FROM builds WHERE id = $1 AND attempt = $4 AND status = 'running')",
            )
            .bind(build_id)
            .bind(seq)
            .bind(body)
            .bind(attempt)
            .execute(pool)
            .await
            .map(|r| r.rows_affected() == 1)
        })
    }

    /// Tells other agents' followers that a build's log grew (PostgreSQL).
    pub async fn notify_written(&self, build_id: i64) -> StoreResult<()> {
        match &self.backend {
            Backend::Postgres(pool) => sqlx::query("SELECT pg_notify('piper_log', $1)")
                .bind(build_id.to_string())
                .execute(pool)
                .await
                .map(|_| ()),
            Backend::Sqlite(_) => Ok(()),
        }
    }

    /// A build's events after `after` in order: stored events and output
    /// chunks (annotations left out), up to about `limit` bytes.
    pub async fn read_stream(
        &self,
        build_id: i64,
        after: i64,
        limit: usize,
        with_output: bool,
    ) -> StoreResult<Vec<(i64, StreamItem)>> {
        const BATCH: i64 = 500;
        let postgres = matches!(self.backend, Backend::Postgres(_));
        let (events, chunks) = on_backend!(self, pool => {
            // Both tables from one snapshot: read in two statements, an
            // event committed between them was skipped for good once a
            // later chunk moved the reader past it. SQLite's transaction
            // reads one snapshot; PostgreSQL's needs REPEATABLE READ.
            let mut tx = pool.begin().await?;
            if postgres {
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *tx).await?;
            }
            let events = sqlx::query("SELECT seq, body FROM build_events WHERE build_id = $1 AND seq > $2 ORDER BY seq LIMIT $3")
                .bind(build_id).bind(after).bind(BATCH).fetch_all(&mut *tx).await?;
            let chunks = if with_output {
                sqlx::query("SELECT seq, step, data FROM log_chunks WHERE build_id = $1 AND seq > $2 AND NOT annotation ORDER BY seq LIMIT $3")
                    .bind(build_id).bind(after).bind(BATCH).fetch_all(&mut *tx).await?
            } else {
                Vec::new()
            };
            tx.commit().await?;
            let events = events.iter().map(|r| Ok((r.try_get::<i64, _>("seq")?, StreamItem::Event(r.try_get("body")?)))).collect::<StoreResult<Vec<_>>>()?;
            let chunks = chunks.iter().map(|r| Ok((r.try_get::<i64, _>("seq")?, StreamItem::Output { step: r.try_get("step")?, data: r.try_get("data")? }))).collect::<StoreResult<Vec<_>>>()?;
            (events, chunks)
        });
        // A full batch may stop early: keep only what both batches cover.
        let mut until = i64::MAX;
        for batch in [&events, &chunks] {
            if batch.len() as i64 == BATCH {
                until = until.min(batch.last().map_or(i64::MAX, |(seq, _)| *seq));
            }
        }
        let mut items: Vec<(i64, StreamItem)> = events
            .into_iter()
            .chain(chunks)
            .filter(|(seq, _)| *seq <= until)
            .collect();
        items.sort_by_key(|(seq, _)| *seq);
        let mut size = 0;
        let mut kept = Vec::new();
        for item in items {
            size += match &item.1 {
                StreamItem::Event(body) => body.len(),
                StreamItem::Output { data, .. } => data.len(),
            };
            kept.push(item);
            if size >= limit {
                break;
            }
        }
        Ok(kept)
    }

    /// The log (of the build, or of one step) from `offset`: at least
    /// `limit` bytes where there are that many (the last chunk read may
    /// run past it). The chunks' sizes are read first and then only the
    /// bytes wanted: a read of 1 MiB from a log of 256 KiB chunks must not
    /// fetch hundreds of chunks to return four.
    pub async fn read_log(
        &self,
        build_id: i64,
        step: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> StoreResult<LogSlice> {
        const BATCH: usize = 256;
        let sql = match step {
            None => {
                "SELECT seq, build_offset AS start, CAST(LENGTH(data) AS BIGINT) AS len FROM log_chunks \
                 WHERE build_id = $1 AND build_offset + LENGTH(data) > $2 AND seq > $3 ORDER BY seq LIMIT 256"
            }
            Some(_) => {
                "SELECT seq, step_offset AS start, CAST(LENGTH(data) AS BIGINT) AS len FROM log_chunks \
                 WHERE build_id = $1 AND step_offset + LENGTH(data) > $2 AND seq > $3 AND step = $4 ORDER BY seq LIMIT 256"
            }
        };
        let mut data = Vec::new();
        let mut next = offset;
        let mut after_seq = -1;
        loop {
            let rows: Vec<(i64, i64, i64)> = on_backend!(self, pool => {
                let mut query = sqlx::query(sql).bind(build_id).bind(offset).bind(after_seq);
                if let Some(step) = step {
                    query = query.bind(step);
                }
                let rows = query.fetch_all(pool).await?;
                rows.iter()
                    .map(|row| Ok((row.try_get("seq")?, row.try_get("start")?, row.try_get("len")?)))
                    .collect::<StoreResult<Vec<_>>>()?
            });
            let full_batch = rows.len() == BATCH;
            // The chunks wanted: contiguous from `next`, until `limit`.
            let (mut first, mut last, mut end, mut stop) = (None, None, next, false);
            for (seq, start, len) in rows {
                after_seq = seq;
                if start > end || end - start > len {
                    stop = true; // stop at what is contiguous
                    break;
                }
                first.get_or_insert(seq);
                last = Some(seq);
                end = start + len;
                if end - offset >= limit {
                    stop = true;
                    break;
                }
            }
            if let (Some(first), Some(last)) = (first, last) {
                for (start, chunk) in self.log_chunks_in(build_id, step, first, last).await? {
                    let skip = ((next - start).max(0) as usize).min(chunk.len());
                    data.extend_from_slice(&chunk[skip..]);
                    next = start + chunk.len() as i64;
                }
            }
            if stop || !full_batch {
                break;
            }
        }
        Ok(LogSlice {
            data,
            next_offset: next,
        })
    }

    /// The chunks `first..=last` (by sequence number) of the log of the
    /// build (or of one step), in order: where each starts, and its bytes.
    pub async fn log_chunks_in(
        &self,
        build_id: i64,
        step: Option<&str>,
        first: i64,
        last: i64,
    ) -> StoreResult<Vec<(i64, Vec<u8>)>> {
        let sql = match step {
            None => {
                "SELECT build_offset AS start, data FROM log_chunks \
                 WHERE build_id = $1 AND seq >= $2 AND seq <= $3 ORDER BY seq"
            }
            Some(_) => {
                "SELECT step_offset AS start, data FROM log_chunks \
                 WHERE build_id = $1 AND seq >= $2 AND seq <= $3 AND step = $4 ORDER BY seq"
            }
        };
        on_backend!(self, pool => {
            let mut query = sqlx::query(sql).bind(build_id).bind(first).bind(last);
            if let Some(step) = step {
                query = query.bind(step);
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter()
                .map(|row| Ok((row.try_get("start")?, row.try_get("data")?)))
                .collect::<StoreResult<Vec<_>>>()
        })
    }

    /// The chunks of the log of the build (or of one step), in order:
    /// where each starts, how long it is, how many newlines it holds
    /// (`None` for chunks stored before migration 13). No log bytes are
    /// read: this is what a line number is found with.
    pub async fn log_chunk_lines(
        &self,
        build_id: i64,
        step: Option<&str>,
    ) -> StoreResult<Vec<ChunkLines>> {
        let sql = match step {
            None => {
                "SELECT seq, build_offset AS start, CAST(LENGTH(data) AS BIGINT) AS len, lines \
                 FROM log_chunks WHERE build_id = $1 ORDER BY seq"
            }
            Some(_) => {
                "SELECT seq, step_offset AS start, CAST(LENGTH(data) AS BIGINT) AS len, lines \
                 FROM log_chunks WHERE build_id = $1 AND step = $2 ORDER BY seq"
            }
        };
        on_backend!(self, pool => {
            let mut query = sqlx::query(sql).bind(build_id);
            if let Some(step) = step {
                query = query.bind(step);
            }
            let rows = query.fetch_all(pool).await?;
            rows.iter()
                .map(|row| Ok(ChunkLines {
                    seq: row.try_get("seq")?,
                    start: row.try_get("start")?,
                    len: row.try_get("len")?,
                    lines: row.try_get("lines")?,
                }))
                .collect::<StoreResult<Vec<_>>>()
        })
    }

    /// The bytes of one log chunk (empty if there is none).
    pub async fn log_chunk(&self, build_id: i64, seq: i64) -> StoreResult<Vec<u8>> {
        on_backend!(self, pool => {
            let row = sqlx::query("SELECT data FROM log_chunks WHERE build_id = $1 AND seq = $2")
                .bind(build_id)
                .bind(seq)
                .fetch_optional(pool)
                .await?;
            row.map(|row| row.try_get("data")).transpose().map(Option::unwrap_or_default)
        })
    }

    /// Records the newline count of a chunk stored before it was counted.
    pub async fn set_chunk_lines(&self, build_id: i64, seq: i64, lines: i64) -> StoreResult<()> {
        on_backend!(self, pool => {
            sqlx::query("UPDATE log_chunks SET lines = $3 WHERE build_id = $1 AND seq = $2")
                .bind(build_id)
                .bind(seq)
                .bind(lines)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// How many bytes the log of the build (or of one step) holds.
    pub async fn log_length(&self, build_id: i64, step: Option<&str>) -> StoreResult<i64> {
        let sql = match step {
            None => {
                "SELECT CAST(COALESCE(MAX(build_offset + LENGTH(data)), 0) AS BIGINT) AS n \
                     FROM log_chunks WHERE build_id = $1"
            }
            Some(_) => {
                "SELECT CAST(COALESCE(MAX(step_offset + LENGTH(data)), 0) AS BIGINT) AS n \
                        FROM log_chunks WHERE build_id = $1 AND step = $2"
            }
        };
        on_backend!(self, pool => {
            let mut query = sqlx::query(sql).bind(build_id);
            if let Some(step) = step {
                query = query.bind(step);
            }
            let row = query.fetch_one(pool).await?;
            row.try_get("n")
        })
    }

    /// Records this agent as started (or restarted).
    pub async fn register_agent(
        &self,
        id: &str,
        name: &str,
        address: &str,
        workers: i64,
        labels: &BTreeMap<String, String>,
        lease_ms: i64,
    ) -> StoreResult<()> {
        let labels = serde_json::to_string(labels).unwrap_or_else(|_| "{}".into());
        let now = self.now_sql();
        let sql = format!(
            "INSERT INTO agents (id, name, address, workers, labels, version, started_at, last_seen, lease_ms, state) \
             VALUES ($1, $2, $3, $4, $5, $6, {now}, {now}, $7, 'running') \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, address = excluded.address, \
             workers = excluded.workers, labels = excluded.labels, version = excluded.version, \
             started_at = excluded.started_at, last_seen = excluded.last_seen, \
             lease_ms = excluded.lease_ms, state = excluded.state"
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(id)
                .bind(name)
                .bind(address)
                .bind(workers)
                .bind(&labels)
                .bind(env!("CARGO_PKG_VERSION"))
                .bind(lease_ms)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// Records that an agent drains (`draining`: stopping, its running
    /// builds finish) or has stopped (`stopped`: offline at once).
    pub async fn set_agent_state(&self, id: &str, state: &str) -> StoreResult<()> {
        on_backend!(self, pool => {
            sqlx::query("UPDATE agents SET state = $1 WHERE id = $2")
                .bind(state)
                .bind(id)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// Keeps a git bundle under its digest (once: the same bytes again
    /// change nothing).
    pub async fn put_bundle(&self, digest: &str, data: &[u8]) -> StoreResult<()> {
        let sql = format!(
            "INSERT INTO bundles (digest, data, created_at) VALUES ($1, $2, {}) \
             ON CONFLICT (digest) DO NOTHING",
            self.now_sql()
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(digest)
                .bind(data)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// The bundle kept under `digest`.
    pub async fn bundle(&self, digest: &str) -> StoreResult<Option<Vec<u8>>> {
        on_backend!(self, pool => {
            let rows = sqlx::query("SELECT data FROM bundles WHERE digest = $1")
                .bind(digest)
                .fetch_all(pool)
                .await?;
            rows.first().map(|row| row.try_get("data")).transpose()
        })
    }

    /// Deletes bundles older than `age_ms` that no queued or running build
    /// names (a retrigger of an older build then says its bundle is gone).
    pub async fn prune_bundles(&self, age_ms: i64) -> StoreResult<u64> {
        let sql = format!(
            "DELETE FROM bundles WHERE created_at < {} - $1 AND NOT EXISTS ( \
             SELECT 1 FROM builds WHERE builds.repo = 'bundle:' || bundles.digest \
             AND builds.status IN ('queued', 'running'))",
            self.now_sql()
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(age_ms)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })
    }

    /// Whether the database answers: one trivial query.
    pub async fn ping(&self) -> StoreResult<()> {
        on_backend!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await.map(|_| ())
        })
    }

    pub async fn heartbeat(&self, id: &str) -> StoreResult<()> {
        let sql = format!(
            "UPDATE agents SET last_seen = {} WHERE id = $1",
            self.now_sql()
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).bind(id).execute(pool).await.map(|_| ())
        })
    }

    /// Builds by pipeline and status, the queue's oldest, the log bytes
    /// stored: what `/metrics` reports of the cluster.
    pub async fn cluster_stats(&self) -> StoreResult<ClusterStats> {
        let now = self.now_sql();
        let totals = format!(
            "SELECT {now} AS now, \
             (SELECT {now} - MIN(requested_at) FROM builds WHERE status = 'queued') AS oldest, \
             (SELECT CAST(COALESCE(SUM(LENGTH(data)), 0) AS BIGINT) FROM log_chunks) AS log_bytes"
        );
        let by_status = "SELECT pipeline, status, COUNT(*) AS n FROM builds GROUP BY pipeline, status ORDER BY pipeline, status";
        on_backend!(self, pool => {
            let row = sqlx::query(sqlx::AssertSqlSafe(totals.as_str())).fetch_one(pool).await?;
            let mut stats = ClusterStats {
                now_ms: row.try_get("now")?,
                oldest_queued_age_ms: row.try_get("oldest")?,
                log_bytes: row.try_get("log_bytes")?,
                builds: Vec::new(),
            };
            for row in sqlx::query(by_status).fetch_all(pool).await? {
                stats.builds.push((row.try_get("pipeline")?, row.try_get("status")?, row.try_get("n")?));
            }
            Ok(stats)
        })
    }

    /// Agents seen in the last hour (older ones age out of the list), on
    /// the database's clock.
    pub async fn agents(&self) -> StoreResult<Vec<AgentInfo>> {
        let now = self.now_sql();
        let sql = format!(
            "SELECT a.id, a.name, a.address, a.workers, a.labels, a.version, a.started_at, a.last_seen, \
             a.lease_ms, a.state, {now} AS now, \
             (SELECT COUNT(*) FROM builds b WHERE b.agent_id = a.id AND b.status = 'running') AS running, \
             (SELECT COUNT(*) FROM cluster_leader l WHERE l.agent_id = a.id AND l.expires_at > {now}) AS leads \
             FROM agents a WHERE a.last_seen > {now} - 3600000 ORDER BY a.name, a.id"
        );
        on_backend!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| {
                    let labels: String = row.try_get("labels")?;
                    let last_seen: i64 = row.try_get("last_seen")?;
                    let now: i64 = row.try_get("now")?;
                    let lease_ms: i64 = row.try_get("lease_ms")?;
                    let state: String = row.try_get("state")?;
                    let alive = state != "stopped" && now - last_seen < lease_ms;
                    let status = match (alive, state.as_str()) {
                        (false, _) => "offline",
                        (true, "draining") => "draining",
                        (true, _) => "online",
                    };
                    Ok(AgentInfo {
                        id: row.try_get("id")?,
                        name: row.try_get("name")?,
                        address: row.try_get("address")?,
                        workers: row.try_get("workers")?,
                        labels: serde_json::from_str(&labels).unwrap_or_default(),
                        version: row.try_get("version")?,
                        started_at: row.try_get("started_at")?,
                        last_seen,
                        online: status == "online",
                        status: status.into(),
                        leader: alive && row.try_get::<i64, _>("leads")? > 0,
                        running: row.try_get("running")?,
                    })
                })
                .collect()
        })
    }

    /// Takes or keeps the cluster's leadership for `lease_ms`: true when
    /// this agent holds it (it held it already, or the holder's lease ran
    /// out — one conditional statement, so two agents never both win).
    pub async fn lead(&self, agent_id: &str, lease_ms: i64) -> StoreResult<bool> {
        let now = self.now_sql();
        let sql = format!(
            "INSERT INTO cluster_leader (name, agent_id, expires_at) VALUES ('cluster', $1, {now} + $2) \
             ON CONFLICT (name) DO UPDATE SET agent_id = excluded.agent_id, expires_at = excluded.expires_at \
             WHERE cluster_leader.agent_id = excluded.agent_id OR cluster_leader.expires_at < {now}"
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(agent_id)
                .bind(lease_ms)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() == 1)
        })
    }

    /// The last minute whose schedules the leaders queued.
    pub async fn scheduled_until(&self) -> StoreResult<Option<i64>> {
        on_backend!(self, pool => {
            let rows = sqlx::query("SELECT scheduled_until FROM cluster_leader WHERE name = 'cluster'")
                .fetch_all(pool)
                .await?;
            Ok(rows.first().and_then(|row| row.try_get::<Option<i64>, _>("scheduled_until").ok().flatten()))
        })
    }

    /// Records that schedules were queued up to `minute` (by the leader).
    pub async fn set_scheduled_until(&self, agent_id: &str, minute: i64) -> StoreResult<()> {
        on_backend!(self, pool => {
            sqlx::query("UPDATE cluster_leader SET scheduled_until = $1 WHERE name = 'cluster' AND agent_id = $2")
                .bind(minute)
                .bind(agent_id)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// The name of the API token whose hash is `hash`, if any.
    pub async fn token_named(&self, hash: &str) -> StoreResult<Option<String>> {
        on_backend!(self, pool => {
            let rows = sqlx::query("SELECT name FROM api_tokens WHERE hash = $1")
                .bind(hash)
                .fetch_all(pool)
                .await?;
            rows.first().map(|row| row.try_get("name")).transpose()
        })
    }

    /// Adds a token; false when the name is taken. With `replace`, a token
    /// of that name is replaced instead, and the same token under another
    /// name is renamed (an agent's own file token: its row is named after
    /// the agent, who may have been renamed since).
    pub async fn add_token(&self, name: &str, hash: &str, replace: bool) -> StoreResult<bool> {
        let sql = format!(
            "INSERT INTO api_tokens (name, hash, created_at) VALUES ($1, $2, {}) ON CONFLICT (name) {}",
            self.now_sql(),
            if replace {
                "DO UPDATE SET hash = excluded.hash, created_at = excluded.created_at"
            } else {
                "DO NOTHING"
            }
        );
        on_backend!(self, pool => {
            let mut tx = pool.begin().await?;
            if replace {
                sqlx::query("DELETE FROM api_tokens WHERE hash = $1 AND name <> $2")
                    .bind(hash)
                    .bind(name)
                    .execute(&mut *tx)
                    .await?;
            }
            let added = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(name)
                .bind(hash)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            tx.commit().await?;
            Ok(added)
        })
    }

    /// Opens a web UI session for the token `token_name`, kept by the hash
    /// of its id, valid for `lifetime_ms`. Expired sessions go on the way.
    pub async fn create_session(
        &self,
        hash: &str,
        token_name: &str,
        lifetime_ms: i64,
    ) -> StoreResult<()> {
        let now = self.now_sql();
        let expire = format!("DELETE FROM sessions WHERE expires_at < {now}");
        let insert = format!(
            "INSERT INTO sessions (hash, token_name, created_at, expires_at) \
             VALUES ($1, $2, {now}, {now} + $3)"
        );
        on_backend!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(expire.as_str())).execute(pool).await?;
            sqlx::query(sqlx::AssertSqlSafe(insert.as_str()))
                .bind(hash)
                .bind(token_name)
                .bind(lifetime_ms)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// The token name of a live session: not expired, and its token not
    /// revoked (revoking a token ends the sessions opened with it).
    pub async fn session_token(&self, hash: &str) -> StoreResult<Option<String>> {
        let sql = format!(
            "SELECT s.token_name FROM sessions s JOIN api_tokens t ON t.name = s.token_name \
             WHERE s.hash = $1 AND s.expires_at > {}",
            self.now_sql()
        );
        on_backend!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(hash)
                .fetch_all(pool)
                .await?;
            rows.first().map(|row| row.try_get("token_name")).transpose()
        })
    }

    /// Ends a session (logging out).
    pub async fn delete_session(&self, hash: &str) -> StoreResult<()> {
        on_backend!(self, pool => {
            sqlx::query("DELETE FROM sessions WHERE hash = $1")
                .bind(hash)
                .execute(pool)
                .await
                .map(|_| ())
        })
    }

    /// Steps finished and planned, per build: the progress lists show.
    pub async fn step_progress(&self, ids: &[i64]) -> StoreResult<BTreeMap<i64, (i64, i64)>> {
        if ids.is_empty() {
            return Ok(BTreeMap::new());
        }
        // Ids are numbers: listing them inline is safe and works on both.
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        let sql = format!(
            "SELECT build_id, CAST(COUNT(*) AS BIGINT) AS total, \
             CAST(SUM(CASE WHEN status IN ('pending', 'running', 'queued') THEN 0 ELSE 1 END) AS BIGINT) AS done \
             FROM steps WHERE build_id IN ({}) GROUP BY build_id",
            list.join(", ")
        );
        on_backend!(self, pool => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.as_str())).fetch_all(pool).await?;
            rows.iter()
                .map(|row| {
                    let id: i64 = row.try_get("build_id")?;
                    let total: i64 = row.try_get("total")?;
                    let done: i64 = row.try_get("done")?;
                    Ok((id, (done, total)))
                })
                .collect()
        })
    }

    /// (name, created at) of every token.
    pub async fn tokens(&self) -> StoreResult<Vec<(String, i64)>> {
        on_backend!(self, pool => {
            let rows = sqlx::query("SELECT name, created_at FROM api_tokens ORDER BY name")
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|row| Ok((row.try_get("name")?, row.try_get("created_at")?)))
                .collect()
        })
    }

    /// Revokes a token; false when there is none of that name.
    pub async fn revoke_token(&self, name: &str) -> StoreResult<bool> {
        on_backend!(self, pool => {
            sqlx::query("DELETE FROM api_tokens WHERE name = $1")
                .bind(name)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() == 1)
        })
    }

    /// Every repository a build was checked out from (its commit was
    /// recorded): the scheduler's worklist. A string that never cloned —
    /// a typo, a fuzzer's — is not a repository to poll.
    pub async fn known_repos(&self) -> StoreResult<Vec<String>> {
        on_backend!(self, pool => {
            let rows = sqlx::query("SELECT DISTINCT repo FROM builds WHERE sha IS NOT NULL ORDER BY repo").fetch_all(pool).await?;
            rows.iter().map(|row| row.try_get("repo")).collect()
        })
    }

    /// Takes the slot of a scheduled run; false when an agent already did.
    pub async fn claim_schedule_slot(
        &self,
        repo: &str,
        pipeline: &str,
        minute: i64,
    ) -> StoreResult<bool> {
        on_backend!(self, pool => {
            sqlx::query("INSERT INTO schedule_runs (repo, pipeline, minute) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
                .bind(repo)
                .bind(pipeline)
                .bind(minute)
                .execute(pool)
                .await
                .map(|r| r.rows_affected() == 1)
        })
    }
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    /// A migration file that is not in the list would never run (it
    /// happened once): every file, in order, for both backends.
    #[test]
    fn every_migration_file_is_listed_in_order() {
        for (backend, listed) in [
            ("sqlite", SQLITE_MIGRATIONS),
            ("postgres", POSTGRES_MIGRATIONS),
        ] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(backend);
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            files.sort();
            assert_eq!(files.len(), listed.len(), "{backend}: {files:?}");
            for (i, ((version, listed_file, sql), file)) in listed.iter().zip(&files).enumerate() {
                assert_eq!(*version, i as i64 + 1);
                assert_eq!(listed_file, file);
                let text = std::fs::read_to_string(dir.join(file)).unwrap();
                assert_eq!(&text, sql, "{backend}: migration {version} is not {file}");
            }
        }
    }
}
