//! `piper watch`: runs a pipeline, then reruns what each file change
//! affects, with the same executor and events as `piper exec`.
//!
//! Theory of operation (docs/architecture.md has the long form):
//! - The project root is watched recursively (inotify, or polling with
//!   `--poll`). Paths under `.piper/` and `.git/`, gitignored paths,
//!   declared outputs and `trigger.watch` ignores never trigger, so a step's
//!   own output cannot loop it.
//! - Changes are debounced: a batch closes when no event came for the
//!   debounce time. A batch that touches nothing relevant is dropped
//!   without disturbing a running build.
//! - A change to `piper.lua` or a module it required re-evaluates the config
//!   (a broken edit is reported and watching goes on). A change to a step's
//!   inputs reruns that step and its dependents (the executor's `restrict`);
//!   a change to a `trigger.watch` path reruns the whole plan.
//! - Before a rerun, the running build is cancelled and awaited: its process
//!   groups are gone before anything new starts.
//! - `service = true` steps (dev servers) are not part of the builds: after
//!   a successful build each one runs as a build of its own, and is stopped
//!   (and awaited) and started again only when a change affects it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use notify::Watcher;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::{EXIT_INTERRUPTED, Error, Result};
use crate::event::{Event, EventSender};
use crate::executor::{self, Options, RunOutcome};
use crate::graph::Graph;
use crate::project::Project;
use crate::state::{STATE_DIR, State};

#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Quiet time that closes a batch of changes.
    pub debounce: Duration,
    /// Poll the file system instead of using inotify (network mounts, containers).
    pub poll: bool,
}

/// What a batch of changes asks for.
#[derive(Debug, PartialEq)]
enum Change {
    Nothing,
    /// The config or a module it required changed: evaluate it again.
    Reload,
    /// A `trigger.watch` path changed: rerun the plan.
    Everything,
    /// These steps' inputs changed: rerun them and their dependents.
    Steps(HashSet<String>),
}

/// Watches until interrupted; returns the exit status (130).
/// `graph` is the config as evaluated (and planned) at start, so it is not
/// evaluated twice.
pub async fn watch(
    project: Project,
    graph: Graph,
    targets: Vec<String>,
    base: Options,
    options: WatchOptions,
    events: EventSender,
    interrupt: CancellationToken,
) -> Result<i32> {
    let (tx, mut changes) = mpsc::unbounded_channel::<PathBuf>();
    // Held for the whole watch: dropping it stops the notifications.
    let _watcher = start_watcher(&project.root, options.poll, tx)?;
    let mut graph = Some(Arc::new(graph));
    let mut restrict: Option<HashSet<String>> = None;
    let mut next_build = 1;
    let base = Options {
        services_apart: true,
        ..base
    };
    let mut services = Services::default();
    loop {
        let mut running = graph.clone().map(|graph| {
            let token = interrupt.child_token();
            let run_options = Options {
                restrict: restrict.take(),
                first_build: next_build,
                ..base.clone()
            };
            let (targets, events, run_token) = (targets.clone(), events.clone(), token.clone());
            let handle = tokio::spawn(async move {
                executor::run(graph, &targets, &run_options, &events, &run_token).await
            });
            (handle, token)
        });

        // Wait for a batch of relevant changes; the build may finish meanwhile.
        let (change, paths) = loop {
            tokio::select! {
                _ = interrupt.cancelled() => {
                    if let Some((handle, _)) = running.take() {
                        // The build's token is a child of `interrupt`: it is
                        // cancelling; wait until its processes are gone.
                        let _ = handle.await;
                    }
                    services.stop_all().await;
                    return Ok(EXIT_INTERRUPTED);
                }
                finished = async { (&mut running.as_mut().unwrap().0).await }, if running.is_some() => {
                    running = None;
                    let succeeded = matches!(&finished, Ok(Ok(outcome)) if outcome.exit_code == 0);
                    next_build = next_build_number(finished, next_build, &events).await;
                    if succeeded && let Some(graph) = &graph {
                        next_build = services.start(graph, &targets, &base, next_build, &events, &interrupt);
                    }
                    // The run (chained builds included) is over: idle now,
                    // unless it ended because of Ctrl-C.
                    if !interrupt.is_cancelled() {
                        let _ = events.send(Event::WatchIdle).await;
                    }
                }
                Some(ended) = services.set.join_next(), if !services.set.is_empty() => {
                    if let Ok(name) = ended {
                        services.tokens.remove(&name);
                    }
                }
                Some(first) = changes.recv() => {
                    let Some(batch) = debounce(first, &mut changes, options.debounce, &interrupt).await else {
                        continue; // interrupted: the next turn returns
                    };
                    let (change, paths) = classify(&project, graph.as_deref(), &targets, &batch);
                    if change != Change::Nothing {
                        break (change, paths);
                    }
                }
            }
        };

        if let Some((handle, token)) = running.take() {
            token.cancel();
            let finished = handle.await;
            next_build = next_build_number(finished, next_build, &events).await;
        }
        let rerun = match &change {
            Change::Steps(direct) => {
                let affected = graph
                    .as_deref()
                    .map(|g| affected(g, &targets, direct))
                    .unwrap_or_default();
                let mut names: Vec<String> = affected.iter().cloned().collect();
                names.sort();
                services.stop(|name| affected.contains(name)).await;
                restrict = Some(affected);
                names
            }
            _ => {
                services.stop(|_| true).await;
                Vec::new()
            }
        };
        let _ = events.send(Event::WatchChanged { paths, rerun }).await;
        if change == Change::Reload {
            graph = load(&project, &targets, &events).await;
        }
    }
}

