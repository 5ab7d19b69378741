//! One step, run: the up-to-date check, the attempts (retries,
//! timeouts), a command through the runner or a Lua function, and the
//! record left for next time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::digest::Digest;
use crate::event::{Event, EventSender, StepStatus};
use crate::fingerprint::{self, Freshness};
use crate::graph::Graph;
use crate::lua_step::{LuaOutcome, LuaStep};
use crate::process::{Exit, OutputSink};
use crate::root_dir::RootDir;
use crate::runner::{CommandRun, Runner};
use crate::spec::Run;
use crate::stamps::Stamps;
use crate::state::{SmallMap, State};

use super::env::*;
use super::options::*;

/// What one finished step attempt sequence reports back to the scheduler.
pub(super) struct StepResult {
    pub(super) index: usize,
    pub(super) status: StepStatus,
    pub(super) exit_code: Option<i32>,
    /// What dependents see of this step in their own fingerprints.
    pub(super) fingerprint: Digest,
}

/// Everything one step needs to run on its own task.
pub(super) struct StepJob {
    pub(super) graph: Arc<Graph>,
    pub(super) index: usize,
    pub(super) step: usize,
    /// [`work_env`]; Piper's own variables are added when it runs.
    pub(super) env: Vec<(String, String)>,
    pub(super) args: Arc<[String]>,
    /// `Options::run_vars`: given to its processes, in no fingerprint.
    pub(super) run_vars: Arc<[(String, String)]>,
    pub(super) runner: Arc<dyn Runner>,
    pub(super) events: EventSender,
    pub(super) build: u32,
    pub(super) cancel: CancellationToken,
    pub(super) grace: Duration,
    pub(super) dry_run: bool,
    pub(super) forced: bool,
    /// Outside `Options::restrict`: report it unaffected, do not run it.
    pub(super) unaffected: bool,
    /// A service while `Options::services_apart`: report it skipped.
    pub(super) apart: bool,
    pub(super) state: Arc<State>,
    pub(super) dep_fingerprints: SmallMap<Digest>,
    pub(super) stamps: Arc<Stamps>,
    /// The project root held open: the up-to-date checks stat through it.
    pub(super) root: Arc<RootDir>,
    /// The up-to-date check, when the scheduler already made it.
    pub(super) checked: Option<std::result::Result<Freshness, String>>,
    /// Where its results may be fetched from, and go.
    #[cfg(feature = "cache")]
    pub(super) cache: Option<crate::cache::Cache>,
    /// The job slots a step takes to run, when it may be in flight
    /// without one (`Scheduler::slots`).
    pub(super) slots: Option<Arc<tokio::sync::Semaphore>>,
    /// The action it runs on the remote executor, when it runs there.
    #[cfg(feature = "remote-cache")]
    pub(super) remote: Option<Box<(crate::cache::ActionKey, crate::cache::ActionParts)>>,
    /// It ran on the remote executor: its results are stored already.
    #[cfg(feature = "remote-cache")]
    pub(super) ran_remotely: AtomicBool,
}

/// How one attempt ended.
pub(super) struct Attempt {
    pub(super) status: StepStatus,
    pub(super) exit_code: Option<i32>,
    pub(super) message: Option<String>,
    /// Where it ran, when on a remote executor.
    pub(super) ran_on: Option<crate::event::RanOn>,
}

/// How a step found up to date ends, whether the scheduler settled it
/// where it became ready or its job found it so.
pub(super) struct UpToDate<'a> {
    pub(super) events: &'a EventSender,
    pub(super) state: &'a State,
    pub(super) build: u32,
    pub(super) index: usize,
    pub(super) step: &'a str,
}

impl UpToDate<'_> {
    /// Keeps settled stamps, says so in one event, and returns what its
    /// dependents see.
    pub(super) async fn finish(
        self,
        record: crate::state::StepRecord,
        duration_ms: u64,
    ) -> StepResult {
        self.keep_settled_stamps(&record);
        let _ = self
            .events
            .send(Event::StepFinished {
                build: self.build,
                step: self.step.to_string(),
                status: StepStatus::UpToDate,
                exit_code: None,
                duration_ms,
                attempts: 0,
                message: Some("inputs, command, variables and dependencies unchanged".into()),
                ran_on: None,
            })
            .await;
        StepResult {
            index: self.index,
            status: StepStatus::UpToDate,
            exit_code: None,
            fingerprint: fingerprint::seen_by_dependents(&record),
        }
    }

    /// An input stamped within the racy window has no trusted mtime, so
    /// every check reads it again; once it has settled, the up-to-date
    /// record with its mtime is kept, and later checks only stat it.
    pub(super) fn keep_settled_stamps(&self, record: &crate::state::StepRecord) {
        let previous = self.state.steps.get(self.step);
        if previous.is_some_and(|p| p.inputs != record.inputs)
            && let Err(e) = self.state.append(self.step, record)
        {
            tracing::warn!("cannot record the state of step {}: {e}", self.step);
        }
    }
}

