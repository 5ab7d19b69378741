//! The embedding API: [`Engine`] (what a host adds: Lua modules, a step
//! runner) loads a [`Project`] (its `piper.lua` evaluated into a validated
//! graph, through the configuration cache), which a host inspects and
//! [`run`](Project::run)s; a [`Run`] yields the typed [`Event`] stream and
//! ends in an [`Outcome`]. `piper exec` is this, with the terminal as the
//! event sink.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::changes::Affected;
use crate::config_cache::{self, Evaluation};
use crate::error::Result;
use crate::event::{Event, EventReceiver};
use crate::executor::{Force, Options, SharedRunner};
use crate::graph::Graph;
use crate::host::HostModules;
use crate::runner::Runner;

pub use crate::executor::{BuildOutcome, RunOutcome as Outcome};

/// Piper, configured by its host. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Engine {
    host: HostModules,
    runner: SharedRunner,
    config_cache: bool,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new()
    }
}

impl Engine {
    /// Local processes, no host modules, the configuration cache on: what
    /// the `piper` command uses.
    pub fn new() -> Engine {
        Engine {
            host: HostModules::default(),
            runner: SharedRunner::default(),
            config_cache: true,
        }
    }

    /// Adds the Lua module `name` (`require "host.editor"` in `piper.lua`),
    /// made by `loader` in each Lua state that requires it. A config that
    /// requires a host module is evaluated on every load: the
    /// configuration cache cannot check what a host function returns.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = std::env::temp_dir().join(format!("piper-doc-module-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// std::fs::write(
    ///     dir.join("piper.lua"),
    ///     r#"local editor = require "host.editor"
    ///        step("open " .. editor.file()) { run = "true" }"#,
    /// )?;
    /// let engine = piper::Engine::new().with_module("host.editor", |lua| {
    ///     let module = lua.create_table()?;
    ///     module.set("file", lua.create_function(|_, ()| Ok("main.rs"))?)?;
    ///     Ok(piper::mlua::Value::Table(module))
    /// });
    /// let project = engine.load(&dir)?;
    /// assert_eq!(project.steps()[0].name, "open main.rs");
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_module(
        mut self,
        name: &str,
        loader: impl Fn(&mlua::Lua) -> mlua::Result<mlua::Value> + Send + Sync + 'static,
    ) -> Engine {
        self.host.add(name, loader);
        self
    }

    /// Runs every command of every step through `runner` instead of
    /// starting local processes.
    pub fn with_runner(mut self, runner: impl Runner + 'static) -> Engine {
        self.runner = SharedRunner(Arc::new(runner));
        self
    }

    /// Whether to use (and write) the configuration cache in the project's
    /// `.piper/` (default: yes).
    pub fn with_config_cache(mut self, enabled: bool) -> Engine {
        self.config_cache = enabled;
        self
    }

    /// Finds `piper.lua` in `dir` or the nearest directory above it and
    /// evaluates it into a validated graph.
    ///
    /// This blocks: it runs Lua (and any command the config runs at
    /// evaluation time) and stats the files the configuration cache
    /// recorded. From async code, call it in
    /// [`spawn_blocking`](tokio::task::spawn_blocking), as piperd does.
    pub fn load(&self, dir: impl AsRef<Path>) -> Result<Project> {
        let project = crate::project::Located::locate(dir.as_ref(), None)?;
        self.load_located(project)
    }

    /// As [`load`](Engine::load), for the config file `file` (its directory
    /// is the project's root).
    pub fn load_file(&self, file: impl AsRef<Path>) -> Result<Project> {
        let cwd = std::env::current_dir()
            .map_err(|e| crate::Error::io("cannot read the current directory", e))?;
        let project = crate::project::Located::locate(&cwd, Some(file.as_ref()))?;
        self.load_located(project)
    }

    /// A project found by the CLI's own rules (`-C`, `-f`).
    pub(crate) fn load_located(&self, mut project: crate::project::Located) -> Result<Project> {
        project.host = self.host.clone();
        let located = project.clone();
        let mode = if self.config_cache {
            config_cache::Mode::Use
        } else {
            config_cache::Mode::Bypass
        };
        let (graph, evaluation, reads) = config_cache::load_with_reads(&project, mode)?;
        Ok(Project {
            graph: Arc::new(graph),
            evaluation,
            reads: Arc::new(reads),
            runner: self.runner.clone(),
            located,
        })
    }

