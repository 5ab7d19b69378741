//! Cron schedules on the agent: `schedule = trigger.schedule "0 3 * * *"`
//! on a pipeline makes piperd run it at those times, for every repository
//! it has built. Each check fetches the repository, and evaluates its
//! piper.lua at HEAD only when HEAD moved. A due run is queued by whichever
//! agent takes its slot (repository, pipeline, minute) in the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::store::{BuildState, NewBuild, now_ms};
use super::worker::Agent;
use crate::cron::{Minute, Schedule};
use crate::graph::Graph;
use crate::project::{CONFIG_FILE, Project};

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

/// Checks the schedules every `interval` until the agent stops.
pub async fn run(agent: Arc<Agent>, interval: Duration) {
    let mut known: HashMap<String, Known> = HashMap::new();
    let mut failing: HashMap<String, Backoff> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = agent.stop_claiming.cancelled() => return,
        }
        let now = Minute::now();
        let minute = now_ms() / 60_000;
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
                if !schedule.matches(now) {
                    continue;
                }
                match agent
                    .store
                    .claim_schedule_slot(&repo, pipeline, minute)
                    .await
                {
                    Ok(true) => {
                        let new = NewBuild {
                            repo: repo.clone(),
                            git_ref: "HEAD".into(),
                            pipeline: pipeline.clone(),
                            env: Default::default(),
                            secret_env: Default::default(),
                            requested_by: format!("schedule {schedule}"),
                            parent_id: None,
                        };
                        match agent
                            .store
                            .create_build(&new, BuildState::Queued, None)
                            .await
                        {
                            Ok(build) => {
                                tracing::info!(build = build.id, %repo, %pipeline, "scheduled build queued");
                                agent.wake.notify_one();
                            }
                            Err(e) => tracing::error!("cannot queue the scheduled build: {e}"),
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!("cannot take a schedule slot: {e}"),
                }
            }
        }
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
        let project = Project {
            root: workspace.clone(),
            config: workspace.join(CONFIG_FILE),
        };
        if !project.config.is_file() {
            return Ok(Vec::new());
        }
        let graph = tokio::task::spawn_blocking(move || Graph::load(&project))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(
            graph
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
