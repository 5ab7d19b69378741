//! The recorder: turns one run's executor events into stored builds,
//! steps, events and log chunks (chained builds included), retrying every
//! write until the store answers and stopping the run when a write is
//! refused as stale. One more consumer of the engine's event stream, as
//! the terminal and `--json` are.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::escaped::Escaped;
use super::fence::Fence;
use super::held::Held;
use super::log_writer::{LogWriter, with_retry};
use super::store::{Build, BuildState, Holder, NewBuild, Store, StoredStep, now_ms};
use crate::event::{BuildStatus, Event};

/// Turns the executor's events into stored builds, steps and logs. Every
/// write is retried until the store answers (`log_writer::with_retry`).
pub(super) struct Recorder {
    pub(super) store: Store,
    pub(super) abandon: CancellationToken,
    pub(super) fence: Arc<Fence>,
    pub(super) agent_name: String,
    /// The agent (chained builds are created held by it) and its map of
    /// held builds, which chained builds join so their leases are renewed.
    pub(super) holder: Holder,
    pub(super) running: Arc<Mutex<HashMap<i64, Held>>>,
    /// Stops the run: a write rejected as stale means another agent has
    /// the build now.
    pub(super) token: CancellationToken,
    pub(super) run: u64,
    pub(super) build: Build,
    pub(super) sha: String,
    pub(super) version: Option<String>,
    /// Executor build numbers (1 = this build, 2.. = chained) to stored ids.
    pub(super) ids: HashMap<u32, i64>,
    pub(super) positions: HashMap<(i64, String), i64>,
    pub(super) log: LogWriter,
    pub(super) observer: super::metrics::RunObserver,
}

impl Recorder {
    pub(super) async fn on(&mut self, event: Event) {
        // Everything but output is stored as the event itself too, in the
        // order of the log: remote followers render the same stream a
        // local run does. (Output is in the log chunks.)
        let stored = match &event {
            Event::StepOutput { .. }
            | Event::WatchChanged { .. }
            | Event::WatchIdle
            | Event::ConfigError { .. } => None,
            other => serde_json::to_string(other)
                .ok()
                .map(|json| (other.build(), json)),
        };
        // A build's first event creates its row, so it is stored after
        // being handled; every other one before (the last one must land
        // while the row is still running).
        self.observer.on(&event);
        let first = matches!(event, Event::BuildStarted { .. });
        if !first {
            self.store_event(stored.as_ref()).await;
        }
        self.handle(event).await;
        if first {
            self.store_event(stored.as_ref()).await;
        }
    }

