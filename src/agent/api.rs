//! The types of piperd's HTTP API as they travel: what the server answers,
//! what `piper`'s remote commands read, and what the OpenAPI document
//! (`/api/v1/openapi.json`, generated from these types and the handlers'
//! `#[utoipa::path]`) describes. One definition for all three, so they
//! cannot drift.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use super::store::{AgentInfo, Build, BuildState, StoredStep};
pub use crate::event::Event;

/// `POST /api/v1/builds`: what to build.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildRequest {
    /// A local path of a git repository, or a git URL (not blank, not
    /// starting with `-`: it goes on git's command line).
    #[schema(min_length = 1, pattern = r"^(?!-)[\s\S]*\S")]
    pub repo: String,
    /// The pipeline of the repository's piper.lua to run (not blank).
    #[schema(min_length = 1, pattern = r"\S")]
    pub pipeline: String,
    /// Branch, tag or commit (default `HEAD`; not blank, not starting
    /// with `-`).
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, pattern = r"^(?!-)[\s\S]*\S")]
    pub git_ref: Option<String>,
    /// Variables given to the steps (names not empty, without `=` or NUL;
    /// values without NUL).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(schema_with = variables_schema)]
    pub env: BTreeMap<String, String>,
    /// Like `env`, but masked in logs and never shown by the API. A name
    /// may not be in both.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(schema_with = variables_schema)]
    pub secret_env: BTreeMap<String, String>,
    /// Who asked (default `api`; not blank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, pattern = r"\S")]
    pub requested_by: Option<String>,
    /// The pipeline's arguments: `"$1"`.. and `"$@"` in its shell commands,
    /// `ctx.args` in its Lua functions, `PIPER_ARGS` (no NUL bytes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// `POST /api/v1/webhook`: what a git host sends on a push. The pipeline
/// comes from the query (`?pipeline=`, default `ci`); one in the body is
/// checked but not used.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookRequest {
    #[schema(min_length = 1, pattern = r"^(?!-)[\s\S]*\S")]
    pub repo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, pattern = r"\S")]
    pub pipeline: Option<String>,
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, pattern = r"^(?!-)[\s\S]*\S")]
    pub git_ref: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(schema_with = variables_schema)]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(schema_with = variables_schema)]
    pub secret_env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, pattern = r"\S")]
    pub requested_by: Option<String>,
}

/// `POST /api/v1/bundles`: where the sent commits are kept.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BundleStored {
    /// What a build names as its `repo` to build from them:
    /// `bundle:DIGEST`.
    pub repo: String,
}

/// What a git host's verified delivery that builds nothing answers (202).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HookIgnored {
    /// Why nothing was queued.
    pub ignored: String,
}

/// An object of variables: what an environment can hold (null: none).
fn variables_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    let string = |pattern: &str, min: usize| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(pattern))
            .min_length(Some(min))
    };
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .property_names(Some(string("^[^=\\u0000]+$", 1).build()))
        .additional_properties(Some(string("^[^\\u0000]*$", 0)))
        .build()
}

/// Steps finished and planned.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    pub done: i64,
    pub total: i64,
}

/// A build as lists show it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildSummary {
    #[serde(flatten)]
    pub build: Build,
    pub progress: Progress,
    /// A queued build no live agent can run: the labels it requires
    /// (`gpu=1 os=linux`); it runs when such an agent joins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// `GET /api/v1/builds/{id}`: a build and its steps.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildDetail {
    #[serde(flatten)]
    pub summary: BuildSummary,
    pub steps: Vec<StoredStep>,
}

/// `GET /api/v1/builds`: a page of builds, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuildList {
    pub builds: Vec<BuildSummary>,
    /// The `before` of the next page; absent on the last one.
    pub next_before: Option<i64>,
}

/// `GET /api/v1/search`: lines of stored logs holding a text, newest
/// build first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchResults {
    pub hits: Vec<SearchHit>,
    /// More lines match than `limit`: narrow the search.
    pub truncated: bool,
}