/// The services of the watched plan that are running, each as a build of
/// its own.
#[derive(Default)]
struct Services {
    /// Each task returns its service's name when its build ends.
    set: JoinSet<String>,
    tokens: HashMap<String, CancellationToken>,
}

impl Services {
    /// Starts the plan's services that are not running; returns the next
    /// free build number.
    fn start(
        &mut self,
        graph: &Arc<Graph>,
        targets: &[String],
        base: &Options,
        mut next_build: u32,
        events: &EventSender,
        interrupt: &CancellationToken,
    ) -> u32 {
        let Ok(plan) = graph.plan(targets) else {
            return next_build;
        };
        for planned in &plan.steps {
            let step = &graph.steps[planned.step];
            if !step.service || self.tokens.contains_key(&step.name) {
                continue;
            }
            let token = interrupt.child_token();
            let options = Options {
                restrict: Some(HashSet::from([step.name.clone()])),
                services_apart: false,
                first_build: next_build,
                ..base.clone()
            };
            next_build += 1;
            let (graph, events, run_token, name) = (
                graph.clone(),
                events.clone(),
                token.clone(),
                step.name.clone(),
            );
            self.set.spawn(async move {
                let _ = executor::run(
                    graph,
                    std::slice::from_ref(&name),
                    &options,
                    &events,
                    &run_token,
                )
                .await;
                name
            });
            self.tokens.insert(step.name.clone(), token);
        }
        next_build
    }

    /// Stops the running services `which` selects, and waits until their
    /// processes are gone.
    async fn stop(&mut self, which: impl Fn(&str) -> bool) {
        let mut pending: HashSet<String> =
            self.tokens.keys().filter(|n| which(n)).cloned().collect();
        for name in &pending {
            self.tokens[name].cancel();
        }
        while !pending.is_empty() {
            match self.set.join_next().await {
                Some(Ok(name)) => {
                    pending.remove(&name);
                    self.tokens.remove(&name);
                }
                Some(Err(_)) => {}
                None => break,
            }
        }
    }

    async fn stop_all(&mut self) {
        self.stop(|_| true).await;
    }
}