impl StepJob {
    pub(super) async fn run(mut self) -> StepResult {
        let graph = self.graph.clone();
        let step = &graph.steps[self.step];
        let started = Instant::now();
        if self.apart {
            let fingerprint = Digest::of(format!("service {}", step.name).as_bytes());
            return self
                .finish_early(StepStatus::Skipped, SERVICE_APART.into(), fingerprint)
                .await;
        }
        if self.unaffected {
            let fingerprint = match self.state.steps.get(&step.name) {
                // What a full build shows of it (its outputs' digest when
                // it declares outputs), or dependents would rerun for it.
                Some(record) => fingerprint::seen_by_dependents(record),
                None => Digest::of(format!("unaffected {}", step.name).as_bytes()),
            };
            let message = "not affected by the change".into();
            return self
                .finish_early(StepStatus::UpToDate, message, fingerprint)
                .await;
        }
        let checked = self.checked.take();
        let (record, reasons) = match checked.unwrap_or_else(|| self.freshness()) {
            Err(message) => {
                return self
                    .finish_early(StepStatus::Failed, message, Digest::default())
                    .await;
            }
            Ok(Freshness::UpToDate(record)) => return self.up_to_date(record, started).await,
            Ok(Freshness::Stale(record, reasons)) => (Some(record), reasons),
            Ok(Freshness::Untracked) => (
                None,
                vec!["it declares no inputs, so it always runs".to_string()],
            ),
        };
        let out = OutputSink::new(self.events.clone(), self.build, step.name.clone());
        #[cfg(feature = "cache")]
        #[allow(unused_mut)] // its action moves out with a remote executor
        let (out, mut missed) = match self.look_in_cache(out, record.as_ref(), started).await {
            Ok(fetched) => return fetched,
            Err(missed) => (missed.out.clone(), missed),
        };
        #[cfg(feature = "remote-cache")]
        {
            self.remote = missed.remote.take();
        }
        // Its slot, for as long as it runs here (a cache's upload after it
        // is network, not CPU; a remote executor's work is not ours).
        let slot = match self.runs_remotely() {
            true => None,
            false => self.slot().await,
        };
        let (last, attempts) = self.attempts(&out, reasons).await;
        drop(slot);
        #[cfg(feature = "cache")]
        if last.status == StepStatus::Success {
            self.after_success(missed).await;
        }
        self.finish_run(&out, record, last, attempts, started).await
    }

    /// A job slot, when the scheduler hands them out (`Scheduler::slots`).
    pub(super) async fn slot(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match &self.slots {
            Some(slots) => slots.clone().acquire_owned().await.ok(),
            None => None,
        }
    }

    /// Ends the step without running it: one event, its result.
    pub(super) async fn finish_early(
        &self,
        status: StepStatus,
        message: String,
        fingerprint: Digest,
    ) -> StepResult {
        let name = &self.graph.steps[self.step].name;
        finish_without_running(&self.events, self.build, name, status, Some(message)).await;
        StepResult {
            index: self.index,
            status,
            exit_code: None,
            fingerprint,
        }
    }

    /// The step is up to date: say so, and what its dependents see.
    pub(super) async fn up_to_date(
        &self,
        record: crate::state::StepRecord,
        started: Instant,
    ) -> StepResult {
        let ending = UpToDate {
            events: &self.events,
            state: &self.state,
            build: self.build,
            index: self.index,
            step: &self.graph.steps[self.step].name,
        };
        ending
            .finish(record, started.elapsed().as_millis() as u64)
            .await
    }

    /// Runs attempts until one succeeds, retries are used up, or the step
    /// is canceled: the last attempt and how many there were.
    pub(super) async fn attempts(
        &self,
        out: &OutputSink,
        mut reasons: Vec<String>,
    ) -> (Attempt, u32) {
        let step = &self.graph.steps[self.step];
        let env = self.env_with_stamps().await;
        let max_attempts = step.retries + 1;
        let mut attempt_no = 0;
        let last = loop {
            attempt_no += 1;
            let _ = self
                .events
                .send(Event::StepStarted {
                    build: self.build,
                    step: step.name.clone(),
                    attempt: attempt_no,
                    reasons: std::mem::take(&mut reasons),
                })
                .await;
            let attempt = self.attempt(out, &env).await;
            let retry = attempt.status.is_failure()
                && attempt_no < max_attempts
                && !self.cancel.is_cancelled();
            if !retry {
                break attempt;
            }
            let reason = attempt.message.clone().unwrap_or_else(|| "failed".into());
            let _ = self
                .events
                .send(Event::StepRetrying {
                    build: self.build,
                    step: step.name.clone(),
                    attempt: attempt_no,
                    reason,
                })
                .await;
        };
        (last, attempt_no)
    }