/// One line of a stored log that holds the text searched for.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    /// The build's id.
    pub build: i64,
    /// Per repository: 1, 2, 3, ...
    pub number: i64,
    pub repo: String,
    pub pipeline: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The build's status.
    pub status: String,
    /// When the build was requested (Unix ms).
    pub requested_at: i64,
    pub step: String,
    /// The line's number, from 1 within the step's log.
    pub line: i64,
    /// The line (at most 4 KiB of it; invalid UTF-8 replaced).
    pub text: String,
    /// Where the text is in `text`: `[start, end)` in characters.
    pub matches: Vec<[usize; 2]>,
    /// The line in the web UI: `/builds/{id}?step=STEP#L{line}`.
    pub url: String,
}

/// `GET /api/v1/history`: each step of a repository's pipeline over its
/// last builds, and its flaky steps.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct History {
    pub repo: String,
    /// The pipeline asked for (absent: all of the repository's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline: Option<String>,
    /// How many finished builds were read.
    pub builds: usize,
    /// Each step, in the order it first appears.
    pub steps: Vec<StepHistory>,
    /// Steps that failed and passed on the same commit, latest first.
    pub flaky: Vec<FlakyStep>,
}

/// One step over the builds read.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepHistory {
    pub step: String,
    /// Each build's run of it, oldest first.
    pub runs: Vec<StepRunPoint>,
    /// Median and 95th percentile of the runs that ran (not up to date,
    /// fetched, skipped or blocked), in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p50_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_ms: Option<u64>,
    /// The newer half's median over the older half's (1.4: 40% slower);
    /// absent with fewer than 4 timed runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trend: Option<f64>,
    /// Runs that failed or timed out.
    pub failures: u64,
    /// `failures` over the runs that ran (0 to 1).
    pub failure_rate: f64,
}

/// A step in one build.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepRunPoint {
    /// The build's id.
    pub build: i64,
    /// Per repository: 1, 2, 3, ...
    pub number: i64,
    pub status: String,
    /// How long it ran (absent when it did not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// A step that failed and passed on the same commit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FlakyStep {
    pub step: String,
    pub sha: String,
    /// The builds (ids) where it failed, and where it passed.
    pub failed: Vec<i64>,
    pub passed: Vec<i64>,
}

/// `GET /api/v1/agents`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentList {
    pub agents: Vec<AgentInfo>,
}

/// `GET /api/v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` when the agent cannot reach its database
    /// (answered with 503, so a load balancer sends no more requests).
    pub status: String,
    /// Why it is unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub version: String,
    /// This agent's name.
    pub agent: String,
    /// `sqlite` or `postgres`.
    pub database: String,
}

/// `GET /api/v1/builds/{id}/stream`: a page of the build's stream.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StreamPage {
    pub items: Vec<StreamItem>,
    /// The `after` of the next page.
    pub next: i64,
    pub status: BuildState,
}

/// One item of a build's stream, in order (`seq`): an executor event, or
/// output of a step.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StreamItem {
    Event {
        seq: i64,
        /// Null when this version cannot read it (a newer agent's).
        #[serde(deserialize_with = "known_event")]
        #[schema(required = true)]
        event: Option<Event>,
    },
    Output {
        seq: i64,
        output: OutputChunk,
    },
}

/// An event this version does not know is kept as absent, not an error.
fn known_event<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Event>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

/// Output of a step; `data` is base64 (logs are bytes).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OutputChunk {
    pub step: String,
    #[schema(format = Byte)]
    pub data: String,
}

/// `chunk` events of `GET /api/v1/builds/{id}/events`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogChunk {
    /// Where `data` starts in the log.
    pub offset: i64,
    /// Where the next chunk starts.
    pub next: i64,
    #[schema(format = Byte)]
    pub data: String,
}

/// `GET /api/v1/builds/{id}/log/locate`: a place in a log, and the log's
/// size, for a view that shows a window of it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogPosition {
    /// The offset of the first byte of the line found.
    pub offset: i64,
    /// Its number, from 1.
    pub line: i64,
    /// False when a search (`find`, `error`) found nothing: `offset` and
    /// `line` are then where it started.
    pub found: bool,
    /// The log's length in bytes, so far.
    pub length: i64,
    /// How many lines the log has, so far.
    pub lines: i64,
}

/// `POST /api/v1/session`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LogIn {
    /// An API token of the cluster.
    #[schema(min_length = 1)]
    pub token: String,
}

/// Every error: what is wrong, and the field to blame when there is one.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
