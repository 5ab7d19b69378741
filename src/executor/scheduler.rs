//! The scheduler of one build: which steps are ready, which start (up to
//! `jobs`, defined order first), and what a failure stops.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::digest::Digest;
use crate::error::{EXIT_INTERRUPTED, EXIT_TIMEOUT};
use crate::event::{BuildStatus, Event, EventSender, PlannedStepInfo, StepStatus, TriggeredBy};
use crate::fingerprint::{self, Freshness};
use crate::graph::{Graph, Plan};
use crate::root_dir::RootDir;
use crate::spec::Condition;
use crate::stamps::Stamps;
use crate::state::{SmallMap, State};

use super::env::*;
use super::job::*;
use super::options::*;

/// One build's scheduling state: which steps wait on which, which are
/// ready, running, done. Plan indices throughout.
pub(super) struct Scheduler<'a> {
    pub(super) graph: Arc<Graph>,
    pub(super) plan: &'a Plan,
    pub(super) build: u32,
    pub(super) options: &'a Options,
    pub(super) events: &'a EventSender,
    pub(super) state: Arc<State>,
    pub(super) stamps: Arc<Stamps>,
    /// The project root held open: the up-to-date checks stat through it.
    pub(super) root: Arc<RootDir>,
    pub(super) dependents: Vec<Vec<usize>>,
    pub(super) waiting_on: Vec<usize>,
    pub(super) status: Vec<Option<StepStatus>>,
    /// What each finished step's dependents fingerprint.
    pub(super) fingerprints: Vec<Option<Digest>>,
    /// Queued: dependencies done, waiting for a job slot (first defined first).
    pub(super) ready: BTreeSet<usize>,
    /// Jobs of queued steps whose up-to-date check was already done.
    pub(super) prepared: Vec<Option<Box<StepJob>>>,
    pub(super) running: JoinSet<StepResult>,
    /// Start nothing more (a failure without keep-going, or Ctrl-C).
    pub(super) stop: bool,
    pub(super) first_failure: Option<(StepStatus, Option<i32>)>,
    pub(super) cancel: CancellationToken,
    /// With a remote cache: the `jobs` slots a step takes to run, so that
    /// more steps than that can be in flight asking the cache (waiting on
    /// the network, not a CPU); None when a job holds its slot throughout.
    pub(super) slots: Option<Arc<tokio::sync::Semaphore>>,
}

/// Steps that may be asking a remote cache beyond the running ones: a
/// lookup is a round trip or two on the network, and a build of many
/// cached steps would otherwise wait on them `-j` at a time.
const REMOTE_LOOKUPS: usize = 16;

