//! The executor: runs a [`Plan`] with up to `jobs` steps at a time, in
//! dependency order, and says everything it does as [`Event`]s. It is the
//! one engine behind `piper exec`, `--json`, watch and piperd; hosts differ
//! only in what they do with the events.
//!
//! Scheduling: a step is *queued* when all its dependencies are done and
//! *started* when a job slot is free; among queued steps the one defined
//! first starts first. A failure stops new starts and cancels running steps
//! (fail-fast) unless `keep_going`, which lets independent branches finish.
//! When a build ends, the target pipelines' triggers start chained builds.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indexmap::IndexMap;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::digest::Digest;
use crate::error::{EXIT_INTERRUPTED, EXIT_TIMEOUT, Result};
use crate::event::{BuildStatus, Event, EventSender, PlannedStepInfo, StepStatus, TriggeredBy};
use crate::fingerprint::{self, Freshness};
use crate::graph::{Graph, Plan};
use crate::lua_step::{LuaOutcome, LuaStep};
use crate::process::{Exit, OutputSink};
use crate::root_dir::RootDir;
use crate::runner::{CommandRun, LocalRunner, Runner};
use crate::spec::{Condition, Run, TriggerOn};
use crate::stamps::Stamps;
use crate::state::{SmallMap, State};

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
    /// How each command runs (local processes unless a host says else).
    pub runner: SharedRunner,
    /// The process exits once this run ends (`piper exec`): what the run
    /// built for its builds is left to the OS instead of freed piece by
    /// piece (a fifth of a cached no-op's work at 1000 steps). Never set
    /// by a host that lives on (watch, piperd, the API).
    pub exiting: bool,
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
            args: Arc::from([]),
            kill_grace: Duration::from_secs(5),
            force: Force::Nothing,
            restrict: None,
            first_build: 1,
            services_apart: false,
            runner: SharedRunner::default(),
            exiting: false,
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

/// The triggers of `plan` that fire after a build that ended `status`.
fn firing(plan: &Plan, status: BuildStatus) -> impl Iterator<Item = &crate::graph::Trigger> {
    plan.triggers.iter().filter(move |trigger| {
        status != BuildStatus::Canceled
            && match trigger.on {
                TriggerOn::Success => status == BuildStatus::Success,
                TriggerOn::Failure => status == BuildStatus::Failed,
                TriggerOn::Always => true,
            }
    })
}

/// A step the triggering build also planned keeps the environment it had
/// there: a trigger's `env` (and the chained pipeline's own) reach only the
/// steps the chained pipeline adds. So a step both need is the same step,
/// up to date in the chained build, instead of being rebuilt back and
/// forth between the two environments.
fn share_steps_with(chained: &mut Plan, parent: &Plan) {
    for planned in &mut chained.steps {
        if let Some(there) = parent.steps.iter().find(|p| p.step == planned.step) {
            planned.pipeline_env = there.pipeline_env.clone();
        }
    }
}

/// Plans `targets`, runs them, then the pipelines their triggers chain.
/// `interrupt` cancels everything (Ctrl-C); steps' process groups are ended
/// and waited for before this returns.
pub async fn run(
    graph: Arc<Graph>,
    targets: &[String],
    options: &Options,
    events: &EventSender,
    interrupt: &CancellationToken,
) -> Result<RunOutcome> {
    let first = graph.plan(targets)?;
    crate::reaper::start();
    let mut queue: VecDeque<(Plan, Option<TriggeredBy>)> = VecDeque::from([(first, None)]);
    let mut builds = Vec::new();
    let mut next_id = options.first_build;
    // `restrict` names steps of the requested plan (what a change affected
    // and their dependents there); a chained pipeline is a plan of its own,
    // whose steps get the ordinary up-to-date check.
    // Arguments are for the pipeline they were given to (as a just recipe's
    // are for that recipe); a chained pipeline gets its trigger's env.
    let chained_options = Options {
        restrict: None,
        args: Arc::from([]),
        ..options.clone()
    };
    while let Some((plan, triggered_by)) = queue.pop_front() {
        let build_options = if triggered_by.is_none() {
            options
        } else {
            &chained_options
        };
        let outcome = run_build(
            graph.clone(),
            &plan,
            next_id,
            triggered_by,
            build_options,
            events,
            interrupt,
        )
        .await;
        next_id += 1;
        for trigger in firing(&plan, outcome.status) {
            let mut chained =
                graph.plan_with_env(std::slice::from_ref(&trigger.pipeline), &trigger.env)?;
            share_steps_with(&mut chained, &plan);
            let by = TriggeredBy {
                build: outcome.build,
                pipeline: plan.name.clone(),
                on: trigger.on,
            };
            queue.push_back((chained, Some(by)));
        }
        builds.push(outcome);
        if options.exiting {
            std::mem::forget(plan);
        }
    }
    if !options.dry_run
        && let Err(e) = State::compact(&graph.root)
    {
        tracing::warn!(
            "cannot save the build state in {}: {e}",
            State::dir(&graph.root).display()
        );
    }
    let exit_code = if interrupt.is_cancelled() {
        EXIT_INTERRUPTED
    } else {
        builds
            .iter()
            .map(|b| b.exit_code)
            .find(|&c| c != 0)
            .unwrap_or(0)
    };
    Ok(RunOutcome { builds, exit_code })
}

