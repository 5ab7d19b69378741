//! The typed event stream: the only thing the executor says about a build.
//! The terminal renderer, `--json` and every later host (watch, piperd, the
//! web UI) consume exactly these events; none has a side channel.
//!
//! `--json` writes one event per line, serialized as below; the format is
//! documented in `docs/reference/events.md`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::mpsc;

use crate::spec::TriggerOn;

/// Events travel through a bounded channel: a slow consumer slows the
/// producers down instead of buffering unbounded output in memory.
pub(crate) type EventSender = mpsc::Sender<Event>;
pub(crate) type EventReceiver = mpsc::Receiver<Event>;

pub(crate) fn channel() -> (EventSender, EventReceiver) {
    mpsc::channel(1024)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "agent", derive(utoipa::ToSchema))]
#[serde(tag = "event", rename_all = "snake_case")]
/// What happens in a run, in order: every host (the terminal, `--json`,
/// `piper watch`, piperd, an embedding program) reads this one stream.
/// `docs/reference/events.md` shows each as JSON.
pub enum Event {
    /// A build starts: its plan, before any step runs.
    BuildStarted {
        /// The build within the run: 1 is the one asked for, 2.. the chained ones.
        build: u32,
        /// The targets as asked for, e.g. "ci".
        name: String,
        /// The pipelines or steps asked for.
        targets: Vec<String>,
        /// For a chained build: the build and pipeline whose trigger started it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        triggered_by: Option<TriggeredBy>,
        /// Every step of the build, in order of definition.
        steps: Vec<PlannedStepInfo>,
        /// `--dry-run`: nothing runs.
        dry_run: bool,
        /// Problems that do not stop the build (e.g. unreadable state).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    /// All dependencies are done; the step waits for a free job slot.
    StepQueued {
        /// The build within the run: 1 is the one asked for, 2.. the chained ones.
        build: u32,
        /// The step's name.
        step: String,
    },
    /// The step starts an attempt.
    StepStarted {
        /// The build within the run: 1 is the one asked for, 2.. the chained ones.
        build: u32,
        /// The step's name.
        step: String,
        /// Which attempt this is (1, then 2.. with `retries`).
        attempt: u32,
        /// Why it runs, in words (first attempt only): "file modified: a.c".
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reasons: Vec<String>,
    },
    /// A command of the step is about to run (shown as `$ cmd`).
    StepCommand {
        /// The build within the run: 1 is the one asked for, 2.. the chained ones.
        build: u32,
        /// The step's name.
        step: String,
        /// The command, as written (`cargo test`, or an argv joined).
        command: String,
    },
    /// Output of the step's processes (stdout and stderr share one pipe, so
    /// their order is kept). `data` is UTF-8 (invalid bytes replaced) in JSON.
    StepOutput {
        /// The build within the run: 1 is the one asked for, 2.. the chained ones.
        build: u32,
        /// The step's name.
        step: String,
        /// The bytes, as the processes wrote them.
        #[serde(serialize_with = "lossy_utf8", deserialize_with = "utf8_bytes")]
        #[cfg_attr(feature = "agent", schema(value_type = String))]
        data: Vec<u8>,
    },
    /// An attempt failed and the step will run again.
    StepRetrying {
        /// The build within the run: 1 is the one asked for, 2.. the chained ones.
        build: u32,
        /// The step's name.
        step: String,
        /// Which attempt this is (1, then 2.. with `retries`).
        attempt: u32,
        /// Why the attempt failed, in words.
        reason: String,
    },
    /// The step is over: how it ended.
    StepFinished {
        /// The build within the run: 1 is the one asked for, 2.. the chained ones.
        build: u32,
        /// The step's name.
        step: String,
        /// How it ended.
        status: StepStatus,
        /// Its last process's exit code, when it had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        /// How long it took, in milliseconds.
        duration_ms: u64,
        /// How many attempts it took.
        attempts: u32,
        /// Why it failed or was skipped, in words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// Where it ran, when not here: a remote executor's worker.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ran_on: Option<RanOn>,
    },
    /// Something to fix that did not fail the step: a declared output the
    /// step did not create (it will run again next time).
    StepWarning {
        /// The build within the run: 1 is the one asked for, 2.. the chained ones.
        build: u32,
        /// The step's name.
        step: String,
        /// In words.
        message: String,
    },
    /// `piper watch`: relevant files changed; `rerun` names the steps that
    /// may run (empty: the whole plan).
    WatchChanged {
        /// The changed files, relative to the project root.
        paths: Vec<String>,
        /// The steps that may run again (empty: the whole plan).
        rerun: Vec<String>,
    },
    /// `piper watch`: the config does not evaluate (or a target vanished);
    /// watching goes on until it is fixed.
    ConfigError {
        /// The error, with its `file:line`.
        message: String,
    },
    /// `piper watch`: the builds a change started (chained ones included)
    /// are over; waiting for the next change.
    WatchIdle,
    /// A build is over.
    BuildFinished {
        /// The build within the run: 1 is the one asked for, 2.. the chained ones.
        build: u32,
        /// Its name: the targets as asked for, or the pipeline's.
        name: String,
        /// How it ended.
        status: BuildStatus,
        /// How long it took, in milliseconds.
        duration_ms: u64,
        /// What `piper` would exit with if this were the last build.
        exit_code: i32,
        /// The pipelines this build's triggers chain now (each becomes the
        /// next build of the run), so a follower knows to wait for them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        chains: Vec<String>,
    },
}

/// A step of a build's plan, as `build_started` lists them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "agent", derive(utoipa::ToSchema))]
pub struct PlannedStepInfo {
    /// The step's name.
    pub name: String,
    /// The steps it depends on, by name.
    pub deps: Vec<String>,
}

/// What chained a build: another build's trigger.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "agent", derive(utoipa::ToSchema))]
pub struct TriggeredBy {
    /// The build whose trigger fired.
    pub build: u32,
    /// Its pipeline.
    pub pipeline: String,
    /// When the trigger fires.
    pub on: TriggerOn,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "agent", derive(utoipa::ToSchema))]