    /// Loads `project`'s config again, from the same file (after an edit:
    /// what [`Change::Config`](crate::Change::Config) asks for). Blocks,
    /// as [`load`](Engine::load) does.
    pub fn reload(&self, project: &Project) -> Result<Project> {
        self.load_located(project.located.clone())
    }
}

/// A loaded project: its pipelines and steps, ready to run.
pub struct Project {
    graph: Arc<Graph>,
    evaluation: Evaluation,
    /// What evaluating `piper.lua` read (files, globs): a change to one
    /// asks for a reload.
    reads: Arc<crate::recording::ConfigReads>,
    runner: SharedRunner,
    /// Where it was found, to load it again.
    located: crate::project::Located,
}

/// A pipeline, as `piper list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipelineInfo {
    /// Its name (`piper exec NAME`).
    pub name: String,
    /// Its `desc`.
    pub desc: Option<String>,
    /// Its member steps (dependencies run too), by name.
    pub steps: Vec<String>,
    /// The pipelines it triggers, after success or failure.
    pub triggers: Vec<String>,
}

/// A step, as `piper list --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepInfo {
    /// Its name.
    pub name: String,
    /// Its `desc`.
    pub desc: Option<String>,
    /// The steps it depends on, by name.
    pub deps: Vec<String>,
    /// Its declared input globs.
    pub inputs: Vec<String>,
    /// Its declared output globs.
    pub outputs: Vec<String>,
    /// What it runs, in words (`cc -c a.c`, `<lua function>`).
    pub command: String,
    /// Where it is defined (`piper.lua:12`).
    pub location: String,
}

/// Whether a step would run, and why (`piper explain`; `--json` prints
/// these).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Explanation {
    /// The step's name.
    pub step: String,
    /// Whether it would run (else it is up to date).
    pub will_run: bool,
    /// In words: `file modified: src/a.c`, `up to date`.
    pub reasons: Vec<String>,
}

impl Project {
    /// The validated graph (for this package's hosts).
    #[cfg(any(feature = "cli", feature = "agent"))]
    pub(crate) fn graph(&self) -> &Arc<Graph> {
        &self.graph
    }

    /// The directory holding `piper.lua`.
    pub fn root(&self) -> &Path {
        &self.graph.root
    }

    /// Why `piper.lua` was evaluated rather than read from the
    /// configuration cache, or why its result was not cached (None: it was
    /// cached, or there is nothing to say).
    pub fn evaluation(&self) -> Option<String> {
        self.evaluation.explanation()
    }

    /// What loading noticed that the user should know, as one sentence
    /// each (an unreadable configuration cache, ignored and rebuilt). The
    /// library prints nothing itself: a host shows these as it shows
    /// warnings (`piper` prints `piper: warning: ...`).
    pub fn warnings(&self) -> Vec<String> {
        self.evaluation
            .warning()
            .map(String::from)
            .into_iter()
            .collect()
    }

    /// The pipelines, in the order `piper.lua` defines them.
    pub fn pipelines(&self) -> Vec<PipelineInfo> {
        let graph = &self.graph;
        (graph.pipelines.values())
            .map(|p| PipelineInfo {
                name: p.name.clone(),
                desc: p.desc.clone(),
                steps: p
                    .steps
                    .iter()
                    .map(|&s| graph.steps[s].name.clone())
                    .collect(),
                triggers: p.triggers.iter().map(|t| t.pipeline.clone()).collect(),
            })
            .collect()
    }

    /// Every step, in the order `piper.lua` defines them.
    pub fn steps(&self) -> Vec<StepInfo> {
        let graph = &self.graph;
        (graph.steps.iter())
            .map(|s| StepInfo {
                name: s.name.clone(),
                desc: s.desc.clone(),
                deps: s
                    .deps
                    .iter()
                    .map(|&d| graph.steps[d].name.clone())
                    .collect(),
                inputs: s.inputs.clone(),
                outputs: s.outputs.clone(),
                command: crate::fingerprint::command_text(s, &graph.root),
                location: s.location.to_string(),
            })
            .collect()
    }

