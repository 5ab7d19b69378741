//! `piper watch`: runs a pipeline, then reruns what each file change
//! affects, with the same executor and events as `piper exec`. A host of
//! the embedding API like any other: `Project::affected_by` says what a
//! change asks for, `Project::run` with `RunOptions::only`/`first_build`/
//! `skip_services` runs it, `Engine::reload` reads an edited config.
//!
//! Theory of operation (docs/architecture.md has the long form):
//! - The project root is watched recursively (inotify, or polling with
//!   `--poll`). Paths under `.piper/` and `.git/`, gitignored paths,
//!   declared outputs and `trigger.watch` ignores never trigger, so a step's
//!   own output cannot loop it (`changes.rs` decides).
//! - Changes are debounced: a batch closes when no event came for the
//!   debounce time. A batch that touches nothing relevant is dropped
//!   without disturbing a running build.
//! - A change to `piper.lua`, a module it required, a file it read or a
//!   glob it expanded re-evaluates the config (a broken edit is reported
//!   and watching goes on). A change to a step's
//!   inputs reruns that step and its dependents (`RunOptions::only`);
//!   a change to a `trigger.watch` path reruns the whole plan.
//! - Before a rerun, the running build is cancelled and awaited: its process
//!   groups are gone before anything new starts.
//! - `service = true` steps (dev servers) are not part of the builds: after
//!   a successful build each one runs as a build of its own, and is stopped
//!   (and awaited) and started again only when a change affects it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::Watcher;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::cli::error::{Error, Result};
use crate::error::EXIT_INTERRUPTED;
use crate::event::{Event, EventSender};
use crate::{Affected, Change, Engine, Outcome, Project, Run, RunOptions};

#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Quiet time that closes a batch of changes.
    pub debounce: Duration,
    /// Poll the file system instead of using inotify (network mounts, containers).
    pub poll: bool,
}

/// A run in progress: its task (which forwards its events) and how to stop it.
type Running = (JoinHandle<crate::Result<Outcome>>, CancellationToken);

/// Watches until interrupted; returns the exit status (130). `project` is
/// the config as loaded at start, so it is not evaluated twice. Uses only
/// the embedding API; `events` is the stream its renderer reads, which
/// every run's events join.
pub async fn watch(
    engine: Engine,
    mut project: Project,
    targets: Vec<String>,
    base: RunOptions,
    options: WatchOptions,
    events: EventSender,
    interrupt: CancellationToken,
) -> Result<i32> {
    let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
    let (tx, mut changes) = mpsc::unbounded_channel::<PathBuf>();
    // Held for the whole watch: dropping it stops the notifications.
    let _watcher = start_watcher(project.root(), options.poll, tx)?;
    // False after an edit broke the config: `project` is then the last
    // good one, kept to load the config again.
    let mut valid = true;
    let mut only: Option<Vec<String>> = None;
    let mut next_build = 1;
    let base = base.skip_services(true);
    let mut services = Services::default();
    loop {
        let mut running = valid.then(|| {
            let mut options = base.clone().first_build(next_build);
            if let Some(only) = only.take() {
                options = options.only(only);
            }
            start(&project, &targets, options, &events)
        });

        // Wait for a batch of relevant changes; the build may finish meanwhile.
        let affected = loop {
            tokio::select! {
                _ = interrupt.cancelled() => {
                    if let Some((handle, token)) = running.take() {
                        // Wait until its processes are gone.
                        token.cancel();
                        let _ = handle.await;
                    }
                    services.stop_all().await;
                    return Ok(EXIT_INTERRUPTED);
                }
                finished = async { (&mut running.as_mut().unwrap().0).await }, if running.is_some() => {
                    running = None;
                    let succeeded = matches!(&finished, Ok(Ok(outcome)) if outcome.exit_code == 0);
                    next_build = next_build_number(finished, next_build, &events).await;
                    if succeeded {
                        next_build = services.start(&project, &targets, &base, next_build, &events);
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
                    // The targets were planned when this config loaded.
                    let affected = match valid.then(|| project.affected_by(&targets, &batch)) {
                        Some(Ok(affected)) => affected,
                        _ => affected_without_config(project.root(), &batch),
                    };
                    if affected.change != Change::Nothing {
                        break affected;
                    }
                }
            }
        };

        if let Some((handle, token)) = running.take() {
            token.cancel();
            let finished = handle.await;
            next_build = next_build_number(finished, next_build, &events).await;
        }
        let rerun = match &affected.change {
            Change::Steps(steps) => {
                services.stop(|name| steps.contains(name)).await;
                let names: Vec<String> = steps.iter().cloned().collect();
                only = Some(names.clone());
                names
            }
            _ => {
                services.stop(|_| true).await;
                Vec::new()
            }
        };
        let paths = affected.paths;
        let _ = events.send(Event::WatchChanged { paths, rerun }).await;
        if affected.change == Change::Config {
            match load(&engine, &project, &targets) {
                Ok(loaded) => (project, valid) = (loaded, true),
                Err(e) => {
                    let message = e.to_string();
                    let _ = events.send(Event::ConfigError { message }).await;
                    valid = false;
                }
            }
        }
    }
}

/// Starts a run of `targets`; its task forwards the run's events into the
/// watch's stream and ends with its outcome (or why it could not start).
fn start(
    project: &Project,
    targets: &[&str],
    options: RunOptions,
    events: &EventSender,
) -> Running {
    let started = project.run(targets, options);
    let token = (started.as_ref()).map_or_else(|_| CancellationToken::new(), Run::cancel_token);
    let events = events.clone();
    let handle = tokio::spawn(async move {
        let mut run = started?;
        while let Some(event) = run.next_event().await {
            let _ = events.send(event).await;
        }
        run.wait().await
    });
    (handle, token)
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
        project: &Project,
        targets: &[&str],
        base: &RunOptions,
        mut next_build: u32,
        events: &EventSender,
    ) -> u32 {
        let Ok(names) = project.services(targets) else {
            return next_build;
        };
        for name in names {
            if self.tokens.contains_key(&name) {
                continue;
            }
            let options = (base.clone())
                .skip_services(false)
                .only([name.clone()])
                .first_build(next_build);
            next_build += 1;
            let (handle, token) = start(project, &[name.as_str()], options, events);
            let ended = name.clone();
            self.set.spawn(async move {
                let _ = handle.await;
                ended
            });
            self.tokens.insert(name, token);
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
    finished: std::result::Result<crate::Result<Outcome>, tokio::task::JoinError>,
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

/// Loads the config again after an edit; an error (watching goes on) is
/// reported by the caller. An unknown target is an error here too.
fn load(engine: &Engine, project: &Project, targets: &[&str]) -> Result<Project> {
    let loaded = engine.reload(project)?;
    super::warnings::show_loaded(&loaded);
    loaded.services(targets)?; // plans the targets
    Ok(loaded)
}

/// What a change asks when there is no valid config to consult: any Lua
/// file of the project may fix it, nothing else matters.
fn affected_without_config(root: &Path, changed: &[PathBuf]) -> Affected {
    let mut paths: Vec<String> = (changed.iter())
        .filter(|path| path.extension().is_some_and(|e| e == "lua"))
        .filter_map(|path| path.strip_prefix(root).ok())
        .filter(|rel| !crate::changes::is_private(rel))
        .map(|rel| rel.to_string_lossy().into_owned())
        .collect();
    paths.sort();
    paths.dedup();
    let change = if paths.is_empty() {
        Change::Nothing
    } else {
        Change::Config
    };
    Affected { change, paths }
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
