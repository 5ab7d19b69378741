//! What a run is asked to do (`Options`: jobs, fail-fast, force, the
//! runner, ...) and what it answers (`RunOutcome`, one `BuildOutcome` per
//! build, chained ones included).

use std::sync::Arc;
use std::time::Duration;

use indexmap::IndexMap;

use crate::event::BuildStatus;
use crate::runner::{LocalRunner, Runner};

#[derive(Debug, Clone)]
pub struct Options {
    /// Steps running at once; 0: as many as there are CPUs (asked only
    /// when a second step could start: a one-step build need not read the
    /// cgroup files `available_parallelism` consults).
    pub jobs: usize,
    pub keep_going: bool,
    pub dry_run: bool,
    /// `--env K=V`: override every other source.
    pub env_overrides: IndexMap<String, String>,
    /// Variables every step's processes get that say who runs the build,
    /// not what a step does (piperd's `PIPER_BUILD_ID`, `PIPER_AGENT`,
    /// ...), unless the work's own variables set the name; in no
    /// fingerprint, so the same work in another build is up to date, or
    /// fetched from a cache.
    pub run_vars: Arc<[(String, String)]>,
    /// `piper exec PIPELINE -- ARGS`: `"$@"` in the shell commands and
    /// `ctx.args` in the Lua functions of the requested build's steps, and
    /// `PIPER_ARGS` (shell-quoted) in their environment.
    pub args: Arc<[String]>,
    /// SIGTERM to SIGKILL.
    pub kill_grace: Duration,
    /// Run steps even when they are up to date.
    pub force: Force,
    /// Only these steps may run; the others finish as unaffected, keeping
    /// their last fingerprint (watch: only what a change affects).
    pub restrict: Option<std::collections::HashSet<String>>,
    /// Number of the first build (watch numbers its builds consecutively).
    pub first_build: u32,
    /// Watch: `service` steps are not run in the build (reported skipped);
    /// watch runs them beside it.
    pub services_apart: bool,
    /// Make the process a child subreaper and reap every orphan that is
    /// not Piper's own child (`reaper.rs`): what the `piper` and `piperd`
    /// processes, which own all their children, do. Never for an embedder
    /// (the default): the reaper would take the exit status of the host's
    /// own children from under it.
    pub reap_orphans: bool,
    /// How each command runs (local processes unless a host says else).
    pub runner: SharedRunner,
    /// The process exits once this run ends (`piper exec`): what the run
    /// built for its builds is left to the OS instead of freed piece by
    /// piece (a fifth of a cached no-op's work at 1000 steps). Never set
    /// by a host that lives on (watch, piperd, the API).
    pub exiting: bool,
    /// Where step results are fetched from and stored (`--disk-cache`).
    #[cfg(feature = "cache")]
    pub cache: Option<crate::cache::Cache>,
}

/// The runner of a run, shared by its steps.
#[derive(Clone)]
pub struct SharedRunner(pub Arc<dyn Runner>);

impl Default for SharedRunner {
    fn default() -> Self {
        SharedRunner(Arc::new(LocalRunner))
    }
}

impl std::fmt::Debug for SharedRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedRunner")
    }
}

/// The message of a service step reported skipped because `piper watch`
/// runs it beside the build (hosts leave it out of summaries).
pub const SERVICE_APART: &str = "a service: piper watch runs it beside the build";

/// `--force`: which up-to-date steps to run anyway.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Force {
    #[default]
    Nothing,
    All,
    Steps(Vec<String>),
}

impl Force {
    pub fn applies_to(&self, step: &str) -> bool {
        match self {
            Force::Nothing => false,
            Force::All => true,
            Force::Steps(names) => names.iter().any(|n| n == step),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            jobs: 0,
            keep_going: false,
            dry_run: false,
            env_overrides: IndexMap::new(),
            run_vars: Arc::from([]),
            args: Arc::from([]),
            kill_grace: Duration::from_secs(5),
            force: Force::Nothing,
            restrict: None,
            first_build: 1,
            services_apart: false,
            reap_orphans: false,
            runner: SharedRunner::default(),
            exiting: false,
            #[cfg(feature = "cache")]
            cache: None,
        }
    }
}

/// How a whole `piper exec` ended: the requested build and any chained ones.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The requested build, then the chained ones, in the order they ran.
    pub builds: Vec<BuildOutcome>,
    /// 0, the exit code of the first failing step, 124 for a timeout, 1 for
    /// a failure without a code, 130 when interrupted.
    pub exit_code: i32,
}

#[derive(Debug, Clone)]
/// How one build of a run ended.
pub struct BuildOutcome {
    /// Its number within the run (as in its events).
    pub build: u32,
    /// The targets asked for, or the chained pipeline.
    pub name: String,
    /// How it ended.
    pub status: BuildStatus,
    /// What `piper` would exit with for it alone.
    pub exit_code: i32,
}

/// A successful step's message when it ran but made the same outputs as
/// its last run: its dependents stay up to date (early cutoff).
pub const OUTPUTS_UNCHANGED: &str = "outputs unchanged: its dependents stay up to date";
