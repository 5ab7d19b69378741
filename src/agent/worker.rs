//! The agent's workers: each claims the oldest queued build, fetches the
//! repository into a cache (one mirror per repository), checks the exact
//! commit out into a workspace of its own, loads *that* commit's piper.lua
//! and runs it with the same executor as `piper exec`. Its events become
//! stored steps and log chunks; chained pipelines become linked builds.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::store::{Build, BuildState, NewBuild, Store, StoredStep, now_ms};
use crate::event::{self, BuildStatus, Event};
use crate::executor::{self, Options};
use crate::graph::Graph;
use crate::project::{CONFIG_FILE, Project};

pub struct Agent {
    pub store: Store,
    /// Recorded on the builds it runs; a restart marks its leftovers lost.
    pub name: String,
    pub data: PathBuf,
    /// Rung when a build is submitted, so an idle worker starts at once.
    pub wake: Notify,
    /// Cancel handles of the builds running here, by build id.
    running: Mutex<HashMap<i64, CancellationToken>>,
    /// Stop claiming builds (shutdown).
    pub stop_claiming: CancellationToken,
    /// Serializes fetches into the repository cache.
    git_lock: tokio::sync::Mutex<()>,
}

impl Agent {
    pub fn new(store: Store, name: String, data: PathBuf) -> Agent {
        Agent {
            store,
            name,
            data,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            stop_claiming: CancellationToken::new(),
            git_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Cancels a build running on this agent; false if it is not running here.
    pub fn cancel(&self, id: i64) -> bool {
        match self.running.lock().unwrap().get(&id) {
            Some(token) => {
                token.cancel();
                true
            }
            None => false,
        }
    }

    /// Cancels every running build (shutdown after the grace period).
    pub fn cancel_all(&self) {
        for token in self.running.lock().unwrap().values() {
            token.cancel();
        }
    }

    pub fn busy(&self) -> bool {
        !self.running.lock().unwrap().is_empty()
    }

    /// One worker: claims and runs builds until told to stop claiming.
    pub async fn work(self: Arc<Self>) {
        loop {
            if self.stop_claiming.is_cancelled() {
                return;
            }
            match self.store.claim_next(&self.name).await {
                Ok(Some(build)) => self.run(build).await,
                Ok(None) => {
                    tokio::select! {
                        _ = self.wake.notified() => {}
                        // Other agents may queue builds in a shared database.
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = self.stop_claiming.cancelled() => return,
                    }
                }
                Err(e) => {
                    tracing::error!("cannot claim a build: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn run(&self, build: Build) {
        let token = CancellationToken::new();
        self.running.lock().unwrap().insert(build.id, token.clone());
        let mut log = LogWriter::new(self.store.clone());
        let workspace = self.data.join("workspaces").join(build.id.to_string());
        let outcome = self
            .checkout_and_run(&build, &workspace, &token, &mut log)
            .await;
        if let Err(message) = outcome {
            log.write(build.id, "", format!("piper: {message}\n").as_bytes())
                .await;
            let state = if token.is_cancelled() {
                BuildState::Canceled
            } else {
                BuildState::Failed
            };
            let _ = self
                .store
                .finish_build(build.id, state, Some(&message))
                .await;
        }
        self.running.lock().unwrap().remove(&build.id);
        self.release_workspace(&build.repo, &workspace).await;
    }

    async fn checkout_and_run(
        &self,
        build: &Build,
        workspace: &Path,
        token: &CancellationToken,
        log: &mut LogWriter,
    ) -> Result<(), String> {
        let (sha, version) = self.checkout(build, workspace).await?;
        self.store
            .set_revision(build.id, &sha, version.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        log.write(
            build.id,
            "",
            format!(
                "piper: {} at {sha} ({})\n",
                build.repo,
                version.as_deref().unwrap_or("no version")
            )
            .as_bytes(),
        )
        .await;

        let config = workspace.join(CONFIG_FILE);
        if !config.is_file() {
            return Err(format!(
                "no {CONFIG_FILE} at the root of {} at {sha}",
                build.repo
            ));
        }
        let project = Project {
            root: workspace.to_path_buf(),
            config,
        };
        let graph = tokio::task::spawn_blocking(move || Graph::load(&project))
            .await
            .map_err(|e| format!("internal: {e}"))?
            .map_err(|e| e.to_string())?;
        let graph = Arc::new(graph);
        let options = Options {
            env_overrides: build
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..Options::default()
        };
        let (tx, rx) = event::channel();
        let recorder = tokio::spawn(record(
            self.store.clone(),
            build.clone(),
            sha,
            version,
            rx,
            std::mem::take(log),
        ));
        let result = executor::run(
            graph,
            std::slice::from_ref(&build.pipeline),
            &options,
            &tx,
            token,
        )
        .await;
        drop(tx);
        *log = recorder.await.map_err(|e| format!("internal: {e}"))?;
        result.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Fetches the repository into its cache and checks `build.git_ref`
    /// out into `workspace`; returns the commit and its `git describe`.
    async fn checkout(
        &self,
        build: &Build,
        workspace: &Path,
    ) -> Result<(String, Option<String>), String> {
        self.checkout_ref(&build.repo, &build.git_ref, workspace)
            .await
    }

    fn cache_dir(&self, repo: &str) -> PathBuf {
        self.data
            .join("repos")
            .join(&blake3::hash(repo.as_bytes()).to_hex()[..16])
    }

    /// Fetches `repo` into its cache (one mirror per repository) and
    /// resolves `git_ref` to a commit.
    pub async fn resolve(&self, repo: &str, git_ref: &str) -> Result<String, String> {
        let cache = self.cache_dir(repo);
        let _guard = self.git_lock.lock().await;
        if cache.join("HEAD").exists() {
            git(&cache, &["fetch", "--quiet", "--prune", "origin"])
                .await
                .map_err(|e| format!("cannot fetch {repo}: {e}"))?;
        } else {
            let parent = cache.parent().unwrap_or(Path::new("."));
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| e.to_string())?;
            let cache_text = cache.to_string_lossy().into_owned();
            // `--`: a repository never becomes an option of git.
            git(
                parent,
                &["clone", "--quiet", "--mirror", "--", repo, &cache_text],
            )
            .await
            .map_err(|e| format!("cannot clone {repo}: {e}"))?;
        }
        let spec = format!("{git_ref}^{{commit}}");
        git(
            &cache,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                "--end-of-options",
                &spec,
            ],
        )
        .await
        .map_err(|_| format!("ref `{git_ref}` does not exist in {repo}"))
    }

    /// Fetches `repo`, checks `git_ref` out into `workspace`; returns the
    /// commit and its `git describe`.
    pub async fn checkout_ref(
        &self,
        repo: &str,
        git_ref: &str,
        workspace: &Path,
    ) -> Result<(String, Option<String>), String> {
        let sha = self.resolve(repo, git_ref).await?;
        let cache = self.cache_dir(repo);
        self.release_workspace(repo, workspace).await;
        tokio::fs::create_dir_all(workspace.parent().unwrap_or(Path::new(".")))
            .await
            .map_err(|e| e.to_string())?;
        let ws_text = workspace.to_string_lossy().into_owned();
        // One process for the checkout (a worktree of the mirror, sharing its
        // objects), and the version computed beside it: pickup latency is
        // mostly git processes.
        let add_args = [
            "worktree", "add", "--quiet", "--detach", "--force", &ws_text, &sha,
        ];
        let describe_args = ["describe", "--tags", "--always", &sha];
        // Adding a worktree and pruning stale ones must not interleave.
        let (added, version) = {
            let _guard = self.git_lock.lock().await;
            tokio::join!(git(&cache, &add_args), git(&cache, &describe_args))
        };
        added.map_err(|e| format!("cannot check out {sha}: {e}"))?;
        Ok((sha, version.ok()))
    }

    /// Removes a workspace and forgets it in the repository's cache.
    pub async fn release_workspace(&self, repo: &str, workspace: &Path) {
        if tokio::fs::remove_dir_all(workspace).await.is_ok() {
            let _guard = self.git_lock.lock().await;
            let _ = git(&self.cache_dir(repo), &["worktree", "prune"]).await;
        }
    }
}

/// Runs git; its trimmed stdout, or its stderr as the error.
async fn git(dir: &Path, args: &[&str]) -> Result<String, String> {
    let mut command = tokio::process::Command::new("git");
    // No detached `git maintenance`/`gc --auto` after fetches: nobody would
    // wait for them (the agent's mirrors are pruned explicitly).
    command
        .args(["-c", "maintenance.auto=false", "-c", "gc.auto=0"])
        .args(args)
        .current_dir(dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let (child, _owned) = crate::reaper::spawn_owned(|| command.spawn(), tokio::process::Child::id)
        .map_err(|e| format!("cannot run git: {e}"))?;
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("cannot run git: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Appends log chunks with the counters the store's readers rely on.
#[derive(Default)]
struct LogWriter {
    store: Option<Store>,
    seq: HashMap<i64, i64>,
    build_offset: HashMap<i64, i64>,
    step_offset: HashMap<(i64, String), i64>,
}

impl LogWriter {
    fn new(store: Store) -> LogWriter {
        LogWriter {
            store: Some(store),
            ..LogWriter::default()
        }
    }

    async fn write(&mut self, build: i64, step: &str, data: &[u8]) {
        let Some(store) = &self.store else { return };
        if data.is_empty() {
            return;
        }
        let seq = self.seq.entry(build).or_insert(0);
        let build_offset = self.build_offset.entry(build).or_insert(0);
        let step_offset = self
            .step_offset
            .entry((build, step.to_string()))
            .or_insert(0);
        if let Err(e) = store
            .append_log(build, *seq, step, *build_offset, *step_offset, data)
            .await
        {
            tracing::error!("cannot store log of build {build}: {e}");
            return;
        }
        *seq += 1;
        *build_offset += data.len() as i64;
        *step_offset += data.len() as i64;
    }
}

/// Turns the executor's events into stored builds, steps and logs.
async fn record(
    store: Store,
    build: Build,
    sha: String,
    version: Option<String>,
    mut events: event::EventReceiver,
    mut log: LogWriter,
) -> LogWriter {
    // Executor build numbers (1 = this build, 2.. = chained) to stored ids.
    let mut ids: HashMap<u32, i64> = HashMap::new();
    let mut positions: HashMap<(i64, String), i64> = HashMap::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::BuildStarted {
                build: n,
                name,
                steps,
                triggered_by,
                ..
            } => {
                let id = if ids.is_empty() {
                    build.id
                } else {
                    let parent = triggered_by
                        .and_then(|t| ids.get(&t.build).copied())
                        .unwrap_or(build.id);
                    let chained = NewBuild {
                        repo: build.repo.clone(),
                        git_ref: build.git_ref.clone(),
                        pipeline: name,
                        env: build.env.clone(),
                        requested_by: format!("chained from build {parent}"),
                        parent_id: Some(parent),
                    };
                    match store.create_build(&chained, BuildState::Running).await {
                        Ok(created) => {
                            let _ = store
                                .set_revision(created.id, &sha, version.as_deref())
                                .await;
                            created.id
                        }
                        Err(e) => {
                            tracing::error!("cannot record a chained build: {e}");
                            continue;
                        }
                    }
                };
                ids.insert(n, id);
                for (i, s) in steps.iter().enumerate() {
                    positions.insert((id, s.name.clone()), i as i64);
                    let step = StoredStep {
                        name: s.name.clone(),
                        status: "pending".into(),
                        exit_code: None,
                        started_at: None,
                        finished_at: None,
                        message: None,
                    };
                    let _ = store.upsert_step(id, i as i64, &step).await;
                }
            }
            Event::StepStarted { build: n, step, .. } => {
                let Some(&id) = ids.get(&n) else { continue };
                let position = positions.get(&(id, step.clone())).copied().unwrap_or(0);
                let stored = StoredStep {
                    name: step,
                    status: "running".into(),
                    exit_code: None,
                    started_at: Some(now_ms()),
                    finished_at: None,
                    message: None,
                };
                let _ = store.upsert_step(id, position, &stored).await;
            }
            Event::StepCommand {
                build: n,
                step,
                command,
            } => {
                let Some(&id) = ids.get(&n) else { continue };
                log.write(id, &step, format!("$ {command}\n").as_bytes())
                    .await;
            }
            Event::StepOutput {
                build: n,
                step,
                data,
            } => {
                let Some(&id) = ids.get(&n) else { continue };
                log.write(id, &step, &data).await;
            }
            Event::StepWarning {
                build: n,
                step,
                message,
            } => {
                let Some(&id) = ids.get(&n) else { continue };
                log.write(id, &step, format!("piper: warning: {message}\n").as_bytes())
                    .await;
            }
            Event::StepRetrying {
                build: n,
                step,
                attempt,
                reason,
            } => {
                let Some(&id) = ids.get(&n) else { continue };
                log.write(
                    id,
                    &step,
                    format!("piper: attempt {attempt} failed ({reason}); retrying\n").as_bytes(),
                )
                .await;
            }
            Event::StepFinished {
                build: n,
                step,
                status,
                exit_code,
                message,
                ..
            } => {
                let Some(&id) = ids.get(&n) else { continue };
                let position = positions.get(&(id, step.clone())).copied().unwrap_or(0);
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
                let _ = store.upsert_step(id, position, &stored).await;
            }
            Event::BuildFinished {
                build: n, status, ..
            } => {
                let Some(&id) = ids.get(&n) else { continue };
                let state = match status {
                    BuildStatus::Success => BuildState::Success,
                    BuildStatus::Failed => BuildState::Failed,
                    BuildStatus::Canceled => BuildState::Canceled,
                };
                let _ = store.finish_build(id, state, None).await;
            }
            Event::StepQueued { .. }
            | Event::WatchChanged { .. }
            | Event::WatchIdle
            | Event::ConfigError { .. } => {}
        }
    }
    log
}