#[non_exhaustive]
/// Where a step ran that ran on a remote executor (`--remote-exec`), and
/// where its time went: queued on the cluster, then running on a worker.
pub struct RanOn {
    /// The remote executor, as given (`grpc://host:port`).
    pub executor: String,
    /// The worker that ran it, as the cluster names it (empty when the
    /// cluster does not say).
    pub worker: String,
    /// From the cluster queueing it to a worker starting it, in milliseconds.
    pub queued_ms: u64,
    /// From the worker starting it to the worker finishing it, in milliseconds.
    pub ran_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "agent", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
/// How a step ended.
pub enum StepStatus {
    /// It ran and succeeded.
    Success,
    /// It ran and failed (a command's exit code, a Lua error).
    Failed,
    /// Failed, but the step has `allow_failure = true`: the build goes on.
    AllowedFailure,
    /// Its `timeout` ended it.
    TimedOut,
    /// Its `when` condition was false.
    Skipped,
    /// Not run because a dependency failed.
    Blocked,
    /// Stopped, or never started, because the build was interrupted or
    /// another step failed (fail-fast).
    Canceled,
    /// `--dry-run`: would have run.
    DryRun,
    /// Its inputs, command, variables and dependencies are as at its last
    /// successful run, and its outputs exist: not run.
    UpToDate,
    /// Not run here: the same work ran before, and its outputs and output
    /// were fetched from the cache.
    Fetched,
}

impl StepStatus {
    /// Whether dependents may run after a step ended like this.
    pub fn satisfies_dependents(self) -> bool {
        matches!(
            self,
            StepStatus::Success
                | StepStatus::AllowedFailure
                | StepStatus::Skipped
                | StepStatus::DryRun
                | StepStatus::UpToDate
                | StepStatus::Fetched
        )
    }

    /// Whether it failed the build (failed or timed out).
    pub fn is_failure(self) -> bool {
        matches!(self, StepStatus::Failed | StepStatus::TimedOut)
    }

    /// In words, as the summary shows it (`ok`, `up to date`).
    pub fn label(self) -> &'static str {
        match self {
            StepStatus::Success => "ok",
            StepStatus::Failed => "failed",
            StepStatus::AllowedFailure => "failed (allowed)",
            StepStatus::TimedOut => "timed out",
            StepStatus::Skipped => "skipped",
            StepStatus::Blocked => "blocked",
            StepStatus::Canceled => "canceled",
            StepStatus::DryRun => "dry run",
            StepStatus::UpToDate => "up to date",
            StepStatus::Fetched => "fetched",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "agent", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
/// How a build ended.
pub enum BuildStatus {
    /// Every step succeeded (or was up to date, skipped, allowed to fail).
    Success,
    /// A step failed.
    Failed,
    /// Interrupted (Ctrl-C, SIGTERM, `Run::cancel`, piperd's cancel).
    Canceled,
}

impl Event {
    /// The build (within its run) an event belongs to; 0 for watch's own.
    pub fn build(&self) -> u32 {
        match self {
            Event::BuildStarted { build, .. }
            | Event::StepQueued { build, .. }
            | Event::StepStarted { build, .. }
            | Event::StepCommand { build, .. }
            | Event::StepOutput { build, .. }
            | Event::StepRetrying { build, .. }
            | Event::StepWarning { build, .. }
            | Event::StepFinished { build, .. }
            | Event::BuildFinished { build, .. } => *build,
            Event::WatchChanged { .. } | Event::ConfigError { .. } | Event::WatchIdle => 0,
        }
    }
}

fn utf8_bytes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    String::deserialize(d).map(String::into_bytes)
}

fn lossy_utf8<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(data))
}
