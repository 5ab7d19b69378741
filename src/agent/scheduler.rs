//! Cron schedules on the agent: `schedule = trigger.schedule "0 3 * * *"`
//! on a pipeline makes piperd run it at those times, for every repository
//! it has built. Each check fetches the repository, and evaluates its
//! piper.lua at HEAD only when HEAD moved. A due run is queued by whichever
//! agent takes its slot (repository, pipeline, minute) in the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::store::{BuildState, NewBuild};
use super::worker::Agent;
use crate::cron::{Schedule, UnixMinute, this_minute};
use crate::project::{CONFIG_FILE, Located};

/// A repository's scheduled pipelines, as of one commit.
struct Known {
    sha: String,
    schedules: Vec<(String, Schedule)>,
}

/// A repository whose last refresh failed: not tried again before `next`.
struct Backoff {
    failures: u32,
    next: std::time::Instant,
}

/// Longest wait between refreshes of a repository that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// How far back a new leader queues the slots no leader ran: an hour.
/// Older slots are skipped (a nightly build missed by a longer outage is
/// not started hours late).
const CATCH_UP_MINUTES: i64 = 60;

/// Checks the schedules every `interval` until the agent stops — on the
/// cluster's leader only, so one agent fetches and evaluates per check.
pub async fn run(agent: Arc<Agent>, interval: Duration) {
    let mut known: HashMap<String, Known> = HashMap::new();
    let mut failing: HashMap<String, Backoff> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = agent.stop_claiming.cancelled() => return,
        }
        if !agent.is_leader() {
            continue;
        }
        let now = this_minute();
        // The minutes since the last one a leader covered (none yet: this
        // one), at most an hour back, and always this one.
        let from = match agent.store.scheduled_until().await {
            // The current minute is always looked at again (a repository
            // may have become known since the last check); its slots are
            // taken once whatever the number of checks.
            Ok(Some(done)) => (done + 1).max(now - CATCH_UP_MINUTES + 1).min(now),
            Ok(None) => now,
            Err(e) => {
                tracing::warn!("schedules: {e}");
                continue;
            }
        };
        let minutes: Vec<UnixMinute> = (from..=now).collect();
        let repos = match agent.store.known_repos().await {
            Ok(repos) => repos,
            Err(e) => {
                tracing::warn!("schedules: cannot list repositories: {e}");
                continue;
            }
        };
        for repo in repos {
            if failing
                .get(&repo)
                .is_some_and(|b| std::time::Instant::now() < b.next)
            {
                continue;
            }
            if let Err(e) = refresh(&agent, &repo, &mut known).await {
                // Twice the wait after each failure in a row, up to an hour.
                let failures = failing.get(&repo).map_or(1, |b| b.failures + 1);
                let wait = interval
                    .saturating_mul(1 << failures.min(16))
                    .min(MAX_BACKOFF);
                tracing::warn!(
                    "schedules of {repo}: {e}; next try in {}",
                    crate::duration::format(wait)
                );
                failing.insert(
                    repo,
                    Backoff {
                        failures,
                        next: std::time::Instant::now() + wait,
                    },
                );
                continue;
            }
            failing.remove(&repo);
            let Some(entry) = known.get(&repo) else {
                continue;
            };
            for (pipeline, schedule) in &entry.schedules {
                for &minute in minutes.iter().filter(|&&m| schedule.matches(m)) {
                    queue_slot(&agent, &repo, pipeline, schedule, minute).await;
                }
            }
        }
        if let Err(e) = agent.store.set_scheduled_until(&agent.id, now).await {
            tracing::warn!("schedules: {e}");
        }
    }
}

/// Queues one scheduled run, unless an agent already took its slot.
async fn queue_slot(
    agent: &Agent,
    repo: &str,
    pipeline: &str,
    schedule: &Schedule,
    minute: UnixMinute,
) {
    match agent
        .store
        .claim_schedule_slot(repo, pipeline, minute)
        .await
    {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::error!("cannot take a schedule slot: {e}");
            return;
        }
    }
    let new = NewBuild {
        repo: repo.to_string(),
        git_ref: "HEAD".into(),
        pipeline: pipeline.to_string(),
        env: Default::default(),
        secret_env: Default::default(),
        requested_by: format!("schedule {schedule}"),
        parent_id: None,
        sha: None,
        args: Vec::new(),
    };
    match agent
        .store
        .create_build(&new, BuildState::Queued, None)
        .await
    {
        Ok(build) => {
            tracing::info!(build = build.id, repo = %super::escaped::Escaped(repo), pipeline = %super::escaped::Escaped(pipeline), "scheduled build queued");
            agent.wake.notify_one();
        }
        Err(e) => tracing::error!("cannot queue the scheduled build: {e}"),
    }
}

/// Re-reads `repo`'s schedules when its HEAD moved.
async fn refresh(
    agent: &Agent,
    repo: &str,
    known: &mut HashMap<String, Known>,
) -> Result<(), String> {
    let limits = agent.git_limits(&agent.stop_claiming);
    let sha = agent.resolve(repo, "HEAD", limits).await?;
    if known.get(repo).is_some_and(|k| k.sha == sha) {
        return Ok(());
    }
    let workspace = agent
        .data
        .join("schedules")
        .join(&blake3::hash(repo.as_bytes()).to_hex()[..16]);
    let result = async {
        agent.checkout_ref(repo, &sha, &workspace, limits).await?;
        let project = Located {
            root: workspace.clone(),
            config: workspace.join(CONFIG_FILE),
            host: Default::default(),
        };
        if !project.config.is_file() {
            return Ok(Vec::new());
        }
        // Through the API, as a build is loaded (a fresh workspace: no cache).
        let engine = crate::Engine::new().with_config_cache(false);
        let project = tokio::task::spawn_blocking(move || engine.load_located(project))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(
            project
                .graph()
                .pipelines
                .values()
                .flat_map(|p| p.schedules.iter().map(|s| (p.name.clone(), s.clone())))
                .collect(),
        )
    }
    .await;
    agent.release_workspace(repo, &workspace).await;
    // A commit whose config is broken schedules nothing until fixed.
    let schedules = result.unwrap_or_default();
    known.insert(repo.to_string(), Known { sha, schedules });
    Ok(())
}