impl<'a> Scheduler<'a> {
    pub(super) fn new(
        graph: Arc<Graph>,
        plan: &'a Plan,
        build: u32,
        options: &'a Options,
        events: &'a EventSender,
        interrupt: &CancellationToken,
    ) -> Scheduler<'a> {
        let steps = &plan.steps;
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
        for (i, s) in steps.iter().enumerate() {
            for &d in &s.deps {
                dependents[d].push(i);
            }
        }
        Scheduler {
            state: Arc::new(State::load(&graph.root)),
            stamps: Arc::new(Stamps::new(graph.root.clone(), graph.stamps.clone())),
            root: Arc::new(RootDir::open(&graph.root)),
            graph,
            plan,
            build,
            options,
            events,
            dependents,
            waiting_on: steps.iter().map(|s| s.deps.len()).collect(),
            status: vec![None; steps.len()],
            fingerprints: vec![None; steps.len()],
            ready: BTreeSet::new(),
            prepared: (0..steps.len()).map(|_| None).collect(),
            running: JoinSet::new(),
            stop: false,
            first_failure: None,
            cancel: interrupt.child_token(),
            slots: None,
        }
        .with_slots()
    }

    /// Job slots apart from the jobs, when a remote cache is asked.
    #[cfg(feature = "remote-cache")]
    fn with_slots(mut self) -> Scheduler<'a> {
        let cache = self.options.cache.as_ref();
        if cache.is_some_and(|c| c.remote().is_some() || c.executor().is_some()) {
            self.slots = Some(Arc::new(tokio::sync::Semaphore::new(self.jobs())));
        }
        self
    }

    /// No remote cache without the feature: a job holds its slot.
    #[cfg(not(feature = "remote-cache"))]
    fn with_slots(self) -> Scheduler<'a> {
        self
    }

    /// How many steps may be in flight: the jobs, and with a remote cache
    /// the steps asking it, and with a remote executor the steps running
    /// there.
    fn in_flight(&self) -> usize {
        match self.slots {
            Some(_) => self.jobs() + REMOTE_LOOKUPS + self.remote_jobs(),
            None => self.jobs(),
        }
    }

    #[cfg(feature = "remote-cache")]
    fn remote_jobs(&self) -> usize {
        let executor = self.options.cache.as_ref().and_then(|c| c.executor());
        executor.map_or(0, |e| e.remote_jobs())
    }

    #[cfg(not(feature = "remote-cache"))]
    fn remote_jobs(&self) -> usize {
        0
    }

    pub(super) fn name_of(&self, i: usize) -> String {
        self.graph.steps[self.plan.steps[i].step].name.clone()
    }

    pub(super) async fn announce(&self, triggered_by: Option<TriggeredBy>) {
        let steps = &self.plan.steps;
        let _ = self
            .events
            .send(Event::BuildStarted {
                build: self.build,
                name: self.plan.name.clone(),
                targets: self.plan.targets.clone(),
                triggered_by,
                steps: (0..steps.len())
                    .map(|i| PlannedStepInfo {
                        name: self.name_of(i),
                        deps: steps[i].deps.iter().map(|&d| self.name_of(d)).collect(),
                    })
                    .collect(),
                dry_run: self.options.dry_run,
                warnings: self.state.warning.iter().cloned().collect(),
            })
            .await;
    }

    pub(super) async fn queue_roots(&mut self) {
        let roots: Vec<usize> = (0..self.plan.steps.len())
            .filter(|&i| self.waiting_on[i] == 0)
            .collect();
        self.make_ready(roots).await;
    }

    /// Steps whose dependencies are all done: an up-to-date one is settled
    /// here (a stat per input, one event, no task), the others are queued.
    /// Settling one may make its dependents ready in turn.
    pub(super) async fn make_ready(&mut self, mut now_ready: Vec<usize>) {
        while let Some(i) = now_ready.pop() {
            match self.settle_up_to_date(i).await {
                Ok(result) => {
                    self.status[i] = Some(result.status);
                    self.fingerprints[i] = Some(result.fingerprint);
                    now_ready.extend(self.release(i));
                    continue;
                }
                // Checked and stale: the job keeps its check for its start.
                Err(checked) => self.prepared[i] = checked.map(Box::new),
            }
            self.ready.insert(i);
            let _ = self
                .events
                .send(Event::StepQueued {
                    build: self.build,
                    step: self.name_of(i),
                })
                .await;
        }
    }

    /// Marks `i` done for its dependents; those now ready.
    pub(super) fn release(&mut self, i: usize) -> Vec<usize> {
        let mut ready = Vec::new();
        for &d in &self.dependents[i] {
            self.waiting_on[d] -= 1;
            if self.waiting_on[d] == 0 {
                ready.push(d);
            }
        }
        ready
    }

    /// The result of step `i` if it is plainly up to date — no condition
    /// to call, nothing forcing or restricting it. Otherwise its job when
    /// it was checked (so the check is not done again at its start).
    pub(super) async fn settle_up_to_date(
        &self,
        i: usize,
    ) -> std::result::Result<StepResult, Option<StepJob>> {
        let step = &self.graph.steps[self.plan.steps[i].step];
        let conditional = !matches!(step.when, None | Some(Condition::Static(true)));
        let untracked = step.inputs.is_empty() && step.depfile.is_none();
        let options = self.options;
        let special = options.dry_run
            || options.restrict.is_some()
            || options.force.applies_to(&step.name)
            || (options.services_apart && step.service);
        if conditional || untracked || special || self.stop {
            return Err(None);
        }
        // Checked with borrowed parts: a job (a dozen handles cloned) is
        // made only for a step that will run.
        let env = work_env(&self.graph, self.plan, i, self.options);
        let checked = fingerprint::check(
            &self.root,
            step,
            &env,
            self.dep_fingerprints(i),
            self.state.steps.get(&step.name),
            false,
        );
        match checked {
            Ok(Freshness::UpToDate(record)) => {
                let ending = UpToDate {
                    events: self.events,
                    state: &self.state,
                    build: self.build,
                    index: i,
                    step: &step.name,
                };
                Ok(ending.finish(record, 0).await)
            }
            checked => Err(Some(self.job_with(i, env, Some(checked)))),
        }
    }

    /// What step `i`'s dependencies reported in this build, by name.
    pub(super) fn dep_fingerprints(&self, i: usize) -> SmallMap<Digest> {
        (self.plan.steps[i].deps.iter())
            .map(|&d| (self.name_of(d), self.fingerprints[d].unwrap_or_default()))
            .collect()
    }

    pub(super) fn job(&self, i: usize) -> StepJob {
        self.job_with(i, work_env(&self.graph, self.plan, i, self.options), None)
    }

    /// The job of step `i`, given its [`work_env`] and the up-to-date check
    /// when it was already made (its dependencies' fingerprints, which only
    /// that check reads, are then not gathered again).
    pub(super) fn job_with(
        &self,
        i: usize,
        env: Vec<(String, String)>,
        checked: Option<std::result::Result<Freshness, String>>,
    ) -> StepJob {
        let planned = &self.plan.steps[i];
        let step = &self.graph.steps[planned.step];
        StepJob {
            graph: self.graph.clone(),
            index: i,
            step: planned.step,
            env,
            args: self.options.args.clone(),
            run_vars: self.options.run_vars.clone(),
            runner: self.options.runner.0.clone(),
            events: self.events.clone(),
            build: self.build,
            // The scheduler's token itself: each attempt makes its own child.
            cancel: self.cancel.clone(),
            grace: self.options.kill_grace,
            dry_run: self.options.dry_run,
            forced: self.options.force.applies_to(&step.name),
            unaffected: (self.options.restrict.as_ref())
                .is_some_and(|only| !only.contains(&step.name)),
            apart: self.options.services_apart && step.service,
            state: self.state.clone(),
            dep_fingerprints: match checked {
                Some(_) => SmallMap::new(),
                None => self.dep_fingerprints(i),
            },
            stamps: self.stamps.clone(),
            root: self.root.clone(),
            checked,
            #[cfg(feature = "cache")]
            cache: (self.options.cache.clone()).map(|cache| {
                match (planned.remote_cache && step.remote_cache, step.remote) {
                    (true, true) => cache,
                    (true, false) => cache.here_only(),
                    (false, _) => cache.local_only(),
                }
            }),
            #[cfg(feature = "remote-cache")]
            remote: None,
            #[cfg(feature = "remote-cache")]
            ran_remotely: Default::default(),
            slots: self.slots.clone(),
        }
    }

    /// How many steps may run at once.
    pub(super) fn jobs(&self) -> usize {
        static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        match self.options.jobs {
            0 => *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            jobs => jobs,
        }
    }

    /// Starts queued steps while job slots are free (a false `when`
    /// finishes one as skipped instead).
    pub(super) async fn start_ready(&mut self) {
        // Nothing queued asks for no CPU count (a one-step build never reads
        // the cgroup files behind it).
        while !self.stop
            && !self.ready.is_empty()
            && (self.running.is_empty() || self.running.len() < self.in_flight())
        {
            let Some(i) = self.ready.pop_first() else {
                break;
            };
            let step = self.plan.steps[i].step;
            let name = self.name_of(i);
            match evaluate_condition(&self.graph, step) {
                Ok(true) => {
                    let job = (self.prepared[i].take()).map_or_else(|| self.job(i), |job| *job);
                    self.running.spawn(job.run());
                }
                Ok(false) => {
                    let message = Some("its `when` condition is false".to_string());
                    finish_without_running(
                        self.events,
                        self.build,
                        &name,
                        StepStatus::Skipped,
                        message,
                    )
                    .await;
                    self.fingerprints[i] = Some(Digest::of(b"skipped"));
                    self.status[i] = Some(StepStatus::Skipped);
                    let now_ready = self.release(i);
                    self.make_ready(now_ready).await;
                }
                Err(message) => {
                    finish_without_running(
                        self.events,
                        self.build,
                        &name,
                        StepStatus::Failed,
                        Some(message),
                    )
                    .await;
                    self.status[i] = Some(StepStatus::Failed);
                    self.fail((StepStatus::Failed, None));
                }
            }
        }
    }

    pub(super) async fn on_finished(&mut self, result: StepResult) {
        self.status[result.index] = Some(result.status);
        self.fingerprints[result.index] = Some(result.fingerprint);
        if result.status.satisfies_dependents() {
            let now_ready = self.release(result.index);
            self.make_ready(now_ready).await;
        } else if result.status.is_failure() {
            self.fail((result.status, result.exit_code));
        }
    }

    /// Records the first failure; without keep-going, stops the build.
    pub(super) fn fail(&mut self, failure: (StepStatus, Option<i32>)) {
        self.first_failure.get_or_insert(failure);
        if !self.options.keep_going {
            self.stop_starting();
        }
    }

    pub(super) fn stop_starting(&mut self) {
        self.stop = true;
        self.cancel.cancel();
    }

    /// Steps that never ran: blocked by a failed dependency, or canceled.
    pub(super) async fn finish_unstarted(&mut self) {
        for i in 0..self.plan.steps.len() {
            if self.status[i].is_some() {
                continue;
            }
            let blocked_by = self.plan.steps[i]
                .deps
                .iter()
                .find(|&&d| matches!(self.status[d], Some(s) if !s.satisfies_dependents()));
            let (status, message) = match blocked_by {
                Some(&d) => (
                    StepStatus::Blocked,
                    format!("dependency `{}` did not succeed", self.name_of(d)),
                ),
                None => (
                    StepStatus::Canceled,
                    "not started: the build stopped".to_string(),
                ),
            };
            self.status[i] = Some(status);
            let name = self.name_of(i);
            finish_without_running(self.events, self.build, &name, status, Some(message)).await;
        }
    }

    /// How the build ended, and its exit code.
    pub(super) fn outcome(&self, interrupt: &CancellationToken) -> (BuildStatus, i32) {
        if interrupt.is_cancelled() {
            return (BuildStatus::Canceled, EXIT_INTERRUPTED);
        }
        match self.first_failure {
            None => (BuildStatus::Success, 0),
            Some((status, code)) => {
                let code = match (status, code) {
                    (StepStatus::TimedOut, _) => EXIT_TIMEOUT,
                    (_, Some(c)) if c != 0 => c,
                    _ => 1,
                };
                (BuildStatus::Failed, code)
            }
        }
    }
}

pub(super) fn evaluate_condition(graph: &Graph, step: usize) -> std::result::Result<bool, String> {
    match graph.steps[step].when {
        None => Ok(true),
        Some(Condition::Static(b)) => Ok(b),
        Some(Condition::Lua) => match graph.lua.when_function(step)?.call::<mlua::Value>(()) {
            Ok(v) => Ok(!matches!(v, mlua::Value::Nil | mlua::Value::Boolean(false))),
            Err(e) => Err(format!(
                "its `when` condition raised an error: {}",
                crate::lua::error_message(&e)
            )),
        },
    }
}
