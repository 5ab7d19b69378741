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
pub type EventSender = mpsc::Sender<Event>;
pub type EventReceiver = mpsc::Receiver<Event>;

pub fn channel() -> (EventSender, EventReceiver) {
    mpsc::channel(1024)
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    BuildStarted {
        build: u32,
        /// The targets as asked for, e.g. "ci".
        name: String,
        targets: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        triggered_by: Option<TriggeredBy>,
        /// Every step of the build, in order of definition.
        steps: Vec<PlannedStepInfo>,
        dry_run: bool,
        /// Problems that do not stop the build (e.g. unreadable state).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    /// All dependencies are done; the step waits for a free job slot.
    StepQueued { build: u32, step: String },
    StepStarted {
        build: u32,
        step: String,
        attempt: u32,
        /// Why it runs, in words (first attempt only): "file modified: a.c".
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        reasons: Vec<String>,
    },
    /// A command of the step is about to run (shown as `$ cmd`).
    StepCommand {
        build: u32,
        step: String,
        command: String,
    },
    /// Output of the step's processes (stdout and stderr share one pipe, so
    /// their order is kept). `data` is UTF-8 (invalid bytes replaced) in JSON.
    StepOutput {
        build: u32,
        step: String,
        #[serde(serialize_with = "lossy_utf8", deserialize_with = "utf8_bytes")]
        #[schema(value_type = String)]
        data: Vec<u8>,
    },
    /// An attempt failed and the step will run again.
    StepRetrying {
        build: u32,
        step: String,
        attempt: u32,
        reason: String,
    },
    StepFinished {
        build: u32,
        step: String,
        status: StepStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        duration_ms: u64,
        attempts: u32,
        /// Why it failed or was skipped, in words.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// Something to fix that did not fail the step: a declared output the
    /// step did not create (it will run again next time).
    StepWarning {
        build: u32,
        step: String,
        message: String,
    },
    /// `piper watch`: relevant files changed; `rerun` names the steps that
    /// may run (empty: the whole plan).
    WatchChanged {
        paths: Vec<String>,
        rerun: Vec<String>,
    },
    /// `piper watch`: the config does not evaluate (or a target vanished);
    /// watching goes on until it is fixed.
    ConfigError { message: String },
    /// `piper watch`: the builds a change started (chained ones included)
    /// are over; waiting for the next change.
    WatchIdle,
    BuildFinished {
        build: u32,
        name: String,
        status: BuildStatus,
        duration_ms: u64,
        /// What `piper` would exit with if this were the last build.
        exit_code: i32,
        /// The pipelines this build's triggers chain now (each becomes the
        /// next build of the run), so a follower knows to wait for them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        chains: Vec<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PlannedStepInfo {
    pub name: String,
    pub deps: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TriggeredBy {
    pub build: u32,
    pub pipeline: String,
    pub on: TriggerOn,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Success,
    Failed,
    /// Failed, but the step has `allow_failure = true`: the build goes on.
    AllowedFailure,
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
        )
    }

    pub fn is_failure(self) -> bool {
        matches!(self, StepStatus::Failed | StepStatus::TimedOut)
    }

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
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuildStatus {
    Success,
    Failed,
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