/// A successful step's message when it ran but made the same outputs as
/// its last run: its dependents stay up to date (early cutoff).
pub const OUTPUTS_UNCHANGED: &str = "outputs unchanged: its dependents stay up to date";

/// What one finished step attempt sequence reports back to the scheduler.
struct StepResult {
    index: usize,
    status: StepStatus,
    exit_code: Option<i32>,
    /// What dependents see of this step in their own fingerprints.
    fingerprint: Digest,
}

async fn run_build(
    graph: Arc<Graph>,
    plan: &Plan,
    build: u32,
    triggered_by: Option<TriggeredBy>,
    options: &Options,
    events: &EventSender,
    interrupt: &CancellationToken,
) -> BuildOutcome {
    let started = Instant::now();
    let mut scheduler = Scheduler::new(graph, plan, build, options, events, interrupt);
    scheduler.announce(triggered_by).await;
    scheduler.queue_roots().await;
    loop {
        scheduler.start_ready().await;
        if scheduler.running.is_empty() {
            break;
        }
        let joined = tokio::select! {
            joined = scheduler.running.join_next() => joined,
            _ = interrupt.cancelled(), if !scheduler.stop => {
                scheduler.stop_starting();
                continue;
            }
        };
        match joined {
            Some(Ok(result)) => scheduler.on_finished(result).await,
            Some(Err(e)) => {
                // A panicking step task is a Piper bug; fail the build, loudly.
                tracing::error!("step task failed: {e}");
                scheduler
                    .first_failure
                    .get_or_insert((StepStatus::Failed, None));
                scheduler.stop_starting();
            }
            None => break,
        }
    }
    scheduler.finish_unstarted().await;
    let (status, exit_code) = scheduler.outcome(interrupt);
    if options.exiting {
        std::mem::forget(scheduler);
    }
    let _ = events
        .send(Event::BuildFinished {
            build,
            name: plan.name.clone(),
            status,
            duration_ms: started.elapsed().as_millis() as u64,
            exit_code,
            chains: firing(plan, status).map(|t| t.pipeline.clone()).collect(),
        })
        .await;
    BuildOutcome {
        build,
        name: plan.name.clone(),
        status,
        exit_code,
    }
}

/// One build's scheduling state: which steps wait on which, which are
/// ready, running, done. Plan indices throughout.
struct Scheduler<'a> {
    graph: Arc<Graph>,
    plan: &'a Plan,
    build: u32,
    options: &'a Options,
    events: &'a EventSender,
    state: Arc<State>,
    stamps: Arc<Stamps>,
    /// The project root held open: the up-to-date checks stat through it.
    root: Arc<RootDir>,
    dependents: Vec<Vec<usize>>,
    waiting_on: Vec<usize>,
    status: Vec<Option<StepStatus>>,
    /// What each finished step's dependents fingerprint.
    fingerprints: Vec<Option<Digest>>,
    /// Queued: dependencies done, waiting for a job slot (first defined first).
    ready: BTreeSet<usize>,
    /// Jobs of queued steps whose up-to-date check was already done.
    prepared: Vec<Option<Box<StepJob>>>,
    running: JoinSet<StepResult>,
    /// Start nothing more (a failure without keep-going, or Ctrl-C).
    stop: bool,
    first_failure: Option<(StepStatus, Option<i32>)>,
    cancel: CancellationToken,
}

