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

use super::escaped::Escaped;
use super::fence::Fence;
use super::held::Held;
use super::log_writer::{LogWriter, Redactor, with_retry};
use super::recorder::{Recorder, end_attempt, release};
use super::settings::AgentSettings;
use super::store::{Build, BuildState, Holder, Renewal, Store};
use crate::executor::Options;
use crate::graph::{Graph, Plan};

pub struct Agent {
    pub store: Store,
    /// This agent's identity (generated once, kept in its data directory):
    /// what its builds and leases are recorded under.
    pub id: String,
    /// For people: shown on its builds and in the agent list.
    pub name: String,
    /// Whether this agent does the cluster's periodic work (rescue,
    /// schedules) now: it holds the leader row's lease.
    pub leader: std::sync::atomic::AtomicBool,
    /// Its labels and detected facts: what builds' `requires` must match.
    pub labels: std::collections::BTreeMap<String, String>,
    pub data: PathBuf,
    /// Rung when a build is submitted, so an idle worker starts at once.
    pub wake: Notify,
    /// Announces the id of a build whose log or events grew (here, or on
    /// another agent through `NOTIFY piper_log`): live followers read the
    /// store when told, instead of polling it.
    pub written: tokio::sync::broadcast::Sender<i64>,
    /// The builds (chained ones included) running here, by build id.
    running: Arc<Mutex<HashMap<i64, Held>>>,
    /// How long a claim holds a build without renewal, and how often the
    /// agent renews (and rescues others' expired builds).
    pub lease: Duration,
    pub heartbeat: Duration,
    /// Stop claiming builds (shutdown).
    pub stop_claiming: CancellationToken,
    /// Give up writes the store does not take (shutdown past its grace).
    pub abandon: CancellationToken,
    /// One lock per repository cache: git commands on one mirror take turns,
    /// and a repository whose server hangs holds up only its own builds.
    git_locks: Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>,
    /// Longest one git command may take.
    pub git_timeout: Duration,
    /// A remote cache behind the disk cache (`--remote-cache`).
    pub remote_cache: Option<super::settings::RemoteCacheSettings>,
    /// The transports git may use (`GIT_ALLOW_PROTOCOL`).
    pub git_protocols: &'static str,
    /// The durations of what it ran, for `/metrics`.
    pub metrics: Arc<super::metrics::Metrics>,
    /// When each held build's lease was last renewed: what the self-fence
    /// (and the guard process) go by.
    pub fence: Arc<Fence>,
}