    /// What [`run`](Project::run) with these targets and options would run,
    /// and why, without running anything. Takes the options as `run` does.
    pub fn explain(&self, targets: &[&str], options: RunOptions) -> Result<Vec<Explanation>> {
        let plan = self.graph.plan(&owned(targets))?;
        let options = options.with_runner(&self.runner);
        Ok(crate::explain::explain(&self.graph, &plan, &options)
            .into_iter()
            .map(|v| Explanation {
                step: v.step,
                will_run: v.will_run,
                reasons: v.reasons,
            })
            .collect())
    }

    /// The `service = true` steps (dev servers) a run of `targets`
    /// includes, in plan order: a host that runs them apart
    /// ([`RunOptions::skip_services`]) starts each as a run of its own.
    pub fn services(&self, targets: &[&str]) -> Result<Vec<String>> {
        let plan = self.graph.plan(&owned(targets))?;
        Ok((plan.steps.iter())
            .map(|planned| &self.graph.steps[planned.step])
            .filter(|step| step.service)
            .map(|step| step.name.clone())
            .collect())
    }

    /// What files that changed (absolute paths) ask of a run of `targets`:
    /// nothing, loading the config again (`piper.lua`, a module it required,
    /// a file it read, or a file added to or removed from a glob it
    /// expanded), the whole plan, or some steps and their dependents. Piper's state, git's, gitignored paths and
    /// declared outputs never ask for anything. `piper watch` reruns by
    /// this. An unknown target is an error (as for [`run`](Project::run)),
    /// not a run that nothing affects; no targets means the whole graph.
    pub fn affected_by(&self, targets: &[&str], changed: &[PathBuf]) -> Result<Affected> {
        let targets = owned(targets);
        if !targets.is_empty() {
            self.graph.plan(&targets)?;
        }
        Ok(crate::changes::affected_by(
            &self.graph,
            &self.reads,
            &targets,
            changed,
        ))
    }

    /// Starts running `targets` (pipelines or steps, with their
    /// dependencies) on the current tokio runtime; the targets' triggers
    /// run after them as chained builds. An unknown target, or no runtime
    /// to run on, is an error before anything starts.
    pub fn run(&self, targets: &[&str], options: RunOptions) -> Result<Run> {
        let targets = owned(targets);
        self.graph.plan(&targets)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(crate::Error::Setting {
                name: "Project::run".into(),
                message: "runs on the current tokio runtime: call it inside one (Runtime::block_on, #[tokio::main])".into(),
            });
        }
        Ok(self.start(targets, options))
    }

    /// [`run`](Project::run) of targets already checked.
    pub(crate) fn start(&self, targets: Vec<String>, options: RunOptions) -> Run {
        self.start_with(targets, options, CancellationToken::new())
    }

    /// As `start`, stopped by `cancel` (piperd's token for the build).
    pub(crate) fn start_with(
        &self,
        targets: Vec<String>,
        options: RunOptions,
        cancel: CancellationToken,
    ) -> Run {
        let options = options.with_runner(&self.runner);
        let (tx, rx) = crate::event::channel();
        let graph = self.graph.clone();
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            crate::executor::run(graph, &targets, &options, &tx, &stop).await
        });
        Run {
            events: rx,
            cancel,
            task: Some(task),
            result: None,
        }
    }
}

fn owned(targets: &[&str]) -> Vec<String> {
    targets.iter().map(|t| t.to_string()).collect()
}

/// How to run: the knobs of `piper exec`. Built with its methods from
/// `RunOptions::default()`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    options: Options,
}

impl RunOptions {
    /// The executor's options as the hosts compute them (`PIPER_KILL_GRACE`
    /// and the rest); not public: `Options` is the executor's.
    #[cfg(any(feature = "cli", feature = "agent"))]
    pub(crate) fn from_options(options: Options) -> RunOptions {
        RunOptions { options }
    }
}

impl RunOptions {
    /// At most `jobs` steps at once (default: the number of CPUs).
    pub fn jobs(mut self, jobs: usize) -> Self {
        self.options.jobs = jobs.max(1);
        self
    }

    /// After a failure, keep running what does not depend on it.
    pub fn keep_going(mut self, keep_going: bool) -> Self {
        self.options.keep_going = keep_going;
        self
    }