impl<'a> Scheduler<'a> {
    fn new(
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
        }
    }

    fn name_of(&self, i: usize) -> String {
        self.graph.steps[self.plan.steps[i].step].name.clone()
    }

    async fn announce(&self, triggered_by: Option<TriggeredBy>) {
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

    async fn queue_roots(&mut self) {
        let roots: Vec<usize> = (0..self.plan.steps.len())
            .filter(|&i| self.waiting_on[i] == 0)
            .collect();
        self.make_ready(roots).await;
    }

    /// Steps whose dependencies are all done: an up-to-date one is settled
    /// here (a stat per input, one event, no task), the others are queued.
    /// Settling one may make its dependents ready in turn.
    async fn make_ready(&mut self, mut now_ready: Vec<usize>) {
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
    fn release(&mut self, i: usize) -> Vec<usize> {
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
    async fn settle_up_to_date(
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
    fn dep_fingerprints(&self, i: usize) -> SmallMap<Digest> {
        (self.plan.steps[i].deps.iter())
            .map(|&d| (self.name_of(d), self.fingerprints[d].unwrap_or_default()))
            .collect()
    }

    fn job(&self, i: usize) -> StepJob {
        self.job_with(i, work_env(&self.graph, self.plan, i, self.options), None)
    }

    /// The job of step `i`, given its [`work_env`] and the up-to-date check
    /// when it was already made (its dependencies' fingerprints, which only
    /// that check reads, are then not gathered again).
    fn job_with(
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
        }
    }

    /// How many steps may run at once.
    fn jobs(&self) -> usize {
        static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
        match self.options.jobs {
            0 => *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            jobs => jobs,
        }
    }

    /// Starts queued steps while job slots are free (a false `when`
    /// finishes one as skipped instead).
    async fn start_ready(&mut self) {
        // Nothing queued asks for no CPU count (a one-step build never reads
        // the cgroup files behind it).
        while !self.stop
            && !self.ready.is_empty()
            && (self.running.is_empty() || self.running.len() < self.jobs())
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

    async fn on_finished(&mut self, result: StepResult) {
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
    fn fail(&mut self, failure: (StepStatus, Option<i32>)) {
        self.first_failure.get_or_insert(failure);
        if !self.options.keep_going {
            self.stop_starting();
        }
    }

    fn stop_starting(&mut self) {
        self.stop = true;
        self.cancel.cancel();
    }

    /// Steps that never ran: blocked by a failed dependency, or canceled.
    async fn finish_unstarted(&mut self) {
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
    fn outcome(&self, interrupt: &CancellationToken) -> (BuildStatus, i32) {
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

async fn finish_without_running(
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
        })
        .await;
}

fn evaluate_condition(graph: &Graph, step: usize) -> std::result::Result<bool, String> {
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

/// The variables that say what a step's work is, lowest precedence
/// first: `env.set`, pipeline, step, `--env`, then PIPER_ARGS. Its
/// fingerprint covers them; its processes get them and Piper's own
/// ([`with_piper_vars`]).
/// Empty (no allocation) for the usual step that sets none: an up-to-date
/// check needs nothing more.
pub fn work_env(graph: &Graph, plan: &Plan, i: usize, options: &Options) -> Vec<(String, String)> {
    let step = &graph.steps[plan.steps[i].step];
    let layers = [
        &graph.env,
        &plan.steps[i].pipeline_env,
        &step.env,
        &options.env_overrides,
    ];
    let args =
        (!options.args.is_empty()).then(|| ("PIPER_ARGS".to_string(), shell_words(&options.args)));
    if layers.iter().all(|layer| layer.is_empty()) {
        return args.into_iter().collect();
    }
    let mut env: IndexMap<String, String> = IndexMap::new();
    for layer in layers {
        env.extend(layer.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    env.extend(args);
    env.into_iter().collect()
}

/// `work_env` with Piper's own variables on top (PIPER, PIPER_STEP,
/// PIPER_BUILD, PIPER_ROOT): what a step that runs gets.
fn with_piper_vars(
    mut env: Vec<(String, String)>,
    graph: &Graph,
    step: &str,
    build: u32,
) -> Vec<(String, String)> {
    let piper_vars = [
        ("PIPER".to_string(), "1".to_string()),
        ("PIPER_STEP".to_string(), step.to_string()),
        ("PIPER_BUILD".to_string(), build.to_string()),
        (
            "PIPER_ROOT".to_string(),
            graph.root.to_string_lossy().into_owned(),
        ),
    ];
    if env.iter().all(|(k, _)| k == "PIPER_ARGS") {
        env.extend(piper_vars);
        return env;
    }
    let mut merged: IndexMap<String, String> = env.into_iter().collect();
    merged.extend(piper_vars);
    merged.into_iter().collect()
}

/// `words` as one shell-quoted string, so `eval set -- $PIPER_ARGS` gives
/// them back.
fn shell_words(words: &[String]) -> String {
    let quote = |word: &String| {
        let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
        if !word.is_empty() && word.chars().all(plain) {
            word.clone()
        } else {
            format!("'{}'", word.replace('\'', "'\\''"))
        }
    };
    words.iter().map(quote).collect::<Vec<_>>().join(" ")
}

/// Everything one step needs to run on its own task.
struct StepJob {
    graph: Arc<Graph>,
    index: usize,
    step: usize,
    /// [`work_env`]; Piper's own variables are added when it runs.
    env: Vec<(String, String)>,
    args: Arc<[String]>,
    runner: Arc<dyn Runner>,
    events: EventSender,
    build: u32,
    cancel: CancellationToken,
    grace: Duration,
    dry_run: bool,
    forced: bool,
    /// Outside `Options::restrict`: report it unaffected, do not run it.
    unaffected: bool,
    /// A service while `Options::services_apart`: report it skipped.
    apart: bool,
    state: Arc<State>,
    dep_fingerprints: SmallMap<Digest>,
    stamps: Arc<Stamps>,
    /// The project root held open: the up-to-date checks stat through it.
    root: Arc<RootDir>,
    /// The up-to-date check, when the scheduler already made it.
    checked: Option<std::result::Result<Freshness, String>>,
}

/// How one attempt ended.
struct Attempt {
    status: StepStatus,
    exit_code: Option<i32>,
    message: Option<String>,
}

/// How a step found up to date ends, whether the scheduler settled it
/// where it became ready or its job found it so.
struct UpToDate<'a> {
    events: &'a EventSender,
    state: &'a State,
    build: u32,
    index: usize,
    step: &'a str,
}

impl UpToDate<'_> {
    /// Keeps settled stamps, says so in one event, and returns what its
    /// dependents see.
    async fn finish(self, record: crate::state::StepRecord, duration_ms: u64) -> StepResult {
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
    fn keep_settled_stamps(&self, record: &crate::state::StepRecord) {
        let previous = self.state.steps.get(self.step);
        if previous.is_some_and(|p| p.inputs != record.inputs)
            && let Err(e) = self.state.append(self.step, record)
        {
            tracing::warn!("cannot record the state of step {}: {e}", self.step);
        }
    }
}

impl StepJob {
    async fn run(mut self) -> StepResult {
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
        let out = OutputSink {
            events: self.events.clone(),
            build: self.build,
            step: step.name.clone(),
        };
        let (last, attempts) = self.attempts(&out, reasons).await;
        self.finish_run(&out, record, last, attempts, started).await
    }

    /// Ends the step without running it: one event, its result.
    async fn finish_early(
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
    async fn up_to_date(&self, record: crate::state::StepRecord, started: Instant) -> StepResult {
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
    async fn attempts(&self, out: &OutputSink, mut reasons: Vec<String>) -> (Attempt, u32) {
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
    async fn finish_run(
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
        let succeeded = status == StepStatus::Success && !self.dry_run;
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
            Some(record) if status == StepStatus::Success => {
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
    fn freshness(&mut self) -> std::result::Result<Freshness, String> {
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
    async fn env_with_stamps(&self) -> Vec<(String, String)> {
        let step = &self.graph.steps[self.step];
        let env = with_piper_vars(self.env.clone(), &self.graph, &step.name, self.build);
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
        let mut env = env;
        for (name, value) in &values.vars {
            if !env.iter().any(|(k, _)| k == name) {
                env.push((name.clone(), value.clone()));
            }
        }
        env
    }

    /// One attempt of a Lua-function step; its state is created now if
    /// the graph came from the configuration cache.
    async fn run_lua(
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
                }
            }
        }
    }

    async fn attempt(&self, out: &OutputSink, env: &[(String, String)]) -> Attempt {
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
        let mut attempt = match &step.run {
            Run::Commands(commands) => {
                let mut result = Attempt {
                    status: StepStatus::Success,
                    exit_code: Some(0),
                    message: None,
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
                    };
                    break;
                }
                result
            }
            Run::Lua(_) if self.dry_run => {
                out.command("<lua function>".into()).await;
                Attempt {
                    status: StepStatus::DryRun,
                    exit_code: None,
                    message: None,
                }
            }
            Run::Lua(_) => self.run_lua(out, env, &token).await,
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
            };
        }
        attempt
    }
}