fn next_run() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The variables `agent` gives every step of `build`, secrets aside:
/// `CI=true`, the build's id and number, the agent, and the submit's `env`.
/// `piper exec --from-build` gives the same ones.
pub fn build_vars(build: &Build, agent: &str) -> indexmap::IndexMap<String, String> {
    let mut env = identity_vars(build, agent);
    env.extend(build.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// The variables that say which build and agent run a step (not what it
/// does): a build's steps get them, no fingerprint covers them.
fn identity_vars(build: &Build, agent: &str) -> indexmap::IndexMap<String, String> {
    [
        ("CI".to_string(), "true".to_string()),
        ("PIPER_BUILD_ID".to_string(), build.id.to_string()),
        ("PIPER_BUILD_NUMBER".to_string(), build.number.to_string()),
        ("PIPER_AGENT".to_string(), agent.to_string()),
        (
            "PIPER_ATTEMPT".to_string(),
            build.attempt.max(1).to_string(),
        ),
    ]
    .into_iter()
    .collect()
}

impl Agent {
    pub fn new(store: Store, settings: AgentSettings) -> Agent {
        Agent {
            store,
            id: settings.id,
            name: settings.name,
            labels: settings.labels,
            data: settings.data,
            wake: Notify::new(),
            written: tokio::sync::broadcast::channel(1024).0,
            running: Arc::default(),
            leader: std::sync::atomic::AtomicBool::new(false),
            lease: settings.lease,
            heartbeat: settings.heartbeat,
            stop_claiming: CancellationToken::new(),
            abandon: CancellationToken::new(),
            git_locks: Mutex::new(HashMap::new()),
            git_timeout: settings.git_timeout,
            remote_cache: settings.remote_cache,
            git_protocols: if settings.local_repositories {
                "file:git:http:https:ssh"
            } else {
                "git:http:https:ssh"
            },
            metrics: Arc::default(),
            fence: Arc::new(Fence::new(settings.lease, settings.guard)),
        }
    }

    fn holder(&self) -> Holder {
        Holder {
            agent_id: self.id.clone(),
            agent_name: self.name.clone(),
            lease_ms: self.lease.as_millis() as i64,
            labels: self.labels.clone(),
        }
    }

    /// Renews the leases of the builds running here and stops those it no
    /// longer holds (rescued while it stalled) or that were canceled
    /// elsewhere; then rescues other agents' expired builds. Every
    /// `heartbeat`, until the agent stops.
    pub async fn keep_leases(self: Arc<Self>) {
        // Since when this agent has reached the database without a failure
        // (CLOCK_BOOTTIME ms): a leader rescues only after a full lease of
        // it, so that after an outage that cut every agent off alike, the
        // others renew (or give up with their reason) before any rescue.
        let mut reached_since: Option<i64> = Some(Fence::now());
        loop {
            let lease_ms = self.holder().lease_ms;
            let leading = match self.store.lead(&self.id, lease_ms).await {
                Ok(leading) => {
                    reached_since.get_or_insert_with(Fence::now);
                    leading
                }
                Err(e) => {
                    tracing::warn!("cannot renew the leadership: {e}");
                    reached_since = None;
                    false
                }
            };
            let was = self
                .leader
                .swap(leading, std::sync::atomic::Ordering::SeqCst);
            if leading != was {
                tracing::info!(leading, "cluster leadership (rescue, schedules)");
            }
            self.renew_leases(lease_ms).await;
            let settled = reached_since.is_some_and(|since| Fence::now() - since >= lease_ms);
            if leading && settled {
                self.rescue_expired().await;
            }
            tokio::time::sleep(self.heartbeat).await;
        }
    }

    pub(super) fn repo_lock(&self, cache: &Path) -> Arc<tokio::sync::Mutex<()>> {
        self.git_locks
            .lock()
            .unwrap()
            .entry(cache.to_path_buf())
            .or_default()
            .clone()
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(std::sync::atomic::Ordering::SeqCst)
    }

    async fn renew_leases(&self, lease_ms: i64) {
        let held: Vec<(i64, Held)> = self
            .running
            .lock()
            .unwrap()
            .iter()
            .map(|(id, h)| (*id, h.clone()))
            .collect();
        for (id, held) in held {
            if held.is_fenced() {
                continue;
            }
            let started = Fence::now();
            match self.store.renew(id, held.attempt, lease_ms).await {
                Ok(Renewal::Held) => self.fence.renewed(id, started),
                Ok(Renewal::CancelRequested) => {
                    self.fence.renewed(id, started);
                    held.token.cancel();
                }
                // A build this run finished while the renewal was under
                // way is no longer running: that is its end, not a loss.
                Ok(Renewal::Lost) if !self.holds(id, held.attempt) => {}
                Ok(Renewal::Lost) => {
                    tracing::warn!(
                        build = id,
                        attempt = held.attempt,
                        "lost the lease (rescued by another agent): stopping it"
                    );
                    held.token.cancel();
                }
                Err(e) => tracing::warn!(build = id, "cannot renew the lease: {e}"),
            }
        }
    }

    async fn rescue_expired(&self) {
        // Bundles a week old that no queued or running build needs.
        const BUNDLE_AGE_MS: i64 = 7 * 24 * 3600 * 1000;
        if let Err(e) = self.store.prune_bundles(BUNDLE_AGE_MS).await {
            tracing::warn!("cannot prune old bundles: {e}");
        }
        match self.store.rescue(None, &self.name).await {
            Ok(rescued) => {
                for done in rescued {
                    tracing::warn!(
                        build = done.id,
                        status = done.status.as_str(),
                        "rescued: {}",
                        done.reason
                    );
                }
            }
            Err(e) => tracing::warn!("cannot rescue expired builds: {e}"),
        }
    }

    /// Gives up the builds whose lease could not be renewed in time, before
    /// it can expire on the database: their steps end now (the guard
    /// process does the same if piperd is too stopped to). Until the agent
    /// stops.
    pub async fn keep_fenced(self: Arc<Self>) {
        loop {
            let now = Fence::now();
            for (id, since) in self.fence.overdue(now) {
                self.self_fence(id, now - since);
            }
            let next = self
                .fence
                .next_due_in(Fence::now())
                .unwrap_or(Duration::MAX)
                .min(Duration::from_millis(100));
            tokio::time::sleep(next).await;
        }
    }

    /// Stops the run holding `id` (and the builds it chained, which share
    /// its processes): `silent_ms` without a successful renewal.
    fn self_fence(&self, id: i64, silent_ms: i64) {
        let running = self.running.lock().unwrap();
        let Some(run) = running.get(&id).map(|held| held.run) else {
            return;
        };
        for (other, held) in running.iter().filter(|(_, h)| h.run == run) {
            held.fenced.store(true, std::sync::atomic::Ordering::SeqCst);
            held.token.cancel();
            self.fence.forget(*other);
            tracing::warn!(
                build = other,
                attempt = held.attempt,
                "self-fenced: no lease renewal for {} (lease {}, margin {}); ending its steps before the lease can expire",
                crate::duration::format(Duration::from_millis(silent_ms.max(0) as u64)),
                crate::duration::format(Duration::from_millis(self.fence.lease_ms() as u64)),
                crate::duration::format(Duration::from_millis(self.fence.margin_ms() as u64)),
            );
        }
    }

    /// Whether this agent still holds `attempt` of build `id` (it has not
    /// finished it).
    fn holds(&self, id: i64, attempt: i64) -> bool {
        self.running
            .lock()
            .unwrap()
            .get(&id)
            .is_some_and(|held| held.attempt == attempt)
    }

    /// Cancels a build running on this agent; false if it is not running here.
    pub fn cancel(&self, id: i64) -> bool {
        match self.running.lock().unwrap().get(&id) {
            Some(held) => {
                held.token.cancel();
                true
            }
            None => false,
        }
    }

    /// Cancels every running build (shutdown after the grace period).
    pub fn cancel_all(&self) {
        for held in self.running.lock().unwrap().values() {
            held.token.cancel();
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
            let started = Fence::now();
            match self.store.claim_next(&self.holder()).await {
                Ok(Some(build)) => self.run(build, started).await,
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

    /// Runs a build claimed by a claim that started at `claimed` (the
    /// start of its lease, for the self-fence).
    async fn run(&self, build: Build, claimed: i64) {
        let started = std::time::Instant::now();
        tracing::info!(
            build = build.id,
            attempt = build.attempt,
            repo = %Escaped(&build.repo),
            pipeline = %Escaped(&build.pipeline),
            agent = %self.name,
            "build claimed"
        );
        let token = CancellationToken::new();
        let run = next_run();
        self.fence.renewed(build.id, claimed);
        self.running
            .lock()
            .unwrap()
            .insert(build.id, Held::new(build.attempt, token.clone(), run));
        let mut log = LogWriter::new(
            self.store.clone(),
            self.abandon.clone(),
            Redactor::new(build.secret_env.values()),
            token.clone(),
        );
        log.announce_to(self.written.clone());
        log.hold(build.id, build.attempt);
        if build.attempt > 1 {
            // A rescued build: its log goes on after the lost attempt's.
            if let Ok(end) = self.store.log_end(build.id).await {
                log.continue_after(build.id, end);
            }
            let line = format!(
                "piper: attempt {} on agent {}: the agent of the previous attempt stopped before it finished\n",
                build.attempt, self.name
            );
            log.write(build.id, "", line.as_bytes()).await;
        }
        let workspace = self.data.join("workspaces").join(build.id.to_string());
        let outcome = self
            .checkout_and_run(&build, &workspace, &token, run, &mut log)
            .await;
        if let Err(message) = outcome {
            let given_up = release(&self.running, &self.fence, build.id);
            // A given-up attempt writes nothing more but why (end_attempt).
            if !given_up {
                log.write(build.id, "", format!("piper: {message}\n").as_bytes())
                    .await;
            }
            log.finish_all().await;
            let state = if token.is_cancelled() {
                BuildState::Canceled
            } else {
                BuildState::Failed
            };
            let ending = (!given_up).then_some((state, Some(message.as_str())));
            end_attempt(
                &self.store,
                &self.abandon,
                &self.name,
                build.id,
                build.attempt,
                ending,
            )
            .await;
            log.notified_at_end(build.id);
            log.written(build.id).await;
        }
        let fence = &self.fence;
        self.running.lock().unwrap().retain(|id, held| {
            let keep = held.run != run;
            if !keep {
                fence.forget(*id);
            }
            keep
        });
        self.release_workspace(&build.repo, &workspace).await;
        tracing::info!(build = build.id, took = %crate::duration::format(started.elapsed()), "build done");
    }

    async fn checkout_and_run(
        &self,
        build: &Build,
        workspace: &Path,
        token: &CancellationToken,
        run: u64,
        log: &mut LogWriter,
    ) -> Result<(), String> {
        let (sha, version, project) = self.checkout_project(build, workspace, token).await?;
        // Requirements are known now: an agent without them gives the build
        // back, and only agents that have them will claim it.
        let plan = project.graph().plan(std::slice::from_ref(&build.pipeline));
        if let Ok(plan) = plan
            && self.lacks_requirements(build, &plan).await?
        {
            return Ok(());
        }
        let checked_out = format!(
            "piper: {} at {sha} ({})\n",
            build.repo,
            version.as_deref().unwrap_or("no version")
        );
        log.write(build.id, "", checked_out.as_bytes()).await;
        // The pipeline says whether it may run again after an agent died
        // (a deploy may not); until it is read, the answer is no.
        let retries = (project.graph().pipelines.get(&build.pipeline)).map(|p| p.retry_agent_lost);
        if let Some(retries) = retries {
            let max_attempts = i64::from(retries) + 1;
            let _ = with_retry("recording the build's attempts", &self.abandon, || {
                self.store.set_max_attempts(build.id, max_attempts)
            })
            .await;
        }
        let options = Options {
            env_overrides: self.build_env(build),
            run_vars: self.run_vars(build),
            reap_orphans: true,
            args: build.args.clone().into(),
            // Every build's workspace is new: the results of earlier
            // builds (any repository, any commit) come from the cache.
            cache: Some(self.cache()),
            ..Options::default()
        };
        let mut recorder = self.recorder(build, token, run, (sha, version), log);
        let targets = vec![build.pipeline.clone()];
        let mut run = project.start_with(
            targets,
            crate::RunOptions::from_options(options),
            token.clone(),
        );
        while let Some(event) = run.next_event().await {
            recorder.on(event).await;
        }
        recorder.log.finish_all().await;
        *log = recorder.log;
        run.wait().await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Whether this agent lacks labels the plan requires; if so the build
    /// went back to the queue.
    async fn lacks_requirements(&self, build: &Build, plan: &Plan) -> Result<bool, String> {
        let missing = Graph::missing_labels(plan, &self.labels);
        if missing.is_empty() {
            return Ok(false);
        }
        tracing::info!(build = build.id, missing = %Escaped(&missing.join(",")), "build needs labels this agent lacks: back to the queue");
        with_retry("giving the build back", &self.abandon, || {
            self.store.unclaim(build.id, build.attempt, &plan.requires)
        })
        .await?;
        Ok(true)
    }

    /// What records a run of `build`: it takes over `log` (left with a
    /// fresh writer, given back when the run ends).
    fn recorder(
        &self,
        build: &Build,
        token: &CancellationToken,
        run: u64,
        (sha, version): (String, Option<String>),
        log: &mut LogWriter,
    ) -> Recorder {
        let fresh = LogWriter::new(
            self.store.clone(),
            self.abandon.clone(),
            Redactor::default(),
            token.clone(),
        );
        Recorder {
            store: self.store.clone(),
            abandon: self.abandon.clone(),
            fence: self.fence.clone(),
            agent_name: self.name.clone(),
            holder: self.holder(),
            running: self.running.clone(),
            token: token.clone(),
            run,
            build: build.clone(),
            sha,
            version,
            ids: HashMap::new(),
            positions: HashMap::new(),
            observer: super::metrics::RunObserver::new(self.metrics.clone()),
            log: std::mem::replace(log, fresh),
        }
    }

    /// What the steps of a build see besides their own variables: the
    /// submit's `env` and `secret_env`, and who runs them (as Buildkite and
    /// Woodpecker do: `CI=true`, the build's id and number, the agent).
    /// The caches of one build: the agent's disk cache, and the remote one
    /// behind it (new for each build: one build's failures to reach it do
    /// not keep the next from asking).
    fn cache(&self) -> crate::Cache {
        let mut cache = crate::Cache::new(crate::DiskCache::new(self.data.join("cache")));
        let Some(settings) = self.remote_cache.as_ref() else {
            return cache;
        };
        match settings.cache() {
            Ok(remote) => cache = cache.with_remote(remote),
            Err(e) => tracing::warn!("remote cache: {e}"),
        }
        match settings.executor() {
            Some(Ok(executor)) => cache.with_executor(executor),
            Some(Err(e)) => {
                tracing::warn!("remote execution: {e}");
                cache
            }
            None => cache,
        }
    }

    /// The submit's `env` and `secret_env`: part of what its steps do.
    fn build_env(&self, build: &Build) -> indexmap::IndexMap<String, String> {
        let mut env: indexmap::IndexMap<String, String> = build.env.clone().into_iter().collect();
        env.extend(build.secret_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    /// Who runs it (`CI`, `PIPER_BUILD_ID`, `PIPER_AGENT`, the attempt, the
    /// fencing token): every step gets them, no fingerprint covers them, so
    /// a later build of the same work is fetched, not run again.
    fn run_vars(&self, build: &Build) -> std::sync::Arc<[(String, String)]> {
        let mut vars = identity_vars(build, &self.name);
        if let Some(token) = build.fencing_token {
            vars.insert("PIPER_FENCING_TOKEN".into(), token.to_string());
        }
        vars.into_iter().collect()
    }
}