    async fn store_event(&mut self, stored: Option<&(u32, String)>) {
        if let Some((n, json)) = stored
            && let Some(&id) = self.ids.get(n)
        {
            self.log.event(id, json).await;
        }
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::BuildStarted {
                build: n,
                name,
                steps,
                triggered_by,
                ..
            } => {
                let names: Vec<String> = steps.into_iter().map(|s| s.name).collect();
                self.build_started(n, name, triggered_by.map(|t| t.build), names)
                    .await;
            }
            Event::StepStarted { build: n, step, .. } => {
                let stored = StoredStep {
                    name: step,
                    status: "running".into(),
                    exit_code: None,
                    started_at: Some(now_ms()),
                    finished_at: None,
                    message: None,
                };
                self.save_step(n, stored).await;
            }
            Event::StepCommand {
                build: n,
                step,
                command,
            } => self.annotate(n, &step, &format!("$ {command}\n")).await,
            Event::StepOutput {
                build: n,
                step,
                data,
            } => self.write(n, &step, &data).await,
            Event::StepWarning {
                build: n,
                step,
                message,
            } => {
                let line = format!("piper: warning: {message}\n");
                self.annotate(n, &step, &line).await;
            }
            Event::StepRetrying {
                build: n,
                step,
                attempt,
                reason,
            } => {
                let line = format!("piper: attempt {attempt} failed ({reason}); retrying\n");
                self.annotate(n, &step, &line).await;
            }
            Event::StepFinished {
                build: n,
                step,
                status,
                exit_code,
                message,
                ..
            } => {
                if let Some(&id) = self.ids.get(&n) {
                    self.log.finish_step(id, &step).await;
                }
                let stored = StoredStep {
                    name: step,
                    status: serde_json::to_value(status)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                    exit_code: exit_code.map(i64::from),
                    started_at: None,
                    finished_at: Some(now_ms()),
                    message,
                };
                self.save_step(n, stored).await;
            }
            Event::BuildFinished {
                build: n, status, ..
            } => self.build_finished(n, status).await,
            Event::StepQueued { .. }
            | Event::WatchChanged { .. }
            | Event::WatchIdle
            | Event::ConfigError { .. } => {}
        }
    }

    async fn write(&mut self, n: u32, step: &str, data: &[u8]) {
        if let Some(&id) = self.ids.get(&n) {
            self.log.write(id, step, data).await;
        }
    }

    async fn annotate(&mut self, n: u32, step: &str, line: &str) {
        if let Some(&id) = self.ids.get(&n) {
            self.log.annotate(id, step, line).await;
        }
    }

    /// The requested build is already stored; a chained one is created
    /// (linked to the build that triggered it). Its steps are stored as
    /// pending, in plan order.
    async fn build_started(
        &mut self,
        n: u32,
        name: String,
        triggered_by: Option<u32>,
        steps: Vec<String>,
    ) {
        let id = if self.ids.is_empty() {
            self.build.id
        } else {
            let parent = triggered_by
                .and_then(|t| self.ids.get(&t).copied())
                .unwrap_or(self.build.id);
            let chained = NewBuild {
                repo: self.build.repo.clone(),
                git_ref: self.build.git_ref.clone(),
                pipeline: name,
                env: self.build.env.clone(),
                secret_env: self.build.secret_env.clone(),
                requested_by: format!("chained from build {parent}"),
                parent_id: Some(parent),
                sha: None,
                // As `piper exec`: arguments are the requested pipeline's.
                args: Vec::new(),
            };
            let store = &self.store;
            let holder = &self.holder;
            let claimed = Fence::now();
            let created = with_retry("recording a chained build", &self.abandon, || {
                store.create_build(&chained, BuildState::Running, Some(holder))
            })
            .await;
            let created = match created {
                Ok(created) => created,
                Err(e) => {
                    tracing::error!("{e}");
                    return;
                }
            };
            let (sha, version) = (&self.sha, self.version.as_deref());
            let _ = with_retry("recording a chained build's commit", &self.abandon, || {
                store.set_revision(created.id, created.attempt, sha, version)
            })
            .await;
            self.fence.renewed(created.id, claimed);
            self.running.lock().unwrap().insert(
                created.id,
                Held::new(created.attempt, self.token.clone(), self.run),
            );
            self.log.hold(created.id, created.attempt);
            tracing::info!(build = created.id, parent, pipeline = %Escaped(&created.pipeline), "chained build started");
            created.id
        };
        self.ids.insert(n, id);
        for (i, name) in steps.into_iter().enumerate() {
            self.positions.insert((id, name.clone()), i as i64);
            let step = StoredStep {
                name,
                status: "pending".into(),
                exit_code: None,
                started_at: None,
                finished_at: None,
                message: None,
            };
            self.save_step(n, step).await;
        }
    }

    async fn save_step(&mut self, n: u32, step: StoredStep) {
        let Some(&id) = self.ids.get(&n) else { return };
        let position = self
            .positions
            .get(&(id, step.name.clone()))
            .copied()
            .unwrap_or(0);
        let store = &self.store;
        let attempt = self.attempt_of(id);
        match with_retry("recording a step", &self.abandon, || {
            store.upsert_step(id, attempt, position, &step)
        })
        .await
        {
            // Followers (a step's page) re-read the step's state.
            Ok(true) => self.log.written(id).await,
            Ok(false) => self.fenced(id),
            Err(e) => tracing::error!("{e}"),
        }
    }

    fn attempt_of(&self, id: i64) -> i64 {
        self.running
            .lock()
            .unwrap()
            .get(&id)
            .map_or(self.build.attempt, |h| h.attempt)
    }

    /// A write was rejected as stale: another agent holds the build now.
    /// Stop running it (the executor ends its process groups).
    fn fenced(&self, id: i64) {
        tracing::warn!(
            build = id,
            "a write was rejected: this attempt no longer holds the build; stopping it"
        );
        self.token.cancel();
    }

    /// The final state; a build whose log could not be stored whole ends
    /// `failed`, saying how much is missing.
    async fn build_finished(&mut self, n: u32, status: BuildStatus) {
        let Some(&id) = self.ids.get(&n) else { return };
        self.log.finish_all().await;
        let lost = self.log.lost(id);
        let (state, error) = match status {
            _ if lost > 0 => (
                BuildState::Failed,
                Some(format!("the agent could not store {lost} bytes of the log")),
            ),
            BuildStatus::Success => (BuildState::Success, None),
            BuildStatus::Failed => (BuildState::Failed, None),
            BuildStatus::Canceled => (BuildState::Canceled, None),
        };
        let attempt = self.attempt_of(id);
        let given_up = release(&self.running, &self.fence, id);
        let ending = (!given_up).then_some((state, error.as_deref()));
        end_attempt(
            &self.store,
            &self.abandon,
            &self.agent_name,
            id,
            attempt,
            ending,
        )
        .await;
        // Followers waiting for more learn that it ended.
        self.log.notified_at_end(id);
        self.log.written(id).await;
    }
}