    /// After the attempts: the status, the record and output digest of a
    /// success (early cutoff), warnings, and the one `step_finished`.
    pub(super) async fn finish_run(
        &self,
        out: &OutputSink,
        record: Option<crate::state::StepRecord>,
        last: Attempt,
        attempt_no: u32,
        started: Instant,
    ) -> StepResult {
        let step = &self.graph.steps[self.step];
        let status = if last.status.is_failure() && step.allow_failure {
            StepStatus::AllowedFailure
        } else {
            last.status
        };
        // Dependents fingerprint what this step made: the digest of its
        // outputs when it declares some (the same outputs leave them up to
        // date), else its record when it has inputs, otherwise "it ran in
        // this build" (so they rerun too).
        // Fetched from the cache: as a success here, but said so.
        let succeeded =
            matches!(status, StepStatus::Success | StepStatus::Fetched) && !self.dry_run;
        let outputs = succeeded
            .then(|| fingerprint::outputs_digest(&self.graph.root, &step.outputs))
            .flatten();
        let previous_outputs = self
            .state
            .steps
            .get(&step.name)
            .and_then(|p| p.outputs.as_ref());
        let cutoff = outputs.is_some() && outputs.as_ref() == previous_outputs;
        let fingerprint = match &record {
            Some(record) if succeeded => {
                let (mut record, warning) =
                    fingerprint::after_run(&self.root, step, record.clone());
                record.outputs = outputs;
                if let Some(warning) = warning {
                    out.write(format!("piper: warning: {warning}\n").into_bytes())
                        .await;
                }
                if let Err(e) = self.state.append(&step.name, &record) {
                    tracing::warn!("cannot record the state of step {}: {e}", step.name);
                }
                fingerprint::seen_by_dependents(&record)
            }
            _ => match outputs {
                Some(digest) => digest,
                None => Digest::unique(),
            },
        };
        // The digest exists when every output does: only without it is
        // there something to look for.
        if succeeded && outputs.is_none() && !step.outputs.is_empty() {
            for output in fingerprint::missing_outputs(&self.root, &step.outputs) {
                let _ = self
                    .events
                    .send(Event::StepWarning {
                        build: self.build,
                        step: step.name.clone(),
                        message: format!(
                            "declared output {output} was not created; the step will run again next time"
                        ),
                    })
                    .await;
            }
        }
        let _ = self
            .events
            .send(Event::StepFinished {
                build: self.build,
                step: step.name.clone(),
                status,
                exit_code: last.exit_code,
                duration_ms: started.elapsed().as_millis() as u64,
                attempts: attempt_no,
                message: match last.message {
                    None if cutoff => Some(OUTPUTS_UNCHANGED.into()),
                    message => message,
                },
                ran_on: last.ran_on,
            })
            .await;
        StepResult {
            index: self.index,
            status,
            exit_code: last.exit_code,
            fingerprint,
        }
    }

    /// Checks once: the dependencies' fingerprints move into the record.
    pub(super) fn freshness(&mut self) -> std::result::Result<Freshness, String> {
        if self.dry_run {
            return Ok(Freshness::Untracked);
        }
        let step = &self.graph.steps[self.step];
        fingerprint::check(
            &self.root,
            step,
            &self.env,
            std::mem::take(&mut self.dep_fingerprints),
            self.state.steps.get(&step.name),
            self.forced,
        )
    }

    /// The step's variables plus the build stamps it does not set itself
    /// (computed now if it is the build's first step to run something).
    pub(super) async fn env_with_stamps(&self) -> Vec<(String, String)> {
        let step = &self.graph.steps[self.step];
        let mut env = with_piper_vars(self.env.clone(), &self.graph, &step.name, self.build);
        for (name, value) in self.run_vars.iter() {
            if !env.iter().any(|(k, _)| k == name) {
                env.push((name.clone(), value.clone()));
            }
        }
        let runs_nothing = matches!(&step.run, Run::Commands(c) if c.is_empty());
        if self.stamps.is_empty() || self.dry_run || runs_nothing {
            return env;
        }
        let (values, first) = self.stamps.values().await;
        if first {
            for warning in &values.warnings {
                let _ = self
                    .events
                    .send(Event::StepWarning {
                        build: self.build,
                        step: step.name.clone(),
                        message: warning.clone(),
                    })
                    .await;
            }
        }
        for (name, value) in &values.vars {
            if !env.iter().any(|(k, _)| k == name) {
                env.push((name.clone(), value.clone()));
            }
        }
        env
    }