/// The build after `finished` (which may have failed to plan: then the
/// error is reported and numbering goes on).
async fn next_build_number(
    finished: std::result::Result<Result<RunOutcome>, tokio::task::JoinError>,
    current: u32,
    events: &EventSender,
) -> u32 {
    match finished {
        Ok(Ok(outcome)) => outcome
            .builds
            .last()
            .map(|b| b.build + 1)
            .unwrap_or(current)
            .max(current),
        Ok(Err(e)) => {
            let _ = events
                .send(Event::ConfigError {
                    message: e.to_string(),
                })
                .await;
            current
        }
        Err(e) => {
            let _ = events
                .send(Event::ConfigError {
                    message: format!("internal: {e}"),
                })
                .await;
            current
        }
    }
}

/// Evaluates the config; on error reports it and returns None (watching goes on).
async fn load(project: &Project, targets: &[String], events: &EventSender) -> Option<Arc<Graph>> {
    let result = Graph::load(project).and_then(|g| g.plan(targets).map(|_| g));
    match result {
        Ok(graph) => Some(Arc::new(graph)),
        Err(e) => {
            let _ = events
                .send(Event::ConfigError {
                    message: e.to_string(),
                })
                .await;
            None
        }
    }
}

fn start_watcher(
    root: &Path,
    poll: bool,
    tx: mpsc::UnboundedSender<PathBuf>,
) -> Result<Box<dyn Watcher + Send>> {
    let handler = move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event {
            if matches!(event.kind, notify::EventKind::Access(_)) {
                return;
            }
            for path in event.paths {
                let _ = tx.send(path);
            }
        }
    };
    let failed = |e: notify::Error| {
        Error::io(
            format!("cannot watch {}", root.display()),
            std::io::Error::other(e.to_string()),
        )
    };
    let mut watcher: Box<dyn Watcher + Send> = if poll {
        let config = notify::Config::default()
            .with_poll_interval(Duration::from_millis(100))
            .with_compare_contents(true);
        Box::new(notify::PollWatcher::new(handler, config).map_err(failed)?)
    } else {
        Box::new(notify::recommended_watcher(handler).map_err(failed)?)
    };
    watcher
        .watch(root, notify::RecursiveMode::Recursive)
        .map_err(failed)?;
    Ok(watcher)
}

/// Collects changes until none came for `quiet`. None when interrupted.
async fn debounce(
    first: PathBuf,
    changes: &mut mpsc::UnboundedReceiver<PathBuf>,
    quiet: Duration,
    interrupt: &CancellationToken,
) -> Option<Vec<PathBuf>> {
    // Tests wait for this line to know a debounce is open.
    tracing::debug!("change seen: {}; debouncing", first.display());
    let mut batch = vec![first];
    let timer = tokio::time::sleep(quiet);
    tokio::pin!(timer);
    loop {
        tokio::select! {
            _ = interrupt.cancelled() => return None,
            _ = &mut timer => return Some(batch),
            Some(path) = changes.recv() => {
                batch.push(path);
                timer.as_mut().reset(tokio::time::Instant::now() + quiet);
            }
        }
    }
}

fn glob_set<'a>(patterns: impl IntoIterator<Item = &'a str>) -> GlobSet {
    let mut set = GlobSetBuilder::new();
    for p in patterns {
        if let Ok(glob) = GlobBuilder::new(p).literal_separator(true).build() {
            set.add(glob);
        }
    }
    set.build().unwrap_or_else(|_| GlobSet::empty())
}