    /// Report what would run; run nothing.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.options.dry_run = dry_run;
        self
    }

    /// Run every step even if it is up to date.
    pub fn force_all(mut self) -> Self {
        self.options.force = Force::All;
        self
    }

    /// Run `step` even if it is up to date.
    pub fn force(mut self, step: &str) -> Self {
        match &mut self.options.force {
            Force::Steps(steps) => steps.push(step.to_string()),
            Force::All => {}
            Force::Nothing => self.options.force = Force::Steps(vec![step.to_string()]),
        }
        self
    }

    /// Sets a variable for every step, over everything `piper.lua` sets.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        (self.options.env_overrides).insert(name.to_string(), value.to_string());
        self
    }

    /// Only these steps may run; the others of the plan finish as
    /// unaffected (what `piper watch` does after a change).
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(mut self, steps: I) -> Self {
        let only: HashSet<String> = steps.into_iter().map(Into::into).collect();
        self.options.restrict = Some(only);
        self
    }

    /// Numbers this run's builds from `first` (default 1): a host showing
    /// several runs in one stream, as `piper watch` does, keeps the numbers
    /// apart.
    pub fn first_build(mut self, first: u32) -> Self {
        self.options.first_build = first.max(1);
        self
    }

    /// Fetches the results of steps that ran before (anywhere that uses
    /// `cache`) instead of running them, and stores what runs (see
    /// `cache::DiskCache`; a step opts out with `cache = false`).
    #[cfg(feature = "cache")]
    pub fn cache(mut self, cache: crate::Cache) -> Self {
        self.options.cache = Some(cache);
        self
    }

    /// Leaves `service = true` steps out of the run (reported skipped), for
    /// a host that runs them beside it, each with [`only`](RunOptions::only)
    /// (see [`Project::services`]).
    pub fn skip_services(mut self, skip: bool) -> Self {
        self.options.services_apart = skip;
        self
    }

    /// The pipeline's arguments (`piper exec p -- ARGS`).
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, args: I) -> Self {
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        self.options.args = args.into();
        self
    }

    fn with_runner(&self, runner: &SharedRunner) -> Options {
        Options {
            runner: runner.clone(),
            ..self.options.clone()
        }
    }
}

/// A running build: its events as they happen, then its outcome.
pub struct Run {
    events: EventReceiver,
    cancel: CancellationToken,
    /// The executor's task, until it ended; then its result.
    task: Option<JoinHandle<Result<Outcome>>>,
    result: Option<Result<Outcome>>,
}

impl Run {
    /// The next event; None once the run is over. The run waits while
    /// events are not taken (the channel is bounded), so take them, or
    /// call [`wait`](Run::wait).
    pub async fn next_event(&mut self) -> Option<Event> {
        // The end is the executor's task ending, not the channel closing:
        // a Lua state the project keeps may still hold a sender (in a
        // function step's `ctx`). Every event is sent before the task ends.
        let Some(task) = self.task.as_mut() else {
            return self.events.try_recv().ok();
        };
        let closed = tokio::select! {
            biased;
            event = self.events.recv() => match event {
                Some(event) => return Some(event),
                None => None,
            },
            ended = &mut *task => Some(ended),
        };
        // Every sender gone means the task is ending: wait for it.
        let ended = match closed {
            Some(ended) => ended,
            None => task.await,
        };
        self.task = None;
        self.result = Some(ended.unwrap_or_else(|e| {
            Err(crate::Error::io(
                "the run's task ended abnormally",
                std::io::Error::other(e.to_string()),
            ))
        }));
        self.events.try_recv().ok()
    }

    /// An event already sent, without waiting (batching for renderers).
    #[cfg(feature = "cli")]
    pub(crate) fn try_next_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Stops the run as Ctrl-C does: running steps' process groups are
    /// ended, nothing new starts; the outcome's exit code is 130.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels the run when cancelled (to hand to another
    /// task).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Waits for the end, dropping the events not taken yet.
    pub async fn wait(mut self) -> Result<Outcome> {
        while self.next_event().await.is_some() {}
        self.finish()
    }

    /// Feeds every remaining event to `sink`, then the outcome.
    pub async fn drive(mut self, sink: &mut dyn FnMut(&Event)) -> Result<Outcome> {
        while let Some(event) = self.next_event().await {
            sink(&event);
        }
        self.finish()
    }

    /// The outcome, once `next_event` saw the end.
    fn finish(self) -> Result<Outcome> {
        self.result.unwrap_or_else(|| {
            Err(crate::Error::io(
                "the run has not ended",
                std::io::Error::other("internal: finish before the end"),
            ))
        })
    }
}
