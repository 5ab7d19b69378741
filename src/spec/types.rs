//! What the user wrote, type-checked: steps, pipelines, triggers and
//! commands as `piper.lua` defines them, names not yet resolved (that is
//! `graph.rs`'s work).

use std::fmt;
use std::time::Duration;

use indexmap::IndexMap;
use mlua::Function;

use crate::location::Location;

pub struct RawSpec {
    pub steps: Vec<RawStep>,
    pub pipelines: Vec<RawPipeline>,
    /// Variables set with `env.set` / `env.load` for every step.
    pub env: IndexMap<String, String>,
    /// Build stamps (`env.stamp`): variables whose value a command prints
    /// per build, outside every fingerprint.
    pub stamps: IndexMap<String, Command>,
    /// Project Lua files required during evaluation.
    pub files: Vec<String>,
    /// `trigger.watch`: extra globs that rerun a watched pipeline.
    pub watch_paths: Vec<String>,
    /// `trigger.watch`: globs that never trigger a watched run.
    pub watch_ignore: Vec<String>,
}

pub struct RawStep {
    pub name: String,
    pub location: Location,
    pub desc: Option<String>,
    pub run: Run,
    pub deps: Vec<String>,
    pub env: IndexMap<String, String>,
    pub dir: Option<String>,
    pub timeout: Option<Duration>,
    pub retries: u32,
    pub allow_failure: bool,
    pub when: Option<Condition>,
    /// Globs of the files the step reads; with them it can be up to date.
    pub inputs: Vec<String>,
    /// Paths or globs the step writes, relative to its `dir`.
    pub outputs: Vec<String>,
    /// A Makefile-style dependency file the step writes (`cc -MD`), relative
    /// to its `dir`: the files it lists are inputs of the next run.
    pub depfile: Option<String>,
    /// A long-running process (a dev server): `piper watch` keeps it running
    /// beside the builds and restarts it only when a change affects it.
    pub service: bool,
    /// Whether a cache may hold its results (`cache = false`: it reads
    /// something its inputs do not say).
    pub cache: bool,
    /// Whether a remote cache may hold its results (`remote_cache = false`:
    /// it reads something of this machine, so only this machine's disk
    /// cache may share them).
    pub remote_cache: bool,
    /// Whether a remote executor may run it (`remote = false`: always
    /// here, as a step that needs this machine).
    pub remote: bool,
    /// Mixed into its action key (`cache_salt = "2"`): changing it makes
    /// every cache miss for the step once.
    pub cache_salt: Option<String>,
    /// Labels an agent must have to run it (`requires = { gpu = "1" }`).
    pub requires: IndexMap<String, String>,
    pub functions: StepFunctions,
}

/// What a step does when it runs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Run {
    /// Commands run one after another; the step fails at the first failure.
    /// Empty for a step that only groups its dependencies.
    Commands(Vec<Command>),
    /// A Lua function called with a `ctx` (see `lua/piper.lua`). The
    /// function itself lives in the graph's Lua state (`lazy_lua.rs`), so
    /// that a cached graph needs no state until such a step runs; here is
    /// where it was written, which its fingerprint reads.
    Lua(LuaSource),
}

/// Where a Lua function was defined: its file and line span.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LuaSource {
    pub file: String,
    pub first_line: usize,
    pub last_line: usize,
}

impl LuaSource {
    pub(super) fn of(function: &Function) -> LuaSource {
        let info = function.info();
        LuaSource {
            file: info.short_src.unwrap_or_default(),
            first_line: info.line_defined.unwrap_or(0),
            last_line: info.last_line_defined.unwrap_or(0),
        }
    }
}

/// The Lua functions of one step, kept beside the (serializable) step.
#[derive(Clone, Default)]
pub struct StepFunctions {
    pub run: Option<Function>,
    pub when: Option<Function>,
}

/// One command of a step.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// A shell script: run by `/bin/sh -ec` (its first failing line stops
    /// it), with the pipeline's arguments as `$1`...; a script that is one
    /// plain command (no quoting, expansion or operators) is started
    /// directly, without a shell.
    Shell(String),
    /// Run directly, no shell: program and arguments.
    Argv(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Condition {
    Static(bool),
    /// A function (in `StepFunctions::when`) called just before the step
    /// would start; a falsy result skips it.
    Lua,
}

pub struct RawPipeline {
    pub name: String,
    pub location: Location,
    pub desc: Option<String>,
    /// Steps and included pipelines, in the order listed.
    pub members: Vec<Member>,
    pub env: IndexMap<String, String>,
    pub triggers: Vec<RawTrigger>,
    /// Cron schedules on which the build agent runs the pipeline.
    pub schedules: Vec<crate::cron::Schedule>,
    /// How many times the build agent may run it again when the agent
    /// running it died (0: the build ends `lost`).
    pub retry_agent_lost: u32,
    /// Labels an agent must have to run it.
    pub requires: IndexMap<String, String>,
    /// `remote_cache = false`: its steps neither fetch from nor upload to
    /// a remote cache when it is run.
    pub remote_cache: bool,
    /// What a bare `piper exec` runs.
    pub default: bool,
    /// The arguments it takes after `--`, offered by completion.
    pub args: Vec<String>,
}

pub enum Member {
    /// A step handle.
    Step(String),
    /// A pipeline handle: include all of its steps.
    Pipeline(String),
    /// A bare string: a step name, or failing that a pipeline name.
    Name(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "agent", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
/// When a pipeline's trigger fires: the field it was given in.
pub enum TriggerOn {
    /// `on_success`: the build succeeded.
    Success,
    /// `on_failure`: the build failed.
    Failure,
    /// `always`: the build ended either way.
    Always,
}

impl TriggerOn {
    /// The `pipeline` field it comes from (`on_success`, ...).
    pub fn field(self) -> &'static str {
        match self {
            TriggerOn::Success => "on_success",
            TriggerOn::Failure => "on_failure",
            TriggerOn::Always => "always",
        }
    }
}

#[derive(Debug, Clone)]
pub struct RawTrigger {
    pub on: TriggerOn,
    pub pipeline: String,
    pub env: IndexMap<String, String>,
    pub location: Location,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Shell(script) => f.write_str(script),
            Command::Argv(argv) => {
                let quoted: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
                f.write_str(&quoted.join(" "))
            }
        }
    }
}

/// Quotes a word for display the way `piper.shell.quote` does.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

/// Every field a step may have (drives "did you mean" and the docs check).
pub const STEP_FIELDS: &[&str] = &[
    "run",
    "argv",
    "deps",
    "env",
    "dir",
    "timeout",
    "retries",
    "allow_failure",
    "when",
    "desc",
    "inputs",
    "outputs",
    "depfile",
    "service",
    "cache",
    "remote_cache",
    "remote",
    "cache_salt",
    "requires",
];
pub(super) const PIPELINE_FIELDS: &[&str] = &[
    "desc",
    "default",
    "args",
    "env",
    "on_success",
    "on_failure",
    "always",
    "schedule",
    "retry_agent_lost",
    "requires",
    "remote_cache",
];