/// Sorts a batch of changed paths into what it asks for; also returns the
/// relevant paths (root-relative) for the separator.
fn classify(
    project: &Project,
    graph: Option<&Graph>,
    targets: &[String],
    batch: &[PathBuf],
) -> (Change, Vec<String>) {
    let root = &project.root;
    let mut relevant = Vec::new();
    let mut reload = false;
    let mut everything = false;
    let mut steps = HashSet::new();

    let ignored = crate::paths::IgnoreRules::new(root);
    let Some(graph) = graph else {
        // No valid config: any Lua file of the project may fix it.
        for path in batch {
            if let Ok(rel) = path.strip_prefix(root)
                && path.extension().is_some_and(|e| e == "lua")
                && !is_private(rel)
            {
                relevant.push(rel.to_string_lossy().into_owned());
            }
        }
        relevant.sort();
        relevant.dedup();
        let change = if relevant.is_empty() {
            Change::Nothing
        } else {
            Change::Reload
        };
        return (change, relevant);
    };
    let config_files: HashSet<&PathBuf> = graph.files.iter().collect();
    let ignore_set = glob_set(graph.watch_ignore.iter().map(String::as_str));
    let extra_set = glob_set(graph.watch_paths.iter().map(String::as_str));
    let outputs: Vec<String> = graph
        .steps
        .iter()
        .flat_map(|s| s.outputs.iter().cloned())
        .collect();
    let output_set = glob_set(outputs.iter().map(String::as_str));
    let plan = graph.plan(targets).ok();
    let state = State::load(root);
    let inputs: Vec<(&str, GlobSet, HashSet<String>)> = plan
        .iter()
        .flat_map(|p| p.steps.iter())
        .map(|planned| {
            let step = &graph.steps[planned.step];
            let mut literal: HashSet<String> = step
                .inputs
                .iter()
                .filter(|p| !crate::paths::is_glob(p))
                .cloned()
                .collect();
            if let Some(record) = state.steps.get(&step.name) {
                literal.extend(record.discovered.iter().cloned());
            }
            (
                step.name.as_str(),
                glob_set(step.inputs.iter().map(String::as_str)),
                literal,
            )
        })
        .collect();

    for path in batch {
        let Ok(rel) = path.strip_prefix(root) else {
            continue;
        };
        if rel.as_os_str().is_empty() || is_private(rel) {
            continue;
        }
        let rel_text = rel.to_string_lossy().into_owned();
        if config_files.contains(path) {
            reload = true;
            relevant.push(rel_text);
            continue;
        }
        if ignore_set.is_match(rel)
            || output_set.is_match(rel)
            || ignored.is_ignored(rel, path.is_dir())
        {
            continue;
        }
        let mut hit = false;
        for (name, globs, literal) in &inputs {
            if globs.is_match(rel) || literal.contains(&rel_text) {
                steps.insert(name.to_string());
                hit = true;
            }
        }
        if extra_set.is_match(rel) {
            everything = true;
            hit = true;
        }
        if hit {
            relevant.push(rel_text);
        }
    }
    relevant.sort();
    relevant.dedup();
    let change = if reload {
        Change::Reload
    } else if everything {
        Change::Everything
    } else if !steps.is_empty() {
        Change::Steps(steps)
    } else {
        Change::Nothing
    };
    (change, relevant)
}

/// Piper's own state and git's never trigger anything.
fn is_private(rel: &Path) -> bool {
    rel.components()
        .next()
        .is_some_and(|c| c.as_os_str() == STATE_DIR || c.as_os_str() == ".git")
}

/// `direct` and every step of the plan that depends on one of them.
fn affected(graph: &Graph, targets: &[String], direct: &HashSet<String>) -> HashSet<String> {
    let Ok(plan) = graph.plan(targets) else {
        return direct.clone();
    };
    let mut dependents: HashMap<usize, Vec<usize>> = HashMap::new();
    for planned in &plan.steps {
        for &d in &graph.steps[planned.step].deps {
            dependents.entry(d).or_default().push(planned.step);
        }
    }
    let mut out: HashSet<String> = HashSet::new();
    let mut stack: Vec<usize> = direct.iter().filter_map(|n| graph.step(n)).collect();
    while let Some(s) = stack.pop() {
        if out.insert(graph.steps[s].name.clone()) {
            stack.extend(dependents.get(&s).into_iter().flatten().copied());
        }
    }
    out
}