/// Lets go of build `id`: no longer held, no fencing deadline. Done before
/// its end is written: a renewal that finds it ended must not take that
/// for a lost lease, which would stop the whole run (the builds it chains
/// share the run's token). Whether the agent had given it up.
pub(super) fn release(running: &Mutex<HashMap<i64, Held>>, fence: &Fence, id: i64) -> bool {
    let held = running.lock().unwrap().remove(&id);
    fence.forget(id);
    held.as_ref().is_some_and(Held::is_fenced)
}

/// Records the end of `attempt` of build `id`: `ending` (its state and
/// error), or, for an attempt the agent gave up (None), hands it back with
/// why. Retried until the store answers.
pub(super) async fn end_attempt(
    store: &Store,
    abandon: &CancellationToken,
    agent: &str,
    id: i64,
    attempt: i64,
    ending: Option<(BuildState, Option<&str>)>,
) {
    match ending {
        Some((state, error)) => finish(store, abandon, id, attempt, state, error).await,
        None => give_up(store, abandon, agent, id, attempt).await,
    }
}

/// Hands back an attempt the agent gave up (self-fenced), with why, once
/// the store answers again; unless it was rescued meanwhile.
async fn give_up(store: &Store, abandon: &CancellationToken, agent: &str, id: i64, attempt: i64) {
    let cause = format!(
        "agent {agent} could not renew the lease of attempt {attempt} in time and ended its steps before the lease could expire (self-fenced)"
    );
    match with_retry("giving up a build", abandon, || {
        store.give_up(id, attempt, &cause)
    })
    .await
    {
        Ok(Some(done)) => tracing::warn!(
            build = id,
            status = done.status.as_str(),
            "gave up: {}",
            done.reason
        ),
        Ok(None) => tracing::warn!(
            build = id,
            attempt,
            "gave up an attempt another agent had rescued already"
        ),
        Err(e) => tracing::error!("{e}"),
    }
}

/// Records the end of a build, retrying until the store answers.
async fn finish(
    store: &Store,
    abandon: &CancellationToken,
    id: i64,
    attempt: i64,
    state: BuildState,
    error: Option<&str>,
) {
    match with_retry("recording the end of a build", abandon, || {
        store.finish_build(id, attempt, state, error)
    })
    .await
    {
        Ok(true) => tracing::info!(build = id, status = state.as_str(), "build finished"),
        Ok(false) => tracing::warn!(
            build = id,
            attempt,
            "not recording the end: this attempt no longer holds the build"
        ),
        Err(e) => tracing::error!("{e}"),
    }
}