    /// One attempt of a Lua-function step; its state is created now if
    /// the graph came from the configuration cache.
    pub(super) async fn run_lua(
        &self,
        out: &OutputSink,
        env: &[(String, String)],
        token: &CancellationToken,
    ) -> Attempt {
        let step = &self.graph.steps[self.step];
        let (lua, function) = match self.graph.lua.run_function(self.step) {
            Ok(found) => found,
            Err(message) => {
                return Attempt {
                    status: StepStatus::Failed,
                    exit_code: None,
                    message: Some(message),
                    ran_on: None,
                };
            }
        };
        let lua_step = LuaStep {
            function,
            dir: step.dir.clone(),
            env: env.to_vec(),
            args: self.args.clone(),
            runner: self.runner.clone(),
            out: out.clone(),
            cancel: token.clone(),
            grace: self.grace,
        };
        match lua_step.run(lua, &step.name).await {
            LuaOutcome::Success => Attempt {
                status: StepStatus::Success,
                exit_code: None,
                message: None,
                ran_on: None,
            },
            LuaOutcome::Failed { message, exit_code } => {
                let status = if token.is_cancelled() {
                    StepStatus::Canceled
                } else {
                    StepStatus::Failed
                };
                Attempt {
                    status,
                    exit_code,
                    message: Some(message),
                    ran_on: None,
                }
            }
        }
    }

    pub(super) async fn attempt(&self, out: &OutputSink, env: &[(String, String)]) -> Attempt {
        let step = &self.graph.steps[self.step];
        let token = self.cancel.child_token();
        let timed_out = Arc::new(AtomicBool::new(false));
        let timer = step.timeout.map(|limit| {
            let token = token.clone();
            let timed_out = timed_out.clone();
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                timed_out.store(true, Ordering::SeqCst);
                token.cancel();
            })
        });
        let remote = self.remote_attempt(out, &token).await;
        // A step meant for the cluster that runs here after all takes a
        // slot first (`--remote-exec-fallback`).
        let _slot = match remote.is_none() && self.runs_remotely() {
            true => self.slot().await,
            false => None,
        };
        let mut attempt = match (remote, &step.run) {
            (Some(attempt), _) => attempt,
            (None, Run::Commands(commands)) => {
                let mut result = Attempt {
                    status: StepStatus::Success,
                    exit_code: Some(0),
                    message: None,
                    ran_on: None,
                };
                if commands.is_empty() {
                    result.exit_code = None;
                }
                for command in commands {
                    out.command(command.to_string()).await;
                    if self.dry_run {
                        continue;
                    }
                    let exit = self
                        .runner
                        .run(CommandRun {
                            command,
                            args: &self.args,
                            dir: &step.dir,
                            env,
                            output: out,
                            cancel: &token,
                            grace: self.grace,
                        })
                        .await;
                    if exit.success() {
                        continue;
                    }
                    if let Exit::NotFound(_) | Exit::SpawnFailed(_) = &exit {
                        out.write(format!("piper: {}\n", exit.describe()).into_bytes())
                            .await;
                    }
                    let status = if exit == Exit::Canceled {
                        StepStatus::Canceled
                    } else {
                        StepStatus::Failed
                    };
                    result = Attempt {
                        status,
                        exit_code: exit.code(),
                        message: Some(match &exit {
                            Exit::Code(_) | Exit::Signal(_) => {
                                format!("`{command}` {}", exit.describe())
                            }
                            _ => exit.describe(),
                        }),
                        ran_on: None,
                    };
                    break;
                }
                result
            }
            (None, Run::Lua(_)) if self.dry_run => {
                out.command("<lua function>".into()).await;
                Attempt {
                    status: StepStatus::DryRun,
                    exit_code: None,
                    message: None,
                    ran_on: None,
                }
            }
            (None, Run::Lua(_)) => self.run_lua(out, env, &token).await,
        };
        if let Some(timer) = timer {
            timer.abort();
        }
        if self.dry_run && attempt.status == StepStatus::Success {
            attempt.status = StepStatus::DryRun;
            attempt.exit_code = None;
        }
        if timed_out.load(Ordering::SeqCst) && attempt.status != StepStatus::Success {
            let limit = step
                .timeout
                .map(crate::duration::format)
                .unwrap_or_default();
            attempt = Attempt {
                status: StepStatus::TimedOut,
                exit_code: None,
                message: Some(format!("timed out after {limit}")),
                ran_on: None,
            };
        }
        attempt
    }
}

pub(super) async fn finish_without_running(
    events: &EventSender,
    build: u32,
    step: &str,
    status: StepStatus,
    message: Option<String>,
) {
    let _ = events
        .send(Event::StepFinished {
            build,
            step: step.to_string(),
            status,
            exit_code: None,
            duration_ms: 0,
            attempts: 0,
            message,
            ran_on: None,
        })
        .await;
}
