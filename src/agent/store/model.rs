//! What the store keeps and answers, as Rust values: builds and their
//! states, steps, agents, log slices; and how a build is read from a row.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use super::backend::StoreResult;

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
    /// Whether an error word ends in it (`NewChunk::has_error`); `None` if
    /// stored before that was recorded.
    pub has_error: Option<bool>,
}

/// A stored log chunk as a log export reads it (`Store::log_records`).
#[derive(Debug, Clone)]
pub struct ExportChunk {
    pub seq: i64,
    pub step: String,
    /// Piper's own line (`$ command`), not the step's output.
    pub annotation: bool,
    /// When it was stored, in Unix milliseconds (None: before migration 15).
    pub written_at: Option<i64>,
    pub data: Vec<u8>,
}

/// A chunk of a build's log, as its writer appends it.
#[derive(Debug, Clone, Copy)]
pub struct NewChunk<'a> {
    pub build_id: i64,
    /// The attempt writing it: the chunk of an attempt that no longer
    /// holds the build is not stored (fencing).
    pub attempt: i64,
    /// Its place in the sequence of the build's chunks and events.
    pub seq: i64,
    pub step: &'a str,
    /// Where it starts in the build's log, and in its step's.
    pub build_offset: i64,
    pub step_offset: i64,
    pub data: &'a [u8],
    /// It repeats an event for the raw log (`$ command`): event streams
    /// leave it out.
    pub annotation: bool,
    /// An error word (as "the first error" of the web UI finds them) ends
    /// in it, maybe begun in the step's previous chunk: a search for the
    /// first error reads only such chunks.
    pub has_error: bool,
}

pub(super) const BUILD_COLUMNS: &str = "id, number, repo, git_ref, sha, version, pipeline, status, env, requested_by, \
     requested_at, started_at, finished_at, agent, parent_id, error, secret_env, \
     attempt, max_attempts, lease_expires_at, cancel_requested, agent_id, requires, fence, args";

pub(super) fn build_from_row<R: Row>(row: &R) -> StoreResult<Build>
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
